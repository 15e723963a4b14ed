//! `[metrics]` and `[access_log]`: what the gateway tells its operator
//! about the requests it serves (docs/OBSERVABILITY.md). The raw sections
//! and their validation live here.
//!
//! ```toml
//! [metrics]
//! listen = "127.0.0.1:9464"            # a listener of its own for /metrics (optional)
//! token_env = "SLUICE_METRICS_TOKEN"   # its bearer token (16 characters at least)
//! per_tenant = false                   # tenant labels: one series per tenant
//! # head_timeout, body_timeout, idle_timeout, max_connections, max_head_bytes
//!
//! [access_log]
//! to = "off"        # "off" (default), "stdout", or a file path (opened 0600, appended)
//! queue = 8192      # lines waiting for the writer at most; more are dropped and counted
//! ```
//!
//! `/metrics` is always served on the admin listener, behind the admin
//! token; never on the proxy's port.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::gateway::Problems;
use crate::listener::{ListenerLimits, limits};
use crate::raw::RawFile;

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `host:port` of a listener serving only `/metrics`.
    pub listen: Option<Spanned<String>>,
    /// The environment variable holding that listener's bearer token.
    pub token_env: Option<Spanned<String>>,
    /// Whether series are labelled by tenant too.
    pub per_tenant: Option<bool>,
    /// Time to receive a request head.
    pub head_timeout: Option<Spanned<String>>,
    /// Time to receive a request body.
    pub body_timeout: Option<Spanned<String>>,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Option<Spanned<String>>,
    /// Open connections at most.
    pub max_connections: Option<Spanned<i64>>,
    /// Bytes of a request head at most.
    pub max_head_bytes: Option<Spanned<i64>>,
}

/// `[access_log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `off`, `stdout`, or a file path.
    pub to: Option<Spanned<String>>,
    /// Lines waiting for the writer at most.
    pub queue: Option<Spanned<i64>>,
}

/// `[metrics]`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// A listener of its own, if any.
    pub listener: Option<MetricsListener>,
    /// Whether series are labelled by tenant too.
    pub per_tenant: bool,
}

/// The metrics' own listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsListener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The environment variable holding its bearer token.
    pub token_env: String,
    /// Its timeouts and caps.
    pub limits: ListenerLimits,
}

/// Where access-log lines go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLogTo {
    /// Nowhere.
    #[default]
    Off,
    /// Standard output.
    Stdout,
    /// A file (relative to the policy file's folder unless absolute).
    File(PathBuf),
}

/// `[access_log]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub to: AccessLogTo,
    /// Lines waiting for the writer at most.
    pub queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self { to: AccessLogTo::Off, queue: 8192 }
    }
}

fn env_name(v: Option<&Spanned<String>>, default: &str, field: &str, p: &mut Problems) -> String {
    let name = v.map_or_else(|| default.to_owned(), |t| t.get_ref().clone());
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        p.push((
            v.map(Spanned::span),
            field.into(),
            format!("`{name}` is not an environment variable name"),
        ));
    }
    name
}

/// Validates `[metrics]`.
pub(crate) fn metrics(raw: &RawFile, problems: &mut Problems) -> MetricsConfig {
    let Some(section) = &raw.metrics else { return MetricsConfig::default() };
    let r = section.get_ref();
    let token_env =
        env_name(r.token_env.as_ref(), "SLUICE_METRICS_TOKEN", "metrics.token_env", problems);
    let limits = limits(r.limits(), "metrics", ListenerLimits::ADMIN, problems);
    let listener = r.listen.as_ref().and_then(|l| match l.get_ref().parse::<SocketAddr>() {
        Ok(listen) => Some(MetricsListener { listen, token_env, limits }),
        Err(_) => {
            problems.push((
                Some(l.span()),
                "metrics.listen".into(),
                format!(
                    "`{}` is not a socket address; write host:port, e.g. `127.0.0.1:9464`",
                    l.get_ref()
                ),
            ));
            None
        }
    });
    MetricsConfig { listener, per_tenant: r.per_tenant.unwrap_or(false) }
}

/// Validates `[access_log]`.
pub(crate) fn access_log(raw: &RawFile, problems: &mut Problems) -> AccessLogConfig {
    let mut a = AccessLogConfig::default();
    let Some(section) = &raw.access_log else { return a };
    let r = section.get_ref();
    if let Some(to) = &r.to {
        a.to = match to.get_ref().trim() {
            "off" => AccessLogTo::Off,
            "stdout" => AccessLogTo::Stdout,
            "" => {
                problems.push((
                    Some(to.span()),
                    "access_log.to".into(),
                    "`off`, `stdout`, or a file path".into(),
                ));
                AccessLogTo::Off
            }
            path => AccessLogTo::File(PathBuf::from(path)),
        };
    }
    if let Some(q) = &r.queue {
        match usize::try_from(*q.get_ref()) {
            Ok(n) if (1..=1_000_000).contains(&n) => a.queue = n,
            _ => problems.push((
                Some(q.span()),
                "access_log.queue".into(),
                format!("must be a whole number from 1 to 1000000, got {}", q.get_ref()),
            )),
        }
    }
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(text: &str) -> Result<crate::Config, String> {
        crate::parse(text, "policy.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_off_and_without_tenants() {
        let c = load("[models.m]\n").unwrap();
        assert_eq!(c.gateway.metrics, MetricsConfig::default());
        assert_eq!(c.gateway.access_log.to, AccessLogTo::Off);
    }

    #[test]
    fn sections_are_read() {
        let c = load("[models.m]\n[metrics]\nlisten = \"127.0.0.1:9464\"\nper_tenant = true\nmax_connections = 4\n[access_log]\nto = \"logs/access.jsonl\"\nqueue = 10\n").unwrap();
        let l = c.gateway.metrics.listener.unwrap();
        assert_eq!(l.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(l.token_env, "SLUICE_METRICS_TOKEN");
        assert_eq!(l.limits.max_connections, 4);
        assert!(c.gateway.metrics.per_tenant);
        assert_eq!(c.gateway.access_log.to, AccessLogTo::File("logs/access.jsonl".into()));
        assert_eq!(c.gateway.access_log.queue, 10);
        let c = load("[models.m]\n[access_log]\nto = \"stdout\"\n").unwrap();
        assert_eq!(c.gateway.access_log.to, AccessLogTo::Stdout);
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let e =
            load("[models.m]\n[metrics]\nlisten = \"nowhere\"\ntoken_env = \"a b\"\n").unwrap_err();
        assert!(e.contains("policy.toml:3") && e.contains("metrics.listen"), "{e}");
        assert!(e.contains("policy.toml:4") && e.contains("metrics.token_env"), "{e}");
        let e = load("[models.m]\n[access_log]\nto = \"\"\nqueue = 0\n").unwrap_err();
        assert!(e.contains("policy.toml:3") && e.contains("access_log.to"), "{e}");
        assert!(e.contains("policy.toml:4") && e.contains("access_log.queue"), "{e}");
        let e = load("[models.m]\n[metrics]\nport = 1\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }
}

//! Timeouts and caps of a listener: the proxy's (`[server]`), the admin
//! API's (`[admin]`) and the decision service's (`[decisions]`, both its
//! gRPC and JSON listeners). The same keys in each section:
//!
//! ```toml
//! [server]
//! head_timeout = "10s"      # a request head, from connect or its first byte
//! body_timeout = "60s"      # a request body, from its first poll to its end
//! idle_timeout = "60s"      # a kept-alive connection with no request in flight
//! max_connections = 10000   # open connections; past it, idle ones are closed
//! max_head_bytes = 32768    # a request head (HTTP/1.1 buffer, HTTP/2 header list)
//! body_memory_bytes = 268435456  # [server] only: request bodies in flight, all listeners
//! ```

use std::time::Duration;

use toml::Spanned;

use crate::gateway::{Problems, parse_duration};

/// The smallest head a listener may be limited to (hyper's smallest
/// HTTP/1.1 read buffer).
pub const MIN_HEAD_BYTES: usize = 8 * 1024;

/// A listener's timeouts and caps, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Time to receive a request head: from the connection's start (which
    /// includes HTTP/2's preface) or, on a kept-alive HTTP/1.1 connection,
    /// from the head's first byte.
    pub head_timeout: Duration,
    /// Time to receive a request body.
    pub body_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Bytes of a request head at most.
    pub max_head_bytes: usize,
}

impl ListenerLimits {
    /// The proxy's defaults (`[server]`).
    pub const SERVER: Self = Self {
        head_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10_000,
        max_head_bytes: 32 * 1024,
    };
    /// The admin API's defaults (`[admin]`): few operators, small bodies.
    pub const ADMIN: Self = Self {
        head_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 256,
        max_head_bytes: 32 * 1024,
    };
    /// The decision service's defaults (`[decisions]`): small bodies, many
    /// callers.
    pub const DECISIONS: Self = Self {
        head_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10_000,
        max_head_bytes: 32 * 1024,
    };
}

/// The default budget of request bodies in flight across every listener.
pub const DEFAULT_BODY_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// The keys of [`ListenerLimits`] as written in a section.
#[derive(Clone, Copy)]
pub(crate) struct RawLimits<'a> {
    pub(crate) head_timeout: Option<&'a Spanned<String>>,
    pub(crate) body_timeout: Option<&'a Spanned<String>>,
    pub(crate) idle_timeout: Option<&'a Spanned<String>>,
    pub(crate) max_connections: Option<&'a Spanned<i64>>,
    pub(crate) max_head_bytes: Option<&'a Spanned<i64>>,
}

fn timeout(v: &Spanned<String>, field: String, problems: &mut Problems) -> Option<Duration> {
    match parse_duration(v.get_ref()) {
        Some(d) if !d.is_zero() => Some(d),
        _ => {
            problems.push((
                Some(v.span()),
                field,
                format!(
                    "`{}` is not a timeout; write a positive duration, e.g. `500ms`, `10s`, `1m`",
                    v.get_ref()
                ),
            ));
            None
        }
    }
}

/// A whole number in `min..=max`, or a problem.
pub(crate) fn bounded(
    v: &Spanned<i64>,
    field: String,
    min: usize,
    problems: &mut Problems,
) -> Option<usize> {
    match usize::try_from(*v.get_ref()) {
        Ok(n) if n >= min => Some(n),
        _ => {
            problems.push((
                Some(v.span()),
                field,
                format!("must be a whole number of at least {min}, got {}", v.get_ref()),
            ));
            None
        }
    }
}

/// Validates the limits of section `section` over `defaults`.
pub(crate) fn limits(
    raw: RawLimits<'_>,
    section: &str,
    defaults: ListenerLimits,
    problems: &mut Problems,
) -> ListenerLimits {
    let mut l = defaults;
    let f = |key: &str| format!("{section}.{key}");
    if let Some(d) = raw.head_timeout.and_then(|v| timeout(v, f("head_timeout"), problems)) {
        l.head_timeout = d;
    }
    if let Some(d) = raw.body_timeout.and_then(|v| timeout(v, f("body_timeout"), problems)) {
        l.body_timeout = d;
    }
    if let Some(d) = raw.idle_timeout.and_then(|v| timeout(v, f("idle_timeout"), problems)) {
        l.idle_timeout = d;
    }
    if let Some(n) = raw.max_connections.and_then(|v| bounded(v, f("max_connections"), 1, problems))
    {
        l.max_connections = n;
    }
    if let Some(n) =
        raw.max_head_bytes.and_then(|v| bounded(v, f("max_head_bytes"), MIN_HEAD_BYTES, problems))
    {
        l.max_head_bytes = n;
    }
    l
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(text: &str) -> Result<crate::Config, String> {
        crate::parse(text, "policy.toml").map_err(|e| e.to_string())
    }

    const BASE: &str = "[models.m]\n";

    #[test]
    fn defaults_apply_and_each_section_has_its_own() {
        let c = load(&format!(
            "{BASE}[server]\nhead_timeout = \"2s\"\nmax_connections = 5\nbody_memory_bytes = 1048576\n[admin]\nidle_timeout = \"1m\"\n[decisions]\nhttp_listen = \"127.0.0.1:0\"\nmax_head_bytes = 9000\n"
        ))
        .unwrap();
        let s = c.gateway.limits;
        assert_eq!(s.head_timeout, Duration::from_secs(2));
        assert_eq!(s.max_connections, 5);
        assert_eq!(s.body_timeout, ListenerLimits::SERVER.body_timeout);
        assert_eq!(c.gateway.body_memory_bytes, 1_048_576);
        let a = c.gateway.admin.unwrap().limits;
        assert_eq!(a.idle_timeout, Duration::from_secs(60));
        assert_eq!(a.max_connections, ListenerLimits::ADMIN.max_connections);
        let d = c.decisions.unwrap().limits;
        assert_eq!(d.max_head_bytes, 9000);
        assert_eq!(d.head_timeout, ListenerLimits::DECISIONS.head_timeout);
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let e = load(&format!(
            "{BASE}[server]\nhead_timeout = \"0s\"\nmax_head_bytes = 100\nmax_connections = 0\nbody_memory_bytes = -1\n"
        ))
        .unwrap_err();
        assert!(e.contains("policy.toml:3") && e.contains("server.head_timeout"), "{e}");
        assert!(
            e.contains("server.max_head_bytes: must be a whole number of at least 8192"),
            "{e}"
        );
        assert!(e.contains("server.max_connections"), "{e}");
        assert!(e.contains("server.body_memory_bytes"), "{e}");
        let e = load(&format!("{BASE}[admin]\nbody_timeout = \"soon\"\n")).unwrap_err();
        assert!(e.contains("policy.toml:3") && e.contains("admin.body_timeout"), "{e}");
    }
}

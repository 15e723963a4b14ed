//! `[decisions]`: the decision service (Envoy RLS v3 over gRPC, and a JSON
//! check/settle API) that other gateways ask instead of proxying through
//! Sluice. The raw section and its validation live here, with the same
//! file:line errors as the rest of the file.
//!
//! ```toml
//! [decisions]
//! grpc_listen = "127.0.0.1:8081"
//! http_listen = "127.0.0.1:8082"
//! domains = ["sluice"]
//! hits_addend = "tokens"
//! token_env = "SLUICE_DECISIONS_TOKEN"
//!
//! [decisions.descriptors]
//! tenant = "tenant"
//! api_key = "api_key"
//! model = "model"
//! endpoint = "endpoint"
//! user = "user"
//! ```

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::gateway::Problems;
use crate::listener::{ListenerLimits, limits};
use crate::raw::RawFile;

/// The largest cost one decision may carry unless `max_cost` says otherwise.
pub const DEFAULT_MAX_COST: u64 = 1_000_000_000;

/// `[decisions]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecisions {
    /// `host:port` of the Envoy RLS v3 gRPC listener.
    pub grpc_listen: Option<Spanned<String>>,
    /// `host:port` of the JSON check/settle listener (and `/metrics`).
    pub http_listen: Option<Spanned<String>>,
    /// The RLS domains answered (default `["sluice"]`).
    pub domains: Option<Spanned<Vec<String>>>,
    /// What `hits_addend` counts: `tokens`, `input_tokens` or `output_tokens`.
    pub hits_addend: Option<Spanned<String>>,
    /// The endpoint of a request whose descriptors name none.
    pub default_endpoint: Option<Spanned<String>>,
    /// The environment variable holding the bearer token the JSON API
    /// requires.
    pub token_env: Option<Spanned<String>>,
    /// The largest cost (tokens) one decision may carry.
    pub max_cost: Option<Spanned<i64>>,
    /// Which descriptor keys carry which request facts.
    pub descriptors: Option<Spanned<RawDescriptorKeys>>,
    /// Time to receive a request head (`10s`).
    pub head_timeout: Option<Spanned<String>>,
    /// Time to receive a request body.
    pub body_timeout: Option<Spanned<String>>,
    /// How long a connection with no request in flight stays open (`60s`).
    pub idle_timeout: Option<Spanned<String>>,
    /// Open connections at most.
    pub max_connections: Option<Spanned<i64>>,
    /// Bytes of a request head at most (`32768`).
    pub max_head_bytes: Option<Spanned<i64>>,
}

/// `[decisions.descriptors]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDescriptorKeys {
    /// The key whose value is a tenant id.
    pub tenant: Option<Spanned<String>>,
    /// The key whose value is an API key (its secret, or `Bearer <secret>`).
    pub api_key: Option<Spanned<String>>,
    /// The key whose value is a model id.
    pub model: Option<Spanned<String>>,
    /// The key whose value is an endpoint name or path.
    pub endpoint: Option<Spanned<String>>,
    /// The key whose value is the end user inside the tenant.
    pub user: Option<Spanned<String>>,
}

/// What an Envoy `hits_addend` counts (requests are always one per call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitsAddend {
    /// Tokens, input and output together (charged as input tokens: `tokens`
    /// and `input_tokens` limits see them).
    Tokens,
    /// Prompt tokens.
    InputTokens,
    /// Completion tokens.
    OutputTokens,
}

impl HitsAddend {
    /// The spelling in the policy file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
        }
    }
}

/// Which descriptor entry carries which request fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorKeys {
    /// Tenant id (default `tenant`).
    pub tenant: String,
    /// API key, looked up by its hash (default `api_key`).
    pub api_key: String,
    /// Model id (default `model`).
    pub model: String,
    /// Endpoint name or request path (default `endpoint`).
    pub endpoint: String,
    /// The end user inside the tenant (default `user`).
    pub user: String,
}

impl Default for DescriptorKeys {
    fn default() -> Self {
        Self {
            tenant: "tenant".into(),
            api_key: "api_key".into(),
            model: "model".into(),
            endpoint: "endpoint".into(),
            user: "user".into(),
        }
    }
}

/// `[decisions]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionsConfig {
    /// Where the gRPC (Envoy RLS v3) listener binds, if any.
    pub grpc_listen: Option<SocketAddr>,
    /// Where the JSON API binds, if any.
    pub http_listen: Option<SocketAddr>,
    /// Domains answered; others are refused with INVALID_ARGUMENT.
    pub domains: Vec<String>,
    /// Descriptor keys.
    pub descriptors: DescriptorKeys,
    /// What `hits_addend` counts.
    pub hits_addend: HitsAddend,
    /// The endpoint assumed when a request names none.
    pub default_endpoint: String,
    /// The environment variable holding the JSON API's bearer token.
    pub token_env: Option<String>,
    /// Costs above this are refused as invalid.
    pub max_cost: u64,
    /// Timeouts and caps of both listeners (each its own cap).
    pub limits: ListenerLimits,
}

fn listen(v: &Spanned<String>, field: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match v.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push((
                Some(v.span()),
                field.into(),
                format!(
                    "`{}` is not a socket address; write host:port, e.g. `127.0.0.1:8081` (port 0: any free port)",
                    v.get_ref()
                ),
            ));
            None
        }
    }
}

/// Validates `[decisions]`; `endpoints` are the policy's endpoint names.
pub(crate) fn decisions(
    raw: &RawFile,
    endpoints: &[String],
    problems: &mut Problems,
) -> Option<DecisionsConfig> {
    let section = raw.decisions.as_ref()?;
    let r = section.get_ref();
    let grpc_listen =
        r.grpc_listen.as_ref().and_then(|v| listen(v, "decisions.grpc_listen", problems));
    let http_listen =
        r.http_listen.as_ref().and_then(|v| listen(v, "decisions.http_listen", problems));
    if r.grpc_listen.is_none() && r.http_listen.is_none() {
        problems.push((
            Some(section.span()),
            "decisions".into(),
            "say where the decision service listens: `grpc_listen` (Envoy RLS v3), `http_listen` (JSON check/settle and /metrics), or both".into(),
        ));
    }

    let mut domains = vec!["sluice".to_owned()];
    if let Some(d) = &r.domains {
        let list = d.get_ref();
        if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
            problems.push((
                Some(d.span()),
                "decisions.domains".into(),
                "give at least one domain, none empty (Envoy's `domain`, e.g. `[\"sluice\"]`)"
                    .into(),
            ));
        } else {
            domains.clone_from(list);
        }
    }

    let hits_addend = match r.hits_addend.as_ref().map(|h| (h.span(), h.get_ref().as_str())) {
        None | Some((_, "tokens")) => HitsAddend::Tokens,
        Some((_, "input_tokens")) => HitsAddend::InputTokens,
        Some((_, "output_tokens")) => HitsAddend::OutputTokens,
        Some((span, other)) => {
            problems.push((
                Some(span),
                "decisions.hits_addend".into(),
                format!(
                    "`{other}` is not allowed; use `tokens`, `input_tokens` or `output_tokens` (requests always count one per call)"
                ),
            ));
            HitsAddend::Tokens
        }
    };

    let default_endpoint = match &r.default_endpoint {
        Some(e) if endpoints.contains(e.get_ref()) => e.get_ref().clone(),
        Some(e) => {
            let names: Vec<String> = endpoints.iter().map(|n| format!("`{n}`")).collect();
            problems.push((
                Some(e.span()),
                "decisions.default_endpoint".into(),
                format!("endpoint `{}` is not defined; defined: {}", e.get_ref(), names.join(", ")),
            ));
            String::new()
        }
        None if endpoints.iter().any(|e| e == "chat") => "chat".into(),
        None => endpoints.first().cloned().unwrap_or_default(),
    };

    let token_env = r.token_env.as_ref().map(|e| {
        let v = e.get_ref();
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push((
                Some(e.span()),
                "decisions.token_env".into(),
                format!("`{v}` is not an environment variable name (letters, digits, _)"),
            ));
        }
        v.clone()
    });

    let max_cost = match &r.max_cost {
        None => DEFAULT_MAX_COST,
        Some(v) => match u64::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                problems.push((
                    Some(v.span()),
                    "decisions.max_cost".into(),
                    format!("must be a positive whole number, got {}", v.get_ref()),
                ));
                DEFAULT_MAX_COST
            }
        },
    };

    let mut descriptors = DescriptorKeys::default();
    if let Some(d) = &r.descriptors {
        let d = d.get_ref();
        for (field, value, slot) in [
            ("tenant", &d.tenant, &mut descriptors.tenant),
            ("api_key", &d.api_key, &mut descriptors.api_key),
            ("model", &d.model, &mut descriptors.model),
            ("endpoint", &d.endpoint, &mut descriptors.endpoint),
            ("user", &d.user, &mut descriptors.user),
        ] {
            let Some(v) = value else { continue };
            let key = v.get_ref().trim();
            if key.is_empty() {
                problems.push((
                    Some(v.span()),
                    format!("decisions.descriptors.{field}"),
                    "a descriptor key must not be empty".into(),
                ));
                continue;
            }
            key.clone_into(slot);
        }
        // Two facts read from one descriptor key would be ambiguous.
        let all = [
            ("tenant", &d.tenant, &descriptors.tenant),
            ("api_key", &d.api_key, &descriptors.api_key),
            ("model", &d.model, &descriptors.model),
            ("endpoint", &d.endpoint, &descriptors.endpoint),
            ("user", &d.user, &descriptors.user),
        ];
        for (i, (field, value, key)) in all.iter().enumerate() {
            if let Some((other, _, _)) = all[..i].iter().find(|(_, _, k)| k == key) {
                problems.push((
                    value.as_ref().map(Spanned::span).or(Some(section.span())),
                    format!("decisions.descriptors.{field}"),
                    format!(
                        "descriptor key `{key}` already carries the {other}; give each fact its own key"
                    ),
                ));
            }
        }
    }

    // Whoever reaches the decision service can charge any tenant: its
    // callers authenticate, except a JSON API only this host can reach.
    let http_remote = http_listen.is_some_and(|a| !a.ip().is_loopback());
    if token_env.is_none() && (grpc_listen.is_some() || http_remote) {
        let why = if grpc_listen.is_some() {
            "the gRPC service needs a token (Envoy sends it with `initial_metadata`: `authorization: Bearer <token>`)"
        } else {
            "a JSON API on a non-loopback address needs a token"
        };
        problems.push((
            Some(section.span()),
            "decisions.token_env".into(),
            format!(
                "{why}: set `token_env` to the environment variable holding it (see docs/DEPLOYMENT.md); only a JSON API on a loopback address may go without one"
            ),
        ));
    }
    Some(DecisionsConfig {
        grpc_listen,
        http_listen,
        domains,
        descriptors,
        hits_addend,
        default_endpoint,
        token_env,
        max_cost,
        limits: limits(r.limits(), "decisions", ListenerLimits::DECISIONS, problems),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BASE: &str = "[models.m]\n";

    fn parse(extra: &str) -> Result<Option<DecisionsConfig>, String> {
        crate::parse(&format!("{BASE}{extra}"), "p.toml")
            .map(|c| c.decisions)
            .map_err(|e| e.to_string())
    }

    /// The gRPC service always needs a token; the JSON API unless it
    /// listens on loopback only.
    #[test]
    fn callers_must_authenticate() {
        let e = parse("[decisions]\ngrpc_listen = \"127.0.0.1:0\"\n").unwrap_err();
        assert!(
            e.contains("p.toml:2")
                && e.contains("decisions.token_env: the gRPC service needs a token"),
            "{e}"
        );
        let e = parse("[decisions]\nhttp_listen = \"0.0.0.0:8082\"\n").unwrap_err();
        assert!(e.contains("a JSON API on a non-loopback address needs a token"), "{e}");
        assert!(parse("[decisions]\nhttp_listen = \"127.0.0.1:0\"\n").is_ok());
        assert!(parse("[decisions]\nhttp_listen = \"[::1]:0\"\n").is_ok());
        assert!(parse("[decisions]\nhttp_listen = \"0.0.0.0:1\"\ntoken_env = \"T\"\n").is_ok());
    }

    #[test]
    fn no_section_no_service() {
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn defaults() {
        let d = parse("[decisions]\ngrpc_listen = \"127.0.0.1:0\"\ntoken_env = \"T\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(d.grpc_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(d.http_listen, None);
        assert_eq!(d.domains, vec!["sluice".to_owned()]);
        assert_eq!(d.descriptors, DescriptorKeys::default());
        assert_eq!(d.hits_addend, HitsAddend::Tokens);
        assert_eq!(d.default_endpoint, "chat");
        assert_eq!(d.token_env.as_deref(), Some("T"));
        assert_eq!(d.max_cost, DEFAULT_MAX_COST);
    }

    #[test]
    fn everything_set() {
        let d = parse(
            r#"
[decisions]
grpc_listen = "0.0.0.0:8081"
http_listen = "127.0.0.1:8082"
domains = ["llm", "edge"]
hits_addend = "output_tokens"
default_endpoint = "embeddings"
token_env = "DECISIONS_TOKEN"
max_cost = 5000

[decisions.descriptors]
tenant = "org"
api_key = "authorization"
model = "x-model"
endpoint = ":path"
user = "x-end-user"
"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.domains, vec!["llm".to_owned(), "edge".to_owned()]);
        assert_eq!(d.hits_addend, HitsAddend::OutputTokens);
        assert_eq!(d.default_endpoint, "embeddings");
        assert_eq!(d.token_env.as_deref(), Some("DECISIONS_TOKEN"));
        assert_eq!(d.max_cost, 5000);
        assert_eq!(d.descriptors.api_key, "authorization");
        assert_eq!(d.descriptors.endpoint, ":path");
        assert_eq!(d.descriptors.user, "x-end-user");
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let e = parse("[decisions]\ngrpc_listen = \"nowhere\"\n").unwrap_err();
        assert!(
            e.starts_with("p.toml:3:15: decisions.grpc_listen: `nowhere` is not a socket address"),
            "{e}"
        );
        let e = parse("[decisions]\nhits_addend = \"bytes\"\n").unwrap_err();
        assert!(e.contains("p.toml:2:1: decisions: say where the decision service listens"), "{e}");
        assert!(e.contains("p.toml:3:15: decisions.hits_addend: `bytes` is not allowed"), "{e}");
        let e =
            parse("[decisions]\nhttp_listen = \"127.0.0.1:0\"\ndefault_endpoint = \"images\"\n")
                .unwrap_err();
        assert!(
            e.contains(
                "decisions.default_endpoint: endpoint `images` is not defined; defined: `chat`"
            ),
            "{e}"
        );
        let e = parse("[decisions]\nhttp_listen = \"127.0.0.1:0\"\nmax_cost = -1\n").unwrap_err();
        assert!(e.contains("decisions.max_cost: must be a positive whole number, got -1"), "{e}");
        let e = parse("[decisions]\nhttp_listen = \"127.0.0.1:0\"\ntoken_env = \"MY TOKEN\"\n")
            .unwrap_err();
        assert!(
            e.contains("decisions.token_env: `MY TOKEN` is not an environment variable"),
            "{e}"
        );
        let e = parse("[decisions]\nhttp_listen = \"127.0.0.1:0\"\ndomains = []\n").unwrap_err();
        assert!(e.contains("decisions.domains: give at least one domain"), "{e}");
        let e = parse("[decisions]\nhttp_listen = \"127.0.0.1:0\"\nport = 1\n").unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn descriptor_keys_must_differ() {
        let e = parse(
            "[decisions]\ngrpc_listen = \"127.0.0.1:0\"\n[decisions.descriptors]\nmodel = \"tenant\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("p.toml:5:9: decisions.descriptors.model: descriptor key `tenant` already carries the tenant"),
            "{e}"
        );
        let e = parse(
            "[decisions]\ngrpc_listen = \"127.0.0.1:0\"\n[decisions.descriptors]\nmodel = \"\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("decisions.descriptors.model: a descriptor key must not be empty"),
            "{e}"
        );
    }
}

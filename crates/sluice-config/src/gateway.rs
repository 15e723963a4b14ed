//! The gateway's part of the policy file: `[server]`, `[tokens]`,
//! `[upstreams]`, and the routing fields of `[models]`. Validated here, with
//! the same file:line errors as the rest, so `check-config` catches a bad
//! upstream before `serve` does.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::Period;
use toml::Spanned;

use crate::listener::{DEFAULT_BODY_MEMORY_BYTES, ListenerLimits, bounded, limits};
use crate::raw::RawFile;
use crate::store::{StoreConfig, store};

/// What a request costs when its upstream fails (no connection, no answer
/// in time, or an error status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The request counts (the upstream did the work of answering it); the
    /// tokens it did not generate are refunded (the default).
    Count,
    /// What was reserved.
    Charge,
    /// Nothing: the reservation is refunded in full, request included.
    Refund,
}

/// Which tokenizer estimates a model's prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenEncoding {
    /// tiktoken `o200k_base` (GPT-4o, o-series, GPT-5).
    O200kBase,
    /// tiktoken `cl100k_base` (GPT-4, GPT-3.5).
    Cl100kBase,
    /// A byte ratio (`tokens.bytes_per_token`).
    Bytes,
}

/// `[tokens]`, validated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSettings {
    /// Output tokens reserved per choice when a request sets no `max_tokens`.
    pub default_output: u64,
    /// The most output tokens reserved per choice.
    pub max_output: u64,
    /// Bytes per token for models without a known tokenizer.
    pub bytes_per_token: f64,
    /// Prompt text up to this many bytes is counted exactly by the model's
    /// tokenizer; longer prompts are estimated from samples of as many bytes
    /// in all (the CPU an estimate may take is bounded).
    pub exact_prompt_bytes: usize,
    /// How cached and reasoning tokens count toward token limits.
    pub counting: crate::counting::TokenCounting,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            default_output: 1_024,
            max_output: 32_768,
            bytes_per_token: 4.0,
            exact_prompt_bytes: 64 * 1024,
            counting: crate::counting::TokenCounting::default(),
        }
    }
}

/// Where an upstream is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// An OpenAI-compatible server; requests go to `base_url` + the path
    /// after `/v1`.
    Url(String),
    /// The built-in mock upstream.
    Mock,
}

/// `[upstreams.<name>]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub target: UpstreamTarget,
    /// The environment variable holding its API key (read at start).
    pub api_key_env: Option<String>,
    /// Time to connect.
    pub connect_timeout: Duration,
    /// Time until its response starts.
    pub timeout: Duration,
}

/// How one model is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRoute {
    /// The model id clients send.
    pub model: String,
    /// Index into [`GatewayConfig::upstreams`] (`None` when the file has no
    /// upstreams: the policy can be checked, not served).
    pub upstream: Option<usize>,
    /// The model name sent upstream.
    pub upstream_model: Option<String>,
    /// The tokenizer for estimates (`None`: guessed from the name).
    pub encoding: Option<TokenEncoding>,
}

/// Parses `50ms`, `2s`, `1m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.trim().parse::<u64>().ok().map(Duration::from_millis);
    }
    match t.parse::<Period>().ok()? {
        Period::Seconds(s) => Some(Duration::from_secs(s.get())),
        Period::Months(_) => None,
    }
}

/// The gateway's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// Where to listen (overridable on the command line).
    pub listen: Option<SocketAddr>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Cost of a request whose upstream fails.
    pub upstream_failure: UpstreamFailure,
    /// Statuses of a failed request refunded in full (request included),
    /// whatever `upstream_failure` says: e.g. 502 and 503 when the upstream
    /// is down.
    pub refund_statuses: Vec<u16>,
    /// Grace for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Waits longer than this tell SDKs not to retry.
    pub no_retry_after: Duration,
    /// Token estimates.
    pub tokens: TokenSettings,
    /// Upstreams, in file order.
    pub upstreams: Vec<Upstream>,
    /// One route per model, in file order.
    pub routes: Vec<ModelRoute>,
    /// Where counters live.
    pub store: StoreConfig,
    /// The admin API, if it is to be served.
    pub admin: Option<AdminConfig>,
    /// The data file (relative to the policy file's folder unless absolute).
    pub data_path: Option<std::path::PathBuf>,
    /// How often counters are saved to the data file.
    pub save_every: Duration,
    /// The proxy listener's timeouts and caps.
    pub limits: ListenerLimits,
    /// Bytes of request bodies in flight at once, across every listener.
    pub body_memory_bytes: usize,
    /// The usage history (`[history]`).
    pub history: crate::history::HistoryConfig,
    /// Prometheus metrics (`[metrics]`).
    pub metrics: crate::observe::MetricsConfig,
    /// The access log (`[access_log]`).
    pub access_log: crate::observe::AccessLogConfig,
    /// Where a request's end user is read from (`[end_users]`).
    pub end_users: crate::end_users::EndUsersConfig,
}

/// `[admin]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The environment variable holding its bearer token.
    pub token_env: String,
    /// Its listener's timeouts and caps.
    pub limits: ListenerLimits,
    /// Whether it serves the usage dashboard.
    pub dashboard: bool,
    /// How long a dashboard login lasts.
    pub session_ttl: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_body_bytes: 4 * 1024 * 1024,
            upstream_failure: UpstreamFailure::Count,
            refund_statuses: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            no_retry_after: Duration::from_secs(60),
            tokens: TokenSettings::default(),
            upstreams: Vec::new(),
            routes: Vec::new(),
            store: StoreConfig::Memory,
            admin: None,
            data_path: None,
            save_every: Duration::from_secs(5),
            limits: ListenerLimits::SERVER,
            body_memory_bytes: DEFAULT_BODY_MEMORY_BYTES,
            history: crate::history::HistoryConfig::default(),
            metrics: crate::observe::MetricsConfig::default(),
            access_log: crate::observe::AccessLogConfig::default(),
            end_users: crate::end_users::EndUsersConfig::default(),
        }
    }
}

/// Collects problems as (span, field, message).
pub(crate) type Problems = Vec<(Option<std::ops::Range<usize>>, String, String)>;

pub(crate) fn duration(
    v: &Spanned<String>,
    field: &str,
    problems: &mut Problems,
) -> Option<Duration> {
    let d = parse_duration(v.get_ref());
    if d.is_none() {
        problems.push((
            Some(v.span()),
            field.into(),
            format!("`{}` is not a duration; write e.g. `50ms`, `2s`, `1m`, `1h`", v.get_ref()),
        ));
    }
    d
}

pub(crate) fn positive(v: &Spanned<i64>, field: &str, problems: &mut Problems) -> Option<u64> {
    match u64::try_from(*v.get_ref()) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            problems.push((
                Some(v.span()),
                field.into(),
                format!("must be a positive whole number, got {}", v.get_ref()),
            ));
            None
        }
    }
}

/// Validates the gateway sections of a file.
pub(crate) fn gateway(raw: &RawFile, problems: &mut Problems) -> GatewayConfig {
    let mut g = GatewayConfig {
        store: store(raw, problems),
        history: crate::history::history(raw, problems),
        metrics: crate::observe::metrics(raw, problems),
        access_log: crate::observe::access_log(raw, problems),
        end_users: crate::end_users::end_users(raw, problems),
        ..GatewayConfig::default()
    };
    if let Some(a) = &raw.admin {
        let a = a.get_ref();
        let listen = match &a.listen {
            Some(l) => {
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        problems.push((Some(l.span()), "admin.listen".into(), format!("`{}` is not a socket address; write host:port, e.g. `127.0.0.1:8090`", l.get_ref())));
                        None
                    }
                }
            }
            None => "127.0.0.1:8090".parse().ok(),
        };
        let token_env = a
            .token_env
            .as_ref()
            .map_or_else(|| "SLUICE_ADMIN_TOKEN".to_owned(), |t| t.get_ref().clone());
        if token_env.is_empty() || !token_env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            problems.push((
                a.token_env.as_ref().map(Spanned::span),
                "admin.token_env".into(),
                format!("`{token_env}` is not an environment variable name"),
            ));
        }
        let limits = limits(a.limits(), "admin", ListenerLimits::ADMIN, problems);
        let session_ttl = a
            .session_ttl
            .as_ref()
            .and_then(|d| duration(d, "admin.session_ttl", problems))
            .unwrap_or(Duration::from_secs(8 * 3600));
        if session_ttl < Duration::from_secs(60) || session_ttl > Duration::from_secs(30 * 86_400) {
            problems.push((
                a.session_ttl.as_ref().map(Spanned::span),
                "admin.session_ttl".into(),
                "between `1m` and `30d`".into(),
            ));
        }
        if let Some(listen) = listen {
            let dashboard = a.dashboard.unwrap_or(true);
            g.admin = Some(AdminConfig { listen, token_env, limits, dashboard, session_ttl });
        }
    }
    if let Some(d) = &raw.data {
        let d = d.get_ref();
        if let Some(p) = &d.path {
            if p.get_ref().trim().is_empty() {
                problems.push((Some(p.span()), "data.path".into(), "give a file name".into()));
            }
            g.data_path = Some(std::path::PathBuf::from(p.get_ref()));
        }
        if let Some(e) = &d.save_every
            && let Some(every) = duration(e, "data.save_every", problems)
        {
            g.save_every = every;
        }
    }
    if let Some(s) = &raw.server {
        let s = s.get_ref();
        if let Some(l) = &s.listen {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => g.listen = Some(a),
                Err(_) => problems.push((
                    Some(l.span()),
                    "server.listen".into(),
                    format!("`{}` is not a socket address; write host:port, e.g. `127.0.0.1:8080` or `0.0.0.0:8080`", l.get_ref()),
                )),
            }
        }
        if let Some(b) = &s.max_body_bytes
            && let Some(n) = positive(b, "server.max_body_bytes", problems)
        {
            g.max_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(f) = &s.upstream_failure {
            match f.get_ref().as_str() {
                "count" => g.upstream_failure = UpstreamFailure::Count,
                "refund" => g.upstream_failure = UpstreamFailure::Refund,
                "charge" => g.upstream_failure = UpstreamFailure::Charge,
                other => problems.push((
                    Some(f.span()),
                    "server.upstream_failure".into(),
                    format!("`{other}` is not allowed; use `count` (a failed request counts as a request, its tokens are refunded), `charge` (it costs what was reserved) or `refund` (it costs nothing)"),
                )),
            }
        }
        if let Some(list) = &s.refund_statuses {
            for (i, v) in list.get_ref().iter().enumerate() {
                let field = format!("server.refund_statuses[{i}]");
                match u16::try_from(*v.get_ref()) {
                    Ok(code) if (400..=599).contains(&code) => {
                        if g.refund_statuses.contains(&code) {
                            problems.push((Some(v.span()), field, format!("{code} is listed twice")));
                        } else {
                            g.refund_statuses.push(code);
                        }
                    }
                    _ => problems.push((
                        Some(v.span()),
                        field,
                        format!("{} is not an error status; give statuses from 400 to 599, e.g. `[502, 503]`", v.get_ref()),
                    )),
                }
            }
        }
        if let Some(d) = &s.shutdown_grace
            && let Some(d) = duration(d, "server.shutdown_grace", problems)
        {
            g.shutdown_grace = d;
        }
        if let Some(d) = &s.no_retry_after
            && let Some(d) = duration(d, "server.no_retry_after", problems)
        {
            g.no_retry_after = d;
        }
        g.limits = limits(s.limits(), "server", ListenerLimits::SERVER, problems);
        if let Some(n) = s
            .body_memory_bytes
            .as_ref()
            .and_then(|v| bounded(v, "server.body_memory_bytes".into(), 1, problems))
        {
            g.body_memory_bytes = n;
        }
    }
    if let Some(t) = &raw.tokens {
        let t = t.get_ref();
        g.tokens.counting = crate::counting::token_counting(t, problems);
        if let Some(v) = &t.default_output
            && let Some(n) = positive(v, "tokens.default_output", problems)
        {
            g.tokens.default_output = n;
        }
        if let Some(v) = &t.max_output
            && let Some(n) = positive(v, "tokens.max_output", problems)
        {
            g.tokens.max_output = n;
        }
        if let Some(v) = &t.exact_prompt_bytes
            && let Some(n) = positive(v, "tokens.exact_prompt_bytes", problems)
        {
            g.tokens.exact_prompt_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(v) = &t.bytes_per_token {
            let b = *v.get_ref();
            if b.is_finite() && b > 0.0 {
                g.tokens.bytes_per_token = b;
            } else {
                problems.push((
                    Some(v.span()),
                    "tokens.bytes_per_token".into(),
                    format!("must be a positive number, got {b}"),
                ));
            }
        }
    }
    for (name, u) in &raw.upstreams {
        let field = format!("upstreams.{name}");
        let r = u.get_ref();
        let target = match (&r.base_url, r.mock) {
            (Some(_), true) => {
                problems.push((
                    Some(u.span()),
                    field.clone(),
                    "give `base_url` or `mock = true`, not both".into(),
                ));
                continue;
            }
            (None, true) => UpstreamTarget::Mock,
            (None, false) => {
                problems.push((
                    Some(u.span()),
                    format!("{field}.base_url"),
                    "an upstream needs `base_url` (e.g. `http://127.0.0.1:8000/v1`), or `mock = true` for the built-in mock".into(),
                ));
                continue;
            }
            (Some(url), false) => {
                let text = url.get_ref().trim_end_matches('/');
                let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
                match rest {
                    Some(r)
                        if !r.is_empty()
                            && !r.starts_with('/')
                            && !text.contains(char::is_whitespace) =>
                    {
                        UpstreamTarget::Url(text.to_owned())
                    }
                    _ => {
                        problems.push((
                            Some(url.span()),
                            format!("{field}.base_url"),
                            format!("`{}` is not an http:// or https:// URL", url.get_ref()),
                        ));
                        continue;
                    }
                }
            }
        };
        let connect_timeout = r
            .connect_timeout
            .as_ref()
            .and_then(|d| duration(d, &format!("{field}.connect_timeout"), problems))
            .unwrap_or(Duration::from_secs(5));
        let timeout = r
            .timeout
            .as_ref()
            .and_then(|d| duration(d, &format!("{field}.timeout"), problems))
            .unwrap_or(Duration::from_secs(600));
        let api_key_env = r.api_key_env.as_ref().map(|e| {
            let v = e.get_ref();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                problems.push((
                    Some(e.span()),
                    format!("{field}.api_key_env"),
                    format!("`{v}` is not an environment variable name (letters, digits, _)"),
                ));
            }
            v.clone()
        });
        g.upstreams.push(Upstream {
            name: name.clone(),
            target,
            api_key_env,
            connect_timeout,
            timeout,
        });
    }
    for (model, m) in &raw.models {
        let r = m.get_ref();
        let upstream = match &r.upstream {
            Some(u) => match raw.upstreams.get_index_of(u.get_ref()) {
                Some(i) => Some(i),
                None => {
                    let names: Vec<String> =
                        raw.upstreams.keys().map(|k| format!("`{k}`")).collect();
                    problems.push((
                        Some(u.span()),
                        format!("models.{model}.upstream"),
                        format!(
                            "upstream `{}` is not defined; {}",
                            u.get_ref(),
                            if names.is_empty() {
                                "none are defined".into()
                            } else {
                                format!("defined: {}", names.join(", "))
                            }
                        ),
                    ));
                    None
                }
            },
            None if raw.upstreams.len() == 1 => Some(0),
            None if raw.upstreams.is_empty() => None,
            None => {
                problems.push((
                    Some(m.span()),
                    format!("models.{model}.upstream"),
                    "there are several upstreams: say which one serves this model (`upstream = \"...\"`)".into(),
                ));
                None
            }
        };
        let encoding = r.encoding.as_ref().and_then(|e| match e.get_ref().as_str() {
            "o200k_base" => Some(TokenEncoding::O200kBase),
            "cl100k_base" => Some(TokenEncoding::Cl100kBase),
            "bytes" => Some(TokenEncoding::Bytes),
            other => {
                problems.push((
                    Some(e.span()),
                    format!("models.{model}.encoding"),
                    format!(
                        "`{other}` is not an encoding; use `o200k_base`, `cl100k_base` or `bytes`"
                    ),
                ));
                None
            }
        });
        g.routes.push(ModelRoute {
            model: model.clone(),
            upstream,
            upstream_model: r.upstream_model.clone(),
            encoding,
        });
    }
    g
}

//! The policy file exactly as written: serde types, every field optional
//! where the file may leave it out, unknown fields refused. Nothing here is
//! trusted; `validate` turns it into a policy.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

/// A whole policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// `[policy]`: name, source, defaults.
    pub policy: Option<Spanned<RawMeta>>,
    /// `[headers]`: the header profile.
    pub headers: Option<Spanned<RawHeaders>>,
    /// `[models."<id>"]`.
    #[serde(default)]
    pub models: IndexMap<String, Spanned<RawModel>>,
    /// `[endpoints]`: `name = "/path"` or `[endpoints.<name>]`.
    pub endpoints: Option<IndexMap<String, Spanned<RawEndpoint>>>,
    /// `[tiers.<name>]`.
    #[serde(default)]
    pub tiers: IndexMap<String, Spanned<RawTier>>,
    /// `[groups.<name>]`.
    #[serde(default)]
    pub groups: IndexMap<String, Spanned<RawTier>>,
    /// `[[limits]]`: limits of every tier.
    #[serde(default)]
    pub limits: Vec<Spanned<RawLimit>>,
    /// `[[exemptions]]`.
    #[serde(default)]
    pub exemptions: Vec<Spanned<RawExemption>>,
    /// `[tenants.<id>]`.
    #[serde(default)]
    pub tenants: IndexMap<String, Spanned<RawTenant>>,
    /// `[server]`: the gateway's listener and request handling.
    pub server: Option<Spanned<RawServer>>,
    /// `[tokens]`: how token costs are estimated before a request runs, and
    /// which reported tokens count when it settles.
    pub tokens: Option<Spanned<RawTokens>>,
    /// `[upstreams.<name>]`: where requests go.
    #[serde(default)]
    pub upstreams: IndexMap<String, Spanned<RawUpstream>>,
    /// `[store]`: where counters live.
    pub store: Option<Spanned<RawStore>>,
    /// `[decisions]`: the decision service (Envoy RLS v3, JSON check/settle).
    pub decisions: Option<Spanned<crate::decisions::RawDecisions>>,
    /// `[admin]`: the admin API.
    pub admin: Option<Spanned<RawAdmin>>,
    /// `[data]`: the embedded data file.
    pub data: Option<Spanned<RawData>>,
    /// `[history]`: the usage history.
    pub history: Option<Spanned<crate::history::RawHistory>>,
    /// `[metrics]`: Prometheus metrics.
    pub metrics: Option<Spanned<crate::observe::RawMetrics>>,
    /// `[access_log]`: one JSON line per request.
    pub access_log: Option<Spanned<crate::observe::RawAccessLog>>,
    /// `[end_users]`: where a request's end user is read from.
    pub end_users: Option<Spanned<crate::end_users::RawEndUsers>>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `host:port` of the admin API.
    pub listen: Option<Spanned<String>>,
    /// The environment variable holding the admin API's bearer token.
    pub token_env: Option<Spanned<String>>,
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
    /// Whether the admin listener serves the usage dashboard (`/dashboard`).
    pub dashboard: Option<bool>,
    /// How long a dashboard login lasts (`8h`).
    pub session_ttl: Option<Spanned<String>>,
}

/// `[data]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    /// The data file (tenants, keys, saved counters).
    pub path: Option<Spanned<String>>,
    /// How often counters are saved (`5s`).
    pub save_every: Option<Spanned<String>>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `memory` (default) or `redis`.
    pub kind: Option<Spanned<String>>,
    /// A standalone server: `redis://host:port/db`.
    pub url: Option<Spanned<String>>,
    /// Cluster seed nodes.
    pub cluster: Option<Spanned<Vec<String>>>,
    /// Sentinels (with `master`).
    pub sentinels: Option<Spanned<Vec<String>>>,
    /// The master's name known to the sentinels.
    pub master: Option<Spanned<String>>,
    /// Prefix of every key (several deployments sharing one Redis).
    pub namespace: Option<Spanned<String>>,
    /// The most one call may take (`50ms`).
    pub timeout: Option<Spanned<String>>,
    /// `open`, `closed` or `local`.
    pub on_failure: Option<Spanned<String>>,
    /// While degraded, how often to try the store again (`1s`).
    pub probe_interval: Option<Spanned<String>>,
    /// With `on_failure = "local"`: how many instances share the limits.
    pub instances: Option<Spanned<i64>>,
    /// How long a concurrency slot is held unless renewed (`10s`).
    pub slot_lease: Option<Spanned<String>>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `host:port` to listen on.
    pub listen: Option<Spanned<String>>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<Spanned<i64>>,
    /// What a request costs when the upstream fails: `count`, `charge` or
    /// `refund`.
    pub upstream_failure: Option<Spanned<String>>,
    /// Statuses of a failed upstream request that refund it in full.
    pub refund_statuses: Option<Spanned<Vec<Spanned<i64>>>>,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace: Option<Spanned<String>>,
    /// Waits longer than this get `x-should-retry: false` (default `60s`).
    pub no_retry_after: Option<Spanned<String>>,
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
    /// Bytes of request bodies in flight at once, across every listener.
    pub body_memory_bytes: Option<Spanned<i64>>,
}

/// `[tokens]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// Output tokens to reserve when a request sets no `max_tokens`.
    pub default_output: Option<Spanned<i64>>,
    /// The most output tokens reserved for one choice, whatever `max_tokens` says.
    pub max_output: Option<Spanned<i64>>,
    /// Bytes per token for models without a known tokenizer.
    pub bytes_per_token: Option<Spanned<f64>>,
    /// Prompt text counted exactly up to this many bytes; beyond, sampled.
    pub exact_prompt_bytes: Option<Spanned<i64>>,
    /// Whether input tokens read from the upstream's cache count toward
    /// token limits: `count` (the default) or `exclude`.
    pub cached_input: Option<Spanned<String>>,
    /// Whether reasoning tokens count toward token limits: `count` (the
    /// default) or `exclude`.
    pub reasoning: Option<Spanned<String>>,
}

/// `[upstreams.<name>]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Base URL, up to and including `/v1` (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: Option<Spanned<String>>,
    /// The environment variable holding the upstream's own API key.
    pub api_key_env: Option<Spanned<String>>,
    /// Time to connect.
    pub connect_timeout: Option<Spanned<String>>,
    /// Time until the upstream's response starts.
    pub timeout: Option<Spanned<String>>,
    /// Serve from the built-in mock upstream (tests, benchmarks, quickstart).
    #[serde(default)]
    pub mock: bool,
}

/// `[policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeta {
    /// A name for reports.
    pub name: Option<String>,
    /// What it describes.
    pub description: Option<String>,
    /// Where the numbers come from (a URL or a document name).
    pub source: Option<OneOrMany>,
    /// The tier of tenants that name none.
    pub default_tier: Option<Spanned<String>>,
    /// How long a reservation may stay unsettled (`15m`).
    pub lease: Option<Spanned<String>>,
    /// Default kind of windows of an hour or longer: `calendar` or `rolling`.
    pub long_windows: Option<Spanned<String>>,
    /// The currency `cost` limits and prices are in (`USD`, the default).
    pub currency: Option<Spanned<String>>,
    /// The price of models without a `price` of their own.
    pub default_price: Option<Spanned<RawPrice>>,
}

/// A price per million tokens, in the policy's currency.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Input tokens (not read from a cache).
    pub input: Option<Spanned<f64>>,
    /// Input tokens read from the provider's cache (default: the input price).
    pub cached_input: Option<Spanned<f64>>,
    /// Output tokens, reasoning included.
    pub output: Option<Spanned<f64>>,
}

/// A number as written: a whole number, or a decimal (money).
#[derive(Debug, Clone, Copy)]
pub enum RawNumber {
    /// `2000`
    Whole(i64),
    /// `12.5`
    Decimal(f64),
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawNumber, E> {
                Ok(RawNumber::Whole(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawNumber, E> {
                Ok(i64::try_from(v).map_or(RawNumber::Decimal(v as f64), RawNumber::Whole))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawNumber, E> {
                Ok(RawNumber::Decimal(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for RawNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole(n) => write!(f, "{n}"),
            Self::Decimal(x) => write!(f, "{x}"),
        }
    }
}

/// `[headers]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    /// Header families: `requests`, `tokens`, `requests-day`, …
    pub families: Option<Spanned<Vec<String>>>,
    /// `duration`, `seconds`, `epoch` or `none`.
    pub reset: Option<Spanned<String>>,
    /// Send IETF `RateLimit` / `RateLimit-Policy`.
    pub ietf: Option<bool>,
}

/// `[models."<id>"]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `production`, `preview`, …
    pub class: Option<String>,
    /// Who makes it (for tables).
    pub developer: Option<String>,
    /// The upstream that serves it (default: the only upstream).
    pub upstream: Option<Spanned<String>>,
    /// The name sent upstream (default: the model id).
    pub upstream_model: Option<String>,
    /// Tokenizer for estimates: `o200k_base`, `cl100k_base` or `bytes`
    /// (default: guessed from the name, else bytes).
    pub encoding: Option<Spanned<String>>,
    /// Its price per million tokens (for `cost` limits).
    pub price: Option<Spanned<RawPrice>>,
}

/// An endpoint: its path, or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    /// `chat = "/v1/chat/completions"`
    Path(String),
    /// `[endpoints.chat]`
    Table(RawEndpointTable),
}

/// `[endpoints.<name>]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    /// Request path.
    pub path: Option<String>,
}

/// `[tiers.<name>]` or `[groups.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// For people.
    pub description: Option<String>,
    /// The tier this one starts from (tiers only).
    pub extends: Option<Spanned<String>>,
    /// Only the models in this tier's table (and its parents') are available
    /// to its tenants; others get "model not found" (tiers only).
    #[serde(default)]
    pub listed_models_only: bool,
    /// How long its tenants' refused requests may wait for room instead of
    /// a 429 (`2s`; tiers only).
    pub max_wait: Option<Spanned<String>>,
    /// Per-model table: `"<model>" = { rpm = 60, rpd = 12000 }`.
    #[serde(default)]
    pub models: IndexMap<String, Spanned<IndexMap<String, Spanned<i64>>>>,
    /// Other limits.
    #[serde(default)]
    pub limits: Vec<Spanned<RawLimit>>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// As a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `fact = value` or `fact = [values]`.
pub type RawCondition = IndexMap<String, OneOrMany>;

/// `unless`: one condition or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawUnless {
    /// `unless = { … }`
    One(RawCondition),
    /// `unless = [{ … }, { … }]`
    Many(Vec<RawCondition>),
}

/// `[[limits]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Unique within its tier, group, or the top level.
    pub name: Option<Spanned<String>>,
    /// For people.
    pub description: Option<String>,
    /// `requests`, `tokens`, `input_tokens`, `output_tokens`, `concurrent`,
    /// `cost`.
    pub metric: Spanned<String>,
    /// Units per window (for `cost`: money, in the policy's currency).
    pub amount: Spanned<RawNumber>,
    /// `1m`, `1h`, `1d`, `1mo`, …
    pub window: Option<Spanned<String>>,
    /// `rolling` or `calendar`.
    pub kind: Option<Spanned<String>>,
    /// Most that may be spent at once (rolling).
    pub burst: Option<Spanned<i64>>,
    /// Facts that split the counter.
    #[serde(default)]
    pub by: Vec<Spanned<String>>,
    /// Applies only when all of these hold.
    pub when: Option<Spanned<RawCondition>>,
    /// Does not apply when this (or any of these) holds.
    pub unless: Option<Spanned<RawUnless>>,
    /// Reported, never denies.
    #[serde(default)]
    pub shadow: bool,
    /// Explicit counter name.
    pub counter: Option<String>,
    /// How long a request it refuses may wait for room instead of a 429
    /// (`2s`; default: its tier's).
    pub max_wait: Option<Spanned<String>>,
    /// Never passed: a request's output is cut at what it reserved.
    pub hard: Option<Spanned<bool>>,
}

/// `[[exemptions]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExemption {
    /// For reports.
    pub name: Option<String>,
    /// Why (e.g. the provider's note).
    pub description: Option<String>,
    /// Limit names, or `*` (the default) for all.
    #[serde(default)]
    pub limits: Vec<Spanned<String>>,
    /// When it applies.
    pub when: Spanned<RawCondition>,
}

/// `[tenants.<id>]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// For people.
    pub name: Option<String>,
    /// Tier (default: the policy's default tier).
    pub tier: Option<Spanned<String>>,
    /// `production`, `sandbox`, `demo`, `trial`, …
    pub environment: Option<String>,
    /// Groups it belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: IndexMap<String, String>,
    /// IANA time zone of its calendar windows.
    pub time_zone: Option<Spanned<String>>,
    /// Limit names it is exempt from.
    #[serde(default)]
    pub exempt: Vec<Spanned<String>>,
    /// Granted amounts: `"<limit>" = 2000` or `{ amount = 2000, until = "2026-12-31" }`.
    #[serde(default)]
    pub overrides: IndexMap<String, Spanned<RawOverride>>,
    /// Its API keys.
    #[serde(default)]
    pub keys: Vec<Spanned<RawKey>>,
}

/// An override: an amount, or an amount with an end.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawOverride {
    /// `"<limit>" = 2000`
    Amount(RawNumber),
    /// `"<limit>" = { amount = 2000, until = "2026-12-31" }`
    Full {
        /// The amount.
        amount: RawNumber,
        /// End (RFC 3339 date or timestamp).
        until: Option<String>,
    },
}

/// `[[tenants.<id>.keys]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// A name for the key (not the secret).
    pub id: Option<Spanned<String>>,
    /// `sha256:<hex>` of the secret, as `sluice keys generate` prints it.
    pub hash: Spanned<String>,
    /// Labels such as `channel = "apex"`.
    #[serde(default)]
    pub labels: IndexMap<String, String>,
    /// Limit names it is exempt from.
    #[serde(default)]
    pub exempt: Vec<Spanned<String>>,
    /// Its own amounts of limits split by key: `"<limit>" = 20` or
    /// `{ amount = 20, until = "2026-12-31" }`.
    #[serde(default)]
    pub overrides: IndexMap<String, Spanned<RawOverride>>,
}

macro_rules! raw_limits {
    ($($t:ty),*) => {$(
        impl $t {
            /// The listener limits as written.
            pub(crate) fn limits(&self) -> crate::listener::RawLimits<'_> {
                crate::listener::RawLimits {
                    head_timeout: self.head_timeout.as_ref(),
                    body_timeout: self.body_timeout.as_ref(),
                    idle_timeout: self.idle_timeout.as_ref(),
                    max_connections: self.max_connections.as_ref(),
                    max_head_bytes: self.max_head_bytes.as_ref(),
                }
            }
        }
    )*};
}
raw_limits!(RawServer, RawAdmin, crate::decisions::RawDecisions, crate::observe::RawMetrics);

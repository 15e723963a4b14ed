//! A validated, compiled policy: models, endpoints, tiers, limits, exemptions.
//!
//! Policies are written as text (see `sluice-config`) and built here through
//! [`PolicyBuilder`], which interns every name a condition can test so that
//! matching a request is integer comparison, and indexes each tier's limits by
//! model so that planning an admission only looks at limits that can apply.
//!
//! A limit's *counter identity* is what keeps counts across reloads, tier
//! changes and raised limits: it is derived from what the limit counts (metric,
//! window, partition) and its scope, never from its amount or from the tier it
//! sits in, unless the policy names a counter explicitly.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::metric::Metric;
use crate::window::{Period, Window, WindowError};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            /// As an index.
            pub const fn index(self) -> usize { self.0 as usize }
        }
    };
}

id_type!(
    /// A model of the policy.
    ModelId
);
id_type!(
    /// An endpoint of the policy.
    EndpointId
);
id_type!(
    /// A tier of the policy.
    TierId
);
id_type!(
    /// A limit of the policy.
    LimitId
);

/// A string interned by the policy; `Sym::NONE` stands for any string no
/// condition mentions (it matches no condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sym(pub u32);

impl Sym {
    /// A value no condition mentions.
    pub const NONE: Sym = Sym(u32::MAX);
}

/// Strings of one domain, numbered.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    index: HashMap<Box<str>, Sym>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.index.get(s) {
            return sym;
        }
        let sym = Sym(u32::try_from(self.names.len()).unwrap_or(u32::MAX - 1));
        self.index.insert(s.into(), sym);
        self.names.push(s.into());
        sym
    }

    pub(crate) fn get(&self, s: &str) -> Sym {
        self.index.get(s).copied().unwrap_or(Sym::NONE)
    }

    pub(crate) fn name(&self, sym: Sym) -> &str {
        self.names.get(sym.0 as usize).map_or("?", |s| s)
    }
}

/// A stable 64-bit hash of a name (xxh3; part of counter identities, so it
/// must never change between versions).
pub fn name_hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// A fact about a request that conditions test and partitions split on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fact {
    /// The tenant's id.
    Tenant,
    /// The tenant's tier.
    Tier,
    /// The tenant's environment (production, sandbox, …).
    Environment,
    /// One of the tenant's groups.
    Group,
    /// A label of the tenant.
    TenantLabel(String),
    /// The API key (its id).
    Key,
    /// A label of the API key (e.g. `channel`).
    KeyLabel(String),
    /// The endpoint called.
    Endpoint,
    /// The model asked for.
    Model,
    /// The model's class (production, preview, …).
    ModelClass,
}

impl Fact {
    /// Parses the spelling used in policy files: `tier`, `environment`,
    /// `group`, `tenant`, `tenant.<label>`, `key`, `key.<label>`, `endpoint`,
    /// `model`, `model_class`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tenant" => Self::Tenant,
            "tier" => Self::Tier,
            "environment" | "env" => Self::Environment,
            "group" | "groups" => Self::Group,
            "key" => Self::Key,
            "endpoint" => Self::Endpoint,
            "model" => Self::Model,
            "model_class" | "class" => Self::ModelClass,
            _ => {
                if let Some(l) = s.strip_prefix("tenant.").filter(|l| !l.is_empty()) {
                    Self::TenantLabel(l.to_owned())
                } else if let Some(l) = s.strip_prefix("key.").filter(|l| !l.is_empty()) {
                    Self::KeyLabel(l.to_owned())
                } else {
                    return None;
                }
            }
        })
    }

    /// Whether a limit may partition its counter by this fact. Facts of the
    /// tenant itself are constant for one tenant, so they cannot split it.
    pub const fn can_partition(&self) -> bool {
        matches!(
            self,
            Self::Key | Self::KeyLabel(_) | Self::Endpoint | Self::Model | Self::ModelClass
        )
    }
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tenant => f.write_str("tenant"),
            Self::Tier => f.write_str("tier"),
            Self::Environment => f.write_str("environment"),
            Self::Group => f.write_str("group"),
            Self::TenantLabel(l) => write!(f, "tenant.{l}"),
            Self::Key => f.write_str("key"),
            Self::KeyLabel(l) => write!(f, "key.{l}"),
            Self::Endpoint => f.write_str("endpoint"),
            Self::Model => f.write_str("model"),
            Self::ModelClass => f.write_str("model_class"),
        }
    }
}

/// `fact ∈ values`, before compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClauseSpec {
    /// What is tested.
    pub fact: Fact,
    /// Any of these values matches.
    pub values: Vec<String>,
}

/// All clauses must hold.
pub type ConditionSpec = Vec<ClauseSpec>;

/// Where a limit is written, which decides who it can apply to and its counter
/// identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Top-level: every tier.
    Global,
    /// One tier (and tiers that extend it).
    Tier(String),
    /// Tenants in one group.
    Group(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Global => f.write_str("all tiers"),
            Self::Tier(t) => write!(f, "tier {t}"),
            Self::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// A limit as written, before compilation.
#[derive(Clone, Debug)]
pub struct LimitSpec {
    /// Unique within its scope; overrides and exemptions refer to it.
    pub name: String,
    /// Where it is written.
    pub scope: Scope,
    /// What it counts.
    pub metric: Metric,
    /// How much per window (or at once, for `concurrent`).
    pub amount: u64,
    /// For rolling windows: the most that can be spent at once (default: amount).
    pub burst: Option<u64>,
    /// The window (`None` for `concurrent`).
    pub window: Option<Window>,
    /// Facts that split the counter (none: one counter for the whole tenant).
    pub by: Vec<Fact>,
    /// Applies only when all of these hold.
    pub when: ConditionSpec,
    /// Does not apply when any of these holds.
    pub unless: Vec<ConditionSpec>,
    /// Evaluated and reported, never denies.
    pub shadow: bool,
    /// An explicit counter name, replacing the derived identity.
    pub counter: Option<String>,
    /// Where it came from, for messages (e.g. `policy.toml:12`).
    pub origin: Option<String>,
}

/// Which limits an exemption or a tenant's `exempt` list covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LimitSet {
    /// None.
    #[default]
    Nothing,
    /// Every limit.
    All,
    /// These limits.
    Some(SmallVec<[LimitId; 4]>),
}

impl LimitSet {
    /// Whether `id` is covered.
    pub fn contains(&self, id: LimitId) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Some(ids) => ids.contains(&id),
        }
    }
}

/// A policy-wide exemption, as written.
#[derive(Clone, Debug)]
pub struct ExemptionSpec {
    /// A name for reports.
    pub name: String,
    /// Limit names it covers; empty or `*` means all.
    pub limits: Vec<String>,
    /// When it applies.
    pub when: ConditionSpec,
}

/// Which header families the gateway sends and how it spells resets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderProfile {
    /// Which `x-ratelimit-*` families to send.
    pub families: Vec<HeaderFamily>,
    /// How `x-ratelimit-reset-*` is written.
    pub reset: ResetFormat,
    /// Whether to send the IETF `RateLimit` / `RateLimit-Policy` fields.
    pub ietf: bool,
}

impl Default for HeaderProfile {
    fn default() -> Self {
        Self {
            families: vec![
                HeaderFamily::new(HeaderMetric::Requests, HeaderSpan::Minute),
                HeaderFamily::new(HeaderMetric::Tokens, HeaderSpan::Minute),
                HeaderFamily::new(HeaderMetric::Requests, HeaderSpan::Day),
                HeaderFamily::new(HeaderMetric::Tokens, HeaderSpan::Day),
            ],
            reset: ResetFormat::Duration,
            ietf: false,
        }
    }
}

/// One `x-ratelimit-{limit,remaining,reset}-<suffix>` family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeaderFamily {
    /// Requests or tokens.
    pub metric: HeaderMetric,
    /// Which windows it shows.
    pub span: HeaderSpan,
}

impl HeaderFamily {
    /// A family.
    pub const fn new(metric: HeaderMetric, span: HeaderSpan) -> Self {
        Self { metric, span }
    }

    /// The header suffix: `requests`, `tokens-day`, `input-tokens-hour`, …
    pub fn suffix(&self) -> String {
        match self.span.suffix() {
            "" => self.metric.as_str().to_owned(),
            s => format!("{}-{s}", self.metric.as_str()),
        }
    }

    /// Parses a suffix such as `requests`, `requests-day`, `tokens-hour`.
    pub fn parse(s: &str) -> Option<Self> {
        let (metric, span) = [
            ("input-tokens", HeaderMetric::InputTokens),
            ("output-tokens", HeaderMetric::OutputTokens),
            ("requests", HeaderMetric::Requests),
            ("tokens", HeaderMetric::Tokens),
        ]
        .into_iter()
        .find_map(|(p, m)| s.strip_prefix(p).map(|rest| (m, rest)))?;
        let span = match span {
            "" => HeaderSpan::Minute,
            "-hour" => HeaderSpan::Hour,
            "-day" => HeaderSpan::Day,
            "-month" => HeaderSpan::Month,
            _ => return None,
        };
        Some(Self { metric, span })
    }

    /// Whether a limit with this metric and window belongs to this family.
    pub fn shows(&self, metric: Metric, window: Option<&Window>) -> bool {
        let Some(w) = window else { return false };
        self.metric.matches(metric) && HeaderSpan::of(w.period) == self.span
    }
}

/// The metric part of a header family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderMetric {
    /// `requests`
    Requests,
    /// `tokens`
    Tokens,
    /// `input-tokens`
    InputTokens,
    /// `output-tokens`
    OutputTokens,
}

impl HeaderMetric {
    /// The spelling in header names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input-tokens",
            Self::OutputTokens => "output-tokens",
        }
    }

    const fn matches(self, m: Metric) -> bool {
        matches!(
            (self, m),
            (Self::Requests, Metric::Requests)
                | (Self::Tokens, Metric::Tokens)
                | (Self::InputTokens, Metric::InputTokens)
                | (Self::OutputTokens, Metric::OutputTokens)
        )
    }
}

/// Which window lengths a family shows: unsuffixed headers show windows
/// shorter than an hour (the provider convention: "per minute").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderSpan {
    /// Shorter than an hour (no suffix).
    Minute,
    /// An hour up to a day (`-hour`).
    Hour,
    /// A day up to a month (`-day`).
    Day,
    /// A month or longer (`-month`).
    Month,
}

impl HeaderSpan {
    /// The span a period falls in.
    pub fn of(p: Period) -> Self {
        match p {
            Period::Months(_) => Self::Month,
            Period::Seconds(s) => match s.get() {
                s if s < 3_600 => Self::Minute,
                s if s < 86_400 => Self::Hour,
                s if s < 28 * 86_400 => Self::Day,
                _ => Self::Month,
            },
        }
    }

    /// The header suffix.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Minute => "",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// How reset instants are written in `x-ratelimit-reset-*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetFormat {
    /// A Go-style duration until reset: `6m0s`, `1.5s`, `12ms` (OpenAI).
    Duration,
    /// Seconds until reset, as a decimal: `33011.38` (Cerebras).
    Seconds,
    /// The reset instant in Unix seconds (SambaNova's "epoch time").
    Epoch,
    /// No reset headers (Llama API).
    Omit,
}

/// A model the policy knows.
#[derive(Clone, Debug)]
pub struct Model {
    /// Its id, as clients send it.
    pub name: Arc<str>,
    /// Its class (production, preview, …), if any.
    pub class: Option<Sym>,
    /// Stable hash of the name (partitions).
    pub hash: u64,
}

/// An endpoint the policy knows.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Its name (`chat`, `embeddings`, …).
    pub name: Arc<str>,
    /// Stable hash of the name.
    pub hash: u64,
}

/// A tier (plan).
#[derive(Clone, Debug)]
pub struct Tier {
    /// Its name.
    pub name: Arc<str>,
    /// A sentence for people.
    pub description: Option<String>,
    /// The tier it extends.
    pub extends: Option<TierId>,
    /// Limits that can apply to its tenants, per model (index = model id; the
    /// last entry is for requests with no or an unknown model).
    pub(crate) by_model: Vec<Candidates>,
    /// Every limit that can apply to its tenants.
    pub(crate) all: Vec<LimitId>,
    /// The models its tenants may use (`None`: every model).
    pub allowed_models: Option<Vec<ModelId>>,
}

/// The limits that can apply to one tier's requests for one model, with
/// what planning can know about them in advance.
#[derive(Clone, Debug, Default)]
pub(crate) struct Candidates {
    /// The limits, in id order, each with whether its conditions hold for
    /// every request of this tier and model (they name only the tier and
    /// the model, and it has no `unless`), so planning need not test them.
    pub(crate) limits: Vec<(LimitId, bool)>,
    /// No two of the limits share a counter identity, so no two can name
    /// one counter and planning need not look for one.
    pub(crate) distinct: bool,
}

/// A tier as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierSpec {
    /// Its name.
    pub name: String,
    /// A sentence for people.
    pub description: Option<String>,
    /// The tier it starts from.
    pub extends: Option<String>,
    /// The only models its tenants may use (`None`: every model).
    pub allowed_models: Option<Vec<String>>,
}

/// A compiled condition clause.
#[derive(Clone, Debug)]
pub(crate) enum Clause {
    Tenant(SmallVec<[Sym; 4]>),
    Tier(SmallVec<[TierId; 4]>),
    Environment(SmallVec<[Sym; 4]>),
    Group(SmallVec<[Sym; 4]>),
    TenantLabel(Sym, SmallVec<[Sym; 4]>),
    Key(SmallVec<[Sym; 4]>),
    KeyLabel(Sym, SmallVec<[Sym; 4]>),
    Endpoint(SmallVec<[EndpointId; 4]>),
    Model(SmallVec<[ModelId; 4]>),
    ModelClass(SmallVec<[Sym; 4]>),
}

/// A compiled conjunction of clauses.
pub(crate) type Condition = SmallVec<[Clause; 2]>;

/// What a counter is split by, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Key,
    /// The label (interned) and the stable hash of its name.
    KeyLabel(Sym, u64),
    Endpoint,
    Model,
    ModelClass,
}

/// A compiled limit.
#[derive(Clone, Debug)]
pub struct Limit {
    /// Its name.
    pub name: Arc<str>,
    /// Where it is written.
    pub scope: Scope,
    /// What it counts.
    pub metric: Metric,
    /// Default amount.
    pub amount: u64,
    /// Burst for rolling windows.
    pub burst: Option<u64>,
    /// Window (`None` for concurrency).
    pub window: Option<Window>,
    /// Partition facts, as written.
    pub by: Vec<Fact>,
    /// Shadow (dry-run) limit.
    pub shadow: bool,
    /// The counter identity, e.g. `requests/1m/rolling/by:model`.
    pub counter: Arc<str>,
    /// Where it was written.
    pub origin: Option<String>,
    /// The `when` condition, as written.
    pub when_spec: ConditionSpec,
    /// The `unless` conditions, as written.
    pub unless_spec: Vec<ConditionSpec>,
    pub(crate) identity: u64,
    pub(crate) when: Condition,
    pub(crate) unless: SmallVec<[Condition; 1]>,
    pub(crate) parts: SmallVec<[Part; 2]>,
    /// Whether the model decides if this limit applies or which counter it
    /// charges (its `by`, `when` or `unless` name the model or its class, or
    /// an exemption that covers it does): such a limit cannot be checked
    /// before a request's body is read.
    pub(crate) needs_model: bool,
}

impl Limit {
    /// Whether the model decides if this limit applies or which counter it
    /// charges. Limits that do not can be checked from a request's head
    /// alone ([`Policy::plan_before_body`]).
    pub fn needs_model(&self) -> bool {
        self.needs_model
    }

    /// A short human description: `requests per minute`, `tokens per day`.
    pub fn describe(&self) -> String {
        match &self.window {
            None => "requests in flight".to_owned(),
            Some(w) => format!("{} per {}", self.metric, describe_period(w.period)),
        }
    }

    /// The rate shorthand providers use: RPM, TPD, RPH, …
    pub fn shorthand(&self) -> String {
        let m = match self.metric {
            Metric::Requests => "R",
            Metric::Tokens => "T",
            Metric::InputTokens => "IT",
            Metric::OutputTokens => "OT",
            Metric::Concurrent => return "concurrent".into(),
        };
        let w = match self.window.map(|w| w.period) {
            Some(Period::Seconds(s)) => match s.get() {
                1 => "PS".to_owned(),
                60 => "PM".to_owned(),
                3_600 => "PH".to_owned(),
                86_400 => "PD".to_owned(),
                604_800 => "PW".to_owned(),
                _ => format!("/{}", Period::Seconds(s)),
            },
            Some(Period::Months(m)) if m.get() == 1 => "/month".to_owned(),
            Some(p) => format!("/{p}"),
            None => String::new(),
        };
        format!("{m}{w}")
    }
}

/// `minute`, `day`, `30 days`, `month`.
pub fn describe_period(p: Period) -> String {
    match p {
        Period::Months(m) if m.get() == 1 => "month".into(),
        Period::Months(m) => format!("{m} months"),
        Period::Seconds(s) => {
            let s = s.get();
            for (unit, one) in
                [(604_800, "week"), (86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")]
            {
                if s % unit == 0 {
                    let n = s / unit;
                    return if n == 1 { one.to_owned() } else { format!("{n} {one}s") };
                }
            }
            format!("{s} seconds")
        }
    }
}

/// A compiled policy-wide exemption.
#[derive(Clone, Debug)]
pub struct Exemption {
    /// Its name.
    pub name: String,
    /// What it covers.
    pub limits: LimitSet,
    pub(crate) when: Condition,
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A name referred to something the policy does not define.
    #[error("{what} `{name}` is not defined{hint}")]
    Unknown {
        /// Kind of thing.
        what: &'static str,
        /// The name used.
        name: String,
        /// What is defined, or nothing.
        hint: String,
    },
    /// Two things with one name.
    #[error("{what} `{name}` is defined twice")]
    Duplicate {
        /// Kind of thing.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A limit that cannot work.
    #[error("limit `{limit}`: {reason}")]
    BadLimit {
        /// Limit name.
        limit: String,
        /// Why.
        reason: String,
    },
    /// A window that cannot work.
    #[error("limit `{limit}`: {source}")]
    BadWindow {
        /// Limit name.
        limit: String,
        /// Why.
        source: WindowError,
    },
    /// Tiers that extend each other in a circle.
    #[error("tier `{0}` extends itself (through `extends`)")]
    Cycle(String),
}

/// Lists defined names for an error hint.
pub(crate) fn hint<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() { String::new() } else { format!("; defined: {}", names.join(", ")) }
}

/// The compiled policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) models: Vec<Model>,
    /// Looked up on every request with the client's model name: hashed
    /// with hashbrown's default (foldhash, seeded per process) rather than
    /// SipHash. Its keys come from the policy, never from requests, so no
    /// client can fill it with colliding names.
    pub(crate) model_index: hashbrown::HashMap<Box<str>, ModelId>,
    pub(crate) classes: Interner,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) endpoint_index: HashMap<Box<str>, EndpointId>,
    pub(crate) tiers: Vec<Tier>,
    pub(crate) tier_index: HashMap<Box<str>, TierId>,
    pub(crate) default_tier: Option<TierId>,
    pub(crate) limits: Vec<Limit>,
    pub(crate) limits_by_name: HashMap<Box<str>, SmallVec<[LimitId; 4]>>,
    pub(crate) exemptions: Vec<Exemption>,
    pub(crate) groups: Interner,
    pub(crate) environments: Interner,
    pub(crate) tenant_names: Interner,
    pub(crate) key_names: Interner,
    pub(crate) tenant_label_keys: Interner,
    pub(crate) key_label_keys: Interner,
    pub(crate) label_values: Interner,
    pub(crate) headers: HeaderProfile,
    pub(crate) lease: Duration,
}

impl Policy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Looks a model up by the id clients send.
    pub fn model(&self, name: &str) -> Option<ModelId> {
        self.model_index.get(name).copied()
    }

    /// The model behind an id.
    pub fn model_info(&self, id: ModelId) -> Option<&Model> {
        self.models.get(id.index())
    }

    /// Every model, in definition order.
    pub fn models(&self) -> impl Iterator<Item = (ModelId, &Model)> {
        self.models.iter().enumerate().map(|(i, m)| (ModelId(i as u32), m))
    }

    /// The name of a model class.
    pub fn class_name(&self, class: Sym) -> &str {
        self.classes.name(class)
    }

    /// Looks an endpoint up by name.
    pub fn endpoint(&self, name: &str) -> Option<EndpointId> {
        self.endpoint_index.get(name).copied()
    }

    /// The endpoint behind an id.
    pub fn endpoint_info(&self, id: EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(id.index())
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = (EndpointId, &Endpoint)> {
        self.endpoints.iter().enumerate().map(|(i, e)| (EndpointId(i as u32), e))
    }

    /// Looks a tier up by name.
    pub fn tier(&self, name: &str) -> Option<TierId> {
        self.tier_index.get(name).copied()
    }

    /// The tier behind an id.
    pub fn tier_info(&self, id: TierId) -> Option<&Tier> {
        self.tiers.get(id.index())
    }

    /// Every tier.
    pub fn tiers(&self) -> impl Iterator<Item = (TierId, &Tier)> {
        self.tiers.iter().enumerate().map(|(i, t)| (TierId(i as u32), t))
    }

    /// The tier a tenant gets when none is given.
    pub fn default_tier(&self) -> Option<TierId> {
        self.default_tier
    }

    /// The limit behind an id.
    pub fn limit(&self, id: LimitId) -> Option<&Limit> {
        self.limits.get(id.index())
    }

    /// Every limit.
    pub fn limits(&self) -> impl Iterator<Item = (LimitId, &Limit)> {
        self.limits.iter().enumerate().map(|(i, l)| (LimitId(i as u32), l))
    }

    /// Limits with this name (one per scope at most).
    pub fn limits_named(&self, name: &str) -> &[LimitId] {
        self.limits_by_name.get(name).map_or(&[], |v| v.as_slice())
    }

    /// Whether tenants of `tier` may use `model`.
    pub fn model_allowed(&self, tier: TierId, model: crate::facts::ModelRef) -> bool {
        match self.tiers.get(tier.index()).and_then(|t| t.allowed_models.as_ref()) {
            None => true,
            Some(allowed) => model.id.is_some_and(|m| allowed.contains(&m)),
        }
    }

    /// Limits that can apply to a tenant of `tier` (before conditions).
    pub fn tier_limits(&self, tier: TierId) -> &[LimitId] {
        self.tiers.get(tier.index()).map_or(&[], |t| t.all.as_slice())
    }

    /// Policy-wide exemptions.
    pub fn exemptions(&self) -> &[Exemption] {
        &self.exemptions
    }

    /// The header profile.
    pub fn headers(&self) -> &HeaderProfile {
        &self.headers
    }

    /// How long a reservation may stay unsettled.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}

/// Builds a [`Policy`] from specs. Every reference is checked; the first
/// problem is returned.
#[derive(Debug, Default)]
pub struct PolicyBuilder {
    pub(crate) name: String,
    pub(crate) models: Vec<(String, Option<String>)>,
    pub(crate) endpoints: Vec<String>,
    pub(crate) tiers: Vec<TierSpec>,
    pub(crate) default_tier: Option<String>,
    pub(crate) limits: Vec<LimitSpec>,
    pub(crate) exemptions: Vec<ExemptionSpec>,
    pub(crate) headers: HeaderProfile,
    pub(crate) lease: Option<Duration>,
}

/// The endpoints a policy has when it declares none.
pub const DEFAULT_ENDPOINTS: [&str; 4] = ["chat", "completions", "embeddings", "feedback"];

impl PolicyBuilder {
    /// A builder for a policy called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }

    /// Adds a model with an optional class.
    pub fn model(&mut self, name: impl Into<String>, class: Option<String>) -> &mut Self {
        self.models.push((name.into(), class));
        self
    }

    /// Adds an endpoint.
    pub fn endpoint(&mut self, name: impl Into<String>) -> &mut Self {
        self.endpoints.push(name.into());
        self
    }

    /// Adds a tier.
    pub fn tier(&mut self, spec: TierSpec) -> &mut Self {
        self.tiers.push(spec);
        self
    }

    /// Sets the tier tenants get by default.
    pub fn default_tier(&mut self, name: impl Into<String>) -> &mut Self {
        self.default_tier = Some(name.into());
        self
    }

    /// Adds a limit.
    pub fn limit(&mut self, spec: LimitSpec) -> &mut Self {
        self.limits.push(spec);
        self
    }

    /// Adds a policy-wide exemption.
    pub fn exemption(&mut self, spec: ExemptionSpec) -> &mut Self {
        self.exemptions.push(spec);
        self
    }

    /// Sets the header profile.
    pub fn headers(&mut self, headers: HeaderProfile) -> &mut Self {
        self.headers = headers;
        self
    }

    /// Sets the reservation lease.
    pub fn lease(&mut self, lease: Duration) -> &mut Self {
        self.lease = Some(lease);
        self
    }

    /// Compiles the policy.
    pub fn build(&self) -> Result<Policy, PolicyError> {
        crate::compile::compile(self)
    }
}

/// The derived counter identity of a limit: what it counts (metric, window,
/// partition), which requests it counts (its `when` clauses on facts of the
/// request: endpoint, model, model class, key), whether it is a shadow, and a
/// group prefix for group limits. Facts of the tenant (tier, environment,
/// groups, labels) are left out on purpose: a tenant that changes tier or
/// environment keeps its counts. An explicit `counter` name replaces it all.
pub fn counter_identity(spec: &LimitSpec) -> String {
    if let Some(c) = &spec.counter {
        return format!("named:{c}");
    }
    let mut s = String::new();
    if spec.shadow {
        s.push_str("shadow/");
    }
    if let Scope::Group(g) = &spec.scope {
        s.push_str("group:");
        s.push_str(g);
        s.push('/');
    }
    s.push_str(spec.metric.as_str());
    if let Some(w) = &spec.window {
        s.push('/');
        s.push_str(&w.period.spelling());
        s.push('/');
        s.push_str(w.kind.as_str());
    }
    if !spec.by.is_empty() {
        s.push_str("/by:");
        let by: Vec<String> = spec.by.iter().map(ToString::to_string).collect();
        s.push_str(&by.join(","));
    }
    let mut request_clauses: Vec<String> = spec
        .when
        .iter()
        .filter(|c| {
            matches!(
                c.fact,
                Fact::Endpoint | Fact::Model | Fact::ModelClass | Fact::Key | Fact::KeyLabel(_)
            )
        })
        .map(|c| {
            let mut values = c.values.clone();
            values.sort();
            values.dedup();
            format!("{}={}", c.fact, values.join("|"))
        })
        .collect();
    request_clauses.sort();
    for c in request_clauses {
        s.push_str("/when:");
        s.push_str(&c);
    }
    s
}

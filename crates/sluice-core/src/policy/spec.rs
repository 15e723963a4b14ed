//! The policy as written, before compilation: facts, conditions, scopes,
//! limits, exemptions and tiers as specs, and the counter identity derived
//! from a limit's spec.

use std::fmt;

use crate::metric::Metric;
use crate::window::Window;

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
    /// The end user inside the tenant (OpenAI's `user` field, or a header
    /// the operator names); requests that name none are the end user `""`.
    User,
}

impl Fact {
    /// Parses the spelling used in policy files: `tier`, `environment`,
    /// `group`, `tenant`, `tenant.<label>`, `key`, `key.<label>`, `endpoint`,
    /// `model`, `model_class`, `user` (or `end_user`).
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
            "user" | "end_user" => Self::User,
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
            Self::Key
                | Self::KeyLabel(_)
                | Self::Endpoint
                | Self::Model
                | Self::ModelClass
                | Self::User
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
            Self::User => f.write_str("user"),
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
    /// How long a request it refuses may wait for room instead of a 429
    /// (`None`: its tier's `max_wait`, else no wait).
    pub max_wait: Option<std::time::Duration>,
    /// Hard: a request it applies to never produces more output than it
    /// reserved (a stream is ended there), so the limit is never passed.
    pub hard: bool,
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
    /// How long its tenants' refused requests may wait for room instead of
    /// a 429, for limits that do not say (`None`: the tier it extends).
    pub max_wait: Option<std::time::Duration>,
}

/// The derived counter identity of a limit: what it counts (metric, window,
/// partition), which requests it counts (its `when` clauses on facts of the
/// request: endpoint, model, model class, key, end user), whether it is a
/// shadow, and a group prefix for group limits. Facts of the tenant (tier,
/// environment, groups, labels) are left out on purpose: a tenant that
/// changes tier or environment keeps its counts. An explicit `counter` name replaces it all.
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
                Fact::Endpoint
                    | Fact::Model
                    | Fact::ModelClass
                    | Fact::Key
                    | Fact::KeyLabel(_)
                    | Fact::User
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

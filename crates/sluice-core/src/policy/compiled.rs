//! The compiled parts of a policy: models, endpoints, tiers (with their
//! limits indexed by model), conditions, limits and exemptions, as planning
//! reads them.

use std::sync::Arc;

use smallvec::SmallVec;

use super::{ConditionSpec, EndpointId, Fact, LimitId, ModelId, Scope, Sym, TierId};
use crate::metric::Metric;
use crate::window::{Period, Window};

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

/// A model the policy knows.
#[derive(Clone, Debug)]
pub struct Model {
    /// Its id, as clients send it.
    pub name: Arc<str>,
    /// Its class (production, preview, …), if any.
    pub class: Option<Sym>,
    /// Stable hash of the name (partitions).
    pub hash: u64,
    /// Its own price, if it has one.
    pub price: Option<crate::money::Price>,
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
    /// How long its tenants' refused requests may wait for room (its own,
    /// else the tier it extends; `None`: no wait) for limits that do not
    /// say.
    pub max_wait: Option<std::time::Duration>,
    /// Whether a `cost` limit can apply to its tenants (planning prices a
    /// request only then).
    pub(crate) prices: bool,
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
    /// End users, as hashes ([`crate::facts::EndUser`]): never interned.
    User(SmallVec<[u64; 4]>),
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
    User,
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
    /// How long a request it refuses may wait for room (`None`: the tier's).
    pub max_wait: Option<std::time::Duration>,
    /// Hard: a request it applies to never produces more output than it
    /// reserved.
    pub hard: bool,
    /// The `when` condition, as written.
    pub when_spec: ConditionSpec,
    /// The `unless` conditions, as written.
    pub unless_spec: Vec<ConditionSpec>,
    pub(crate) identity: u64,
    pub(crate) when: Condition,
    pub(crate) unless: SmallVec<[Condition; 1]>,
    pub(crate) parts: SmallVec<[Part; 2]>,
    /// Whether what a request's body says (its model or its end user)
    /// decides if this limit applies or which counter it charges (its `by`,
    /// `when` or `unless` name the model, its class or the end user, or an
    /// exemption that covers it does): such a limit cannot be checked
    /// before the body is read.
    pub(crate) needs_body: bool,
}

impl Limit {
    /// Whether the request's body (its model, or its end user) decides if
    /// this limit applies or which counter it charges. Limits that do not
    /// can be checked from a request's head alone
    /// ([`Policy::plan_before_body`](super::Policy::plan_before_body)). (An
    /// end user read from a header is known before the body, but is treated
    /// the same: one rule.)
    pub fn needs_body(&self) -> bool {
        self.needs_body
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
            Metric::Cost => {
                return match self.window.map(|w| w.period) {
                    Some(p) => format!("cost/{}", describe_period(p)),
                    None => "cost".into(),
                };
            }
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

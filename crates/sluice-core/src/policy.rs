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

//!
//! This file holds the [`Policy`], its [`PolicyBuilder`] and [`PolicyError`];
//! the parts live beside it: the names and ids (`names.rs`), the policy as
//! written (`spec.rs`), the header profile (`headers.rs`) and the compiled
//! limits, tiers and conditions (`compiled.rs`). Compilation itself is
//! `compile.rs`, planning `plan.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::metric::Metric;
use crate::money::{Money, Price};
use crate::window::WindowError;

mod compiled;
mod headers;
mod names;
mod spec;

pub(crate) use compiled::{Candidates, Clause, Condition, Part};
pub use compiled::{Endpoint, Exemption, Limit, LimitSet, Model, Tier, describe_period};
pub use headers::{HeaderFamily, HeaderMetric, HeaderProfile, HeaderSpan, ResetFormat};
pub(crate) use names::Interner;
pub use names::{EndpointId, LimitId, ModelId, Sym, TierId, name_hash};
pub use spec::{
    ClauseSpec, ConditionSpec, ExemptionSpec, Fact, LimitSpec, Scope, TierSpec, counter_identity,
};

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
    /// What models without a price of their own cost.
    pub(crate) default_price: Price,
    /// The currency `cost` limits count in (micro-units of it).
    pub(crate) currency: Arc<str>,
    /// Whether a limit or an exemption looks at the end user.
    pub(crate) end_users: bool,
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

    /// The price of `model`: its own, or the policy's default price.
    pub fn price_of(&self, model: crate::facts::ModelRef) -> Price {
        model
            .id
            .and_then(|m| self.models.get(m.index()))
            .and_then(|m| m.price)
            .unwrap_or(self.default_price)
    }

    /// The price of models without one of their own.
    pub fn default_price(&self) -> Price {
        self.default_price
    }

    /// The currency `cost` limits count in.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// An amount of `metric` written for people: a count, or money in the
    /// policy's currency (`$12.50`).
    pub fn format_amount(&self, metric: Metric, amount: u64) -> String {
        if metric.is_money() {
            Money { micros: amount, currency: &self.currency }.to_string()
        } else {
            amount.to_string()
        }
    }

    /// Whether any limit or exemption splits by or tests the end user
    /// ([`Fact::User`]): a caller need not work out a request's end user
    /// otherwise.
    pub fn looks_at_end_users(&self) -> bool {
        self.end_users
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
    pub(crate) prices: Vec<(String, Price)>,
    pub(crate) default_price: Option<Price>,
    pub(crate) currency: Option<String>,
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

    /// Sets the price of a model added with [`PolicyBuilder::model`].
    pub fn price(&mut self, model: impl Into<String>, price: Price) -> &mut Self {
        self.prices.push((model.into(), price));
        self
    }

    /// Sets the price of models without one of their own (default: free,
    /// which a policy with `cost` limits should not leave).
    pub fn default_price(&mut self, price: Price) -> &mut Self {
        self.default_price = Some(price);
        self
    }

    /// Sets the currency `cost` limits count in (default `USD`).
    pub fn currency(&mut self, code: impl Into<String>) -> &mut Self {
        self.currency = Some(code.into());
        self
    }

    /// Compiles the policy.
    pub fn build(&self) -> Result<Policy, PolicyError> {
        crate::compile::compile(self)
    }
}

//! Tenants, keys and requests as the engine sees them: resolved against one
//! policy, so that matching is integer comparison.
//!
//! A [`TenantFacts`] or [`KeyFacts`] is only meaningful for the policy that
//! resolved it; whoever swaps the policy resolves tenants again. What gives a
//! tenant its counters is its id (hashed), never the resolution, so counts
//! survive that.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::compile::limit_set;
use crate::policy::{
    EndpointId, Fact, LimitId, LimitSet, ModelId, Policy, PolicyError, Sym, TierId, hint, name_hash,
};
use crate::time::{Instant, duration_nanos};
use crate::window::Zone;

/// A tenant as written (in a policy file or a tenant store).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantSpec {
    /// Its id: stable, unique (e.g. `org-acme`).
    pub id: String,
    /// Tier name; the policy's default tier when `None`.
    pub tier: Option<String>,
    /// Environment (production, sandbox, demo, trial, …).
    pub environment: Option<String>,
    /// Groups it belongs to.
    pub groups: Vec<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// IANA time zone for calendar windows; UTC when `None`.
    pub time_zone: Option<String>,
    /// Granted increases (or decreases).
    pub overrides: Vec<OverrideSpec>,
    /// Limit names it is exempt from (`*` for all).
    pub exempt: Vec<String>,
}

/// A tenant-specific amount for a named limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideSpec {
    /// The limit's name (in whichever tier the tenant is on).
    pub limit: String,
    /// The amount granted.
    pub amount: u64,
    /// When the grant ends; forever when `None`.
    pub until: Option<Instant>,
}

/// An API key as written (never the secret: only what a limit can look at).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySpec {
    /// Its id (not the secret).
    pub id: String,
    /// Labels such as `channel = "apex"`.
    pub labels: BTreeMap<String, String>,
    /// Limit names it is exempt from (`*` for all).
    pub exempt: Vec<String>,
    /// Its own amounts for limits split by key (`by` contains `key`): they
    /// win over the tenant's grant of the same limit.
    pub overrides: Vec<OverrideSpec>,
}

/// A tenant resolved against a policy.
#[derive(Clone, Debug)]
pub struct TenantFacts {
    pub(crate) id: Arc<str>,
    pub(crate) hash: u64,
    pub(crate) name: Sym,
    pub(crate) tier: TierId,
    pub(crate) environment: Sym,
    pub(crate) groups: SmallVec<[Sym; 4]>,
    pub(crate) labels: SmallVec<[(Sym, Sym); 4]>,
    pub(crate) zone: Option<Zone>,
    pub(crate) overrides: Grants,
    pub(crate) exempt: LimitSet,
}

impl TenantFacts {
    /// The tenant's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tenant's id, shared (cloning it allocates nothing).
    pub fn shared_id(&self) -> &Arc<str> {
        &self.id
    }

    /// The stable hash of the id: the tenant's counters live under it.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The tier.
    pub fn tier(&self) -> TierId {
        self.tier
    }

    /// The time zone of calendar windows.
    pub fn zone(&self) -> Option<&Zone> {
        self.zone.as_ref()
    }

    /// The amount granted for `limit` at `now`, if any.
    pub fn override_for(&self, limit: LimitId, now: Instant) -> Option<u64> {
        override_in(&self.overrides, limit, now)
    }
}

/// A key resolved against a policy.
#[derive(Clone, Debug)]
pub struct KeyFacts {
    pub(crate) name: Sym,
    pub(crate) hash: u64,
    /// (label key, value symbol, value hash)
    pub(crate) labels: SmallVec<[(Sym, Sym, u64); 2]>,
    pub(crate) exempt: LimitSet,
    pub(crate) overrides: Grants,
}

impl KeyFacts {
    /// The hash of the key id.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The amount granted to this key for `limit` at `now`, if any.
    pub fn override_for(&self, limit: LimitId, now: Instant) -> Option<u64> {
        override_in(&self.overrides, limit, now)
    }
}

/// Grants resolved: (limit, amount, end in ns since the epoch; `u64::MAX`
/// for good).
pub(crate) type Grants = SmallVec<[(LimitId, u64, u64); 2]>;

/// The amount of a grant of `limit` in force at `now`.
#[inline]
fn override_in(overrides: &[(LimitId, u64, u64)], limit: LimitId, now: Instant) -> Option<u64> {
    overrides
        .iter()
        .find(|(l, _, until)| *l == limit && now.0 < *until)
        .map(|&(_, amount, _)| amount)
}

/// A tenant or key that does not fit the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    /// A reference the policy does not define.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A time zone that does not exist.
    #[error(transparent)]
    Zone(#[from] crate::window::UnknownZone),
    /// No tier given and the policy has no default.
    #[error("tenant `{0}` has no tier and the policy has no default tier")]
    NoTier(String),
    /// An empty id.
    #[error("a tenant or key id must not be empty")]
    EmptyId,
}

impl Policy {
    /// Resolves a tenant against this policy.
    pub fn tenant(&self, spec: &TenantSpec) -> Result<TenantFacts, FactsError> {
        if spec.id.is_empty() {
            return Err(FactsError::EmptyId);
        }
        let tier = match &spec.tier {
            Some(t) => self.tier(t).ok_or_else(|| PolicyError::Unknown {
                what: "tier",
                name: t.clone(),
                hint: hint(self.tiers.iter().map(|t| &*t.name)),
            })?,
            None => self.default_tier.ok_or_else(|| FactsError::NoTier(spec.id.clone()))?,
        };
        let zone = spec.time_zone.as_deref().map(Zone::get).transpose()?;
        let overrides = self.grants(&spec.overrides, false)?;
        Ok(TenantFacts {
            id: spec.id.as_str().into(),
            hash: name_hash(&spec.id),
            name: self.tenant_names.get(&spec.id),
            tier,
            environment: spec
                .environment
                .as_deref()
                .map_or(Sym::NONE, |e| self.environments.get(e)),
            groups: spec.groups.iter().map(|g| self.groups.get(g)).collect(),
            labels: spec
                .labels
                .iter()
                .map(|(k, v)| (self.tenant_label_keys.get(k), self.label_values.get(v)))
                .filter(|(k, _)| *k != Sym::NONE)
                .collect(),
            zone,
            overrides,
            exempt: self.exempt_set(&spec.exempt)?,
        })
    }

    /// Resolves a key against this policy.
    pub fn key(&self, spec: &KeySpec) -> Result<KeyFacts, FactsError> {
        if spec.id.is_empty() {
            return Err(FactsError::EmptyId);
        }
        Ok(KeyFacts {
            name: self.key_names.get(&spec.id),
            hash: name_hash(&spec.id),
            labels: spec
                .labels
                .iter()
                .map(|(k, v)| (self.key_label_keys.get(k), self.label_values.get(v), name_hash(v)))
                .filter(|(k, _, _)| *k != Sym::NONE)
                .collect(),
            exempt: self.exempt_set(&spec.exempt)?,
            overrides: self.grants(&spec.overrides, true)?,
        })
    }

    /// Grants resolved to the limits they name: each amount at least 1, each
    /// limit defined; a key's (`of_key`) only on limits split by key, whose
    /// counter is the key's own (a key's amount on a counter every key of
    /// the tenant shares would mean nothing sensible).
    fn grants(&self, grants: &[OverrideSpec], of_key: bool) -> Result<Grants, PolicyError> {
        let mut resolved = SmallVec::new();
        for o in grants {
            if o.amount == 0 {
                let reason = if of_key {
                    "an override amount must be at least 1; to stop a key, revoke it"
                } else {
                    "an override amount must be at least 1; to stop a tenant, revoke its keys"
                };
                return Err(PolicyError::BadLimit {
                    limit: o.limit.clone(),
                    reason: reason.into(),
                });
            }
            let ids = self.limits_named(&o.limit);
            if ids.is_empty() {
                return Err(unknown_limit(self, &o.limit));
            }
            if of_key
                && ids.iter().any(|&id| {
                    self.limits.get(id.index()).is_none_or(|l| !l.by.contains(&Fact::Key))
                })
            {
                return Err(PolicyError::BadLimit {
                    limit: o.limit.clone(),
                    reason: NOT_BY_KEY.into(),
                });
            }
            let until = o.until.map_or(u64::MAX, |t| t.0);
            resolved.extend(ids.iter().map(|&id| (id, o.amount, until)));
        }
        Ok(resolved)
    }

    fn exempt_set(&self, names: &[String]) -> Result<LimitSet, PolicyError> {
        if names.is_empty() { Ok(LimitSet::Nothing) } else { limit_set(self, names, "limit") }
    }

    /// A model reference for a request: known models by id, others by name.
    pub fn model_ref(&self, name: &str) -> ModelRef {
        match self.model(name) {
            Some(id) => ModelRef { id: Some(id), hash: self.models[id.index()].hash },
            None => ModelRef { id: None, hash: name_hash(name) },
        }
    }
}

/// Why a key cannot have its own amount of a limit that is not split by
/// key (after "limit `<name>`: ").
pub const NOT_BY_KEY: &str = "a key can be granted its own amount only of a limit split by key; this one counts the whole tenant, shared by all its keys: add `by = [\"key\"]` to the limit to give each key its own count";

fn unknown_limit(p: &Policy, name: &str) -> PolicyError {
    PolicyError::Unknown {
        what: "limit",
        name: name.to_owned(),
        hint: hint(
            p.limits
                .iter()
                .map(|l| &*l.name)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .take(30),
        ),
    }
}

/// The model of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelRef {
    /// The policy's id for it, if the policy knows it.
    pub id: Option<ModelId>,
    /// Stable hash of the name.
    pub hash: u64,
}

impl ModelRef {
    /// No model (e.g. a feedback call).
    pub const NONE: ModelRef = ModelRef { id: None, hash: 0 };
}

/// The end user a request is made for, inside its tenant (OpenAI's `user`
/// field, or a header the operator names), as the stable hash of its name.
///
/// End users are never interned, and a policy holds no list of them: anyone
/// with a key can invent as many as they like, so the engine keeps only a
/// 64-bit hash (xxh3, as [`name_hash`]) per request, and a counter split by
/// end user exists only once a request of that end user was admitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndUser(u64);

impl EndUser {
    /// No end user named (or an empty one): such requests share one
    /// partition, the end user `""`.
    pub const NONE: EndUser = EndUser(0);

    /// The end user called `name` (empty: [`EndUser::NONE`]).
    pub fn of(name: &str) -> Self {
        Self::of_bytes(name.as_bytes())
    }

    /// The same, from raw bytes (a header value need not be UTF-8).
    pub fn of_bytes(name: &[u8]) -> Self {
        if name.is_empty() {
            return Self::NONE;
        }
        // 0 stands for none; a name that hashes to it is kept apart.
        Self(xxhash_rust::xxh3::xxh3_64(name).max(1))
    }

    /// Whether no end user was named.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The hash (0 for none): what partitions and conditions compare.
    pub const fn hash(self) -> u64 {
        self.0
    }
}

/// What a request is expected to cost, before it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    /// Expected completion tokens (`max_tokens`, capped, or a default).
    pub output_tokens: u64,
}

impl Cost {
    /// A request with no token cost.
    pub const REQUEST: Cost = Cost { input_tokens: 0, output_tokens: 0 };

    /// A request expected to use these tokens.
    pub const fn tokens(input_tokens: u64, output_tokens: u64) -> Self {
        Self { input_tokens, output_tokens }
    }
}

/// One request to admit, as admission sees it: who pays, with which key,
/// the endpoint and model it asks for, and what it is expected to cost.
/// (Not an HTTP request: the gateway makes one from an `http::Request` and
/// its body.)
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// Who pays.
    pub tenant: &'a TenantFacts,
    /// Which of its keys, if known.
    pub key: Option<&'a KeyFacts>,
    /// The endpoint called.
    pub endpoint: EndpointId,
    /// The model asked for.
    pub model: ModelRef,
    /// What it is expected to cost.
    pub cost: Cost,
    /// The end user it is made for, inside the tenant ([`EndUser::NONE`]
    /// if it names none).
    pub end_user: EndUser,
}

/// Reservation lease end for a request admitted at `now` under `policy`.
pub(crate) fn lease_end(policy: &Policy, now: Instant) -> Instant {
    Instant(now.0.saturating_add(duration_nanos(policy.lease)))
}

/// Turns a lease into an absolute deadline (helper for callers).
pub fn deadline(now: Instant, lease: Duration) -> Instant {
    Instant(now.0.saturating_add(duration_nanos(lease)))
}

#[cfg(test)]
mod key_grants;
#[cfg(test)]
mod tests;

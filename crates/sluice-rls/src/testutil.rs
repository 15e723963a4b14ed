//! A decision service over a memory store and a fake clock, for unit tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    CounterKey, CounterStore, Decision, FakeClock, Plan, ReservationId, Settlement, Usage,
};
use sluice_served::{Runtime, Served, Unconnected};
use sluice_store::{MemoryStore, TenantSnapshot};

pub(crate) const KEY_ACME: &str = "sk-acme-1";
pub(crate) const KEY_OTHER: &str = "sk-other-1";

/// A policy: per-model RPM and TPM, a tier-wide token day, a per-endpoint
/// RPM, and a shadow limit.
pub(crate) fn policy() -> String {
    format!(
        r#"
[policy]
lease = "1m"

[headers]
families = ["requests", "tokens", "tokens-day"]
reset = "duration"

[upstreams.up]
base_url = "http://127.0.0.1:9/v1"

[models.m]
[models.n]
[models.premium]

[tiers.free]
listed_models_only = true

[tiers.free.models]
m = {{ rpm = 3, tpm = 1_000 }}
n = {{ rpm = 10 }}

[[tiers.free.limits]]
name = "tpd"
metric = "tokens"
amount = 5_000
window = "1d"

[[tiers.free.limits]]
name = "endpoint-rpm"
metric = "requests"
amount = 100
window = "1m"
by = ["endpoint"]

[[tiers.free.limits]]
name = "dry-run"
metric = "requests"
amount = 1
window = "1h"
shadow = true

[tenants.acme]
tier = "free"

[[tenants.acme.keys]]
id = "acme-1"
hash = "{}"

[tenants.other]
tier = "free"

[[tenants.other.keys]]
id = "other-1"
hash = "{}"

[decisions]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
domains = ["sluice", "edge"]
token_env = "SLUICE_TEST_DECISIONS_TOKEN"
"#,
        sluice_served::auth::hash_text(KEY_ACME),
        sluice_served::auth::hash_text(KEY_OTHER)
    )
}

/// [`policy`] with each end user's own 2 requests a minute, and the
/// `[end_users]` settings `end_users` (TOML lines).
pub(crate) fn policy_with_end_users(end_users: &str) -> String {
    format!(
        r#"{}
[[tiers.free.limits]]
name = "end-user-rpm"
metric = "requests"
amount = 2
window = "1m"
by = ["user"]

[end_users]
{end_users}
"#,
        policy()
    )
}

pub(crate) struct Harness<S> {
    pub(crate) svc: Arc<crate::DecisionService<S>>,
    pub(crate) clock: FakeClock,
}

pub(crate) fn served_with<S: CounterStore + Clone + Unpin>(
    text: &str,
    store: impl FnOnce(FakeClock) -> S,
) -> (Arc<Served<S>>, sluice_config::Config, FakeClock) {
    let config = sluice_config::parse(text, "test.toml").unwrap();
    let (runtime, warnings) =
        Runtime::build(&config, &TenantSnapshot::default(), &Unconnected).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let clock = FakeClock::at("2026-05-01T10:00:00Z");
    let served = Served::new(runtime, store(clock.clone()), Arc::new(clock.clone()));
    (served, config, clock)
}

pub(crate) fn harness_with(text: &str, token: Option<&str>) -> Harness<MemoryStore> {
    let (served, config, clock) = served_with(text, MemoryStore::new);
    let svc = crate::DecisionService::new(served, config.decisions.unwrap(), token);
    Harness { svc, clock }
}

pub(crate) fn harness() -> Harness<MemoryStore> {
    harness_with(&policy(), None)
}

impl<S> Harness<S> {
    pub(crate) fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

/// A store that is always down.
#[derive(Clone, Default)]
pub(crate) struct DownStore;

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
pub(crate) struct Down;

impl CounterStore for DownStore {
    type Error = Down;

    async fn admit(&self, _plan: &Plan) -> Result<Decision, Down> {
        Err(Down)
    }

    async fn peek(&self, _plan: &Plan) -> Result<Decision, Down> {
        Err(Down)
    }

    async fn settle(&self, _id: ReservationId, _usage: Usage) -> Result<Settlement, Down> {
        Err(Down)
    }

    fn settle_detached(&self, _id: ReservationId, _usage: Usage) {}

    fn release(&self, _id: ReservationId) {}

    async fn reset(&self, _tenant: u64, _key: CounterKey) -> Result<bool, Down> {
        Err(Down)
    }
}

//! What every engine test needs: a policy, a store made by a factory, a fake
//! clock, and short ways to admit and settle. The suite is written against
//! [`StoreFactory`] so that the same tests run on every store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Clock, Cost, CounterStore, Decision, EndUser, FakeClock, KeyFacts, KeySpec, LimitStatus,
    Outcome, Policy, ReservationId, Settlement, TenantFacts, TenantSpec, Usage,
};

/// Makes a fresh, empty store that reads time from `clock` (or, for stores
/// with their own clock, is told the plan's time).
pub trait StoreFactory: Sync {
    type Store: CounterStore + Clone;
    fn make(&self, clock: FakeClock, rt: &tokio::runtime::Runtime) -> Self::Store;
    /// How many counters of the tenant whose hash is `tenant` the store
    /// holds (through the store's own API: there is no generic one).
    fn counters_of(&self, store: &Self::Store, tenant: u64, rt: &tokio::runtime::Runtime) -> usize;
}

/// A store, a policy, a fake clock and a runtime to drive the store: tests
/// call plain functions, and threads can race on one harness.
pub struct Harness<S> {
    pub policy: Policy,
    pub store: S,
    pub clock: FakeClock,
    pub rt: Arc<tokio::runtime::Runtime>,
}

pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Loads a preset from `examples/`.
pub fn preset(name: &str) -> Policy {
    let path = examples_dir().join(name);
    match sluice_config::load(&path) {
        Ok(c) => c.policy,
        Err(e) => panic!("{e}"),
    }
}

/// Parses policy text.
pub fn policy(text: &str) -> Policy {
    match sluice_config::parse(text, "test.toml") {
        Ok(c) => c.policy,
        Err(e) => panic!("{e}"),
    }
}

/// A tenant spec.
pub fn tenant(id: &str) -> TenantSpec {
    TenantSpec { id: id.into(), ..TenantSpec::default() }
}

impl<S: CounterStore + Clone> Harness<S> {
    pub fn new<F: StoreFactory<Store = S>>(factory: &F, policy: Policy, start: &str) -> Self {
        let clock = FakeClock::at(start);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let store = factory.make(clock.clone(), &rt);
        Self { policy, store, clock, rt: Arc::new(rt) }
    }

    pub fn tenant(&self, spec: &TenantSpec) -> TenantFacts {
        self.policy.tenant(spec).unwrap_or_else(|e| panic!("tenant {}: {e}", spec.id))
    }

    pub fn key(&self, id: &str, labels: &[(&str, &str)]) -> KeyFacts {
        let spec = KeySpec {
            id: id.into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            exempt: vec![],
            overrides: vec![],
        };
        self.policy.key(&spec).unwrap_or_else(|e| panic!("key {id}: {e}"))
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    pub fn request<'a>(
        &self,
        tenant: &'a TenantFacts,
        key: Option<&'a KeyFacts>,
        endpoint: &str,
        model: &str,
        cost: Cost,
    ) -> sluice_core::Ask<'a> {
        sluice_core::Ask {
            tenant,
            key,
            endpoint: self
                .policy
                .endpoint(endpoint)
                .unwrap_or_else(|| panic!("no endpoint {endpoint}")),
            model: self.policy.model_ref(model),
            cost,
            end_user: sluice_core::EndUser::NONE,
        }
    }

    pub fn admit_req(&self, req: &sluice_core::Ask<'_>) -> Decision {
        let plan = self.policy.plan(req, self.clock.now());
        match self.rt.block_on(self.store.admit(&plan)) {
            Ok(d) => d,
            Err(e) => panic!("store error: {e}"),
        }
    }

    pub fn peek_req(&self, req: &sluice_core::Ask<'_>) -> Decision {
        let plan = self.policy.plan(req, self.clock.now()).at_zero_cost();
        match self.rt.block_on(self.store.peek(&plan)) {
            Ok(d) => d,
            Err(e) => panic!("store error: {e}"),
        }
    }

    /// Admits a chat request of `tenant` on `model`.
    pub fn admit(&self, tenant: &TenantFacts, model: &str, cost: Cost) -> Decision {
        self.admit_req(&self.request(tenant, None, "chat", model, cost))
    }

    /// Admits a chat request of `tenant` on `model` for end user `user`
    /// (`None`: the request names none).
    pub fn admit_as(
        &self,
        tenant: &TenantFacts,
        user: Option<&str>,
        model: &str,
        cost: Cost,
    ) -> Decision {
        let mut req = self.request(tenant, None, "chat", model, cost);
        req.end_user = user.map_or(EndUser::NONE, EndUser::of);
        self.admit_req(&req)
    }

    /// How many counters of `tenant` the store holds.
    pub fn counters_of<F: StoreFactory<Store = S>>(&self, f: &F, tenant: &TenantFacts) -> usize {
        f.counters_of(&self.store, tenant.hash(), &self.rt)
    }

    pub fn peek(&self, tenant: &TenantFacts, model: &str) -> Decision {
        self.peek_req(&self.request(tenant, None, "chat", model, Cost::REQUEST))
    }

    pub fn settle(&self, id: ReservationId, usage: Usage) -> Settlement {
        match self.rt.block_on(self.store.settle(id, usage)) {
            Ok(s) => s,
            Err(e) => panic!("store error: {e}"),
        }
    }

    pub fn release(&self, id: ReservationId) {
        let _guard = self.rt.enter();
        self.store.release(id);
    }
}

/// The status of the limit called `name` in a decision.
pub fn status<'d>(policy: &Policy, d: &'d Decision, name: &str) -> &'d LimitStatus {
    d.statuses
        .iter()
        .find(|s| policy.limit(s.limit).is_some_and(|l| &*l.name == name))
        .unwrap_or_else(|| {
            let names: Vec<_> = d
                .statuses
                .iter()
                .filter_map(|s| policy.limit(s.limit).map(|l| l.name.to_string()))
                .collect();
            panic!("no status for limit {name}; have {names:?}")
        })
}

/// The name of the limit that denied a decision.
pub fn denied_by(policy: &Policy, d: &Decision) -> String {
    d.denied_by()
        .and_then(|s| policy.limit(s.limit))
        .map(|l| l.name.to_string())
        .unwrap_or_else(|| format!("(not denied: {:?})", d.outcome))
}

pub fn is_limited(d: &Decision) -> bool {
    matches!(d.outcome, Outcome::Limited { .. })
}

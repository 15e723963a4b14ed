//! Policies and decisions for tests, with a tiny in-test counter store.

use std::collections::HashMap;

use sluice_core::Cost;
use sluice_core::{
    Ask, CounterKey, CounterState, Decision, Fact, HeaderProfile, Instant, LimitSpec, Metric,
    Policy, PolicyBuilder, Scope, TenantSpec, Window, decide,
};

/// A limit spec with the usual defaults.
pub fn limit(name: &str, metric: Metric, amount: u64, window: Option<Window>) -> LimitSpec {
    LimitSpec {
        max_wait: None,
        hard: false,
        name: name.into(),
        scope: Scope::Global,
        metric,
        amount,
        burst: None,
        window,
        by: vec![Fact::Model],
        when: vec![],
        unless: vec![],
        shadow: false,
        counter: None,
        origin: None,
    }
}

pub fn rolling(p: &str) -> Option<Window> {
    Some(Window::rolling(p.parse().unwrap()))
}

pub fn calendar(p: &str) -> Option<Window> {
    Some(Window::calendar(p.parse().unwrap()))
}

/// A policy with the given limits and header profile, one model `gpt-4o`.
pub fn policy(limits: Vec<LimitSpec>, headers: HeaderProfile) -> Policy {
    let mut b = PolicyBuilder::new("test");
    b.model("gpt-4o", None);
    for l in limits {
        b.limit(l);
    }
    b.headers(headers);
    b.build().unwrap()
}

/// Counters kept between admissions, as a store would.
#[derive(Default)]
pub struct Store {
    states: HashMap<CounterKey, CounterState>,
}

impl Store {
    /// Admits one chat request of `cost` for tenant `acme` at `now`.
    pub fn admit(&mut self, policy: &Policy, cost: Cost, now: Instant) -> Decision {
        let tenant =
            policy.tenant(&TenantSpec { id: "org-acme".into(), ..Default::default() }).unwrap();
        let req = Ask {
            tenant: &tenant,
            key: None,
            endpoint: policy.endpoint("chat").unwrap(),
            model: policy.model_ref("gpt-4o"),
            cost,
            end_user: sluice_core::EndUser::NONE,
        };
        let plan = policy.plan(&req, now);
        let states: Vec<Option<CounterState>> =
            plan.charges.iter().map(|c| self.states.get(&c.key).copied()).collect();
        let eval = decide(&plan, &states);
        for (c, w) in plan.charges.iter().zip(&eval.writes) {
            if let Some(s) = w {
                self.states.insert(c.key, *s);
            }
        }
        eval.decision
    }
}

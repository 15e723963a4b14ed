//! End users as the engine sees them: a hash per request, a fact that
//! splits counters and that conditions test, and never a string kept.
#![allow(clippy::unwrap_used)]

use crate::policy::{counter_identity, name_hash};
use crate::*;

/// A global rolling requests-per-minute limit (also the key grants' tests').
pub(super) fn rpm(name: &str, amount: u64, by: Vec<Fact>, when: ConditionSpec) -> LimitSpec {
    LimitSpec {
        name: name.into(),
        scope: Scope::Global,
        metric: Metric::Requests,
        amount,
        burst: None,
        window: Some(Window::rolling("1m".parse().unwrap())),
        by,
        when,
        unless: vec![],
        shadow: false,
        counter: None,
        origin: None,
        max_wait: None,
        hard: false,
    }
}

fn policy(with_users: bool) -> Policy {
    let mut b = PolicyBuilder::new("p");
    b.model("m", None);
    b.limit(rpm("rpm", 500, vec![], vec![]));
    if with_users {
        b.limit(rpm("end-user-rpm", 20, vec![Fact::User], vec![]));
        let vip = ClauseSpec { fact: Fact::User, values: vec!["vip".into()] };
        b.limit(rpm("vip-rpm", 100, vec![], vec![vip]));
    }
    b.build().unwrap()
}

#[test]
fn an_end_user_is_a_hash_and_none_is_zero() {
    assert!(EndUser::of("").is_none());
    assert_eq!(EndUser::of(""), EndUser::NONE);
    assert_eq!(EndUser::NONE.hash(), 0);
    let alice = EndUser::of("alice");
    assert!(!alice.is_none());
    assert_eq!(alice, EndUser::of_bytes(b"alice"));
    assert_eq!(alice.hash(), name_hash("alice"));
    assert_ne!(alice, EndUser::of("bob"));
}

#[test]
fn the_fact_is_spelled_user_or_end_user() {
    assert_eq!(Fact::parse("user"), Some(Fact::User));
    assert_eq!(Fact::parse("end_user"), Some(Fact::User));
    assert_eq!(Fact::User.to_string(), "user");
    assert!(Fact::User.can_partition());
}

#[test]
fn the_counter_identity_names_the_split_and_the_end_users_tested() {
    let by = rpm("a", 1, vec![Fact::User], vec![]);
    assert_eq!(counter_identity(&by), "requests/1m/rolling/by:user");
    let when = ClauseSpec { fact: Fact::User, values: vec!["b".into(), "a".into(), "b".into()] };
    let tested = rpm("a", 1, vec![], vec![when]);
    assert_eq!(counter_identity(&tested), "requests/1m/rolling/when:user=a|b");
}

#[test]
fn end_users_split_a_counter_and_are_tested_by_hash() {
    let p = policy(true);
    assert!(p.looks_at_end_users());
    assert!(!policy(false).looks_at_end_users());
    let t = p.tenant(&TenantSpec { id: "acme".into(), ..Default::default() }).unwrap();
    let ask = |user: &str| Ask {
        tenant: &t,
        key: None,
        endpoint: p.endpoint("chat").unwrap(),
        model: p.model_ref("m"),
        cost: Cost::REQUEST,
        end_user: EndUser::of(user),
    };
    let now = Instant::from_secs(1_000);
    let named = |plan: &Plan| -> Vec<(String, CounterKey)> {
        plan.charges.iter().map(|c| (p.limit(c.limit).unwrap().name.to_string(), c.key)).collect()
    };
    let alice = named(&p.plan(&ask("alice"), now));
    let bob = named(&p.plan(&ask("bob"), now));
    let nobody = named(&p.plan(&ask(""), now));
    let vip = named(&p.plan(&ask("vip"), now));
    assert_eq!(alice.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["rpm", "end-user-rpm"]);
    // One tenant-wide counter; one per end user, requests without one
    // sharing theirs.
    assert_eq!(alice[0].1, bob[0].1);
    assert_eq!(alice[0].1, nobody[0].1);
    assert_ne!(alice[1].1, bob[1].1);
    assert_ne!(alice[1].1, nobody[1].1);
    assert_eq!(nobody[1].1, named(&p.plan(&ask(""), now))[1].1);
    assert_eq!(
        vip.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["rpm", "end-user-rpm", "vip-rpm"]
    );

    // Before the body, neither the split nor the condition can be known.
    for id in p.limits_named("end-user-rpm").iter().chain(p.limits_named("vip-rpm")) {
        assert!(p.limit(*id).unwrap().needs_body());
    }
    assert!(!p.limit(p.limits_named("rpm")[0]).unwrap().needs_body());
    let early = named(&p.plan_before_body(&ask("vip"), now));
    assert_eq!(early, vec![alice[0].clone()]);
}

//! Per-key limits, on every store: a limit split by key (`by = ["key"]`)
//! gives each key its own counter at the policy's amount, a key's grant sets
//! its own amount (over the tenant's grant of the same limit), every key
//! still counts in the tenant's own limits, and a request larger than a
//! key's whole budget is refused before it runs.

use std::time::Duration;

use sluice_core::{Clock, Cost, KeyFacts, KeySpec, Outcome, OverrideSpec, TenantSpec};

use crate::harness::{Harness, StoreFactory, denied_by, is_limited, policy, status, tenant};

/// A tenant-wide 10 RPM and a per-key 3 RPM; a per-key day of tokens so
/// large that only keys granted less are limited by it.
const KEYS: &str = r#"
[models.m]

[[limits]]
name = "tenant-rpm"
metric = "requests"
amount = 10
window = "1m"

[[limits]]
name = "key-rpm"
metric = "requests"
amount = 3
window = "1m"
by = ["key"]

[[limits]]
name = "key-tpd"
metric = "tokens"
amount = 1_000_000_000
window = "1d"
by = ["key"]
"#;

/// A key with these grants (limit, amount, until).
fn key<S: sluice_core::CounterStore + Clone>(
    h: &Harness<S>,
    id: &str,
    grants: &[(&str, u64, Option<&str>)],
) -> KeyFacts {
    let spec = KeySpec {
        id: id.into(),
        overrides: grants
            .iter()
            .map(|&(limit, amount, until)| OverrideSpec {
                limit: limit.into(),
                amount,
                until: until.map(|u| sluice_core::Instant::parse(u).expect("a time")),
            })
            .collect(),
        ..KeySpec::default()
    };
    h.policy.key(&spec).unwrap_or_else(|e| panic!("key {id}: {e}"))
}

/// Admits `n` requests with `key`, each of which must be admitted.
fn admit_n<S: sluice_core::CounterStore + Clone>(
    h: &Harness<S>,
    t: &sluice_core::TenantFacts,
    key: &KeyFacts,
    n: usize,
) {
    for i in 0..n {
        let d = h.admit_req(&h.request(t, Some(key), "chat", "m", Cost::REQUEST));
        assert!(d.is_admitted(), "request {} of {n}: {d:?}", i + 1);
    }
}

/// Key A granted 5 gets 5, key B gets the policy's 3, and both count in
/// the tenant's 10: the tenant's 11th request is refused whatever the key,
/// even one granted 50. In a tenant with a grant of the per-key limit, a
/// key without its own gets the tenant's, and a key's own wins over it.
pub fn a_keys_grant_is_its_own_amount_within_the_tenants<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(KEYS), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    let a = key(&h, "a", &[("key-rpm", 5, None)]);
    let b = key(&h, "b", &[]);
    let d_ = key(&h, "d", &[]);
    let e = key(&h, "e", &[("key-rpm", 50, None)]);
    let ask = |k| h.request(&t, Some(k), "chat", "m", Cost::REQUEST);

    admit_n(&h, &t, &a, 5);
    let d = h.admit_req(&ask(&a));
    assert_eq!(denied_by(&h.policy, &d), "key-rpm");
    assert_eq!(status(&h.policy, &d, "key-rpm").amount, 5);
    admit_n(&h, &t, &b, 3);
    let d = h.admit_req(&ask(&b));
    assert_eq!(denied_by(&h.policy, &d), "key-rpm");
    assert_eq!(status(&h.policy, &d, "key-rpm").amount, 3);
    // 8 of the tenant's 10 spent; D spends the last 2 of them.
    admit_n(&h, &t, &d_, 2);
    let d = h.admit_req(&ask(&d_));
    assert_eq!(denied_by(&h.policy, &d), "tenant-rpm", "D has 1 left of its own 3: {d:?}");
    assert_eq!(status(&h.policy, &d, "tenant-rpm").used, 10);
    let d = h.admit_req(&ask(&e));
    assert_eq!(denied_by(&h.policy, &d), "tenant-rpm", "a larger grant is still inside the tenant");
    assert_eq!(status(&h.policy, &d, "key-rpm").used, 0, "a denial charges nothing");

    // Another tenant, granted 4 of the per-key limit.
    let g = h.tenant(&TenantSpec {
        overrides: vec![OverrideSpec { limit: "key-rpm".into(), amount: 4, until: None }],
        ..tenant("granted")
    });
    let c = key(&h, "c", &[]);
    let low = key(&h, "low", &[("key-rpm", 2, None)]);
    admit_n(&h, &g, &c, 4);
    let d = h.admit_req(&h.request(&g, Some(&c), "chat", "m", Cost::REQUEST));
    assert_eq!(denied_by(&h.policy, &d), "key-rpm");
    assert_eq!(status(&h.policy, &d, "key-rpm").amount, 4, "the tenant's grant");
    admit_n(&h, &g, &low, 2);
    let d = h.admit_req(&h.request(&g, Some(&low), "chat", "m", Cost::REQUEST));
    assert_eq!(denied_by(&h.policy, &d), "key-rpm");
    assert_eq!(status(&h.policy, &d, "key-rpm").amount, 2, "the key's own, lower, grant wins");
}

/// A key granted 1,000 tokens a day: a request estimated at 1,500 is too
/// large for it, refused before it runs and charging nothing, while the
/// same request with another key of the same tenant fits.
pub fn a_request_larger_than_a_keys_whole_budget_is_too_large<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(KEYS), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    let small = key(&h, "small", &[("key-tpd", 1_000, None)]);
    let big = key(&h, "big", &[]);
    let ask = |k| h.request(&t, Some(k), "chat", "m", Cost::tokens(1_000, 500));
    // Known before the body is tokenized: the most input it could take.
    let plan = h.policy.plan(&ask(&small), h.clock.now());
    assert_eq!(plan.input_token_ceiling(500), Some(500));
    let d = h.admit_req(&ask(&small));
    assert!(matches!(d.outcome, Outcome::TooLarge { .. }), "{d:?}");
    assert_eq!(denied_by(&h.policy, &d), "key-tpd");
    let p = h.peek_req(&ask(&small));
    assert_eq!(status(&h.policy, &p, "key-tpd").used, 0, "nothing charged");
    assert_eq!(status(&h.policy, &p, "tenant-rpm").used, 0, "nothing charged");
    let d = h.admit_req(&ask(&big));
    assert!(d.is_admitted(), "{d:?}");
    assert_eq!(status(&h.policy, &d, "key-tpd").used, 1_500);
    // What fits its budget is admitted.
    let d = h.admit_req(&h.request(&t, Some(&small), "chat", "m", Cost::tokens(600, 400)));
    assert!(d.is_admitted(), "{d:?}");
    assert_eq!(status(&h.policy, &d, "key-tpd").amount, 1_000);
}

/// A grant with `until` ends then: the key is back to the policy's amount,
/// with what it used meanwhile still counted.
pub fn a_keys_grant_ends_with_its_until<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(KEYS), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    let a = key(&h, "a", &[("key-tpd", 1_000, Some("2026-05-01T12:00:00Z"))]);
    let ask = |input| h.request(&t, Some(&a), "chat", "m", Cost::tokens(input, 0));
    assert!(h.admit_req(&ask(800)).is_admitted());
    h.advance(Duration::from_secs(3_600));
    let d = h.admit_req(&ask(300));
    assert!(is_limited(&d), "800 + 300 is over the 1,000 granted: {d:?}");
    assert_eq!(denied_by(&h.policy, &d), "key-tpd");
    assert!(matches!(h.admit_req(&ask(1_500)).outcome, Outcome::TooLarge { .. }));
    // Past noon the grant is over.
    h.advance(Duration::from_secs(3_600));
    let d = h.admit_req(&ask(300));
    assert!(d.is_admitted(), "{d:?}");
    let s = status(&h.policy, &d, "key-tpd");
    assert_eq!((s.amount, s.used), (1_000_000_000, 1_100), "the policy's amount, the 800 counted");
    assert!(h.admit_req(&ask(1_500)).is_admitted());
}

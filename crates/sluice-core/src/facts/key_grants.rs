//! Key grants: what `Policy::key` accepts, and which amount a plan uses.

use super::*;
use crate::policy::{LimitSpec, PolicyBuilder};

fn rpm(name: &str, amount: u64, by: Vec<Fact>) -> LimitSpec {
    super::tests::rpm(name, amount, by, vec![])
}

/// A tenant-wide 10 RPM and a per-key 3 RPM.
fn policy() -> Policy {
    let mut b = PolicyBuilder::new("test");
    b.model("m", None);
    b.limit(rpm("tenant-rpm", 10, vec![]));
    b.limit(rpm("key-rpm", 3, vec![Fact::Key]));
    b.build().unwrap()
}

fn grant(limit: &str, amount: u64, until: Option<u64>) -> OverrideSpec {
    OverrideSpec { limit: limit.into(), amount, until: until.map(Instant) }
}

fn key(p: &Policy, id: &str, overrides: Vec<OverrideSpec>) -> Result<KeyFacts, FactsError> {
    p.key(&KeySpec { id: id.into(), overrides, ..KeySpec::default() })
}

/// The amount each limit is planned at for a request of `tenant` with `key`.
fn amounts(p: &Policy, tenant: &TenantFacts, key: &KeyFacts, now: u64) -> Vec<(String, u64)> {
    let ask = Ask {
        tenant,
        key: Some(key),
        endpoint: p.endpoint("chat").unwrap(),
        model: p.model_ref("m"),
        cost: Cost::REQUEST,
        end_user: EndUser::NONE,
    };
    p.plan(&ask, Instant(now))
        .charges
        .iter()
        .map(|c| (p.limit(c.limit).unwrap().name.to_string(), c.rule.amount()))
        .collect()
}

#[test]
fn a_key_grant_needs_a_limit_split_by_key_an_amount_and_a_defined_limit() {
    let p = policy();
    let e = key(&p, "a", vec![grant("tenant-rpm", 5, None)]).unwrap_err().to_string();
    assert!(e.contains("limit `tenant-rpm`") && e.contains("by = [\"key\"]"), "{e}");
    let e = key(&p, "a", vec![grant("key-rpm", 0, None)]).unwrap_err().to_string();
    assert!(e.contains("at least 1"), "{e}");
    let e = key(&p, "a", vec![grant("nope", 5, None)]).unwrap_err().to_string();
    assert!(e.contains("limit `nope` is not defined"), "{e}");
    assert!(key(&p, "a", vec![grant("key-rpm", 5, None)]).is_ok());
}

#[test]
fn the_keys_grant_wins_over_the_tenants_and_ends_with_its_until() {
    let p = policy();
    let plain = p.tenant(&TenantSpec { id: "t".into(), ..TenantSpec::default() }).unwrap();
    let granted = p
        .tenant(&TenantSpec {
            id: "t".into(),
            overrides: vec![grant("key-rpm", 4, None)],
            ..TenantSpec::default()
        })
        .unwrap();
    let a = key(&p, "a", vec![grant("key-rpm", 5, Some(2_000))]).unwrap();
    let b = key(&p, "b", vec![]).unwrap();
    let at = |t: &TenantFacts, k: &KeyFacts, now: u64| {
        let mut v = amounts(&p, t, k, now);
        v.sort();
        v
    };
    let want = |key_rpm: u64| vec![("key-rpm".to_owned(), key_rpm), ("tenant-rpm".to_owned(), 10)];
    assert_eq!(at(&plain, &a, 1_000), want(5));
    assert_eq!(at(&plain, &b, 1_000), want(3));
    // The tenant's grant applies to keys without their own.
    assert_eq!(at(&granted, &a, 1_000), want(5));
    assert_eq!(at(&granted, &b, 1_000), want(4));
    // Past its `until`, the key's grant is gone.
    assert_eq!(at(&plain, &a, 2_000), want(3));
    assert_eq!(at(&granted, &a, 2_000), want(4));
}

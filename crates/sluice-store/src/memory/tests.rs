use sluice_core::{FakeClock, GroupKey, LimitId, Metric, PlannedCharge, Rule, Slot};

use super::*;

const START: &str = "2026-05-01T10:00:00Z";

/// A calendar charge of `cost` on `tenant`'s counter `counter`, `amount`
/// a day.
fn charge(tenant: u64, counter: u64, amount: u64, cost: u64, now: Instant) -> PlannedCharge {
    let day = 86_400_000_000_000;
    let start = now.0 - now.0 % day;
    PlannedCharge {
        limit: LimitId(counter as u32),
        key: CounterKey { group: GroupKey::new(tenant, &[]), counter },
        metric: Metric::Tokens,
        rule: Rule::Calendar {
            slot: Slot { start: Instant(start), end: Instant(start + day) },
            next_end: Instant(start + 2 * day),
            amount,
        },
        cost,
        shadow: false,
        hard: false,
    }
}

/// A plan of `tenant` at `now` with these charges (a minute's lease).
fn plan_of(tenant: u64, now: Instant, charges: [PlannedCharge; 2]) -> Plan {
    Plan {
        tenant,
        now,
        lease_until: Instant(now.0 + 60_000_000_000),
        slots_until: Instant(now.0 + 60_000_000_000),
        charges: charges.into_iter().collect(),
        price: sluice_core::Price::ZERO,
    }
}

fn used(d: &Decision) -> Vec<u64> {
    d.statuses.iter().map(|s| s.used).collect()
}

/// A plan whose counters belong to two tenants (a hand-made plan: the
/// policy never makes one) takes the store's general path: still all or
/// nothing, and settled on both tenants.
#[test]
fn a_plan_across_tenants_is_all_or_nothing_and_settles() {
    let store = MemoryStore::with_shards(FakeClock::at(START), 4);
    let now = FakeClock::at(START).now();
    // Tenants whose top bits differ (another block, maybe another shard).
    let (a, b) = (0x1111_0000_0000_0001_u64, 0x2222_0000_0000_0002_u64);
    let plan = |cost_a, cost_b| {
        plan_of(a, now, [charge(a, 1, 100, cost_a, now), charge(b, 2, 100, cost_b, now)])
    };
    let d = store.admit_now(&plan(30, 40));
    assert!(d.is_admitted());
    assert_eq!(used(&d), [30, 40]);
    // b's counter cannot take 70 more: neither is charged.
    let denied = store.admit_now(&plan(10, 70));
    assert!(!denied.is_admitted());
    assert_eq!(used(&store.peek_now(&plan(0, 0))), [30, 40]);
    // Settling with less refunds both tenants' counters.
    let id = d.reservation().expect("a reservation");
    assert_eq!(store.settle_now(id, Usage::tokens(5, 0)), Settlement::Settled);
    assert_eq!(used(&store.peek_now(&plan(0, 0))), [5, 5]);
    assert_eq!(store.settle_now(id, Usage::tokens(5, 0)), Settlement::Unknown);
}

/// The usual plan (every counter its tenant's): charged in place, all
/// or nothing, and refunded on settlement.
#[test]
fn one_tenant_plans_charge_and_settle_in_place() {
    let store = MemoryStore::with_shards(FakeClock::at(START), 4);
    let now = FakeClock::at(START).now();
    let t = 0x3333_0000_0000_0003_u64;
    let plan = |cost| plan_of(t, now, [charge(t, 1, 100, cost, now), charge(t, 2, 50, cost, now)]);
    let first = store.admit_now(&plan(20));
    assert_eq!(used(&first), [20, 20]);
    let second = store.admit_now(&plan(20));
    assert_eq!(used(&second), [40, 40]);
    // 60 would pass the first counter (100) but not the second (50).
    assert!(!store.admit_now(&plan(20)).is_admitted());
    assert_eq!(used(&store.peek_now(&plan(0))), [40, 40]);
    let id = first.reservation().expect("a reservation");
    assert_eq!(store.settle_now(id, Usage::tokens(0, 0)), Settlement::Settled);
    assert_eq!(used(&store.peek_now(&plan(0))), [20, 20]);
}

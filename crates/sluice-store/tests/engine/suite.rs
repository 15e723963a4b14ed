//! The engine's rules, as tests that any store must pass. Each test takes a
//! store factory; `main.rs` instantiates every test for every store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use sluice_core::{
    Clock, Cost, CounterStore, Instant, Outcome, Settlement, TenantSpec, Usage, Verdict,
};

use crate::harness::{Harness, StoreFactory, denied_by, is_limited, policy, status, tenant};

const NS: u64 = 1_000_000_000;

fn tokens_policy(amount: u64, burst: u64, period: &str, kind: &str) -> String {
    format!(
        r#"
[models.m]
[[limits]]
name = "budget"
metric = "tokens"
amount = {amount}
burst = {burst}
window = "{period}"
kind = "{kind}"
"#
    )
}

/// Every interval between two admissions holds at most B + N·t/T (the
/// token-bucket bound of the design, rule 2).
fn check_rolling_bound(admitted: &[(u64, u64)], amount: u64, burst: u64, period_ns: u64) {
    let mut sorted = admitted.to_vec();
    sorted.sort_unstable();
    for i in 0..sorted.len() {
        let mut sum: u128 = 0;
        for j in i..sorted.len() {
            sum += u128::from(sorted[j].1);
            let t = u128::from(sorted[j].0 - sorted[i].0);
            let bound = u128::from(burst) * u128::from(period_ns) + u128::from(amount) * t;
            assert!(
                sum * u128::from(period_ns) <= bound,
                "{sum} admitted in {t} ns, over the bound {burst} + {amount}·t/{period_ns}"
            );
        }
    }
}

/// Rolling windows: a random walk of costs and pauses never sees more than
/// the token-bucket bound admitted in any interval.
pub fn rolling_never_exceeds_its_bound<F: StoreFactory>(f: &F) {
    let mut runner = TestRunner::new(PropConfig { cases: 48, ..PropConfig::default() });
    let strategy = (
        1u64..40,
        0u64..20,
        prop::sample::select(vec![1u64, 7, 60]),
        prop::collection::vec((0u64..3_000, 1u64..6), 1..120),
    );
    runner
        .run(&strategy, |(amount, extra_burst, period_s, steps)| {
            let burst = amount + extra_burst;
            let h = Harness::new(
                f,
                policy(&tokens_policy(amount, burst, &format!("{period_s}s"), "rolling")),
                "2026-05-01T00:00:00Z",
            );
            let t = h.tenant(&tenant("t"));
            let mut admitted = Vec::new();
            for (pause_ms, cost) in steps {
                h.advance(Duration::from_millis(pause_ms));
                let now = h.clock.now().0;
                let d = h.admit(&t, "m", Cost::tokens(cost, 0));
                if d.is_admitted() {
                    admitted.push((now, cost));
                }
                if cost > burst {
                    let too_large = matches!(d.outcome, Outcome::TooLarge { .. });
                    prop_assert!(too_large);
                }
            }
            check_rolling_bound(&admitted, amount, burst, period_s * NS);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Calendar windows: whatever the walk, no slot admits more than the limit.
pub fn calendar_never_exceeds_its_limit<F: StoreFactory>(f: &F) {
    let mut runner = TestRunner::new(PropConfig { cases: 48, ..PropConfig::default() });
    let strategy = (1u64..30, prop::collection::vec((0u64..20_000, 1u64..5), 1..150));
    runner
        .run(&strategy, |(amount, steps)| {
            let h = Harness::new(
                f,
                policy(
                    &tokens_policy(amount, amount, "1m", "calendar")
                        .replace("burst = ", "# burst = "),
                ),
                "2026-05-01T00:00:00Z",
            );
            let t = h.tenant(&tenant("t"));
            let mut per_slot = std::collections::BTreeMap::<u64, u64>::new();
            for (pause_ms, cost) in steps {
                h.advance(Duration::from_millis(pause_ms));
                let now = h.clock.now().0;
                let d = h.admit(&t, "m", Cost::tokens(cost, 0));
                if d.is_admitted() {
                    *per_slot.entry(now / (60 * NS)).or_default() += cost;
                } else if let Outcome::Limited { retry_at, .. } = d.outcome {
                    // Denied only when it really does not fit, and told to
                    // come back at the next minute.
                    let used = per_slot.get(&(now / (60 * NS))).copied().unwrap_or(0);
                    prop_assert!(used + cost > amount);
                    prop_assert_eq!(retry_at.0, (now / (60 * NS) + 1) * 60 * NS);
                }
            }
            for (slot, used) in per_slot {
                prop_assert!(used <= amount, "slot {slot}: {used} > {amount}");
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// GCRA admits exactly what a continuous token bucket admits: no rounding,
/// whatever the amount (1,440 per minute is 41,666,666⅔ ns per request).
pub fn gcra_admits_exactly_what_its_model_says<F: StoreFactory>(f: &F) {
    let mut runner = TestRunner::new(PropConfig { cases: 48, ..PropConfig::default() });
    let strategy = (
        prop_oneof![
            1u64..20,
            prop::sample::select(vec![7u64, 60, 240, 1440, 250_000]),
            1u64..2_000
        ],
        0u64..5,
        prop::collection::vec((0u64..4_000, 1u64..4), 1..150),
    );
    runner
        .run(&strategy, |(amount, extra, steps)| {
            let burst = amount + extra;
            let period = 60 * NS;
            let h = Harness::new(
                f,
                policy(&tokens_policy(amount, burst, "1m", "rolling")),
                "2026-05-01T00:00:00Z",
            );
            let t = h.tenant(&tenant("t"));
            // The model: level in token·ns, draining amount per ns.
            let mut level: u128 = 0;
            let mut last = h.clock.now().0;
            for (pause_ms, cost) in steps {
                h.advance(Duration::from_millis(pause_ms));
                let now = h.clock.now().0;
                level = level.saturating_sub(u128::from(now - last) * u128::from(amount));
                last = now;
                let fits = level + u128::from(cost) * u128::from(period)
                    <= u128::from(burst) * u128::from(period);
                let d = h.admit(&t, "m", Cost::tokens(cost, 0));
                prop_assert_eq!(d.is_admitted(), fits, "at {} cost {}", now, cost);
                if fits {
                    level += u128::from(cost) * u128::from(period);
                }
                let remaining =
                    (u128::from(burst) * u128::from(period) - level) / u128::from(period);
                prop_assert_eq!(u128::from(d.statuses[0].remaining), remaining);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Many threads racing on one tenant at one instant admit exactly the limit.
pub fn racing_threads_admit_exactly_the_limit<F: StoreFactory>(f: &F)
where
    F::Store: 'static,
{
    for (text, limit) in [
        (
            "[models.m]\n[[limits]]\nname = \"rpd\"\nmetric = \"requests\"\namount = 50\nwindow = \"1d\"\n",
            50u64,
        ),
        (
            "[models.m]\n[[limits]]\nname = \"rpm\"\nmetric = \"requests\"\namount = 30\nwindow = \"1m\"\n",
            30,
        ),
    ] {
        let h = Arc::new(Harness::new(f, policy(text), "2026-05-01T12:00:00Z"));
        let t = Arc::new(h.tenant(&tenant("racer")));
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (h, t, admitted) = (h.clone(), t.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        if h.admit(&t, "m", Cost::REQUEST).is_admitted() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("a racing thread");
        }
        assert_eq!(admitted.load(Ordering::Relaxed), limit, "{text}");
    }
}

/// A request stamped earlier than the last admission (another instance's
/// clock a little behind, or two requests reaching the store out of order)
/// sees the same debt from further back: it cannot free capacity.
pub fn an_earlier_clock_frees_nothing<F: StoreFactory>(f: &F) {
    let h =
        Harness::new(f, policy(&tokens_policy(10, 10, "10s", "rolling")), "2026-05-01T12:00:00Z");
    let t = h.tenant(&tenant("t"));
    let at = |offset_ms: u64, cost: u64| {
        let now = sluice_core::Instant(h.clock.now().0 + offset_ms * 1_000_000);
        let req = h.request(&t, None, "chat", "m", Cost::tokens(cost, 0));
        h.rt.block_on(h.store.admit(&h.policy.plan(&req, now))).expect("store")
    };
    assert!(at(1_000, 8).is_admitted());
    // From t+0 the first request's 8 tokens end at 9 s; 2 more would end at
    // 11 s, past the 10 s of burst.
    let d = at(0, 2);
    assert!(!d.is_admitted(), "an earlier stamp must not admit past the bound: {d:?}");
    assert!(at(0, 1).is_admitted(), "exactly the burst fits");
}

/// Threads racing while the clock moves: the bound still holds for the
/// whole history, checked by the oracle.
pub fn racing_threads_respect_the_bound_over_time<F: StoreFactory>(f: &F)
where
    F::Store: 'static,
{
    let (amount, burst) = (20u64, 20u64);
    let h = Arc::new(Harness::new(
        f,
        policy(&tokens_policy(amount, burst, "10s", "rolling")),
        "2026-05-01T12:00:00Z",
    ));
    let t = Arc::new(h.tenant(&tenant("racer")));
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (h, t, log) = (h.clone(), t.clone(), log.clone());
            std::thread::spawn(move || {
                for n in 0..300u64 {
                    if i == 0 && n % 3 == 0 {
                        h.advance(Duration::from_millis(97));
                    }
                    let cost = 1 + (n + i) % 3;
                    let plan_time = h.clock.now();
                    let req = h.request(&t, None, "chat", "m", Cost::tokens(cost, 0));
                    let plan = h.policy.plan(&req, plan_time);
                    let d = h.rt.block_on(h.store.admit(&plan)).expect("store");
                    if d.is_admitted() {
                        log.lock().push((plan_time.0, cost));
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("a racing thread");
    }
    let log = log.lock();
    assert!(log.len() > 20, "the test should admit more than one burst");
    check_rolling_bound(&log, amount, burst, 10 * NS);
}

/// A day window resets at the tenant's local midnight, on a 23-hour DST day
/// too; a UTC tenant's resets at UTC midnight.
pub fn calendar_resets_at_local_midnight_across_dst<F: StoreFactory>(f: &F) {
    let text = "[models.m]\n[[limits]]\nname = \"rpd\"\nmetric = \"requests\"\namount = 2\nwindow = \"1d\"\n";
    // 2026-03-08 is the day US clocks spring forward: in Los Angeles it runs
    // from 08:00Z to 07:00Z the next day, 23 hours.
    let h = Harness::new(f, policy(text), "2026-03-08T10:00:00Z");
    let la =
        h.tenant(&TenantSpec { time_zone: Some("America/Los_Angeles".into()), ..tenant("la") });
    let utc = h.tenant(&tenant("utc"));
    for t in [&la, &utc] {
        assert!(h.admit(t, "m", Cost::REQUEST).is_admitted());
        assert!(h.admit(t, "m", Cost::REQUEST).is_admitted());
    }
    let d = h.admit(&la, "m", Cost::REQUEST);
    let Outcome::Limited { retry_at, .. } = d.outcome else { panic!("{d:?}") };
    assert_eq!(retry_at, sluice_core::FakeClock::at("2026-03-09T07:00:00Z").now());
    assert_eq!(d.statuses[0].reset, Some(retry_at));

    h.clock.set(sluice_core::FakeClock::at("2026-03-09T00:00:00Z").now());
    assert!(h.admit(&utc, "m", Cost::REQUEST).is_admitted(), "UTC day is over");
    h.clock.set(sluice_core::FakeClock::at("2026-03-09T06:59:59.999Z").now());
    assert!(is_limited(&h.admit(&la, "m", Cost::REQUEST)), "still 2026-03-08 in Los Angeles");
    h.clock.set(sluice_core::FakeClock::at("2026-03-09T07:00:00Z").now());
    assert!(h.admit(&la, "m", Cost::REQUEST).is_admitted(), "local midnight");
}

const TPD: &str = r#"
[policy]
lease = "10m"
[models.m]
[[limits]]
name = "tpd"
metric = "tokens"
amount = 1000
window = "1d"
[[limits]]
name = "tpm"
metric = "tokens"
amount = 1000
window = "1m"
"#;

/// Refunds go back to the window that was charged; overage becomes debt;
/// a refund for a window that is over touches nothing.
pub fn refunds_and_debt_land_in_the_right_window<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(TPD), "2026-05-01T23:59:00Z");
    let t = h.tenant(&tenant("t"));
    let d = h.admit(&t, "m", Cost::tokens(100, 500));
    assert_eq!(status(&h.policy, &d, "tpd").remaining, 400);
    let id = d.reservation().expect("a reservation");
    assert_eq!(h.settle(id, Usage::tokens(100, 50)), Settlement::Settled);
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "tpd").used, 150, "refund of 450 went back");
    assert!(status(&h.policy, &p, "tpm").used <= 150);

    // Overage: reserved 100, used 700 -> 550 more, debt in today's window.
    let id = h.admit(&t, "m", Cost::tokens(50, 50)).reservation().expect("reservation");
    assert_eq!(h.settle(id, Usage::tokens(300, 400)), Settlement::Settled);
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "tpd").used, 850);
    let d = h.admit(&t, "m", Cost::tokens(100, 100));
    assert_eq!(denied_by(&h.policy, &d), "tpd");

    // A reservation from before midnight, settled after it: the refund has
    // nowhere to go, the new day is untouched.
    let h = Harness::new(f, policy(TPD), "2026-05-02T23:59:50Z");
    let t = h.tenant(&tenant("t"));
    let id = h.admit(&t, "m", Cost::tokens(0, 600)).reservation().expect("reservation");
    h.advance(Duration::from_secs(20));
    h.settle(id, Usage::tokens(0, 10));
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "tpd").used, 0, "new day starts empty");
    assert_eq!(status(&h.policy, &p, "tpd").remaining, 1000);
}

/// Settling twice has the effect of settling once.
pub fn settlement_is_idempotent<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(TPD), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let id = h.admit(&t, "m", Cost::tokens(100, 400)).reservation().expect("reservation");
    assert_eq!(h.settle(id, Usage::tokens(100, 100)), Settlement::Settled);
    let before = h.peek(&t, "m");
    assert_eq!(h.settle(id, Usage::tokens(100, 100)), Settlement::Unknown);
    assert_eq!(h.settle(id, Usage::REFUND), Settlement::Unknown);
    let after = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &before, "tpd").used, 200);
    assert_eq!(status(&h.policy, &after, "tpd").used, 200);
    // A made-up id is unknown too.
    let forged = sluice_core::ReservationId(id.0 ^ (1u128 << 100));
    assert_eq!(h.settle(forged, Usage::REFUND), Settlement::Unknown);
}

const MULTI: &str = r#"
[models.a]
[models.b]
[tiers.free.models]
a = { rpm = 10, rpd = 100, tpd = 1000 }
b = { rpm = 10, rpd = 100, tpd = 1000 }
[[tiers.free.limits]]
name = "tokens-all-models"
metric = "tokens"
amount = 1500
window = "1d"
"#;

/// A request denied by one limit charges none of the others.
pub fn denied_request_changes_no_counter<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(MULTI), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    assert!(h.admit(&t, "a", Cost::tokens(900, 0)).is_admitted());
    let before_a = h.peek(&t, "a");
    let before_b = h.peek(&t, "b");
    // b's own limits would admit 700 tokens; the cross-model budget (600 left) denies.
    let d = h.admit(&t, "b", Cost::tokens(700, 0));
    assert_eq!(denied_by(&h.policy, &d), "tokens-all-models");
    assert_eq!(status(&h.policy, &d, "b/rpm").verdict, Verdict::Fits);
    // The denial reports the state as it is: nothing was charged, not even
    // by the limits that would have fit.
    let rpm = status(&h.policy, &d, "b/rpm");
    assert_eq!((rpm.used, rpm.remaining), (0, 10));
    assert_eq!(status(&h.policy, &d, "b/tpd").remaining, 1000);
    assert_eq!(h.peek(&t, "a"), before_a);
    assert_eq!(h.peek(&t, "b"), before_b);
    assert_eq!(status(&h.policy, &h.peek(&t, "b"), "b/rpm").used, 0);
    // And a request that fits still does.
    assert!(h.admit(&t, "b", Cost::tokens(600, 0)).is_admitted());
}

/// A cost above a limit's whole capacity is "too large", not "wait", and
/// charges nothing.
pub fn too_large_is_its_own_outcome<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(MULTI), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let d = h.admit(&t, "a", Cost::tokens(800, 400));
    assert!(matches!(d.outcome, Outcome::TooLarge { .. }), "{d:?}");
    assert_eq!(denied_by(&h.policy, &d), "a/tpd");
    assert_eq!(status(&h.policy, &h.peek(&t, "a"), "a/rpm").used, 0);
}

const LEASED: &str = r#"
[policy]
lease = "1m"
[models.m]
[[limits]]
name = "tpd"
metric = "tokens"
amount = 1000
window = "1d"
[[limits]]
name = "in-flight"
metric = "concurrent"
amount = 1
"#;

/// An unsettled reservation expires after its lease: it keeps its token
/// charge and gives its concurrency slot back.
pub fn unsettled_reservation_expires_and_keeps_its_charge<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(LEASED), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let id = h.admit(&t, "m", Cost::tokens(0, 300)).reservation().expect("reservation");
    let d = h.admit(&t, "m", Cost::tokens(0, 1));
    assert_eq!(denied_by(&h.policy, &d), "in-flight");
    h.advance(Duration::from_secs(61));
    let d = h.admit(&t, "m", Cost::tokens(0, 100));
    assert!(d.is_admitted(), "the lease expired and freed the slot: {d:?}");
    assert_eq!(status(&h.policy, &d, "tpd").used, 400, "the expired charge stays");
    assert_eq!(h.settle(id, Usage::REFUND), Settlement::Unknown, "too late to settle");
}

/// A settlement that arrives after the lease is too late, even when nothing
/// else has touched the tenant since: the charge stays as it was.
pub fn settlement_after_the_lease_changes_nothing<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(LEASED), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let id = h.admit(&t, "m", Cost::tokens(0, 300)).reservation().expect("reservation");
    h.advance(Duration::from_secs(61));
    assert_eq!(h.settle(id, Usage::REFUND), Settlement::Unknown, "too late to settle");
    let d = h.admit(&t, "m", Cost::tokens(0, 1));
    assert!(d.is_admitted(), "the expired lease freed its slot: {d:?}");
    assert_eq!(status(&h.policy, &d, "tpd").used, 301, "the late refund was ignored");
}

/// Concurrency slots come back on settlement and on release (a dropped
/// request).
pub fn concurrency_is_released_on_settle_and_release<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(LEASED), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let id = h.admit(&t, "m", Cost::REQUEST).reservation().expect("reservation");
    assert!(is_limited(&h.admit(&t, "m", Cost::REQUEST)));
    h.settle(id, Usage::tokens(0, 0));
    let id = h.admit(&t, "m", Cost::REQUEST).reservation().expect("slot back after settle");
    h.release(id);
    // Release may be asynchronous for remote stores: give it a moment.
    let mut ok = false;
    for _ in 0..50 {
        if let Some(id) = h.admit(&t, "m", Cost::REQUEST).reservation() {
            h.release(id);
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ok, "slot back after release");
}

/// Shadow limits are evaluated and reported, and never deny.
pub fn shadow_limits_never_deny<F: StoreFactory>(f: &F) {
    let text = r#"
[models.m]
[[limits]]
name = "real"
metric = "requests"
amount = 5
window = "1m"
[[limits]]
name = "trial"
metric = "requests"
amount = 2
window = "1m"
shadow = true
"#;
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    for i in 0..5 {
        let d = h.admit(&t, "m", Cost::REQUEST);
        assert!(d.is_admitted(), "request {i}");
        let s = status(&h.policy, &d, "trial");
        assert!(s.shadow);
        assert_eq!(s.verdict == Verdict::Fits, i < 2, "request {i}: {s:?}");
    }
    assert_eq!(denied_by(&h.policy, &h.admit(&t, "m", Cost::REQUEST)), "real");
}

/// Exemptions: of a tenant, of a key, and of a channel (a policy rule).
pub fn exemptions_of_tenant_key_and_channel<F: StoreFactory>(f: &F) {
    let text = r#"
[models.m]
[[limits]]
name = "rpm"
metric = "requests"
amount = 1
window = "1m"
[[limits]]
name = "rpd"
metric = "requests"
amount = 100
window = "1d"
[[exemptions]]
name = "internal callers"
limits = ["rpm"]
when = { "key.caller" = "internal" }
"#;
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let vip = h.tenant(&TenantSpec { exempt: vec!["rpm".into()], ..tenant("vip") });
    let plain = h.tenant(&tenant("plain"));
    let internal = h.key("svc", &[("caller", "internal")]);
    let trusted = h
        .policy
        .key(&sluice_core::KeySpec {
            id: "ops".into(),
            labels: Default::default(),
            exempt: vec!["*".into()],
            overrides: vec![],
        })
        .expect("key");
    for _ in 0..3 {
        let d = h.admit(&vip, "m", Cost::REQUEST);
        assert!(d.is_admitted());
        assert!(d.statuses.iter().all(|s| &*h.policy.limit(s.limit).expect("limit").name != "rpm"));
        assert!(
            h.admit_req(&h.request(&plain, Some(&internal), "chat", "m", Cost::REQUEST))
                .is_admitted()
        );
        let d = h.admit_req(&h.request(&plain, Some(&trusted), "chat", "m", Cost::REQUEST));
        assert!(d.is_admitted() && d.statuses.is_empty(), "{d:?}");
    }
    // The plain tenant without the internal key is limited, and what the
    // exempt key spent on rpd still counts.
    let d = h.admit(&plain, "m", Cost::REQUEST);
    assert!(d.is_admitted());
    assert_eq!(status(&h.policy, &d, "rpd").used, 4);
    assert_eq!(denied_by(&h.policy, &h.admit(&plain, "m", Cost::REQUEST)), "rpm");
}

/// A granted increase takes effect at once and keeps what was used.
pub fn raised_limit_applies_at_once_and_keeps_counts<F: StoreFactory>(f: &F) {
    let text = r#"
[models.m]
[[limits]]
name = "rpm"
metric = "requests"
amount = 5
window = "1m"
[[limits]]
name = "rpd"
metric = "requests"
amount = 5
window = "1d"
"#;
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let spec = tenant("org");
    let t = h.tenant(&spec);
    for _ in 0..5 {
        assert!(h.admit(&t, "m", Cost::REQUEST).is_admitted());
    }
    assert!(is_limited(&h.admit(&t, "m", Cost::REQUEST)));
    let raised = TenantSpec {
        overrides: vec![
            sluice_core::OverrideSpec { limit: "rpm".into(), amount: 20, until: None },
            sluice_core::OverrideSpec { limit: "rpd".into(), amount: 8, until: None },
        ],
        ..spec.clone()
    };
    let t = h.tenant(&raised);
    let d = h.admit(&t, "m", Cost::REQUEST);
    assert!(d.is_admitted(), "{d:?}");
    assert_eq!(status(&h.policy, &d, "rpd").used, 6);
    assert_eq!(status(&h.policy, &d, "rpd").remaining, 2);
    assert_eq!(status(&h.policy, &d, "rpm").used, 6);
    assert_eq!(status(&h.policy, &d, "rpm").remaining, 14);
    // A grant that has ended no longer applies.
    let ended = TenantSpec {
        overrides: vec![sluice_core::OverrideSpec {
            limit: "rpd".into(),
            amount: 8,
            until: Some(h.clock.now()),
        }],
        ..spec
    };
    let t = h.tenant(&ended);
    assert_eq!(denied_by(&h.policy, &h.admit(&t, "m", Cost::REQUEST)), "rpd");
}

/// A reloaded policy (same limits, new amounts, a new limit) keeps counters.
pub fn reloaded_policy_keeps_counters<F: StoreFactory>(f: &F) {
    let v1 = "[models.m]\n[tiers.free.models]\nm = { rpd = 5, tpm = 1000 }\n";
    let v2 = "[models.m]\n[models.n]\n[tiers.free.models]\nn = { rpd = 1 }\nm = { rpd = 10, tpm = 1000 }\n[[tiers.free.limits]]\nname = \"rph\"\nmetric = \"requests\"\namount = 100\nwindow = \"1h\"\n";
    let mut h = Harness::new(f, policy(v1), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    for _ in 0..3 {
        assert!(h.admit(&t, "m", Cost::tokens(100, 0)).is_admitted());
    }
    h.policy = policy(v2);
    let t = h.tenant(&tenant("t"));
    let d = h.admit(&t, "m", Cost::tokens(100, 0));
    assert!(d.is_admitted());
    assert_eq!(status(&h.policy, &d, "m/rpd").used, 4);
    assert_eq!(status(&h.policy, &d, "m/rpd").remaining, 6);
    assert_eq!(status(&h.policy, &d, "m/tpm").used, 400);
    assert_eq!(status(&h.policy, &d, "rph").used, 1);
}

/// One tenant's spending never touches another's counters.
pub fn tenants_do_not_share_counters<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(MULTI), "2026-05-01T10:00:00Z");
    let a = h.tenant(&tenant("org-a"));
    let b = h.tenant(&tenant("org-b"));
    for _ in 0..10 {
        assert!(h.admit(&a, "a", Cost::REQUEST).is_admitted());
    }
    assert!(is_limited(&h.admit(&a, "a", Cost::REQUEST)));
    let d = h.admit(&b, "a", Cost::REQUEST);
    assert!(d.is_admitted());
    assert_eq!(status(&h.policy, &d, "a/rpm").used, 1);
}

/// Limits that name one counter (`counter = "..."`) and apply to one
/// request: the stricter amount decides and the counter is charged once. A
/// limit on a tenant fact (environment) is tested per request, not per tier.
pub fn limits_sharing_a_counter_charge_it_once<F: StoreFactory>(f: &F) {
    let text = r#"
[models.a]
[models.b]
[[tiers.free.limits]]
name = "rpm-5"
metric = "requests"
amount = 5
window = "1m"
counter = "rpm"
[[limits]]
name = "rpm-3-on-a"
metric = "requests"
amount = 3
window = "1m"
when = { model = "a" }
counter = "rpm"
[[limits]]
name = "sandbox-rpm-2"
metric = "requests"
amount = 2
window = "1m"
when = { environment = "sandbox" }
counter = "rpm"
"#;
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    for i in 0..3 {
        let d = h.admit(&t, "a", Cost::REQUEST);
        assert!(d.is_admitted(), "request {i}");
        // One status for the one counter, with the stricter amount, charged
        // once a request.
        assert_eq!(d.statuses.len(), 1);
        let s = &d.statuses[0];
        assert_eq!((s.amount, s.used), (3, i + 1), "request {i}");
    }
    assert_eq!(denied_by(&h.policy, &h.admit(&t, "a", Cost::REQUEST)), "rpm-3-on-a");
    // Model b has only the tier's 5, on the same counter: two more.
    for _ in 0..2 {
        assert!(h.admit(&t, "b", Cost::REQUEST).is_admitted());
    }
    let d = h.admit(&t, "b", Cost::REQUEST);
    assert_eq!(denied_by(&h.policy, &d), "rpm-5");
    assert_eq!(status(&h.policy, &d, "rpm-5").used, 5);
    // A sandbox tenant of the same tier: its environment's 2 is stricter
    // still, on every model.
    let mut spec = tenant("s");
    spec.environment = Some("sandbox".into());
    let s = h.tenant(&spec);
    assert!(h.admit(&s, "a", Cost::REQUEST).is_admitted());
    assert!(h.admit(&s, "b", Cost::REQUEST).is_admitted());
    assert_eq!(denied_by(&h.policy, &h.admit(&s, "b", Cost::REQUEST)), "sandbox-rpm-2");
}

/// Admission reports every applicable limit with amount, remaining and reset.
pub fn decision_reports_every_limit<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(MULTI), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let d = h.admit(&t, "a", Cost::tokens(10, 20));
    let names: Vec<String> = d
        .statuses
        .iter()
        .map(|s| h.policy.limit(s.limit).expect("limit").name.to_string())
        .collect();
    assert_eq!(names, ["a/rpm", "a/rpd", "a/tpd", "tokens-all-models"]);
    let rpd = status(&h.policy, &d, "a/rpd");
    assert_eq!((rpd.amount, rpd.used, rpd.remaining, rpd.requested), (100, 1, 99, 1));
    assert_eq!(rpd.reset, Some(sluice_core::FakeClock::at("2026-05-02T00:00:00Z").now()));
    let tpd = status(&h.policy, &d, "a/tpd");
    assert_eq!((tpd.used, tpd.remaining, tpd.requested), (30, 970, 30));
    let rpm = status(&h.policy, &d, "a/rpm");
    // One request of ten per minute: back to full six seconds later.
    assert_eq!(rpm.reset, Some(Instant(h.clock.now().0 + 6 * NS)));
}

/// A tenant busy on many models (more partitions than a store keeps side by
/// side) still has every count, and each model its own: none is lost, none
/// shared.
pub fn a_tenant_on_many_models_keeps_every_count<F: StoreFactory>(f: &F) {
    const MODELS: usize = 40;
    let mut text = String::new();
    for m in 0..MODELS {
        text.push_str(&format!("[models.m{m}]\n"));
    }
    text.push_str("[tiers.free.models]\n");
    for m in 0..MODELS {
        text.push_str(&format!("m{m} = {{ rpm = 3, rpd = 100 }}\n"));
    }
    text.push_str(
        "[[tiers.free.limits]]\nname = \"requests-all-models\"\nmetric = \"requests\"\namount = 1000\nwindow = \"1d\"\n",
    );
    let h = Harness::new(f, policy(&text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("busy"));
    let other = h.tenant(&tenant("quiet"));
    for round in 0..3 {
        for m in 0..MODELS {
            let d = h.admit(&t, &format!("m{m}"), Cost::REQUEST);
            assert!(d.is_admitted(), "round {round}, model m{m}");
        }
    }
    for m in 0..MODELS {
        let model = format!("m{m}");
        let d = h.admit(&t, &model, Cost::REQUEST);
        assert_eq!(denied_by(&h.policy, &d), format!("{model}/rpm"));
        let d = h.peek(&t, &model);
        let rpd = status(&h.policy, &d, &format!("{model}/rpd"));
        assert_eq!(rpd.used, 3, "{model}");
    }
    let d = h.peek(&t, "m0");
    let all = status(&h.policy, &d, "requests-all-models");
    assert_eq!(all.used, 3 * MODELS as u64);
    // Another tenant of the same shard or not starts from nothing.
    let d = h.peek(&other, "m7");
    assert_eq!(status(&h.policy, &d, "m7/rpd").used, 0);
    // A minute later the RPMs have refilled (and may be swept); the day's
    // counts stay.
    h.advance(Duration::from_secs(61));
    for m in 0..MODELS {
        assert!(h.admit(&t, &format!("m{m}"), Cost::REQUEST).is_admitted(), "m{m}");
    }
    let d = h.peek(&t, "m0");
    let all = status(&h.policy, &d, "requests-all-models");
    assert_eq!(all.used, 4 * MODELS as u64);
}

/// `peek` at a plan's costs (a dry run) says what `admit` would say, and
/// charges nothing: the gateway uses it to refuse a tenant's request before
/// reading its body.
pub fn a_dry_run_denies_as_admission_would_and_charges_nothing<F: StoreFactory>(f: &F) {
    let text = r#"
[models.m]
[[limits]]
name = "rpm"
metric = "requests"
amount = 2
window = "1m"
[[limits]]
name = "tpd"
metric = "tokens"
amount = 1000
window = "1d"
kind = "calendar"
[[limits]]
name = "inflight"
metric = "concurrent"
amount = 5
"#;
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let dry = |cost: Cost| {
        let plan = h.policy.plan(&h.request(&t, None, "chat", "m", cost), h.clock.now());
        h.rt.block_on(h.store.peek(&plan)).unwrap_or_else(|e| panic!("store error: {e}"))
    };
    // Room for it: the dry run admits, reserves nothing, charges nothing.
    let d = dry(Cost::tokens(10, 10));
    assert!(d.is_admitted());
    assert_eq!(d.reservation(), None, "a dry run reserves nothing");
    for _ in 0..3 {
        assert!(dry(Cost::tokens(10, 10)).is_admitted(), "a dry run charges nothing");
    }
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "rpm").used, 0);
    assert_eq!(status(&h.policy, &p, "tpd").used, 0);
    assert_eq!(status(&h.policy, &p, "inflight").used, 0, "no slot taken");

    // Too large for the day: the dry run says so, as admission does.
    let d = dry(Cost::tokens(900, 200));
    assert!(matches!(d.outcome, Outcome::TooLarge { .. }));
    assert_eq!(denied_by(&h.policy, &d), "tpd");

    // Two admitted: the third is refused by the dry run with the same limit
    // and retry instant as admission gives it.
    for _ in 0..2 {
        let id = h.admit(&t, "m", Cost::tokens(10, 10)).reservation().expect("reservation");
        h.settle(id, Usage::tokens(10, 10));
    }
    let dry_run = dry(Cost::tokens(10, 10));
    let admitted = h.admit(&t, "m", Cost::tokens(10, 10));
    assert!(is_limited(&dry_run) && is_limited(&admitted));
    assert_eq!(denied_by(&h.policy, &dry_run), "rpm");
    assert_eq!(dry_run.outcome, admitted.outcome, "same limit, same retry instant");
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "rpm").used, 2);
    assert_eq!(status(&h.policy, &p, "tpd").used, 40);
}

/// What the gateway checks before a body is read (`plan_before_body`, at
/// one request and one input token) is part of every request's plan: when
/// it is refused, the request is refused whatever its model and size.
pub fn a_denial_before_the_body_is_a_denial_of_the_request<F: StoreFactory>(f: &F) {
    let text = r#"
[models.a]
[models.b]
[[limits]]
name = "rpm"
metric = "requests"
amount = 2
window = "1m"
[[limits]]
name = "model-rpm"
metric = "requests"
amount = 1
window = "1m"
by = ["model"]
[[limits]]
name = "tpd"
metric = "tokens"
amount = 500
window = "1d"
kind = "calendar"
"#;
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let before_body = |h: &Harness<F::Store>| {
        let req = h.request(&t, None, "chat", "a", Cost::tokens(1, 0));
        let plan = h.policy.plan_before_body(&req, h.clock.now());
        let names: Vec<&str> =
            plan.charges.iter().map(|c| &*h.policy.limit(c.limit).expect("a limit").name).collect();
        assert_eq!(names, ["rpm", "tpd"], "only the limits that do not need the model");
        h.rt.block_on(h.store.peek(&plan)).unwrap_or_else(|e| panic!("store error: {e}"))
    };
    assert!(before_body(&h).is_admitted());
    // One request on each model: the per-model limits are full, the
    // tenant-wide one too.
    for m in ["a", "b"] {
        let id = h.admit(&t, m, Cost::tokens(10, 10)).reservation().expect("reservation");
        h.settle(id, Usage::tokens(10, 10));
    }
    let d = before_body(&h);
    assert_eq!(denied_by(&h.policy, &d), "rpm");
    for m in ["a", "b"] {
        assert!(is_limited(&h.admit(&t, m, Cost::tokens(1, 0))), "model {m}");
    }

    // A day's tokens spent: refused before the body, and so is any request.
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let id = h.admit(&t, "a", Cost::tokens(400, 100)).reservation().expect("reservation");
    h.settle(id, Usage::tokens(400, 100));
    h.advance(Duration::from_secs(120));
    let d = before_body(&h);
    assert_eq!(denied_by(&h.policy, &d), "tpd");
    assert!(is_limited(&h.admit(&t, "b", Cost::tokens(1, 0))));
}

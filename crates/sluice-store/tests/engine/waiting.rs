//! Waiting instead of a 429 (`max_wait`), on every store: a refused request
//! that would fit within its wait is admitted at the instant its refusal
//! named; one that would not is refused at once; each tenant waits in its
//! own line, so one tenant's waiters never hold up another's; the lines are
//! bounded. Time is the harness's fake clock: pausing moves it.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Clock, Cost, Decision, FakeClock, TenantFacts};

use sluice_store::{Pause, QueueBounds, WaitQueue, Waiter};

use crate::harness::{Harness, StoreFactory, denied_by, is_limited, policy, tenant};

/// Two requests a second (rolling), waits of up to 2 s; another limit, a
/// minute's 5, that allows no wait.
const WAITING: &str = r#"
[models.m]

[tiers.default]
max_wait = "2s"

[[limits]]
name = "rps"
metric = "requests"
amount = 2
window = "1s"

[[limits]]
name = "rpm"
metric = "requests"
amount = 5
window = "1m"
max_wait = "0s"
"#;

/// Pausing moves the fake clock (the store reads it).
struct FakePause(FakeClock);

impl Pause for FakePause {
    async fn pause(&self, d: Duration) {
        self.0.advance(d);
        tokio::task::yield_now().await;
    }
}

/// Pausing waits until told to go on (then moves the clock).
struct HeldPause(FakeClock, Arc<tokio::sync::Notify>);

impl Pause for HeldPause {
    async fn pause(&self, d: Duration) {
        self.1.notified().await;
        self.0.advance(d);
    }
}

fn wait_in<S: sluice_core::CounterStore + Clone, P: Pause>(
    h: &Harness<S>,
    q: &WaitQueue,
    pause: &P,
    t: &TenantFacts,
    first: Decision,
) -> impl std::future::Future<Output = sluice_store::Waited> {
    let wait = h.policy.allowed_wait(t.tier(), &first);
    let req = h.request(t, None, "chat", "m", Cost::REQUEST);
    let store = h.store.clone();
    let clock = h.clock.clone();
    let policy = h.policy.clone();
    async move {
        let plan = |at| policy.plan(&req, at);
        let who = Waiter { tenant: t.hash(), bytes: 0, wait };
        q.wait_for_room(who, (&store, &clock, pause), first, plan).await.unwrap()
    }
}

/// The third request of a second waits the half second the refusal names
/// and is admitted; a refusal by a limit that allows no wait is answered at
/// once.
pub fn a_refused_request_waits_for_room_and_is_admitted<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(WAITING), "2026-05-10T08:00:00Z");
    let t = h.tenant(&tenant("acme"));
    let q = WaitQueue::new(QueueBounds::default());
    let pause = FakePause(h.clock.clone());
    assert!(h.admit(&t, "m", Cost::REQUEST).is_admitted());
    assert!(h.admit(&t, "m", Cost::REQUEST).is_admitted());
    let first = h.admit(&t, "m", Cost::REQUEST);
    assert!(is_limited(&first));
    assert_eq!(h.policy.allowed_wait(t.tier(), &first), Duration::from_secs(2));
    let w = h.rt.block_on(wait_in(&h, &q, &pause, &t, first));
    assert!(w.decision.is_admitted(), "{}", denied_by(&h.policy, &w.decision));
    assert_eq!(w.waited, Duration::from_millis(500));
    assert!(!w.full);
    assert_eq!((q.waiting(), q.lines()), (0, 0), "the line is gone once empty");
    // Two more in the next second: the fifth of the minute. The sixth is
    // refused by the minute's limit, which allows no wait: at once.
    h.advance(Duration::from_secs(1));
    assert!(h.admit(&t, "m", Cost::REQUEST).is_admitted());
    assert!(h.admit(&t, "m", Cost::REQUEST).is_admitted());
    h.advance(Duration::from_secs(1));
    let first = h.admit(&t, "m", Cost::REQUEST);
    assert_eq!(denied_by(&h.policy, &first), "rpm");
    assert_eq!(h.policy.allowed_wait(t.tier(), &first), Duration::ZERO);
    let before = h.clock.now();
    let w = h.rt.block_on(wait_in(&h, &q, &pause, &t, first));
    assert!(is_limited(&w.decision));
    assert_eq!((w.waited, h.clock.now()), (Duration::ZERO, before));
}

/// A refusal whose instant is past the wait is answered at once, and
/// nothing is charged for having asked.
pub fn a_wait_longer_than_max_wait_is_refused_at_once<F: StoreFactory>(f: &F) {
    let slow = WAITING.replace("amount = 2\nwindow = \"1s\"", "amount = 1\nwindow = \"10s\"");
    let h = Harness::new(f, policy(&slow), "2026-05-10T08:00:00Z");
    let t = h.tenant(&tenant("acme"));
    let q = WaitQueue::new(QueueBounds::default());
    let pause = FakePause(h.clock.clone());
    assert!(h.admit(&t, "m", Cost::REQUEST).is_admitted());
    let first = h.admit(&t, "m", Cost::REQUEST);
    let w = h.rt.block_on(wait_in(&h, &q, &pause, &t, first));
    assert!(is_limited(&w.decision));
    assert_eq!(w.waited, Duration::ZERO);
    // Ten seconds on, the one request of the window is still there to take.
    h.advance(Duration::from_secs(10));
    assert!(h.admit(&t, "m", Cost::REQUEST).is_admitted());
}

/// Tenant A's line is held (its waiter paused until released); tenant B's
/// waiter is admitted meanwhile, and A's second request finds A's line
/// full (one a tenant here) and is refused at once. Released, A's waiter
/// is admitted.
pub fn one_tenants_line_does_not_hold_up_another<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(WAITING), "2026-05-10T08:00:00Z");
    let a = h.tenant(&tenant("a"));
    let b = h.tenant(&tenant("b"));
    let q = WaitQueue::new(QueueBounds { per_tenant: 1, total: 2, bytes: 1 << 20 });
    let go = Arc::new(tokio::sync::Notify::new());
    let held = HeldPause(h.clock.clone(), go.clone());
    let pause = FakePause(h.clock.clone());
    for t in [&a, &b] {
        assert!(h.admit(t, "m", Cost::REQUEST).is_admitted());
        assert!(h.admit(t, "m", Cost::REQUEST).is_admitted());
    }
    let a1 = h.admit(&a, "m", Cost::REQUEST);
    let a2 = h.admit(&a, "m", Cost::REQUEST);
    let b1 = h.admit(&b, "m", Cost::REQUEST);
    let c1 = h.admit(&h.tenant(&tenant("c")), "m", Cost::REQUEST);
    assert!(is_limited(&a1) && is_limited(&a2) && is_limited(&b1));
    assert!(c1.is_admitted());
    let (a1, rest) = h.rt.block_on(async {
        let first = wait_in(&h, &q, &held, &a, a1);
        let rest = async {
            // A's waiter is in its line (polled first by join!), paused.
            assert_eq!((q.waiting(), q.lines()), (1, 1));
            let a2 = wait_in(&h, &q, &pause, &a, a2).await;
            let b1 = wait_in(&h, &q, &pause, &b, b1).await;
            assert_eq!(q.waiting(), 1, "A's waiter still waits");
            go.notify_one();
            (a2, b1)
        };
        tokio::join!(first, rest)
    });
    let (a2, b1) = rest;
    assert!(a2.full && is_limited(&a2.decision), "A's line holds one");
    assert!(b1.decision.is_admitted(), "B waited behind nobody: {:?}", b1.decision.outcome);
    assert_eq!(b1.waited, Duration::from_millis(500));
    assert!(a1.decision.is_admitted(), "{}", denied_by(&h.policy, &a1.decision));
    assert_eq!((q.waiting(), q.lines()), (0, 0));
}

/// Past its bounds a line refuses at once (`full`): in total, and in what
/// the waiting requests hold.
pub fn waiting_lines_are_bounded<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(WAITING), "2026-05-10T08:00:00Z");
    let a = h.tenant(&tenant("a"));
    let b = h.tenant(&tenant("b"));
    let go = Arc::new(tokio::sync::Notify::new());
    let held = HeldPause(h.clock.clone(), go.clone());
    let pause = FakePause(h.clock.clone());
    for t in [&a, &b] {
        assert!(h.admit(t, "m", Cost::REQUEST).is_admitted());
        assert!(h.admit(t, "m", Cost::REQUEST).is_admitted());
    }
    let a1 = h.admit(&a, "m", Cost::REQUEST);
    let b1 = h.admit(&b, "m", Cost::REQUEST);
    // One waiter in all.
    let q = WaitQueue::new(QueueBounds { per_tenant: 8, total: 1, bytes: 1 << 20 });
    let (a1, b1) = h.rt.block_on(async {
        let first = wait_in(&h, &q, &held, &a, a1.clone());
        let rest = async {
            let b1 = wait_in(&h, &q, &pause, &b, b1.clone()).await;
            go.notify_one();
            b1
        };
        tokio::join!(first, rest)
    });
    assert!(a1.decision.is_admitted());
    assert!(b1.full && is_limited(&b1.decision), "the total is one");
    // What a waiting request holds counts: a body past the bytes bound is
    // refused at once, whatever the lines.
    let q = WaitQueue::new(QueueBounds { per_tenant: 8, total: 8, bytes: 1_000 });
    let b2 = loop {
        let d = h.admit(&b, "m", Cost::REQUEST);
        if is_limited(&d) {
            break d;
        }
    };
    assert_eq!(denied_by(&h.policy, &b2), "rps");
    let wait = h.policy.allowed_wait(b.tier(), &b2);
    let req = h.request(&b, None, "chat", "m", Cost::REQUEST);
    let w =
        h.rt.block_on(q.wait_for_room(
            Waiter { tenant: b.hash(), bytes: 1_001, wait },
            (&h.store, &h.clock, &pause),
            b2,
            |at| h.policy.plan(&req, at),
        ))
        .unwrap();
    assert!(w.full && is_limited(&w.decision));
}

//! What a shared store must keep when calls fail: an admission that comes
//! late does nothing, a duplicated one charges once, and under a stopped
//! server the counts equal exactly the admissions answered through the
//! store. Run on every Redis-like store (`redis_fault_tests!` in `main.rs`);
//! the in-process store has no calls that can come late.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::{Clock, Cost, CounterStore, Settlement, SystemClock, TenantFacts, Usage};
use sluice_store::redis::is_redis_id;
use sluice_store::{GuardOptions, Guarded, OnFailure, RedisStore, TimeSource, Topology};
use sluice_testkit::RedisServer;

use crate::harness::{Harness, StoreFactory, policy, status, tenant};

const LIMITS: &str = r#"
[models.m]
[[limits]]
name = "rpd"
metric = "requests"
amount = 1000000
window = "1d"
[[limits]]
name = "tpd"
metric = "tokens"
amount = 1000000000
window = "1d"
[[limits]]
name = "in-flight"
metric = "concurrent"
amount = 1000
"#;

/// The script's reply as numbers.
fn reply(v: redis::Value) -> Vec<i64> {
    redis::from_redis_value(v).expect("numbers")
}

/// An admission whose deadline has passed when it reaches the server does
/// nothing: no count, no token, no concurrency slot.
pub fn an_admission_past_its_deadline_does_nothing<F: StoreFactory<Store = RedisStore>>(f: &F) {
    let h = Harness::new(f, policy(LIMITS), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let plan =
        h.policy.plan(&h.request(&t, None, "chat", "m", Cost::tokens(10, 20)), h.clock.now());
    let past = std::time::Instant::now().checked_sub(Duration::from_millis(5)).expect("a past");
    let (_, call) = h.store.admit_by(&plan, Some(past));
    let late = h.rt.block_on(call);
    assert!(matches!(late, Err(sluice_store::RedisStoreError::Late)), "{late:?}");
    let p = h.peek(&t, "m");
    for limit in ["rpd", "tpd", "in-flight"] {
        assert_eq!(status(&h.policy, &p, limit).used, 0, "{limit} charged by a late call");
    }
    // In time, the same admission charges.
    let soon = std::time::Instant::now() + Duration::from_secs(5);
    let (id, call) = h.store.admit_by(&plan, Some(soon));
    let d = h.rt.block_on(call).expect("in time");
    assert_eq!(d.reservation(), Some(id), "the id given before the call");
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "rpd").used, 1);
    assert_eq!(status(&h.policy, &p, "in-flight").used, 1);
}

/// The same admission run twice (a retried or duplicated call) charges
/// once; settled, it is undone once; and a duplicate that comes after the
/// settlement, before its deadline, charges nothing either.
pub fn a_duplicated_admission_charges_once<F: StoreFactory<Store = RedisStore>>(f: &F) {
    let h = Harness::new(f, policy(LIMITS), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let plan =
        h.policy.plan(&h.request(&t, None, "chat", "m", Cost::tokens(10, 20)), h.clock.now());
    // (A Cluster's node learns the script on first use: a peek teaches it.)
    assert_eq!(status(&h.policy, &h.peek(&t, "m"), "rpd").used, 0);
    let line = h.store.admission_command(&plan);
    let first = reply(h.rt.block_on(h.store.command(&line)).expect("first"));
    let again = reply(h.rt.block_on(h.store.command(&line)).expect("again"));
    assert_eq!(first[0], 0, "admitted: {first:?}");
    assert_eq!(again[0], 4, "admitted before: {again:?}");
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "rpd").used, 1);
    assert_eq!(status(&h.policy, &p, "tpd").used, 30);
    assert_eq!(status(&h.policy, &p, "in-flight").used, 1);

    // With a deadline ahead: settled, then the duplicate arrives.
    let soon = std::time::Instant::now() + Duration::from_secs(30);
    let (id, line) = h.store.admission_command_by(&plan, Some(soon));
    assert_eq!(reply(h.rt.block_on(h.store.command(&line)).expect("admit"))[0], 0);
    assert_eq!(h.settle(id, Usage::tokens(10, 5)), Settlement::Settled);
    let dup = reply(h.rt.block_on(h.store.command(&line)).expect("duplicate"));
    assert_eq!(dup[0], 4, "the settled lease left its mark: {dup:?}");
    assert_eq!(h.settle(id, Usage::tokens(10, 5)), Settlement::Unknown, "settled once");
    let p = h.peek(&t, "m");
    assert_eq!(status(&h.policy, &p, "rpd").used, 2);
    assert_eq!(status(&h.policy, &p, "tpd").used, 30 + 15);
    assert_eq!(status(&h.policy, &p, "in-flight").used, 1, "the settled one's slot is free");
}

/// What one run of the load saw.
#[derive(Default)]
struct Tally {
    /// Admitted through the shared store.
    shared: AtomicU64,
    /// Their tokens, as settled.
    tokens: AtomicU64,
    /// Admitted by the fallback, refused, or failed.
    other: AtomicU64,
    /// Per tenant: met by the failure mode, and the slowest answer (us).
    by_tenant: Vec<(AtomicU64, AtomicU64)>,
}

/// Clients admitting and settling, as fast as they can, against a guarded
/// store, for tenants `tenants`, until `stop`.
async fn load(
    store: Guarded,
    policy: Arc<sluice_core::Policy>,
    tenants: Arc<Vec<TenantFacts>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    client: u64,
) {
    let mut i = client;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let t = &tenants[(i % tenants.len() as u64) as usize];
        let req = sluice_core::Ask {
            tenant: t,
            key: None,
            endpoint: policy.endpoint("chat").expect("chat"),
            model: policy.model_ref("m"),
            cost: Cost::tokens(10, 20),
            end_user: sluice_core::EndUser::NONE,
        };
        let plan = policy.plan(&req, SystemClock.now());
        let started = std::time::Instant::now();
        let answer = store.admit(&plan).await;
        let (fell_back, slowest) = &tally.by_tenant[(i % tenants.len() as u64) as usize];
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        slowest.fetch_max(took, Ordering::Relaxed);
        if !answer.as_ref().is_ok_and(|d| d.reservation().is_some_and(is_redis_id)) {
            fell_back.fetch_add(1, Ordering::Relaxed);
        }
        match answer {
            Ok(d) => match d.reservation() {
                Some(id) if is_redis_id(id) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let used = 10 + i % 20;
                    store.settle_detached(id, Usage::tokens(10, used - 10));
                    tally.shared.fetch_add(1, Ordering::Relaxed);
                    tally.tokens.fetch_add(used, Ordering::Relaxed);
                }
                Some(id) => {
                    store.settle_detached(id, Usage::tokens(10, 1));
                    tally.other.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    tally.other.fetch_add(1, Ordering::Relaxed);
                }
            },
            Err(_) => {
                tally.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A store (and the server to stop) for [`stopped_server_oracle`].
pub struct Target {
    pub topology: Topology,
    /// Stops (SIGSTOP) and resumes (SIGCONT) one server holding keys.
    pub server: Box<dyn FnMut(bool) + Send>,
    /// The keys of the server it stops, when others hold keys too (a
    /// Cluster): its tenants are the only ones that may meet the failure
    /// mode.
    pub keys: Box<dyn Fn() -> Option<String> + Send>,
}

/// Under load, the server stops (SIGSTOP) for twice the store's timeout,
/// then goes on and runs what it was sent meanwhile. Whatever the failure
/// mode, afterwards Redis counts exactly the requests that were answered as
/// admitted through it (none admitted by the fallback, none refused), with
/// their settled tokens, and holds no concurrency slot.
pub fn stopped_server_oracle(mut target: Target, on_failure: OnFailure) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ns = format!("stop-{on_failure:?}-{}", std::process::id());
    let redis = rt
        .block_on(RedisStore::connect_in(&target.topology, TimeSource::Server, &ns))
        .expect("connect");
    // Generous: the suite's other tests share the machine, and a tenant on
    // a healthy master must never wait this long.
    let timeout = Duration::from_millis(250);
    let store = Guarded::new(
        redis.clone(),
        GuardOptions {
            timeout,
            on_failure,
            probe_interval: Duration::from_millis(20),
            instances: 1,
        },
    );
    let policy = Arc::new(policy(LIMITS));
    // Tenants spread over a Cluster's nodes.
    let tenants: Arc<Vec<TenantFacts>> = Arc::new(
        (0..12).map(|i| policy.tenant(&tenant(&format!("t{i}"))).expect("tenant")).collect(),
    );
    let tally = Arc::new(Tally {
        by_tenant: tenants.iter().map(|_| Default::default()).collect(),
        ..Tally::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            rt.spawn(load(
                store.clone(),
                policy.clone(),
                tenants.clone(),
                tally.clone(),
                stop.clone(),
                c * 1_000_000,
            ))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let stopped_keys = (target.keys)();
    for (fell_back, slowest) in &tally.by_tenant {
        fell_back.store(0, Ordering::Relaxed);
        slowest.store(0, Ordering::Relaxed);
    }
    (target.server)(true);
    std::thread::sleep(2 * timeout);
    (target.server)(false);
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        rt.block_on(c).expect("client");
    }
    assert!(store.failures() > 0, "the stop was noticed");
    assert!(tally.other.load(Ordering::Relaxed) > 0, "some requests met the failure mode");
    // Every settlement (and undoing) lands.
    let counted = |limit: &str| -> u64 {
        tenants
            .iter()
            .map(|t| {
                let req = sluice_core::Ask {
                    tenant: t,
                    key: None,
                    endpoint: policy.endpoint("chat").expect("chat"),
                    model: policy.model_ref("m"),
                    cost: Cost::REQUEST,
                    end_user: sluice_core::EndUser::NONE,
                };
                let plan = policy.plan(&req, SystemClock.now());
                let d = rt.block_on(redis.peek(&plan.at_zero_cost())).expect("peek");
                status(&policy, &d, limit).used
            })
            .sum()
    };
    let shared = tally.shared.load(Ordering::Relaxed);
    let tokens = tally.tokens.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = (counted("rpd"), counted("tpd"), counted("in-flight"));
        if now == (shared, tokens, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{on_failure:?}: redis counts (requests, tokens, in flight) {now:?}, admitted through it {:?}; {} others",
            (shared, tokens, 0),
            tally.other.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(shared > 0, "some requests went through redis");
    // On a Cluster, only the stopped master's tenants met the failure mode,
    // and the others waited for nothing.
    if let Some(keys) = stopped_keys {
        let mut healthy = 0;
        for (t, (fell_back, slowest)) in tenants.iter().zip(&tally.by_tenant) {
            if keys.contains(&format!("{{{:016x}}}", t.hash())) {
                continue;
            }
            healthy += 1;
            let slowest = Duration::from_micros(slowest.load(Ordering::Relaxed));
            assert_eq!(
                fell_back.load(Ordering::Relaxed),
                0,
                "{on_failure:?}: {} fell back",
                t.id()
            );
            assert!(slowest < timeout, "{on_failure:?}: {} waited {slowest:?}", t.id());
        }
        assert!(healthy > 0 && healthy < tenants.len(), "tenants on both sides: {healthy}");
    }
}

/// A standalone server to stop and resume.
pub fn standalone(server: RedisServer) -> Target {
    let topology = Topology::Standalone(server.url());
    let mut server = server;
    Target {
        topology,
        server: Box::new(move |stop| if stop { server.pause() } else { server.resume() }),
        keys: Box::new(|| None),
    }
}

/// A three-master Cluster, one of whose masters is stopped and resumed.
pub fn cluster_node(cluster: sluice_testkit::RedisCluster) -> Target {
    let topology = Topology::Cluster(cluster.urls());
    let port = cluster.nodes[1].port;
    let mut cluster = cluster;
    Target {
        topology,
        server: Box::new(
            move |stop| {
                if stop { cluster.nodes[1].pause() } else { cluster.nodes[1].resume() }
            },
        ),
        keys: Box::new(move || Some(sluice_testkit::command(port, "KEYS *").unwrap_or_default())),
    }
}

/// Redis killed (AOF on) with reservations open, settled meanwhile: the
/// settlements wait in the queue, and once Redis is back from its AOF they
/// land within a few seconds (the longest backoff is 2 s): each
/// reservation settled to its real usage, every slot free.
pub fn settlements_wait_for_a_restarted_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let topology = Topology::Standalone(server.url());
    let store =
        rt.block_on(RedisStore::connect_in(&topology, TimeSource::Server, "aof")).expect("connect");
    let policy = policy(LIMITS);
    let t = policy.tenant(&tenant("t")).expect("tenant");
    let plan = || {
        let req = sluice_core::Ask {
            tenant: &t,
            key: None,
            endpoint: policy.endpoint("chat").expect("chat"),
            model: policy.model_ref("m"),
            cost: Cost::tokens(10, 100),
            end_user: sluice_core::EndUser::NONE,
        };
        policy.plan(&req, SystemClock.now())
    };
    let ids: Vec<_> = (0..20)
        .map(|_| rt.block_on(store.admit(&plan())).expect("admit").reservation().expect("id"))
        .collect();
    server.kill();
    {
        let _rt = rt.enter();
        for id in &ids {
            store.settle_detached(*id, Usage::tokens(10, 7));
        }
    }
    assert_eq!(rt.block_on(store.flush_settlements(Duration::from_millis(300))), 20);
    assert_eq!(store.pending_settlements(), 20, "waiting for Redis");
    server.restart();
    let back = std::time::Instant::now();
    assert_eq!(rt.block_on(store.flush_settlements(Duration::from_secs(10))), 0);
    let took = back.elapsed();
    assert!(took < Duration::from_secs(5), "landed {took:?} after Redis came back");
    let d = rt.block_on(store.peek(&plan().at_zero_cost())).expect("peek");
    assert_eq!(status(&policy, &d, "rpd").used, 20);
    assert_eq!(status(&policy, &d, "tpd").used, 20 * 17, "settled to the real usage");
    assert_eq!(status(&policy, &d, "in-flight").used, 0, "every slot free");
    assert_eq!(store.lost_settlements(), (0, 0));
}

/// The queue is bounded: past its capacity a settlement is dropped (and
/// counted), not kept; those kept still land when Redis is back.
pub fn the_settlement_queue_is_bounded() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut server = RedisServer::start();
    let topology = Topology::Standalone(server.url());
    let store = rt
        .block_on(RedisStore::connect_in(&topology, TimeSource::Server, "bound"))
        .expect("connect");
    server.kill();
    let capacity = sluice_store::redis::SETTLEMENT_QUEUE;
    {
        let _rt = rt.enter();
        for i in 0..=capacity as u128 {
            store.settle_detached(sluice_core::ReservationId((1 << 63) | i), Usage::REFUND);
        }
    }
    assert_eq!(store.pending_settlements(), capacity);
    assert_eq!(store.lost_settlements(), (1, 0));
    server.restart();
    // 100,000 settlements: seconds on a quiet machine; generous for a busy one.
    assert_eq!(rt.block_on(store.flush_settlements(Duration::from_secs(120))), 0);
}

const ONE_SLOT: &str = r#"
[models.m]
[[limits]]
name = "in-flight"
metric = "concurrent"
amount = 1
"#;

/// A concurrency slot taken for a short slot lease lapses after it unless
/// renewed (the heartbeat of its running request), long before the
/// reservation's lease; renewed, it is held; a lapsed slot whose request
/// still runs is taken back by the next renewal; settled, it is free and
/// renewing says the reservation is over.
pub fn slots_lapse_unless_renewed<F: StoreFactory<Store = RedisStore>>(f: &F) {
    let h = Harness::new(f, policy(ONE_SLOT), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("t"));
    let admit = |slot: Duration| {
        let mut plan =
            h.policy.plan(&h.request(&t, None, "chat", "m", Cost::REQUEST), h.clock.now());
        plan.slots_until = sluice_core::Instant(plan.now.0 + slot.as_nanos() as u64);
        h.rt.block_on(h.store.admit(&plan)).expect("admit")
    };
    let renew = |id| h.rt.block_on(h.store.renew(id)).expect("renew");
    let slot = Duration::from_secs(10);
    let id = admit(slot).reservation().expect("the slot");
    assert!(!admit(slot).is_admitted(), "one slot");
    h.advance(Duration::from_secs(8));
    assert!(renew(id), "open");
    h.advance(Duration::from_secs(4));
    assert!(!admit(slot).is_admitted(), "renewed: held 12 s after admission");
    h.advance(Duration::from_secs(7));
    let other = admit(slot).reservation().expect("lapsed 9 s after its renewal: free");
    h.release(other);
    std::thread::sleep(Duration::from_millis(100));
    assert!(renew(id), "the request still runs");
    assert!(!admit(slot).is_admitted(), "its slot is taken back");
    assert_eq!(h.settle(id, Usage::tokens(0, 0)), Settlement::Settled);
    assert!(!renew(id), "settled: over");
    assert!(admit(slot).is_admitted(), "free");
}

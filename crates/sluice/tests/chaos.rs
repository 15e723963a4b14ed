//! Exact accounting when the shared store or an instance fails, end to end:
//! the real `sluice serve` binary (several instances where it matters) and
//! real `redis-server`s (standalone, and a three-master Cluster) that are
//! stopped, kept busy, killed and restarted under load. Each case has an
//! oracle: what the clients were answered, and what Redis counts after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_testkit::{RedisCluster, RedisServer};
/// The store's timeout in these tests (long enough for a loaded CI
/// machine; what matters is that the stops are longer).
const TIMEOUT_MS: u64 = 200;

/// The tests whose oracle is a time (how soon a slot frees, how long a
/// healthy tenant waits) run alone (`write`); the others, whose oracles
/// are exact counts whatever the timing, share the machine (`read`). On a
/// two-CPU machine, several load tests at once slow every answer.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
/// The request and token budgets: never reached. Under `local` each
/// instance enforces a third, so the limit header says who decided.
const REQUESTS_A_DAY: u64 = 1_000_000;

/// Request, token and concurrency limits, on `store`, for tenants
/// `tenants` (each with key `sk-chaos-<tenant>`), with an admin API.
fn redis_policy(mock: &sluice_mock::MockServer, store: &str, tenants: &[&str]) -> String {
    let mut p = format!(
        r#"
[headers]
families = ["requests-day", "output-tokens-day"]

[models."m"]

[[limits]]
name = "rpd"
metric = "requests"
amount = {REQUESTS_A_DAY}
window = "1d"

[[limits]]
name = "otpd"
metric = "output_tokens"
amount = 1000000000
window = "1d"

[[limits]]
name = "in-flight"
metric = "concurrent"
amount = 60

{store}
instances = 3
probe_interval = "100ms"
slot_lease = "2s"

[admin]
listen = "127.0.0.1:0"
{}"#,
        upstream_section(mock)
    );
    for t in tenants {
        p.push_str(&format!(
            "\n[tenants.{t}]\n[[tenants.{t}.keys]]\nhash = \"{}\"\n",
            key_hash(&format!("sk-chaos-{t}"))
        ));
    }
    p
}

fn standalone(redis: &RedisServer, on_failure: &str) -> String {
    format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"{TIMEOUT_MS}ms\"\non_failure = \"{on_failure}\"",
        redis.url()
    )
}

/// What the clients were answered.
#[derive(Default)]
struct Answers {
    /// Per tenant: admitted through Redis (the limit header says the full
    /// amount), and their output tokens.
    redis: Vec<(AtomicU64, AtomicU64)>,
    /// Per tenant: answered otherwise (by the fallback, refused, failed),
    /// and the slowest answer of all (us).
    other: Vec<(AtomicU64, AtomicU64)>,
}

/// Clients sending requests of `tenants` through `urls` until `stop`; the
/// upstream takes 5 ms (slots are held meanwhile) and generates what
/// `max_tokens` says (1 to 17).
async fn load(
    urls: Vec<String>,
    tenants: Vec<String>,
    answers: Arc<Answers>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for c in 0..8usize {
        let (urls, tenants, answers, stop) =
            (urls.clone(), tenants.clone(), answers.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                i += 8;
                let t = i % tenants.len();
                let url = format!("{}/v1/chat/completions", urls[i % urls.len()]);
                let key = format!("sk-chaos-{}", tenants[t]);
                let started = std::time::Instant::now();
                let r = post(
                    &http,
                    &url,
                    Some(&key),
                    &chat("m", 1 + (i as u64 % 17)),
                    &[("x-mock-latency-ms", "5")],
                )
                .await;
                let took = started.elapsed().as_micros() as u64;
                answers.other[t].1.fetch_max(took, Ordering::Relaxed);
                let status = r.status().as_u16();
                let limit = r
                    .headers()
                    .get("x-ratelimit-limit-requests-day")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                if status == 200 && limit == Some(REQUESTS_A_DAY) {
                    let tokens = v["usage"]["completion_tokens"].as_u64().expect("usage");
                    answers.redis[t].0.fetch_add(1, Ordering::Relaxed);
                    answers.redis[t].1.fetch_add(tokens, Ordering::Relaxed);
                } else {
                    answers.other[t].0.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A tenant's `(rpd, otpd, in-flight)` as Redis counts them, through the
/// admin API's usage (which reads Redis, or answers 503).
async fn counted(ops: &Ops, tenant: &str) -> Option<(u64, u64, u64)> {
    let (status, v) =
        ops.call(reqwest::Method::GET, &format!("/tenants/{tenant}/usage"), None).await;
    if status != 200 {
        return None;
    }
    let used =
        |name: &str| v["limits"].as_array()?.iter().find(|l| l["limit"] == name)?["used"].as_u64();
    Some((used("rpd")?, used("otpd")?, used("in-flight")?))
}

/// Waits (up to `within`) until Redis counts, for each tenant, exactly
/// the requests answered as admitted through it, with their tokens, and
/// no slot; panics with what it counts otherwise.
async fn assert_redis_counts_what_it_admitted(
    ops: &Ops,
    tenants: &[String],
    answers: &Answers,
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    for (t, name) in tenants.iter().enumerate() {
        let want = (
            answers.redis[t].0.load(Ordering::Relaxed),
            answers.redis[t].1.load(Ordering::Relaxed),
            0,
        );
        loop {
            let got = counted(ops, name).await;
            if got == Some(want) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: Redis counts (requests, tokens, in flight) {got:?}; admitted through it {want:?}; {} answered otherwise",
                answers.other[t].0.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Under load on three instances, Redis is stopped (SIGSTOP) for twice the
/// store's timeout, or busy with a script that long, then goes on. After,
/// Redis counts exactly the requests the instances answered as admitted
/// through it (none the fallback admitted, none refused), with their
/// tokens, and holds no concurrency slot.
async fn redis_stalls_under_load(on_failure: &str, stall: impl FnOnce(&mut RedisServer)) {
    let _shared = MACHINE.read().await;
    let mut redis = RedisServer::start();
    let mock = mock().await;
    let tenants = vec!["t".to_owned()];
    let text = redis_policy(&mock, &standalone(&redis, on_failure), &["t"]);
    let mut instances: Vec<Sluice> = (0..3)
        .map(|_| {
            Sluice::start(&text, &[("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)])
        })
        .collect();
    let ops = Ops::of(&mut instances[0]);
    let urls: Vec<String> = instances.iter().map(|s| s.url.clone()).collect();
    let answers =
        Arc::new(Answers { redis: vec![Default::default()], other: vec![Default::default()] });
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokio::spawn(load(urls, tenants.clone(), answers.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stall(&mut redis);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    clients.await.unwrap();
    assert!(answers.redis[0].0.load(Ordering::Relaxed) > 0, "some admitted through Redis");
    assert!(answers.other[0].0.load(Ordering::Relaxed) > 0, "some met the failure mode");
    assert_redis_counts_what_it_admitted(&ops, &tenants, &answers, Duration::from_secs(10)).await;
    // No reservation left open in Redis itself (a lease settled before its
    // admission's deadline leaves a mark until then: wait that long).
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 100)).await;
    let leases = redis.command("KEYS *:l:*");
    assert!(leases.starts_with("*0"), "open reservations: {leases}");
}

fn sigstop_for_twice_the_timeout(redis: &mut RedisServer) {
    redis.pause();
    std::thread::sleep(Duration::from_millis(2 * TIMEOUT_MS));
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load_counts_exactly_what_it_admitted_failing_closed() {
    redis_stalls_under_load("closed", sigstop_for_twice_the_timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load_counts_exactly_what_it_admitted_failing_open() {
    redis_stalls_under_load("open", sigstop_for_twice_the_timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load_counts_exactly_what_it_admitted_failing_local() {
    redis_stalls_under_load("local", sigstop_for_twice_the_timeout).await;
}

/// A script that keeps Redis busy for 2.5 times the store's timeout (a
/// busy loop in Lua: Redis runs one script at a time and queues the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_script_in_redis_under_load_counts_exactly_what_it_admitted() {
    redis_stalls_under_load("local", |redis| {
        let busy = format!(
            "EVAL \"local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] while true do local n = redis.call('TIME') if n[1] * 1000000 + n[2] - s > {} then break end end return 1\" 0",
            TIMEOUT_MS * 2_500
        );
        let reply = redis.command(&busy);
        assert!(reply.starts_with(":1"), "the script ran: {reply}");
    })
    .await;
}

/// Streams of `tenant` in flight through `url`: `n` of them, each `tokens`
/// long with `delay_ms` between chunks, reserving 1,000 output tokens.
async fn streams_in_flight(
    url: &str,
    tenant: &str,
    n: usize,
    tokens: u64,
    delay_ms: u64,
) -> Vec<tokio::task::JoinHandle<String>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let url = format!("{url}/v1/chat/completions");
        let key = format!("sk-chaos-{tenant}");
        let mut body = chat("m", 1000);
        body["stream"] = json!(true);
        let r = post(
            &client(),
            &url,
            Some(&key),
            &body,
            &[
                ("x-mock-completion-tokens", &tokens.to_string()),
                ("x-mock-chunk-delay-ms", &delay_ms.to_string()),
            ],
        )
        .await;
        assert_eq!(r.status(), 200);
        out.push(tokio::spawn(async move {
            let mut r = r;
            let mut text = String::new();
            while let Ok(Some(chunk)) = r.chunk().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        }));
    }
    out
}

/// Redis killed (SIGKILL) with streams in flight and restarted from its
/// AOF: the streams end while it is down, their settlements wait, and
/// within 5 s of its return (the longest backoff is 2 s; measured 0.07 to
/// 0.4 s) every reservation is settled to the real usage (50 output tokens
/// each, not the 1,000 reserved) and every slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_its_aof_gets_every_reservation_settled_to_the_real_usage() {
    let _alone = MACHINE.write().await;
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mock = mock().await;
    let text = redis_policy(&mock, &standalone(&redis, "local"), &["t"]);
    let mut s = Sluice::start(&text, &[("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let ops = Ops::of(&mut s);
    let streams = streams_in_flight(&s.url, "t", 6, 50, 40).await;
    assert_eq!(counted(&ops, "t").await, Some((6, 6 * 1000, 6)), "six reservations open");
    redis.kill();
    for st in streams {
        assert_eq!(st.await.unwrap().matches("tok ").count(), 50, "the streams go on");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let back = std::time::Instant::now();
    loop {
        let got = counted(&ops, "t").await;
        if got == Some((6, 6 * 50, 0)) {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "counted {got:?} since Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("settled {:?} after Redis came back", back.elapsed());
}

/// An instance SIGKILLed with streams in flight: their slots, renewed while
/// they ran (held past the 2 s slot lease), lapse within the slot lease of
/// the kill, not the 15-minute reservation lease: another instance admits
/// the tenant's full concurrency again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_slots_free_within_the_slot_lease() {
    let _alone = MACHINE.write().await;
    let redis = RedisServer::start();
    let mock = mock().await;
    let text = redis_policy(&mock, &standalone(&redis, "closed"), &["t"]);
    let env = [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let doomed = Sluice::start(&text, &env);
    let mut other = Sluice::start(&text, &env);
    let ops = Ops::of(&mut other);
    let streams = streams_in_flight(&doomed.url, "t", 3, 1000, 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(counted(&ops, "t").await.map(|c| c.2), Some(3), "held while running (renewed)");
    let _ = std::process::Command::new("kill").args(["-KILL", &doomed.pid().to_string()]).status();
    let killed = std::time::Instant::now();
    loop {
        let in_flight = counted(&ops, "t").await.map(|c| c.2);
        if in_flight == Some(0) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_millis(2_500), "{in_flight:?} slots held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("slots free {:?} after the kill", killed.elapsed());
    for st in streams {
        st.abort();
    }
}

/// SIGTERM with streams that run past `shutdown_grace` (1 s): they are cut,
/// and by the time the process has exited their slots are free and their
/// reservations settled (what went through), in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_at_shutdown_free_their_slots_before_exit() {
    let _alone = MACHINE.write().await;
    let redis = RedisServer::start();
    let mock = mock().await;
    let text = redis_policy(&mock, &standalone(&redis, "closed"), &["t"])
        .replace("[headers]", "[server]\nshutdown_grace = \"1s\"\n\n[headers]");
    let env = [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let s = Sluice::start(&text, &env);
    let streams = streams_in_flight(&s.url, "t", 3, 1000, 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = std::time::Instant::now();
    let (status, log) = tokio::task::spawn_blocking(move || s.terminate()).await.unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "{status}: {log}");
    assert!(took < Duration::from_secs(4), "stopped after {took:?}");
    // Right after exit, in Redis itself: no slot, no open reservation.
    let slots = redis.command("KEYS *:n:*");
    let members: u64 = slots
        .lines()
        .filter(|l| l.contains(":n:"))
        .map(|k| {
            redis
                .command(&format!("ZCARD {k}"))
                .trim_start_matches(':')
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(members, 0, "slots held after exit: {slots}");
    let leases = redis.command("KEYS *:l:*");
    assert!(
        leases.starts_with("*0")
            || leases
                .lines()
                .filter(|l| l.contains(":l:"))
                .all(|k| redis.command(&format!("GET {k}")).contains("\nx")),
        "open reservations after exit: {leases}"
    );
    for st in streams {
        let text = st.await.unwrap();
        assert!(!text.contains("[DONE]"), "cut");
    }
}

/// The store's timeout in the Cluster test: a request that waited for the
/// stopped master would take at least this long; one that did not, on a
/// loaded two-CPU machine with debug builds, took up to 280 ms. (Twice it,
/// the stop, stays below the cluster's 2 s node timeout, after which Redis
/// would refuse every command.)
const CLUSTER_TIMEOUT_MS: u64 = 500;

/// One master of a three-master Cluster stopped (SIGSTOP) for twice the
/// store's timeout under load: the tenants whose keys it holds meet the
/// failure mode; the tenants on the other two masters see no fallback and
/// no request of theirs waits as long as the store's timeout (500 ms);
/// afterwards Redis counts exactly what each tenant was admitted through
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_cluster_master_sends_only_its_tenants_to_the_failure_mode() {
    let _alone = MACHINE.write().await;
    let mut cluster = RedisCluster::start();
    let mock = mock().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "[store]\nkind = \"redis\"\ncluster = [{}]\ntimeout = \"{CLUSTER_TIMEOUT_MS}ms\"\non_failure = \"local\"",
        nodes.join(", ")
    );
    let names: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let text = redis_policy(&mock, &store, &refs);
    let env = [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let mut instances: Vec<Sluice> = (0..2).map(|_| Sluice::start(&text, &env)).collect();
    let ops = Ops::of(&mut instances[0]);
    let urls: Vec<String> = instances.iter().map(|s| s.url.clone()).collect();
    // Which tenants the master to stop holds: its counter hashes grow by
    // one with each of its tenants' first request.
    let stopped = &cluster.nodes[1];
    let groups = || stopped.command("KEYS *:g:*").lines().filter(|l| l.contains(":g:")).count();
    let mut on_stopped = Vec::new();
    for name in &names {
        let before = groups();
        let url = format!("{}/v1/chat/completions", urls[0]);
        let r = post(&client(), &url, Some(&format!("sk-chaos-{name}")), &chat("m", 1), &[]).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        on_stopped.push(groups() > before);
    }
    let held = on_stopped.iter().filter(|s| **s).count();
    assert!(held > 0 && held < names.len(), "tenants on both sides: {on_stopped:?}");
    let answers = Arc::new(Answers {
        redis: names.iter().map(|_| Default::default()).collect(),
        other: names.iter().map(|_| Default::default()).collect(),
    });
    // The first requests (above) count too.
    for a in &answers.redis {
        a.0.store(1, Ordering::Relaxed);
        a.1.store(1, Ordering::Relaxed);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokio::spawn(load(urls, names.clone(), answers.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes[1].pause();
    tokio::time::sleep(Duration::from_millis(2 * CLUSTER_TIMEOUT_MS)).await;
    cluster.nodes[1].resume();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    clients.await.unwrap();
    for (i, name) in names.iter().enumerate() {
        let (fell_back, slowest) = (&answers.other[i].0, &answers.other[i].1);
        let fell_back = fell_back.load(Ordering::Relaxed);
        if on_stopped[i] {
            assert!(fell_back > 0, "{name} (on the stopped master) met the failure mode");
        } else {
            assert_eq!(fell_back, 0, "{name}, on a healthy master, fell back");
            let slowest = Duration::from_micros(slowest.load(Ordering::Relaxed));
            assert!(
                slowest < Duration::from_millis(CLUSTER_TIMEOUT_MS),
                "{name} waited {slowest:?}"
            );
            println!("{name} (healthy master): slowest answer {slowest:?}");
        }
    }
    assert_redis_counts_what_it_admitted(&ops, &names, &answers, Duration::from_secs(10)).await;
}

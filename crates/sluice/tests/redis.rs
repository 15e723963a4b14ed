//! Many instances on one Redis: three `sluice serve` processes share their
//! counters, and a Redis that dies and comes back is handled as configured.
//! Real `redis-server` processes (standalone, a three-master cluster,
//! sentinels), real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use sluice_testkit::{RedisCluster, RedisSentinels, RedisServer};

const KEY: &str = "sk-redis-test";

fn policy(store: &str, limits: &str, mock: &sluice_mock::MockServer) -> String {
    format!(
        r#"
[headers]
families = ["requests", "requests-day", "output-tokens-day"]

[models."m"]
{limits}
{store}
{}
[tenants.t]
[[tenants.t.keys]]
hash = "{}"
"#,
        upstream_section(mock),
        key_hash(KEY)
    )
}

/// Sends `total` requests over `clients` concurrent clients spread across
/// the instances; returns the status of each with its output tokens.
async fn load(
    urls: &[String],
    total: u64,
    clients: usize,
    body: serde_json::Value,
) -> Vec<(u16, u64)> {
    let next = Arc::new(AtomicU64::new(0));
    let urls: Arc<Vec<String>> = Arc::new(urls.to_vec());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (next, urls, body) = (next.clone(), urls.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let url = format!("{}/v1/chat/completions", urls[(i as usize + c) % urls.len()]);
                let r = post(&http, &url, Some(KEY), &body, &[]).await;
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                out.push((status, v["usage"]["completion_tokens"].as_u64().unwrap_or(0)));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Three instances, many clients, one tenant: the day's budgets are met
/// exactly, not N times over. Returns how many requests were admitted by the
/// rolling part.
async fn three_instances_admit_exactly_the_limit(store: &str) -> u64 {
    let mock = mock().await;
    let limits = r#"
[[limits]]
name = "rpd"
metric = "requests"
amount = 400
window = "1d"

[[limits]]
name = "otpd"
metric = "output_tokens"
amount = 15000
window = "1d"
"#;
    let text = policy(store, limits, &mock);
    let instances: Vec<Sluice> =
        (0..3).map(|_| Sluice::start(&text, &[("UPSTREAM_KEY", "k")])).collect();
    let urls: Vec<String> = instances.iter().map(|s| s.url.clone()).collect();
    // Each request reserves (and, settled, uses) 100 output tokens: the
    // token budget admits exactly 150.
    let results = load(&urls, 400, 24, chat("m", 100)).await;
    let ok: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    let denied = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(ok.len() + denied, 400, "every request answered 200 or 429: {results:?}");
    assert_eq!(ok.len(), 150, "admitted across three instances");
    assert_eq!(ok.iter().map(|(_, t)| t).sum::<u64>(), 15_000, "tokens used");
    assert_eq!(mock.stats.requests(), 150, "only admitted requests reached the upstream");
    // A rolling limit too: 60 a minute, burst 60, shared.
    let mock2 = sluice_mock::spawn(Default::default()).await.unwrap();
    let rolling = policy(
        &store.replace("namespace = \"", "namespace = \"rolling-"),
        "[[limits]]\nname = \"rpm\"\nmetric = \"requests\"\namount = 60\nwindow = \"1m\"\n",
        &mock2,
    );
    let instances: Vec<Sluice> =
        (0..3).map(|_| Sluice::start(&rolling, &[("UPSTREAM_KEY", "k")])).collect();
    let urls: Vec<String> = instances.iter().map(|s| s.url.clone()).collect();
    let started = Instant::now();
    let results = load(&urls, 200, 24, chat("m", 5)).await;
    let secs = started.elapsed().as_secs_f64();
    let ok = results.iter().filter(|(s, _)| *s == 200).count() as f64;
    // The token-bucket bound over the test's duration: B + N·t/T.
    assert!(ok >= 60.0 && ok <= 60.0 + (60.0 * secs / 60.0).ceil(), "{ok} admitted in {secs:.2}s");
    ok as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nnamespace = \"accuracy\"\ntimeout = \"500ms\"\non_failure = \"closed\"\n",
        redis.url()
    );
    let rolling_admitted = three_instances_admit_exactly_the_limit(&store).await;
    // One admission is one command: EVALSHA; one settlement, one more.
    // (Commands the scripts run inside are counted by Redis too; the client
    // itself sends nothing but EVALSHA, and EVAL/SCRIPT LOAD the first time
    // a server sees a script.)
    let stats = redis.command("INFO commandstats");
    let stat = |cmd: &str, field: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split(&format!("{field}=")).nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let evalsha_ok = stat("evalsha", "calls") - stat("evalsha", "failed_calls");
    let admissions = 400 + 200;
    let settlements = 150 + rolling_admitted;
    assert_eq!(
        evalsha_ok,
        admissions + settlements,
        "one EVALSHA per admission and per settlement:\n{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_redis_cluster_admit_exactly_the_limit() {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "[store]\nkind = \"redis\"\ncluster = [{}]\nnamespace = \"accuracy\"\ntimeout = \"500ms\"\non_failure = \"closed\"\n",
        nodes.join(", ")
    );
    three_instances_admit_exactly_the_limit(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_valkey_admit_exactly_the_limit() {
    let valkey = RedisServer::start_valkey();
    assert!(valkey.command("INFO server").contains("valkey_version"), "a real Valkey");
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nnamespace = \"accuracy\"\ntimeout = \"500ms\"\non_failure = \"closed\"\n",
        valkey.url()
    );
    three_instances_admit_exactly_the_limit(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_master() {
    let sentinels = RedisSentinels::start();
    let mock = mock().await;
    let urls: Vec<String> = sentinels.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "[store]\nkind = \"redis\"\nsentinels = [{}]\nmaster = \"{}\"\ntimeout = \"500ms\"\n",
        urls.join(", "),
        sentinels.name
    );
    let text = policy(&store, "[tiers.default.models]\nm = { rpd = 3 }\n", &mock);
    let s = Sluice::start(&text, &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    for left in [2, 1, 0] {
        let r = post(&c, &url, Some(KEY), &chat("m", 5), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), left);
    }
    assert_eq!(post(&c, &url, Some(KEY), &chat("m", 5), &[]).await.status(), 429);
    // The counters are in the master the sentinels named.
    assert!(sentinels.master.command("DBSIZE").starts_with(':'));
    assert_ne!(sentinels.master.command("DBSIZE").trim(), ":0");
}

/// Sends `n` requests one after another; returns statuses and the slowest.
async fn burst(url: &str, n: usize) -> (Vec<u16>, Duration) {
    let c = client();
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            post(&c, url, Some(KEY), &chat("m", 5), &[]),
        )
        .await
        .expect("no request may hang");
        slowest = slowest.max(t.elapsed());
        statuses.push(r.status().as_u16());
    }
    (statuses, slowest)
}

/// What `chaos` saw: statuses before, during and after the outage, the
/// slowest answer during it, and the instance's log.
async fn chaos(on_failure: &str) -> (Vec<u16>, Vec<u16>, Vec<u16>, Duration, String) {
    let mut redis = RedisServer::start();
    let mock = mock().await;
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"50ms\"\non_failure = \"{on_failure}\"\nprobe_interval = \"200ms\"\n",
        redis.url()
    );
    let text = policy(
        &store,
        "[tiers.default.models]\nm = { rpd = 1000 }\n[[limits]]\nname = \"rph\"\nmetric = \"requests\"\namount = 5\nwindow = \"1h\"\n",
        &mock,
    );
    let s = Sluice::start(&text, &[("UPSTREAM_KEY", "k")]);
    let url = format!("{}/v1/chat/completions", s.url);
    let (before, _) = burst(&url, 3).await;
    redis.kill();
    let (during, slowest) = burst(&url, 8).await;
    redis.restart();
    // Recovery without a restart: the next probe finds Redis again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (after, _) = burst(&url, 7).await;
    // The process is still alive and well.
    assert_eq!(client().get(format!("{}/healthz", s.url)).send().await.unwrap().status(), 200);
    let (_, log) = s.terminate();
    (before, during, after, slowest, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_closed_answers_503_then_recovers() {
    let (before, during, after, slowest, log) = chaos("closed").await;
    assert_eq!(before, [200, 200, 200]);
    assert!(during.iter().all(|&s| s == 503), "{during:?}");
    // One line for the eight refusals (one per 10 s, with a count), not one each.
    assert_eq!(log.matches("requests refused (503)").count(), 1, "{log}");
    assert!(log.contains("refused=1"), "{log}");
    assert!(slowest < Duration::from_secs(1), "a dead Redis must not stall requests: {slowest:?}");
    // Redis came back empty: 5 an hour again, enforced.
    assert_eq!(after, [200, 200, 200, 200, 200, 429, 429], "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_open_admits_then_recovers() {
    let (before, during, after, slowest, _) = chaos("open").await;
    assert_eq!(before, [200, 200, 200]);
    assert!(during.iter().all(|&s| s == 200), "{during:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert_eq!(after, [200, 200, 200, 200, 200, 429, 429], "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_local_counts_in_memory_then_recovers() {
    let (before, during, after, slowest, _) = chaos("local").await;
    assert_eq!(before, [200, 200, 200]);
    // This instance's own count: 5 an hour, from zero.
    assert_eq!(during, [200, 200, 200, 200, 200, 429, 429, 429], "{during:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert_eq!(after, [200, 200, 200, 200, 200, 429, 429], "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_in_redis_a_revoked_key_stops_on_every_instance_within_a_second() {
    let redis = RedisServer::start();
    let mock = mock().await;
    let text = format!(
        "{}{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        example("llama-api.toml"),
        upstream_section(&mock),
        redis.url()
    );
    let env = [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let mut a = Sluice::start(&text, &env);
    let b = Sluice::start(&text, &env);
    let ops = Ops::of(&mut a);
    ops.tenant(serde_json::json!({"id": "team"})).await;
    let (_, secret) = ops.key("team", serde_json::json!({"id": "k1"})).await;
    let on_b = |s: String| {
        let (http, url) = (client(), format!("{}/v1/chat/completions", b.url));
        async move {
            post(&http, &url, Some(&s), &chat("Llama-3.3-70B-Instruct", 5), &[])
                .await
                .status()
                .as_u16()
        }
    };
    // Created through instance A, usable on instance B within a second.
    let started = std::time::Instant::now();
    while on_b(secret.clone()).await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B did not see the new key within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = ops.call(reqwest::Method::DELETE, "/tenants/team/keys/k1", None).await;
    assert_eq!(status, 204);
    let started = std::time::Instant::now();
    while on_b(secret.clone()).await != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B still accepts a revoked key after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The counters were shared meanwhile: A sees B's requests.
    let r = post(
        &ops.http,
        &format!("{}/v1/chat/completions", a.url),
        Some(&secret),
        &chat("Llama-3.3-70B-Instruct", 5),
        &[],
    )
    .await;
    assert_eq!(r.status(), 401, "revoked on A too");
}

/// Sluice on a master that sentinels watch, with one replica: fail closed,
/// a limit of 10 requests a day, three of them spent, and every write on the
/// replica. What both failover tests start from.
struct SentinelFixture {
    // Fields drop in this order: Sluice stops before its store does.
    _sluice: Sluice,
    ops: Ops,
    client: reqwest::Client,
    url: String,
    sentinels: RedisSentinels,
    replica_port: u16,
    _mock: sluice_mock::MockServer,
}

async fn sentinel_fixture(store_timeout: &str) -> SentinelFixture {
    let sentinels = RedisSentinels::start_with_replica();
    let replica_port = sentinels.replica.as_ref().unwrap().port;
    let mock = mock().await;
    let urls: Vec<String> = sentinels.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "[store]\nkind = \"redis\"\nsentinels = [{}]\nmaster = \"{}\"\ntimeout = \"{store_timeout}\"\non_failure = \"closed\"\nprobe_interval = \"200ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        urls.join(", "),
        sentinels.name
    );
    let text = policy(&store, "[tiers.default.models]\nm = { rpd = 10 }\n", &mock);
    let mut s = Sluice::start(&text, &[("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let ops = Ops::of(&mut s);
    let client = client();
    let url = format!("{}/v1/chat/completions", s.url);
    for left in [9, 8, 7] {
        let r = post(&client, &url, Some(KEY), &chat("m", 5), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), left);
    }
    assert!(sentinels.master.command("WAIT 1 2000").starts_with(":1"));
    SentinelFixture { _sluice: s, ops, client, url, sentinels, replica_port, _mock: mock }
}

impl SentinelFixture {
    /// Asserts that `admitted`, the first request admitted after the
    /// failover, was counted on what the replica kept, and that tenants
    /// and keys follow too: an admin write lands and a key created now works.
    async fn assert_followed(&self, admitted: reqwest::Response) {
        assert_eq!(num(&admitted, "x-ratelimit-remaining-requests-day"), 6, "the counts were kept");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, v) = self
                .ops
                .call(reqwest::Method::POST, "/tenants", Some(serde_json::json!({"id": "after"})))
                .await;
            if status == 201 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "admin writes fail after the failover: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, secret) = self.ops.key("after", serde_json::json!({"id": "k-after"})).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while post(&self.client, &self.url, Some(&secret), &chat("m", 5), &[]).await.status() != 200
        {
            assert!(Instant::now() < deadline, "the new key was not accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(self.sentinels.replica.as_ref().unwrap().command("ROLE").contains("master"));
    }
}

/// Sentinel failover: the master dies, the sentinels promote its replica,
/// and Sluice follows them — counts kept, admin writes landing on the new
/// master — without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_counting_on_the_promoted_replica() {
    let mut f = sentinel_fixture("500ms").await;
    f.sentinels.master.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.sentinels.master_port() != Some(f.replica_port) {
        assert!(Instant::now() < deadline, "the sentinels did not promote the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refused (fail closed, nothing charged) until Sluice has found the new
    // master; then admitted on the counts the replica kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = post(&f.client, &f.url, Some(KEY), &chat("m", 5), &[]).await;
        if r.status() == 200 {
            break r;
        }
        assert_eq!(r.status(), 503, "a refusal while the master is away");
        assert!(Instant::now() < deadline, "Sluice did not follow the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    f.assert_followed(r).await;
}

/// Sentinel failover from a hung master: the master is stopped (SIGSTOP:
/// its connections stay open and nothing answers, as with a frozen VM or a
/// partition that drops packets), so no command fails, each one times out.
/// The sentinels promote the replica, and Sluice, having given up on the
/// silent connection after a few timeouts, asks them again and counts on
/// the promoted replica — without a restart, and without waiting for the
/// kernel to give up on the TCP connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_from_a_hung_master_keeps_counting_on_the_promoted_replica() {
    // A timeout shorter than the redis client's own (500 ms), so that it is
    // Sluice's timeout that gives up on each command, as by default (50 ms).
    let mut f = sentinel_fixture("200ms").await;
    f.sentinels.master.pause();
    // Refused (fail closed) while the master does not answer, through the
    // promotion, until Sluice has found the new master.
    let promoted_by = Instant::now() + Duration::from_secs(30);
    let mut promoted = None;
    let r = loop {
        if promoted.is_none() && f.sentinels.master_port() == Some(f.replica_port) {
            promoted = Some(Instant::now());
        }
        if let Some(at) = promoted {
            let waited = at.elapsed();
            assert!(
                waited < Duration::from_secs(10),
                "Sluice did not follow the failover within 10 s of the promotion"
            );
        } else {
            assert!(Instant::now() < promoted_by, "the sentinels did not promote the replica");
        }
        let r = post(&f.client, &f.url, Some(KEY), &chat("m", 5), &[]).await;
        if r.status() == 200 {
            break r;
        }
        assert_eq!(r.status(), 503, "a refusal while the master is away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    f.assert_followed(r).await;
    // The old master is still stopped: it never answered again.
    f.sentinels.master.kill();
}

/// Three instances falling back to their own counts while Redis is down
/// (`instances = 3`): each enforces its share of the limit, rounded down,
/// so together they admit at most the limit (99 of 100; rounded up, 102).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_falling_back_locally_admit_at_most_the_limit() {
    let mut redis = RedisServer::start();
    let mock = mock().await;
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"50ms\"\non_failure = \"local\"\ninstances = 3\n",
        redis.url()
    );
    let text = policy(&store, "[tiers.default.models]\nm = { rpd = 100 }\n", &mock);
    let instances: Vec<Sluice> =
        (0..3).map(|_| Sluice::start(&text, &[("UPSTREAM_KEY", "k")])).collect();
    let urls: Vec<String> = instances.iter().map(|s| s.url.clone()).collect();
    redis.kill();
    // 50 requests on each instance (two clients each).
    let mut results = Vec::new();
    for url in &urls {
        results.push(load(std::slice::from_ref(url), 50, 2, chat("m", 5)));
    }
    let mut admitted = Vec::new();
    for r in results {
        let r = r.await;
        assert_eq!(r.len(), 50);
        admitted.push(r.iter().filter(|(s, _)| *s == 200).count());
    }
    assert_eq!(admitted, [33, 33, 33], "each instance admits its share: 99 of 100");
    drop(instances);
}

/// The usage API reads the shared store: while Redis is down it answers
/// 503, not the fallback's counts (which start from zero); once Redis is
/// back, the counts Redis kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_api_answers_503_while_redis_is_down() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mock = mock().await;
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\non_failure = \"local\"\nprobe_interval = \"100ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        redis.url()
    );
    let text = policy(&store, "[tiers.default.models]\nm = { rpd = 100 }\n", &mock);
    let mut s = Sluice::start(&text, &[("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let ops = Ops::of(&mut s);
    let url = format!("{}/v1/chat/completions", s.url);
    for _ in 0..3 {
        assert_eq!(post(&client(), &url, Some(KEY), &chat("m", 5), &[]).await.status(), 200);
    }
    let used = |v: &serde_json::Value| v["limits"][0]["used"].as_u64();
    let (status, v) = ops.call(reqwest::Method::GET, "/tenants/t/usage", None).await;
    assert_eq!((status, used(&v)), (200, Some(3)), "{v}");
    redis.kill();
    // Admitted by this instance's own counts meanwhile.
    assert_eq!(post(&client(), &url, Some(KEY), &chat("m", 5), &[]).await.status(), 200);
    let (status, v) = ops.call(reqwest::Method::GET, "/tenants/t/usage", None).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
    redis.restart();
    let back = Instant::now();
    loop {
        let (status, v) = ops.call(reqwest::Method::GET, "/tenants/t/usage", None).await;
        if status == 200 {
            assert_eq!(used(&v), Some(3), "what Redis kept: {v}");
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "still {status} after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

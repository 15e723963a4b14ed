//! The abuse suite: the real `sluice` binary over loopback, attacked as a
//! hostile client would, each case with a bound that only a broken
//! protection exceeds (docs/SECURITY.md lists what each one proves).
//! Timeouts in these policies are short so that the suite stays quick.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::edge::{
    addr, closed_within, count_closed, fresh_chat, open_fds, open_many, raise_nofile, rss_kib,
};
use common::{Sluice, key_hash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "sk-abuse-tenant-key";

/// The cases run one at a time: each floods its own server, and timing
/// bounds should measure Sluice, not the other cases' load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A policy with one tenant and the built-in mock; `server` is the body of
/// `[server]`.
fn policy(server: &str) -> String {
    format!(
        r#"
[policy]
name = "abuse"
default_tier = "free"

[server]
{server}

[upstreams.up]
mock = true

[models.m]

[tiers.free.models]
"m" = {{ rpm = 1000000 }}

[tenants.t]
tier = "free"

[[tenants.t.keys]]
id = "k"
hash = "{}"
"#,
        key_hash(KEY)
    )
}

/// Five chat completions on new connections, each a 200: their median
/// within `bound` (connect included), and none over ten times it (a debug
/// build on a loaded CI machine has its pauses; an attack that works makes
/// every request wait seconds, or fail).
async fn served_promptly(url: &str, bound: Duration) {
    let mut took = Vec::new();
    for i in 0..5 {
        let (t, status) = fresh_chat(url, KEY, "m").await;
        assert_eq!(status, 200, "request {i}");
        assert!(t < bound * 10, "request {i} took {t:?} (bound {bound:?})");
        took.push(t);
    }
    took.sort();
    assert!(took[2] < bound, "median {:?} over {bound:?}: {took:?}", took[2]);
}

/// 300 slowloris connections (a head that gains one byte every 300 ms) hold
/// nothing: they are closed once the head timeout (1 s) passes, and a
/// normal client is served in under 100 ms all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_after_the_head_timeout() {
    let _one = ONE_AT_A_TIME.lock().await;
    raise_nofile();
    let s = Sluice::start(&policy("head_timeout = \"1s\""), &[]);
    let to = addr(&s.url);
    let started = Instant::now();
    let mut conns = open_many(to, 300, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await;
    assert_eq!(conns.len(), 300);
    let drip = tokio::spawn(async move {
        // One more header byte each 300 ms, for as long as a connection lasts.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut open = Vec::new();
            for mut c in conns {
                if c.write_all(b"x").await.is_ok() {
                    open.push(c);
                }
            }
            conns = open;
        }
        conns
    });
    served_promptly(&s.url, Duration::from_millis(100)).await;
    let mut conns = drip.await.unwrap();
    // 3 s after they opened (1 s timeout, generous slack), all are closed.
    let left = Duration::from_secs(3).saturating_sub(started.elapsed());
    let closed = count_closed(&mut conns, left.max(Duration::from_millis(200))).await;
    assert_eq!(closed, conns.len(), "slowloris connections still open after 3 s");
    served_promptly(&s.url, Duration::from_millis(100)).await;
}

/// A connection that sends nothing (or half an HTTP/2 preface) is closed
/// after the head timeout; one
/// kept alive after a response, after the idle timeout; one whose body
/// stalls, after the body timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_and_stalled_connections_are_closed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Sluice::start(
        &policy("head_timeout = \"500ms\"\nidle_timeout = \"1s\"\nbody_timeout = \"1s\""),
        &[],
    );
    let to = addr(&s.url);
    // Silent.
    let mut silent = TcpStream::connect(to).await.unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "silent connection kept");
    assert!(t.elapsed() >= Duration::from_millis(400), "closed too early: {:?}", t.elapsed());
    // An HTTP/2 preface that stops half-way, likewise.
    let mut preface = TcpStream::connect(to).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_within(&mut preface, Duration::from_secs(3)).await, "half a preface kept");
    // Idle after a response: open past the head timeout, closed after idle.
    let mut idle = TcpStream::connect(to).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(4)).await, "idle connection kept");
    assert!(t.elapsed() >= Duration::from_millis(800), "idle closed at {:?}", t.elapsed());
    // A body that stops coming.
    let mut stalled = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(4)).await, "stalled body kept");
    assert!(t.elapsed() >= Duration::from_millis(800), "stalled closed at {:?}", t.elapsed());
}

/// Sluice under `ulimit -n 256` with a cap of 100 connections: 400 idle
/// connections (more than the file limit allows) neither stop a normal
/// client nor run the process out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_do_not_stop_a_normal_client() {
    let _one = ONE_AT_A_TIME.lock().await;
    raise_nofile();
    let text = policy("max_connections = 100\nhead_timeout = \"30s\"");
    let s = Sluice::start_with(&text, &[], &[], Some(256));
    let to = addr(&s.url);
    let idle = open_many(to, 400, b"").await;
    assert!(idle.len() >= 300, "only {} connections opened", idle.len());
    tokio::time::sleep(Duration::from_millis(200)).await;
    served_promptly(&s.url, Duration::from_millis(100)).await;
    let fds = open_fds(s.pid());
    assert!(fds < 200, "{fds} descriptors open with a cap of 100");
    drop(idle);
}

/// With every connection busy, one past the cap gets a `503` with
/// `retry-after` and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_with_every_connection_busy_is_a_503() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Sluice::start_with(&policy("max_connections = 3"), &[], &["--mock-controls"], None);
    let to = addr(&s.url);
    let body = r#"{"model":"m","messages":[{"role":"user","content":""}]}"#;
    let hang = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nx-mock-hang: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let busy = open_many(to, 3, hang.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(to).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), extra.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text:?}");
    drop(busy);
}

/// 1,000 connections each sending 256 KiB of a head that never ends: heads
/// are capped (32 KiB by default), so Sluice's memory grows by less than
/// 64 MiB (hyper's default buffer, ~400 KiB, let it hold ~250 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_cost_little_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    raise_nofile();
    let s = Sluice::start(&policy("head_timeout = \"60s\""), &[]);
    let to = addr(&s.url);
    let before = rss_kib(s.pid());
    let mut head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    head.resize(256 * 1024, b'a');
    let mut conns = Vec::new();
    for _ in 0..1_000 {
        let mut c = TcpStream::connect(to).await.unwrap();
        // Sluice answers 431 and closes once the head outgrows its cap.
        let _ = tokio::time::timeout(Duration::from_millis(200), c.write_all(&head)).await;
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_kib(s.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB with 1,000 half-sent heads");
    served_promptly(&s.url, Duration::from_millis(100)).await;
}

/// 150 connections each declaring a 4 MiB body and sending all of it but
/// its last byte: the body memory budget (32 MiB here) refuses those that
/// do not fit with `503` + `retry-after` before reading them, so Sluice's
/// memory grows by less than 96 MiB (without the budget: ~600 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_large_bodies_stay_within_the_memory_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    raise_nofile();
    let text = policy("body_memory_bytes = 33554432\nbody_timeout = \"60s\"");
    let s = Sluice::start(&text, &[]);
    let to = addr(&s.url);
    let before = rss_kib(s.pid());
    const LEN: usize = 4 * 1024 * 1024;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {LEN}\r\n\r\n"
    );
    let mut body = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
    body.resize(LEN - 1, b'a');
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let (head, body) = (head.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(to).await.unwrap();
            c.write_all(head.as_bytes()).await.unwrap();
            // A refusal comes at once; otherwise the body goes (all but
            // its last byte) and the connection is held.
            let mut buf = vec![0u8; 1024];
            let refused =
                match tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        let t = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                        assert!(t.starts_with("http/1.1 503") && t.contains("retry-after"), "{t}");
                        true
                    }
                    _ => false,
                };
            if !refused {
                let _ = tokio::time::timeout(Duration::from_secs(20), c.write_all(&body)).await;
            }
            (refused, c)
        }));
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (r, c) = t.await.unwrap();
        refused += usize::from(r);
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_kib(s.pid()).saturating_sub(before);
    assert!(refused >= 140, "only {refused} of 150 refused with a 32 MiB budget");
    assert!(grown < 96 * 1024, "RSS grew by {grown} KiB with 150 slow 4 MiB bodies");
    // While the budget is full, a small body is refused too, at once.
    let (took, status) = fresh_chat(&s.url, KEY, "m").await;
    assert_eq!(status, 503, "a body past the full budget");
    assert!(took < Duration::from_millis(100), "the refusal took {took:?}");
    // Once the slow bodies go, their memory is back.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    served_promptly(&s.url, Duration::from_millis(100)).await;
}

/// The quickstart's mock does not obey `x-mock-*` headers: asking for
/// 100,000 completion tokens, or for free prompts, changes neither the
/// response nor what is charged. Its data file is its owner's only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_controls_have_no_effect_on_the_quickstart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Sluice::start(&common::example("quickstart.toml"), &[]);
    let c = common::client();
    let url = format!("{}/v1/chat/completions", s.url);
    let key = Some("sk-sluice-quickstart");
    let body = serde_json::json!({
        "model": "demo-model",
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 50,
    });
    let plain = common::post(&c, &url, key, &body, &[]).await;
    assert_eq!(plain.status(), 200);
    let spent_plain = 100_000 - common::num(&plain, "x-ratelimit-remaining-tokens-day");
    let plain: serde_json::Value = plain.json().await.unwrap();
    let controls = [
        ("x-mock-completion-tokens", "100000"),
        ("x-mock-prompt-tokens", "0"),
        ("x-mock-status", "500"),
        ("x-mock-latency-ms", "5000"),
    ];
    let t = Instant::now();
    let r = common::post(&c, &url, key, &body, &controls).await;
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(2), "the latency header was obeyed");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["usage"], plain["usage"], "x-mock headers changed the usage");
    // What the day's tokens show after a third request: both earlier ones
    // charged their real usage, plus the third's reservation (the first's).
    let third = common::post(&c, &url, key, &body, &[]).await;
    let spent = 100_000 - common::num(&third, "x-ratelimit-remaining-tokens-day");
    let used = plain["usage"]["total_tokens"].as_i64().unwrap();
    assert_eq!(spent, 2 * used + spent_plain, "charged {spent}; usage {used} each");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.dir.join("sluice.redb")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "data file mode {:o}", mode & 0o777);
    }
}

/// Headers of one hop stay on it (RFC 9110 §7.6.1), both ways: the
/// upstream never sees the client's `Connection`-nominated, `keep-alive`,
/// `te` or `proxy-authorization` headers, and the client never sees the
/// upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let _one = ONE_AT_A_TIME.lock().await;
    // An upstream that records the head it gets and answers with headers
    // of its own hop.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut c, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = c.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        let body = r#"{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close, x-up-hop\r\nx-up-hop: secret\r\nkeep-alive: timeout=5\r\nx-up-kept: 1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(resp.as_bytes()).await.unwrap();
        let _ = seen_tx.send(head);
    });
    let text = policy("").replace(
        "[upstreams.up]\nmock = true",
        &format!("[upstreams.up]\nbase_url = \"http://127.0.0.1:{port}/v1\""),
    );
    let s = Sluice::start(&text, &[]);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nconnection: keep-alive, X-Client-Hop\r\nx-client-hop: secret\r\nkeep-alive: timeout=5\r\nte: trailers\r\nproxy-authorization: Basic c2VjcmV0\r\nx-client-kept: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = TcpStream::connect(addr(&s.url)).await.unwrap();
    c.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    let seen = tokio::time::timeout(Duration::from_secs(5), seen_rx).await.unwrap().unwrap();
    assert!(seen.contains("x-client-kept: 1"), "{seen}");
    for hop in ["x-client-hop", "keep-alive", "te:", "proxy-authorization", "secret"] {
        assert!(!seen.contains(hop), "the upstream saw `{hop}`:\n{seen}");
    }
    assert!(response.contains("x-up-kept: 1"), "{response}");
    for hop in ["x-up-hop", "keep-alive", "secret"] {
        assert!(!response.contains(hop), "the client saw `{hop}`:\n{response}");
    }
}

/// SIGTERM while a raw TCP connection to the gRPC port never finishes its
/// HTTP/2 preface, another sends nothing, and a proxied request hangs
/// upstream: the process exits within the grace (2 s, plus slack), says it
/// saved the counters, and a restart on the same data file sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_stuck_clients_ends_within_the_grace_and_saves_counters() {
    let _one = ONE_AT_A_TIME.lock().await;
    let text = policy("shutdown_grace = \"2s\"").replace("rpm = 1000000", "rpm = 4")
        + "\n[data]\nsave_every = \"1h\"\n\n[decisions]\ngrpc_listen = \"127.0.0.1:0\"\ntoken_env = \"DECISIONS_TOKEN\"\n";
    let env = [("DECISIONS_TOKEN", "a-decisions-token-for-tests"), ("RUST_LOG", "info")];
    let mut s = Sluice::start_with(&text, &env, &["--mock-controls"], None);
    s.keep_dir = true;
    let dir = s.dir.clone();
    let grpc: std::net::SocketAddr =
        s.line("sluice decisions grpc on ").expect("the gRPC listener").parse().unwrap();
    for _ in 0..2 {
        let (_, status) = fresh_chat(&s.url, KEY, "m").await;
        assert_eq!(status, 200);
    }
    let mut preface = TcpStream::connect(grpc).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let silent = TcpStream::connect(grpc).await.unwrap();
    let url = format!("{}/v1/chat/completions", s.url);
    let hanging = tokio::spawn(async move {
        let c = common::client();
        let _ = c
            .post(url)
            .bearer_auth(KEY)
            .header("x-mock-hang", "1")
            .json(&common::chat("m", 5))
            .send()
            .await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (took, status, err) = s.terminate_within(Duration::from_secs(5));
    let took = took.unwrap_or_else(|| panic!("still running 5 s after SIGTERM:\n{err}"));
    assert!(status.unwrap().success(), "{err}");
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    assert!(err.contains("counters saved to the data file"), "{err}");
    drop((preface, silent));
    hanging.abort();
    // Three requests were admitted (the hung one too) of four a minute.
    let s = Sluice::start_in_with(&dir, &text, &env, &[]);
    let (_, status) = fresh_chat(&s.url, KEY, "m").await;
    assert_eq!(status, 200, "the fourth request of the minute");
    let (_, status) = fresh_chat(&s.url, KEY, "m").await;
    assert_eq!(status, 429, "the counters were not saved");
}

/// Every admin write leaves one audit line (method, route, tenant, key id,
/// status) and refused API keys one warning a second with a count; no line
/// carries the admin token, a key's secret, or a refused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_and_refused_keys_are_logged_without_secrets() {
    let _one = ONE_AT_A_TIME.lock().await;
    let text =
        policy("") + "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SLUICE_ADMIN_TOKEN\"\n";
    let env =
        [("SLUICE_ADMIN_TOKEN", common::ADMIN_TOKEN), ("RUST_LOG", "warn,sluice::audit=info")];
    let mut s = Sluice::start(&text, &env);
    let ops = common::Ops::of(&mut s);
    ops.tenant(serde_json::json!({"id": "acme", "tier": "free"})).await;
    let (_, first) = ops.key("acme", serde_json::json!({"id": "ci"})).await;
    let (st, v) = ops.call(reqwest::Method::POST, "/tenants/acme/keys/ci/rotate", None).await;
    assert_eq!(st, 201, "{v}");
    let rotated = v["secret"].as_str().unwrap().to_owned();
    let (st, _) = ops.call(reqwest::Method::DELETE, "/tenants/acme/keys/ci", None).await;
    assert!(st < 500, "{st}");
    // Reads are not audited.
    let (st, _) = ops.call(reqwest::Method::GET, "/tenants/acme", None).await;
    assert_eq!(st, 200);
    // Wrong admin tokens and wrong API keys.
    let c = common::client();
    for _ in 0..5 {
        let r = c
            .post(format!("{}/admin/v1/tenants", ops.base))
            .bearer_auth("not-the-admin-token-XYZZY")
            .json(&serde_json::json!({"id": "evil"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let wrong = "sk-wrong-key-PLUGH-0123456789";
    for _ in 0..50 {
        let r = common::post(
            &c,
            &format!("{}/v1/chat/completions", s.url),
            Some(wrong),
            &common::chat("m", 5),
            &[],
        )
        .await;
        assert_eq!(r.status(), 401);
    }
    let (_, err) = s.terminate();
    let audit: Vec<&str> = err.lines().filter(|l| l.contains("sluice::audit")).collect();
    let writes: Vec<&&str> = audit.iter().filter(|l| l.contains("admin write")).collect();
    assert_eq!(writes.len(), 4, "{audit:#?}");
    assert!(
        writes.iter().any(|l| l.contains("method=POST")
            && l.contains("route=/admin/v1/tenants/{id}/keys/{key}/rotate")
            && l.contains("tenant=Some(\"acme\")")
            && l.contains("key=Some(\"ci\")")
            && l.contains("status=201")),
        "{writes:#?}"
    );
    assert!(writes.iter().any(|l| l.contains("method=DELETE")), "{writes:#?}");
    let refused: Vec<&&str> = audit.iter().filter(|l| l.contains("API key")).collect();
    assert!(!refused.is_empty() && refused.len() <= 3, "one line a second: {refused:#?}");
    let counted: u64 = refused
        .iter()
        .map(|l| {
            l.split("refused=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!((1..=50).contains(&counted), "{refused:#?}");
    assert!(audit.iter().any(|l| l.contains("admin API calls refused")), "{audit:#?}");
    for secret in [common::ADMIN_TOKEN, "XYZZY", first.as_str(), rotated.as_str(), "PLUGH"] {
        assert!(!err.contains(secret), "the log shows a secret ({secret}):\n{err}");
    }
}

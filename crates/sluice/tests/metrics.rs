//! The gateway's Prometheus metrics, against the real binary over loopback
//! with a mock upstream: after a known sequence of requests (admitted, a
//! stream, an upstream error, one refused by a named limit, a wrong key)
//! the counters are exactly what happened, the text passes `promtool check
//! metrics`, and it is served only behind a token: on the admin listener
//! and on the metrics listener, never on the proxy's port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ACME: &str = "sk-acme-metrics-test-000000000000001";
const METRICS_TOKEN: &str = "metrics-token-for-tests-0123456789";

fn policy(mock: &sluice_mock::MockServer) -> String {
    format!(
        r#"
[policy]
name = "metrics"
default_tier = "free"

[models."m1"]
[models."m2"]

[tiers.free.models]
"m1" = {{ rpm = 3 }}
"m2" = {{ rpm = 100 }}

[tenants.acme]
[[tenants.acme.keys]]
id = "acme-key"
hash = "{}"

[admin]
listen = "127.0.0.1:0"

[metrics]
listen = "127.0.0.1:0"
{}
"#,
        key_hash(ACME),
        upstream_section(mock)
    )
}

fn env() -> [(&'static str, &'static str); 3] {
    [
        ("UPSTREAM_KEY", "k"),
        ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SLUICE_METRICS_TOKEN", METRICS_TOKEN),
    ]
}

/// `GET url` with `token`: status and text.
async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut r = client().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the series `series` (name and labels exactly as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs `promtool check metrics` on `text`; its complaints, if any.
fn promtool(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is needed (Debian: apt-get install prometheus; ./scripts/test installs it): {e}")
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() { Ok(()) } else { Err(said) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_after_a_known_sequence_and_pass_promtool() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy(&mock), &env());
    let admin = s.line("sluice admin on ").unwrap();
    let scrape_url = s.line("sluice metrics on ").unwrap();
    let url = s.url.clone();
    let c = client();
    let chat_url = format!("{url}/v1/chat/completions");

    // 1. Admitted: the upstream reports 11 prompt and 5 completion tokens.
    let tokens = [("x-mock-prompt-tokens", "11"), ("x-mock-completion-tokens", "5")];
    let r = post(&c, &chat_url, Some(ACME), &chat("m1", 7), &tokens).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 11);

    // 2. A stream: 13 and 4.
    let mut body = chat("m1", 7);
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    let tokens = [("x-mock-prompt-tokens", "13"), ("x-mock-completion-tokens", "4")];
    let r = post(&c, &chat_url, Some(ACME), &body, &tokens).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"prompt_tokens\":13") && text.contains("data: [DONE]"), "{text}");

    // 3. The upstream fails (a 500 costs a request and no token).
    let r = post(&c, &chat_url, Some(ACME), &chat("m1", 7), &[("x-mock-status", "500")]).await;
    assert_eq!(r.status(), 500);
    r.bytes().await.unwrap();

    // 4. The fourth request to m1 in the minute: refused by `m1/rpm`.
    let r = post(&c, &chat_url, Some(ACME), &chat("m1", 7), &[]).await;
    assert_eq!(r.status(), 429);
    r.bytes().await.unwrap();

    // 5. A wrong key: before the tenant, the model or the tier is known.
    let r = post(&c, &chat_url, Some("sk-wrong"), &chat("m1", 7), &[]).await;
    assert_eq!(r.status(), 401);
    r.bytes().await.unwrap();

    // The counts, exactly (settlements land as bodies end: wait for them).
    let want: &[(&str, f64)] = &[
        (r#"sluice_requests_total{endpoint="chat",model="m1",tier="free",status="200"}"#, 2.0),
        (r#"sluice_requests_total{endpoint="chat",model="m1",tier="free",status="500"}"#, 1.0),
        (r#"sluice_requests_total{endpoint="chat",model="m1",tier="free",status="429"}"#, 1.0),
        (r#"sluice_requests_total{endpoint="chat",model="",tier="",status="401"}"#, 1.0),
        (r#"sluice_denials_total{limit="m1/rpm"}"#, 1.0),
        (r#"sluice_tokens_total{model="m1",kind="input"}"#, 24.0),
        (r#"sluice_tokens_total{model="m1",kind="output"}"#, 9.0),
        (r#"sluice_estimate_error_ratio_count{model="m1"}"#, 2.0),
        (r#"sluice_upstream_response_seconds_count{model="m1"}"#, 3.0),
        (r#"sluice_upstream_first_byte_seconds_count{model="m1"}"#, 3.0),
        ("sluice_admission_seconds_count", 4.0),
        (r#"sluice_requests_in_flight{listener="proxy"}"#, 0.0),
        ("sluice_store_up", 1.0),
        ("sluice_store_pending_settlements", 0.0),
        ("sluice_access_log_dropped_total", 0.0),
    ];
    let mut text = String::new();
    let mut wrong = Vec::new();
    for _ in 0..100 {
        let (status, t) = get(&format!("{admin}/metrics"), Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{t}");
        text = t;
        wrong = want
            .iter()
            .filter(|(series, v)| value(&text, series) != Some(*v))
            .map(|(series, v)| format!("{series}: want {v}, got {:?}", value(&text, series)))
            .collect();
        if wrong.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
    // Nothing counted that did not happen.
    let requests: f64 = text
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(requests, 5.0, "{text}");
    assert!(value(&text, r#"sluice_open_connections{listener="admin"}"#).unwrap() >= 1.0);
    assert!(!text.contains("acme"), "no tenant label unless per_tenant: {text}");
    // The store's health and the listener gauges are there.
    promtool(&text).unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n\n{text}"));

    // What Prometheus asks for: OpenMetrics.
    let r = client()
        .get(format!("{admin}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text")
    );
    let open = r.text().await.unwrap();
    assert!(open.contains("# TYPE sluice_requests counter") && open.ends_with("# EOF\n"), "{open}");

    // The metrics listener: the same text behind its own token.
    let (status, own) = get(&scrape_url, Some(METRICS_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(value(&own, r#"sluice_tokens_total{model="m1",kind="input"}"#), Some(24.0), "{own}");
    // Secure by default: no token, a wrong one, or the proxy's port.
    assert_eq!(get(&scrape_url, None).await.0, 401);
    assert_eq!(get(&scrape_url, Some(ADMIN_TOKEN)).await.0, 401);
    assert_eq!(get(&format!("{admin}/metrics"), None).await.0, 401);
    assert_eq!(get(&format!("{admin}/metrics"), Some(METRICS_TOKEN)).await.0, 401);
    let (status, body) = get(&format!("{url}/metrics"), Some(ACME)).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get(&format!("{url}/metrics"), None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_labels_only_when_asked() {
    let mock = mock().await;
    // With the decision service too: its metrics join the same registry.
    let text = policy(&mock).replace(
        "[metrics]\n",
        "[decisions]\nhttp_listen = \"127.0.0.1:0\"\n\n[metrics]\nper_tenant = true\n",
    );
    let mut s = Sluice::start(&text, &env());
    let scrape_url = s.line("sluice metrics on ").unwrap();
    let decisions = s.line("sluice decisions http on ").unwrap();
    let c = client();
    let check = json!({"tenant": "acme", "model": "m2", "input_tokens": 3, "output_tokens": 2});
    let r = c.post(format!("{decisions}/v1/decisions/check")).json(&check).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let chat_url = format!("{}/v1/chat/completions", s.url);
    let tokens = [("x-mock-prompt-tokens", "11"), ("x-mock-completion-tokens", "5")];
    for _ in 0..4 {
        post(&c, &chat_url, Some(ACME), &chat("m1", 7), &tokens).await.bytes().await.unwrap();
    }
    let want: &[(&str, f64)] = &[
        (r#"sluice_tenant_requests_total{tenant="acme",model="m1",status="200"}"#, 3.0),
        (r#"sluice_tenant_requests_total{tenant="acme",model="m1",status="429"}"#, 1.0),
        (r#"sluice_tenant_tokens_total{tenant="acme",model="m1",kind="input"}"#, 33.0),
        (r#"sluice_tenant_denials_total{tenant="acme",limit="m1/rpm"}"#, 1.0),
    ];
    let mut text = String::new();
    for _ in 0..100 {
        text = get(&scrape_url, Some(METRICS_TOKEN)).await.1;
        if want.iter().all(|(series, v)| value(&text, series) == Some(*v)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (series, v) in want {
        assert_eq!(value(&text, series), Some(*v), "{series}\n{text}");
    }
    promtool(&text).unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n\n{text}"));
    assert!(text.contains("# TYPE sluice_decisions_total counter"), "{text}");

    // Every metric the example Grafana dashboard queries is in the scrape.
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .collect();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/grafana/sluice.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut used = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("sluice_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                used.push(name);
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<_> = used.iter().filter(|n| !names.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that are not served: {missing:?}\n{text}"
    );
}

#[test]
fn the_metrics_listener_needs_its_token() {
    let text = "[models.m]\n[metrics]\nlisten = \"127.0.0.1:0\"\n[upstreams.up]\nbase_url = \"http://127.0.0.1:9/v1\"\n";
    let dir = std::env::temp_dir().join(format!("sluice-metrics-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("SLUICE_METRICS_TOKEN")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SLUICE_METRICS_TOKEN"), "{err}");
}

/// A policy reload serves a new runtime: the proxy's counters keep counting
/// across it (they are bound to each runtime served, not only the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_goes_on_after_a_policy_reload() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy(&mock), &env());
    let admin = s.line("sluice admin on ").unwrap();
    let chat_url = format!("{}/v1/chat/completions", s.url);
    let c = client();
    let series = r#"sluice_requests_total{endpoint="chat",model="m2",tier="free",status="200"}"#;
    let admission = "sluice_admission_seconds_count";

    let r = post(&c, &chat_url, Some(ACME), &chat("m2", 7), &[]).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = c
        .post(format!("{admin}/admin/v1/policy/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for _ in 0..2 {
        let r = post(&c, &chat_url, Some(ACME), &chat("m2", 7), &[]).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }

    let mut text = String::new();
    for _ in 0..100 {
        text = get(&format!("{admin}/metrics"), Some(ADMIN_TOKEN)).await.1;
        if value(&text, series) == Some(3.0) && value(&text, admission) == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value(&text, series), Some(3.0), "{text}");
    assert_eq!(value(&text, admission), Some(3.0), "{text}");
}

//! Budgets in money through the real binary: a budget holds across streams
//! and across instances sharing a real `redis-server`, the 429 says it in
//! money, and `GET /v1/usage` shows the spend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sluice_testkit::RedisServer;

const KEY: &str = "sk-budget-test";

/// `priced` costs $0.01 an output token and nothing per input token: a
/// request of `max_tokens` 5 costs $0.05; the tenant's day is $1.00.
fn policy(store: &str, mock: &sluice_mock::MockServer) -> String {
    format!(
        r#"
[policy]
default_price = {{ input = 1.00, output = 1.00 }}

[headers]
families = ["requests", "cost-day"]

[models."priced"]
price = {{ input = 0, output = 10_000 }}

[[limits]]
name = "daily-budget"
metric = "cost"
amount = 1.00
window = "1d"
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

fn stream(max_tokens: u64) -> serde_json::Value {
    serde_json::json!({
        "model": "priced",
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": max_tokens,
        "stream": true,
    })
}

/// Streams of $0.05 each, from three instances on one Redis in turn: the
/// dollar admits exactly 20, every later one is refused in money on every
/// instance, and the upstream saw only the 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_streams_and_instances() {
    let redis = RedisServer::start();
    let mock = mock().await;
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nnamespace = \"budget\"\ntimeout = \"500ms\"\n",
        redis.url()
    );
    let text = policy(&store, &mock);
    let instances: Vec<Sluice> =
        (0..3).map(|_| Sluice::start(&text, &[("UPSTREAM_KEY", "k")])).collect();
    let http = client();
    let mut admitted = 0;
    let mut refused = Vec::new();
    for i in 0..30 {
        let url = format!("{}/v1/chat/completions", instances[i % 3].url);
        let r = post(&http, &url, Some(KEY), &stream(5), &[]).await;
        match r.status().as_u16() {
            200 => {
                // Read to the end: the stream settles when it ends.
                let body = r.text().await.unwrap();
                assert!(body.contains("[DONE]"), "{body}");
                admitted += 1;
            }
            429 => {
                let v: serde_json::Value = r.json().await.unwrap();
                refused.push(v["error"].clone());
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!(admitted, 20, "$1.00 at $0.05 a stream");
    assert_eq!(refused.len(), 10);
    assert_eq!(mock.stats.requests(), 20, "only admitted streams reached the upstream");
    for e in &refused {
        assert_eq!(e["type"], "cost", "{e}");
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains("Budget reached for priced in organization t on cost per day (cost/day): Limit $1.00, Used $1.00, Requested $0.05."),
            "{m}"
        );
    }
    // The spend, in money, from any instance.
    let r =
        http.get(format!("{}/v1/usage", instances[1].url)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let row = v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "daily-budget")
        .cloned()
        .unwrap_or_else(|| panic!("no daily-budget in {v}"));
    assert_eq!(row["used"], 1_000_000, "{row}");
    assert_eq!(row["money"]["used"], "1.00", "{row}");
    assert_eq!(row["money"]["remaining"], "0.00", "{row}");
    assert_eq!(row["money"]["currency"], "USD", "{row}");
}

/// Settled from the usage, not the estimate: a request that reserves 50
/// output tokens ($0.50) and uses 10 is
/// charged $0.10 (the mock reports 10 completion tokens), and the headers
/// say what is left in dollars.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_is_charged_what_was_used() {
    let mock = mock().await;
    let s = Sluice::start(&policy("", &mock), &[("UPSTREAM_KEY", "k")]);
    let http = client();
    let url = format!("{}/v1/chat/completions", s.url);
    let r =
        post(&http, &url, Some(KEY), &chat("priced", 50), &[("x-mock-completion-tokens", "10")])
            .await;
    assert_eq!(r.status(), 200);
    // Reserved: $0.50 of the dollar.
    assert_eq!(r.headers()["x-ratelimit-limit-cost-day"], "1.00");
    assert_eq!(r.headers()["x-ratelimit-remaining-cost-day"], "0.50");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 10);
    // Settled at $0.10: this one reserves $0.05 of the $0.90 left.
    let r = post(&http, &url, Some(KEY), &chat("priced", 5), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-cost-day"], "0.85");
}

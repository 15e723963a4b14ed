//! `[tokens] cached_input` and `reasoning`, end to end: the real
//! `sluice serve` binary in front of the mock upstream, which reports cached
//! prompt tokens and reasoning tokens as OpenAI does (`x-mock-cached-tokens`,
//! `x-mock-reasoning-tokens`). By default a settled request is charged all
//! its reported tokens; with `exclude`, its input-token and output-token
//! limits are charged without them (read from `GET /v1/usage`), for a JSON
//! response and for a stream alike, and the client's body is unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "sk-token-counting-test-000000000001";

fn env() -> [(&'static str, &'static str); 2] {
    [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

/// A tenant with input and output tokens per calendar day (counted to the
/// token: a rolling window would refill while the test reads it), and
/// `tokens` (a `[tokens]` section, or nothing).
fn policy(mock: &sluice_mock::MockServer, tokens: &str) -> String {
    format!(
        r#"
[policy]
name = "token-counting"

{tokens}
[models."m"]

[[limits]]
name = "itpd"
metric = "input_tokens"
amount = 1_000_000
window = "1d"
kind = "calendar"

[[limits]]
name = "otpd"
metric = "output_tokens"
amount = 1_000_000
window = "1d"
kind = "calendar"

[tenants.t]
[[tenants.t.keys]]
hash = "{}"

[admin]
listen = "127.0.0.1:0"
{}
"#,
        key_hash(KEY),
        upstream_section(mock)
    )
}

/// Sends a chat request (a stream if `stream`, without asking for usage:
/// the gateway asks upstream for it and strips it) with the mock's token
/// controls; returns the usage the client saw (a JSON response's; a
/// stream's is stripped).
async fn send(url: &str, stream: bool, controls: &[(&str, &str)]) -> Value {
    let mut body = chat("m", 10);
    if stream {
        body["stream"] = json!(true);
    }
    let r =
        post(&client(), &format!("{url}/v1/chat/completions"), Some(KEY), &body, controls).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    if stream {
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(!text.contains("\"usage\":{"), "the usage chunk reached the client: {text}");
        Value::Null
    } else {
        serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
    }
}

/// The tenant's input and output tokens today, as `GET /v1/usage` shows
/// them.
async fn used(url: &str) -> (u64, u64) {
    let r = client().get(format!("{url}/v1/usage")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.unwrap();
    let used = |name: &str| {
        let limits = u["limits"].as_array().unwrap();
        let l = limits.iter().find(|l| l["limit"] == name);
        l.unwrap_or_else(|| panic!("no limit {name} in {u}"))["used"].as_u64().unwrap()
    };
    (used("itpd"), used("otpd"))
}

/// Waits (up to 5 s) for the tenant's usage to be `want`, as it is once the
/// last request has settled; fails showing what it is.
async fn expect_used(url: &str, want: (u64, u64), what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = used(url).await;
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: used {now:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A prompt of 1,000 tokens of which 900 were read from cache: charged in
/// full by default, 100 with `cached_input = "exclude"`, for a JSON
/// response and for a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_input_tokens_count_unless_excluded() {
    let mock = mock().await;
    let controls = [
        ("x-mock-prompt-tokens", "1000"),
        ("x-mock-cached-tokens", "900"),
        ("x-mock-completion-tokens", "10"),
    ];
    for (tokens, input) in [("", 1000), ("[tokens]\ncached_input = \"exclude\"\n", 100)] {
        let s = Sluice::start(&policy(&mock, tokens), &env());
        let usage = send(&s.url, false, &controls).await;
        // The client sees what the upstream said.
        assert_eq!(usage["prompt_tokens"], 1000);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 900);
        expect_used(&s.url, (input, 10), &format!("JSON, {tokens:?}")).await;
        send(&s.url, true, &controls).await;
        expect_used(&s.url, (2 * input, 20), &format!("stream, {tokens:?}")).await;
    }
}

/// 10 visible output tokens and 40 reasoning tokens (50 completion tokens):
/// charged 50 by default, 10 with `reasoning = "exclude"`; cached tokens
/// still count unless excluded too. `sluice_tokens_total` counts what was
/// charged, and the cached and reasoning tokens reported whatever was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_tokens_count_unless_excluded() {
    let mock = mock().await;
    let controls = [
        ("x-mock-prompt-tokens", "30"),
        ("x-mock-cached-tokens", "20"),
        ("x-mock-completion-tokens", "10"),
        ("x-mock-reasoning-tokens", "40"),
    ];
    for (tokens, input, output) in [
        ("", 30, 50),
        ("[tokens]\nreasoning = \"exclude\"\n", 30, 10),
        ("[tokens]\ncached_input = \"exclude\"\nreasoning = \"exclude\"\n", 10, 10),
    ] {
        let mut s = Sluice::start(&policy(&mock, tokens), &env());
        let admin = s.line("sluice admin on ").unwrap();
        let usage = send(&s.url, false, &controls).await;
        assert_eq!(usage["completion_tokens"], 50);
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 40);
        expect_used(&s.url, (input, output), &format!("JSON, {tokens:?}")).await;
        send(&s.url, true, &controls).await;
        expect_used(&s.url, (2 * input, 2 * output), &format!("stream, {tokens:?}")).await;
        let want: Vec<String> =
            [("input", 2 * input), ("output", 2 * output), ("cached_input", 40), ("reasoning", 80)]
                .iter()
                .map(|(kind, n)| {
                    format!("sluice_tokens_total{{model=\"m\",kind=\"{kind}\"}} {n}\n")
                })
                .collect();
        // Counted as the settlement ends: wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = client().get(format!("{admin}/metrics")).bearer_auth(ADMIN_TOKEN).send().await;
            let text = r.unwrap().text().await.unwrap();
            if want.iter().all(|series| text.contains(series.as_str())) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not all of {want:?} in\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

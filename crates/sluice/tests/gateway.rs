//! `sluice serve` end to end: the real binary in front of the mock upstream,
//! over loopback HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const KEY_A1: &str = "sk-test-team-a-1";
const KEY_A2: &str = "sk-test-team-a-2";
const KEY_B: &str = "sk-test-team-b";

fn tenant(id: &str, extra: &str, keys: &[(&str, &str)]) -> String {
    let mut s = format!("\n[tenants.{id}]\n{extra}\n");
    for (n, (secret, labels)) in keys.iter().enumerate() {
        s.push_str(&format!(
            "[[tenants.{id}.keys]]\nid = \"{id}-{n}\"\nhash = \"{}\"\nlabels = {{ {labels} }}\n",
            key_hash(secret)
        ));
    }
    s
}

/// A policy for token accounting: output tokens per day (reserve = max_tokens
/// exactly, actual = completion tokens), so settlement shows in the headers
/// to the token.
fn output_policy(mock: &sluice_mock::MockServer) -> String {
    format!(
        r#"
[headers]
families = ["requests-day", "output-tokens-day"]
reset = "seconds"

[models."m"]

[[limits]]
name = "otpd"
metric = "output_tokens"
amount = 1000000
window = "1d"

[[limits]]
name = "rpd"
metric = "requests"
amount = 1000
window = "1d"
{}{}"#,
        upstream_section(mock),
        tenant("t", "", &[(KEY_A1, "")])
    )
}

const OTPD: &str = "x-ratelimit-remaining-output-tokens-day";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_api_headers_and_a_429_with_retry_headers() {
    let mock = mock().await;
    let policy = format!(
        "{}{}{}{}",
        example("llama-api.toml"),
        upstream_section(&mock),
        tenant("team-a", "", &[(KEY_A1, ""), (KEY_A2, "")]),
        tenant("team-b", "", &[(KEY_B, "")]),
    );
    let s = Sluice::start(&policy, &[("UPSTREAM_KEY", "upstream-secret")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    let model = "Llama-3.3-70B-Instruct";
    // Two keys of one team share 10 RPM.
    for i in 0..10 {
        let key = if i % 2 == 0 { KEY_A1 } else { KEY_A2 };
        let r = post(&c, &url, Some(key), &chat(model, 20), &[]).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(num(&r, "x-ratelimit-limit-requests"), 10);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 9 - i);
        assert_eq!(num(&r, "x-ratelimit-limit-tokens"), 250_000);
        assert!(num(&r, "x-ratelimit-remaining-tokens") < 250_000);
        // The Llama API sends no reset headers, nor day families.
        assert!(!has(&r, "x-ratelimit-reset-requests") && !has(&r, "x-ratelimit-reset-tokens"));
        assert!(!has(&r, "x-ratelimit-limit-requests-day"));
        assert!(has(&r, "x-request-id"));
    }
    for key in [KEY_A1, KEY_A2] {
        let r = post(&c, &url, Some(key), &chat(model, 20), &[]).await;
        assert_eq!(r.status(), 429);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 0);
        let ms = num(&r, "retry-after-ms");
        assert!((1..=6_000).contains(&ms), "one request refills in 6 s: {ms}");
        assert_eq!(num(&r, "retry-after"), (ms + 999) / 1000);
        assert!(!has(&r, "x-should-retry"), "a short wait: the SDK may retry");
        let body: serde_json::Value = r.json().await.unwrap();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!(
                "Rate limit reached for {model} in organization team-a on requests per min (RPM): Limit 10, Used 10, Requested 1. Please try again in "
            )),
            "{msg}"
        );
        assert_eq!(body["error"]["type"], "requests");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert!(body["error"]["param"].is_null());
    }
    // Another team is untouched.
    let r = post(&c, &url, Some(KEY_B), &chat(model, 20), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 9);
    // The upstream saw its own key, never the client's, at the same path.
    let last = mock.stats.last_request().expect("a request upstream");
    assert_eq!(last.headers["authorization"], "Bearer upstream-secret");
    assert_eq!((last.path.as_str(), last.query.as_deref()), ("/v1/chat/completions", None));
    assert_eq!(mock.stats.requests(), 11, "denied requests never reach the upstream");
    // A query goes upstream with the path (e.g. Azure's `api-version`).
    let r = post(&c, &format!("{url}?api-version=2024-10-21"), Some(KEY_B), &chat(model, 20), &[])
        .await;
    assert_eq!(r.status(), 200);
    let last = mock.stats.last_request().expect("a request upstream");
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.query.as_deref(), Some("api-version=2024-10-21"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sambanova_day_limit_headers_and_no_retry() {
    let mock = mock().await;
    let policy = format!(
        "{}{}{}",
        example("sambanova-cloud.toml"),
        upstream_section(&mock),
        tenant("acct", "tier = \"free\"", &[(KEY_A1, "")]),
    );
    let s = Sluice::start(&policy, &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    // The free tier may not use MiniMax-M2.7: not found, and nothing counted.
    let r = post(&c, &url, Some(KEY_A1), &chat("MiniMax-M2.7", 10), &[]).await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    for i in 0..20 {
        let r = post(&c, &url, Some(KEY_A1), &chat("DeepSeek-V3.1", 10), &[]).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(num(&r, "x-ratelimit-limit-requests-day"), 20);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), 19 - i);
        assert_eq!(num(&r, "x-ratelimit-limit-tokens-day"), 200_000);
        // Reset as seconds until reset ("time until reset"), a decimal.
        let reset: f64 =
            r.headers()["x-ratelimit-reset-requests-day"].to_str().unwrap().parse().unwrap();
        assert!(reset > 0.0 && reset <= 86_400.0, "{reset}");
        // No token-per-minute family in this profile.
        assert!(!has(&r, "x-ratelimit-limit-tokens"));
    }
    let r = post(&c, &url, Some(KEY_A1), &chat("DeepSeek-V3.1", 10), &[]).await;
    assert_eq!(r.status(), 429);
    // The RPM (20, refilling) is also spent; the day decides: a long wait,
    // so the SDKs are told not to retry blindly.
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert!(num(&r, "retry-after") > 0);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("on requests per day (RPD): Limit 20, Used 20, Requested 1."), "{msg}");
    // Another model still admits.
    let r = post(&c, &url, Some(KEY_A1), &chat("gpt-oss-120b", 10), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_sandbox_apex_hourly_and_epoch_resets() {
    let mock = mock().await;
    let policy = format!(
        "{}{}{}",
        example("salesforce-models-api.toml").replace("reset = \"duration\"", "reset = \"epoch\""),
        upstream_section(&mock),
        tenant(
            "sandbox-org",
            "environment = \"sandbox\"",
            &[(KEY_A1, "channel = \"apex\""), (KEY_A2, "channel = \"rest\"")]
        ),
    );
    let s = Sluice::start(&policy, &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    let model = "sfdc_ai__DefaultGPT4Omni";
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for _ in 0..200 {
        let r = post(&c, &url, Some(KEY_A1), &chat(model, 5), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "x-ratelimit-limit-requests-hour"), 200);
        // Epoch reset: the end of the current hour.
        let reset = num(&r, "x-ratelimit-reset-requests-hour") as u64;
        assert!(reset > now && reset <= now + 3_601 && reset.is_multiple_of(3_600), "{reset}");
        assert!(
            !has(&r, "x-ratelimit-limit-requests"),
            "no per-minute limit for Apex in a sandbox"
        );
    }
    let r = post(&c, &url, Some(KEY_A1), &chat(model, 5), &[]).await;
    assert_eq!(r.status(), 429);
    // REST calls of the same org keep the production limit.
    let r = post(&c, &url, Some(KEY_A2), &chat(model, 5), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 500);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 499);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_settled_from_its_final_usage_chunk() {
    let mock = mock().await;
    let s = Sluice::start(&output_policy(&mock), &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    let mut body = chat("m", 500);
    body["stream"] = json!(true);
    // The upstream generates 7 tokens, not the 500 reserved.
    let r = post(&c, &url, Some(KEY_A1), &body, &[("x-mock-completion-tokens", "7")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(num(&r, OTPD), 1_000_000 - 500, "headers show the reservation");
    let text = r.text().await.unwrap();
    assert!(text.contains("data: [DONE]"));
    // The client did not ask for usage: the usage chunk is stripped…
    assert!(!text.contains("\"choices\":[]"), "{text}");
    // …though the gateway asked the upstream for it.
    let up = mock.stats.last_request().unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // The next request sees 7 output tokens used, not 500.
    let r =
        post(&c, &url, Some(KEY_A1), &chat("m", 100), &[("x-mock-completion-tokens", "30")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, OTPD), 1_000_000 - 7 - 100);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 30);
    // A JSON response is settled from its `usage`: 30, not the 100 reserved.
    let r = post(&c, &url, Some(KEY_A1), &chat("m", 1), &[]).await;
    assert_eq!(num(&r, OTPD), 1_000_000 - 7 - 30 - 1);
    r.text().await.unwrap();

    // A client that asks for usage gets the chunk.
    let mut body = chat("m", 3);
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    let r = post(&c, &url, Some(KEY_A1), &body, &[]).await;
    let text = r.text().await.unwrap();
    assert!(text.contains("\"choices\":[]") && text.contains("\"completion_tokens\":3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_is_charged_only_for_what_was_generated() {
    let mock = mock().await;
    let s = Sluice::start(&output_policy(&mock), &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    let mut body = chat("m", 1000);
    body["stream"] = json!(true);
    let mut r = post(&c, &url, Some(KEY_A1), &body, &[("x-mock-chunk-delay-ms", "20")]).await;
    assert_eq!(r.status(), 200);
    let mut seen = 0;
    while seen < 5 {
        let chunk = r.chunk().await.unwrap().expect("more of the stream");
        seen += String::from_utf8_lossy(&chunk).matches("tok ").count();
    }
    drop(r);
    // The gateway cancels the upstream request.
    assert!(
        mock.stats.wait_until(Duration::from_secs(5), |s| s.streams_cancelled() == 1).await,
        "the upstream stream was not cancelled"
    );
    let sent = mock.stats.chunks_sent_in_cancelled_streams() as i64;
    assert!(sent < 1000);
    let r = post(&c, &url, Some(KEY_A1), &chat("m", 10), &[]).await;
    let charged = 1_000_000 - 10 - num(&r, OTPD);
    // What passed through the gateway: at least what the client saw, at most
    // what the upstream sent; never the 1,000 reserved.
    assert!((seen as i64..=sent).contains(&charged), "charged {charged}, saw {seen}, sent {sent}");
}

/// Bad input is answered before admission and charges nothing. A request
/// the upstream failed keeps its request count by default (the upstream
/// did the work of answering it; a refund would let a client send requests
/// the upstream rejects without any limit), its tokens refunded; the
/// statuses of `refund_statuses` are refunded in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_charges_nothing_and_failed_upstreams_count_a_request() {
    let mock = mock().await;
    let policy = |server: &str| {
        format!(
            r#"
[server]
max_body_bytes = 2048
{server}

[headers]
families = ["requests-day"]

[models."m"]
upstream = "up"
[models."down"]
upstream = "dead"

[[limits]]
name = "rpd"
metric = "requests"
amount = 100
window = "1d"

[upstreams.dead]
base_url = "http://127.0.0.1:9/v1"
connect_timeout = "1s"
{}{}"#,
            upstream_section(&mock),
            tenant("t", "", &[(KEY_A1, "")])
        )
    };
    let s = Sluice::start(&policy(""), &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    let code = |r: &reqwest::Response| r.status().as_u16();

    let r = post(&c, &url, None, &chat("m", 5), &[]).await;
    assert_eq!(code(&r), 401);
    let r = post(&c, &url, Some("sk-nobody"), &chat("m", 5), &[]).await;
    assert_eq!(code(&r), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(!body.to_string().contains("sk-nobody"), "the key is never echoed");
    let r = c.post(&url).bearer_auth(KEY_A1).body("{not json").send().await.unwrap();
    assert_eq!(code(&r), 400);
    let r = post(&c, &url, Some(KEY_A1), &json!({"messages": []}), &[]).await;
    assert_eq!(code(&r), 400);
    let r = post(&c, &url, Some(KEY_A1), &chat("no-such-model", 5), &[]).await;
    assert_eq!(code(&r), 404);
    let r = post(&c, &format!("{}/v1/nothing", s.url), Some(KEY_A1), &chat("m", 5), &[]).await;
    assert_eq!(code(&r), 404);
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = post(&c, &url, Some(KEY_A1), &big, &[]).await;
    assert_eq!(code(&r), 413);
    // Nothing counted so far: the first request of the day.
    let r = post(&c, &url, Some(KEY_A1), &chat("m", 5), &[]).await;
    assert_eq!(code(&r), 200);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), 99);
    r.text().await.unwrap();
    // Admitted, then the upstream fails: each counts a request.
    let failures = |c: reqwest::Client, url: String| async move {
        let r = post(&c, &url, Some(KEY_A1), &chat("down", 5), &[]).await;
        assert_eq!(r.status(), 502);
        let r = post(&c, &url, Some(KEY_A1), &chat("m", 5), &[("x-mock-hang", "1")]).await;
        assert_eq!(r.status(), 504);
        let r = post(&c, &url, Some(KEY_A1), &chat("m", 5), &[("x-mock-status", "500")]).await;
        assert_eq!(r.status(), 500, "an upstream error passes through");
        r.text().await.unwrap();
        let r = post(&c, &url, Some(KEY_A1), &chat("m", 5), &[]).await;
        assert_eq!(r.status(), 200);
        num(&r, "x-ratelimit-remaining-requests-day")
    };
    assert_eq!(failures(c.clone(), url.clone()).await, 99 - 3 - 1, "three failures counted");
    // Refunding 502 and 504 (the upstream down or silent) is a choice.
    let s = Sluice::start(&policy("refund_statuses = [502, 504]"), &[("UPSTREAM_KEY", "k")]);
    let url = format!("{}/v1/chat/completions", s.url);
    assert_eq!(failures(c, url).await, 100 - 1 - 1, "only the 500 counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_what_the_tier_may_use() {
    let mock = mock().await;
    let policy = format!(
        "{}{}{}",
        example("sambanova-cloud.toml"),
        upstream_section(&mock),
        tenant("acct", "tier = \"free\"", &[(KEY_A1, "")]),
    );
    let s = Sluice::start(&policy, &[("UPSTREAM_KEY", "k")]);
    let r = client().get(format!("{}/v1/models", s.url)).bearer_auth(KEY_A1).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let ids: Vec<&str> =
        body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"DeepSeek-V3.1") && !ids.contains(&"MiniMax-M2.7"), "{ids:?}");
    let r = client().get(format!("{}/v1/models", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let mock = mock().await;
    let s = Sluice::start(&output_policy(&mock), &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    let mut body = chat("m", 20);
    body["stream"] = json!(true);
    let mut r = post(&c, &url, Some(KEY_A1), &body, &[("x-mock-chunk-delay-ms", "50")]).await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let stopper = tokio::task::spawn_blocking(move || s.terminate());
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("data: [DONE]"), "the stream was cut: {text}");
    assert_eq!(text.matches("tok ").count(), 20);
    let (status, _stderr) = stopper.await.unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(mock.stats.streams_completed(), 1);
}

/// Allowed one CPU, `sluice serve` runs on a current-thread runtime: the
/// same gateway, concurrent requests interleaved on one thread, settled to
/// the token, and a graceful shutdown that lets a stream finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_requests_interleave_settle_and_shut_down_gracefully() {
    let mock = mock().await;
    let s = Sluice::start_on_one_cpu(&output_policy(&mock), &[("UPSTREAM_KEY", "k")]);
    let cpus = allowed_cpus(s.pid());
    assert!(cpus.parse::<u32>().is_ok(), "sluice may run on {cpus}, not on one CPU");
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);

    // A slow stream in flight while 20 JSON requests come and go: one
    // thread serves them all at once.
    let mut body = chat("m", 500);
    body["stream"] = json!(true);
    let headers = [("x-mock-chunk-delay-ms", "150"), ("x-mock-completion-tokens", "10")];
    let mut stream = post(&c, &url, Some(KEY_A1), &body, &headers).await;
    assert_eq!(stream.status(), 200);
    let mut quick = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (c, url) = (c.clone(), url.clone());
        quick.spawn(async move {
            let tokens = [("x-mock-completion-tokens", "2")];
            let r = post(&c, &url, Some(KEY_A1), &chat("m", 50), &tokens).await;
            assert_eq!(r.status(), 200);
            r.text().await.unwrap();
        });
    }
    while let Some(done) = quick.join_next().await {
        done.unwrap();
    }
    // The stream takes 10 × 150 ms: the others did not wait for it.
    assert_eq!(mock.stats.streams_completed(), 0, "the quick requests waited for the stream");
    let mut text = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("data: [DONE]"), "{text}");

    // Settled with what was generated: 10 + 20 × 2, not the reservations.
    let r = post(&c, &url, Some(KEY_A1), &chat("m", 1), &[]).await;
    assert_eq!(num(&r, OTPD), 1_000_000 - 10 - 40 - 1);
    r.text().await.unwrap();

    // A stream in flight at shutdown finishes.
    let mut body = chat("m", 20);
    body["stream"] = json!(true);
    let mut r = post(&c, &url, Some(KEY_A1), &body, &[("x-mock-chunk-delay-ms", "50")]).await;
    let first = r.chunk().await.unwrap().unwrap();
    let stopper = tokio::task::spawn_blocking(move || s.terminate());
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("data: [DONE]"), "the stream was cut: {text}");
    let (status, _stderr) = stopper.await.unwrap();
    assert!(status.success(), "{status}");
}

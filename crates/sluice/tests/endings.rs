//! How a request ends, end to end: the real `sluice serve` binary in front
//! of the mock upstream. An upstream that breaks a stream off, a client that
//! hangs up on a completion, a `max_tokens` above `[tokens] max_output`:
//! what the client receives, and what the next response's headers show was
//! charged (crates/sluice-gateway/src/reservation.rs has the table).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::json;

const KEY: &str = "sk-chaos";

/// A tenant `t` with [`KEY`], output tokens and requests per day counted to
/// the token in the headers, and `extra` (more sections).
fn day_policy(mock: &sluice_mock::MockServer, extra: &str) -> String {
    format!(
        r#"
[headers]
families = ["requests-day", "output-tokens-day"]

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
{extra}
{}
[tenants.t]
[[tenants.t.keys]]
hash = "{}"
"#,
        upstream_section(mock),
        key_hash(KEY)
    )
}

const OTPD: &str = "x-ratelimit-remaining-output-tokens-day";
const RPD: &str = "x-ratelimit-remaining-requests-day";

/// (requests, output tokens) charged so far today, read from the headers of
/// one more request (which reserves 1 output token and one request).
async fn charged(url: &str) -> (i64, i64) {
    let r =
        post(&client(), url, Some(KEY), &chat("m", 1), &[("x-mock-completion-tokens", "1")]).await;
    assert_eq!(r.status(), 200);
    let out = (1000 - 1 - num(&r, RPD), 1_000_000 - 1 - num(&r, OTPD));
    r.text().await.unwrap();
    out
}

/// An upstream that breaks a stream off after its first chunk, or after
/// 300, at full speed (the chunks and the break come in one burst): the
/// client gets the status, the headers, every chunk, then an error event
/// and a clean end of the body (no empty reply, no broken transfer); the
/// charge is one request and what was generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_upstream_breaks_off_reaches_the_client_and_costs_what_was_generated() {
    let mock = mock().await;
    let s = Sluice::start(&day_policy(&mock, ""), &[("UPSTREAM_KEY", "k")]);
    let url = format!("{}/v1/chat/completions", s.url);
    let mut body = chat("m", 1000);
    body["stream"] = json!(true);
    let mut requests = 0;
    let mut tokens = 0;
    for k in [1, 300] {
        let abort = k.to_string();
        let r =
            post(&client(), &url, Some(KEY), &body, &[("x-mock-abort-after-chunks", &abort)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert!(has(&r, RPD), "the rate-limit headers: {:?}", r.headers());
        let text = r.text().await.expect("a whole body, ended cleanly");
        assert_eq!(text.matches("tok ").count(), k, "every chunk generated: {text}");
        assert!(text.ends_with(
            "data: {\"error\":{\"message\":\"The upstream model server broke off the stream; the response is incomplete.\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n"
        ), "ends with the error event: {text}");
        assert!(!text.contains("[DONE]"), "{text}");
        requests += 1;
        tokens += k as i64;
        assert_eq!(charged(&url).await, (requests, tokens), "after a break after {k}");
        requests += 1;
        tokens += 1;
    }
    assert_eq!(mock.stats.streams_aborted(), 2);
}

/// Sends a request on a raw connection, reads the response head, and hangs
/// up without reading the body.
fn hang_up_after_the_head(
    base: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> String {
    let addr = base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    c.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    drop(c);
    String::from_utf8(head).unwrap()
}

/// A client that hangs up on a non-streamed completion right after the
/// response head, while the (large) body is still on its way: the gateway
/// reads the upstream's body on, in the background, and charges the usage
/// it reports (200,000 output tokens, not the 10 reserved, nor nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_on_a_completion_is_charged_the_upstreams_usage() {
    let mock = mock().await;
    let s = Sluice::start(&day_policy(&mock, ""), &[("UPSTREAM_KEY", "k")]);
    let url = format!("{}/v1/chat/completions", s.url);
    let base = s.url.clone();
    let head = tokio::task::spawn_blocking(move || {
        hang_up_after_the_head(&base, &chat("m", 10), &[("x-mock-completion-tokens", "200000")])
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Each look costs one request and one token: `probes` so far.
    let mut probes = 0;
    loop {
        let (requests, tokens) = charged(&url).await;
        let (requests, tokens) = (requests - probes, tokens - probes);
        if tokens >= 200_000 {
            assert_eq!((requests, tokens), (1, 200_000), "the upstream's usage, once");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "charged {tokens} output tokens");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `max_tokens` above `[tokens] max_output` is reserved whole (the
/// upstream may generate that much); one that no limit could admit is
/// refused as too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_tokens_above_max_output_is_reserved_whole() {
    let mock = mock().await;
    let extra = "[tokens]\nmax_output = 100\n\n[[limits]]\nname = \"otpm\"\nmetric = \"output_tokens\"\namount = 10000\nwindow = \"1m\"\n";
    let s = Sluice::start(&day_policy(&mock, extra), &[("UPSTREAM_KEY", "k")]);
    let url = format!("{}/v1/chat/completions", s.url);
    let r =
        post(&client(), &url, Some(KEY), &chat("m", 5000), &[("x-mock-completion-tokens", "7")])
            .await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, OTPD), 1_000_000 - 5000, "5,000 reserved, not 100");
    r.text().await.unwrap();
    let r = post(&client(), &url, Some(KEY), &chat("m", 20_000), &[]).await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("Request too large"), "{body}");
    assert_eq!(charged(&url).await, (1, 7), "settled to the 7 generated; the refusal is free");
}

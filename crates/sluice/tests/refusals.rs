//! Cheap refusals: a tenant that is over a limit is refused before its body
//! is read (limits that do not need the model) or before its prompt is
//! counted (the model's own limits), so a 4 MB prompt costs it little; and a
//! prompt is never counted past what its limits could admit. The real
//! binary, over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

const KEY: &str = "sk-test-refusals";

fn policy(mock: &sluice_mock::MockServer, limits: &str) -> String {
    format!(
        r#"
[models."gpt-4o"]
[models."gpt-4o-mini"]
{limits}
{}
[tenants.t]
[[tenants.t.keys]]
id = "k"
hash = "{}"
"#,
        upstream_section(mock),
        key_hash(KEY)
    )
}

/// A chat request whose prompt is `n` letters without a space: the worst
/// case of a BPE tokenizer (tiktoken took 4.3 s of CPU on 4 MB).
fn letters_prompt(model: &str, n: usize) -> serde_json::Value {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let text: String = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 10})
}

/// CPU time (user + system) the process has used, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split(' ').skip(11).take(2).map(|v| v.parse().unwrap()).collect();
    // Clock ticks of 10 ms (USER_HZ = 100 on Linux).
    (f[0] + f[1]) * 10
}

/// Sends `body` `n` times; every answer must be a 429 whose message
/// contains `says`. The CPU the server spent, per request, in µs.
async fn cpu_per_refusal(
    s: &Sluice,
    url: &str,
    body: &serde_json::Value,
    n: u64,
    says: &str,
) -> u64 {
    let c = client();
    let bytes = serde_json::to_vec(body).unwrap();
    let before = cpu_ms(s.pid());
    for i in 0..n {
        let r = c
            .post(url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "request {i}");
        assert!(r.headers().contains_key("retry-after"));
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "request {i}: {text}");
    }
    (cpu_ms(s.pid()) - before) * 1000 / n
}

/// Tenant-wide requests per minute: once refused, the tenant's 4 MB
/// prompts are refused before their bodies are read, for a small bounded
/// CPU cost each; the 429 says which limit and when, without a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rpm_is_refused_before_its_body_is_read() {
    let mock = mock().await;
    let limits = r#"
[[limits]]
name = "rpm"
metric = "requests"
amount = 1
window = "1m"
"#;
    let s = Sluice::start(&policy(&mock, limits), &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    assert_eq!(post(&c, &url, Some(KEY), &chat("gpt-4o", 5), &[]).await.status(), 200);
    let r = post(&c, &url, Some(KEY), &chat("gpt-4o", 5), &[]).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("Rate limit reached for gpt-4o in organization t"));

    let big = letters_prompt("gpt-4o", 4_000_000);
    let says = "Rate limit reached in organization t on requests per min (RPM): Limit 1, Used 1.";
    let us = cpu_per_refusal(&s, &url, &big, 10, says).await;
    eprintln!("CPU per 429 of a 4 MB prompt, refused before its body: {us} µs");
    // Reading the body and counting its tokens cost seconds of CPU per 429;
    // refused from the head (the body read and dropped), a few milliseconds
    // even in a debug build.
    assert!(us < 20_000, "{us} µs of CPU per refused 4 MB request");
    assert_eq!(mock.stats.requests(), 1, "nothing refused reached the upstream");
}

/// A limit of one model: a refused tenant's next request for that model
/// is refused before its prompt is counted, while its other models are
/// still served (a refusal never spreads past the limit that made it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_limit_refuses_before_counting_and_spares_other_models() {
    let mock = mock().await;
    // Prompts counted exactly, however long: what the refusal saves is the
    // whole count.
    let limits = r#"
[tokens]
exact_prompt_bytes = 8_388_608

[[limits]]
name = "model-rpm"
metric = "requests"
amount = 1
window = "1m"
by = ["model"]

[[limits]]
name = "rpm"
metric = "requests"
amount = 100
window = "1m"
"#;
    let s = Sluice::start(&policy(&mock, limits), &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    assert_eq!(post(&c, &url, Some(KEY), &chat("gpt-4o", 5), &[]).await.status(), 200);
    assert_eq!(post(&c, &url, Some(KEY), &chat("gpt-4o", 5), &[]).await.status(), 429);
    // Another model: its own limit has room, the tenant's too.
    let r = post(&c, &url, Some(KEY), &chat("gpt-4o-mini", 5), &[]).await;
    assert_eq!(r.status(), 200, "another model is not refused");

    let big = letters_prompt("gpt-4o", 4_000_000);
    let says = "Rate limit reached for gpt-4o in organization t on requests per min (RPM): Limit 1, Used 1";
    let us = cpu_per_refusal(&s, &url, &big, 5, says).await;
    eprintln!("CPU per 429 of a 4 MB prompt, refused before counting: {us} µs");
    // Counting 4 MB of letters exactly takes most of a second (the
    // tokenizer is optimized in test builds too); reading and parsing it, a
    // few tens of milliseconds.
    assert!(us < 200_000, "{us} µs of CPU per refused 4 MB request");
    assert_eq!(mock.stats.requests(), 2);
}

/// A prompt larger than any limit of its request could admit is refused as
/// too large, and its count stops there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_past_every_limit_is_too_large_and_counted_no_further() {
    let mock = mock().await;
    let limits = r#"
[[limits]]
name = "tpm"
metric = "tokens"
amount = 1000
window = "1m"
"#;
    let s = Sluice::start(&policy(&mock, limits), &[("UPSTREAM_KEY", "k")]);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url);
    // 40 KB of letters: about 20,000 tokens, counted exactly (under 64 KiB)
    // but only as far as the limit's 1,000 less the 10 of output.
    let r = post(&c, &url, Some(KEY), &letters_prompt("gpt-4o", 40_000), &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let text = r.text().await.unwrap();
    assert!(text.contains("Request too large for gpt-4o in organization t on tokens per min (TPM): Limit 1000, Requested "), "{text}");
    let requested: u64 = text
        .split("Requested ")
        .nth(1)
        .and_then(|t| t.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((991..1100).contains(&requested), "counting stopped near the ceiling: {requested}");
    assert_eq!(mock.stats.requests(), 0);
}

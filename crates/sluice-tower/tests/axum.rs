//! The axum example (`examples/axum.rs`) served over loopback HTTP, with a
//! real client: admission and its headers, the 429 that never reaches the
//! service, settlement with the usage the service reported, tenants apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;

#[path = "../examples/axum.rs"]
#[allow(dead_code)]
mod example;

/// Serves `app` on a free loopback port.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The example's service behind its limits, counting the requests that
/// reach the service.
fn counted_app() -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let counting = axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            seen.fetch_add(1, Ordering::SeqCst);
            next.run(req)
        },
    );
    (example::routes().layer(counting).layer(example::limits().unwrap()), calls)
}

async fn summarize(addr: SocketAddr, tenant: &str, text: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}/summarize"))
        .header("x-tenant", tenant)
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn an_admitted_request_gets_its_answer_and_the_rate_limit_headers() {
    let addr = serve(example::app().unwrap()).await;
    let r = summarize(addr, "acme", "Sluice counts requests and tokens").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some(3));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some(2));
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), Some(1_000));
    // Reserved: 33 bytes -> at most 17 words in, 10 out.
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some(1_000 - 17 - 10));
    assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
    assert_eq!(r.text().await.unwrap(), "Sluice counts requests and tokens");
}

#[tokio::test]
async fn the_request_past_the_limit_is_refused_without_reaching_the_service() {
    let (app, calls) = counted_app();
    let addr = serve(app).await;
    for left in [2, 1, 0] {
        let r = summarize(addr, "acme", "one two three").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some(left));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let r = summarize(addr, "acme", "one two three").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some(3));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some(0));
    let wait_ms = header(&r, "retry-after-ms").expect("retry-after-ms");
    assert!((1..=60_000).contains(&wait_ms), "{wait_ms}");
    let wait_s = header(&r, "retry-after").expect("retry-after");
    assert!((1..=60).contains(&wait_s), "{wait_s}");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Rate limit reached for summarizer in organization acme on requests per min (RPM): Limit 3, Used 3, Requested 1."
        ),
        "{message}"
    );
    // The refusal never reached the service.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_is_settled_with_the_usage_reported_when_its_response_ends() {
    let addr = serve(example::app().unwrap()).await;
    // 1,180 bytes: 590 input tokens reserved, and 10 output: 600 of the
    // minute's 1,000. The text has 236 words: 246 used.
    let text = "word ".repeat(236);
    let first = summarize(addr, "acme", &text).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-remaining-tokens"), Some(400));
    assert_eq!(first.text().await.unwrap().split(' ').count(), 10);

    // Refunded to 246 when the first response ended: the second fits
    // (without the refund, 400 left could not hold another 600).
    let second = summarize(addr, "globex", "a").await;
    assert_eq!(second.status(), 200, "another tenant is not affected");
    let second = summarize(addr, "acme", &text).await;
    assert_eq!(second.status(), 200);
    let left = header(&second, "x-ratelimit-remaining-tokens").unwrap();
    // 1,000 - 246 - 600, and what the minute gave back meanwhile (17 a
    // second).
    assert!((154..300).contains(&left), "{left}");
}

#[tokio::test]
async fn two_tenants_do_not_share_counters() {
    let addr = serve(example::app().unwrap()).await;
    for _ in 0..3 {
        assert_eq!(summarize(addr, "acme", "one two").await.status(), 200);
    }
    assert_eq!(summarize(addr, "acme", "one two").await.status(), 429);
    let r = summarize(addr, "globex", "one two").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some(2));
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some(1_000 - 4 - 10));
}

#[tokio::test]
async fn requests_the_classifier_refuses_never_reach_the_service() {
    let (app, calls) = counted_app();
    let addr = serve(app).await;
    let r = summarize(addr, "nobody", "one two").await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let r = summarize(addr, "acme", &"a".repeat(64 * 1024 + 1)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Nothing was counted.
    let r = summarize(addr, "acme", "one two").await;
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some(2));
}

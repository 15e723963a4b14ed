#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_store::MemoryStore;

use super::*;
use crate::testutil::*;

async fn send(
    h: &Harness<MemoryStore>,
    method: Method,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = handle(&h.svc, req).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

async fn check(h: &Harness<MemoryStore>, body: Value) -> Value {
    let (status, v) = send(h, Method::POST, "/v1/decisions/check", &body.to_string(), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

async fn settle(h: &Harness<MemoryStore>, body: Value) -> bool {
    let (status, v) = send(h, Method::POST, "/v1/decisions/settle", &body.to_string(), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["settled"].as_bool().unwrap()
}

fn limit<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

fn remaining(v: &Value, name: &str) -> u64 {
    limit(v, name)["remaining"].as_u64().unwrap()
}

fn acme(input: u64, output: u64) -> Value {
    json!({"tenant": "acme", "model": "m", "input_tokens": input, "output_tokens": output})
}

/// What the next request would see, after `f`: tokens used per day.
async fn tpd_used(h: &Harness<MemoryStore>) -> u64 {
    // A zero-token check on another model still shows the tenant-wide day.
    let v = check(h, json!({"tenant": "acme", "model": "n"})).await;
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    assert!(settle(h, json!({"reservation_id": id, "requests": 0})).await);
    limit(&v, "tpd")["used"].as_u64().unwrap()
}

#[tokio::test]
async fn check_reserves_and_returns_headers() {
    let h = harness();
    let v = check(&h, acme(100, 400)).await;
    assert_eq!(v["admitted"], true);
    assert_eq!(v["outcome"], "admitted");
    let id = v["reservation_id"].as_str().unwrap();
    assert!(id.parse::<ReservationId>().is_ok(), "{id}");
    assert_eq!(remaining(&v, "m/tpm"), 500);
    assert_eq!(remaining(&v, "m/rpm"), 2);
    assert_eq!(limit(&v, "m/rpm")["reset_ms"], 20_000);
    assert_eq!(limit(&v, "m/rpm")["fits"], true);
    assert_eq!(limit(&v, "dry-run")["shadow"], true);
    assert_eq!(v["headers"]["x-ratelimit-remaining-tokens"], "500");
    assert_eq!(v["headers"]["x-ratelimit-limit-requests"], "3");
    assert!(v.get("error").is_none());
}

#[tokio::test]
async fn settle_with_less_refunds() {
    let h = harness();
    let v = check(&h, acme(100, 400)).await;
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(remaining(&v, "tpd"), 4_500);
    assert!(
        settle(&h, json!({"reservation_id": id, "input_tokens": 100, "output_tokens": 50})).await
    );
    assert_eq!(tpd_used(&h).await, 150, "350 tokens came back");
}

#[tokio::test]
async fn settle_with_more_is_debt() {
    let h = harness();
    let v = check(&h, acme(100, 100)).await;
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    assert!(
        settle(&h, json!({"reservation_id": id, "input_tokens": 100, "output_tokens": 900})).await
    );
    assert_eq!(tpd_used(&h).await, 1_000, "800 more than reserved is charged");
    // m's tokens per minute are overdrawn too: the next request waits.
    let v = check(&h, acme(10, 10)).await;
    assert_eq!(v["admitted"], false);
    assert_eq!(v["outcome"], "limited");
    assert!(v["reservation_id"].is_null());
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "tokens");
    assert!(v["headers"]["retry-after"].is_string());
}

/// Cached and reasoning tokens are charged unless `[tokens]` excludes
/// them; a part larger than its total is refused.
#[tokio::test]
async fn settle_with_cached_and_reasoning_tokens() {
    for (tokens, used) in [
        ("", 600),
        ("[tokens]\ncached_input = \"exclude\"\n", 520),
        ("[tokens]\nreasoning = \"exclude\"\n", 570),
        ("[tokens]\ncached_input = \"exclude\"\nreasoning = \"exclude\"\n", 490),
    ] {
        let h = harness_with(&format!("{}{tokens}", policy()), None);
        let v = check(&h, acme(100, 500)).await;
        let id = v["reservation_id"].as_str().unwrap().to_owned();
        let (status, e) = send(
            &h,
            Method::POST,
            "/v1/decisions/settle",
            &json!({"reservation_id": id, "input_tokens": 100, "cached_tokens": 101}).to_string(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("cached_tokens"), "{e}");
        let body = json!({"reservation_id": id, "input_tokens": 100, "cached_tokens": 80,
                          "output_tokens": 500, "reasoning_tokens": 30});
        assert!(settle(&h, body).await);
        assert_eq!(tpd_used(&h).await, used, "{tokens}");
    }
}

#[tokio::test]
async fn settle_twice_has_no_effect() {
    let h = harness();
    let v = check(&h, acme(100, 400)).await;
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    assert!(
        settle(&h, json!({"reservation_id": id, "input_tokens": 100, "output_tokens": 0})).await
    );
    assert!(
        !settle(&h, json!({"reservation_id": id, "input_tokens": 0, "output_tokens": 0})).await
    );
    assert!(
        !settle(&h, json!({"reservation_id": id, "input_tokens": 5000, "output_tokens": 0})).await
    );
    assert_eq!(tpd_used(&h).await, 100, "only the first settlement counted");
    let text = h.svc.metrics().encode();
    assert!(text.contains(r#"sluice_settlements_total{outcome="unknown"} 2"#), "{text}");
}

#[tokio::test]
async fn an_unsettled_reservation_expires_and_keeps_its_charge() {
    let h = harness();
    let v = check(&h, acme(100, 400)).await;
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    // The policy's lease is a minute.
    h.advance(Duration::from_secs(61));
    assert_eq!(tpd_used(&h).await, 500, "the expired reservation keeps its charge");
    assert!(
        !settle(&h, json!({"reservation_id": id, "input_tokens": 0, "output_tokens": 0})).await,
        "too late to settle"
    );
    assert_eq!(tpd_used(&h).await, 500);
}

#[tokio::test]
async fn api_keys_and_domains() {
    let h = harness();
    let v = check(&h, json!({"api_key": KEY_OTHER, "model": "n", "domain": "edge"})).await;
    assert_eq!(v["admitted"], true);
    let (status, v) = send(
        &h,
        Method::POST,
        "/v1/decisions/check",
        &json!({"api_key": "sk-nope"}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["param"], "api_key");
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let h = harness_with(&policy(), Some("s3cret"));
    let body = acme(1, 1).to_string();
    let (status, v) = send(&h, Method::POST, "/v1/decisions/check", &body, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "missing_api_key");
    let (status, v) = send(&h, Method::POST, "/v1/decisions/check", &body, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (status, _) = send(&h, Method::POST, "/v1/decisions/settle", "{}", Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, v) = send(&h, Method::POST, "/v1/decisions/check", &body, Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Metrics and health need no token.
    let (status, _) = send(&h, Method::GET, "/metrics", "", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&h, Method::GET, "/healthz", "", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_refused_and_charges_nothing() {
    let h = harness();
    let cases: Vec<(&str, &str, StatusCode, &str)> = vec![
        ("/v1/decisions/check", "{", StatusCode::BAD_REQUEST, "We could not parse the JSON body"),
        ("/v1/decisions/check", "[1]", StatusCode::BAD_REQUEST, "must be a JSON object"),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","tokens":5}"#,
            StatusCode::BAD_REQUEST,
            "unknown field `tokens`",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","input_tokens":-5}"#,
            StatusCode::BAD_REQUEST,
            "`input_tokens` must not be negative, got -5",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","output_tokens":1.5}"#,
            StatusCode::BAD_REQUEST,
            "`output_tokens` must be a whole number",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","output_tokens":"5"}"#,
            StatusCode::BAD_REQUEST,
            "`output_tokens` must be a whole number",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","input_tokens":999999999999}"#,
            StatusCode::BAD_REQUEST,
            "is more than one decision may carry",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","input_tokens":18446744073709551615,"output_tokens":18446744073709551615}"#,
            StatusCode::BAD_REQUEST,
            "is more than one decision may carry",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":7}"#,
            StatusCode::BAD_REQUEST,
            "`tenant` must be a string",
        ),
        ("/v1/decisions/check", r#"{"model":"m"}"#, StatusCode::BAD_REQUEST, "no tenant"),
        (
            "/v1/decisions/check",
            r#"{"tenant":"nobody"}"#,
            StatusCode::BAD_REQUEST,
            "tenant `nobody` is not known",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","model":"gpt-9"}"#,
            StatusCode::NOT_FOUND,
            "The model `gpt-9` does not exist",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","endpoint":"images"}"#,
            StatusCode::BAD_REQUEST,
            "endpoint `images` is not known",
        ),
        (
            "/v1/decisions/check",
            r#"{"tenant":"acme","domain":"nope"}"#,
            StatusCode::BAD_REQUEST,
            "unknown domain `nope`",
        ),
        (
            "/v1/decisions/settle",
            r#"{"reservation_id":"rsv_12"}"#,
            StatusCode::BAD_REQUEST,
            "is not a reservation id",
        ),
        (
            "/v1/decisions/settle",
            r#"{"input_tokens":1}"#,
            StatusCode::BAD_REQUEST,
            "give the `reservation_id`",
        ),
        (
            "/v1/decisions/settle",
            r#"{"reservation_id":"rsv_00000000000000000000000000000001","requests":2}"#,
            StatusCode::BAD_REQUEST,
            "`requests` is 1",
        ),
        (
            "/v1/decisions/settle",
            r#"{"reservation_id":"rsv_00000000000000000000000000000001","output_tokens":-1}"#,
            StatusCode::BAD_REQUEST,
            "must not be negative",
        ),
    ];
    for (path, body, want_status, want) in cases {
        let (status, v) = send(&h, Method::POST, path, body, None).await;
        assert_eq!(status, want_status, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("{body}: {v}"));
        assert!(msg.contains(want), "{body}: {msg:?} should contain {want:?}");
    }
    let big = format!(r#"{{"tenant":"{}"}}"#, "a".repeat(MAX_BODY));
    let (status, v) = send(&h, Method::POST, "/v1/decisions/check", &big, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (status, v) = send(&h, Method::GET, "/v1/decisions/check", "", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    let (status, v) = send(&h, Method::POST, "/v1/nope", "{}", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "unknown_url");
    // Nothing was charged.
    let v = check(&h, acme(0, 0)).await;
    assert_eq!(remaining(&v, "m/rpm"), 2);
    assert_eq!(limit(&v, "tpd")["used"], 0);
    let text = h.svc.metrics().encode();
    assert!(
        text.contains(r#"sluice_decisions_total{api="http",domain="sluice",outcome="invalid"} 13"#),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_by_domain_limit_and_outcome() {
    let h = harness();
    for _ in 0..4 {
        check(&h, acme(1, 1)).await;
    }
    let (status, v) = send(&h, Method::GET, "/metrics", "", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = v.as_str().unwrap();
    for line in [
        r#"sluice_decisions_total{api="http",domain="sluice",outcome="admitted"} 3"#,
        r#"sluice_decisions_total{api="http",domain="sluice",outcome="limited"} 1"#,
        r#"sluice_decision_limits_total{domain="sluice",limit="m/rpm",outcome="admitted"} 3"#,
        r#"sluice_decision_limits_total{domain="sluice",limit="m/rpm",outcome="limited"} 1"#,
        r#"sluice_decision_limits_total{domain="sluice",limit="dry-run",outcome="shadow_limited"} 3"#,
        r#"sluice_decision_duration_seconds_count{api="http"} 4"#,
    ] {
        assert!(text.contains(line), "no {line} in\n{text}");
    }
}

#[tokio::test]
async fn decisions_are_in_the_usage_history() {
    use sluice_core::Clock;
    use sluice_store::{History, HistorySettings};

    let h = harness();
    let history = Arc::new(History::local(HistorySettings::default(), Arc::new(h.clock.clone())));
    h.svc.served.set_history(history.clone());
    let start = h.clock.now();
    for _ in 0..3 {
        assert_eq!(check(&h, acme(10, 10)).await["outcome"], "admitted");
    }
    assert_eq!(check(&h, acme(10, 10)).await["outcome"], "limited");
    let c = history.totals("acme", start);
    assert_eq!((c.requests, c.limited, c.limited_by("m/rpm")), (3, 1, 1));
    assert_eq!(history.models("acme").iter().map(|m| &**m).collect::<Vec<_>>(), ["m"]);
}

/// `user` names the end user: each gets its own budget inside the
/// tenant's, the 429 says it is the end user's, and an end user that is
/// too long, of the wrong type, or missing when required is a 400 naming
/// `user` that charges nothing.
#[tokio::test]
async fn end_users_have_budgets_of_their_own() {
    let h = harness_with(&policy_with_end_users("max_length = 8"), None);
    let as_user = |user: Value| json!({"tenant": "acme", "model": "n", "user": user});
    for _ in 0..2 {
        let v = check(&h, as_user(json!("alice"))).await;
        assert_eq!(v["admitted"], true, "{v}");
    }
    let v = check(&h, as_user(json!("alice"))).await;
    assert_eq!(v["admitted"], false, "{v}");
    assert_eq!(limit(&v, "end-user-rpm")["fits"], false);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("on requests per min (RPM) per end user: Limit 2"), "{message}");
    assert!(!message.contains("alice"), "{message}");
    let v = check(&h, as_user(json!("bob"))).await;
    assert_eq!(v["admitted"], true, "{v}");
    assert_eq!(remaining(&v, "end-user-rpm"), 1);
    // No user: the end user "", one budget for all such requests.
    let v = check(&h, json!({"tenant": "acme", "model": "n"})).await;
    assert_eq!(remaining(&v, "end-user-rpm"), 1);

    let body = |user: Value| as_user(user).to_string();
    let (status, v) =
        send(&h, Method::POST, "/v1/decisions/check", &body(json!("123456789")), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "user");
    assert_eq!(v["error"]["message"], "The end user is too long: `user` may be at most 8 bytes.");
    let (status, v) = send(&h, Method::POST, "/v1/decisions/check", &body(json!(7)), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "user");
    // Bob's budget is as it was: the refusals charged nothing.
    let v = check(&h, as_user(json!("bob"))).await;
    assert_eq!(remaining(&v, "end-user-rpm"), 0);

    let h = harness_with(&policy_with_end_users("required = true"), None);
    for no_user in [json!({"tenant": "acme", "model": "n"}), as_user(json!(""))] {
        let (status, v) =
            send(&h, Method::POST, "/v1/decisions/check", &no_user.to_string(), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["param"], "user");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with("This API requires an end user"),
            "{v}"
        );
    }
    assert_eq!(check(&h, as_user(json!("carol"))).await["admitted"], true);
}

use sluice_core::{Clock, Cost, FakeClock, HeaderProfile};

use super::*;
use crate::testutil::{Store, calendar, limit, policy, rolling};

fn json(e: &ApiError) -> serde_json::Value {
    serde_json::from_slice(&e.body()).unwrap()
}

fn ten_am() -> Instant {
    FakeClock::at("2026-03-02T10:00:00Z").now()
}

#[test]
fn body_shape() {
    let e = ApiError::bad_request("Bad \"thing\"\n<here>", Some("messages[0]".into()));
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        String::from_utf8(e.body()).unwrap(),
        r#"{"error":{"message":"Bad \"thing\"\n<here>","type":"invalid_request_error","param":"messages[0]","code":null}}"#
    );
    assert_eq!(ApiError::CONTENT_TYPE, "application/json");
}

#[test]
fn request_errors_become_400s() {
    let e = crate::request::parse(
        crate::request::EndpointKind::ChatCompletions,
        br#"{"model":"m","messages":[],"max_tokens":"x"}"#,
    )
    .unwrap_err();
    let api = ApiError::from(&e);
    assert_eq!(api.status, StatusCode::BAD_REQUEST);
    let v = json(&api);
    assert_eq!(v["error"]["param"], "max_tokens");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("Invalid type for 'max_tokens'"));
    let api = ApiError::from(&RequestError::MissingModel);
    assert_eq!(json(&api)["error"]["message"], "You must provide a model parameter.");
}

#[test]
fn fixed_errors() {
    let cases = [
        (ApiError::invalid_api_key(), 401, "invalid_request_error", "invalid_api_key"),
        (ApiError::missing_api_key(), 401, "invalid_request_error", "missing_api_key"),
        (ApiError::model_not_found("gpt-9"), 404, "invalid_request_error", "model_not_found"),
        (ApiError::unknown_url("POST", "/v1/nope"), 404, "invalid_request_error", "unknown_url"),
        (ApiError::body_too_large(1 << 20), 413, "invalid_request_error", "request_too_large"),
        (ApiError::upstream_error(), 502, "server_error", "upstream_error"),
        (ApiError::upstream_timeout(), 504, "server_error", "upstream_timeout"),
        (ApiError::store_unavailable(), 503, "server_error", "rate_limit_store_unavailable"),
        (ApiError::insufficient_quota(), 429, "insufficient_quota", "insufficient_quota"),
    ];
    for (e, status, kind, code) in cases {
        assert_eq!(e.status.as_u16(), status, "{e:?}");
        let v = json(&e);
        assert_eq!(v["error"]["type"], kind);
        assert_eq!(v["error"]["code"], code);
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        json(&ApiError::invalid_api_key())["error"]["message"],
        "Incorrect API key provided."
    );
    assert_eq!(
        json(&ApiError::model_not_found("gpt-9"))["error"]["message"],
        "The model `gpt-9` does not exist or you do not have access to it."
    );
    assert_eq!(json(&ApiError::model_not_found("gpt-9"))["error"]["param"], "model");
    assert_eq!(
        json(&ApiError::unknown_url("POST", "/v1/nope"))["error"]["message"],
        "Invalid URL (POST /v1/nope)"
    );
}

#[test]
fn echoed_strings_are_cut() {
    let long = "é".repeat(1000);
    let e = ApiError::model_not_found(&long);
    assert!(e.message.len() < 400, "{}", e.message.len());
    assert!(e.message.contains('…'));
}

#[test]
fn rate_limit_messages_follow_openai() {
    let p = policy(
        vec![
            limit("rpm", Metric::Requests, 3, rolling("1m")),
            limit("tpm", Metric::Tokens, 30_000, rolling("1m")),
            limit("rpd", Metric::Requests, 20, calendar("1d")),
        ],
        HeaderProfile::default(),
    );
    let now = ten_am();
    let mut store = Store::default();
    for _ in 0..3 {
        assert!(store.admit(&p, Cost::tokens(10, 10), now).is_admitted());
    }
    let d = store.admit(&p, Cost::tokens(10, 10), now);
    let e = ApiError::rate_limited(&d, &p, "gpt-4o", "org-acme", now).unwrap();
    assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        String::from_utf8(e.body()).unwrap(),
        r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-acme on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
    );

    // Tokens: the TPM limit denies.
    let mut store = Store::default();
    assert!(store.admit(&p, Cost::tokens(29_000, 937), now).is_admitted());
    let d = store.admit(&p, Cost::tokens(300, 85), now);
    let e = ApiError::rate_limited(&d, &p, "gpt-4o", "org-acme", now).unwrap();
    let v = json(&e);
    assert_eq!(
        v["error"]["message"],
        "Rate limit reached for gpt-4o in organization org-acme on tokens per min (TPM): Limit 30000, Used 29937, Requested 385. Please try again in 644ms."
    );
    assert_eq!(v["error"]["type"], "tokens");
    assert!(
        ApiError::rate_limited(
            &store.admit(&p, Cost::REQUEST, Instant(now.0 + 60_000_000_000)),
            &p,
            "m",
            "t",
            now
        )
        .is_none()
    );
}

#[test]
fn daily_limit_message() {
    let p =
        policy(vec![limit("rpd", Metric::Requests, 20, calendar("1d"))], HeaderProfile::default());
    let now = FakeClock::at("2026-03-02T20:57:55Z").now();
    let mut store = Store::default();
    for _ in 0..20 {
        store.admit(&p, Cost::REQUEST, now);
    }
    let d = store.admit(&p, Cost::REQUEST, now);
    let e = ApiError::rate_limited(&d, &p, "Meta-Llama-3.3-70B-Instruct", "org-acme", now).unwrap();
    assert_eq!(
        e.message,
        "Rate limit reached for Meta-Llama-3.3-70B-Instruct in organization org-acme on requests per day (RPD): Limit 20, Used 20, Requested 1. Please try again in 3h2m5s."
    );
}

#[test]
fn too_large_messages() {
    let p =
        policy(vec![limit("tpm", Metric::Tokens, 30_000, rolling("1m"))], HeaderProfile::default());
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::tokens(30_000, 601), now);
    let e = ApiError::rate_limited(&d, &p, "gpt-4o", "org-acme", now).unwrap();
    let v = json(&e);
    assert_eq!(
        v["error"]["message"],
        "Request too large for gpt-4o in organization org-acme on tokens per min (TPM): Limit 30000, Requested 30601. The input or output tokens must be reduced in order to run successfully."
    );
    assert_eq!(v["error"]["type"], "tokens");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let p = policy(
        vec![limit("otph", Metric::OutputTokens, 1_000, rolling("1h"))],
        HeaderProfile::default(),
    );
    let d = Store::default().admit(&p, Cost::tokens(1, 4_000), now);
    let e = ApiError::rate_limited(&d, &p, "gpt-4o", "org-acme", now).unwrap();
    assert_eq!(
        e.message,
        "Request too large for gpt-4o in organization org-acme on output tokens per hour (OTPH): Limit 1000, Requested 4000. The input or output tokens must be reduced in order to run successfully."
    );
}

/// A limit of each end user's own: the message says so (never naming the
/// end user).
#[test]
fn per_end_user_messages() {
    let mut rpm = limit("end-user-rpm", Metric::Requests, 2, rolling("1m"));
    rpm.by = vec![Fact::User];
    let p = policy(vec![rpm], HeaderProfile::default());
    let now = ten_am();
    let mut store = Store::default();
    for _ in 0..2 {
        assert!(store.admit(&p, Cost::REQUEST, now).is_admitted());
    }
    let d = store.admit(&p, Cost::REQUEST, now);
    let e = ApiError::rate_limited(&d, &p, "gpt-4o", "org-acme", now).unwrap();
    assert_eq!(
        e.message,
        "Rate limit reached for gpt-4o in organization org-acme on requests per min (RPM) per end user: Limit 2, Used 2, Requested 1. Please try again in 30s."
    );
    let mut conc = limit("end-user-concurrent", Metric::Concurrent, 1, None);
    conc.by = vec![Fact::User];
    let p = policy(vec![conc], HeaderProfile::default());
    let mut store = Store::default();
    assert!(store.admit(&p, Cost::REQUEST, now).is_admitted());
    let d = store.admit(&p, Cost::REQUEST, now);
    let e = ApiError::rate_limited(&d, &p, "gpt-4o", "org-acme", now).unwrap();
    assert!(
        e.message.starts_with("Too many concurrent requests per end user for gpt-4o in organization org-acme: Limit 1, In flight 1."),
        "{}",
        e.message
    );
}

#[test]
fn concurrency_messages() {
    let p = policy(vec![limit("conc", Metric::Concurrent, 1, None)], HeaderProfile::default());
    let now = ten_am();
    let mut store = Store::default();
    assert!(store.admit(&p, Cost::REQUEST, now).is_admitted());
    let d = store.admit(&p, Cost::REQUEST, now);
    let e = ApiError::rate_limited(&d, &p, "gpt-4o", "org-acme", now).unwrap();
    assert_eq!(
        e.message,
        "Too many concurrent requests for gpt-4o in organization org-acme: Limit 1, In flight 1. Please try again in 1s."
    );
    assert_eq!(json(&e)["error"]["type"], "requests");
}

#[test]
fn phrases() {
    let p = policy(
        vec![
            limit("a", Metric::Requests, 1, rolling("1m")),
            limit("b", Metric::InputTokens, 1, rolling("10s")),
            limit("c", Metric::Tokens, 1, calendar("1mo")),
            limit("d", Metric::Concurrent, 1, None),
        ],
        HeaderProfile::default(),
    );
    let got: Vec<String> = p.limits().map(|(_, l)| limit_phrase(l)).collect();
    assert_eq!(
        got,
        [
            "requests per min",
            "input tokens per 10 seconds",
            "tokens per month",
            "concurrent requests"
        ]
    );
}

/// The one mapping to an HTTP response: status, body, content type, and
/// `retry-after: 1` on a 503 only.
#[test]
fn the_response_of_an_error() {
    let busy = ApiError::busy();
    let r = busy.response(|b| b);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.body(), &busy.body());
    let missing = ApiError::missing_api_key().response(|b| b);
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(missing.headers().get("retry-after").is_none());
}

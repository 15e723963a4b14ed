//! End users inside a tenant, through the real binary over loopback: two
//! end users of one key each have their own 2 requests a minute (the one
//! that runs out gets a 429 that names the per-end-user limit, the other
//! is still served), named by the body's `user` or by a header the policy
//! names; and a policy that requires an end user refuses a request without
//! one with a 400 naming `user`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "sk-test-end-users-0000000000000001";

/// One tenant with one key: 100 requests a minute, 2 for each end user.
fn policy(mock: &sluice_mock::MockServer, end_users: &str) -> String {
    format!(
        r#"
[models."gpt-4o-mini"]

[[limits]]
name = "rpm"
metric = "requests"
amount = 100
window = "1m"

[[limits]]
name = "end-user-rpm"
metric = "requests"
amount = 2
window = "1m"
by = ["user"]

{end_users}
{}
[tenants.app]
[[tenants.app.keys]]
id = "app-key"
hash = "{}"
"#,
        upstream_section(mock),
        key_hash(KEY)
    )
}

/// A chat request, with `user` in the body if given.
fn chat_of(user: Option<&str>) -> Value {
    let mut body = chat("gpt-4o-mini", 5);
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    body
}

/// Sends a chat request; its status and body.
async fn send(s: &Sluice, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("{}/v1/chat/completions", s.url);
    let r = post(&client(), &url, Some(KEY), body, headers).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The per-end-user limit's 429: it names the limit as the end user's own,
/// and never the end user.
fn assert_end_users_429(status: u16, v: &Value, user: &str) {
    assert_eq!(status, 429, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Rate limit reached for gpt-4o-mini in organization app on requests per min (RPM) per end user: Limit 2, Used 2, Requested 1."
        ),
        "{message}"
    );
    assert!(user.is_empty() || !message.contains(user), "{message}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_end_user_named_in_the_body_has_its_own_budget() {
    let mock = mock().await;
    let s = Sluice::start(&policy(&mock, ""), &[("UPSTREAM_KEY", "k")]);
    for _ in 0..2 {
        let (status, v) = send(&s, &chat_of(Some("alice")), &[]).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = send(&s, &chat_of(Some("alice")), &[]).await;
    assert_end_users_429(status, &v, "alice");
    // Bob, of the same key, is still served.
    let (status, v) = send(&s, &chat_of(Some("bob")), &[]).await;
    assert_eq!(status, 200, "{v}");
    // Requests that name no end user share one budget of their own.
    for _ in 0..2 {
        assert_eq!(send(&s, &chat_of(None), &[]).await.0, 200);
    }
    let (status, v) = send(&s, &chat_of(None), &[]).await;
    assert_end_users_429(status, &v, "");
    // A `user` that is not a string is the client's mistake.
    let (status, v) =
        send(&s, &json!({"model": "gpt-4o-mini", "messages": [], "user": 7}), &[]).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "user");
    assert_eq!(mock.stats.requests(), 5, "only what was admitted reached the upstream");
    // `/v1/usage` shows the budget of the requests that name no end user:
    // end users are not kept, so theirs cannot be listed.
    let usage: Value = client()
        .get(format!("{}/v1/usage", s.url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows: Vec<&Value> = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["limit"] == "end-user-rpm")
        .collect();
    assert_eq!(rows.len(), 1, "{usage}");
    assert_eq!(rows[0]["partition"], json!({"user": ""}));
    assert_eq!(rows[0]["used"], 2);
    assert!(!usage.to_string().contains("alice"), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_the_policy_names_is_the_end_user() {
    let mock = mock().await;
    let s = Sluice::start(
        &policy(&mock, "[end_users]\nheader = \"x-end-user\"\n"),
        &[("UPSTREAM_KEY", "k")],
    );
    // The header decides; the body's `user` is not looked at.
    for body_user in ["bob", "carol"] {
        let (status, v) = send(&s, &chat_of(Some(body_user)), &[("x-end-user", "alice")]).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = send(&s, &chat_of(Some("dave")), &[("x-end-user", "alice")]).await;
    assert_end_users_429(status, &v, "alice");
    let (status, v) = send(&s, &chat_of(Some("alice")), &[("X-End-User", "bob")]).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_requires_an_end_user_refuses_requests_without_one() {
    let mock = mock().await;
    let s = Sluice::start(
        &policy(&mock, "[end_users]\nrequired = true\nmax_length = 16\n"),
        &[("UPSTREAM_KEY", "k")],
    );
    for body in [chat_of(None), chat_of(Some(""))] {
        let (status, v) = send(&s, &body, &[]).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "user");
        assert_eq!(
            v["error"]["message"],
            "This API requires an end user on every request: give `user` in the request body (the user of your application the request is made for)."
        );
    }
    let (status, v) = send(&s, &chat_of(Some("a-very-long-end-user-id")), &[]).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "user");
    assert_eq!(
        v["error"]["message"],
        "The end user is too long: `user` in the request body may be at most 16 bytes."
    );
    let (status, v) = send(&s, &chat_of(Some("alice")), &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(mock.stats.requests(), 1, "nothing refused reached the upstream");
}

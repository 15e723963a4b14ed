//! Per-key limits through the real binary: a key granted its own amount of a
//! limit split by key, through the CLI and the admin API over loopback, is
//! refused at that amount while the tenant's other keys go on; withdrawing
//! the grant restores the policy's amount; a rotated key keeps its grants;
//! and a request whose estimate is over a key's whole token budget is
//! refused before it reaches the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// `m`, a tenant-wide hour of requests, a per-key minute of 5 requests and
/// a per-key day of tokens so large that only keys granted less are
/// limited by it; the mock upstream and an admin API.
fn policy(mock: &sluice_mock::MockServer) -> String {
    format!(
        r#"
[models."m"]

[[limits]]
name = "tenant-rph"
metric = "requests"
amount = 1000
window = "1h"

[[limits]]
name = "key-rpm"
metric = "requests"
amount = 5
window = "1m"
by = ["key"]

[[limits]]
name = "key-tpd"
metric = "tokens"
amount = 1_000_000_000
window = "1d"
by = ["key"]
{}
[admin]
listen = "127.0.0.1:0"
token_env = "SLUICE_ADMIN_TOKEN"
"#,
        upstream_section(mock)
    )
}

async fn chat_as(s: &Sluice, key: &str, max_tokens: u64) -> reqwest::Response {
    post(
        &client(),
        &format!("{}/v1/chat/completions", s.url),
        Some(key),
        &chat("m", max_tokens),
        &[],
    )
    .await
}

/// The `error.message` of a refusal.
async fn refusal(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    v["error"]["message"].as_str().unwrap_or_default().to_owned()
}

/// Runs the `sluice` CLI against the admin API (off the async runtime).
async fn cli(admin: &str, args: &[&str]) -> (bool, String, String) {
    let admin = admin.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .env("SLUICE_ADMIN_URL", admin)
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Key `a` granted 2 RPM (CLI) is refused its third request of the minute,
/// naming the per-key limit, while key `b` of the same tenant still gets
/// 200; the keys table shows the grant; grants the policy cannot take are
/// refused with the reason; withdrawing the grant (CLI) gives `a` the
/// policy's 5 back; a rotated key keeps its grants; every write is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_grant_limits_it_alone_until_withdrawn() {
    let mock = mock().await;
    let env = [
        ("UPSTREAM_KEY", "k"),
        ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("RUST_LOG", "warn,sluice::audit=info"),
    ];
    let mut s = Sluice::start(&policy(&mock), &env);
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "acme"})).await;
    let (_, a) = ops.key("acme", json!({"id": "a"})).await;
    let (_, b) = ops.key("acme", json!({"id": "b"})).await;

    let (ok, out, err) = cli(&ops.base, &["keys", "grant", "acme", "a", "key-rpm", "2"]).await;
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("a ") && l.contains("key-rpm=2")), "{out}");
    for _ in 0..2 {
        assert_eq!(chat_as(&s, &a, 5).await.status(), 200);
    }
    let m = refusal(chat_as(&s, &a, 5).await).await;
    assert!(
        m.contains("in organization acme on requests per min (RPM): Limit 2, Used 2, Requested 1."),
        "{m}"
    );
    assert_eq!(chat_as(&s, &b, 5).await.status(), 200, "another key of the tenant goes on");
    let (ok, list, err) = cli(&ops.base, &["keys", "list", "acme"]).await;
    assert!(ok, "{err}");
    assert!(list.lines().any(|l| l.starts_with("a ") && l.contains("key-rpm=2")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("b ") && !l.contains("key-rpm")), "{list}");

    // What the policy cannot take is refused, with the reason.
    let bad = [
        ("tenant-rph", json!({"amount": 10}), "add `by = [\"key\"]`"),
        ("no-such-limit", json!({"amount": 10}), "no limit named `no-such-limit`"),
        ("key-rpm", json!({"amount": 0}), "at least 1"),
        ("key-rpm", json!({"amount": 10, "until": "2020-01-01"}), "in the past"),
    ];
    for (limit, body, want) in bad {
        let path = format!("/tenants/acme/keys/a/overrides/{limit}");
        let (st, v) = ops.call(Method::PUT, &path, Some(body)).await;
        assert_eq!(st, 400, "{limit}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{limit}: {msg:?} should say {want:?}");
    }
    let (st, _) = ops.call(Method::DELETE, "/tenants/acme/keys/b/overrides/key-rpm", None).await;
    assert_eq!(st, 404, "b has no grant to withdraw");
    let (st, _) = ops.call(Method::PUT, "/tenants/acme/keys/z/overrides/key-rpm", None).await;
    assert_eq!(st, 400, "no body");
    let (st, _) = ops
        .call(Method::PUT, "/tenants/acme/keys/z/overrides/key-rpm", Some(json!({"amount": 3})))
        .await;
    assert_eq!(st, 404, "no key z");

    // Withdrawn: back to the policy's 5 a minute (2 spent).
    let (ok, out, err) = cli(&ops.base, &["keys", "ungrant", "acme", "a", "key-rpm"]).await;
    assert!(ok && out.contains("grant of key-rpm removed from key a of acme"), "{out}{err}");
    let mut admitted = 0;
    let m = loop {
        let r = chat_as(&s, &a, 5).await;
        if r.status() == 429 {
            break refusal(r).await;
        }
        assert_eq!(r.status(), 200);
        admitted += 1;
        assert!(admitted < 10, "never refused");
    };
    assert!(admitted >= 3, "only {admitted} more admitted");
    assert!(m.contains("(RPM): Limit 5,"), "{m}");

    // A rotated key keeps its grants.
    let (st, v) = ops
        .call(
            Method::PUT,
            "/tenants/acme/keys/a/overrides/key-tpd",
            Some(json!({"amount": 5000, "until": "2099-01-01"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["overrides"]["key-tpd"], json!({"amount": 5000, "until": "2099-01-01"}), "{v}");
    let (st, v) = ops.call(Method::POST, "/tenants/acme/keys/a/rotate", None).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["key"]["overrides"]["key-tpd"]["amount"], 5000, "{v}");
    let (st, _) = ops
        .call(Method::PUT, "/tenants/acme/keys/a/overrides/key-rpm", Some(json!({"amount": 3})))
        .await;
    assert_eq!(st, 409, "a revoked key takes no grant");

    let (_, log) = s.terminate();
    let writes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin write"))
        .filter(|l| l.contains("route=/admin/v1/tenants/{id}/keys/{key}/overrides/{limit}"))
        .collect();
    for (method, status) in [("PUT", 200), ("DELETE", 204), ("PUT", 400), ("DELETE", 404)] {
        assert!(
            writes.iter().any(|l| l.contains(&format!("method={method}"))
                && l.contains("tenant=Some(\"acme\")")
                && l.contains("key=Some(")
                && l.contains("limit=Some(")
                && l.contains(&format!("status={status}"))),
            "no audit line of {method} {status}: {writes:#?}"
        );
    }
}

/// A key granted 100 tokens a day: a request expecting 500 output tokens is
/// refused as too large and the upstream never sees it; another key of the
/// tenant sends the same request; what fits the key's budget runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_a_keys_whole_budget_never_reaches_the_upstream() {
    let mock = mock().await;
    let mut s = Sluice::start(
        &policy(&mock),
        &[("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "acme"})).await;
    let (_, small) = ops.key("acme", json!({"id": "small"})).await;
    let (_, big) = ops.key("acme", json!({"id": "big"})).await;
    let (st, v) = ops
        .call(
            Method::PUT,
            "/tenants/acme/keys/small/overrides/key-tpd",
            Some(json!({"amount": 100})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    let m = refusal(chat_as(&s, &small, 500).await).await;
    assert!(
        m.contains("Request too large for m in organization acme on tokens per day (TPD): Limit 100, Requested"),
        "{m}"
    );
    assert_eq!(mock.stats.requests(), 0, "refused before it ran");
    assert_eq!(chat_as(&s, &big, 500).await.status(), 200);
    assert_eq!(mock.stats.requests(), 1);
    assert_eq!(chat_as(&s, &small, 5).await.status(), 200, "what fits the 100 runs");
    assert_eq!(mock.stats.requests(), 2);
}

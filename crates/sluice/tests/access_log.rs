//! The access log, against the real binary over loopback with a mock
//! upstream: one JSON line per request to the policy's endpoints, with the
//! documented fields and what each request came to, in a file created
//! 0600; and no secret anywhere in it (the tenant's API key, the admin
//! token, the upstream's key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ACME: &str = "sk-acme-access-log-test-0000000000001";
const UPSTREAM_KEY: &str = "sk-upstream-secret-for-access-log-test";

/// Every field a line has (docs/OBSERVABILITY.md#the-access-log).
const FIELDS: [&str; 20] = [
    "time",
    "request_id",
    "tenant",
    "key_id",
    "endpoint",
    "model",
    "status",
    "upstream_status",
    "estimated_input_tokens",
    "estimated_output_tokens",
    "settled_input_tokens",
    "settled_output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "denied_by",
    "duration_ms",
    "admission_ms",
    "upstream_ms",
    "first_byte_ms",
    "ending",
];

fn policy(mock: &sluice_mock::MockServer) -> String {
    format!(
        r#"
[policy]
name = "access"
default_tier = "free"

[models."m1"]

[tiers.free.models]
"m1" = {{ rpm = 3 }}

[tenants.acme]
[[tenants.acme.keys]]
id = "acme-key"
hash = "{}"

[admin]
listen = "127.0.0.1:0"

[access_log]
to = "access.jsonl"
{}
"#,
        key_hash(ACME),
        upstream_section(mock)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_with_its_fields_and_no_secret() {
    let mock = mock().await;
    let mut s = Sluice::start(
        &policy(&mock),
        &[("UPSTREAM_KEY", UPSTREAM_KEY), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    s.keep_dir = true;
    let admin = s.line("sluice admin on ").unwrap();
    let c = client();
    let chat_url = format!("{}/v1/chat/completions", s.url);
    let tokens = [("x-mock-prompt-tokens", "11"), ("x-mock-completion-tokens", "5")];
    let mut ids = Vec::new();
    let mut send = async |body: &Value, key: &str, headers: &[(&str, &str)]| {
        let r = post(&c, &chat_url, Some(key), body, headers).await;
        let status = r.status().as_u16();
        ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
        r.bytes().await.unwrap();
        status
    };
    // 5 completion tokens, 2 of them reasoning; 4 of the prompt's cached.
    let details = [
        ("x-mock-prompt-tokens", "11"),
        ("x-mock-completion-tokens", "3"),
        ("x-mock-reasoning-tokens", "2"),
        ("x-mock-cached-tokens", "4"),
    ];
    assert_eq!(send(&chat("m1", 7), ACME, &details).await, 200);
    let mut stream = chat("m1", 7);
    stream["stream"] = json!(true);
    assert_eq!(send(&stream, ACME, &tokens).await, 200);
    assert_eq!(send(&chat("m1", 7), ACME, &[("x-mock-status", "500")]).await, 500);
    assert_eq!(send(&chat("m1", 7), ACME, &[]).await, 429);
    assert_eq!(send(&chat("m1", 7), "sk-wrong-key", &[]).await, 401);
    // The admin API and /healthz are not the policy's endpoints: no line.
    let r = c.get(format!("{admin}/admin/v1/tenants")).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(r.unwrap().status(), 200);
    c.get(format!("{}/healthz", s.url)).send().await.unwrap();

    let dir = s.dir.clone();
    let path = dir.join("access.jsonl");
    let mut text = String::new();
    let arrived = eventually(Duration::from_secs(10), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines().count() >= 5
    })
    .await;
    assert!(arrived, "{text}");
    let (status, stderr) = s.terminate();
    assert!(status.success(), "{stderr}");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "one line per request:\n{text}");
    for l in &lines {
        for f in FIELDS {
            assert!(l.get(f).is_some(), "no `{f}` in {l}");
        }
        assert_eq!(l.as_object().unwrap().len(), FIELDS.len(), "undocumented fields in {l}");
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
        assert_eq!(l["endpoint"], "chat");
        assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}:\n{text}"))
    };

    let ok = by_id(&ids[0]);
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["tenant"], "acme");
    assert_eq!(ok["key_id"], "acme-key");
    assert_eq!(ok["model"], "m1");
    assert_eq!(ok["settled_input_tokens"], 11);
    assert_eq!(ok["settled_output_tokens"], 5);
    assert_eq!((ok["cached_tokens"].as_u64(), ok["reasoning_tokens"].as_u64()), (Some(4), Some(2)));
    assert_eq!(ok["estimated_output_tokens"], 7);
    assert!(ok["estimated_input_tokens"].as_u64().unwrap() >= 1);
    assert!(ok["denied_by"].is_null());
    assert!(ok["upstream_ms"].as_f64().is_some() && ok["first_byte_ms"].as_f64().is_some());
    assert!(ok["admission_ms"].as_f64().is_some());
    assert_eq!(ok["ending"], "complete");

    let streamed = by_id(&ids[1]);
    assert_eq!(streamed["status"], 200);
    assert_eq!(streamed["settled_input_tokens"], 11);
    assert_eq!(streamed["settled_output_tokens"], 5);
    assert_eq!(streamed["cached_tokens"], 0);
    assert_eq!(streamed["reasoning_tokens"], 0);

    let failed = by_id(&ids[2]);
    assert_eq!(failed["status"], 500);
    assert_eq!(failed["upstream_status"], 500);
    assert_eq!(failed["settled_input_tokens"], 0);
    assert_eq!(failed["ending"], "upstream_failed");
    assert!(failed["cached_tokens"].is_null() && failed["reasoning_tokens"].is_null());

    let denied = by_id(&ids[3]);
    assert_eq!(denied["status"], 429);
    assert_eq!(denied["denied_by"], "m1/rpm");
    assert!(denied["upstream_status"].is_null() && denied["settled_input_tokens"].is_null());
    assert_eq!(denied["ending"], "refused");

    let unknown = by_id(&ids[4]);
    assert_eq!(unknown["status"], 401);
    assert!(
        unknown["tenant"].is_null() && unknown["key_id"].is_null() && unknown["model"].is_null()
    );

    // No secret anywhere in the file.
    for secret in [ACME, ADMIN_TOKEN, UPSTREAM_KEY, "sk-wrong-key"] {
        assert!(!text.contains(secret), "a secret in the access log:\n{text}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the access log is {mode:o}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! Operators' day: the admin API on its own listener and token, tenants and
//! keys in the data file (or Redis), tier changes, increases, revocations,
//! restarts and policy reloads, over loopback with the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A preset, the mock upstream, and an admin API.
fn policy(preset: &str, mock: &sluice_mock::MockServer) -> String {
    format!(
        "{}{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SLUICE_ADMIN_TOKEN\"\n",
        example(preset),
        upstream_section(mock)
    )
}

fn env() -> [(&'static str, &'static str); 2] {
    [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

async fn chat_as(s: &Sluice, key: &str, model: &str) -> reqwest::Response {
    post(&client(), &format!("{}/v1/chat/completions", s.url), Some(key), &chat(model, 5), &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_tenant_upgraded_to_developer_keeps_todays_counts() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy("sambanova-cloud.toml", &mock), &env());
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "acme", "tier": "free"})).await;
    let (_, secret) = ops.key("acme", json!({})).await;
    for left in (15..20).rev() {
        let r = chat_as(&s, &secret, "DeepSeek-V3.1").await;
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), left);
    }
    // A payment method was linked.
    let t = ops.patch("acme", json!({"tier": "developer"})).await;
    assert_eq!(t["tier"], "developer");
    let r = chat_as(&s, &secret, "DeepSeek-V3.1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(num(&r, "x-ratelimit-limit-requests-day"), 12_000);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), 12_000 - 6, "today's 5 carried over");
    // And the usage API shows it.
    let (st, u) = ops.call(reqwest::Method::GET, "/tenants/acme/usage", None).await;
    assert_eq!(st, 200, "{u}");
    let rpd = u["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "DeepSeek-V3.1/rpd")
        .expect("the model's RPD");
    assert_eq!((rpd["amount"].as_u64(), rpd["used"].as_u64()), (Some(12_000), Some(6)));
    assert_eq!(rpd["partition"]["model"], "DeepSeek-V3.1");
    // Reset the counter: the day starts over.
    let (st, v) = ops
        .call(
            reqwest::Method::POST,
            "/tenants/acme/usage/reset",
            Some(json!({"limit": "DeepSeek-V3.1/rpd"})),
        )
        .await;
    assert_eq!((st, v["reset"].as_u64()), (200, Some(1)));
    let r = chat_as(&s, &secret, "DeepSeek-V3.1").await;
    assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), 12_000 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_raises_an_orgs_500_rpm_to_2000_mid_window() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy("salesforce-models-api.toml", &mock), &env());
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "org", "environment": "production"})).await;
    let (_, secret) = ops.key("org", json!({"labels": {"channel": "rest"}})).await;
    let model = "sfdc_ai__DefaultGPT4Omni";
    let http = client();
    let url = format!("{}/v1/chat/completions", s.url);
    // Spend the minute's 500 (it refills at 500 a minute meanwhile).
    let mut sent = 0;
    loop {
        sent += 1;
        let status = post(&http, &url, Some(&secret), &chat(model, 1), &[]).await.status().as_u16();
        if status == 429 {
            break;
        }
        assert!(sent < 1000, "the 500 RPM never denied");
    }
    assert!(sent > 500);
    let (st, v) = ops
        .call(
            reqwest::Method::PUT,
            "/tenants/org/overrides/generation-rpm",
            Some(json!({"amount": 2000})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let r = chat_as(&s, &secret, model).await;
    assert_eq!(r.status(), 200, "the increase applies at once");
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 2000);
    let remaining = num(&r, "x-ratelimit-remaining-requests");
    assert!((1400..=1510).contains(&remaining), "the minute's 500 still count: {remaining}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_at_once_and_rotation_gives_a_new_one() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy("llama-api.toml", &mock), &env());
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "team"})).await;
    let (id, secret) = ops.key("team", json!({})).await;
    assert_eq!(chat_as(&s, &secret, "Llama-3.3-70B-Instruct").await.status(), 200);
    let (st, _) =
        ops.call(reqwest::Method::DELETE, &format!("/tenants/team/keys/{id}"), None).await;
    assert_eq!(st, 204);
    assert_eq!(chat_as(&s, &secret, "Llama-3.3-70B-Instruct").await.status(), 401);
    // Rotation: a new secret works, the old one does not.
    let (_, second) = ops.key("team", json!({"id": "ci"})).await;
    let (st, v) = ops.call(reqwest::Method::POST, "/tenants/team/keys/ci/rotate", None).await;
    assert_eq!(st, 201, "{v}");
    let third = v["secret"].as_str().unwrap();
    assert_eq!(chat_as(&s, &second, "Llama-3.3-70B-Instruct").await.status(), 401);
    assert_eq!(chat_as(&s, third, "Llama-3.3-70B-Instruct").await.status(), 200);
    // An expired key is refused too.
    let (_, old) = ops.key("team", json!({"expires_at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(chat_as(&s, &old, "Llama-3.3-70B-Instruct").await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_org_moved_to_production_loses_its_hourly_apex_limit() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy("salesforce-models-api.toml", &mock), &env());
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "org", "environment": "sandbox"})).await;
    let (_, apex) = ops.key("org", json!({"labels": {"channel": "apex"}})).await;
    let model = "sfdc_ai__DefaultGPT4Omni";
    let r = chat_as(&s, &apex, model).await;
    assert_eq!(num(&r, "x-ratelimit-limit-requests-hour"), 200);
    assert!(!has(&r, "x-ratelimit-limit-requests"));
    ops.patch("org", json!({"environment": "production"})).await;
    let r = chat_as(&s, &apex, model).await;
    assert!(!has(&r, "x-ratelimit-limit-requests-hour"), "no hourly limit in production");
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_a_tenants_day_count_and_its_keys() {
    let mock = mock().await;
    let dir = std::env::temp_dir().join(format!("sluice-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = policy("sambanova-cloud.toml", &mock);
    let mut s = Sluice::start_in(&dir, &text, &env());
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "acme", "tier": "free"})).await;
    let (_, secret) = ops.key("acme", json!({})).await;
    for _ in 0..3 {
        assert_eq!(chat_as(&s, &secret, "DeepSeek-V3.1").await.status(), 200);
    }
    s.keep_dir = true;
    let (status, stderr) = tokio::task::spawn_blocking(move || s.terminate()).await.unwrap();
    assert!(status.success(), "{stderr}");
    let mut s = Sluice::start_in(&dir, &text, &env());
    let r = chat_as(&s, &secret, "DeepSeek-V3.1").await;
    assert_eq!(r.status(), 200, "the key survived the restart");
    assert_eq!(num(&r, "x-ratelimit-remaining-requests-day"), 20 - 4, "and today's count did");
    let _ = s.line("sluice admin on ");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_refuses_bad_requests_without_changing_anything() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy("sambanova-cloud.toml", &mock), &env());
    let ops = Ops::of(&mut s);
    let http = client();
    let r = http.get(format!("{}/admin/v1/tenants", ops.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/admin/v1/tenants", ops.base))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The gateway's keys are not admin tokens, and the admin token is not a key.
    let r = chat_as(&s, ADMIN_TOKEN, "DeepSeek-V3.1").await;
    assert_eq!(r.status(), 401);

    ops.tenant(json!({"id": "acme", "tier": "free"})).await;
    let before = ops.call(reqwest::Method::GET, "/tenants/acme", None).await;
    let bad: &[(reqwest::Method, &str, Option<Value>, &str)] = &[
        (
            reqwest::Method::POST,
            "/tenants",
            Some(json!({"id": "x", "tier": "gold"})),
            "tier `gold` is not defined",
        ),
        (reqwest::Method::POST, "/tenants", Some(json!({"id": "bad id!"})), "is not a valid id"),
        (
            reqwest::Method::POST,
            "/tenants",
            Some(json!({"id": "y", "colour": "red"})),
            "unknown field",
        ),
        (
            reqwest::Method::PATCH,
            "/tenants/acme",
            Some(json!({"tier": "gold"})),
            "tier `gold` is not defined",
        ),
        (
            reqwest::Method::PATCH,
            "/tenants/acme",
            Some(json!({"colour": "red"})),
            "cannot be changed",
        ),
        (
            reqwest::Method::PATCH,
            "/tenants/acme",
            Some(json!({"time_zone": "Mars/Base"})),
            "time zone",
        ),
        (
            reqwest::Method::PUT,
            "/tenants/acme/overrides/no-such-limit",
            Some(json!({"amount": 5})),
            "no limit named",
        ),
        (
            reqwest::Method::PUT,
            "/tenants/acme/overrides/DeepSeek-V3.1%2Frpd",
            Some(json!({"amount": 0})),
            "at least 1",
        ),
        (
            reqwest::Method::PUT,
            "/tenants/acme/overrides/DeepSeek-V3.1%2Frpd",
            Some(json!({"amount": 5, "until": "soon"})),
            "not a date",
        ),
        (
            reqwest::Method::PUT,
            "/tenants/acme/overrides/DeepSeek-V3.1%2Frpd",
            Some(json!({"amount": 5, "until": "2020-01-01"})),
            "in the past",
        ),
        // Found by the `admin` fuzz target: a path whose percent-encoded
        // bytes are not UTF-8 was answered in plain text, not JSON.
        (
            reqwest::Method::POST,
            "/tenants/%22c%02%7E%7F%FDel/keys",
            Some(json!({"labels": {"channel": "apex"}})),
            "the path is not valid",
        ),
        (reqwest::Method::GET, "/tenants/%FF", None, "Invalid UTF-8"),
    ];
    for (method, path, body, msg) in bad {
        let (st, v) = ops.call(method.clone(), path, body.clone()).await;
        assert_eq!(st, 400, "{method} {path}: {v}");
        let text = v["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(msg), "{method} {path}: {text:?} should say {msg:?}");
    }
    let r = http
        .post(format!("{}/admin/v1/tenants", ops.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Found by the `admin` fuzz target: a method a route does not take was
    // answered 405 with no body.
    let (st, v) = ops.call(reqwest::Method::PUT, "/tenants/acme", Some(json!({}))).await;
    assert_eq!(st, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    let after = ops.call(reqwest::Method::GET, "/tenants/acme", None).await;
    assert_eq!(before, after, "nothing changed");
    let (_, list) = ops.call(reqwest::Method::GET, "/tenants", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(ops.call(reqwest::Method::GET, "/tenants/nobody", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_data_file_or_admin_answers() {
    let mock = mock().await;
    let mut s = Sluice::start(
        &policy("sambanova-cloud.toml", &mock),
        &[("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN), ("RUST_LOG", "trace")],
    );
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "acme", "tier": "free"})).await;
    let (id, secret) = ops.key("acme", json!({"labels": {"channel": "rest"}})).await;
    assert!(secret.starts_with("sk-sluice-") && secret.len() > 40);
    assert_eq!(chat_as(&s, &secret, "DeepSeek-V3.1").await.status(), 200);
    let _ = chat_as(&s, "sk-sluice-not-a-key", "DeepSeek-V3.1").await;
    let mut answers = String::new();
    for path in
        ["/tenants", "/tenants/acme", "/tenants/acme/keys", "/tenants/acme/usage", "/policy"]
    {
        let (st, v) = ops.call(reqwest::Method::GET, path, None).await;
        assert_eq!(st, 200, "{path}");
        answers.push_str(&v.to_string());
    }
    assert!(answers.contains(&id), "the key is listed by id");
    let data = std::fs::read(s.dir.join("sluice.redb")).expect("the data file");
    let dir = s.dir.clone();
    let (_, stderr) = tokio::task::spawn_blocking(move || s.terminate()).await.unwrap();
    assert!(stderr.len() > 1000, "trace logs were written");
    let _ = dir;
    for (what, text) in [
        ("logs", stderr.as_bytes()),
        ("admin answers", answers.as_bytes()),
        ("data file", &data[..]),
    ] {
        assert!(
            !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret appears in the {what}"
        );
        assert!(
            !text.windows(ADMIN_TOKEN.len()).any(|w| w == ADMIN_TOKEN.as_bytes()),
            "the admin token appears in the {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_keeps_counters_and_refuses_an_invalid_file() {
    let mock = mock().await;
    let text = policy("llama-api.toml", &mock);
    let mut s = Sluice::start(&text, &env());
    let ops = Ops::of(&mut s);
    ops.tenant(json!({"id": "team"})).await;
    let (_, secret) = ops.key("team", json!({})).await;
    for _ in 0..4 {
        assert_eq!(chat_as(&s, &secret, "Llama-3.3-70B-Instruct").await.status(), 200);
    }
    // Raise the model's RPM in the file and reload by signal.
    let path = s.dir.join("policy.toml");
    std::fs::write(
        &path,
        text.replace(
            "\"Llama-3.3-70B-Instruct\"                 = { rpm = 10,",
            "\"Llama-3.3-70B-Instruct\"                 = { rpm = 20,",
        ),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("rpm = 20"));
    std::process::Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().unwrap();
    let mut raised = None;
    for _ in 0..50 {
        let r = chat_as(&s, &secret, "Llama-3.3-70B-Instruct").await;
        if num(&r, "x-ratelimit-limit-requests") == 20 {
            raised = Some(num(&r, "x-ratelimit-remaining-requests"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remaining = raised.expect("SIGHUP reloaded the policy");
    assert!(remaining <= 20 - 5, "the minute's requests were kept: {remaining}");
    // A broken file is refused, with the reason, and the old policy runs on.
    std::fs::write(&path, format!("{text}\n[tiers.broken.models]\n\"nope\" = {{ rpm = 0 }}\n"))
        .unwrap();
    let (st, v) = ops.call(reqwest::Method::POST, "/policy/reload", None).await;
    assert_eq!(st, 400, "{v}");
    let details = v["error"]["details"].to_string();
    assert!(details.contains("policy.toml:") && details.contains("nope"), "{details}");
    let r = chat_as(&s, &secret, "Llama-3.3-70B-Instruct").await;
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 20, "the last good policy still runs");
}

/// Runs the `sluice` CLI against the admin API.
fn cli(admin: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_ADMIN_URL", admin)
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_tenants_keys_and_usage() {
    let mock = mock().await;
    let mut s = Sluice::start(&policy("sambanova-cloud.toml", &mock), &env());
    let admin = s.line("sluice admin on ").unwrap();
    let admin2 = admin.clone();
    let out = tokio::task::spawn_blocking(move || {
        let (ok, out, err) =
            cli(&admin2, &["tenants", "create", "acme", "--tier", "free", "--label", "region=eu"]);
        assert!(ok, "{err}");
        out
    })
    .await
    .unwrap();
    assert!(
        out.contains("tenant acme (store)")
            && out.contains("tier: free")
            && out.contains("labels: region=eu"),
        "{out}"
    );
    let admin2 = admin.clone();
    let created =
        tokio::task::spawn_blocking(move || cli(&admin2, &["keys", "create", "acme", "--json"]))
            .await
            .unwrap();
    let v: Value = serde_json::from_str(&created.1).unwrap();
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat_as(&s, &secret, "DeepSeek-V3.1").await.status(), 200);
    let usage = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || cli(&admin, &["usage", "acme"])
    })
    .await
    .unwrap()
    .1;
    let row = usage
        .lines()
        .find(|l| l.starts_with("DeepSeek-V3.1/rpd"))
        .unwrap_or_else(|| panic!("{usage}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        ["DeepSeek-V3.1/rpd", "1d", "calendar", "model=DeepSeek-V3.1", "20", "1", "19"],
        "{usage}"
    );
    let list = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || cli(&admin, &["tenants", "list"])
    })
    .await
    .unwrap()
    .1;
    assert!(list.lines().any(|l| l.starts_with("acme") && l.contains("free")), "{list}");
    let (ok, _, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || cli(&admin, &["tenants", "set", "acme", "--tier", "gold"])
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("tier `gold` is not defined"), "{err}");
    // Removing a grant that does not exist is an error, not a success.
    let (ok, out, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || cli(&admin, &["tenants", "ungrant", "acme", "DeepSeek-V3.1/rpd"])
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("404"), "ungrant of nothing: {out} {err}");
}

/// `serve` with `[admin]` and no token stops before any listener opens: a
/// supervisor never sees "listening" from a process that then exits.
#[test]
fn serve_without_the_admin_token_stops_before_listening() {
    let dir = std::env::temp_dir().join(format!("sluice-admin-notoken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    let policy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml"),
    )
    .unwrap();
    std::fs::write(
        &path,
        format!("{policy}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SLUICE_TEST_NO_SUCH_TOKEN\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("SLUICE_TEST_NO_SUCH_TOKEN")
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("SLUICE_TEST_NO_SUCH_TOKEN"), "{stderr}");
    assert!(!stdout.contains("listening"), "printed before the check:\n{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

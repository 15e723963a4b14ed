//! The usage history and `GET /v1/usage`, against the real binary over
//! loopback: a tenant sees its own limits, usage and 429s and nothing of
//! any other tenant; a wrong key is 401; the history survives a restart
//! (embedded data file) and is the same on two instances of one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice_testkit::RedisServer;

const ACME: &str = "sk-acme-usage-test-0000000000000001";
const GLOBEX: &str = "sk-globex-usage-test-00000000000002";

/// Two tenants; `m1` allows 3 requests a minute.
fn policy(mock: &sluice_mock::MockServer, extra: &str) -> String {
    format!(
        r#"
[policy]
name = "usage"
default_tier = "free"

[models."m1"]
[models."m2"]

[tiers.free.models]
"m1" = {{ rpm = 3, tpd = 1000000 }}
"m2" = {{ rpm = 100 }}

[tenants.acme]
[[tenants.acme.keys]]
id = "acme-key"
hash = "{}"

[tenants.globex]
[[tenants.globex.keys]]
id = "globex-key"
hash = "{}"
{}
{extra}
"#,
        key_hash(ACME),
        key_hash(GLOBEX),
        upstream_section(mock)
    )
}

fn env() -> [(&'static str, &'static str); 2] {
    [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

/// A chat request; its status and the tokens the upstream reported.
async fn chat_as(url: &str, key: &str, model: &str) -> (u16, u64, u64) {
    let r = post(&client(), &format!("{url}/v1/chat/completions"), Some(key), &chat(model, 7), &[])
        .await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    let tokens = |f: &str| v["usage"][f].as_u64().unwrap_or(0);
    (status, tokens("prompt_tokens"), tokens("completion_tokens"))
}

async fn usage(url: &str, key: Option<&str>) -> (u16, String) {
    let mut r = client().get(format!("{url}/v1/usage"));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn usage_json(url: &str, key: &str) -> Value {
    let (status, text) = usage(url, Some(key)).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Acme: three requests to m1 (the fourth is refused by `m1/rpm`), one to
/// m2; globex: one to m2. Returns acme's tokens (input, output).
async fn traffic(urls: &[&str]) -> (u64, u64) {
    let (mut input, mut output) = (0, 0);
    for i in 0..4 {
        let (status, i_t, o_t) = chat_as(urls[i % urls.len()], ACME, "m1").await;
        assert_eq!(status, if i < 3 { 200 } else { 429 }, "request {i}");
        input += i_t;
        output += o_t;
    }
    let (status, i_t, o_t) = chat_as(urls[0], ACME, "m2").await;
    assert_eq!(status, 200);
    let (status, ..) = chat_as(urls[urls.len() - 1], GLOBEX, "m2").await;
    assert_eq!(status, 200);
    (input + i_t, output + o_t)
}

fn limit<'a>(u: &'a Value, name: &str) -> &'a Value {
    u["limits"].as_array().unwrap().iter().find(|l| l["limit"] == name).unwrap_or_else(|| {
        panic!("no limit {name} in {u}");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_its_own_usage_and_nothing_of_others() {
    let mock = mock().await;
    let s = Sluice::start(&policy(&mock, ""), &env());
    let (input, output) = traffic(&[&s.url]).await;
    assert!(input > 0 && output > 0);

    let u = usage_json(&s.url, ACME).await;
    assert_eq!((u["object"].as_str(), u["tenant"].as_str()), (Some("usage"), Some("acme")));
    assert_eq!(u["tier"], "free");
    let rpm = limit(&u, "m1/rpm");
    assert_eq!((rpm["amount"].as_u64(), rpm["used"].as_u64()), (Some(3), Some(3)), "{u}");
    assert_eq!(rpm["partition"]["model"], "m1");
    assert!(rpm["reset_at"].is_string());
    let hour = &u["history"]["last_hour"];
    assert_eq!(hour["requests"], 4, "{u}");
    assert_eq!(
        (hour["input_tokens"].as_u64(), hour["output_tokens"].as_u64()),
        (Some(input), Some(output))
    );
    assert_eq!(hour["rate_limited"], 1);
    assert_eq!(hour["rate_limited_by"]["m1/rpm"], 1);
    let recent = &u["history"]["recent_429s"][0];
    assert_eq!((recent["limit"].as_str(), recent["model"].as_str()), (Some("m1/rpm"), Some("m1")));
    let m2 = u["history"]["models_last_day"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "m2")
        .expect("m2 in the day's models");
    assert_eq!(m2["requests"], 1);
    assert_eq!(
        u["history"]["minutes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["requests"].as_u64().unwrap())
            .sum::<u64>(),
        4
    );

    // Nothing of the other tenant, in either direction.
    let (_, acme_text) = usage(&s.url, Some(ACME)).await;
    assert!(!acme_text.contains("globex"), "{acme_text}");
    let g = usage_json(&s.url, GLOBEX).await;
    assert_eq!(g["tenant"], "globex");
    assert_eq!(g["history"]["last_hour"]["requests"], 1);
    assert_eq!(g["history"]["last_hour"]["rate_limited"], 0);
    assert_eq!(limit(&g, "m1/rpm")["used"], 0, "acme's m1 traffic is not globex's");
    assert!(!g.to_string().contains("acme"), "{g}");

    // A wrong key and no key: 401, with nothing in the body.
    for key in [Some("sk-not-a-key"), None] {
        let (status, text) = usage(&s.url, key).await;
        assert_eq!(status, 401, "{text}");
        assert!(!text.contains("acme") && !text.contains("requests\""), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_survives_a_restart() {
    let mock = mock().await;
    // Saved only at shutdown: the periodic save is an hour away.
    let text = policy(&mock, "[data]\nsave_every = \"1h\"\n");
    let mut s = Sluice::start(&text, &env());
    let (input, output) = traffic(&[&s.url]).await;
    let before = usage_json(&s.url, ACME).await;
    s.keep_dir = true;
    let dir = s.dir.clone();
    let (status, _) = s.terminate();
    assert!(status.success());

    let s = Sluice::start_in(&dir, &text, &env());
    let after = usage_json(&s.url, ACME).await;
    let hour = &after["history"]["last_hour"];
    assert_eq!(hour["requests"], 4, "{after}");
    assert_eq!(
        (hour["input_tokens"].as_u64(), hour["output_tokens"].as_u64()),
        (Some(input), Some(output))
    );
    assert_eq!(hour["rate_limited_by"]["m1/rpm"], 1);
    assert_eq!(after["history"]["minutes"], before["history"]["minutes"]);
    assert_eq!(after["history"]["last_week"], before["history"]["last_week"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_show_the_same_history() {
    let redis = RedisServer::start();
    let mock = mock().await;
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\non_failure = \"closed\"\ntimeout = \"500ms\"\n[history]\nsync_every = \"200ms\"\n",
        redis.url()
    );
    let text = policy(&mock, &store);
    let a = Sluice::start(&text, &env());
    let b = Sluice::start(&text, &env());
    // The traffic alternates between the two.
    let (input, output) = traffic(&[&a.url, &b.url]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let (ua, ub) = (usage_json(&a.url, ACME).await, usage_json(&b.url, ACME).await);
        let same = ua["history"]["last_hour"]["requests"] == 4
            && ua["history"]["minutes"] == ub["history"]["minutes"]
            && ua["history"]["last_day"] == ub["history"]["last_day"];
        if same {
            break (ua, ub);
        }
        assert!(tokio::time::Instant::now() < deadline, "the instances disagree:\n{ua}\n{ub}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hour = &seen.0["history"]["last_hour"];
    assert_eq!(
        (hour["input_tokens"].as_u64(), hour["output_tokens"].as_u64()),
        (Some(input), Some(output))
    );
    assert_eq!(hour["rate_limited_by"]["m1/rpm"], 1);
    assert_eq!(seen.1["history"]["recent_429s"], seen.0["history"]["recent_429s"]);
    // Globex's request went to the second instance; the first shows it.
    let g = usage_json(&a.url, GLOBEX).await;
    assert_eq!(g["history"]["last_hour"]["requests"], 1, "{g}");
}

//! The decision service of `sluice serve` end to end: the real binary, its
//! Envoy RLS v3 gRPC listener (asked with a tonic client) and its JSON
//! check/settle API, sharing counters with the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use serde_json::{Value, json};

const KEY: &str = "sk-test-decisions-acme";
const TOKEN: &str = "decisions-token-for-tests";

/// Sends the decision service's token with every gRPC call, as Envoy's
/// `initial_metadata` does.
#[derive(Clone)]
struct Auth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type RlsClient = RateLimitServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Auth>,
>;

async fn rls_client(url: String) -> RlsClient {
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    RateLimitServiceClient::with_interceptor(
        channel,
        Auth(format!("Bearer {TOKEN}").parse().unwrap()),
    )
}

fn policy(mock: &sluice_mock::MockServer, lease: &str) -> String {
    format!(
        r#"
[policy]
lease = "{lease}"

[headers]
families = ["requests", "tokens", "tokens-day"]

[models.m]

[tiers.free.models]
m = {{ rpm = 5, tpm = 10_000 }}

[[tiers.free.limits]]
name = "tpd"
metric = "tokens"
amount = 100_000
window = "1d"

[tenants.acme]
tier = "free"

[[tenants.acme.keys]]
id = "acme-1"
hash = "{}"

[decisions]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
token_env = "DECISIONS_TOKEN"
{}"#,
        key_hash(KEY),
        upstream_section(mock)
    )
}

struct Service {
    sluice: Sluice,
    grpc: String,
    http: String,
    c: reqwest::Client,
}

async fn start(lease: &str) -> (Service, sluice_mock::MockServer) {
    let mock = mock().await;
    let mut sluice = Sluice::start(
        &policy(&mock, lease),
        &[("UPSTREAM_KEY", "upstream-secret"), ("DECISIONS_TOKEN", TOKEN)],
    );
    let grpc = sluice.line("sluice decisions grpc on ").expect("the grpc listener line");
    let http = sluice.line("sluice decisions http on ").expect("the http listener line");
    (Service { sluice, grpc: format!("http://{grpc}"), http, c: client() }, mock)
}

impl Service {
    async fn json(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        let mut r = self.c.post(format!("{}{path}", self.http)).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn check(&self, input: u64, output: u64) -> Value {
        let body =
            json!({"tenant": "acme", "model": "m", "input_tokens": input, "output_tokens": output});
        let (status, v) = self.json("/v1/decisions/check", &body, Some(TOKEN)).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn settle(&self, id: &str, input: u64, output: u64) -> bool {
        let body = json!({"reservation_id": id, "input_tokens": input, "output_tokens": output});
        let (status, v) = self.json("/v1/decisions/settle", &body, Some(TOKEN)).await;
        assert_eq!(status, 200, "{v}");
        v["settled"].as_bool().unwrap()
    }
}

fn used(v: &Value, limit: &str) -> u64 {
    v["limits"].as_array().unwrap().iter().find(|l| l["name"] == limit).unwrap()["used"]
        .as_u64()
        .unwrap()
}

fn rls(descriptors: &[&[(&str, &str)]], hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "sluice".into(),
        descriptors: descriptors
            .iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .iter()
                    .map(|(k, v)| Entry { key: (*k).into(), value: (*v).into() })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        hits_addend: hits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_reserve_then_settle_with_less_more_and_twice() {
    let (s, _mock) = start("15m").await;
    // Reserve 1,000 tokens; the request used 400: 600 come back.
    let v = s.check(200, 800).await;
    assert_eq!(v["admitted"], true, "{v}");
    assert_eq!(used(&v, "tpd"), 1_000);
    assert_eq!(v["headers"]["x-ratelimit-remaining-tokens-day"], "99000");
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    assert!(s.settle(&id, 200, 200).await);
    let v = s.check(0, 0).await;
    assert_eq!(used(&v, "tpd"), 400, "refunded to the window it was charged");
    // Reserve 100; the request used 2,100: 2,000 more are charged (debt).
    let v = s.check(50, 50).await;
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    assert!(s.settle(&id, 100, 2_000).await);
    let v = s.check(0, 0).await;
    assert_eq!(used(&v, "tpd"), 2_500);
    // A second settlement does nothing.
    assert!(!s.settle(&id, 0, 0).await);
    assert!(!s.settle(&id, 50_000, 0).await);
    let v = s.check(0, 0).await;
    assert_eq!(used(&v, "tpd"), 2_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_reservation_expires_with_its_lease_and_keeps_its_charge() {
    let (s, _mock) = start("1s").await;
    let v = s.check(100, 400).await;
    let id = v["reservation_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    // The next admission of the tenant finds the lease over.
    let v = s.check(0, 0).await;
    assert_eq!(used(&v, "tpd"), 500, "the expired reservation keeps its charge");
    assert!(!s.settle(&id, 0, 0).await, "too late to settle: nothing is refunded");
    let v = s.check(0, 0).await;
    assert_eq!(used(&v, "tpd"), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_needs_its_token_and_refuses_bad_input() {
    let (s, _mock) = start("15m").await;
    let body = json!({"tenant": "acme", "model": "m", "input_tokens": 1});
    let (status, v) = s.json("/v1/decisions/check", &body, None).await;
    assert_eq!(status, 401, "{v}");
    let (status, _) = s.json("/v1/decisions/check", &body, Some("wrong")).await;
    assert_eq!(status, 401);
    for (body, want) in [
        (json!({"tenant": "acme", "input_tokens": -1}), 400),
        (json!({"tenant": "acme", "input_tokens": 2_000_000_000u64}), 400),
        (json!({"tenant": "nobody"}), 400),
        (json!({"tenant": "acme", "model": "gpt-9"}), 404),
        (json!({"reservation": "x"}), 400),
    ] {
        let (status, v) = s.json("/v1/decisions/check", &body, Some(TOKEN)).await;
        assert_eq!(status, want, "{body}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (status, v) =
        s.json("/v1/decisions/settle", &json!({"reservation_id": "rsv_x"}), Some(TOKEN)).await;
    assert_eq!(status, 400, "{v}");
    // Nothing was charged.
    let v = s.check(0, 0).await;
    assert_eq!(used(&v, "tpd"), 0);
    assert_eq!(used(&v, "m/rpm"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_decisions_share_counters_with_the_proxy() {
    let (s, mock) = start("15m").await;
    let mut client = rls_client(s.grpc.clone()).await;
    // Two requests through the proxy: 2 of 5 RPM.
    for _ in 0..2 {
        let r = post(
            &s.c,
            &format!("{}/v1/chat/completions", s.sluice.url),
            Some(KEY),
            &chat("m", 10),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    // Three decisions over gRPC, by key (as Envoy copies it from the
    // authorization header) or by tenant.
    let by_key = format!("Bearer {KEY}");
    let asks: [&[(&str, &str)]; 3] = [
        &[("api_key", by_key.as_str()), ("model", "m")],
        &[("tenant", "acme"), ("model", "m")],
        &[("tenant", "acme"), ("model", "m")],
    ];
    for (i, d) in asks.iter().enumerate() {
        let r = client.should_rate_limit(rls(&[d], 100)).await.unwrap().into_inner();
        assert_eq!(r.overall_code, Code::Ok as i32, "decision {i}");
        let remaining = r
            .response_headers_to_add
            .iter()
            .find(|h| h.key == "x-ratelimit-remaining-requests")
            .unwrap();
        assert_eq!(remaining.value, (2 - i).to_string());
    }
    // The sixth is over the limit, and so is the proxy's next request.
    let r = client
        .should_rate_limit(rls(&[&[("tenant", "acme"), ("model", "m")]], 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert!(r.response_headers_to_add.iter().any(|h| h.key == "retry-after"));
    let r = post(
        &s.c,
        &format!("{}/v1/chat/completions", s.sluice.url),
        Some(KEY),
        &chat("m", 10),
        &[],
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(mock.stats.requests(), 2);
    // Facts that map to nothing: denied with a body that says why (not an
    // error, which Envoy failing open would let through), never a charge.
    let r = client
        .should_rate_limit(rls(&[&[("tenant", "nobody"), ("model", "m")]], 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let body = String::from_utf8_lossy(&r.raw_body);
    assert!(body.contains("tenant `nobody` is not known"), "{body}");
    // A caller without the token: UNAUTHENTICATED.
    let mut anonymous = RateLimitServiceClient::connect(s.grpc.clone()).await.unwrap();
    let e = anonymous.should_rate_limit(rls(&[&[("tenant", "acme"), ("model", "m")]], 1)).await;
    assert_eq!(e.unwrap_err().code(), tonic::Code::Unauthenticated);
    // A caller's mistake: INVALID_ARGUMENT, never a charge.
    let mut bad = rls(&[&[("tenant", "acme")]], 1);
    bad.domain = "elsewhere".into();
    let e = client.should_rate_limit(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("unknown domain `elsewhere`"), "{}", e.message());
    // Metrics on the JSON listener.
    let text = s.c.get(format!("{}/metrics", s.http)).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"sluice_decisions_total{api="grpc",domain="sluice",outcome="admitted"} 3"#,
        r#"sluice_decisions_total{api="grpc",domain="sluice",outcome="limited"} 1"#,
        r#"sluice_decisions_total{api="grpc",domain="sluice",outcome="invalid"} 1"#,
        r#"sluice_decisions_total{api="grpc",domain="unknown",outcome="invalid"} 1"#,
        r#"sluice_decision_limits_total{domain="sluice",limit="m/rpm",outcome="limited"} 1"#,
    ] {
        assert!(text.contains(line), "no {line} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_start_without_the_decisions_token() {
    let mock = mock().await;
    let dir = std::env::temp_dir().join(format!("sluice-e2e-decisions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy(&mock, "15m")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("UPSTREAM_KEY", "k")
        .env_remove("DECISIONS_TOKEN")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("decisions.token_env names `DECISIONS_TOKEN`, which is not set"), "{err}");
}

/// A file with `[decisions]` and no `[upstreams]` runs the decision service
/// alone: no proxy listener unless one is asked for, decisions as usual, and
/// a clean stop on SIGTERM. Without `[decisions]` the same file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_alone_need_no_upstream() {
    let text = format!(
        r#"
[models.m]

[tiers.free.models]
m = {{ rpm = 2 }}

[tenants.acme]
tier = "free"

[[tenants.acme.keys]]
id = "acme-1"
hash = "{}"

[decisions]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
token_env = "DECISIONS_TOKEN"
"#,
        key_hash(KEY)
    );
    let mut sluice = Sluice::start_without_listen(
        &text,
        &[("DECISIONS_TOKEN", TOKEN)],
        "sluice: no [upstreams]: the decision service only",
    );
    let grpc = sluice.line("sluice decisions grpc on ").expect("the grpc listener line");
    let http = sluice.line("sluice decisions http on ").expect("the http listener line");
    let mut rls_client = rls_client(format!("http://{grpc}")).await;
    let by_key = format!("Bearer {KEY}");
    let ask = || rls(&[&[("api_key", by_key.as_str()), ("model", "m")]], 1);
    for _ in 0..2 {
        let r = rls_client.should_rate_limit(ask()).await.unwrap().into_inner();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    let r = rls_client.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    // The JSON API sees the same counters.
    let r = client()
        .post(format!("{http}/v1/decisions/check"))
        .bearer_auth(TOKEN)
        .json(&json!({"api_key": KEY, "model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["admitted"], false, "{v}");
    assert_eq!(used(&v, "m/rpm"), 2, "{v}");
    let (status, _) = sluice.terminate();
    assert!(status.success(), "{status}");

    // The same policy without [decisions] has nothing to serve.
    let proxy_only = text.split("[decisions]").next().unwrap().to_owned();
    let dir = std::env::temp_dir().join(format!("sluice-e2e-noupstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, proxy_only).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the policy has no [upstreams]"), "{err}");
}

/// A JSON check whose caller allows a wait (`max_wait_ms`) waits for room
/// as the proxy does (the tier's `max_wait` bounds it) and says how long;
/// without it the refusal comes at once. gRPC never waits (Envoy gives its
/// rate limit call milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_check_waits_for_room_when_its_caller_allows() {
    let mock = mock().await;
    let text = policy(&mock, "15m")
        .replace("m = { rpm = 5, tpm = 10_000 }", "m = { rps = 2, tpm = 10_000 }")
        .replace("[tiers.free.models]", "[tiers.free]\nmax_wait = \"2s\"\n\n[tiers.free.models]");
    assert!(text.contains("rps = 2") && text.contains("max_wait"), "{text}");
    let mut sluice =
        Sluice::start(&text, &[("UPSTREAM_KEY", "upstream-secret"), ("DECISIONS_TOKEN", TOKEN)]);
    let http = sluice.line("sluice decisions http on ").expect("the http listener line");
    let s = Service { sluice, grpc: String::new(), http, c: client() };
    for _ in 0..2 {
        assert_eq!(s.check(1, 1).await["admitted"], true);
    }
    let started = std::time::Instant::now();
    let v = s.check(1, 1).await;
    assert_eq!(v["admitted"], false, "{v}");
    assert!(v.get("waited_ms").is_none(), "{v}");
    assert!(started.elapsed() < Duration::from_millis(300), "refused at once");
    let body = json!({"tenant": "acme", "model": "m", "input_tokens": 1, "output_tokens": 1, "max_wait_ms": 2_000});
    let (status, v) = s.json("/v1/decisions/check", &body, Some(TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["admitted"], true, "{v}");
    let waited = v["waited_ms"].as_u64().unwrap();
    assert!((100..=1_100).contains(&waited), "waited {waited} ms");
}

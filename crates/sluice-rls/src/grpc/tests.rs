#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use sluice_store::MemoryStore;

use super::*;
use crate::testutil::*;

fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry { key: (*k).to_owned(), value: (*v).to_owned() })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn req(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest { domain: domain.into(), descriptors, hits_addend: hits }
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add.iter().find(|h| h.key == name).map(|h| h.value.as_str())
}

fn num(r: &RateLimitResponse, name: &str) -> u64 {
    header(r, name).unwrap_or_else(|| panic!("no {name} in {r:?}")).parse().unwrap()
}

fn limit_name(s: &DescriptorStatus) -> &str {
    s.current_limit.as_ref().map_or("", |l| l.name.as_str())
}

async fn call(h: &Harness<MemoryStore>, r: RateLimitRequest) -> RateLimitResponse {
    h.svc.should_rate_limit(&r).await.unwrap()
}

async fn refused(h: &Harness<MemoryStore>, r: RateLimitRequest) -> String {
    let e = h.svc.should_rate_limit(&r).await.unwrap_err();
    let status = e.grpc_status();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{e}");
    status.message().to_owned()
}

#[tokio::test]
async fn within_the_limit_ok_with_the_wire_headers() {
    let h = harness();
    let r = call(&h, req("sluice", vec![desc(&[("tenant", "acme"), ("model", "m")])], 100)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses.len(), 1);
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 3);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 2);
    assert_eq!(num(&r, "x-ratelimit-limit-tokens"), 1_000);
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens"), 900, "hits_addend counts tokens");
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens-day"), 4_900);
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), Some("20s"));
    assert!(r.raw_body.is_empty());
    // The tightest limit for a descriptor with the model: m/rpm (2 of 3 left).
    let s = &r.statuses[0];
    assert_eq!(s.code, Code::Ok as i32);
    assert_eq!(limit_name(s), "m/rpm");
    let l = s.current_limit.as_ref().unwrap();
    assert_eq!((l.requests_per_unit, l.unit), (3, Unit::Minute as i32));
    assert_eq!(s.limit_remaining, 2);
    assert_eq!(s.duration_until_reset, Some(PbDuration { seconds: 20, nanos: 0 }));
}

#[tokio::test]
async fn over_the_limit_is_over_limit_with_retry_headers_and_charges_nothing() {
    let h = harness();
    let d = || vec![desc(&[("tenant", "acme"), ("model", "m")])];
    for _ in 0..3 {
        assert_eq!(call(&h, req("sluice", d(), 10)).await.overall_code, Code::Ok as i32);
    }
    let r = call(&h, req("sluice", d(), 10)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(limit_name(&r.statuses[0]), "m/rpm");
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 0);
    assert_eq!(num(&r, "retry-after"), 20);
    assert_eq!(num(&r, "retry-after-ms"), 20_000);
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens"), 970, "the denied call charged nothing");
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Rate limit reached for m in organization acme on requests per min (RPM): Limit 3, Used 3, Requested 1."),
        "{msg}"
    );
    // 20 s later, room again.
    h.advance(Duration::from_secs(20));
    assert_eq!(call(&h, req("sluice", d(), 10)).await.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn descriptors_are_one_admission_over_the_union_of_their_facts() {
    let h = harness();
    let r = call(
        &h,
        req(
            "sluice",
            vec![
                desc(&[("tenant", "acme")]),
                desc(&[("tenant", "acme"), ("model", "m")]),
                desc(&[("endpoint", "chat"), ("generic_key", "anything")]),
            ],
            40,
        ),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    // Charged once, not once per descriptor.
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 2);
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens"), 960);
    let names: Vec<&str> = r.statuses.iter().map(limit_name).collect();
    // Tenant only: tenant-wide limits (tpd); with the model: the model's
    // limits too (m/rpm is the tightest); with the endpoint: endpoint-rpm
    // or tpd, whichever has the smaller share left (endpoint-rpm: 99/100;
    // tpd: 4960/5000).
    assert_eq!(names, ["tpd", "m/rpm", "endpoint-rpm"]);
    assert!(r.statuses.iter().all(|s| s.code == Code::Ok as i32));
}

#[tokio::test]
async fn the_descriptor_that_carries_the_denying_limit_is_over_limit() {
    let h = harness();
    // Use up m's tokens per minute: 1,000.
    let r = call(&h, req("sluice", vec![desc(&[("tenant", "acme"), ("model", "m")])], 1_000)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    let r = call(&h, req("sluice", vec![desc(&[("tenant", "acme")]), desc(&[("model", "m")])], 1))
        .await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::Ok as i32, "tenant-wide limits had room");
    assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    assert_eq!(limit_name(&r.statuses[1]), "m/tpm");
    assert_eq!(r.statuses[1].limit_remaining, 0);
}

#[tokio::test]
async fn too_large_is_over_limit_and_tells_clients_not_to_retry() {
    let h = harness();
    let r = call(&h, req("sluice", vec![desc(&[("tenant", "acme"), ("model", "m")])], 2_000)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(header(&r, "x-should-retry"), Some("false"));
    assert_eq!(header(&r, "retry-after"), None);
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Request too large for m"));
    let text = h.svc.metrics().encode();
    assert!(
        text.contains(
            r#"sluice_decisions_total{api="grpc",domain="sluice",outcome="too_large"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"sluice_decision_limits_total{domain="sluice",limit="m/tpm",outcome="too_large"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn api_keys_name_the_tenant_and_paths_name_the_endpoint() {
    let h = harness();
    let r = call(
        &h,
        req(
            "edge",
            vec![desc(&[
                ("api_key", &format!("Bearer {KEY_ACME}")),
                ("model", "n"),
                ("endpoint", "/v1/chat/completions?x=1"),
            ])],
            0,
        ),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 10, "n's rpm");
    // hits_addend 0 counts as 1, as in Envoy's own service.
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens-day"), 4_999);
    // The same key and its tenant named together is fine.
    let r =
        call(&h, req("sluice", vec![desc(&[("tenant", "acme"), ("api_key", KEY_ACME)])], 1)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_charges_nothing() {
    let h = harness();
    let acme = || desc(&[("tenant", "acme"), ("model", "m")]);
    let cases: Vec<(RateLimitRequest, &str)> = vec![
        (
            req("other", vec![acme()], 1),
            "unknown domain `other`; this service answers `sluice`, `edge`",
        ),
        (req("sluice", vec![], 1), "at least one descriptor"),
        (
            req("sluice", vec![desc(&[("model", "m")])], 1),
            "no tenant: give the tenant id (descriptor key `tenant`) or an API key (descriptor key `api_key`)",
        ),
        (req("sluice", vec![desc(&[("tenant", "nobody")])], 1), "tenant `nobody` is not known"),
        (req("sluice", vec![desc(&[("api_key", "sk-wrong")])], 1), "the API key is not known"),
        (
            req("sluice", vec![desc(&[("tenant", "acme"), ("api_key", KEY_OTHER)])], 1),
            "the API key does not belong to tenant `acme`",
        ),
        (
            req("sluice", vec![acme(), desc(&[("tenant", "other")])], 1),
            "the descriptors disagree on the tenant: `acme` and `other`",
        ),
        (req("sluice", vec![acme(), desc(&[("model", "n")])], 1), "disagree on the model"),
        (
            req("sluice", vec![desc(&[("api_key", KEY_ACME)]), desc(&[("api_key", KEY_OTHER)])], 1),
            "disagree on the API key: `(hidden)` and `(hidden)`",
        ),
        (
            req("sluice", vec![desc(&[("tenant", "acme"), ("model", "gpt-9")])], 1),
            "the model `gpt-9` does not exist",
        ),
        (
            req("sluice", vec![desc(&[("tenant", "acme"), ("model", "premium")])], 1),
            "the model `premium` does not exist or the tenant may not use it",
        ),
        (
            req("sluice", vec![desc(&[("tenant", "acme"), ("endpoint", "images")])], 1),
            "endpoint `images` is not known; known: `chat`",
        ),
        (
            req("sluice", vec![acme()], 1_000_000_001),
            "a hits_addend of 1000000001 is more than one decision may carry (1000000000 at most)",
        ),
    ];
    for (r, want) in cases {
        let msg = refused(&h, r).await;
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
    }
    // A descriptor's own hits_addend: absurd, or negative.
    let mut d = acme();
    d.hits_addend = Some(UInt64Value { value: u64::MAX });
    assert!(
        refused(&h, req("sluice", vec![d], 1))
            .await
            .contains("is more than one decision may carry")
    );
    let mut d = acme();
    d.hits_addend = Some(UInt64Value { value: 5 });
    d.is_negative_hits = true;
    assert!(refused(&h, req("sluice", vec![d], 1)).await.contains("negative hits_addend"));
    // Nothing was charged by any of them.
    let r = call(&h, req("sluice", vec![acme()], 1)).await;
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 2);
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens-day"), 4_999);
    let text = h.svc.metrics().encode();
    assert!(
        text.contains(r#"sluice_decisions_total{api="grpc",domain="unknown",outcome="invalid"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_decisions_total{api="grpc",domain="sluice",outcome="invalid"} 14"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_per_descriptor_hits_addend_is_the_cost() {
    let h = harness();
    let mut d = desc(&[("tenant", "acme"), ("model", "m")]);
    d.hits_addend = Some(UInt64Value { value: 300 });
    let r = call(&h, req("sluice", vec![d], 7)).await;
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens"), 700);
}

#[tokio::test]
async fn output_tokens_when_configured() {
    let text = policy().replace(
        "domains = [\"sluice\", \"edge\"]",
        "domains = [\"sluice\"]\nhits_addend = \"output_tokens\"",
    );
    let h = harness_with(&text, None);
    let r = call(&h, req("sluice", vec![desc(&[("tenant", "acme"), ("model", "m")])], 40)).await;
    assert_eq!(num(&r, "x-ratelimit-remaining-tokens"), 960);
}

#[tokio::test]
async fn a_store_that_is_down_is_unavailable() {
    let (served, config, _clock) = served_with(&policy(), |_| DownStore);
    let svc = crate::DecisionService::new(served, config.decisions.unwrap(), None);
    let e = svc
        .should_rate_limit(&req("sluice", vec![desc(&[("tenant", "acme")])], 1))
        .await
        .unwrap_err();
    assert_eq!(e.grpc_status().code(), tonic::Code::Unavailable);
    let text = svc.metrics().encode();
    assert!(text.contains(r#"outcome="unavailable"} 1"#), "{text}");
}

#[tokio::test]
async fn concurrency_limits_are_released_at_once() {
    let text = policy().replace(
        "[tenants.acme]",
        "[[limits]]\nname = \"in-flight\"\nmetric = \"concurrent\"\namount = 1\n\n[tenants.acme]",
    );
    let h = harness_with(&text, None);
    for _ in 0..3 {
        let r = call(&h, req("sluice", vec![desc(&[("tenant", "acme"), ("model", "n")])], 1)).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc() {
    let h = harness();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = sluice_served::ListenerOptions::standalone("test");
    let server = tokio::spawn(serve_grpc(
        listener,
        h.svc.clone(),
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    let mut client = RateLimitServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let d = || vec![desc(&[("tenant", "acme"), ("model", "m")])];
    for i in 0..3 {
        let r = client.should_rate_limit(req("sluice", d(), 1)).await.unwrap().into_inner();
        assert_eq!(r.overall_code, Code::Ok as i32, "call {i}");
    }
    let r = client.should_rate_limit(req("sluice", d(), 1)).await.unwrap().into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let e = client.should_rate_limit(req("nope", d(), 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("unknown domain `nope`"), "{}", e.message());
    stop.send(()).unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}

#[test]
fn units_of_one() {
    let p = |s: &str| s.parse::<Period>().unwrap();
    assert_eq!(unit(p("1s")), Unit::Second);
    assert_eq!(unit(p("1m")), Unit::Minute);
    assert_eq!(unit(p("1h")), Unit::Hour);
    assert_eq!(unit(p("1d")), Unit::Day);
    assert_eq!(unit(p("1w")), Unit::Week);
    assert_eq!(unit(p("1mo")), Unit::Month);
    assert_eq!(unit(p("10s")), Unit::Unknown);
    assert_eq!(unit(p("30d")), Unit::Unknown);
}

/// Over gRPC, a caller without the token is refused (UNAUTHENTICATED); a
/// request with no model, or with facts that map to nothing, is denied
/// (OVER_LIMIT with a body that says why), never an error that Envoy
/// failing open would wave through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_callers_authenticate_and_unmappable_requests_are_denied() {
    let h = harness_with(&policy(), Some("decisions-token-0123456789"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = sluice_served::ListenerOptions::standalone("test");
    let server = tokio::spawn(serve_grpc(
        listener,
        h.svc.clone(),
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    let mut client = RateLimitServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let with_token = |r: RateLimitRequest, token: &str| {
        let mut r = tonic::Request::new(r);
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let ok = || req("sluice", vec![desc(&[("tenant", "acme"), ("model", "m")])], 1);
    let e = client.should_rate_limit(ok()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = client.should_rate_limit(with_token(ok(), "wrong")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let token = "decisions-token-0123456789";
    let r = client.should_rate_limit(with_token(ok(), token)).await.unwrap().into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    for (descriptors, why) in [
        (vec![desc(&[("tenant", "acme")])], "names no model"),
        (vec![desc(&[("tenant", "acme"), ("model", "")])], "names no model"),
        (vec![desc(&[("api_key", "sk-wrong"), ("model", "m")])], "API key is not known"),
        (vec![desc(&[("tenant", "acme"), ("model", "nope")])], "`nope` does not exist"),
        (
            vec![desc(&[
                ("tenant", "acme"),
                ("model", "m"),
                ("endpoint", "/v1/chat/completions/"),
            ])],
            "is not known",
        ),
    ] {
        let r = client
            .should_rate_limit(with_token(req("sluice", descriptors, 1), token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{why}");
        assert!(r.statuses.iter().all(|s| s.code == Code::OverLimit as i32), "{why}");
        let body = String::from_utf8(r.raw_body).unwrap();
        assert!(body.contains(why), "{why}: {body}");
    }
    stop.send(()).unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}

/// The `user` descriptor entry names the end user: its limits are relevant
/// to the descriptors that carry it, each end user has its own budget, and
/// two descriptors naming different end users are refused without echoing
/// either.
#[tokio::test]
async fn the_user_entry_names_the_end_user() {
    let h = harness_with(&policy_with_end_users(""), None);
    let d = |user: &'static str| {
        vec![desc(&[("tenant", "acme"), ("model", "n")]), desc(&[("user", user)])]
    };
    for left in [1, 0] {
        let r = call(&h, req("sluice", d("alice"), 1)).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(limit_name(&r.statuses[1]), "end-user-rpm");
        assert_eq!(r.statuses[1].limit_remaining, left);
        // The descriptor without the end user does not show its limit.
        assert_ne!(limit_name(&r.statuses[0]), "end-user-rpm");
    }
    let r = call(&h, req("sluice", d("alice"), 1)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::Ok as i32);
    assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    let body = String::from_utf8(r.raw_body).unwrap();
    assert!(body.contains("per end user") && !body.contains("alice"), "{body}");
    assert_eq!(call(&h, req("sluice", d("bob"), 1)).await.overall_code, Code::Ok as i32);
    let e = refused(
        &h,
        req(
            "sluice",
            vec![
                desc(&[("tenant", "acme"), ("model", "n"), ("user", "alice")]),
                desc(&[("user", "bob")]),
            ],
            1,
        ),
    )
    .await;
    assert!(e.contains("disagree on the end user") && !e.contains("alice"), "{e}");
}

//! The layer on a shared store: a real `redis-server` (started by
//! `sluice-testkit`), which holds concurrency slots for a short lease. The
//! layer renews a running request's slot, and settles it when its body is
//! dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use sluice_testkit::RedisServer;
use sluice_tower::sluice_store::{RedisStore, TimeSource, Topology};
use sluice_tower::{Admission, Classification, Cost, SluiceLayer, Usage, UsageReport};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};

const POLICY: &str = r#"
[policy]
name = "shared"
default_tier = "free"

[headers]
families = ["tokens-day"]

[endpoints]
generate = "/generate"

[tiers.free]
description = "every tenant"

[[limits]]
name = "tpd"
metric = "tokens"
amount = 100_000
window = "1d"

[[limits]]
name = "in-flight"
metric = "concurrent"
amount = 1

[tenants.acme]
"#;

/// A body whose frames come from a channel, pending until the sender is
/// dropped.
struct Drip(mpsc::Receiver<Bytes>);

impl Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_running_request_keeps_its_slot_past_the_lease_and_frees_it_when_dropped() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(1);
    let store = RedisStore::connect(&Topology::Standalone(redis.url()), TimeSource::Server)
        .await
        .unwrap()
        .with_slot_lease(lease);
    let config = sluice_tower::sluice_config::parse(POLICY, "shared.toml").unwrap();
    let acme = sluice_tower::tenants(&config).unwrap()["acme"].clone();
    let policy = Arc::new(config.policy);
    let endpoint = sluice_tower::endpoint(&policy, "generate").unwrap();
    let classify = move |_: &Request<()>| {
        Classification::Admit(Admission::new(acme.clone(), endpoint).cost(Cost::tokens(100, 900)))
    };
    let layer = SluiceLayer::new(policy, store, classify);
    let (senders_tx, mut senders) = mpsc::unbounded_channel();
    let service = layer.layer(tower::service_fn(move |req: Request<()>| {
        // Reports 1 + 1 tokens, then streams until the test lets go.
        req.extensions().get::<UsageReport>().unwrap().set(Usage::tokens(1, 1));
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let _ = senders_tx.send(tx);
        async move { Ok::<_, Infallible>(Response::new(Drip(rx))) }
    }));
    let call = || service.clone().oneshot(Request::post("/generate").body(()).unwrap());

    let running = call().await.unwrap();
    assert_eq!(running.status(), 200);
    let sender = senders.recv().await.unwrap();
    // Three leases long, the slot stays taken: renewed while the request
    // runs.
    let until = tokio::time::Instant::now() + 3 * lease;
    while tokio::time::Instant::now() < until {
        let refused = call().await.unwrap();
        assert_eq!(refused.status(), 429, "the running request's slot lapsed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The client goes away: the body is dropped, the reservation settled
    // (slot freed, tokens settled to the 2 reported).
    drop(running);
    drop(sender);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let next = loop {
        let r = call().await.unwrap();
        if r.status() == 200 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let left: u64 =
        next.headers()["x-ratelimit-remaining-tokens-day"].to_str().unwrap().parse().unwrap();
    assert_eq!(left, 100_000 - 2 - 1_000);
}

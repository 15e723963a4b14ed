//! How a request through the layer ends, and what it is charged: a body
//! dropped mid-way, a request dropped before its answer, an inner service
//! that fails, a store that does not answer. The layer is driven as a
//! `tower::Service` (no network), on a memory store and a fake clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use sluice_tower::sluice_core::{
    CounterKey, CounterStore, Decision, FakeClock, Instant, Plan, Policy, ReservationId, Settlement,
};
use sluice_tower::sluice_store::MemoryStore;
use sluice_tower::{
    Admission, Classification, Classify, Cost, EndpointId, LimitedBody, OnStoreError, SluiceLayer,
    TenantFacts, Usage, UsageReport,
};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};

const POLICY: &str = r#"
[policy]
name = "endings"
default_tier = "free"

[headers]
families = ["requests", "tokens"]

[endpoints]
generate = "/generate"

[tiers.free]
description = "every tenant"

[[limits]]
name = "rpm"
metric = "requests"
amount = 100
window = "1m"

[[limits]]
name = "tpm"
metric = "tokens"
amount = 10_000
window = "1m"

[[limits]]
name = "in-flight"
metric = "concurrent"
amount = 1

[tenants.acme]
"#;

/// Every request costs this much until it reports.
const RESERVED: Cost = Cost::tokens(100, 900);

/// A body whose frames come from a channel: it ends when the sender is
/// dropped, and is pending meanwhile.
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

/// What the inner service does with a request.
#[derive(Clone, Copy)]
enum Act {
    /// Reports 3 + 4 tokens, then streams what the test sends it.
    Stream,
    /// Never answers.
    Hang,
    /// Fails.
    Fail,
    /// Answers "done" without reporting.
    Answer,
}

#[derive(Debug)]
struct Failed;

type Inner = tower::util::BoxCloneSyncService<Request<()>, Response<Drip>, Failed>;

/// Every request is acme's, reserving [`RESERVED`]; `/health` is exempt.
struct Classifier {
    acme: Arc<TenantFacts>,
    endpoint: EndpointId,
}

impl Classify<()> for Classifier {
    fn classify(&self, req: &Request<()>) -> Classification {
        match req.uri().path() {
            "/health" => Classification::Exempt,
            _ => Classification::Admit(
                Admission::new(self.acme.clone(), self.endpoint).cost(RESERVED),
            ),
        }
    }
}

fn classifier() -> (Arc<Policy>, Classifier) {
    let config = sluice_tower::sluice_config::parse(POLICY, "endings.toml").unwrap();
    let acme = sluice_tower::tenants(&config).unwrap()["acme"].clone();
    let policy = Arc::new(config.policy);
    let endpoint = sluice_tower::endpoint(&policy, "generate").unwrap();
    (policy, Classifier { acme, endpoint })
}

/// A body that has ended.
fn ended() -> Drip {
    Drip(mpsc::channel(1).1)
}

struct Fixture {
    layer: SluiceLayer<MemoryStore, Classifier>,
    calls: Arc<AtomicUsize>,
    /// The senders of the streams the inner service answered.
    streams: mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>,
    inner: Inner,
}

impl Fixture {
    fn new(act: Act) -> Self {
        let (policy, classify) = classifier();
        let clock = FakeClock::new(Instant::from_secs(1_000_000));
        let store = MemoryStore::new(clock.clone());
        let layer = SluiceLayer::new(policy, store, classify).clock(clock);
        let calls = Arc::new(AtomicUsize::new(0));
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let counted = calls.clone();
        let inner = tower::service_fn(move |req: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let report = req.extensions().get::<UsageReport>().cloned();
            let streams_tx = streams_tx.clone();
            async move {
                match act {
                    Act::Stream => {
                        report.expect("a usage report").set(Usage::tokens(3, 4));
                        let (tx, rx) = mpsc::channel(8);
                        let _ = streams_tx.send(tx);
                        Ok(Response::new(Drip(rx)))
                    }
                    Act::Hang => std::future::pending().await,
                    Act::Fail => Err(Failed),
                    Act::Answer => {
                        let (tx, rx) = mpsc::channel(1);
                        let _ = tx.try_send(Bytes::from_static(b"done"));
                        Ok(Response::new(Drip(rx)))
                    }
                }
            }
        });
        Self { layer, calls, streams, inner: Inner::new(inner) }
    }

    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = Response<LimitedBody<Drip>>, Error = Failed> {
        self.layer.layer(self.inner.clone())
    }

    /// Another service behind the same limits (the same store), which
    /// answers at once with an empty body and reports nothing.
    fn answering(
        &self,
    ) -> impl Service<Request<()>, Response = Response<LimitedBody<Drip>>, Error = Failed> {
        self.layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Failed>(Response::new(ended()))
        }))
    }

    async fn call(&self, path: &str) -> Result<Response<LimitedBody<Drip>>, Failed> {
        self.service().oneshot(post(path)).await
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn post(path: &str) -> Request<()> {
    Request::post(path).body(()).unwrap()
}

fn header(r: &Response<LimitedBody<Drip>>, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

async fn read_all(r: Response<LimitedBody<Drip>>) -> Bytes {
    r.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn a_body_dropped_midway_settles_its_reservation() {
    let mut f = Fixture::new(Act::Stream);
    let streaming = f.call("/generate").await.unwrap();
    assert_eq!(streaming.status(), 200);
    assert_eq!(header(&streaming, "x-ratelimit-remaining-tokens"), Some(9_000));
    let tx = f.streams.recv().await.unwrap();
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let mut body = streaming.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");

    // Its slot is held while the body is open.
    let refused = f.call("/generate").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(f.calls(), 1);

    // The client goes away mid-way: the body is dropped, the slot freed,
    // the tokens settled to what the service reported (3 + 4).
    drop(body);
    let next = f.call("/generate").await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(header(&next, "x-ratelimit-remaining-tokens"), Some(10_000 - 7 - 1_000));
    assert_eq!(header(&next, "x-ratelimit-remaining-requests"), Some(100 - 2));
}

#[tokio::test]
async fn a_body_read_to_its_end_settles_before_the_next_request() {
    let f = Fixture::new(Act::Answer);
    let done = f.call("/generate").await.unwrap();
    // Read to its end (the body itself still held, as a server may hold it
    // a while after writing its last frame).
    let mut body = done.into_body();
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "done");
    assert!(body.frame().await.is_none());
    // Settled: the slot is free; nothing reported, so what was reserved
    // stands.
    let next = f.call("/generate").await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(header(&next, "x-ratelimit-remaining-tokens"), Some(10_000 - 2 * 1_000));
    drop(body);
}

#[tokio::test]
async fn a_request_dropped_before_its_answer_frees_its_slot_and_keeps_its_charge() {
    let f = Fixture::new(Act::Hang);
    let mut service = f.service();
    let mut call = Box::pin(service.ready().await.unwrap().call(post("/generate")));
    // Admitted, and the inner service is running (it never answers).
    let waker = std::task::Waker::noop();
    assert!(call.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
    assert_eq!(f.calls(), 1);
    assert_eq!(f.answering().oneshot(post("/generate")).await.unwrap().status(), 429);
    // The client goes away before the answer.
    drop(call);
    let next = f.answering().oneshot(post("/generate")).await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(header(&next, "x-ratelimit-remaining-requests"), Some(100 - 2));
    assert_eq!(header(&next, "x-ratelimit-remaining-tokens"), Some(10_000 - 2 * 1_000));
}

#[tokio::test]
async fn an_inner_service_error_counts_the_request_and_no_token() {
    let f = Fixture::new(Act::Fail);
    assert!(f.call("/generate").await.is_err());
    let next = f.answering().oneshot(post("/generate")).await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(header(&next, "x-ratelimit-remaining-requests"), Some(100 - 2));
    assert_eq!(header(&next, "x-ratelimit-remaining-tokens"), Some(10_000 - 1_000));
}

#[tokio::test]
async fn exempt_requests_pass_uncounted() {
    let f = Fixture::new(Act::Answer);
    let r = f.call("/health").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-remaining-requests").is_none());
    let r = f.call("/generate").await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some(99));
}

/// A store that never answers: every call fails.
#[derive(Clone, Debug)]
struct DownStore;

#[derive(Debug, thiserror::Error)]
#[error("the store is down")]
struct Down;

impl CounterStore for DownStore {
    type Error = Down;

    async fn admit(&self, _plan: &Plan) -> Result<Decision, Down> {
        Err(Down)
    }

    async fn peek(&self, _plan: &Plan) -> Result<Decision, Down> {
        Err(Down)
    }

    async fn settle(&self, _id: ReservationId, _usage: Usage) -> Result<Settlement, Down> {
        Err(Down)
    }

    fn settle_detached(&self, _id: ReservationId, _usage: Usage) {}

    fn release(&self, _id: ReservationId) {}

    async fn reset(&self, _tenant: u64, _key: CounterKey) -> Result<bool, Down> {
        Err(Down)
    }
}

/// A layer over [`DownStore`], with `on_store_error` if given (else the
/// default).
fn down_layer(
    on_store_error: Option<OnStoreError>,
) -> (
    impl Service<Request<()>, Response = Response<LimitedBody<Drip>>, Error = Failed>,
    Arc<AtomicUsize>,
) {
    let (policy, classify) = classifier();
    let mut layer = SluiceLayer::new(policy, DownStore, classify);
    if let Some(choice) = on_store_error {
        layer = layer.on_store_error(choice);
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = tower::service_fn(move |_req: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Failed>(Response::new(ended())) }
    });
    (layer.layer(inner), calls)
}

#[tokio::test]
async fn a_store_that_does_not_answer_refuses_with_503_by_default() {
    let (service, calls) = down_layer(None);
    let r = service.oneshot(post("/generate")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&read_all(r).await).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_store_unavailable");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_store_that_does_not_answer_can_be_served_through() {
    let (service, calls) = down_layer(Some(OnStoreError::Serve));
    let r = service.oneshot(post("/generate")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-remaining-requests").is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

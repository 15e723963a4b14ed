//! The layer and its service: classify, admit, call, settle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use sluice_core::{Clock, CounterStore, Decision, Policy, SystemClock, Usage};
use sluice_llm::error::ApiError;
use sluice_llm::headers::{HeaderOptions, insert_headers};

use crate::body::LimitedBody;
use crate::reservation::{Ending, Reservation, Settle, UsageReport, renew_slots};
use crate::{Admission, Classification, Classify};

/// What the layer does when the counter store fails to answer an admission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnStoreError {
    /// Answer 503 with `retry-after: 1` and an OpenAI-style error body
    /// (`code: rate_limit_store_unavailable`); the inner service is not
    /// called. Limits first (the default).
    #[default]
    Refuse,
    /// Call the inner service, counting nothing and sending no
    /// `x-ratelimit-*` header. Availability first.
    Serve,
}

/// A [`tower_layer::Layer`] that puts a Sluice policy in front of a service.
///
/// `St` is the counter store (a [`MemoryStore`](sluice_store::MemoryStore)
/// for one process; a [`Guarded`](sluice_store::Guarded)
/// [`RedisStore`](sluice_store::RedisStore) for many), `C` says what each
/// request is ([`Classify`]).
pub struct SluiceLayer<St, C> {
    shared: Arc<Shared<St, C>>,
}

impl<St, C> Clone for SluiceLayer<St, C> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<St, C> std::fmt::Debug for SluiceLayer<St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SluiceLayer")
            .field("policy", &self.shared.policy.name())
            .field("on_store_error", &self.shared.on_store_error)
            .finish_non_exhaustive()
    }
}

struct Shared<St, C> {
    policy: Arc<Policy>,
    store: St,
    /// The same store, for settling from response bodies.
    settler: Arc<dyn Settle>,
    classify: Arc<C>,
    clock: Arc<dyn Clock>,
    on_store_error: OnStoreError,
    headers: HeaderOptions,
}

impl<St: CounterStore + Clone, C> SluiceLayer<St, C> {
    /// Admits requests against `policy` in `store`, each as `classify` says.
    /// Tenants in the [`Admission`]s must have been resolved against this
    /// same policy.
    pub fn new(policy: impl Into<Arc<Policy>>, store: St, classify: C) -> Self {
        let settler: Arc<dyn Settle> = Arc::new(store.clone());
        Self {
            shared: Arc::new(Shared {
                policy: policy.into(),
                store,
                settler,
                classify: Arc::new(classify),
                clock: Arc::new(SystemClock),
                on_store_error: OnStoreError::default(),
                headers: HeaderOptions::default(),
            }),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Shared<St, C>)) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => f(shared),
            None => {
                let s = &self.shared;
                let mut shared = Shared {
                    policy: s.policy.clone(),
                    store: s.store.clone(),
                    settler: s.settler.clone(),
                    classify: s.classify.clone(),
                    clock: s.clock.clone(),
                    on_store_error: s.on_store_error,
                    headers: s.headers,
                };
                f(&mut shared);
                self.shared = Arc::new(shared);
            }
        }
        self
    }

    /// What to do when the store fails ([`OnStoreError::Refuse`] by
    /// default).
    pub fn on_store_error(self, on_store_error: OnStoreError) -> Self {
        self.configure(|s| s.on_store_error = on_store_error)
    }

    /// Where time comes from (the system clock by default; the store's
    /// clock should agree with it).
    pub fn clock(self, clock: impl Clock + 'static) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        self.configure(|s| s.clock = clock)
    }

    /// How refusals are signalled: waits longer than
    /// `no_retry_after` (60 s by default) also send `x-should-retry: false`.
    pub fn header_options(self, headers: HeaderOptions) -> Self {
        self.configure(|s| s.headers = headers)
    }
}

impl<S, St, C> tower_layer::Layer<S> for SluiceLayer<St, C> {
    type Service = Sluice<S, St, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Sluice { inner, shared: self.shared.clone() }
    }
}

/// The service [`SluiceLayer`] makes: admits each request, calls `S` only
/// for those admitted, and settles each when its response ends.
pub struct Sluice<S, St, C> {
    inner: S,
    shared: Arc<Shared<St, C>>,
}

impl<S: Clone, St, C> Clone for Sluice<S, St, C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S: std::fmt::Debug, St, C> std::fmt::Debug for Sluice<S, St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sluice")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy.name())
            .finish_non_exhaustive()
    }
}

/// The future of a [`Sluice`] service's response.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<LimitedBody<B>>, E>> + Send>>;

impl<S, St, C, ReqB, ResB> tower_service::Service<Request<ReqB>> for Sluice<S, St, C>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: CounterStore + Clone,
    C: Classify<ReqB>,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<LimitedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The service made ready is the one called (tower's rule): keep it
        // for this request, and a clone for the next.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        let classification = shared.classify.classify(&req);
        let report = UsageReport::default();
        req.extensions_mut().insert(report.clone());
        match classification {
            Classification::Refuse(e) => Box::pin(std::future::ready(Ok(error_response(&e)))),
            Classification::Exempt => Box::pin(serve(inner, req, None)),
            Classification::Admit(admission) => {
                Box::pin(admit_and_serve(shared, inner, req, admission, report))
            }
        }
    }
}

/// Calls the inner service; its response's body settles `reservation`.
async fn serve<S, ReqB, ResB>(
    mut inner: S,
    req: Request<ReqB>,
    reservation: Option<Reservation>,
) -> Result<Response<LimitedBody<ResB>>, S::Error>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>>,
{
    // Should this future be dropped while the call runs, the reservation
    // drops with it: what was reserved (or reported) stands.
    match inner.call(req).await {
        Ok(response) => Ok(response.map(|body| LimitedBody::served(body, reservation))),
        Err(e) => {
            if let Some(r) = reservation {
                r.end(Ending::Failed);
            }
            Err(e)
        }
    }
}

async fn admit_and_serve<S, St, C, ReqB, ResB>(
    shared: Arc<Shared<St, C>>,
    inner: S,
    req: Request<ReqB>,
    admission: Admission,
    report: UsageReport,
) -> Result<Response<LimitedBody<ResB>>, S::Error>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>>,
    St: CounterStore + Clone,
{
    let policy = &shared.policy;
    let now = shared.clock.now();
    let mut plan = policy.plan(&admission.request(), now);
    // A store shared between processes holds concurrency slots for a short
    // lease, renewed while the request runs.
    let slot_lease = shared.store.slot_lease().filter(|_| plan.holds_slots());
    if let Some(lease) = slot_lease {
        let until = sluice_core::facts::deadline(now, lease);
        plan.slots_until = sluice_core::Instant(until.0.min(plan.lease_until.0));
    }
    let decision = match shared.store.admit(&plan).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "the counter store did not answer an admission");
            return match shared.on_store_error {
                OnStoreError::Refuse => Ok(error_response(&ApiError::store_unavailable())),
                OnStoreError::Serve => serve(inner, req, None).await,
            };
        }
    };
    if !decision.is_admitted() {
        return Ok(refusal(&shared.policy, &admission, &decision, now, &shared.headers));
    }
    let reservation = decision.reservation().map(|id| {
        let heartbeat = slot_lease.and_then(|lease| renew_slots(&shared.store, id, lease));
        let reserved = Usage::tokens(admission.cost.input_tokens, admission.cost.output_tokens);
        Reservation::new(shared.settler.clone(), id, reserved, report, heartbeat)
    });
    let mut response = serve(inner, req, reservation).await?;
    insert_headers(response.headers_mut(), &decision, policy, now, &shared.headers);
    Ok(response)
}

/// The 429 of a refused decision: OpenAI's error body, `x-ratelimit-*`,
/// `retry-after` and `retry-after-ms` (or `x-should-retry: false`).
fn refusal<B>(
    policy: &Policy,
    admission: &Admission,
    decision: &Decision,
    now: sluice_core::Instant,
    opts: &HeaderOptions,
) -> Response<LimitedBody<B>> {
    let model = admission.model.id.and_then(|m| policy.model_info(m)).map_or("", |m| &m.name);
    let err = ApiError::rate_limited(decision, policy, model, admission.tenant.id(), now)
        .unwrap_or_else(ApiError::insufficient_quota);
    let mut r = error_response(&err);
    insert_headers(r.headers_mut(), decision, policy, now, opts);
    r
}

/// An OpenAI-style error answer of the layer's own.
fn error_response<B>(e: &ApiError) -> Response<LimitedBody<B>> {
    e.response(LimitedBody::answered)
}

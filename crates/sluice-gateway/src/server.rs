//! The HTTP server: accepts connections, routes requests, and shuts down
//! gracefully. It takes its listener and a shutdown future as arguments
//! (mini-redis style), so tests bind port 0 and stop it when they like.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use sluice_core::{Clock, CounterStore};
use sluice_llm::Estimator;
use sluice_llm::error::ApiError;
use sluice_served::edge::{ListenerOptions, RequestBody, Throttle, serve_connections};
use sluice_served::metrics::Metrics;
use sluice_served::{Runtime, Served};
use tokio::net::TcpListener;

use crate::background::Background;
use crate::body::{ResponseBody, full};
use crate::metrics::{Meters, ProxyMetrics};
use crate::proxy::Trace;
use crate::proxy::{error_response, models, proxy};
use crate::request_id::RequestIds;

/// The gateway: the served state ([`Served`], which it dereferences to:
/// runtime, store, clock, events) and what proxying adds to it.
pub struct Gateway<S> {
    served: Arc<Served<S>>,
    /// Token estimates (tokenizers load once).
    pub estimator: Arc<Estimator>,
    /// Work requests leave behind (reading a JSON body on after its client
    /// went away), cut at shutdown.
    pub background: Arc<Background>,
    /// Request ids: keyed with a secret of this process.
    ids: RequestIds,
    /// Requests refused for their API key, for the log.
    refused_keys: Throttle,
    started: std::time::Instant,
    /// The proxy's Prometheus metrics.
    metrics: Arc<ProxyMetrics>,
    /// Requests waiting for room instead of a 429 (`max_wait`).
    pub queue: sluice_store::WaitQueue,
}

impl<S> std::ops::Deref for Gateway<S> {
    type Target = Served<S>;

    fn deref(&self) -> &Served<S> {
        &self.served
    }
}

impl<S> Gateway<S> {
    /// Counts a request refused for its API key (missing, unknown or
    /// expired): one warning a second at most, with the count, never the
    /// key.
    pub fn key_refused(&self) {
        if let Some(n) = self.refused_keys.hit(self.started) {
            tracing::warn!(target: "sluice::audit", refused = n, "requests refused for a missing, unknown or expired API key");
        }
    }

    /// The served state (for the admin API and the decision service).
    pub fn served(&self) -> &Arc<Served<S>> {
        &self.served
    }

    /// The proxy's metrics.
    pub fn proxy_metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
    }
}

impl<S: CounterStore + Clone + Unpin> Gateway<S> {
    /// A gateway serving `runtime` with `store`.
    pub fn new(runtime: Runtime, store: S, clock: Arc<dyn Clock>) -> Arc<Self> {
        let estimator = Arc::new(Estimator::new());
        // Load the tokenizers now, not on the first request.
        for route in runtime.routes.values() {
            estimator.preload(route.encoding);
        }
        let shared = Metrics::default();
        let metrics =
            Arc::new(ProxyMetrics::new(shared.registry(), runtime.settings.metrics.per_tenant));
        let bind = metrics.clone();
        let prepare = Box::new(move |runtime| bind_meters(runtime, &bind));
        let served = Served::with_metrics(runtime, store, clock, shared, Some(prepare));
        Arc::new(Self {
            served,
            estimator,
            background: Arc::default(),
            ids: RequestIds::new(),
            refused_keys: Throttle::default(),
            started: std::time::Instant::now(),
            metrics,
            queue: sluice_store::WaitQueue::new(sluice_store::QueueBounds::default()),
        })
    }

    /// Handles one request.
    pub async fn handle(self: &Arc<Self>, req: Request<RequestBody>) -> Response<ResponseBody> {
        let request_id = self.ids.next();
        let rt = self.runtime();
        let path = req.uri().path();
        let mut resp = if let Some(endpoint) = rt.endpoints.get(path) {
            let mut trace = Trace::new(self.metrics.access_log().is_some());
            let resp = proxy(self, &rt, endpoint, req, &request_id, &mut trace).await;
            let status = resp.status().as_u16();
            if let Some(m) = crate::metrics::of(&rt) {
                m.request(endpoint.id, trace.model, trace.tier, status);
                if let Some(t) = trace.tenant {
                    m.tenant_request(t.facts.shared_id(), trace.model, status);
                }
            }
            // An admitted request's line is written when it settles.
            if let Some(log) = self.metrics.access_log()
                && !trace.handed_off
            {
                let mut record = trace.record(&rt, endpoint, &request_id);
                record.status = status;
                record.ending = if trace.denied.is_some() { "refused" } else { "rejected" };
                record.duration_ms = crate::access_log::ms(trace.arrived.elapsed());
                log.write(&record);
            }
            resp
        } else {
            match (req.method(), path) {
                (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
                (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
                (&Method::GET, "/v1/models") => models(self, &rt, req.headers()),
                (&Method::GET, "/v1/usage") => crate::usage::serve(self, &rt, req.headers()).await,
                (m, p) => error_response(&ApiError::unknown_url(m.as_str(), p)),
            }
        };
        resp.headers_mut().insert(HeaderName::from_static("x-request-id"), request_id);
        resp
    }
}

/// The policy's metrics bound to `metrics` (kept if they already are).
fn bind_meters(mut runtime: Runtime, metrics: &Arc<ProxyMetrics>) -> Runtime {
    if !crate::metrics::of(&runtime).is_some_and(|m| Arc::ptr_eq(m.metrics(), metrics)) {
        runtime.meters = Some(Arc::new(Meters::new(metrics, &runtime.policy)));
    }
    runtime
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The async runtime to serve on: work-stealing across the CPUs the
/// process may use or, when it may use only one (pinned, or a container
/// allowed one CPU), a current-thread runtime. That one does the same work
/// without the cross-thread bookkeeping a lone worker never needs: about 5%
/// more requests per second pinned to one CPU (docs/BENCHMARKS.md).
pub fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    if one_cpu {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    }
}

/// How long requests cut at the grace get to end (their reservations
/// settle as they are dropped).
const CUT: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 and HTTP/2 on `listener` within `opts`' limits until
/// `shutdown` completes, then stops accepting, lets requests in flight
/// finish (and settle) for up to `opts.grace`, cuts those still running
/// (their reservations end as the module `reservation` says: a stream
/// charged what went through, a request waiting for its upstream what was
/// reserved; their concurrency slots are released) and the work they left
/// behind, and returns. The settlements may still be on their way:
/// [`CounterStore::flush`] waits for them.
pub async fn serve<S>(
    listener: TcpListener,
    gateway: Arc<Gateway<S>>,
    shutdown: impl Future<Output = ()>,
    opts: ListenerOptions,
) -> std::io::Result<()>
where
    S: CounterStore + Clone + Unpin,
{
    let background = gateway.background.clone();
    let service = service_fn(move |req| {
        let gw = gateway.clone();
        async move { Ok::<_, Infallible>(gw.handle(req).await) }
    });
    serve_connections(listener, service, shutdown, opts).await?;
    background.cut(CUT).await;
    Ok(())
}

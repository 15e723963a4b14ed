//! The HTTP server: accepts connections, routes requests, and shuts down
//! gracefully. It takes its listener and a shutdown future as arguments
//! (mini-redis style), so tests bind port 0 and stop it when they like.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sluice_core::{Clock, CounterStore, EventSink, RequestEvent};
use sluice_llm::Estimator;
use sluice_llm::error::ApiError;
use sluice_store::History;
use tokio::net::TcpListener;

use crate::body::{ResponseBody, full};
use crate::proxy::{error_response, models, proxy};
use crate::runtime::Runtime;

/// The gateway: what every request shares.
pub struct Gateway<S> {
    runtime: ArcSwap<Runtime>,
    /// The counter store.
    pub store: S,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Token estimates (tokenizers load once).
    pub estimator: Arc<Estimator>,
    /// Request ids: a counter, started at a random point of the sequence.
    seq: AtomicU64,
    /// A random key mixed into every id, so that ids do not reveal how many
    /// requests this process has seen.
    id_key: u64,
    /// Who counts what requests do (set once, at start).
    events: OnceLock<Events>,
}

/// Where the events of requests go.
struct Events {
    /// Every event.
    sink: Arc<dyn EventSink>,
    /// The usage history (also a sink), for `/v1/usage`.
    history: Arc<History>,
}

impl<S> Gateway<S> {
    /// Records usage in `history` from now on (once; later calls are
    /// ignored).
    pub fn set_history(&self, history: Arc<History>) {
        let _ = self.events.set(Events { sink: history.clone(), history });
    }

    /// The usage history, if usage is recorded.
    pub fn history(&self) -> Option<&Arc<History>> {
        self.events.get().map(|e| &e.history)
    }

    /// Where events go, if anywhere (for a settlement that happens later).
    pub fn event_sink(&self) -> Option<&Arc<dyn EventSink>> {
        self.events.get().map(|e| &e.sink)
    }

    /// Tells every sink what a request did (memory only: cheap).
    #[inline]
    pub fn record(&self, event: &RequestEvent<'_>) {
        if let Some(e) = self.events.get() {
            e.sink.record(event);
        }
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
        Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            store,
            clock,
            estimator,
            seq: AtomicU64::new(RandomState::new().hash_one(0u64)),
            id_key: RandomState::new().hash_one(1u64),
            events: OnceLock::new(),
        })
    }

    /// The runtime now being served.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Serves `runtime` from now on (requests under way keep the old one).
    pub fn replace_runtime(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// A new request id: `req_` and 32 hex digits. Its first half is a
    /// bijection of the counter (so no two ids of one process are equal), its
    /// second half the same mixed with a random key; two multiplications
    /// each, not a keyed hash.
    fn request_id(&self) -> HeaderValue {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let a = mix64(n);
        let b = mix64(a ^ self.id_key);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = *b"req_00000000000000000000000000000000";
        for (i, digit) in id[4..].iter_mut().enumerate() {
            let word = if i < 16 { a } else { b };
            *digit = HEX[((word >> (60 - 4 * (i % 16))) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("req_0"))
    }

    /// Handles one request.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ResponseBody> {
        let request_id = self.request_id();
        let rt = self.runtime();
        let path = req.uri().path();
        let mut resp = if let Some(endpoint) = rt.endpoints.get(path) {
            proxy(self, &rt, endpoint, req, &request_id).await
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

/// MurmurHash3's 64-bit finalizer: a bijection of `u64` that spreads every
/// input bit over the whole output.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
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

/// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown` completes,
/// then stops accepting, lets requests in flight finish (and settle) for up
/// to `grace`, and returns.
pub async fn serve<S>(
    listener: TcpListener,
    gateway: Arc<Gateway<S>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()>
where
    S: CounterStore + Clone + Unpin,
{
    let service = service_fn(move |req| {
        let gw = gateway.clone();
        async move { Ok::<_, Infallible>(gw.handle(req).await) }
    });
    serve_connections(listener, service, shutdown, grace).await
}

/// The accept loop of every HTTP listener Sluice has (the proxy, the
/// decision service's JSON API): HTTP/1.1 and HTTP/2 with `service` on each
/// connection until `shutdown` completes; then no new connection, and those
/// in flight get up to `grace` to finish.
pub async fn serve_connections<Svc, B>(
    listener: TcpListener,
    service: Svc,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()>
where
    Svc: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    Svc::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "requests still in flight after the shutdown grace; stopping anyway");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::mix64;

    /// Request ids come from a counter through `mix64`: a bijection, so no
    /// two requests of one process share an id, and neighbours look
    /// unrelated.
    #[test]
    fn request_ids_never_repeat_and_do_not_show_the_count() {
        let ids: HashSet<u64> = (0..200_000u64).map(mix64).collect();
        assert_eq!(ids.len(), 200_000);
        // Consecutive counts differ in about half their bits.
        let flipped: u32 = (0..1_000u64).map(|n| (mix64(n) ^ mix64(n + 1)).count_ones()).sum();
        let mean = f64::from(flipped) / 1_000.0;
        assert!((24.0..40.0).contains(&mean), "mean bits flipped {mean}");
    }
}

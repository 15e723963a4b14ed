//! The edge: the one accept loop every listener of Sluice runs on (the
//! proxy, the admin API, the decision service's JSON API and its gRPC
//! service), with the timeouts and caps that keep a hostile or broken
//! client from holding what others need.
//!
//! | protection | how | past it |
//! | --- | --- | --- |
//! | request head | `head_timeout` from the connection's start (HTTP/2: its preface and first request too) or, kept alive over HTTP/1.1, from the next head's first byte | connection closed |
//! | head size | `max_head_bytes`: hyper's HTTP/1.1 read buffer (`max_buf_size`) and HTTP/2 header list | `431`, or the stream reset |
//! | request body | `body_timeout` from the first wait for body bytes | HTTP/1.1: connection closed; HTTP/2: the body fails (the handler answers 400) |
//! | keep-alive idle | `idle_timeout` with no request in flight | connection closed (HTTP/2: `GOAWAY` first) |
//! | connections | `max_connections` per listener | the least useful idle connection is closed to make room (one that has not finished a head first); if every one has a request in flight, the new one gets an HTTP/1.1 `503` with `retry-after: 1` and is closed |
//! | body memory | one [`BodyBudget`] over every listener: a body's declared length is reserved before the handler runs, bytes past it as they come | `503` + `retry-after: 1` before the body is read (a body without a length: when it outgrows the budget) |
//! | HTTP/2 | at most [`MAX_STREAMS`] streams a connection; pings every `idle_timeout`, a connection that does not answer within `head_timeout` closed | stream refused; connection closed |
//! | shutdown | every connection told to finish (HTTP/1.1 closes when idle, HTTP/2 `GOAWAY`, a connection still before its first request dropped); after `grace`, whatever is left is dropped | |
//!
//! hyper's own HTTP/1.1 `header_read_timeout` is not used: it also runs
//! while a kept-alive connection waits for its next request (so idle and
//! head time could not differ) and it allocates a timer per request. A
//! small per-connection watchdog ([`conn`]) keeps the head, idle and
//! HTTP/1.1 body deadlines instead, from a few atomic counters the
//! connection's reads and requests update; its timer is reset only when a
//! deadline moves earlier.

mod body;
mod conn;
mod registry;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_config::listener::ListenerLimits;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use body::{BodyError, EdgeResponseBody, RequestBody};

use crate::body::BoxError;
use body::EdgeService;
use conn::{ConnState, Signal, WatchedStream, watch};
use registry::Registry;

/// HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS: u32 = 100;

/// The memory request bodies in flight may take, across every listener.
#[derive(Debug)]
pub struct BodyBudget {
    used: AtomicUsize,
    max: usize,
}

impl BodyBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), max })
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `n` bytes, if they fit.
    fn take(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.max {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives `n` reserved bytes back.
    fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// How one listener serves: its name (in logs), limits, the shared body
/// budget, and the grace its connections get at shutdown.
#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// `proxy`, `admin`, `decisions-http`, `decisions-grpc`.
    pub name: &'static str,
    /// Timeouts and caps.
    pub limits: ListenerLimits,
    /// Request body memory, shared by every listener.
    pub budget: Arc<BodyBudget>,
    /// How long connections may take to finish at shutdown.
    pub grace: Duration,
    /// Its gauges (open connections, requests in flight), if counted.
    pub meters: Option<crate::metrics::ListenerMeters>,
}

impl ListenerOptions {
    /// Options with the proxy's default limits, a budget of its own and no
    /// grace (examples and tests).
    pub fn standalone(name: &'static str) -> Self {
        Self {
            name,
            limits: ListenerLimits::SERVER,
            budget: BodyBudget::new(sluice_config::listener::DEFAULT_BODY_MEMORY_BYTES),
            grace: Duration::ZERO,
            meters: None,
        }
    }
}

/// What every connection of a listener shares.
pub(crate) struct ListenerState {
    pub(crate) name: &'static str,
    pub(crate) limits: ListenerLimits,
    pub(crate) budget: Arc<BodyBudget>,
    /// Times are kept as milliseconds since this instant (plus one: zero
    /// means none).
    pub(crate) epoch: Instant,
    registry: Registry,
    /// Its gauges (detached ones when not counted).
    pub(crate) meters: crate::metrics::ListenerMeters,
}

impl ListenerState {
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

/// One log line per second at most, with how many events it stands for.
#[derive(Debug, Default)]
pub struct Throttle {
    last: AtomicU64,
    count: AtomicU64,
}

impl Throttle {
    /// Counts one event (`epoch`: any fixed instant); `Some(n)`: write a
    /// line for `n` events now.
    pub fn hit(&self, epoch: Instant) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = epoch.elapsed().as_secs() + 1;
        let last = self.last.load(Ordering::Relaxed);
        if now > last
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.count.swap(0, Ordering::Relaxed).max(1));
        }
        None
    }
}

/// What a connection past the cap gets when no idle one can make room.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 24\r\n\r\ntoo many connections...\n";

/// Serves HTTP/1.1 and HTTP/2 with `service` on every connection `listener`
/// accepts, within `opts`' limits, until `shutdown` completes; then accepts
/// nothing more, tells every connection to finish, and returns once they
/// have or `opts.grace` has passed (what is left is dropped: response
/// bodies settle their reservations when dropped).
pub async fn serve_connections<Svc, B>(
    listener: TcpListener,
    service: Svc,
    shutdown: impl Future<Output = ()>,
    opts: ListenerOptions,
) -> std::io::Result<()>
where
    Svc: hyper::service::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    Svc::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let limits = opts.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_head_bytes.max(sluice_config::listener::MIN_HEAD_BYTES));
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.head_timeout);
    let state = Arc::new(ListenerState {
        name: opts.name,
        limits,
        budget: opts.budget,
        epoch: Instant::now(),
        registry: Registry::default(),
        meters: opts.meters.unwrap_or_default(),
    });
    let accept_errors = Throttle::default();
    let refusals = Throttle::default();
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        if let Some(n) = accept_errors.hit(state.epoch) {
                            tracing::warn!(listener = state.name, error = %e, count = n, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if state.registry.len() >= limits.max_connections && !state.registry.evict_one() {
                    if let Some(n) = refusals.hit(state.epoch) {
                        tracing::warn!(listener = state.name, max_connections = limits.max_connections, refused = n, "connection cap reached with every connection busy; refusing new ones");
                    }
                    let _ = stream.try_write(REFUSED);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let conn = state.registry.insert(ConnState::new(&state));
                let io = TokioIo::new(WatchedStream::new(stream, conn.clone()));
                let svc = EdgeService::new(service.clone(), conn.clone());
                let connection = builder.serve_connection(io, svc).into_owned();
                let slot = registry::Slot::new(state.clone(), conn.clone());
                conns.spawn(async move {
                    watch(connection, |c| c.graceful_shutdown(), &conn).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    state.registry.signal_all(Signal::Shutdown);
    let drained =
        tokio::time::timeout(opts.grace, async { while conns.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        tracing::warn!(
            listener = state.name,
            grace = ?opts.grace,
            connections = conns.len(),
            "connections still open after the shutdown grace; closing them"
        );
        conns.shutdown().await;
    }
    Ok(())
}

//! One connection: what its reads and requests tell the watchdog, and the
//! watchdog itself, which closes the connection when a deadline passes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use sluice_config::listener::ListenerLimits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::ListenerState;

/// No request has started yet (its head, or HTTP/2's preface, is due).
const FRESH: u8 = 0;
/// A response has ended and nothing has come since.
const IDLE: u8 = 1;
/// HTTP/1.1: bytes of the next head have come.
const HEAD: u8 = 2;

/// What the listener asks of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Signal {
    None = 0,
    /// Close now: the listener needs room (only asked of idle connections).
    Evict = 1,
    /// Finish what is in flight and close.
    Shutdown = 2,
}

/// The state of one connection, shared by its stream, its requests and its
/// watchdog. Times are the listener's milliseconds (zero: none).
pub(crate) struct ConnState {
    pub(crate) listener: Arc<ListenerState>,
    /// Requests whose response has not ended.
    in_flight: AtomicU32,
    phase: AtomicU8,
    /// When the phase began.
    since: AtomicU64,
    /// HTTP/1.1: when the body being read first kept the handler waiting.
    body_since: AtomicU64,
    h2: AtomicBool,
    signal: AtomicU8,
    waker: AtomicWaker,
    /// Its place in the registry.
    pub(crate) slot: AtomicU64,
}

impl ConnState {
    pub(crate) fn new(listener: &Arc<ListenerState>) -> Self {
        Self {
            listener: listener.clone(),
            in_flight: AtomicU32::new(0),
            phase: AtomicU8::new(FRESH),
            since: AtomicU64::new(listener.now_ms()),
            body_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            signal: AtomicU8::new(Signal::None as u8),
            waker: AtomicWaker::new(),
            slot: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// No request in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// No request has been made on it yet (or, HTTP/1.1, a head is coming).
    pub(crate) fn before_request(&self) -> bool {
        self.phase.load(Ordering::Relaxed) != IDLE
    }

    /// Asks the connection to `signal`; false if it was asked already.
    pub(crate) fn signal(&self, signal: Signal) -> bool {
        let asked = self
            .signal
            .compare_exchange(
                Signal::None as u8,
                signal as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
            || (signal == Signal::Shutdown
                && self.signal.swap(signal as u8, Ordering::Relaxed) != Signal::Shutdown as u8);
        if asked {
            self.waker.wake();
        }
        asked
    }

    /// A request has started.
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.listener.meters.in_flight.inc();
    }

    /// A request's response has ended (or was dropped).
    pub(crate) fn request_ended(&self) {
        self.listener.meters.in_flight.dec();
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since.store(self.listener.now_ms(), Ordering::Relaxed);
            self.phase.store(IDLE, Ordering::Relaxed);
        }
    }

    /// HTTP/1.1: the body being read kept its handler waiting (`true`) or
    /// has ended (`false`).
    pub(crate) fn body_waiting(&self, waiting: bool) {
        // No wake-up: the handler runs inside the connection's task, whose
        // watchdog looks at the deadlines again right after.
        let t = if waiting { self.listener.now_ms() } else { 0 };
        self.body_since.store(t, Ordering::Relaxed);
    }

    /// Bytes came in.
    fn bytes_read(&self, first: bool, bytes: &[u8]) {
        if first {
            if bytes.starts_with(b"PRI ") || b"PRI ".starts_with(bytes) {
                self.h2.store(true, Ordering::Relaxed);
            }
        } else if self.phase.load(Ordering::Relaxed) == IDLE
            && self.in_flight.load(Ordering::Relaxed) == 0
            && !self.is_h2()
        {
            self.since.store(self.listener.now_ms(), Ordering::Relaxed);
            self.phase.store(HEAD, Ordering::Relaxed);
        }
    }

    /// The next deadline and what passing it means.
    fn deadline(&self) -> (u64, Expiry) {
        let l = &self.listener.limits;
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let body = self.body_since.load(Ordering::Relaxed);
            if body == 0 {
                return (u64::MAX, Expiry::Busy);
            }
            return (body.saturating_add(ms(l.body_timeout)), Expiry::Body);
        }
        let since = self.since.load(Ordering::Relaxed);
        match self.phase.load(Ordering::Relaxed) {
            IDLE => (since.saturating_add(ms(l.idle_timeout)), Expiry::Idle),
            _ => (since.saturating_add(ms(l.head_timeout)), Expiry::Head),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a passed deadline means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// A request in flight, not waiting for its body: no deadline here.
    Busy,
    /// A head did not come in time: close.
    Head,
    /// A body did not come in time: close.
    Body,
    /// Idle too long: close gracefully (HTTP/2 `GOAWAY`).
    Idle,
}

/// How long an idle connection told to close may take to do so.
const CLOSE_GRACE_MS: u64 = 1_000;

/// How often a connection's watchdog looks at its deadlines: a quarter of
/// the listener's shortest timeout, between 50 ms and a second. A timeout
/// is enforced at most this late.
fn tick_ms(limits: &ListenerLimits) -> u64 {
    let shortest =
        ms(limits.head_timeout).min(ms(limits.body_timeout)).min(ms(limits.idle_timeout));
    (shortest / 4).clamp(50, 1_000)
}

/// Runs `conn` until it ends or its watchdog closes it (by dropping it).
/// `graceful` starts a graceful close.
pub(crate) async fn watch<C, T, E>(conn: C, graceful: impl Fn(Pin<&mut C>), state: &ConnState)
where
    C: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let epoch = state.listener.epoch;
    let at = |t: u64| tokio::time::Instant::from_std(epoch + Duration::from_millis(t));
    let tick = tick_ms(&state.listener.limits);
    let (first, _) = state.deadline();
    let sleep = tokio::time::sleep_until(at(first.min(state.listener.now_ms() + tick)));
    tokio::pin!(sleep);
    // Once closing gracefully: the time by which it must be done.
    let mut closing: Option<u64> = None;
    // The task's waker, registered again only if it changes (it does not,
    // for a tokio task): a registration per poll costs a request ~300
    // instructions.
    let mut registered: Option<std::task::Waker> = None;
    std::future::poll_fn(|cx| {
        if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker.register(cx.waker());
            registered = Some(cx.waker().clone());
        }
        loop {
            match state.signal.load(Ordering::Relaxed) {
                s if s == Signal::Evict as u8 => return Poll::Ready(()),
                s if s == Signal::Shutdown as u8 && closing.is_none() => {
                    // A wake-up takes the registered waker: register again.
                    registered = None;
                    // The listener's grace bounds the rest.
                    graceful(conn.as_mut());
                    closing = Some(u64::MAX);
                }
                _ => {}
            }
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Poll::Ready(());
            }
            // The timer is a tick, never moved by a request: the deadlines
            // are looked at when it fires, at most `tick` after they pass
            // (a timer reset per request, under the timer driver's lock
            // both workers take, cost the proxy 2.5% of its throughput).
            if !sleep.is_elapsed() {
                return match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => continue,
                    Poll::Pending => Poll::Pending,
                };
            }
            let (mut deadline, expiry) = state.deadline();
            if let Some(c) = closing {
                deadline = deadline.min(c);
            }
            let now = state.listener.now_ms();
            if deadline <= now {
                match (expiry, closing) {
                    (Expiry::Idle, None) => {
                        graceful(conn.as_mut());
                        closing = Some(now + CLOSE_GRACE_MS);
                        continue;
                    }
                    (Expiry::Head | Expiry::Body, _) => {
                        tracing::debug!(
                            listener = state.listener.name,
                            ?expiry,
                            "request too slow; closing the connection"
                        );
                        return Poll::Ready(());
                    }
                    _ => return Poll::Ready(()),
                }
            }
            sleep.as_mut().reset(at(deadline.min(now.saturating_add(tick))));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
}

/// A TCP stream that tells its connection's state when bytes come in.
pub(crate) struct WatchedStream {
    inner: TcpStream,
    state: Arc<ConnState>,
    first: bool,
}

impl WatchedStream {
    pub(crate) fn new(inner: TcpStream, state: Arc<ConnState>) -> Self {
        Self { inner, state, first: true }
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                this.state.bytes_read(this.first, got);
                this.first = false;
            }
        }
        r
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

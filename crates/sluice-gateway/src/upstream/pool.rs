//! Cleartext (`http://`) upstreams speak HTTP/1.1 over a pool of hyper's
//! low-level connections kept here. A connection has no task of its own: the
//! request that holds it drives it (its task writes the request and reads
//! the response head), then the response body does (read by the client's
//! connection as it forwards the body), so no request, response or body
//! chunk is handed between tasks. A request takes an idle connection (or
//! opens one); the connection goes back to the pool when the response body
//! has been read to its end. A response dropped before its end (the client
//! went away) or a request given up (timeout) drops its connection, which
//! closes it and so cancels the upstream request. Idle connections are
//! checked when taken and swept every [`SWEEP`] for ones the upstream closed.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tower_service::Service;

use super::{IDLE_TIMEOUT, MAX_IDLE, chain};

type Sender = http1::SendRequest<Full<Bytes>>;
type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// How often idle connections are checked for having been closed.
const SWEEP: Duration = Duration::from_secs(15);

/// A cleartext upstream's connections.
pub(super) struct Pool {
    connector: HttpConnector,
    /// `http://host:port/`, what the connector connects to.
    dst: Uri,
    /// The `Host` header of every request.
    host: HeaderValue,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Whether the sweeper task runs.
    sweeping: AtomicBool,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// An HTTP/1.1 connection, driven by whoever holds it. Boxed where it is
/// kept and lent (hyper's connection state is large; a box moves as a
/// pointer between the pool, the request and the response body).
struct Conn {
    tx: Sender,
    conn: Connection,
    /// The connection has ended (it must not be polled again).
    closed: bool,
}

impl Conn {
    /// Does the connection's work that can be done now (write the request,
    /// read the response into its body); false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed
            && let Poll::Ready(result) = Pin::new(&mut self.conn).poll(cx)
        {
            self.closed = true;
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        }
        !self.closed
    }

    /// Waits until a request can be sent; false if the connection has ended.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            let open = self.drive(cx);
            match self.tx.poll_ready(cx) {
                Poll::Ready(r) => Poll::Ready(r.is_ok() && open),
                Poll::Pending if open => Poll::Pending,
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await
    }
}

impl Pool {
    /// A pool of connections to `dst` (`http://host:port/`) made by
    /// `connector`, whose requests carry `host`.
    pub(super) fn new(connector: HttpConnector, dst: Uri, host: HeaderValue) -> Self {
        Self {
            connector,
            dst,
            host,
            idle: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
        }
    }

    /// The most recently used idle connection that is not too old.
    fn checkout(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() > IDLE_TIMEOUT {
                // Every other idle connection is older still.
                idle.clear();
                return None;
            }
            if !entry.conn.closed && !entry.conn.tx.is_closed() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Puts a connection whose response has ended back.
    fn checkin(self: &Arc<Self>, conn: Box<Conn>) {
        if conn.closed || conn.tx.is_closed() {
            return;
        }
        {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(Idle { conn, since: Instant::now() });
            }
        }
        // A load first: the swap (a write) happens once per pool, not per request.
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// A new connection.
    async fn connect(&self) -> Result<Box<Conn>, String> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await.map_err(|e| chain(&e))?;
        let io = connector.call(self.dst.clone()).await.map_err(|e| chain(&e))?;
        let (tx, conn) = http1::Builder::new().handshake(io).await.map_err(|e| chain(&e))?;
        Ok(Box::new(Conn { tx, conn, closed: false }))
    }

    /// Sends `req` on an idle connection or a new one. A request that could
    /// not be started on a reused connection (closed by the upstream while
    /// idle) is sent again on another.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, String> {
        req.headers_mut().entry(HOST).or_insert_with(|| self.host.clone());
        loop {
            let (mut c, reused) = match self.checkout() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            if !c.ready().await {
                if reused {
                    continue;
                }
                return Err("the connection closed before the request was sent".into());
            }
            let mut sent = pin!(c.tx.try_send_request(req));
            let result = poll_fn(|cx| {
                c.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|inner| UpstreamBody::pooled(inner, pool, c)));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(chain(&e.into_error())),
                },
            }
        }
    }
}

/// Every [`SWEEP`], drops the idle connections that have been closed or
/// have been idle too long, until the pool is gone.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = pool.idle.lock();
        idle.retain_mut(|e| {
            e.since.elapsed() <= IDLE_TIMEOUT && e.conn.drive(&mut cx) && !e.conn.tx.is_closed()
        });
    }
}

/// A connection lent to a response.
struct Lent {
    pool: Arc<Pool>,
    conn: Box<Conn>,
}

/// An upstream response body. Polling it drives its connection (when it is
/// pooled); read to its end, the connection goes back to the pool; dropped
/// before, the connection is closed.
pub struct UpstreamBody {
    inner: Incoming,
    lent: Option<Lent>,
}

impl UpstreamBody {
    /// A body that holds no pooled connection (hyper-util's client keeps
    /// its own).
    pub(super) fn unpooled(inner: Incoming) -> Self {
        Self { inner, lent: None }
    }

    fn pooled(inner: Incoming, pool: Arc<Pool>, conn: Box<Conn>) -> Self {
        let mut body = Self { inner, lent: Some(Lent { pool, conn }) };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(Lent { pool, conn }) = self.lent.take() {
            pool.checkin(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lent) = &mut this.lent {
            lent.conn.drive(cx);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.lent = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

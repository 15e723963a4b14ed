//! Upstream inference servers: one pooled HTTP client per upstream, its base
//! URL, its own API key (read from the environment, never from the client),
//! and its timeouts.
//!
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
//!
//! TLS (`https://`) upstreams go through hyper-util's pooled client, which
//! negotiates HTTP/2 or HTTP/1.1 by ALPN.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use sluice_config::gateway::Upstream;
use tokio::net::TcpStream;
use tower_service::Service;

/// Why an upstream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The API key's environment variable is not set.
    #[error(
        "upstream `{upstream}`: the environment variable `{var}` (its `api_key_env`) is not set"
    )]
    MissingKey {
        /// The upstream.
        upstream: String,
        /// The variable.
        var: String,
    },
    /// The key cannot be sent as a header.
    #[error("upstream `{0}`: its API key contains characters that cannot go in a header")]
    BadKey(String),
    /// The base URL cannot be combined with request paths.
    #[error("upstream `{upstream}`: `{url}` is not a usable base URL")]
    BadUrl {
        /// The upstream.
        upstream: String,
        /// The URL.
        url: String,
    },
}

/// Why a request to an upstream failed before its response started.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No response within the upstream's timeout (504).
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, reset, DNS, TLS… (502).
    #[error("the upstream could not be reached: {0}")]
    Unreachable(String),
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;
type Sender = http1::SendRequest<Full<Bytes>>;
type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most idle connections kept per upstream.
const MAX_IDLE: usize = 1024;
/// How often idle connections are checked for having been closed.
const SWEEP: Duration = Duration::from_secs(15);

/// How requests reach the upstream.
enum Transport {
    /// `http://`: HTTP/1.1 over the pool below.
    Plain(Arc<Pool>),
    /// `https://`: hyper-util's pooled client (HTTP/2 or HTTP/1.1 by ALPN).
    Tls(Box<HttpClient>),
}

/// A pooled client for one upstream.
pub struct UpstreamClient {
    /// Its name (from the policy file).
    pub name: String,
    base: String,
    /// The base URL's path, without a trailing `/` (origin-form requests).
    base_path: String,
    auth: Option<HeaderValue>,
    /// Time until the response starts.
    pub timeout: Duration,
    transport: Transport,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("UpstreamClient")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("has_key", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// A client for `upstream`, at `base` (its `base_url`, or a mock's).
    pub fn new(upstream: &Upstream, base: &str) -> Result<Self, UpstreamError> {
        let auth = match &upstream.api_key_env {
            None => None,
            Some(var) => {
                let key = std::env::var(var).map_err(|_| UpstreamError::MissingKey {
                    upstream: upstream.name.clone(),
                    var: var.clone(),
                })?;
                let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| UpstreamError::BadKey(upstream.name.clone()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let base = base.trim_end_matches('/').to_owned();
        let bad_url =
            || UpstreamError::BadUrl { upstream: upstream.name.clone(), url: base.clone() };
        let Ok(full) = format!("{base}/chat/completions").parse::<Uri>() else {
            return Err(bad_url());
        };
        let (Some(scheme), Some(authority)) = (full.scheme(), full.authority()) else {
            return Err(bad_url());
        };
        // What follows the authority: the path (and query) requests are
        // appended to.
        let base_path = base
            .find("://")
            .and_then(|i| base.get(i + 3 + authority.as_str().len()..))
            .unwrap_or("")
            .to_owned();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(upstream.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let transport = if *scheme == Scheme::HTTP {
            // The Host header hyper-util's client would set: the port only
            // when it is not the scheme's default.
            let host = match authority.port_u16() {
                Some(80) | None => HeaderValue::from_str(authority.host()),
                Some(port) => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
            }
            .map_err(|_| bad_url())?;
            let dst = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|_| bad_url())?;
            Transport::Plain(Arc::new(Pool {
                connector: http,
                dst,
                host,
                idle: Mutex::new(Vec::new()),
                sweeping: AtomicBool::new(false),
            }))
        } else {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .pool_max_idle_per_host(MAX_IDLE)
                .build(https);
            Transport::Tls(Box::new(client))
        };
        Ok(Self {
            name: upstream.name.clone(),
            base,
            base_path,
            auth,
            timeout: upstream.timeout,
            transport,
        })
    }

    /// The upstream URI for a client's request path: the part after `/v1`
    /// is appended to the base URL (which ends in `/v1` for OpenAI-style
    /// servers). For a cleartext upstream, in origin form (the path only),
    /// as sent on the wire.
    pub fn uri(&self, path_and_query: &str) -> Option<Uri> {
        let rest = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
        match self.transport {
            Transport::Plain(_) => {
                let mut s = String::with_capacity(self.base_path.len() + rest.len() + 1);
                if !self.base_path.starts_with('/') && !rest.starts_with('/') {
                    s.push('/');
                }
                s.push_str(&self.base_path);
                s.push_str(rest);
                PathAndQuery::from_maybe_shared(Bytes::from(s)).ok().map(Uri::from)
            }
            Transport::Tls(_) => format!("{}{rest}", self.base).parse().ok(),
        }
    }

    /// The `Authorization` value for the upstream, if it has a key.
    pub fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    /// Sends a request (its URI from [`UpstreamClient::uri`]); waits at most
    /// the upstream's timeout for the response to start.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let sent = match &self.transport {
            Transport::Plain(pool) => tokio::time::timeout(self.timeout, pool.send(req)).await,
            Transport::Tls(client) => {
                tokio::time::timeout(self.timeout, client.request(req)).await.map(|r| {
                    r.map(|resp| resp.map(|b| UpstreamBody { inner: b, lent: None }))
                        .map_err(|e| chain(&e))
                })
            }
        };
        match sent {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(Err(msg)) => Err(SendError::Unreachable(msg)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// An error and its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// A cleartext upstream's connections.
struct Pool {
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
    async fn send(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    //! The cleartext pool against a raw HTTP/1.1 server over loopback that
    //! counts its connections and can close them.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use sluice_config::gateway::UpstreamTarget;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[derive(Clone, Copy)]
    enum Mode {
        /// Answers every request on a connection, keeps it open.
        KeepAlive,
        /// Answers one request, then closes the connection without saying so
        /// (as an upstream's idle timeout does).
        CloseAfterEach,
        /// Starts a chunked body and never ends it.
        Endless,
        /// Reads the request and never answers.
        Silent,
        /// Answers with 4 MiB, after telling the request body's length in a
        /// header.
        Big,
    }

    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        requests: AtomicUsize,
        /// Connections the client closed.
        closed_by_client: AtomicUsize,
        /// The body length of the last request.
        last_request_bytes: AtomicUsize,
    }

    /// Reads one request (head and `content-length` body); its body's
    /// length, or `None` at EOF.
    async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                while buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..end + 4 + len);
                return Some(len);
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn server(mode: Mode) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                s2.accepted.fetch_add(1, Ordering::SeqCst);
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(len) = read_request(&mut s, &mut buf).await {
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        seen.last_request_bytes.store(len, Ordering::SeqCst);
                        match mode {
                            Mode::KeepAlive | Mode::CloseAfterEach => {
                                let body = b"{\"ok\":true}";
                                let head = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                    body.len()
                                );
                                s.write_all(head.as_bytes()).await.unwrap();
                                s.write_all(body).await.unwrap();
                                if matches!(mode, Mode::CloseAfterEach) {
                                    return;
                                }
                            }
                            Mode::Silent => {
                                let mut one = [0u8; 1];
                                let _ = s.read(&mut one).await;
                                seen.closed_by_client.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Mode::Big => {
                                let body = vec![b'x'; 4 << 20];
                                let head = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-request-bytes: {}\r\n\r\n",
                                    body.len(),
                                    seen.last_request_bytes.load(Ordering::SeqCst)
                                );
                                s.write_all(head.as_bytes()).await.unwrap();
                                s.write_all(&body).await.unwrap();
                            }
                            Mode::Endless => {
                                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                                s.write_all(head.as_bytes()).await.unwrap();
                                let chunk = "data: {}\n\n";
                                let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                                s.write_all(framed.as_bytes()).await.unwrap();
                                // Until the client goes away.
                                let mut one = [0u8; 1];
                                let _ = s.read(&mut one).await;
                                seen.closed_by_client.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    seen.closed_by_client.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (base, seen)
    }

    fn client(base: &str) -> UpstreamClient {
        client_with_timeout(base, Duration::from_secs(5))
    }

    fn client_with_timeout(base: &str, timeout: Duration) -> UpstreamClient {
        let upstream = Upstream {
            name: "test".into(),
            target: UpstreamTarget::Url(base.into()),
            api_key_env: None,
            connect_timeout: Duration::from_secs(2),
            timeout,
        };
        UpstreamClient::new(&upstream, base).unwrap()
    }

    fn request(c: &UpstreamClient) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")));
        *r.method_mut() = http::Method::POST;
        *r.uri_mut() = c.uri("/v1/chat/completions").unwrap();
        r
    }

    async fn read_all(c: &UpstreamClient) -> Bytes {
        let resp = c.send(request(c)).await.expect("a response");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    /// Waits up to a second for the upstream to see the client close one
    /// connection.
    async fn wait_closed_by_client(seen: &Seen) {
        for _ in 0..100 {
            if seen.closed_by_client.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Four requests at once, each read to its end.
    async fn four_at_once(c: &Arc<UpstreamClient>) {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { read_all(&c).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(&t.await.unwrap()[..], b"{\"ok\":true}");
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (base, seen) = server(Mode::KeepAlive).await;
        let c = client(&base);
        for _ in 0..5 {
            assert_eq!(&read_all(&c).await[..], b"{\"ok\":true}");
        }
        assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 1, "one connection for five requests");
        // Requests at once each get a connection, and all come back.
        let c = Arc::new(c);
        four_at_once(&c).await;
        let opened = seen.accepted.load(Ordering::SeqCst);
        assert!(opened <= 4);
        // They came back: four more at once open nothing new.
        four_at_once(&c).await;
        assert_eq!(
            seen.accepted.load(Ordering::SeqCst),
            opened,
            "the pooled connections were reused"
        );
        assert_eq!(seen.requests.load(Ordering::SeqCst), 13);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let (base, seen) = server(Mode::CloseAfterEach).await;
        let c = client(&base);
        for i in 0..4 {
            assert_eq!(&read_all(&c).await[..], b"{\"ok\":true}", "request {i}");
            // Let the close reach the client before the next request.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_closes_its_connection() {
        let (base, seen) = server(Mode::Endless).await;
        let c = client(&base);
        let resp = c.send(request(&c)).await.expect("a response");
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: {}\n\n");
        drop(body);
        // The upstream sees the connection close (and so stops generating).
        wait_closed_by_client(&seen).await;
        assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 1);
        // The next request does not reuse it.
        let resp = c.send(request(&c)).await.expect("a response");
        drop(resp);
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn big_bodies_go_both_ways_and_the_connection_is_reused() {
        let (base, seen) = server(Mode::Big).await;
        let c = client(&base);
        for _ in 0..2 {
            let mut r = Request::new(Full::new(Bytes::from(vec![b'y'; 3 << 20])));
            *r.method_mut() = http::Method::POST;
            *r.uri_mut() = c.uri("/v1/chat/completions").unwrap();
            let resp = c.send(r).await.expect("a response");
            assert_eq!(resp.headers()["x-request-bytes"], (3 << 20).to_string().as_str());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 4 << 20);
        }
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_and_its_connection_is_closed() {
        let (base, seen) = server(Mode::Silent).await;
        let c = client_with_timeout(&base, Duration::from_millis(200));
        let started = Instant::now();
        let Err(e) = c.send(request(&c)).await else { panic!("an answer from a silent upstream") };
        assert!(matches!(e, SendError::Timeout(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        wait_closed_by_client(&seen).await;
        assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 1, "the upstream saw it go");
        assert!(c.send(request(&c)).await.is_err());
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 2, "not reused");
    }
}

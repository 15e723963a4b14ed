//! Requests through the edge: the body a handler reads (with its deadline
//! and its share of the memory budget) and the response body that tells the
//! connection when the request has ended.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use sluice_llm::error::ApiError;
use tokio::time::Sleep;

use super::conn::ConnState;
use crate::body::BoxError;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed.
    #[error("the request body could not be read: {0}")]
    Read(#[from] hyper::Error),
    /// It did not come within the listener's `body_timeout`.
    #[error("the request body did not arrive in time")]
    TimedOut,
    /// The request bodies in flight fill the memory budget.
    #[error("too many request bodies in flight")]
    Busy,
}

/// A request body, read within the listener's `body_timeout` and the
/// shared memory budget.
pub struct RequestBody {
    inner: Incoming,
    conn: Arc<ConnState>,
    /// Bytes of the budget held.
    reserved: usize,
    /// Bytes come so far.
    seen: usize,
    /// The handler has waited for it.
    waited: bool,
    ended: bool,
    /// HTTP/2: its own deadline (HTTP/1.1's is the connection's).
    deadline: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            if self.waited && self.deadline.is_none() {
                self.conn.body_waiting(false);
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len();
                    if this.seen > this.reserved {
                        let more = this.seen - this.reserved;
                        if !this.conn.listener.budget.take(more) {
                            this.end();
                            return Poll::Ready(Some(Err(BodyError::Busy)));
                        }
                        this.reserved = this.seen;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end();
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.waited {
                    this.waited = true;
                    if this.conn.is_h2() {
                        let timeout = this.conn.listener.limits.body_timeout;
                        this.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                    } else {
                        this.conn.body_waiting(true);
                    }
                }
                if let Some(d) = &mut this.deadline
                    && d.as_mut().poll(cx).is_ready()
                {
                    this.end();
                    return Poll::Ready(Some(Err(BodyError::TimedOut)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.end();
        self.conn.listener.budget.give(self.reserved);
    }
}

/// Counts a request in flight until its response ends or is dropped.
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body: the handler's, or the edge's own `503`.
pub enum EdgeResponseBody<B> {
    /// The handler's, with the request's place in flight.
    Served(B, #[allow(dead_code)] InFlightGuard),
    /// The edge's answer.
    Own(Option<Bytes>),
}

/// Keeps a request counted in flight (opaque).
pub struct InFlightGuard(#[allow(dead_code)] InFlight);

impl<B> Body for EdgeResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Served(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Own(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Served(b, _) => b.is_end_stream(),
            Self::Own(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Served(b, _) => b.size_hint(),
            Self::Own(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The service of one connection: the listener's, behind the edge.
#[derive(Clone)]
pub(crate) struct EdgeService<S> {
    inner: S,
    conn: Arc<ConnState>,
}

impl<S> EdgeService<S> {
    pub(crate) fn new(inner: S, conn: Arc<ConnState>) -> Self {
        Self { inner, conn }
    }
}

fn busy<B>() -> Response<EdgeResponseBody<B>> {
    let e = ApiError::busy();
    let mut r = Response::new(EdgeResponseBody::Own(Some(Bytes::from(e.body()))));
    *r.status_mut() = e.status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ApiError::CONTENT_TYPE));
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

impl<S, B> hyper::service::Service<Request<Incoming>> for EdgeService<S>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<EdgeResponseBody<B>>;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let budget = &self.conn.listener.budget;
        // A declared length is reserved whole before the handler runs: a
        // body that cannot fit is refused before a byte of it is read.
        let reserved = match req.body().size_hint().exact() {
            Some(n) if n > 0 && n <= budget.max as u64 => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if !budget.take(n) {
                    return EdgeFuture::Refused;
                }
                n
            }
            _ => 0,
        };
        self.conn.request_started();
        let guard = InFlight(self.conn.clone());
        let req = req.map(|inner| RequestBody {
            inner,
            conn: self.conn.clone(),
            reserved,
            seen: 0,
            waited: false,
            ended: false,
            deadline: None,
        });
        EdgeFuture::Served { fut: self.inner.call(req), guard: Some(guard) }
    }
}

pin_project_lite::pin_project! {
    /// The future of one request through the edge.
    #[project = EdgeFutureProj]
    pub(crate) enum EdgeFuture<F> {
        Served { #[pin] fut: F, guard: Option<InFlight> },
        Refused,
    }
}

impl<F, B> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<EdgeResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeFutureProj::Served { fut, guard } => {
                let Ok(resp) = std::task::ready!(fut.poll(cx));
                let guard = guard.take().map(InFlightGuard);
                Poll::Ready(Ok(match guard {
                    Some(g) => resp.map(|b| EdgeResponseBody::Served(b, g)),
                    // Polled again after it was ready: hyper never does.
                    None => busy(),
                }))
            }
            EdgeFutureProj::Refused => Poll::Ready(Ok(busy())),
        }
    }
}

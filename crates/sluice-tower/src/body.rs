//! The response body of a request that went through the layer: the inner
//! service's, which settles the request's reservation when it ends, or an
//! answer of the layer's own (a 429, a 503, a refusal of the classifier).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::reservation::{Ending, Reservation};

pin_project_lite::pin_project! {
    /// The body of every response of a [`Sluice`](crate::Sluice) service.
    ///
    /// An admitted request's reservation is settled when this body ends:
    /// its last frame is read, it fails, or it is dropped (the client went
    /// away), whichever comes first: see [the charges](crate#what-a-request-is-charged).
    pub struct LimitedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        /// The inner service's body.
        Served {
            #[pin]
            body: B,
            reservation: Option<Reservation>,
        },
        /// The layer's own answer (JSON).
        Answered {
            body: Option<Bytes>,
        },
    }
}

impl<B> LimitedBody<B> {
    /// The inner service's `body`, settling `reservation` when it ends.
    pub(crate) fn served(body: B, reservation: Option<Reservation>) -> Self {
        Self { kind: Kind::Served { body, reservation } }
    }

    /// A body of the layer's own.
    pub(crate) fn answered(bytes: Vec<u8>) -> Self {
        Self { kind: Kind::Answered { body: Some(Bytes::from(bytes)) } }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for LimitedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Served { body, reservation } => f
                .debug_struct("Served")
                .field("body", body)
                .field("reservation", reservation)
                .finish(),
            Kind::Answered { body } => f.debug_struct("Answered").field("body", body).finish(),
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Served { mut body, reservation } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                let ended = match &frame {
                    Some(Ok(_)) => body.is_end_stream(),
                    Some(Err(_)) | None => true,
                };
                if ended && let Some(r) = reservation.take() {
                    // The body is over: settled before the client has seen
                    // its last byte.
                    r.end(Ending::Answered);
                }
                Poll::Ready(frame)
            }
            KindProj::Answered { body } => {
                Poll::Ready(body.take().map(|b| Ok(Frame::data(b.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Served { body, .. } => body.is_end_stream(),
            Kind::Answered { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Served { body, .. } => body.size_hint(),
            Kind::Answered { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

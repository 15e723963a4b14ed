//! Response bodies that are streamed through as they arrive and settle the
//! request's reservation when they end.
//!
//! A [`Metered`] body forwards each frame of the upstream body as soon as it
//! comes (backpressure is hyper's: a frame is only polled when the client
//! has taken the previous one). On the way it keeps what settlement needs:
//! for JSON, the body (bounded) to read `usage` from at the end; for SSE, an
//! [`SseUsageTap`] that takes the usage from the final chunk (and strips that
//! chunk when the client did not ask for it) and counts what was generated.
//! When the body ends, or is dropped because the client went away (which also
//! drops the upstream body and so cancels the upstream request), or the
//! upstream fails mid-way, the reservation is settled exactly once with the
//! best figure there is.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use sluice_core::policy::Model;
use sluice_core::{CounterStore, EventSink, RequestEvent, ReservationId, Step, TenantFacts, Usage};
use sluice_llm::usage::{SseUsageTap, usage_from_json};

use crate::upstream::UpstreamBody;

/// Errors of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The most of a JSON response kept to read its `usage` from.
const JSON_KEEP: usize = 8 * 1024 * 1024;

/// How the body is read on its way through.
pub enum Tap {
    /// A JSON response: keep its frames (shared, not copied) to read
    /// `usage` from at the end.
    Json(JsonFrames),
    /// An SSE stream.
    Sse(Box<SseUsageTap>),
    /// Not metered: the request is settled as `on_success` says (e.g. an
    /// upstream error response, refunded).
    None,
}

/// The frames of a JSON body, up to [`JSON_KEEP`] bytes.
#[derive(Default)]
pub struct JsonFrames {
    /// The first frame (often the only one).
    first: Option<Bytes>,
    /// The others.
    rest: Vec<Bytes>,
    len: usize,
    /// The usage of a body that came whole in one frame, read as it passed
    /// (nothing kept).
    whole: Option<Option<sluice_llm::usage::Usage>>,
}

impl JsonFrames {
    /// Takes note of `frame`; `last`: the body ends with it.
    fn push(&mut self, frame: &Bytes, last: bool) {
        if last && self.first.is_none() {
            self.whole = Some(usage_from_json(frame));
            return;
        }
        if self.len + frame.len() <= JSON_KEEP {
            self.len += frame.len();
            if self.first.is_none() {
                self.first = Some(frame.clone());
            } else {
                self.rest.push(frame.clone());
            }
        }
    }

    /// The `usage` of the body kept.
    fn usage(&self) -> Option<sluice_llm::usage::Usage> {
        if let Some(whole) = self.whole {
            return whole;
        }
        match (&self.first, self.rest.is_empty()) {
            (Some(one), true) => usage_from_json(one),
            (first, _) => {
                let mut all = Vec::with_capacity(self.len);
                for f in first.iter().chain(&self.rest) {
                    all.extend_from_slice(f);
                }
                usage_from_json(&all)
            }
        }
    }
}

/// Who is told what a request used when it settles: the tenant and model
/// it is counted under, and where the event goes (the usage history).
pub struct UsageNote {
    sink: Arc<dyn EventSink>,
    tenant: Arc<str>,
    tenant_hash: u64,
    model: Arc<str>,
    model_hash: u64,
}

impl UsageNote {
    /// A note for `tenant`'s request to `model` (shared names: nothing is
    /// copied).
    pub fn new(sink: &Arc<dyn EventSink>, tenant: &TenantFacts, model: &Model) -> Self {
        Self {
            sink: sink.clone(),
            tenant: tenant.shared_id().clone(),
            tenant_hash: tenant.hash(),
            model: model.name.clone(),
            model_hash: model.hash,
        }
    }

    /// Tells the sink what the request used.
    fn settled(self, usage: Usage) {
        let step =
            Step::Settled { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens };
        self.sink.record(&RequestEvent {
            tenant: &self.tenant,
            tenant_hash: self.tenant_hash,
            model: &self.model,
            model_hash: self.model_hash,
            step,
        });
    }
}

/// What settling needs besides the body.
pub struct Settler<S: CounterStore> {
    store: S,
    id: Option<ReservationId>,
    /// Estimated input tokens (charged for input when the upstream does not
    /// report usage).
    input_estimate: u64,
    /// What was reserved: the charge when nothing better is known.
    reserved: Usage,
    /// Usage to settle with when the body ends normally and carries none
    /// (`None`: the reserved amounts).
    on_success: Option<Usage>,
    /// Who is told the usage (once).
    note: Option<UsageNote>,
}

impl<S: CounterStore> Settler<S> {
    /// A settler for reservation `id` (none: nothing to settle).
    pub fn new(store: S, id: Option<ReservationId>, input_estimate: u64, reserved: Usage) -> Self {
        Self { store, id, input_estimate, reserved, on_success: None, note: None }
    }

    /// Tells `note` the usage when the request settles.
    pub fn noting(mut self, note: UsageNote) -> Self {
        self.note = Some(note);
        self
    }

    /// Settle with `usage` when the body ends, whatever it says.
    pub fn with_fixed_usage(mut self, usage: Usage) -> Self {
        self.on_success = Some(usage);
        self
    }

    /// Settles now (once).
    pub fn settle(&mut self, usage: Usage) {
        if let Some(id) = self.id.take() {
            self.store.settle_detached(id, usage);
        }
        if let Some(note) = self.note.take() {
            note.settled(usage);
        }
    }
}

impl<S: CounterStore> Drop for Settler<S> {
    fn drop(&mut self) {
        // Nobody settled: the request ended before a response (an error on
        // the way); charge what was reserved.
        let reserved = self.reserved;
        self.settle(reserved);
    }
}

/// An upstream body, forwarded and metered.
pub struct Metered<S: CounterStore> {
    inner: UpstreamBody,
    tap: Tap,
    settler: Settler<S>,
    done: bool,
}

impl<S: CounterStore> Metered<S> {
    /// Wraps an upstream body.
    pub fn new(inner: UpstreamBody, tap: Tap, settler: Settler<S>) -> Self {
        Self { inner, tap, settler, done: false }
    }

    /// What the request used, from what went through so far. `complete`:
    /// the body ended normally.
    fn usage(&self, complete: bool) -> Usage {
        let s = &self.settler;
        if complete && let Some(u) = s.on_success {
            return u;
        }
        let reported = match &self.tap {
            Tap::Json(frames) if complete => frames.usage(),
            Tap::Sse(tap) => tap.usage(),
            _ => None,
        };
        match (reported, &self.tap) {
            (Some(u), _) => Usage::tokens(u.input, u.output),
            // A stream that broke off before its usage chunk: the prompt as
            // estimated, and what was generated so far.
            (None, Tap::Sse(tap)) => Usage::tokens(s.input_estimate, tap.estimated_output_tokens()),
            // A complete JSON body without usage: the reservation stands.
            (None, Tap::Json(_)) if complete => s.reserved,
            // Cut off before the end of a JSON body: nothing came back.
            (None, Tap::Json(_)) => Usage::tokens(s.input_estimate, 0),
            (None, Tap::None) => s.on_success.unwrap_or(s.reserved),
        }
    }

    fn finish(&mut self, complete: bool) {
        if !self.done {
            self.done = true;
            let usage = self.usage(complete);
            self.settler.settle(usage);
        }
    }

    /// As a response body.
    pub fn boxed(self) -> ResponseBody
    where
        S: Unpin,
    {
        self.boxed_unsync()
    }
}

impl<S: CounterStore> Drop for Metered<S> {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the server is
        // shutting down). Charge what was generated.
        self.finish(false);
    }
}

impl<S: CounterStore + Unpin> Body for Metered<S> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    // A body with a length is over with its last frame: hyper
                    // may never poll for the end, so settle now.
                    let last = this.inner.is_end_stream();
                    let out = match &mut this.tap {
                        Tap::Json(frames) => {
                            frames.push(&frame, last);
                            frame
                        }
                        Tap::None => frame,
                        Tap::Sse(tap) => {
                            let mut out = BytesMut::with_capacity(frame.len());
                            tap.push(&frame, &mut out);
                            if last {
                                tap.finish(&mut out);
                            }
                            out.freeze()
                        }
                    };
                    if last {
                        this.finish(true);
                    }
                    if out.is_empty() && !last {
                        // Everything was held back (an incomplete event, or
                        // the stripped usage chunk): read on.
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(None) => {
                    let mut tail = BytesMut::new();
                    if let Tap::Sse(tap) = &mut this.tap {
                        tap.finish(&mut tail);
                    }
                    this.finish(true);
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail.freeze()))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    // The upstream failed mid-body: what came through is
                    // charged; the client sees the body end with an error.
                    this.finish(false);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.tap {
            // Stripping a chunk changes the length: promise nothing.
            Tap::Sse(_) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

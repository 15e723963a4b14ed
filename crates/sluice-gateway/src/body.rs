//! Response bodies that are streamed through as they arrive and end the
//! request's [`Reservation`] when they end.
//!
//! A [`Metered`] body forwards each frame of the upstream body as soon as it
//! comes (backpressure is hyper's: a frame is only polled when the client
//! has taken the previous one). On the way it keeps what settlement needs:
//! for JSON, the body (bounded) to read `usage` from at the end; for SSE, an
//! [`SseUsageTap`] that takes the usage from the final chunk (and strips that
//! chunk when the client did not ask for it) and counts what was generated.
//! How the body ends says how the request ended ([`Ending`]): it ends, or
//! the upstream breaks off (a stream then ends with an error event the
//! client can read, after every chunk that came: [`STREAM_ERROR_EVENT`]), or
//! the client goes away (the body is dropped, which drops the upstream body
//! and so cancels a stream; a JSON body is read on in the background, within
//! [`DRAIN_TIME`], for its usage).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use sluice_core::CounterStore;
use sluice_llm::usage::{SseUsageTap, usage_from_json};

use crate::background::Background;
use crate::reservation::{Ending, Reservation};
use crate::upstream::UpstreamBody;

pub use sluice_served::body::{BoxError, ResponseBody, full};

/// The most of a JSON response kept to read its `usage` from.
const JSON_KEEP: usize = 8 * 1024 * 1024;

/// The most a JSON body whose client went away is read on for its usage.
pub const DRAIN_TIME: Duration = Duration::from_secs(60);

/// What ends a stream that the upstream broke off: an OpenAI-style error
/// event, after every chunk that came (the `openai` SDKs raise it as an
/// `APIError`). No `data: [DONE]` follows: the stream is incomplete.
pub const STREAM_ERROR_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"The upstream model server broke off the stream; the response is incomplete.\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n";

/// Where a stream under a hard limit is ended: when the output that went
/// through reaches what the request reserved.
#[derive(Clone, Debug)]
pub struct OutputCut {
    /// Output tokens reserved (all choices).
    pub output: u64,
    /// Choices (each gets its final chunk).
    pub choices: u64,
    /// The model, as the client named it (for the final chunks).
    pub model: String,
    /// The request id (the final chunks' id).
    pub id: String,
    /// Input tokens as estimated (the usage chunk).
    pub input: u64,
    /// The client asked for a usage chunk.
    pub usage: bool,
}

impl OutputCut {
    /// The events that end a cut stream: a final chunk per choice with
    /// `finish_reason: "length"`, the usage chunk if the client asked for
    /// one (`output` tokens charged), and `[DONE]`.
    fn write(&self, output: u64, out: &mut BytesMut) {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let head = serde_json::json!({
            "id": format!("chatcmpl-{}", self.id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model,
        });
        for index in 0..self.choices.max(1) {
            let mut chunk = head.clone();
            chunk["choices"] = serde_json::json!([
                { "index": index, "delta": {}, "finish_reason": "length" }
            ]);
            event(out, &chunk);
        }
        if self.usage {
            let mut chunk = head;
            chunk["choices"] = serde_json::json!([]);
            chunk["usage"] = serde_json::json!({
                "prompt_tokens": self.input,
                "completion_tokens": output,
                "total_tokens": self.input + output,
            });
            event(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// Pushes `frame` through `tap` an event at a time, stopping after the
/// event that brings the output seen to `output`: whether it did (the rest
/// of the frame is dropped).
fn push_until(tap: &mut SseUsageTap, frame: &[u8], out: &mut BytesMut, output: u64) -> bool {
    let mut rest = frame;
    while !rest.is_empty() {
        // An event ends at a blank line: `\n\n`, or `\n\r\n` (CRLF lines).
        let end = blank_line_end(rest).unwrap_or(rest.len());
        let (event, tail) = rest.split_at(end);
        tap.push(event, out);
        rest = tail;
        if tap.usage().is_none() && tap.estimated_output_tokens() >= output {
            return true;
        }
    }
    false
}

/// Where the first blank line of `b` ends (the end of an SSE event).
fn blank_line_end(b: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', b).find_map(|i| match b.get(i + 1..) {
        Some([b'\n', ..]) => Some(i + 2),
        Some([b'\r', b'\n', ..]) => Some(i + 3),
        _ => None,
    })
}

fn event(out: &mut BytesMut, chunk: &serde_json::Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(chunk.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// How the body is read on its way through.
pub enum Tap {
    /// A JSON response: keep its frames (shared, not copied) to read
    /// `usage` from at the end.
    Json(JsonFrames),
    /// An SSE stream.
    Sse(Box<SseUsageTap>),
    /// An upstream error response, passed through: the request failed with
    /// this status.
    Failed(StatusCode),
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

/// An upstream body, forwarded and metered.
pub struct Metered<S: CounterStore + Clone> {
    /// `None` once handed to a background drain.
    inner: Option<UpstreamBody>,
    tap: Tap,
    /// `None` once ended.
    reservation: Option<Reservation<S>>,
    /// Where a body whose client went away is read on.
    background: Arc<Background>,
    /// Ended (settled, or handed to a drain): the body ends at the next
    /// poll.
    done: bool,
    /// A hard limit's cut, if one applies.
    cut: Option<OutputCut>,
    /// The stream was cut after this many output tokens.
    cut_at: Option<u64>,
}

impl<S: CounterStore + Clone> Metered<S> {
    /// Wraps an upstream body.
    pub fn new(
        inner: UpstreamBody,
        tap: Tap,
        reservation: Reservation<S>,
        background: Arc<Background>,
    ) -> Self {
        Self {
            inner: Some(inner),
            tap,
            reservation: Some(reservation),
            background,
            done: false,
            cut: None,
            cut_at: None,
        }
    }

    /// Ends the stream where the output reaches what was reserved (a hard
    /// limit): the upstream request is dropped (cancelled), the client gets
    /// final chunks with `finish_reason: "length"`, and what went through
    /// is charged (never more than was reserved).
    pub fn cut_at(&mut self, cut: OutputCut) {
        self.cut = Some(cut);
    }

    /// How the request ended, from what went through. `complete`: the body
    /// ended as the upstream meant it to.
    fn ending(&self, complete: bool) -> Ending {
        if let Some(output) = self.cut_at {
            return Ending::StreamWithoutUsage { output_seen: output };
        }
        match &self.tap {
            Tap::Failed(status) => Ending::UpstreamFailed { status: *status },
            Tap::Sse(tap) => match tap.usage() {
                Some(u) => Ending::Complete { reported: Some(u) },
                None => Ending::StreamWithoutUsage { output_seen: tap.estimated_output_tokens() },
            },
            Tap::Json(frames) if complete => Ending::Complete { reported: frames.usage() },
            // Cut before the end of a JSON body: its usage is not known.
            Tap::Json(_) => Ending::Unknown,
        }
    }

    fn finish(&mut self, complete: bool) {
        if !self.done {
            self.done = true;
            let ending = self.ending(complete);
            if let Some(mut r) = self.reservation.take() {
                r.end(ending);
            }
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

impl<S: CounterStore + Clone> Drop for Metered<S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped before the end: the client went away (or the server is
        // shutting down). A JSON body's usage comes at its end: read on, in
        // the background and within bounds, to charge what was generated.
        if let Tap::Json(frames) = &mut self.tap
            && let (Some(inner), Some(reservation)) = (self.inner.take(), self.reservation.take())
        {
            self.done = true;
            let frames = std::mem::take(frames);
            self.background.spawn(drain(inner, frames, reservation));
            return;
        }
        self.finish(false);
    }
}

/// Reads the rest of a JSON body whose client went away, for its usage,
/// within [`DRAIN_TIME`] and [`JSON_KEEP`]; ends the reservation with it
/// (with what was reserved if it does not come: the reservation's drop).
async fn drain<S: CounterStore + Clone>(
    mut inner: UpstreamBody,
    mut frames: JsonFrames,
    mut reservation: Reservation<S>,
) {
    let read = async {
        loop {
            match inner.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let last = inner.is_end_stream();
                        frames.push(&data, last);
                        if last {
                            return true;
                        }
                    }
                }
                None => return true,
                Some(Err(_)) => return false,
            }
        }
    };
    if let Ok(true) = tokio::time::timeout(DRAIN_TIME, read).await
        && let Some(u) = frames.usage()
    {
        reservation.end(Ending::Complete { reported: Some(u) });
    }
}

impl<S: CounterStore + Clone + Unpin> Body for Metered<S> {
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
            let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    if let Some(r) = &mut this.reservation {
                        r.first_byte();
                    }
                    // A body with a length is over with its last frame: hyper
                    // may never poll for the end, so settle now.
                    let last = this.inner.as_ref().is_none_or(Body::is_end_stream);
                    let out = match &mut this.tap {
                        Tap::Json(frames) => {
                            frames.push(&frame, last);
                            frame
                        }
                        Tap::Failed(_) => frame,
                        Tap::Sse(tap) => {
                            let mut out = BytesMut::with_capacity(frame.len());
                            if let Some(cut) = &this.cut {
                                if push_until(tap, &frame, &mut out, cut.output) {
                                    // The reserved output has gone through:
                                    // end here, cancelling the upstream
                                    // request.
                                    cut.write(cut.output, &mut out);
                                    this.cut_at = Some(cut.output);
                                    this.inner = None;
                                    this.finish(true);
                                    return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                                }
                            } else {
                                tap.push(&frame, &mut out);
                            }
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
                    // The upstream broke off. A stream ends with what came
                    // (an event cut short is passed on as it is) and an error
                    // event, as a whole response, not an aborted one (which
                    // would lose what hyper had not written yet: with a fast
                    // upstream, all of it). What went through is charged.
                    if let Tap::Sse(tap) = &mut this.tap {
                        tracing::warn!(error = %e, "the upstream broke off a stream");
                        let mut tail = BytesMut::new();
                        tap.finish(&mut tail);
                        if !tail.is_empty() && !tail.ends_with(b"\n\n") {
                            tail.extend_from_slice(if tail.ends_with(b"\n") {
                                b"\n"
                            } else {
                                b"\n\n"
                            });
                        }
                        tail.extend_from_slice(STREAM_ERROR_EVENT);
                        this.finish(false);
                        return Poll::Ready(Some(Ok(Frame::data(tail.freeze()))));
                    }
                    // A JSON body cut short cannot be completed: the client
                    // sees it end with an error.
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
        match (&self.tap, &self.inner) {
            // Stripping a chunk changes the length: promise nothing.
            (Tap::Sse(_), _) | (_, None) => SizeHint::default(),
            (_, Some(inner)) => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line_of_either_ending() {
        assert_eq!(blank_line_end(b"data: a\n\ndata: b\n\n"), Some(9));
        assert_eq!(blank_line_end(b"data: a\r\n\r\ndata: b"), Some(11));
        assert_eq!(blank_line_end(b"data: a\n"), None);
    }

    /// A frame holding a whole stream is cut after the event that reaches
    /// the output allowed, whatever its line endings.
    #[test]
    fn a_frame_is_pushed_until_the_output_is_reached() {
        for nl in ["\n", "\r\n"] {
            let event =
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok \"}}}}]}}{nl}{nl}");
            let frame = event.repeat(10);
            let mut tap = SseUsageTap::new(false);
            let mut out = BytesMut::new();
            assert!(push_until(&mut tap, frame.as_bytes(), &mut out, 3));
            assert_eq!(out, event.repeat(3).as_bytes(), "line ending {nl:?}");
        }
    }
}

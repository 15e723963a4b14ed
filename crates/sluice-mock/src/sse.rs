//! A streamed (SSE) completion, produced as the client reads it.
//!
//! Every event of a stream is one of a few shapes that differ only by choice
//! index, so they are rendered once per request into one buffer and sent as
//! reference-counted slices: a token costs no allocation and no JSON. The
//! body is polled by hyper; when the client goes away hyper drops it, and the
//! drop is what counts a cancelled stream. Between events the body waits the
//! chunk delay; with no delay it hands hyper up to 16 KiB of events at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use crate::response::{Usage, push, push_head, push_usage};
use crate::stats::InFlight;

/// Without a chunk delay, events are gathered into frames of about this size.
const FRAME_TARGET: usize = 16 * 1024;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// The error that ends a stream cut by `x-mock-abort-after-chunks`; hyper
/// then closes the connection without ending the chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the mock upstream aborted the stream after {content_chunks} content chunks")]
pub struct StreamAborted {
    content_chunks: u64,
}

impl StreamAborted {
    /// Content chunks sent before the stream was cut.
    pub fn content_chunks(&self) -> u64 {
        self.content_chunks
    }
}

/// What a stream will say.
pub(crate) struct StreamPlan<'a> {
    /// Chat (`chat.completion.chunk`, with a role chunk) or completions
    /// (`text_completion`).
    pub(crate) chat: bool,
    pub(crate) id: &'a str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) n: u64,
    pub(crate) tokens_per_choice: u64,
    pub(crate) finish_reason: &'static str,
    /// `Some` when the request asked for `stream_options.include_usage`.
    pub(crate) usage: Option<Usage>,
    pub(crate) chunk_delay: Duration,
    pub(crate) abort_after: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// Cut: the last data went out with this poll; flush it, then fail.
    FlushThenAbort,
    /// Cut: fail at the next poll.
    Abort,
    /// `[DONE]` was sent.
    Finished,
    /// The abort error was returned.
    Failed,
}

enum Step {
    Event(Bytes),
    Abort,
    End,
}

/// The body of a streamed response.
pub(crate) struct SseBody {
    /// Rendered events: content chunks per choice, then finish chunks per
    /// choice, then role chunks per choice (chat), then the usage chunk.
    events: Vec<Bytes>,
    n: u64,
    roles: u64,
    content_total: u64,
    usage: bool,
    step: u64,
    content_sent: u64,
    abort_after: Option<u64>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    sleeping: bool,
    state: State,
    in_flight: InFlight,
}

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody")
            .field("step", &self.step)
            .field("content_sent", &self.content_sent)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl SseBody {
    pub(crate) fn new(plan: &StreamPlan<'_>, in_flight: InFlight) -> Self {
        let n = plan.n.max(1);
        let roles = if plan.chat { n } else { 0 };
        let events = render(plan, n);
        Self {
            events,
            n,
            roles,
            content_total: plan.tokens_per_choice.saturating_mul(n),
            usage: plan.usage.is_some(),
            step: 0,
            content_sent: 0,
            abort_after: plan.abort_after,
            delay: plan.chunk_delay,
            sleep: (!plan.chunk_delay.is_zero())
                .then(|| Box::pin(tokio::time::sleep(plan.chunk_delay))),
            sleeping: false,
            state: State::Running,
            in_flight,
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Finished | State::Failed)
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        match self.state {
            State::Running => {}
            State::Finished | State::Failed => return Poll::Ready(None),
            State::FlushThenAbort => {
                // Returning Pending makes hyper flush what it holds before
                // the error closes the connection.
                self.state = State::Abort;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            State::Abort => {
                self.state = State::Failed;
                let e = StreamAborted { content_chunks: self.content_sent };
                return Poll::Ready(Some(Err(e)));
            }
        }
        if self.sleeping
            && let Some(sleep) = &mut self.sleep
        {
            ready!(sleep.as_mut().poll(cx));
            self.sleeping = false;
        }
        let mut first = None::<Bytes>;
        let mut more = None::<BytesMut>;
        loop {
            match self.next_step() {
                Step::Event(event) => match (&first, &mut more) {
                    (None, _) => first = Some(event),
                    (Some(f), None) => {
                        let mut buf = BytesMut::with_capacity(FRAME_TARGET + 2 * f.len());
                        buf.extend_from_slice(f);
                        buf.extend_from_slice(&event);
                        more = Some(buf);
                    }
                    (Some(_), Some(buf)) => buf.extend_from_slice(&event),
                },
                Step::Abort => {
                    self.in_flight.stats().stream_aborted();
                    self.state = State::FlushThenAbort;
                    break;
                }
                Step::End => break,
            }
            let len =
                more.as_ref().map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len);
            if !self.delay.is_zero() || self.state != State::Running || len >= FRAME_TARGET {
                break;
            }
        }
        if self.state == State::Running
            && let Some(sleep) = &mut self.sleep
        {
            sleep.as_mut().reset(Instant::now() + self.delay);
            self.sleeping = true;
        }
        match more.map(BytesMut::freeze).or(first) {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            // Nothing to send before the abort: go through the flush anyway,
            // so the response head reaches the client first.
            None if self.state == State::FlushThenAbort => self.poll_frame(cx),
            None => {
                self.state = State::Finished;
                Poll::Ready(None)
            }
        }
    }

    /// The next event, in order: role chunks (chat), content chunks (choices
    /// interleaved), finish chunks, the usage chunk (when asked), `[DONE]`.
    fn next_step(&mut self) -> Step {
        let n = self.n;
        let mut s = self.step;
        if s < self.roles {
            self.step += 1;
            return Step::Event(self.event(2 * n + s));
        }
        s -= self.roles;
        if s <= self.content_total
            && let Some(k) = self.abort_after
            && self.content_sent >= k.min(self.content_total)
        {
            return Step::Abort;
        }
        if s < self.content_total {
            self.step += 1;
            self.content_sent += 1;
            return Step::Event(self.event(s % n));
        }
        s -= self.content_total;
        if s < n {
            self.step += 1;
            return Step::Event(self.event(n + s));
        }
        s -= n;
        if self.usage {
            if s == 0 {
                self.step += 1;
                return Step::Event(self.event(2 * n + self.roles));
            }
            s -= 1;
        }
        if s == 0 {
            self.step += 1;
            self.state = State::Finished;
            self.in_flight.stats().stream_completed();
            return Step::Event(Bytes::from_static(DONE));
        }
        Step::End
    }

    fn event(&self, i: u64) -> Bytes {
        usize::try_from(i).ok().and_then(|i| self.events.get(i)).cloned().unwrap_or_default()
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if self.state == State::Running {
            self.in_flight.stats().stream_cancelled(self.content_sent);
        }
    }
}

/// Renders each distinct event once, into one buffer.
fn render(plan: &StreamPlan<'_>, n: u64) -> Vec<Bytes> {
    let mut head = String::with_capacity(128 + plan.model.len());
    head.push_str("data: ");
    let object = if plan.chat { "chat.completion.chunk" } else { "text_completion" };
    push_head(&mut head, plan.id, object, plan.created, plan.model, plan.chat);
    let tail = if plan.usage.is_some() { "],\"usage\":null}\n\n" } else { "]}\n\n" };

    let count = if plan.chat { 3 * n } else { 2 * n } + u64::from(plan.usage.is_some());
    let count = usize::try_from(count).unwrap_or(0);
    // The usage chunk, with its details objects, is the longest event.
    let usage_len = if plan.usage.is_some() { 256 } else { 0 };
    let mut all = String::with_capacity(count * (head.len() + tail.len() + 90) + usage_len);
    let mut ends = Vec::with_capacity(count);
    let mut event = |all: &mut String, choice: &dyn Fn(&mut String)| {
        all.push_str(&head);
        choice(all);
        all.push_str(tail);
        ends.push(all.len());
    };
    for i in 0..n {
        event(&mut all, &|out| {
            if plan.chat {
                out.push_str("{\"index\":");
                push(out, i);
                out.push_str(",\"delta\":{\"content\":\"tok \"}");
            } else {
                out.push_str("{\"text\":\"tok \",\"index\":");
                push(out, i);
            }
            out.push_str(",\"logprobs\":null,\"finish_reason\":null}");
        });
    }
    for i in 0..n {
        event(&mut all, &|out| {
            if plan.chat {
                out.push_str("{\"index\":");
                push(out, i);
                out.push_str(",\"delta\":{}");
            } else {
                out.push_str("{\"text\":\"\",\"index\":");
                push(out, i);
            }
            out.push_str(",\"logprobs\":null,\"finish_reason\":\"");
            out.push_str(plan.finish_reason);
            out.push_str("\"}");
        });
    }
    if plan.chat {
        for i in 0..n {
            event(&mut all, &|out| {
                out.push_str("{\"index\":");
                push(out, i);
                out.push_str(
                    ",\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\
                     \"logprobs\":null,\"finish_reason\":null}",
                );
            });
        }
    }
    if let Some(usage) = plan.usage {
        all.push_str(&head);
        all.push_str("],");
        push_usage(&mut all, usage);
        all.push_str("}\n\n");
        ends.push(all.len());
    }
    let all = Bytes::from(all);
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let b = all.slice(start..end);
            start = end;
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::MockStats;

    fn plan(chat: bool, usage: bool) -> StreamPlan<'static> {
        StreamPlan {
            chat,
            id: "chatcmpl-mock1",
            created: 1,
            model: "m",
            n: 2,
            tokens_per_choice: 2,
            finish_reason: "length",
            usage: usage.then_some(Usage { prompt: 5, completion: 4, ..Usage::default() }),
            chunk_delay: Duration::ZERO,
            abort_after: None,
        }
    }

    fn events(body: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with("\n\n"));
        text.split_terminator("\n\n")
            .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    /// Polls a body to its end without a runtime (no delay, so no timer).
    fn drain(body: &mut SseBody) -> (Vec<u8>, Option<StreamAborted>) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        loop {
            match body.poll_frame(&mut cx) {
                Poll::Ready(None) => return (out, None),
                Poll::Ready(Some(Ok(f))) => out.extend_from_slice(&f.into_data().unwrap()),
                Poll::Ready(Some(Err(e))) => return (out, Some(e)),
                Poll::Pending => {}
            }
        }
    }

    #[test]
    fn chat_stream_with_usage() {
        let stats = Arc::new(MockStats::default());
        let mut body = SseBody::new(&plan(true, true), stats.enter());
        let (out, err) = drain(&mut body);
        assert!(err.is_none());
        assert!(body.is_end_stream());
        let ev = events(&out);
        // 2 roles, 4 content, 2 finish, usage, done.
        assert_eq!(ev.len(), 10);
        assert_eq!(ev[9], "[DONE]");
        let json: Vec<serde_json::Value> =
            ev[..9].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert_eq!(json[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(json[1]["choices"][0]["index"], 1);
        assert_eq!(json[2]["choices"][0]["delta"]["content"], "tok ");
        assert_eq!(json[3]["choices"][0]["index"], 1);
        assert_eq!(json[7]["choices"][0]["finish_reason"], "length");
        for j in &json[..8] {
            assert!(j["usage"].is_null() && j.as_object().unwrap().contains_key("usage"));
            assert_eq!(j["object"], "chat.completion.chunk");
        }
        assert_eq!(json[8]["choices"], serde_json::json!([]));
        assert_eq!(json[8]["usage"]["total_tokens"], 9);
        drop(body);
        assert_eq!((stats.streams_completed(), stats.streams_cancelled()), (1, 0));
        assert_eq!(stats.in_flight(), 0);
    }

    #[test]
    fn completion_stream_without_usage() {
        let stats = Arc::new(MockStats::default());
        let mut body = SseBody::new(&plan(false, false), stats.enter());
        let (out, _) = drain(&mut body);
        let ev = events(&out);
        assert_eq!(ev.len(), 4 + 2 + 1);
        for e in &ev[..6] {
            let j: serde_json::Value = serde_json::from_str(e).unwrap();
            assert!(!j.as_object().unwrap().contains_key("usage"));
            assert_eq!(j["object"], "text_completion");
        }
        assert!(ev[0].contains(r#""text":"tok ""#));
    }

    #[test]
    fn abort_and_cancel() {
        let stats = Arc::new(MockStats::default());
        let mut p = plan(true, true);
        p.abort_after = Some(3);
        let mut body = SseBody::new(&p, stats.enter());
        let (out, err) = drain(&mut body);
        assert_eq!(err.map(|e| e.content_chunks()), Some(3));
        assert_eq!(events(&out).len(), 2 + 3);
        drop(body);
        assert_eq!(stats.streams_aborted(), 1);
        assert_eq!(stats.streams_cancelled(), 0);

        // Beyond the content: cut before the finish chunks.
        p.abort_after = Some(100);
        let mut body = SseBody::new(&p, stats.enter());
        let (out, err) = drain(&mut body);
        assert_eq!(err.map(|e| e.content_chunks()), Some(4));
        assert_eq!(events(&out).len(), 2 + 4);
        drop(body);

        // A body dropped half way counts as cancelled.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut p = plan(true, false);
        p.chunk_delay = Duration::from_secs(1);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        let mut body = SseBody::new(&p, stats.enter());
        assert!(matches!(body.poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(body.poll_frame(&mut cx).is_pending());
        drop(body);
        assert_eq!(stats.streams_cancelled(), 1);
        assert_eq!(stats.chunks_sent_in_cancelled_streams(), 0);
        assert_eq!(stats.in_flight(), 0);
    }
}

//! What the mock saw, for tests to check what the proxy did upstream: how
//! many requests got through, how many ran at once, which streams a client
//! abandoned, and the last request as it arrived (to check forwarded headers
//! and body rewrites such as the forced `stream_options.include_usage`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use parking_lot::Mutex;

/// Counters of a mock server. Cheap to update: atomics, and one uncontended
/// lock per request for [`MockStats::last_request`].
#[derive(Debug, Default)]
pub struct MockStats {
    requests: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
    streams_aborted: AtomicU64,
    chunks_sent_in_cancelled_streams: AtomicU64,
    last_request: Mutex<Option<RecordedRequest>>,
}

/// A request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: Method,
    /// The URI path, without the query.
    pub path: String,
    /// The query, if the URI has one.
    pub query: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// A header's value, when present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON, when it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl MockStats {
    /// Requests received, of any kind (counted when the head arrives).
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Requests being handled now: from arrival until the response is
    /// complete (for a stream: until its body ends or is dropped).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// The largest [`MockStats::in_flight`] seen.
    pub fn peak_in_flight(&self) -> u64 {
        self.peak_in_flight.load(Relaxed)
    }

    /// Streams sent to the end (`data: [DONE]`).
    pub fn streams_completed(&self) -> u64 {
        self.streams_completed.load(Relaxed)
    }

    /// Streams whose client went away before the end.
    pub fn streams_cancelled(&self) -> u64 {
        self.streams_cancelled.load(Relaxed)
    }

    /// Streams the mock cut on purpose (`x-mock-abort-after-chunks`).
    pub fn streams_aborted(&self) -> u64 {
        self.streams_aborted.load(Relaxed)
    }

    /// Content chunks (one per token per choice) sent in cancelled streams,
    /// summed over them.
    pub fn chunks_sent_in_cancelled_streams(&self) -> u64 {
        self.chunks_sent_in_cancelled_streams.load(Relaxed)
    }

    /// A copy of the last request received.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.last_request.lock().clone()
    }

    /// Takes the last request received, leaving none.
    pub fn take_last_request(&self) -> Option<RecordedRequest> {
        self.last_request.lock().take()
    }

    /// Waits until `cond` holds, checking every few milliseconds, for at most
    /// `timeout`; returns whether it held. For effects that happen after the
    /// client has its answer, such as counting a cancelled stream.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Counts a new request and returns its sequence number (from 1).
    pub(crate) fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Relaxed).wrapping_add(1)
    }

    /// Marks a request in flight until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Relaxed).saturating_add(1);
        self.peak_in_flight.fetch_max(now, Relaxed);
        InFlight(Arc::clone(self))
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        let old = self.last_request.lock().replace(request);
        // Freed outside the lock.
        drop(old);
    }

    pub(crate) fn stream_completed(&self) {
        self.streams_completed.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_aborted(&self) {
        self.streams_aborted.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_cancelled(&self, content_chunks: u64) {
        self.chunks_sent_in_cancelled_streams.fetch_add(content_chunks, Relaxed);
        self.streams_cancelled.fetch_add(1, Relaxed);
    }
}

/// One request in flight; the count drops with the guard.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<MockStats>);

impl InFlight {
    pub(crate) fn stats(&self) -> &MockStats {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

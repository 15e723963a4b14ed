//! A request's reservation, from admission to settlement: the one place
//! that says what a request is charged, however it ends.
//!
//! The gateway makes a [`Reservation`] when the store admits a request. It
//! holds the request's concurrency slots (renewing them while the request
//! runs: [`Reservation::keep_slots`]) and is ended exactly once, by
//! [`Reservation::end`] with how the request ended, or by being dropped
//! (the request's future or its response body was dropped before it could
//! say: the client went away, or the request was cut at shutdown).
//!
//! | how the request ends | [`Ending`] | charged |
//! | --- | --- | --- |
//! | success, the response reports `usage` | `Complete { reported: Some(u) }` | 1 request, `u`'s input and output tokens, less its cached input and reasoning tokens if `[tokens]` excludes them (`sluice_served::settle::settled_usage`) |
//! | success, a JSON body without `usage` | `Complete { reported: None }` | what was reserved |
//! | a stream without its usage chunk (it ended, the client went away, the upstream broke off, or shutdown cut it) | `StreamWithoutUsage { output_seen }` | 1 request, the prompt as estimated, and the output tokens of the text that went through |
//! | the client went away after the head of a JSON response | the body is read on in the background (`body.rs`), then as above | the reported usage; the reservation if none came within the bound |
//! | the client went away before the head (or shutdown cut the request) | `Unknown` (dropped) | what was reserved |
//! | the upstream failed: no connection (502), no answer in time (504), or an error status | `UpstreamFailed { status }` | `server.upstream_failure`: `count` (default) 1 request, no token; `charge` what was reserved; `refund` nothing; a status in `server.refund_statuses`: nothing |
//! | a JSON body cut by the upstream | `Unknown` | what was reserved |
//! | nothing reached the upstream (the gateway could not build the request) | `NotForwarded` | nothing |
//!
//! A request that reached the upstream keeps its request count unless the
//! policy says otherwise: the upstream did the work of answering it, and a
//! refunded failure would let a client send requests the upstream rejects
//! without any limit.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use sluice_config::counting::TokenCounting;
use sluice_config::gateway::UpstreamFailure;
use sluice_core::policy::Model;
use sluice_core::{
    CounterStore, EventSink, ModelId, RequestEvent, ReservationId, Step, TenantFacts, Usage,
};

use crate::access_log::{AccessRecord, ms};
use crate::metrics::Meters;

/// How a request ended, as far as its charge goes (see the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The response ended as the upstream meant it to, reporting `usage` or
    /// not.
    Complete {
        /// The usage the response reported.
        reported: Option<sluice_llm::usage::Usage>,
    },
    /// A stream that ended, or was cut, before its usage chunk.
    StreamWithoutUsage {
        /// Output tokens estimated from the text that went through.
        output_seen: u64,
    },
    /// The upstream failed: no response (502, 504) or an error status.
    UpstreamFailed {
        /// What the client was answered.
        status: StatusCode,
    },
    /// Nothing reached the upstream.
    NotForwarded,
    /// Nothing better is known: what was reserved stands.
    Unknown,
}

impl Ending {
    /// Its name in the access log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Complete { .. } => "complete",
            Self::StreamWithoutUsage { .. } => "stream_without_usage",
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::NotForwarded => "not_forwarded",
            Self::Unknown => "unknown",
        }
    }
}

/// What an upstream failure costs: `server.upstream_failure`, and the
/// statuses of `server.refund_statuses` (refunded in full).
#[derive(Clone, Copy, Debug)]
pub struct FailureCost {
    policy: UpstreamFailure,
    /// Statuses 400 to 655, one bit each.
    refunded: [u64; 4],
}

impl FailureCost {
    /// The cost of failures under `policy`, with `refund_statuses` refunded.
    pub fn new(policy: UpstreamFailure, refund_statuses: &[u16]) -> Self {
        let mut refunded = [0u64; 4];
        for &s in refund_statuses {
            if let Some(bit) = s.checked_sub(400).filter(|b| *b < 256) {
                refunded[usize::from(bit / 64)] |= 1 << (bit % 64);
            }
        }
        Self { policy, refunded }
    }

    /// What a failure answered with `status` costs, when `reserved` was
    /// reserved.
    pub fn cost(&self, status: StatusCode, reserved: Usage) -> Usage {
        let refunded = status
            .as_u16()
            .checked_sub(400)
            .filter(|b| *b < 256)
            .is_some_and(|b| self.refunded[usize::from(b / 64)] & (1 << (b % 64)) != 0);
        if refunded {
            return Usage::REFUND;
        }
        match self.policy {
            UpstreamFailure::Count => Usage::tokens(0, 0),
            UpstreamFailure::Charge => reserved,
            UpstreamFailure::Refund => Usage::REFUND,
        }
    }
}

/// A request's reservation: settled once, however the request ends.
pub struct Reservation<S: CounterStore> {
    store: S,
    /// `None` once settled, or when there is nothing to settle.
    id: Option<ReservationId>,
    /// Input tokens as estimated before the request.
    input_estimate: u64,
    /// What was reserved.
    reserved: Usage,
    failure: FailureCost,
    /// Which reported tokens count (`[tokens] cached_input`, `reasoning`).
    counting: TokenCounting,
    /// The task renewing the request's concurrency slots.
    heartbeat: Option<tokio::task::AbortHandle>,
    /// Who is told what the request was charged (once).
    note: Option<UsageNote>,
    /// Its metrics.
    meter: Option<Meter>,
}

impl<S: CounterStore> std::fmt::Debug for Reservation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl<S: CounterStore + Clone> Reservation<S> {
    /// The reservation `id` (none: nothing to settle) of a request whose
    /// prompt was estimated at `input_estimate` tokens, for which `reserved`
    /// was reserved; reported usage is counted as `counting` says.
    pub fn new(
        store: S,
        id: Option<ReservationId>,
        input_estimate: u64,
        reserved: Usage,
        failure: FailureCost,
        counting: TokenCounting,
    ) -> Self {
        Self {
            store,
            id,
            input_estimate,
            reserved,
            failure,
            counting,
            heartbeat: None,
            note: None,
            meter: None,
        }
    }

    /// Counts what the request is charged, and its upstream's times, in
    /// `meter`.
    pub fn metered(&mut self, meter: Meter) {
        self.meter = Some(meter);
    }

    /// The request is being sent upstream now.
    pub fn upstream_sent(&mut self) {
        if let Some(m) = &mut self.meter {
            m.sent = Some(std::time::Instant::now());
        }
    }

    /// The upstream's response head came, with `status` (time since
    /// [`Reservation::upstream_sent`]).
    pub fn upstream_head(&mut self, status: StatusCode) {
        let Some(m) = self.meter.as_mut() else { return };
        if let Some(r) = &mut m.access {
            r.status = status.as_u16();
            r.upstream_status = Some(status.as_u16());
        }
        let Some(sent) = m.sent else { return };
        let took = sent.elapsed();
        m.meters.upstream_head(m.model, took.as_secs_f64());
        m.head = Some(took);
    }

    /// The client was answered `status` by the gateway itself.
    pub fn answered(&mut self, status: StatusCode) {
        if let Some(r) = self.meter.as_mut().and_then(|m| m.access.as_mut()) {
            r.status = status.as_u16();
        }
    }

    /// A frame of the response body came: the first is timed.
    #[inline]
    pub fn first_byte(&mut self) {
        if let Some(m) = &mut self.meter
            && m.first_byte.is_none()
            && let Some(sent) = m.sent
        {
            let took = sent.elapsed();
            m.first_byte = Some(took);
            m.meters.upstream_first_byte(m.model, took.as_secs_f64());
        }
    }

    /// Tells `note` what the request is charged when it ends.
    pub fn noting(&mut self, note: UsageNote) {
        self.note = Some(note);
    }

    /// Renews the reservation's concurrency slots while it is open (every
    /// third of the store's slot lease), so that they lapse soon after the
    /// process holding them dies, and never while its request runs. A store
    /// whose slots end with this process needs nothing.
    pub fn keep_slots(&mut self) {
        let (Some(id), Some(lease)) = (self.id, self.store.slot_lease()) else { return };
        let every = (lease / 3).max(Duration::from_millis(100));
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now() + every;
            let mut tick = tokio::time::interval_at(start, every);
            loop {
                tick.tick().await;
                match store.renew(id).await {
                    Ok(true) => {}
                    // Settled or expired: nothing left to keep.
                    Ok(false) => break,
                    // The next tick tries again (the slot lease allows two
                    // missed renewals).
                    Err(e) => tracing::debug!(error = %e, "renewing concurrency slots failed"),
                }
            }
        });
        self.heartbeat = Some(task.abort_handle());
    }

    /// What the request is charged if it ends so (the module's table).
    pub fn charge(&self, ending: Ending) -> Usage {
        match ending {
            Ending::Complete { reported: Some(u) } => {
                sluice_served::settle::settled_usage(u, self.counting)
            }
            Ending::Complete { reported: None } | Ending::Unknown => self.reserved,
            Ending::StreamWithoutUsage { output_seen } => {
                Usage::tokens(self.input_estimate, output_seen)
            }
            Ending::UpstreamFailed { status } => self.failure.cost(status, self.reserved),
            Ending::NotForwarded => Usage::REFUND,
        }
    }

    /// Settles the reservation as the request ended (once: later calls,
    /// and the drop, do nothing).
    pub fn end(&mut self, ending: Ending) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let usage = self.charge(ending);
        if let Some(id) = self.id.take() {
            self.store.settle_detached(id, usage);
        }
        if let Some(note) = self.note.take() {
            note.settled(usage);
        }
        if let Some(m) = self.meter.take() {
            let reported = match ending {
                Ending::Complete { reported } => reported,
                _ => None,
            };
            m.settled(usage, reported, self.input_estimate, ending.name());
        }
    }
}

impl<S: CounterStore> Drop for Reservation<S> {
    fn drop(&mut self) {
        // Not ended: the request's future or body was dropped before it
        // could say how it ended (the client went away before the response,
        // or shutdown cut it). What was reserved stands.
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if let Some(id) = self.id.take() {
            self.store.settle_detached(id, self.reserved);
        }
        if let Some(note) = self.note.take() {
            note.settled(self.reserved);
        }
        if let Some(m) = self.meter.take() {
            m.settled(self.reserved, None, self.input_estimate, "cut");
        }
    }
}

/// A request's metrics from admission to settlement: its tokens, the
/// estimate's error, its upstream's times.
pub struct Meter {
    meters: Arc<Meters>,
    model: ModelId,
    tenant: Arc<str>,
    sent: Option<std::time::Instant>,
    head: Option<Duration>,
    first_byte: Option<Duration>,
    /// Its access-log line, written at settlement, and when it arrived.
    access: Option<Box<AccessRecord>>,
    arrived: Option<std::time::Instant>,
}

impl Meter {
    /// The metrics of `tenant`'s request to `model`.
    pub fn new(meters: Arc<Meters>, tenant: &TenantFacts, model: ModelId) -> Self {
        Self {
            meters,
            model,
            tenant: tenant.shared_id().clone(),
            sent: None,
            head: None,
            first_byte: None,
            access: None,
            arrived: None,
        }
    }

    /// Writes `record` to the access log when the request settles.
    pub fn log(&mut self, record: Box<AccessRecord>, arrived: std::time::Instant) {
        self.access = Some(record);
        self.arrived = Some(arrived);
    }

    /// The request settled, charged `usage`; `reported` is the usage its
    /// upstream reported, if any.
    fn settled(
        self,
        usage: Usage,
        reported: Option<sluice_llm::usage::Usage>,
        estimated_input: u64,
        ending: &'static str,
    ) {
        let parts = reported.map_or((0, 0), |u| (u.cached_input, u.reasoning));
        let tokens = [usage.input_tokens, usage.output_tokens, parts.0, parts.1];
        self.meters.settled(self.model, &self.tenant, tokens);
        if let Some(reported) = reported {
            self.meters.estimate(self.model, estimated_input, reported.input);
        }
        if let (Some(mut r), Some(log)) = (self.access, self.meters.metrics().access_log()) {
            r.settled_input_tokens = Some(usage.input_tokens);
            r.settled_output_tokens = Some(usage.output_tokens);
            r.cached_tokens = reported.map(|u| u.cached_input);
            r.reasoning_tokens = reported.map(|u| u.reasoning);
            r.ending = ending;
            r.duration_ms = self.arrived.map_or(0.0, |a| ms(a.elapsed()));
            r.upstream_ms = self.head.map(ms);
            r.first_byte_ms = self.first_byte.map(ms);
            log.write(&r);
        }
    }
}

/// Who is told what a request was charged when its reservation ends: the
/// tenant and model it is counted under, and where the event goes (the
/// usage history).
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

    /// Tells the sink what the request was charged.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_cost_what_the_policy_says() {
        let reserved = Usage::tokens(100, 500);
        let count = FailureCost::new(UpstreamFailure::Count, &[502, 503]);
        assert_eq!(count.cost(StatusCode::BAD_REQUEST, reserved), Usage::tokens(0, 0));
        assert_eq!(count.cost(StatusCode::GATEWAY_TIMEOUT, reserved), Usage::tokens(0, 0));
        assert_eq!(count.cost(StatusCode::BAD_GATEWAY, reserved), Usage::REFUND);
        assert_eq!(count.cost(StatusCode::SERVICE_UNAVAILABLE, reserved), Usage::REFUND);
        let charge = FailureCost::new(UpstreamFailure::Charge, &[]);
        assert_eq!(charge.cost(StatusCode::INTERNAL_SERVER_ERROR, reserved), reserved);
        let refund = FailureCost::new(UpstreamFailure::Refund, &[]);
        assert_eq!(refund.cost(StatusCode::TOO_MANY_REQUESTS, reserved), Usage::REFUND);
    }
}

//! What an admitted request is charged: its reservation, settled exactly
//! once, and the usage the inner service reports.
//!
//! | how the request ends | charged |
//! | --- | --- |
//! | the response body is read to its end | the reported usage; else what was reserved |
//! | the response body is dropped before its end (the client went away, the connection was cut, the server shut down) | the reported usage; else what was reserved |
//! | the response body fails (its stream returned an error) | the reported usage; else what was reserved |
//! | the request's future is dropped before the inner service answered | the reported usage; else what was reserved |
//! | the inner service returned an error (`Err`, no response) | the reported usage; else 1 request and no token |
//!
//! "Reported" is what the inner service last gave [`UsageReport::set`]
//! before the ending: the request's real tokens, or
//! [`Usage::REFUND`](sluice_core::Usage::REFUND) to charge nothing. A
//! concurrency slot is given back in every case.

use std::sync::Arc;

use parking_lot::Mutex;

use sluice_core::{CounterStore, ReservationId, Usage};

/// Where the inner service reports what a request really used.
///
/// The layer puts one in the extensions of every request it passes on
/// (`request.extensions().get::<UsageReport>()`; in axum, the
/// `Extension<UsageReport>` extractor). Whatever was set last when the
/// response ends is what the request is charged; nothing set: what was
/// reserved. It can be set at any time, also from a streaming body's task
/// once the stream knows its usage. Clones share one report.
#[derive(Clone, Debug, Default)]
pub struct UsageReport(Arc<Mutex<Option<Usage>>>);

impl UsageReport {
    /// Reports the request's real usage (replacing an earlier report).
    pub fn set(&self, usage: Usage) {
        *self.0.lock() = Some(usage);
    }

    /// The usage reported so far.
    pub fn get(&self) -> Option<Usage> {
        *self.0.lock()
    }
}

/// Settles reservations without waiting: a store seen through an object,
/// so that response bodies do not carry the store's type.
pub(crate) trait Settle: Send + Sync + 'static {
    fn settle(&self, id: ReservationId, usage: Usage);
}

impl<St: CounterStore> Settle for St {
    fn settle(&self, id: ReservationId, usage: Usage) {
        self.settle_detached(id, usage);
    }
}

/// How a request ended, as far as its charge goes (the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The response ended, whichever way (read, dropped, failed), or the
    /// request was dropped before it: what was reserved stands.
    Answered,
    /// The inner service returned an error instead of a response.
    Failed,
}

/// One admitted request's reservation: settled once, by
/// [`Reservation::end`] or by being dropped.
pub(crate) struct Reservation {
    settler: Arc<dyn Settle>,
    /// `None` once settled.
    id: Option<ReservationId>,
    reserved: Usage,
    report: UsageReport,
    /// The task renewing the reservation's concurrency slots.
    heartbeat: Option<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    pub(crate) fn new(
        settler: Arc<dyn Settle>,
        id: ReservationId,
        reserved: Usage,
        report: UsageReport,
        heartbeat: Option<tokio::task::AbortHandle>,
    ) -> Self {
        Self { settler, id: Some(id), reserved, report, heartbeat }
    }

    /// What the request is charged if it ends so.
    fn charge(&self, ending: Ending) -> Usage {
        self.report.get().unwrap_or(match ending {
            Ending::Answered => self.reserved,
            Ending::Failed => Usage::tokens(0, 0),
        })
    }

    /// Settles the reservation as the request ended.
    pub(crate) fn end(mut self, ending: Ending) {
        self.settle(ending);
    }

    fn settle(&mut self, ending: Ending) {
        if let Some(beat) = self.heartbeat.take() {
            beat.abort();
        }
        if let Some(id) = self.id.take() {
            let usage = self.charge(ending);
            self.settler.settle(id, usage);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Not ended otherwise: the response ended (read, dropped or failed)
        // or the request was dropped before its answer.
        self.settle(Ending::Answered);
    }
}

/// Renews the concurrency slots of reservation `id` while it is open, for
/// a store whose slots outlive this process (every third of its slot
/// lease), so that they lapse soon after a dead process but never while
/// its request runs. `None` without a tokio runtime to run it on.
pub(crate) fn renew_slots<St: CounterStore + Clone>(
    store: &St,
    id: ReservationId,
    lease: std::time::Duration,
) -> Option<tokio::task::AbortHandle> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let period = std::cmp::max(lease / 3, std::time::Duration::from_millis(100));
    let store = store.clone();
    let renewals = async move {
        loop {
            tokio::time::sleep(period).await;
            // `false`: settled or expired. An error: the next round tries
            // again (the lease outlasts two missed renewals).
            if let Ok(false) = store.renew(id).await {
                return;
            }
        }
    };
    Some(runtime.spawn(renewals).abort_handle())
}

//! What a counter store must do. The memory store and the Redis store both
//! implement this; the engine's test suite runs against every implementation.

use std::future::Future;

use crate::plan::{CounterKey, Decision, Plan, ReservationId, Settlement, Usage};

/// Shared counters with all-or-nothing admission.
///
/// Implementations must make [`admit`](CounterStore::admit) atomic over all of
/// a plan's charges (run [`crate::plan::decide`] and write back its states with
/// no other admission of the same tenant in between), and must make settlement
/// idempotent per reservation.
pub trait CounterStore: Send + Sync + 'static {
    /// Why the store could not answer (unreachable, timed out, …).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checks every charge of `plan` and charges all of them, or none.
    fn admit(&self, plan: &Plan) -> impl Future<Output = Result<Decision, Self::Error>> + Send;

    /// Decides `plan` at its costs, as [`admit`](CounterStore::admit)
    /// would now, without charging anything: a dry run. (With every cost
    /// at zero, [`Plan::at_zero_cost`], it reports the counters as they are.)
    fn peek(&self, plan: &Plan) -> impl Future<Output = Result<Decision, Self::Error>> + Send;

    /// Settles a reservation with what the request really used. A second
    /// settlement of the same reservation has no effect.
    fn settle(
        &self,
        id: ReservationId,
        usage: Usage,
    ) -> impl Future<Output = Result<Settlement, Self::Error>> + Send;

    /// Settles without waiting for the answer (the usage is final; a store
    /// that has to go over the network does it in the background). Safe to
    /// call from `Drop` and from `poll` functions.
    fn settle_detached(&self, id: ReservationId, usage: Usage);

    /// Ends a reservation without usage figures (the request was dropped):
    /// concurrency is released, token charges stay as estimated. Does not
    /// wait; safe to call from `Drop`.
    fn release(&self, id: ReservationId);

    /// How long a concurrency slot is held unless renewed, when the store
    /// outlives the process holding it (a shared store): the caller sets
    /// [`Plan::slots_until`] that far ahead and renews the slots of a
    /// running request ([`CounterStore::renew`]) well before. `None`: slots
    /// last as long as the reservation (a store in this process ends with
    /// it).
    fn slot_lease(&self) -> Option<std::time::Duration> {
        None
    }

    /// Keeps the concurrency slots of reservation `id` for another
    /// [`CounterStore::slot_lease`] (the heartbeat of a running request);
    /// whether to go on renewing (`false`: the reservation is over, or its
    /// slots need no renewal).
    fn renew(&self, id: ReservationId) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        let _ = id;
        std::future::ready(Ok(true))
    }

    /// Settlements accepted ([`CounterStore::settle_detached`],
    /// [`CounterStore::release`]) that have not landed yet: on their way, or
    /// waiting for a store that does not answer. Stores that settle at once
    /// have none.
    fn pending_settlements(&self) -> usize {
        0
    }

    /// Whether the store is failing now (a shared store that stopped
    /// answering, until it recovers). Stores in this process never are.
    fn degraded(&self) -> bool {
        false
    }

    /// Waits until every settlement accepted so far has landed, or `within`
    /// has passed (shutdown); how many are still pending.
    fn flush(&self, within: std::time::Duration) -> impl Future<Output = usize> + Send {
        let _ = within;
        std::future::ready(0)
    }

    /// Forgets one counter of the tenant whose hash is `tenant` (an
    /// administrator's reset): the limit starts over. Whether there was
    /// anything to forget.
    fn reset(
        &self,
        tenant: u64,
        key: CounterKey,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

//! Waiting instead of a 429: a request refused by a limit that allows a
//! short wait (`max_wait`) is held until the instant its refusal said it
//! would fit, then admitted, if that instant comes within the wait.
//!
//! Each tenant has its own line, served in arrival order: one waiter at a
//! time asks the store again, at the instant its last refusal named (never
//! in a loop), so a tenant's waiters cost one store call each per wake-up,
//! and no tenant's line holds up another tenant. Lines are bounded (per
//! tenant and in total): a request that finds them full, or whose wait
//! would run past what it may wait, is refused at once as before. A waiter
//! whose client goes away leaves its line when its future is dropped.
//!
//! Time comes from the caller: a [`Clock`] for "now", and a [`Pause`] that
//! sleeps (the tokio timer in the gateway; tests move a fake clock).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use sluice_core::{Clock, CounterStore, Decision, Instant, Outcome, Plan};

/// Sleeps for a while: the tokio timer, or a test's fake clock.
pub trait Pause: Send + Sync {
    /// Waits `d`.
    fn pause(&self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// The tokio timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioPause;

impl Pause for TokioPause {
    fn pause(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// How many requests may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBounds {
    /// Waiting requests of one tenant.
    pub per_tenant: usize,
    /// Waiting requests of all tenants.
    pub total: usize,
    /// What the waiting requests hold (their bodies), in bytes, together.
    pub bytes: usize,
}

impl Default for QueueBounds {
    fn default() -> Self {
        Self { per_tenant: 32, total: 1_024, bytes: 64 << 20 }
    }
}

/// Who waits, and for how long at most.
#[derive(Clone, Copy, Debug)]
pub struct Waiter {
    /// The tenant's hash (its line).
    pub tenant: u64,
    /// What the request holds while it waits (its body), in bytes.
    pub bytes: usize,
    /// The longest it may wait.
    pub wait: Duration,
}

/// What waiting came to.
#[derive(Debug)]
pub struct Waited {
    /// The last decision: admitted, or the refusal to answer with.
    pub decision: Decision,
    /// How long the request waited (zero if it did not).
    pub waited: Duration,
    /// It was refused at once because the lines were full.
    pub full: bool,
}

/// One tenant's line: a fair (FIFO) turn, and how many are in it.
#[derive(Debug, Default)]
struct Line {
    turn: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

/// The lines of every tenant with someone waiting.
#[derive(Debug, Default)]
pub struct WaitQueue {
    lines: Mutex<HashMap<u64, Arc<Line>>>,
    waiting: AtomicUsize,
    bytes: AtomicUsize,
    bounds: QueueBounds,
}

/// A place in a line, given back when dropped.
struct Ticket<'q> {
    queue: &'q WaitQueue,
    tenant: u64,
    line: Arc<Line>,
    bytes: usize,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::Relaxed);
        self.queue.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        if self.line.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            let mut lines = self.queue.lines.lock();
            if lines.get(&self.tenant).is_some_and(|l| l.waiting.load(Ordering::Relaxed) == 0) {
                // The last one out: the line goes, so idle tenants cost
                // nothing.
                lines.remove(&self.tenant);
            }
        }
    }
}

impl WaitQueue {
    /// Lines within these bounds.
    pub fn new(bounds: QueueBounds) -> Self {
        Self { bounds, ..Self::default() }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Bytes the waiting requests hold now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Tenants with a line now.
    pub fn lines(&self) -> usize {
        self.lines.lock().len()
    }

    fn join(&self, tenant: u64, bytes: usize) -> Option<Ticket<'_>> {
        let mut lines = self.lines.lock();
        if self.waiting.load(Ordering::Relaxed) >= self.bounds.total
            || self.bytes.load(Ordering::Relaxed).saturating_add(bytes) > self.bounds.bytes
        {
            return None;
        }
        let line = lines.entry(tenant).or_default().clone();
        if line.waiting.load(Ordering::Relaxed) >= self.bounds.per_tenant {
            return None;
        }
        line.waiting.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        Some(Ticket { queue: self, tenant, line, bytes })
    }

    /// Waits for room for a request that `first` refused, at most
    /// `who.wait` from now: in the tenant's line, then until the instant the
    /// refusal named, then asks `store` again with a plan made for that
    /// instant (`plan(now)`); again while it is refused with an instant
    /// still within the wait. Returns at once (with `first`) when `first`
    /// is not a wait that fits, or the lines are full.
    pub async fn wait_for_room<S, C, P>(
        &self,
        who: Waiter,
        (store, clock, pause): (&S, &C, &P),
        first: Decision,
        mut plan: impl FnMut(Instant) -> Plan + Send,
    ) -> Result<Waited, S::Error>
    where
        S: CounterStore,
        C: Clock + ?Sized,
        P: Pause,
    {
        let Waiter { tenant, bytes, wait } = who;
        let started = clock.now();
        let until = Instant(started.0.saturating_add(nanos(wait)));
        let fits = |d: &Decision| matches!(d.outcome, Outcome::Limited { retry_at, .. } if retry_at <= until);
        if !fits(&first) {
            return Ok(Waited { decision: first, waited: Duration::ZERO, full: false });
        }
        let Some(ticket) = self.join(tenant, bytes) else {
            return Ok(Waited { decision: first, waited: Duration::ZERO, full: true });
        };
        // The tenant's turn, in arrival order, within the wait.
        let left = Duration::from_nanos(until.0.saturating_sub(clock.now().0));
        let line = ticket.line.clone();
        let turn = tokio::select! {
            biased;
            t = line.turn.lock() => Some(t),
            () = pause.pause(left) => None,
        };
        let Some(turn) = turn else {
            let waited = Duration::from_nanos(clock.now().0.saturating_sub(started.0));
            return Ok(Waited { decision: first, waited, full: false });
        };
        let mut last = first;
        loop {
            let now = clock.now();
            let Outcome::Limited { retry_at, .. } = last.outcome else {
                break;
            };
            if retry_at > until {
                break;
            }
            if retry_at > now {
                pause.pause(Duration::from_nanos(retry_at.0 - now.0)).await;
                if clock.now() <= now {
                    // A clock that does not move (a test's, frozen): asking
                    // again would be answered the same, forever.
                    break;
                }
            }
            last = store.admit(&plan(clock.now())).await?;
            if last.is_admitted() {
                break;
            }
        }
        drop(turn);
        drop(ticket);
        let waited = Duration::from_nanos(clock.now().0.saturating_sub(started.0));
        Ok(Waited { decision: last, waited, full: false })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

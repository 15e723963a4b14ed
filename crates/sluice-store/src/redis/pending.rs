//! Settlements that survive the store: every settlement (and release) of a
//! Redis reservation goes through a bounded queue, and one task sends them,
//! many at once on the multiplexed connection. One that fails because Redis
//! is unreachable, broke the connection, or did not answer in time is tried
//! again, with backoff, until it lands or its reservation's lease has ended
//! (after which Redis has expired the lease and the charge stays as
//! reserved). Settling is idempotent (settle.lua deletes the lease it
//! settles), so a try whose answer was lost and is sent again settles once.
//!
//! How many are pending is visible ([`Settlements::len`], a log line while
//! some wait for the store), and shutdown waits for them ([`Settlements::flush`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::Mutex;
use sluice_core::{ReservationId, Usage};
use tokio::sync::Notify;

use super::{Inner, RedisStore, RedisStoreError};

/// The most settlements kept waiting; more are dropped (and counted): their
/// reservations keep their charge until the lease ends.
pub(crate) const CAPACITY: usize = 100_000;
/// The most settlements sent at once.
const IN_FLIGHT: usize = 256;
/// The most one try may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(1);
/// The first wait before a retry; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// While flushing (shutdown), retries come this soon.
const FLUSH_BACKOFF: Duration = Duration::from_millis(50);
/// How often the number waiting is logged while some wait.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// One settlement to send.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub(crate) id: ReservationId,
    pub(crate) usage: Usage,
    /// Release (concurrency only) rather than settle.
    pub(crate) release: bool,
    tries: u32,
    /// Not before.
    at: Instant,
    /// Given up after (the lease has ended).
    until: Instant,
}

/// A settlement waiting for a retry, ordered by when it is due.
#[derive(Debug)]
struct Later(Pending);

impl PartialEq for Later {
    fn eq(&self, other: &Self) -> bool {
        self.0.at == other.0.at
    }
}
impl Eq for Later {}
impl PartialOrd for Later {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Later {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.at.cmp(&other.0.at)
    }
}

/// Settlements not being sent: new ones (due at once), and retries (due
/// when their backoff ends).
#[derive(Debug, Default)]
struct Waiting {
    new: VecDeque<Pending>,
    retries: BinaryHeap<Reverse<Later>>,
}

/// The queue, shared by the store and its sending task.
#[derive(Debug, Default)]
pub(crate) struct Settlements {
    waiting: Mutex<Waiting>,
    /// Accepted and not landed (or given up): waiting, or being sent.
    count: AtomicUsize,
    /// Waiting for a retry (the store failed them at least once).
    retrying: AtomicUsize,
    wake: Notify,
    drained: Notify,
    flushing: AtomicBool,
    dropped: AtomicU64,
    given_up: AtomicU64,
}

impl Settlements {
    /// Accepts a settlement, to be sent at once and retried until `until`.
    pub(crate) fn push(&self, id: ReservationId, usage: Usage, release: bool, until: Instant) {
        if self.count.load(Ordering::Relaxed) >= CAPACITY {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::error!(
                    dropped = n + 1,
                    capacity = CAPACITY,
                    "settlements dropped: too many wait for the store; their reservations keep their charge until the lease ends"
                );
            }
            return;
        }
        let now = Instant::now();
        self.count.fetch_add(1, Ordering::Relaxed);
        self.waiting.lock().new.push_back(Pending { id, usage, release, tries: 0, at: now, until });
        self.wake.notify_one();
    }

    /// Settlements accepted and not landed yet.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Settlements dropped because the queue was full, and given up because
    /// their lease ended first.
    pub(crate) fn lost(&self) -> (u64, u64) {
        (self.dropped.load(Ordering::Relaxed), self.given_up.load(Ordering::Relaxed))
    }

    /// Waits until every accepted settlement has landed (or been given
    /// up), or `within` has passed; returns how many are still pending.
    /// Meanwhile retries come sooner.
    pub(crate) async fn flush(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        self.flushing.store(true, Ordering::Relaxed);
        {
            let mut waiting = self.waiting.lock();
            let Waiting { new, retries } = &mut *waiting;
            new.extend(retries.drain().map(|Reverse(Later(p))| p));
        }
        self.wake.notify_one();
        loop {
            let drained = self.drained.notified();
            let left = self.len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                self.flushing.store(false, Ordering::Relaxed);
                return left;
            }
            let _ = tokio::time::timeout_at(deadline, drained).await;
        }
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Takes up to `n` settlements due now; and when the next is due.
    fn take_due(&self, n: usize) -> (Vec<Pending>, Option<Instant>) {
        let now = Instant::now();
        let mut waiting = self.waiting.lock();
        let mut due = Vec::new();
        while due.len() < n {
            if let Some(p) = waiting.new.pop_front() {
                due.push(p);
            } else if waiting.retries.peek().is_some_and(|Reverse(Later(p))| p.at <= now) {
                if let Some(Reverse(Later(p))) = waiting.retries.pop() {
                    due.push(p);
                }
            } else {
                break;
            }
        }
        let next = if waiting.new.is_empty() {
            waiting.retries.peek().map(|Reverse(Later(p))| p.at)
        } else {
            Some(now)
        };
        (due, next)
    }

    fn retry(&self, mut p: Pending, why: &RedisStoreError) {
        let backoff = if self.flushing.load(Ordering::Relaxed) {
            FLUSH_BACKOFF
        } else {
            FIRST_BACKOFF.saturating_mul(1 << p.tries.min(5)).min(MAX_BACKOFF)
        };
        let at = Instant::now() + backoff;
        if at >= p.until {
            self.given_up.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error = %why,
                tries = p.tries + 1,
                "a settlement was given up: the reservation's lease has ended, and it keeps the charge reserved"
            );
            self.done();
            return;
        }
        if p.tries == 0 && self.retrying.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                error = %why,
                pending = self.len(),
                "settlements are waiting for the store: retrying until they land or their leases end"
            );
        }
        p.tries += 1;
        p.at = at;
        self.waiting.lock().retries.push(Reverse(Later(p)));
    }

    fn landed(&self, p: &Pending) {
        if p.tries > 0 && self.retrying.fetch_sub(1, Ordering::Relaxed) == 1 {
            tracing::warn!(pending = self.len() - 1, "settlements land again");
        }
        self.done();
    }

    fn gave_up(&self, p: &Pending, why: &RedisStoreError) {
        tracing::warn!(error = %why, "a settlement failed and is not retried");
        if p.tries > 0 {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        self.done();
    }

    /// Sends what is due, as it comes, until the store is gone.
    pub(crate) async fn run(self: Arc<Self>, store: Weak<Inner>) {
        let mut sending = FuturesUnordered::new();
        let mut log = tokio::time::interval(LOG_EVERY);
        log.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Full: the next completion makes room.
            let room = IN_FLIGHT.saturating_sub(sending.len());
            let (due, next) = if room > 0 { self.take_due(room) } else { (Vec::new(), None) };
            if !due.is_empty() {
                let Some(inner) = store.upgrade() else { return };
                let store = RedisStore { inner };
                for p in due {
                    let store = store.clone();
                    sending.push(async move {
                        let call = store.settle_inner(p.id, p.usage, p.release);
                        let result = match tokio::time::timeout(TRY_TIMEOUT, call).await {
                            Ok(r) => r.map(|_| ()),
                            Err(_) => Err(RedisStoreError::Redis(
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "no answer to a settlement",
                                )
                                .into(),
                            )),
                        };
                        (p, result)
                    });
                }
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((p, result)) = sending.next(), if !sending.is_empty() => match result {
                    Ok(()) => self.landed(&p),
                    Err(e) if e.is_transient() => self.retry(p, &e),
                    Err(e) => self.gave_up(&p, &e),
                },
                () = self.wake.notified() => {}
                () = sleep => {}
                _ = log.tick() => {
                    let waiting = self.retrying.load(Ordering::Relaxed);
                    if waiting > 0 {
                        tracing::warn!(pending = self.len(), retrying = waiting, "settlements still waiting for the store");
                    }
                }
            }
        }
    }
}

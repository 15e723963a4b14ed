//! What happens when the shared store does not answer: a policy, not an
//! accident.
//!
//! [`Guarded`] puts a tight timeout on every call to a shared store and, when
//! it fails or is too slow, does what the operator chose: admit without
//! counting (`Open`), refuse with 503 (`Closed`, distinct from a 429), or
//! count in this process's memory (`Local`, optionally with a share of each
//! limit: `amount / instances`, so that N instances together stay near the
//! limit). While the store is down, requests do not each wait for the
//! timeout: one probe goes to the store per `probe_interval`, the rest go
//! straight to the fallback; the first probe that succeeds ends the outage,
//! with no restart. Transitions are logged (`store degraded` / `store
//! recovered`) and visible through [`Guarded::is_degraded`].
//!
//! Health is kept per server: on a Cluster, per master. A stalled master
//! sends only the tenants whose keys it holds to the failure mode; tenants
//! on the other masters go on as before, and no global state flips between
//! degraded and recovered as requests for different masters come and go.
//!
//! An admission the guard gave up on never takes effect later: it carries
//! its deadline (the moment the guard gives up) to the script, which does
//! nothing past it ([`RedisStore::admit_by`]); and should it have run in
//! time with its answer lost on the way (or the server's clock stepped back
//! since it was learned), the guard queues its undoing, a refund of the
//! reservation it would have made, which runs after it on the same
//! connection (and finds nothing if it did not run).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::{
    Clock, CounterKey, CounterStore, Decision, Outcome, Plan, ReservationId, Rule, Settlement,
    SystemClock, Usage,
};
use smallvec::SmallVec;

use crate::memory::MemoryStore;
use crate::redis::{RedisStore, RedisStoreError, is_redis_id};

/// What to do when the shared store fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Admit, counting nothing (availability first).
    Open,
    /// Refuse with 503 (limits first).
    Closed,
    /// Count in this process's memory until the store is back.
    Local,
}

/// How a [`Guarded`] store behaves.
#[derive(Clone, Copy, Debug)]
pub struct GuardOptions {
    /// The most a call may take.
    pub timeout: Duration,
    /// What to do when it fails.
    pub on_failure: OnFailure,
    /// While degraded, how often one request tries the store again.
    pub probe_interval: Duration,
    /// With `Local`: each instance enforces `amount / instances`, rounded
    /// down ([`share`]).
    pub instances: u64,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            on_failure: OnFailure::Local,
            probe_interval: Duration::from_secs(1),
            instances: 1,
        }
    }
}

/// Why a guarded call failed (only with `OnFailure::Closed`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared counter store is unavailable: {0}")]
pub struct Unavailable(pub String);

/// How often requests met by the failure mode are logged (one line, with
/// how many).
const LOG_EVERY_MS: u64 = 10_000;

/// A log line at most once per interval, with how many times it happened.
#[derive(Debug, Default)]
struct Every {
    next_ms: AtomicU64,
    count: AtomicU64,
}

impl Every {
    /// Counts one; the count to log, when a line is due.
    fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = wall_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        self.next_ms
            .compare_exchange(next, now + LOG_EVERY_MS, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| self.count.swap(0, Ordering::Relaxed))
    }
}

struct Inner {
    store: RedisStore,
    local: MemoryStore,
    options: GuardOptions,
    /// Requests met by the failure mode, logged once per interval.
    fallbacks: Every,
    /// Per server (`RedisStore::node_of`).
    health: Box<[Health]>,
    failures: AtomicU64,
}

/// One server's state.
#[derive(Debug, Default)]
struct Health {
    degraded: AtomicBool,
    next_probe_ms: AtomicU64,
}

/// A shared store with a timeout and a failure policy.
#[derive(Clone)]
pub struct Guarded {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("options", &self.inner.options)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// One instance's share of `amount` when `instances` share it: rounded
/// down, so that together they never admit more than the amount; but at
/// least 1, or an amount smaller than the number of instances would admit
/// nothing at all (then together they may admit up to `instances`).
pub fn share(amount: u64, instances: u64) -> u64 {
    (amount / instances.max(1)).max(1)
}

fn wall_ms() -> u64 {
    SystemClock.now().as_millis()
}

impl Guarded {
    /// Guards `store`.
    pub fn new(store: RedisStore, options: GuardOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                local: MemoryStore::new(SystemClock),
                options,
                health: (0..store.nodes()).map(|_| Health::default()).collect(),
                failures: AtomicU64::new(0),
                fallbacks: Every::default(),
                store,
            }),
        }
    }

    /// Whether the shared store is failing now (one of its servers, on a
    /// Cluster).
    pub fn is_degraded(&self) -> bool {
        self.inner.health.iter().any(|h| h.degraded.load(Ordering::Relaxed))
    }

    /// Whether the server that holds `tenant`'s keys is failing now.
    pub fn is_degraded_for(&self, tenant: u64) -> bool {
        self.health(tenant).degraded.load(Ordering::Relaxed)
    }

    fn health(&self, tenant: u64) -> &Health {
        let h = &self.inner.health;
        &h[self.inner.store.node_of(tenant) % h.len()]
    }

    /// Calls that failed or timed out so far.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// The store guarded.
    pub fn store(&self) -> &RedisStore {
        &self.inner.store
    }

    /// The in-process fallback (for sweeping).
    pub fn local(&self) -> &MemoryStore {
        &self.inner.local
    }

    /// Whether this call for `tenant` should skip the store (its server is
    /// degraded, and this is not the probe).
    fn skip(&self, tenant: u64) -> bool {
        let h = self.health(tenant);
        if !h.degraded.load(Ordering::Relaxed) {
            return false;
        }
        let now = wall_ms();
        let next = h.next_probe_ms.load(Ordering::Relaxed);
        if now < next {
            return true;
        }
        // One caller wins the probe; the others keep using the fallback.
        let probe = now + self.inner.options.probe_interval.as_millis() as u64;
        h.next_probe_ms.compare_exchange(next, probe, Ordering::Relaxed, Ordering::Relaxed).is_err()
    }

    /// The server name of `tenant`'s keys, for logs.
    fn server(&self, tenant: u64) -> String {
        let node = self.inner.store.node_of(tenant);
        self.inner.store.node_name(node).unwrap_or_else(|| "redis".to_owned())
    }

    fn failed(&self, tenant: u64, why: &str) {
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        let h = self.health(tenant);
        let probe = wall_ms() + self.inner.options.probe_interval.as_millis() as u64;
        h.next_probe_ms.store(probe, Ordering::Relaxed);
        if !h.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                server = %self.server(tenant),
                reason = why,
                on_failure = ?self.inner.options.on_failure,
                "store degraded: the shared counter store is unavailable"
            );
        }
    }

    fn succeeded(&self, tenant: u64) {
        let h = self.health(tenant);
        // A load first: the usual case (healthy) writes nothing shared.
        if h.degraded.load(Ordering::Relaxed) && h.degraded.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                server = %self.server(tenant),
                "store recovered: the shared counter store answers again"
            );
        }
    }

    /// The plan with each amount cut to this instance's share.
    fn local_plan(&self, plan: &Plan) -> Plan {
        let n = self.inner.options.instances.max(1);
        if n == 1 {
            return plan.clone();
        }
        let share = |a: u64| share(a, n);
        let mut p = plan.clone();
        for c in &mut p.charges {
            c.rule = match c.rule {
                Rule::Rolling { period_nanos, amount, burst } => {
                    Rule::Rolling { period_nanos, amount: share(amount), burst: share(burst) }
                }
                Rule::Calendar { slot, next_end, amount } => {
                    Rule::Calendar { slot, next_end, amount: share(amount) }
                }
                Rule::Concurrent { amount } => Rule::Concurrent { amount: share(amount) },
            };
        }
        p
    }

    fn fallback(&self, plan: &Plan) -> Result<Decision, Unavailable> {
        let on_failure = self.inner.options.on_failure;
        if let Some(n) = self.inner.fallbacks.hit() {
            match on_failure {
                OnFailure::Closed => tracing::error!(
                    refused = n,
                    "requests refused (503): the shared counter store is unavailable"
                ),
                OnFailure::Open => tracing::warn!(
                    admitted = n,
                    "requests admitted without counting: the shared counter store is unavailable"
                ),
                OnFailure::Local => tracing::warn!(
                    decided = n,
                    "requests decided by this instance's own counts: the shared counter store is unavailable"
                ),
            }
        }
        match on_failure {
            OnFailure::Open => Ok(Decision {
                outcome: Outcome::Admitted { reservation: None },
                statuses: SmallVec::new(),
            }),
            OnFailure::Closed => Err(Unavailable("no answer from the shared store".into())),
            OnFailure::Local => Ok(self.inner.local.admit_now(&self.local_plan(plan))),
        }
    }

    /// The counters as the shared store has them, or `Unavailable`: never
    /// the fallback's (which counts only this instance's requests, from the
    /// start of an outage). Tried even while degraded (reports are rare).
    async fn shared_peek(&self, plan: &Plan) -> Result<Decision, Unavailable> {
        let timeout = self.inner.options.timeout;
        let tenant = plan.tenant;
        match tokio::time::timeout(timeout, self.inner.store.peek(plan)).await {
            Ok(Ok(d)) => {
                self.succeeded(tenant);
                Ok(d)
            }
            Ok(Err(e)) => {
                self.failed(tenant, &e.to_string());
                Err(Unavailable(e.to_string()))
            }
            Err(_) => {
                self.failed(tenant, &format!("no answer within {timeout:?}"));
                Err(Unavailable(format!("no answer within {timeout:?}")))
            }
        }
    }

    async fn guarded_admit(&self, plan: &Plan) -> Result<Decision, Unavailable> {
        let tenant = plan.tenant;
        if self.skip(tenant) {
            return self.fallback(plan);
        }
        let timeout = self.inner.options.timeout;
        // The moment this call gives up is the script's deadline.
        let deadline = std::time::Instant::now() + timeout;
        let (id, call) = self.inner.store.admit_by(plan, Some(deadline));
        let answer = tokio::time::timeout_at(deadline.into(), call).await;
        match answer {
            Ok(Ok(d)) => {
                self.succeeded(tenant);
                Ok(d)
            }
            // The server answered, after the deadline: nothing was charged.
            // Not a failure of the store (its clock was learned a little
            // high, or the call was nearly too slow): this request falls back.
            Ok(Err(RedisStoreError::Late)) => {
                tracing::debug!("an admission reached redis after its deadline");
                self.fallback(plan)
            }
            Ok(Err(e)) => {
                if e.may_have_run() {
                    self.undo(plan, id);
                }
                self.failed(tenant, &e.to_string());
                self.fallback(plan)
            }
            Err(_) => {
                self.undo(plan, id);
                self.failed(tenant, &format!("no answer within {timeout:?}"));
                self.fallback(plan)
            }
        }
    }

    /// Queues the undoing of an admission given up on: a refund of
    /// everything it would have charged (concurrency released). It runs
    /// after the admission on the same connection: if the admission ran, it
    /// is undone; if it did not (or came late), this finds nothing.
    fn undo(&self, plan: &Plan, id: ReservationId) {
        if !plan.charges.is_empty() {
            self.inner.store.settle_detached(id, Usage::REFUND);
        }
    }
}

impl CounterStore for Guarded {
    type Error = Unavailable;

    async fn admit(&self, plan: &Plan) -> Result<Decision, Unavailable> {
        self.guarded_admit(plan).await
    }

    /// The shared store's counters; `Unavailable` while it fails (never
    /// the fallback's counts).
    async fn peek(&self, plan: &Plan) -> Result<Decision, Unavailable> {
        self.shared_peek(plan).await
    }

    async fn settle(&self, id: ReservationId, usage: Usage) -> Result<Settlement, Unavailable> {
        if !is_redis_id(id) {
            return Ok(self.inner.local.settle_now(id, usage));
        }
        match tokio::time::timeout(self.inner.options.timeout, self.inner.store.settle(id, usage))
            .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.failed((id.0 >> 64) as u64, &e.to_string());
                Err(Unavailable(e.to_string()))
            }
            Err(_) => {
                self.failed((id.0 >> 64) as u64, "settlement timed out");
                Err(Unavailable("settlement timed out".into()))
            }
        }
    }

    fn settle_detached(&self, id: ReservationId, usage: Usage) {
        if is_redis_id(id) {
            self.inner.store.settle_detached(id, usage);
        } else {
            self.inner.local.settle_now(id, usage);
        }
    }

    fn release(&self, id: ReservationId) {
        if is_redis_id(id) {
            self.inner.store.release(id);
        } else {
            self.inner.local.release_now(id);
        }
    }

    fn slot_lease(&self) -> Option<std::time::Duration> {
        self.inner.store.slot_lease()
    }

    async fn renew(&self, id: ReservationId) -> Result<bool, Unavailable> {
        if !is_redis_id(id) {
            // A slot of the fallback, in this process: nothing to renew.
            return Ok(false);
        }
        match tokio::time::timeout(self.inner.options.timeout, self.inner.store.renew(id)).await {
            Ok(Ok(open)) => Ok(open),
            Ok(Err(e)) => Err(Unavailable(e.to_string())),
            Err(_) => Err(Unavailable("renewing slots timed out".into())),
        }
    }

    fn pending_settlements(&self) -> usize {
        self.inner.store.pending_settlements()
    }

    fn degraded(&self) -> bool {
        self.is_degraded()
    }

    async fn flush(&self, within: std::time::Duration) -> usize {
        self.inner.store.flush_settlements(within).await
    }

    async fn reset(&self, tenant: u64, key: CounterKey) -> Result<bool, Unavailable> {
        let local = self.inner.local.reset(key);
        let call = self.inner.store.reset(tenant, key);
        match tokio::time::timeout(self.inner.options.timeout, call).await {
            Ok(Ok(shared)) => Ok(shared || local),
            Ok(Err(e)) => Err(Unavailable(e.to_string())),
            Err(_) => Err(Unavailable("reset timed out".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    /// Shares rounded down never add up to more than the amount; an amount
    /// smaller than the number of instances gives each one 1.
    #[test]
    fn shares_never_add_up_to_more_than_the_amount() {
        assert_eq!(share(100, 3), 33);
        for amount in 1..500 {
            for n in 1..12 {
                let s = share(amount, n);
                if amount >= n {
                    assert!(s * n <= amount, "{amount} over {n}: {s} each");
                    assert!(s * n > amount - n, "{amount} over {n}: {s} each");
                } else {
                    assert_eq!(s, 1);
                }
            }
        }
    }
}

//! The embedded default: counters in this process's memory.
//!
//! All of a tenant's counters live in one shard, chosen by the tenant's hash,
//! so an admission takes exactly one uncontended lock, checks every counter of
//! its plan and charges all of them or none. Many tenants spread over many
//! shards; two requests of one tenant serialize on its shard, which is what
//! "correct to the last request" costs and all it costs.
//!
//! Inside a shard, each tenant's counters sit together in one block (see
//! `block.rs`): one table lookup finds the tenant, and the counters of an
//! admission are then a few adjacent cache lines of one allocation, grouped
//! by partition (a model's RPM, RPD and TPD side by side). Counters are still
//! named by their full [`CounterKey`], so a policy reload, a tier change or a
//! raised limit finds exactly the counters it found before.
//!
//! Memory is bounded by what matters: a counter that has refilled completely,
//! or whose calendar slot is over, is indistinguishable from no counter and is
//! dropped by [`MemoryStore::sweep`] (also run by each shard on its own as it
//! grows). Reservations are kept until settled, released, or their lease ends;
//! an expired lease keeps its token charges and frees its concurrency slot.
//!
//! This file is the store and its shards' locks; a shard's counters are in
//! `shard.rs`, its reservations in `lease.rs`, the keys and hashers of its
//! tables in `tables.rs`, a tenant's block in `block.rs`.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::future::{Future, ready};
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_core::counter::CounterState;
use sluice_core::{
    Clock, CounterKey, CounterStore, Decision, Instant, Outcome, Plan, ReservationId, Settlement,
    Usage, decide, records,
};
use smallvec::SmallVec;

mod block;
mod lease;
mod shard;
mod tables;
#[cfg(test)]
mod tests;

use lease::Lease;
use shard::{Loc, SWEEP_MIN, Shard};

/// Cache-line aligned, so that neighbouring shards' locks do not share a line.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// Sizes of a memory store, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Live counters.
    pub counters: usize,
    /// Open reservations.
    pub reservations: usize,
    /// Bytes held by the counter tables (buckets and control bytes).
    pub counter_bytes: usize,
}

/// Counters in process memory. Cheap to clone (shared).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Padded]>,
    mask: u64,
    ids: RandomState,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("shards", &self.inner.shards.len()).finish()
    }
}

impl MemoryStore {
    /// A store reading time from `clock`, with a shard count suited to this
    /// machine.
    pub fn new(clock: impl Clock + 'static) -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards(clock, (cpus * 16).next_power_of_two())
    }

    /// A store with `shards` shards (rounded up to a power of two, at most
    /// 65,536).
    pub fn with_shards(clock: impl Clock + 'static, shards: usize) -> Self {
        let n = shards.clamp(1, 1 << 16).next_power_of_two();
        let shards = (0..n).map(|_| Padded(Mutex::new(Shard::default()))).collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                mask: n as u64 - 1,
                ids: RandomState::new(),
                clock: Arc::new(clock),
            }),
        }
    }

    fn shard_index(&self, tenant_bits: u32) -> usize {
        // The same bits a group key carries (`GroupKey::tenant_bits`), so
        // restored counters land in their tenant's shard.
        (u64::from(tenant_bits) & self.inner.mask) as usize
    }

    fn shard_of(&self, tenant: u64) -> (usize, &Mutex<Shard>) {
        let i = self.shard_index((tenant >> 32) as u32);
        (i, &self.inner.shards[i].0)
    }

    fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    /// Admits (or denies) a plan, all or nothing. See [`CounterStore::admit`].
    #[inline]
    pub fn admit_now(&self, plan: &Plan) -> Decision {
        let mut decision = Decision {
            outcome: Outcome::Admitted { reservation: None },
            statuses: SmallVec::new(),
        };
        // Built where the caller keeps it: a decision is over 600 bytes.
        self.admit_into(plan, &mut decision);
        decision
    }

    fn admit_into(&self, plan: &Plan, decision: &mut Decision) {
        let (index, shard) = self.shard_of(plan.tenant);
        let mut guard = shard.lock();
        let shard = &mut *guard;
        if plan.now.0 >= shard.next_lease_sweep {
            shard.expire_leases(plan.now);
        }
        let mut writes: SmallVec<[Option<CounterState>; 8]> = SmallVec::new();
        shard.admit(plan, decision, &mut writes);
        if decision.is_admitted() {
            if writes.iter().any(Option::is_some) {
                let tag = shard.new_tag(index, &self.inner.ids);
                let slot =
                    shard.open_lease(tag, plan.lease_until.0, plan.price, records(plan, &writes));
                let low = (u64::from(slot) << 16) | index as u64;
                decision.outcome = Outcome::Admitted {
                    reservation: Some(ReservationId((u128::from(tag) << 64) | u128::from(low))),
                };
            }
            if shard.held >= shard.sweep_at_len.max(SWEEP_MIN) {
                shard.sweep(plan.now);
            }
        }
    }

    /// Reports a plan's state without charging. See [`CounterStore::peek`].
    pub fn peek_now(&self, plan: &Plan) -> Decision {
        let (_, shard) = self.shard_of(plan.tenant);
        let mut states: SmallVec<[Option<CounterState>; 8]> = SmallVec::new();
        let mut locs: SmallVec<[Loc; 8]> = SmallVec::new();
        shard.lock().read(plan, &mut states, &mut locs);
        decide(plan, &states).decision
    }

    fn take_lease(&self, id: ReservationId) -> Option<(parking_lot::MutexGuard<'_, Shard>, Lease)> {
        let low = id.0 as u64;
        let tag = (id.0 >> 64) as u64;
        let shard = self.inner.shards.get((low & 0xFFFF) as usize)?;
        let mut shard = shard.0.lock();
        let lease = shard.close_lease(u32::try_from(low >> 16).ok()?, tag)?;
        Some((shard, lease))
    }

    /// Settles a reservation. See [`CounterStore::settle`].
    pub fn settle_now(&self, id: ReservationId, usage: Usage) -> Settlement {
        let now = self.now();
        let Some((mut shard, lease)) = self.take_lease(id) else {
            return Settlement::Unknown;
        };
        if lease.expires <= now.0 {
            // Expired, and not swept yet: expire it now, as the sweep would
            // have (the charge stays; only concurrency comes back).
            shard.release_concurrency(&lease, now);
            return Settlement::Unknown;
        }
        shard.settle(&lease, usage, now);
        Settlement::Settled
    }

    /// Ends a reservation without usage. See [`CounterStore::release`].
    pub fn release_now(&self, id: ReservationId) {
        let now = self.now();
        if let Some((mut shard, lease)) = self.take_lease(id) {
            shard.release_concurrency(&lease, now);
        }
    }

    /// Drops idle counters and expires leases in every shard.
    pub fn sweep(&self) {
        let now = self.now();
        for s in self.inner.shards.iter() {
            s.0.lock().sweep(now);
        }
    }

    /// Removes one counter (an administrator's reset).
    pub fn reset(&self, key: CounterKey) -> bool {
        let i = self.shard_index(key.group.tenant_bits());
        self.inner.shards[i].0.lock().remove(&key)
    }

    /// Current sizes.
    pub fn stats(&self) -> MemoryStats {
        let mut st = MemoryStats::default();
        for s in self.inner.shards.iter() {
            let s = s.0.lock();
            st.counters += s.live;
            st.reservations += s.open;
            st.counter_bytes += s.bytes();
        }
        st
    }

    /// Every live counter, for persistence.
    pub fn snapshot(&self) -> Vec<(CounterKey, CounterState)> {
        let now = self.now();
        let mut out = Vec::new();
        for s in self.inner.shards.iter() {
            let s = s.0.lock();
            for b in s.tenants.values() {
                out.extend(
                    b.iter()
                        .filter(|(_, _, st)| !st.is_idle(now))
                        .map(|(group, counter, st)| (CounterKey { group, counter }, st)),
                );
            }
            out.extend(
                s.overflow.iter().filter(|(_, st)| !st.is_idle(now)).map(|(k, st)| (k.key(), *st)),
            );
        }
        out
    }

    /// Puts counters back (after a restart). Counters already present are
    /// kept: what happened since the snapshot wins.
    pub fn restore(&self, counters: impl IntoIterator<Item = (CounterKey, CounterState)>) {
        let now = self.now();
        for (key, state) in counters {
            if state.is_idle(now) {
                continue;
            }
            let i = self.shard_index(key.group.tenant_bits());
            let mut shard = self.inner.shards[i].0.lock();
            if shard.get(&key).is_none() {
                shard.set(&key, state);
            }
        }
    }
}

impl CounterStore for MemoryStore {
    type Error = Infallible;

    fn admit(&self, plan: &Plan) -> impl Future<Output = Result<Decision, Infallible>> + Send {
        ready(Ok(self.admit_now(plan)))
    }

    fn peek(&self, plan: &Plan) -> impl Future<Output = Result<Decision, Infallible>> + Send {
        ready(Ok(self.peek_now(plan)))
    }

    fn settle(
        &self,
        id: ReservationId,
        usage: Usage,
    ) -> impl Future<Output = Result<Settlement, Infallible>> + Send {
        ready(Ok(self.settle_now(id, usage)))
    }

    fn settle_detached(&self, id: ReservationId, usage: Usage) {
        self.settle_now(id, usage);
    }

    fn release(&self, id: ReservationId) {
        self.release_now(id);
    }

    fn reset(
        &self,
        _tenant: u64,
        key: CounterKey,
    ) -> impl Future<Output = Result<bool, Infallible>> + Send {
        ready(Ok(MemoryStore::reset(self, key)))
    }
}

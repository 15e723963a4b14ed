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

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::future::{Future, ready};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::Mutex;
use smallvec::SmallVec;

mod block;

use block::{Block, Place};
use sluice_core::counter::{CounterState, settle as settle_counter};
use sluice_core::{
    ChargeRecord, Clock, CounterKey, CounterStore, Decision, GroupKey, Instant, Metric, Outcome,
    Plan, ReservationId, Settlement, Usage, decide, decide_into, records,
};

/// A shard sweeps itself when it has grown this much since its last sweep.
const SWEEP_MIN: usize = 1_024;
/// A shard sweeps expired leases at least this often (nanoseconds).
const LEASE_SWEEP_NANOS: u64 = 1_000_000_000;

/// A counter's place in a shard's overflow table (counters beyond what a
/// tenant's block holds): its group and its identity, as plain words (no
/// 16-byte alignment: 24 bytes, 48 with its state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    group_hi: u64,
    group_lo: u64,
    counter: u64,
}

impl Slot {
    fn of(key: &CounterKey) -> Self {
        Self { group_hi: key.group.hi, group_lo: key.group.lo, counter: key.counter }
    }

    fn key(&self) -> CounterKey {
        CounterKey {
            group: GroupKey { hi: self.group_hi, lo: self.group_lo },
            counter: self.counter,
        }
    }
}

impl std::hash::Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Bucket by the group, and only the three low bits by the counter:
        // the counters of one group (a model's RPM, RPD, TPD) land in
        // neighbouring buckets and share their control bytes and cache lines.
        let h = self.group_lo.rotate_left(32) ^ self.group_hi;
        state.write_u64((h & !7) | (self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61));
    }
}

/// Slot hashes are already uniform: pass them through.
#[derive(Clone, Copy, Default)]
struct PassHasher(u64);

type BuildPass = BuildHasherDefault<PassHasher>;

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// An open reservation.
#[derive(Clone, Debug)]
struct Lease {
    /// The unguessable half of the id.
    tag: u64,
    expires: u64,
    charges: SmallVec<[ChargeRecord; 4]>,
}

/// Hashes a tenant's 32 bits for the table of blocks. The low bits are the
/// same for every tenant of a shard (they chose the shard), so fold a
/// multiplication to spread the others over the buckets.
#[derive(Clone, Copy, Default)]
struct TenantHasher(u64);

type BuildTenant = BuildHasherDefault<TenantHasher>;

impl Hasher for TenantHasher {
    fn finish(&self) -> u64 {
        let m = u128::from(self.0 ^ 0x243F_6A88_85A3_08D3) * 0x9E37_79B9_7F4A_7C15;
        (m as u64) ^ ((m >> 64) as u64)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v);
    }
}

/// Where a counter was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// In its tenant's block.
    Block(Place),
    /// In the overflow table.
    Overflow,
    /// Nowhere.
    Absent,
}

#[derive(Default)]
struct Shard {
    /// Each tenant's counters, by the tenant's 32 bits (`GroupKey::tenant_bits`).
    tenants: HashMap<u32, Block, BuildTenant>,
    /// Counters that did not fit in their tenant's block.
    overflow: HashMap<Slot, CounterState, BuildPass>,
    /// Live counters (idle ones not swept yet included).
    live: usize,
    /// Counter slots held (vacant ones included): what sweeping bounds.
    held: usize,
    /// Open reservations, in slots that are reused (the id names the slot).
    leases: Vec<Option<Lease>>,
    free: Vec<u32>,
    open: usize,
    sweep_at_len: usize,
    next_lease_sweep: u64,
    /// Admissions with a reservation so far (the input of reservation tags).
    seq: u64,
}

impl Shard {
    fn locate(&self, key: &CounterKey) -> (Option<CounterState>, Loc) {
        self.locate_in(self.tenants.get(&key.group.tenant_bits()), key)
    }

    /// Finds `key` given its tenant's block (looked up by the caller).
    #[inline(always)]
    fn locate_in(&self, block: Option<&Block>, key: &CounterKey) -> (Option<CounterState>, Loc) {
        locate_in(block, &self.overflow, key)
    }

    /// Decides `plan` and, if it is admitted, writes its counters back
    /// (`writes` says which were charged). The usual plan names only its own
    /// tenant's counters: its block is looked up once, for reading and
    /// writing.
    #[inline]
    fn admit(
        &mut self,
        plan: &Plan,
        decision: &mut Decision,
        writes: &mut SmallVec<[Option<CounterState>; 8]>,
    ) {
        let mut states: SmallVec<[Option<CounterState>; 8]> = SmallVec::new();
        let mut locs: SmallVec<[Loc; 8]> = SmallVec::new();
        let bits = (plan.tenant >> 32) as u32;
        if plan.charges.iter().any(|c| c.key.group.tenant_bits() != bits) {
            self.read(plan, &mut states, &mut locs);
            decide_into(plan, &states, decision, writes);
            if decision.is_admitted() {
                self.write(plan, &locs, writes);
            }
            return;
        }
        let mut block = self.tenants.get_mut(&bits);
        for c in &plan.charges {
            let (s, l) = locate_in(block.as_deref(), &self.overflow, &c.key);
            states.push(s);
            locs.push(l);
        }
        decide_into(plan, &states, decision, writes);
        if !decision.is_admitted() {
            return;
        }
        // Counters already there first: adding one may move the others.
        let mut rest = false;
        for (loc, w) in locs.iter().zip(writes.iter()) {
            match (w, loc, block.as_deref_mut()) {
                (Some(s), Loc::Block(p), Some(b)) => b.put(*p, s),
                (None, _, _) => {}
                _ => rest = true,
            }
        }
        if rest {
            self.write_elsewhere(plan, &locs, writes);
        }
    }

    /// Reads the state of every charge of `plan` and where it was found.
    #[inline]
    fn read(
        &self,
        plan: &Plan,
        states: &mut SmallVec<[Option<CounterState>; 8]>,
        locs: &mut SmallVec<[Loc; 8]>,
    ) {
        // A plan's counters are normally all its tenant's: one lookup.
        let mut tenant: Option<(u32, Option<&Block>)> = None;
        for c in &plan.charges {
            let bits = c.key.group.tenant_bits();
            let block = match tenant {
                Some((t, b)) if t == bits => b,
                _ => {
                    let b = self.tenants.get(&bits);
                    tenant = Some((bits, b));
                    b
                }
            };
            let (s, l) = self.locate_in(block, &c.key);
            states.push(s);
            locs.push(l);
        }
    }

    /// Stores the states an admission decided, where [`Shard::read`] found
    /// their counters.
    fn write(&mut self, plan: &Plan, locs: &[Loc], writes: &[Option<CounterState>]) {
        // Counters already there first: adding one may move the others.
        let mut tenant: Option<(u32, Option<&mut Block>)> = None;
        for ((c, loc), w) in plan.charges.iter().zip(locs).zip(writes) {
            if let (Some(s), Loc::Block(p)) = (w, loc) {
                let bits = c.key.group.tenant_bits();
                if tenant.as_ref().is_none_or(|(t, _)| *t != bits) {
                    tenant = Some((bits, self.tenants.get_mut(&bits)));
                }
                if let Some((_, Some(b))) = tenant.as_mut() {
                    b.put(*p, s);
                }
            }
        }
        self.write_elsewhere(plan, locs, writes);
    }

    /// Stores the decided states of the counters [`Shard::read`] did not
    /// find in a block (absent, or in the overflow table).
    fn write_elsewhere(&mut self, plan: &Plan, locs: &[Loc], writes: &[Option<CounterState>]) {
        for ((c, loc), w) in plan.charges.iter().zip(locs).zip(writes) {
            match (w, loc) {
                (Some(_), Loc::Block(_)) | (None, _) => {}
                // Not found when read: look again, an earlier charge of this
                // plan may have added it (a plan that names a counter twice).
                (Some(s), Loc::Absent) => self.set(&c.key, *s),
                (Some(s), Loc::Overflow) => self.set_at(&c.key, Loc::Overflow, *s),
            }
        }
    }

    fn get(&self, key: &CounterKey) -> Option<CounterState> {
        self.locate(key).0
    }

    fn set(&mut self, key: &CounterKey, state: CounterState) {
        let loc = self.locate(key).1;
        self.set_at(key, loc, state);
    }

    /// Stores a state where [`Shard::locate`] found its counter.
    fn set_at(&mut self, key: &CounterKey, loc: Loc, state: CounterState) {
        let bits = key.group.tenant_bits();
        match loc {
            Loc::Block(p) => {
                if let Some(b) = self.tenants.get_mut(&bits) {
                    b.put(p, &state);
                }
            }
            Loc::Overflow => {
                self.overflow.insert(Slot::of(key), state);
            }
            Loc::Absent => {
                let b = self.tenants.entry(bits).or_default();
                let before = b.slots();
                if b.insert(&key.group, key.counter, &state) {
                    self.held += b.slots() - before;
                } else {
                    b.set_overflowed();
                    self.overflow.insert(Slot::of(key), state);
                    self.held += 1;
                }
                self.live += 1;
            }
        }
    }

    fn remove(&mut self, key: &CounterKey) -> bool {
        let loc = self.locate(key).1;
        self.remove_at(key, loc)
    }

    /// Removes a counter where [`Shard::locate`] found it.
    fn remove_at(&mut self, key: &CounterKey, loc: Loc) -> bool {
        let bits = key.group.tenant_bits();
        let removed = match loc {
            Loc::Block(p) => {
                if let Some(b) = self.tenants.get_mut(&bits) {
                    b.vacate(p);
                }
                true
            }
            Loc::Overflow => {
                self.overflow.remove(&Slot::of(key));
                self.held -= 1;
                true
            }
            Loc::Absent => false,
        };
        if removed {
            self.live -= 1;
        }
        removed
    }

    fn sweep(&mut self, now: Instant) {
        self.expire_leases(now);
        self.overflow.retain(|_, s| !s.is_idle(now));
        let overflowed = !self.overflow.is_empty();
        let mut live = 0;
        let mut held = 0;
        self.tenants.retain(|_, b| {
            if !overflowed {
                b.clear_overflowed();
            }
            live += b.compact(now);
            held += b.slots();
            !b.is_empty()
        });
        self.live = live + self.overflow.len();
        self.held = held + self.overflow.len();
        self.sweep_at_len = (self.held * 2).max(SWEEP_MIN);
        // Give memory back once a burst of tenants has gone quiet.
        if self.tenants.capacity() > 4 * self.tenants.len().max(SWEEP_MIN) {
            self.tenants.shrink_to_fit();
        }
        if self.overflow.capacity() > 4 * self.overflow.len().max(SWEEP_MIN) {
            self.overflow.shrink_to_fit();
        }
    }

    /// Bytes held by the counters: the table of blocks, the blocks and the
    /// overflow table.
    fn bytes(&self) -> usize {
        fn table<K, V>(capacity: usize) -> usize {
            if capacity == 0 {
                return 0;
            }
            // hashbrown: buckets = capacity * 8/7, rounded to a power of two.
            let buckets = (capacity * 8 / 7).next_power_of_two();
            buckets * (size_of::<(K, V)>() + 1) + 16
        }
        table::<u32, Block>(self.tenants.capacity())
            + self.tenants.values().map(Block::bytes).sum::<usize>()
            + table::<Slot, CounterState>(self.overflow.capacity())
    }

    /// The next reservation tag: SipHash, keyed at random per process, of
    /// the shard and its sequence number.
    fn new_tag(&mut self, index: usize, ids: &RandomState) -> u64 {
        self.seq += 1;
        ids.hash_one((index as u128) << 64 | u128::from(self.seq))
    }

    /// Opens a lease with the given charges, built in its slot (a lease is
    /// a few hundred bytes: moving one in costs more than filling it).
    fn open_lease(
        &mut self,
        tag: u64,
        expires: u64,
        charges: impl Iterator<Item = ChargeRecord>,
    ) -> u32 {
        self.open += 1;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.leases.push(None);
                u32::try_from(self.leases.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(s) = self.leases.get_mut(slot as usize) {
            let lease = s.insert(Lease { tag, expires, charges: SmallVec::new() });
            lease.charges.extend(charges);
        }
        slot
    }

    fn close_lease(&mut self, slot: u32, tag: u64) -> Option<Lease> {
        let s = self.leases.get_mut(slot as usize)?;
        if s.as_ref().is_none_or(|l| l.tag != tag) {
            return None;
        }
        let lease = s.take();
        self.free.push(slot);
        self.open -= 1;
        lease
    }

    fn expire_leases(&mut self, now: Instant) {
        self.next_lease_sweep = now.0.saturating_add(LEASE_SWEEP_NANOS);
        if self.open == 0 {
            return;
        }
        for slot in 0..self.leases.len() {
            let expired = self.leases[slot].as_ref().is_some_and(|l| l.expires <= now.0);
            if expired && let Some(lease) = self.leases[slot].take() {
                self.free.push(slot as u32);
                self.open -= 1;
                self.release_concurrency(&lease, now);
            }
        }
    }

    fn release_concurrency(&mut self, lease: &Lease, now: Instant) {
        for c in lease.charges.iter().filter(|c| c.metric == Metric::Concurrent) {
            self.apply(c, 0, now);
        }
    }

    /// Settles every charge of a lease. The usual lease is one tenant's:
    /// its block is looked up once.
    fn settle(&mut self, lease: &Lease, usage: Usage, now: Instant) {
        let Some(first) = lease.charges.first() else {
            return;
        };
        let bits = first.key.group.tenant_bits();
        if lease.charges.len() > 64
            || lease.charges.iter().any(|c| c.key.group.tenant_bits() != bits)
        {
            for c in &lease.charges {
                self.apply(c, usage.amount(c.metric), now);
            }
            return;
        }
        // Charges settled in the block; the others (in the overflow table,
        // or gone) are settled one by one after.
        let mut done = 0u64;
        if let Some(b) = self.tenants.get_mut(&bits) {
            for (i, c) in lease.charges.iter().enumerate() {
                let Some((p, state)) = b.find(&c.key.group, c.key.counter) else {
                    continue;
                };
                match settle_counter(Some(state), c.how, c.charged, usage.amount(c.metric), now) {
                    Some(s) if !s.is_idle(now) => b.put(p, &s),
                    _ => {
                        b.vacate(p);
                        self.live -= 1;
                    }
                }
                done |= 1 << i;
            }
        }
        for (i, c) in lease.charges.iter().enumerate() {
            if done & (1 << i) == 0 {
                self.apply(c, usage.amount(c.metric), now);
            }
        }
    }

    fn apply(&mut self, c: &ChargeRecord, actual: u64, now: Instant) {
        let (state, loc) = self.locate(&c.key);
        match settle_counter(state, c.how, c.charged, actual, now) {
            Some(s) if !s.is_idle(now) => self.set_at(&c.key, loc, s),
            _ => {
                self.remove_at(&c.key, loc);
            }
        }
    }
}

/// Finds `key` given its tenant's block and the shard's overflow table.
#[inline(always)]
fn locate_in(
    block: Option<&Block>,
    overflow: &HashMap<Slot, CounterState, BuildPass>,
    key: &CounterKey,
) -> (Option<CounterState>, Loc) {
    if let Some(b) = block {
        if let Some((p, s)) = b.find(&key.group, key.counter) {
            return (Some(s), Loc::Block(p));
        }
        if b.overflowed()
            && let Some(s) = overflow.get(&Slot::of(key))
        {
            return (Some(*s), Loc::Overflow);
        }
    }
    (None, Loc::Absent)
}

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
                let slot = shard.open_lease(tag, plan.lease_until.0, records(plan, &writes));
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

#[cfg(test)]
mod tests {
    use sluice_core::{FakeClock, LimitId, PlannedCharge, Rule, Slot};

    use super::*;

    const START: &str = "2026-05-01T10:00:00Z";

    /// A calendar charge of `cost` on `tenant`'s counter `counter`, `amount`
    /// a day.
    fn charge(tenant: u64, counter: u64, amount: u64, cost: u64, now: Instant) -> PlannedCharge {
        let day = 86_400_000_000_000;
        let start = now.0 - now.0 % day;
        PlannedCharge {
            limit: LimitId(counter as u32),
            key: CounterKey { group: GroupKey::new(tenant, &[]), counter },
            metric: Metric::Tokens,
            rule: Rule::Calendar {
                slot: Slot { start: Instant(start), end: Instant(start + day) },
                next_end: Instant(start + 2 * day),
                amount,
            },
            cost,
            shadow: false,
        }
    }

    /// A plan of `tenant` at `now` with these charges (a minute's lease).
    fn plan_of(tenant: u64, now: Instant, charges: [PlannedCharge; 2]) -> Plan {
        Plan {
            tenant,
            now,
            lease_until: Instant(now.0 + 60_000_000_000),
            slots_until: Instant(now.0 + 60_000_000_000),
            charges: charges.into_iter().collect(),
        }
    }

    fn used(d: &Decision) -> Vec<u64> {
        d.statuses.iter().map(|s| s.used).collect()
    }

    /// A plan whose counters belong to two tenants (a hand-made plan: the
    /// policy never makes one) takes the store's general path: still all or
    /// nothing, and settled on both tenants.
    #[test]
    fn a_plan_across_tenants_is_all_or_nothing_and_settles() {
        let store = MemoryStore::with_shards(FakeClock::at(START), 4);
        let now = FakeClock::at(START).now();
        // Tenants whose top bits differ (another block, maybe another shard).
        let (a, b) = (0x1111_0000_0000_0001_u64, 0x2222_0000_0000_0002_u64);
        let plan = |cost_a, cost_b| {
            plan_of(a, now, [charge(a, 1, 100, cost_a, now), charge(b, 2, 100, cost_b, now)])
        };
        let d = store.admit_now(&plan(30, 40));
        assert!(d.is_admitted());
        assert_eq!(used(&d), [30, 40]);
        // b's counter cannot take 70 more: neither is charged.
        let denied = store.admit_now(&plan(10, 70));
        assert!(!denied.is_admitted());
        assert_eq!(used(&store.peek_now(&plan(0, 0))), [30, 40]);
        // Settling with less refunds both tenants' counters.
        let id = d.reservation().expect("a reservation");
        assert_eq!(store.settle_now(id, Usage::tokens(5, 0)), Settlement::Settled);
        assert_eq!(used(&store.peek_now(&plan(0, 0))), [5, 5]);
        assert_eq!(store.settle_now(id, Usage::tokens(5, 0)), Settlement::Unknown);
    }

    /// The usual plan (every counter its tenant's): charged in place, all
    /// or nothing, and refunded on settlement.
    #[test]
    fn one_tenant_plans_charge_and_settle_in_place() {
        let store = MemoryStore::with_shards(FakeClock::at(START), 4);
        let now = FakeClock::at(START).now();
        let t = 0x3333_0000_0000_0003_u64;
        let plan =
            |cost| plan_of(t, now, [charge(t, 1, 100, cost, now), charge(t, 2, 50, cost, now)]);
        let first = store.admit_now(&plan(20));
        assert_eq!(used(&first), [20, 20]);
        let second = store.admit_now(&plan(20));
        assert_eq!(used(&second), [40, 40]);
        // 60 would pass the first counter (100) but not the second (50).
        assert!(!store.admit_now(&plan(20)).is_admitted());
        assert_eq!(used(&store.peek_now(&plan(0))), [40, 40]);
        let id = first.reservation().expect("a reservation");
        assert_eq!(store.settle_now(id, Usage::tokens(0, 0)), Settlement::Settled);
        assert_eq!(used(&store.peek_now(&plan(0))), [20, 20]);
    }
}

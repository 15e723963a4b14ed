//! One shard of the memory store: the counters of the tenants it holds (a
//! block per tenant, and an overflow table), found, decided, written back
//! and swept under the shard's lock. Its reservations are in `lease.rs`.

use hashbrown::HashMap;
use sluice_core::counter::CounterState;
use sluice_core::{CounterKey, Decision, Instant, Plan, decide_into};
use smallvec::SmallVec;

use super::block::{Block, Place};
use super::lease::Lease;
use super::tables::{BuildPass, BuildTenant, Slot};

/// A shard sweeps itself when it has grown this much since its last sweep.
pub(super) const SWEEP_MIN: usize = 1_024;

/// Where a counter was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loc {
    /// In its tenant's block.
    Block(Place),
    /// In the overflow table.
    Overflow,
    /// Nowhere.
    Absent,
}

#[derive(Default)]
pub(super) struct Shard {
    /// Each tenant's counters, by the tenant's 32 bits (`GroupKey::tenant_bits`).
    pub(super) tenants: HashMap<u32, Block, BuildTenant>,
    /// Counters that did not fit in their tenant's block.
    pub(super) overflow: HashMap<Slot, CounterState, BuildPass>,
    /// Live counters (idle ones not swept yet included).
    pub(super) live: usize,
    /// Counter slots held (vacant ones included): what sweeping bounds.
    pub(super) held: usize,
    /// Open reservations, in slots that are reused (the id names the slot).
    pub(super) leases: Vec<Option<Lease>>,
    pub(super) free: Vec<u32>,
    pub(super) open: usize,
    pub(super) sweep_at_len: usize,
    pub(super) next_lease_sweep: u64,
    /// Admissions with a reservation so far (the input of reservation tags).
    pub(super) seq: u64,
}

impl Shard {
    pub(super) fn locate(&self, key: &CounterKey) -> (Option<CounterState>, Loc) {
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
    pub(super) fn admit(
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
    pub(super) fn read(
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

    pub(super) fn get(&self, key: &CounterKey) -> Option<CounterState> {
        self.locate(key).0
    }

    pub(super) fn set(&mut self, key: &CounterKey, state: CounterState) {
        let loc = self.locate(key).1;
        self.set_at(key, loc, state);
    }

    /// Stores a state where [`Shard::locate`] found its counter.
    pub(super) fn set_at(&mut self, key: &CounterKey, loc: Loc, state: CounterState) {
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

    pub(super) fn remove(&mut self, key: &CounterKey) -> bool {
        let loc = self.locate(key).1;
        self.remove_at(key, loc)
    }

    /// Removes a counter where [`Shard::locate`] found it.
    pub(super) fn remove_at(&mut self, key: &CounterKey, loc: Loc) -> bool {
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

    pub(super) fn sweep(&mut self, now: Instant) {
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
    pub(super) fn bytes(&self) -> usize {
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

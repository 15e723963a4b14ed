//! A shard's reservations: leases opened at admission, closed when settled
//! or released, expired when their time is up (keeping token charges,
//! freeing concurrency), and settlement with the real usage.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use sluice_core::counter::settle as settle_counter;
use sluice_core::{ChargeRecord, Instant, Metric, Price, Usage};
use smallvec::SmallVec;

use super::shard::Shard;

/// A shard sweeps expired leases at least this often (nanoseconds).
const LEASE_SWEEP_NANOS: u64 = 1_000_000_000;

/// An open reservation.
#[derive(Clone, Debug)]
pub(super) struct Lease {
    /// The unguessable half of the id.
    tag: u64,
    pub(super) expires: u64,
    /// The price its `cost` charges are settled at.
    price: Price,
    charges: SmallVec<[ChargeRecord; 4]>,
}

impl Shard {
    /// The next reservation tag: SipHash, keyed at random per process, of
    /// the shard and its sequence number.
    pub(super) fn new_tag(&mut self, index: usize, ids: &RandomState) -> u64 {
        self.seq += 1;
        ids.hash_one((index as u128) << 64 | u128::from(self.seq))
    }

    /// Opens a lease with the given charges, built in its slot (a lease is
    /// a few hundred bytes: moving one in costs more than filling it).
    pub(super) fn open_lease(
        &mut self,
        tag: u64,
        expires: u64,
        price: Price,
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
            let lease = s.insert(Lease { tag, expires, price, charges: SmallVec::new() });
            lease.charges.extend(charges);
        }
        slot
    }

    pub(super) fn close_lease(&mut self, slot: u32, tag: u64) -> Option<Lease> {
        let s = self.leases.get_mut(slot as usize)?;
        if s.as_ref().is_none_or(|l| l.tag != tag) {
            return None;
        }
        let lease = s.take();
        self.free.push(slot);
        self.open -= 1;
        lease
    }

    pub(super) fn expire_leases(&mut self, now: Instant) {
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

    pub(super) fn release_concurrency(&mut self, lease: &Lease, now: Instant) {
        for c in lease.charges.iter().filter(|c| c.metric == Metric::Concurrent) {
            self.apply(c, 0, now);
        }
    }

    /// Settles every charge of a lease. The usual lease is one tenant's:
    /// its block is looked up once.
    pub(super) fn settle(&mut self, lease: &Lease, usage: Usage, now: Instant) {
        let Some(first) = lease.charges.first() else {
            return;
        };
        let bits = first.key.group.tenant_bits();
        if lease.charges.len() > 64
            || lease.charges.iter().any(|c| c.key.group.tenant_bits() != bits)
        {
            for c in &lease.charges {
                self.apply(c, c.settled(&usage, &lease.price), now);
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
                match settle_counter(
                    Some(state),
                    c.how,
                    c.charged,
                    c.settled(&usage, &lease.price),
                    now,
                ) {
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
                self.apply(c, c.settled(&usage, &lease.price), now);
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

//! The request path's side of the history: events are added into
//! per-minute cells in memory, under one of a few locks (chosen by the hash
//! of the cell), and collected by a background task every second or so. No
//! I/O and no allocation (a cell is found by the names' hashes, compared as
//! integers, and keeps shared copies of the names), and a bounded number of
//! cells whatever the traffic: past the bound, a new cell's events are
//! folded into one overflow cell per minute.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::Mutex;
use sluice_core::RequestEvent;

use super::counts::Counts;

/// Locks: enough that two threads rarely meet on one.
const SHARDS: usize = 16;

/// The tenant name events past the series cap are counted under.
pub const OVERFLOW: &str = "(other tenants)";

/// One tenant's use of one model in one minute, not yet collected.
#[derive(Debug)]
pub struct Cell {
    /// The hashes of the tenant and the model.
    key: (u64, u64),
    /// The tenant's id.
    pub tenant: Arc<str>,
    /// The model's id (empty: decided before the model was known).
    pub model: Arc<str>,
    /// Minutes since the Unix epoch.
    pub minute: u32,
    /// What happened.
    pub counts: Counts,
}

/// A lock on its own cache lines, so that neighbours do not share them.
#[repr(align(128))]
struct Padded<T>(T);

/// The cells not yet collected.
pub(crate) struct Pending {
    shards: Box<[Padded<Mutex<HashTable<Cell>>>]>,
    hasher: DefaultHashBuilder,
    /// Cells one shard may hold before new ones overflow.
    per_shard: usize,
    /// Events folded into the overflow cell.
    pub(crate) overflowed: AtomicU64,
}

fn hash_of(hasher: &DefaultHashBuilder, key: (u64, u64), minute: u32) -> u64 {
    hasher.hash_one((key, minute))
}

/// The names of a cell, shared, and their hashes.
#[derive(Clone, Copy)]
pub(crate) struct Names<'a> {
    pub(crate) tenant: &'a Arc<str>,
    pub(crate) model: &'a Arc<str>,
    pub(crate) key: (u64, u64),
}

/// The tenant name and key of the overflow cell.
static OVERFLOW_TENANT: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from(OVERFLOW));
const OVERFLOW_KEY: (u64, u64) = (u64::MAX, u64::MAX);

impl Pending {
    /// At most `max_cells` cells between two collections.
    pub(crate) fn new(max_cells: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Padded(Mutex::new(HashTable::new()))).collect(),
            hasher: DefaultHashBuilder::default(),
            per_shard: max_cells.div_ceil(SHARDS).max(1),
            overflowed: AtomicU64::new(0),
        }
    }

    /// Applies `f` to the cell of (`names`, `minute`).
    #[inline]
    pub(crate) fn with(&self, names: Names<'_>, minute: u32, f: impl FnOnce(&mut Counts)) {
        let h = hash_of(&self.hasher, names.key, minute);
        // Bits the table does not use for its index or tags.
        let shard = &self.shards[(h >> 32) as usize % SHARDS].0;
        let mut cells = shard.lock();
        if let Some(cell) = cells.find_mut(h, |c| c.key == names.key && c.minute == minute) {
            f(&mut cell.counts);
            return;
        }
        if cells.len() < self.per_shard {
            let mut counts = Counts::default();
            f(&mut counts);
            let cell = Cell {
                key: names.key,
                tenant: names.tenant.clone(),
                model: names.model.clone(),
                minute,
                counts,
            };
            let hasher = &self.hasher;
            cells.insert_unique(h, cell, |c| hash_of(hasher, c.key, c.minute));
            return;
        }
        drop(cells);
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        if names.key != OVERFLOW_KEY {
            let overflow = Names {
                tenant: &OVERFLOW_TENANT,
                model: RequestEvent::no_model(),
                key: OVERFLOW_KEY,
            };
            self.with_overflow(overflow, minute, f);
        }
    }

    /// The overflow cell of `minute` (allowed past the bound: one a minute
    /// and shard at most).
    fn with_overflow(&self, names: Names<'_>, minute: u32, f: impl FnOnce(&mut Counts)) {
        let h = hash_of(&self.hasher, names.key, minute);
        let mut cells = self.shards[(h >> 32) as usize % SHARDS].0.lock();
        match cells.find_mut(h, |c| c.key == names.key && c.minute == minute) {
            Some(cell) => f(&mut cell.counts),
            None => {
                let mut counts = Counts::default();
                f(&mut counts);
                let cell = Cell {
                    key: names.key,
                    tenant: names.tenant.clone(),
                    model: names.model.clone(),
                    minute,
                    counts,
                };
                let hasher = &self.hasher;
                cells.insert_unique(h, cell, |c| hash_of(hasher, c.key, c.minute));
            }
        }
    }

    /// Takes every cell.
    pub(crate) fn collect(&self) -> Vec<Cell> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut cells = shard.0.lock();
            out.reserve(cells.len());
            out.extend(cells.drain());
        }
        out
    }

    /// Cells now held (for tests and stats).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(tenant: &'a Arc<str>, model: &'a Arc<str>) -> Names<'a> {
        let e = RequestEvent::new(tenant, model, sluice_core::Step::Admitted);
        Names { tenant, model, key: (e.tenant_hash, e.model_hash) }
    }

    #[test]
    fn cells_add_up_and_overflow_past_the_bound() {
        let p = Pending::new(32);
        let (acme, m): (Arc<str>, Arc<str>) = (Arc::from("acme"), Arc::from("m"));
        for i in 0..10 {
            p.with(names(&acme, &m), 100, |c| c.requests += 1);
            p.with(names(&acme, &m), 101, |c| c.requests += i);
        }
        let mut cells = p.collect();
        cells.sort_by_key(|c| c.minute);
        assert_eq!(cells.len(), 2);
        assert_eq!((cells[0].counts.requests, cells[1].counts.requests), (10, 45));
        assert_eq!(p.len(), 0, "collected");
        // Far more tenants than cells: memory stays bounded, nothing is lost.
        for t in 0..10_000 {
            let t: Arc<str> = Arc::from(format!("t{t}"));
            p.with(names(&t, &m), 7, |c| c.requests += 1);
        }
        assert!(p.len() <= 32 + SHARDS, "{} cells", p.len());
        let cells = p.collect();
        let total: u64 = cells.iter().map(|c| c.counts.requests).sum();
        assert_eq!(total, 10_000);
        let over: u64 =
            cells.iter().filter(|c| &*c.tenant == OVERFLOW).map(|c| c.counts.requests).sum();
        assert_eq!(over, p.overflowed.load(Ordering::Relaxed));
        assert!(over >= 10_000 - 32, "{over}");
    }
}

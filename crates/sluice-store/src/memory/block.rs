//! One tenant's counters in one allocation.
//!
//! A block is a `Vec<u64>`:
//!
//! ```text
//! [0]                  header: records (8 bits), entry slots (16 bits),
//!                      overflow flag (bit 63)
//! [1 .. 1+3r]          records, one per group: lo, hi, info
//! [1+3r .. 1+3r+3s]    entry slots: counter identity, state word 0, word 1
//! ```
//!
//! A record's info holds where its slots start (16 bits), how many it has
//! (8 bits, at most [`RECORD_SLOTS`]) and each slot's kind (2 bits a slot:
//! vacant, rolling, calendar, concurrent). A record's slots are contiguous, so
//! one group's counters (a model's RPM, RPD and TPD) share one or two cache
//! lines, and the whole tenant is a few adjacent lines: an admission finds the
//! block with one lookup and then reads memory the CPU fetches together.
//!
//! Removing a counter only marks its slot vacant (the next counter of that
//! group reuses it); [`Block::compact`] squeezes vacant slots and empty records
//! out. A block holds at most [`MAX_RECORDS`] groups of at most
//! [`RECORD_SLOTS`] counters; the shard keeps any further counter of the
//! tenant in its overflow table and sets the block's overflow flag.

use sluice_core::{CounterState, GroupKey, Instant};

/// Groups a block holds; a tenant's further groups go to the overflow table.
pub(super) const MAX_RECORDS: usize = 16;
/// Counters a group's record holds.
pub(super) const RECORD_SLOTS: usize = 20;

const VACANT: u64 = 0;
const ROLLING: u64 = 1;
const CALENDAR: u64 = 2;
const CONCURRENT: u64 = 3;

const OVERFLOW: u64 = 1 << 63;
/// Words added at a time when a block grows.
const GROW_WORDS: usize = 12;

/// Where a counter sits in a block (valid until a counter is added to the
/// block or the block is compacted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Place {
    /// Index of its record's info word.
    info: usize,
    /// Index of its slot within the record.
    j: usize,
    /// Index of its slot's first word.
    at: usize,
}

/// A state as a kind and two words.
#[inline]
fn encode(s: &CounterState) -> (u64, u64, u64) {
    match *s {
        CounterState::Rolling { tat, rem, amount } => {
            (ROLLING, tat, u64::from(rem) | (u64::from(amount) << 32))
        }
        CounterState::Calendar { end, used } => (CALENDAR, end, used),
        CounterState::Concurrent { in_flight } => (CONCURRENT, in_flight, 0),
    }
}

#[inline(always)]
fn decode(kind: u64, a: u64, b: u64) -> Option<CounterState> {
    match kind {
        ROLLING => Some(CounterState::Rolling { tat: a, rem: b as u32, amount: (b >> 32) as u32 }),
        CALENDAR => Some(CounterState::Calendar { end: a, used: b }),
        CONCURRENT => Some(CounterState::Concurrent { in_flight: a }),
        _ => None,
    }
}

fn kind_of(info: u64, j: usize) -> u64 {
    (info >> (24 + 2 * j)) & 3
}

fn with_kind(info: u64, j: usize, kind: u64) -> u64 {
    let shift = 24 + 2 * j;
    (info & !(3 << shift)) | (kind << shift)
}

fn start_of(info: u64) -> usize {
    (info & 0xFFFF) as usize
}

fn count_of(info: u64) -> usize {
    ((info >> 16) & 0xFF) as usize
}

/// One tenant's counters.
#[derive(Debug)]
pub(super) struct Block {
    w: Vec<u64>,
}

impl Default for Block {
    fn default() -> Self {
        Self { w: vec![0] }
    }
}

impl Block {
    fn header(&self) -> u64 {
        self.w.first().copied().unwrap_or(0)
    }

    fn set_header(&mut self, h: u64) {
        if let Some(w) = self.w.first_mut() {
            *w = h;
        }
    }

    /// Groups (records).
    fn records(&self) -> usize {
        (self.header() & 0xFF) as usize
    }

    /// Entry slots, vacant ones included.
    pub(super) fn slots(&self) -> usize {
        ((self.header() >> 8) & 0xFFFF) as usize
    }

    /// Whether some of this tenant's counters are in the overflow table.
    pub(super) fn overflowed(&self) -> bool {
        self.header() & OVERFLOW != 0
    }

    pub(super) fn clear_overflowed(&mut self) {
        let h = self.header();
        self.set_header(h & !OVERFLOW);
    }

    pub(super) fn set_overflowed(&mut self) {
        let h = self.header();
        self.set_header(h | OVERFLOW);
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.w.capacity() * 8
    }

    fn info(&self, rec: usize) -> u64 {
        self.w[1 + 3 * rec + 2]
    }

    fn slot_at(&self, rec: usize, j: usize) -> usize {
        1 + 3 * self.records() + 3 * (start_of(self.info(rec)) + j)
    }

    fn record_of(&self, group: &GroupKey) -> Option<usize> {
        let n = self.records();
        let recs = self.w.get(1..1 + 3 * n)?;
        recs.chunks_exact(3).position(|r| r[0] == group.lo && r[1] == group.hi)
    }

    /// Finds a counter: its place and its state.
    #[inline(always)]
    pub(super) fn find(&self, group: &GroupKey, counter: u64) -> Option<(Place, CounterState)> {
        let w = self.w.as_slice();
        let n = (w.first()? & 0xFF) as usize;
        let base = 1 + 3 * n;
        let recs = w.get(1..base)?;
        for (rec, r) in recs.chunks_exact(3).enumerate() {
            if r[0] != group.lo || r[1] != group.hi {
                continue;
            }
            let info = r[2];
            let first = base + 3 * start_of(info);
            let slots = w.get(first..first + 3 * count_of(info))?;
            for (j, s) in slots.chunks_exact(3).enumerate() {
                if s[0] == counter {
                    let kind = kind_of(info, j);
                    if let Some(state) = decode(kind, s[1], s[2]) {
                        return Some((
                            Place { info: 1 + 3 * rec + 2, j, at: first + 3 * j },
                            state,
                        ));
                    }
                }
            }
            // One record per group.
            return None;
        }
        None
    }

    /// Overwrites the state at a place.
    #[inline]
    pub(super) fn put(&mut self, p: Place, state: &CounterState) {
        let (kind, a, b) = encode(state);
        if let Some(s) = self.w.get_mut(p.at + 1..p.at + 3) {
            s[0] = a;
            s[1] = b;
        }
        if let Some(i) = self.w.get_mut(p.info) {
            *i = with_kind(*i, p.j, kind);
        }
    }

    /// Empties a place (its slot is reused by the group's next counter).
    pub(super) fn vacate(&mut self, p: Place) {
        if let Some(i) = self.w.get_mut(p.info) {
            *i = with_kind(*i, p.j, VACANT);
        }
    }

    fn reserve(&mut self, words: usize) {
        if self.w.capacity() - self.w.len() < words {
            self.w.reserve_exact(words.max(GROW_WORDS));
        }
    }

    /// Adds a counter that is not in the block. Returns `false`, changing
    /// nothing, when the block has no room for it (the caller keeps it in the
    /// overflow table).
    pub(super) fn insert(&mut self, group: &GroupKey, counter: u64, state: &CounterState) -> bool {
        let rec = match self.record_of(group) {
            Some(rec) => rec,
            None => {
                let n = self.records();
                if n >= MAX_RECORDS {
                    return false;
                }
                self.reserve(3);
                let at = 1 + 3 * n;
                let start = self.slots() as u64;
                self.w.splice(at..at, [group.lo, group.hi, start]);
                let h = self.header();
                self.set_header((h & !0xFF) | (n as u64 + 1));
                n
            }
        };
        let info = self.info(rec);
        let count = count_of(info);
        let j = match (0..count).find(|&j| kind_of(info, j) == VACANT) {
            Some(j) => j,
            None if count < RECORD_SLOTS => {
                self.reserve(3);
                let at = 1 + 3 * self.records() + 3 * (start_of(info) + count);
                self.w.splice(at..at, [counter, 0, 0]);
                let i = 1 + 3 * rec + 2;
                self.w[i] = (info & !(0xFF << 16)) | ((count as u64 + 1) << 16);
                // The records after this one start one slot later.
                for r in rec + 1..self.records() {
                    self.w[1 + 3 * r + 2] += 1;
                }
                let h = self.header();
                self.set_header(h + (1 << 8));
                count
            }
            None => return false,
        };
        let at = self.slot_at(rec, j);
        self.w[at] = counter;
        self.put(Place { info: 1 + 3 * rec + 2, j, at }, state);
        true
    }

    /// Every counter in the block with its key parts.
    pub(super) fn iter(&self) -> impl Iterator<Item = (GroupKey, u64, CounterState)> + '_ {
        let n = self.records();
        let base = 1 + 3 * n;
        (0..n).flat_map(move |rec| {
            let r = 1 + 3 * rec;
            let group = GroupKey { hi: self.w[r + 1], lo: self.w[r] };
            let info = self.w[r + 2];
            (0..count_of(info)).filter_map(move |j| {
                let at = base + 3 * (start_of(info) + j);
                decode(kind_of(info, j), self.w[at + 1], self.w[at + 2])
                    .map(|s| (group, self.w[at], s))
            })
        })
    }

    /// Drops idle counters, vacant slots and empty records; returns the
    /// counters kept. Gives memory back when the block has shrunk.
    pub(super) fn compact(&mut self, now: Instant) -> usize {
        let n = self.records();
        let base = 1 + 3 * n;
        let mut recs: Vec<u64> = Vec::with_capacity(3 * n);
        let mut slots: Vec<u64> = Vec::with_capacity(self.w.len() - base);
        for rec in 0..n {
            let r = 1 + 3 * rec;
            let info = self.w[r + 2];
            let start = slots.len() / 3;
            let mut kinds = 0u64;
            let mut count = 0usize;
            for j in 0..count_of(info) {
                let at = base + 3 * (start_of(info) + j);
                let kind = kind_of(info, j);
                let live =
                    decode(kind, self.w[at + 1], self.w[at + 2]).is_some_and(|s| !s.is_idle(now));
                if live {
                    slots.extend_from_slice(&self.w[at..at + 3]);
                    kinds |= kind << (2 * count);
                    count += 1;
                }
            }
            if count > 0 {
                recs.extend_from_slice(&[
                    self.w[r],
                    self.w[r + 1],
                    start as u64 | ((count as u64) << 16) | (kinds << 24),
                ]);
            }
        }
        let records = recs.len() / 3;
        let live = slots.len() / 3;
        let header = (self.header() & OVERFLOW) | records as u64 | ((live as u64) << 8);
        let mut w = Vec::with_capacity(1 + recs.len() + slots.len());
        w.push(header);
        w.extend_from_slice(&recs);
        w.extend_from_slice(&slots);
        self.w = w;
        live
    }

    /// Whether the block holds nothing (no counters here or in the overflow
    /// table), so it may be dropped.
    pub(super) fn is_empty(&self) -> bool {
        self.records() == 0 && !self.overflowed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(i: u64) -> GroupKey {
        GroupKey { hi: 0xABCD_0000_0000_0000 | i, lo: i * 7 }
    }

    #[test]
    fn states_round_trip() {
        for s in [
            CounterState::Rolling { tat: u64::MAX, rem: u32::MAX, amount: u32::MAX },
            CounterState::Rolling { tat: 5, rem: 0, amount: 1 },
            CounterState::Calendar { end: u64::MAX, used: u64::MAX },
            CounterState::Concurrent { in_flight: 0 },
        ] {
            let (k, a, b) = encode(&s);
            assert_eq!(decode(k, a, b), Some(s));
        }
    }

    #[test]
    fn insert_find_vacate_compact() {
        let mut b = Block::default();
        let st = |n| CounterState::Calendar { end: 100, used: n };
        for grp in 0..MAX_RECORDS as u64 {
            for c in 0..RECORD_SLOTS as u64 {
                assert!(b.insert(&g(grp), c, &st(grp * 100 + c)));
            }
            assert!(!b.insert(&g(grp), 99, &st(0)), "record full");
        }
        assert!(!b.insert(&g(99), 0, &st(0)), "block full");
        for grp in 0..MAX_RECORDS as u64 {
            for c in 0..RECORD_SLOTS as u64 {
                let (_, s) = b.find(&g(grp), c).expect("present");
                assert_eq!(s, st(grp * 100 + c));
            }
        }
        let (p, _) = b.find(&g(3), 4).expect("present");
        b.vacate(p);
        assert_eq!(b.find(&g(3), 4), None);
        assert!(b.insert(&g(3), 77, &st(1)), "reuses the vacant slot");
        assert_eq!(b.find(&g(3), 77).map(|f| f.1), Some(st(1)));
        assert_eq!(b.iter().count(), MAX_RECORDS * RECORD_SLOTS);
        // Everything ends at 100: compaction at 100 drops it all.
        let (p, _) = b.find(&g(5), 5).expect("present");
        b.put(p, &CounterState::Calendar { end: 200, used: 1 });
        assert_eq!(b.compact(Instant(100)), 1);
        assert_eq!(b.records(), 1);
        assert_eq!(b.slots(), 1);
        assert_eq!(
            b.find(&g(5), 5).map(|f| f.1),
            Some(CounterState::Calendar { end: 200, used: 1 })
        );
        assert_eq!(b.compact(Instant(200)), 0);
        assert!(b.is_empty());
    }
}

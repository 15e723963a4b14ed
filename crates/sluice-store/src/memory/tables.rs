//! The keys and hashers of a shard's two tables: the table of tenant blocks
//! (keyed by a tenant's 32 bits) and the overflow table (keyed by a
//! counter's [`Slot`]), both hashed cheaply because their keys are hashes
//! already.

use std::hash::{BuildHasherDefault, Hasher};

use sluice_core::{CounterKey, GroupKey};

/// A counter's place in a shard's overflow table (counters beyond what a
/// tenant's block holds): its group and its identity, as plain words (no
/// 16-byte alignment: 24 bytes, 48 with its state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    group_hi: u64,
    group_lo: u64,
    counter: u64,
}

impl Slot {
    pub(super) fn of(key: &CounterKey) -> Self {
        Self { group_hi: key.group.hi, group_lo: key.group.lo, counter: key.counter }
    }

    pub(super) fn key(&self) -> CounterKey {
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
pub(super) struct PassHasher(u64);

pub(super) type BuildPass = BuildHasherDefault<PassHasher>;

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

/// Hashes a tenant's 32 bits for the table of blocks. The low bits are the
/// same for every tenant of a shard (they chose the shard), so fold a
/// multiplication to spread the others over the buckets.
#[derive(Clone, Copy, Default)]
pub(super) struct TenantHasher(u64);

pub(super) type BuildTenant = BuildHasherDefault<TenantHasher>;

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

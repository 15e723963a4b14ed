//! Request ids (`x-request-id`): `req_` and 32 hex digits that reveal
//! nothing, neither how many requests this process has served nor the next
//! id: 128 bits from the operating system's random generator, drawn 4 KiB at
//! a time into a buffer of each thread (one system call per 256 ids, no
//! lock; measured cheaper than two SipHashes, docs/BENCHMARKS.md). Should
//! the generator ever fail, a counter through SipHash under two keys drawn
//! at start (a keyed pseudo-random function) stands in.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// Random bytes of one thread, used 16 at a time.
struct Pool {
    bytes: [u8; 4096],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; 4096], used: 4096 }) };
}

/// 16 random bytes, or `None` if the generator failed.
fn random16() -> Option<[u8; 16]> {
    POOL.with_borrow_mut(|p| {
        if p.used + 16 > p.bytes.len() {
            getrandom::fill(&mut p.bytes).ok()?;
            p.used = 0;
        }
        let out: [u8; 16] = p.bytes[p.used..p.used + 16].try_into().ok()?;
        p.used += 16;
        Some(out)
    })
}

/// Makes request ids.
pub(crate) struct RequestIds {
    seq: AtomicU64,
    high: RandomState,
    low: RandomState,
}

impl RequestIds {
    /// A generator with keys of its own.
    pub(crate) fn new() -> Self {
        Self { seq: AtomicU64::new(0), high: RandomState::new(), low: RandomState::new() }
    }

    /// The next id.
    pub(crate) fn next(&self) -> HeaderValue {
        let bytes = random16().unwrap_or_else(|| {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&self.high.hash_one(n).to_be_bytes());
            b[8..].copy_from_slice(&self.low.hash_one(n).to_be_bytes());
            b
        });
        let mut id = *b"req_00000000000000000000000000000000";
        // 16 bytes fill the 32 digits exactly: this cannot fail.
        let _ = hex::encode_to_slice(bytes, &mut id[4..]);
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("req_0"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::RequestIds;

    fn halves(id: &http::HeaderValue) -> (u64, u64) {
        let hex = id.to_str().unwrap().strip_prefix("req_").unwrap();
        assert_eq!(hex.len(), 32, "{hex}");
        (u64::from_str_radix(&hex[..16], 16).unwrap(), u64::from_str_radix(&hex[16..], 16).unwrap())
    }

    /// MurmurHash3's 64-bit finalizer undone: what an id whose half was an
    /// unkeyed bijection of a counter gave away.
    fn unmix64(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0x9cb4_b2f8_1293_37db);
        x ^= x >> 33;
        x = x.wrapping_mul(0x4f74_430c_22a5_4005);
        x ^ (x >> 33)
    }

    #[test]
    fn ids_never_repeat() {
        let ids = RequestIds::new();
        let seen: HashSet<_> = (0..100_000).map(|_| ids.next()).collect();
        assert_eq!(seen.len(), 100_000);
    }

    /// Undoing the finalizer on consecutive ids gives consecutive counters
    /// for the old scheme; for these ids it gives nothing of the kind, and
    /// the bits of consecutive ids differ about half the time.
    #[test]
    fn ids_do_not_give_away_the_count() {
        let ids = RequestIds::new();
        let all: Vec<(u64, u64)> = (0..1_000).map(|_| halves(&ids.next())).collect();
        let mut consecutive = 0;
        let mut flipped = 0u32;
        for w in all.windows(2) {
            for (x, y) in [(w[0].0, w[1].0), (w[0].1, w[1].1)] {
                if unmix64(y).wrapping_sub(unmix64(x)) == 1 {
                    consecutive += 1;
                }
                flipped += (x ^ y).count_ones();
            }
        }
        assert_eq!(consecutive, 0, "ids are an invertible function of a counter");
        let mean = f64::from(flipped) / 1_998.0;
        assert!((28.0..36.0).contains(&mean), "mean bits flipped {mean}");
    }

    /// Two processes (two generators) give unrelated ids.
    #[test]
    fn every_process_has_keys_of_its_own() {
        let (a, b) = (RequestIds::new(), RequestIds::new());
        let a: HashSet<_> = (0..1_000).map(|_| a.next()).collect();
        assert!((0..1_000).all(|_| !a.contains(&b.next())));
    }
}

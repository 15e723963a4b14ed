//! Time as the engine sees it: nanoseconds since the Unix epoch, read from an
//! injected [`Clock`].
//!
//! The engine never reads the system clock itself (rule 5 of the design): the
//! memory store is handed a clock, the Redis store uses the server's `TIME`, and
//! tests drive a [`FakeClock`] so that window boundaries, refills and DST changes
//! can be stepped through exactly. Wall-clock time (not a monotonic clock) is
//! what calendar windows need; a clock that steps backwards only makes rolling
//! limits stricter for a moment, never looser.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// An instant, in nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// The instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// The instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / NANOS_PER_SEC
    }

    /// Whole milliseconds since the epoch (rounded down).
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// This instant moved forward by `d` (saturating).
    #[must_use]
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_nanos(d)))
    }

    /// Parses an RFC 3339 timestamp (`2026-12-31T23:59:59Z`), or a date
    /// (`2026-12-31`, meaning the end of that day, UTC).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(ts) = text.parse::<jiff::Timestamp>() {
            return u64::try_from(ts.as_nanosecond()).ok().map(Self);
        }
        let date: jiff::civil::Date = text.parse().ok()?;
        let ts = date.tomorrow().ok()?.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
        u64::try_from(ts.as_nanosecond()).ok().map(Self)
    }

    /// As RFC 3339 (`2026-12-31T23:59:59Z`), to the second.
    pub fn rfc3339(self) -> String {
        jiff::Timestamp::from_second(i64::try_from(self.as_secs()).unwrap_or(i64::MAX))
            .map_or_else(|_| self.as_secs().to_string(), |t| t.to_string())
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
pub fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        // A clock set before 1970 reads as the epoch: limits then err on the
        // strict side rather than panicking.
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Instant(duration_nanos(since))
    }
}

/// A clock that only moves when told to. Clones share one time.
#[derive(Clone, Debug)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    /// A fake clock showing `start`.
    pub fn new(start: Instant) -> Self {
        Self(Arc::new(AtomicU64::new(start.0)))
    }

    /// A fake clock at the given RFC 3339 time, e.g. `2026-03-08T12:00:00Z`.
    ///
    /// # Panics
    /// If the text is not a valid timestamp (a test helper).
    #[allow(clippy::expect_used)]
    pub fn at(rfc3339: &str) -> Self {
        let ts: jiff::Timestamp = rfc3339.parse().expect("a valid RFC 3339 timestamp");
        Self::new(Instant(u64::try_from(ts.as_nanosecond()).unwrap_or(0)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        // Relaxed: the value is the only shared state and readers need no
        // ordering with other memory.
        self.0.fetch_add(duration_nanos(d), Ordering::Relaxed);
    }

    /// Sets the clock to `t` (may move backwards).
    pub fn set(&self, t: Instant) {
        self.0.store(t.0, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        Instant(self.0.load(Ordering::Relaxed))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::at("2026-01-01T00:00:00Z");
        let t0 = c.now();
        assert_eq!(t0.as_secs(), 1_767_225_600);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now().since(t0), Duration::from_millis(1500));
        let shared = c.clone();
        shared.advance(Duration::from_secs(1));
        assert_eq!(c.now().since(t0), Duration::from_millis(2500));
    }
}

//! The Redis server's clock as seen from this process, learned from the
//! scripts' replies, so that a call's deadline can be written in the
//! server's time (admit.lua's header says why).
//!
//! A reply read at local monotonic time `r` carries the server's time `S`
//! (microseconds of its wall clock) taken while the script ran, so before
//! `r`: `S - r` is a lower bound of the offset between the two clocks. The
//! best (largest) bound of the last [`WINDOW`]s is kept per *cell* (one
//! server: a standalone server or Sentinel's master; on a Cluster, one per
//! node, since every node has a clock of its own). A deadline `d` on the
//! local clock is `d + bound - MARGIN` on the server's: a time its clock
//! reaches no later than `d`, whatever the skew between the hosts.
//!
//! Keeping the best bound of recent windows only (not of all time) follows a
//! server clock stepped back by NTP within two windows; one stepped forward
//! is followed at the next reply. Reading a cell is two atomic loads; a
//! reply writes only when it improves the bound.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How long a bound is kept before a newer window's may replace it.
pub(crate) const WINDOW: Duration = Duration::from_secs(5);

/// Taken off every deadline: rounding, and the clocks' drift within a
/// window (100 ppm over 10 s is 1 ms).
pub(crate) const MARGIN_US: i64 = 1_000;

const NONE: i64 = i64::MIN;

/// One server's offset.
#[derive(Debug)]
struct Cell {
    /// The index of the window `best` belongs to.
    window: AtomicI64,
    /// The best bound of that window.
    best: AtomicI64,
    /// The best bound of the window before.
    before: AtomicI64,
}

impl Cell {
    fn new() -> Self {
        Self {
            window: AtomicI64::new(-1),
            best: AtomicI64::new(NONE),
            before: AtomicI64::new(NONE),
        }
    }
}

/// The offsets of the servers a store talks to.
#[derive(Debug)]
pub(crate) struct ServerClock {
    base: Instant,
    cells: Box<[Cell]>,
}

impl ServerClock {
    /// A clock for `cells` servers, knowing nothing yet.
    pub(crate) fn new(cells: usize) -> Self {
        Self { base: Instant::now(), cells: (0..cells.max(1)).map(|_| Cell::new()).collect() }
    }

    fn micros(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(i64::MAX)
    }

    fn cell(&self, cell: usize) -> &Cell {
        &self.cells[cell % self.cells.len()]
    }

    /// Notes a reply of server `cell`, read at `read`, that carried the
    /// server's time `server_us`.
    pub(crate) fn sample(&self, cell: usize, server_us: i64, read: Instant) {
        let local = self.micros(read);
        let bound = server_us.saturating_sub(local);
        let window = local / WINDOW.as_micros() as i64;
        let c = self.cell(cell);
        let seen = c.window.load(Ordering::Relaxed);
        if seen != window {
            // A new window: its first sample starts it, and the last
            // window's best is kept (if it was the one just before).
            if c.window.compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                let last = c.best.swap(bound, Ordering::Relaxed);
                c.before.store(if seen + 1 == window { last } else { NONE }, Ordering::Relaxed);
                return;
            }
        }
        if bound > c.best.load(Ordering::Relaxed) {
            c.best.fetch_max(bound, Ordering::Relaxed);
        }
    }

    /// `deadline` (on this process's monotonic clock) in server `cell`'s
    /// microseconds, or `None` before anything was learned of that server.
    pub(crate) fn deadline(&self, cell: usize, deadline: Instant) -> Option<i64> {
        let c = self.cell(cell);
        let bound = c.best.load(Ordering::Relaxed).max(c.before.load(Ordering::Relaxed));
        (bound != NONE).then(|| self.micros(deadline).saturating_add(bound) - MARGIN_US)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_reached_by_the_server_no_later_than_locally() {
        let clock = ServerClock::new(1);
        let now = Instant::now();
        assert_eq!(clock.deadline(0, now), None, "nothing learned yet");
        // The server's clock is 7 s ahead; a reply took 300 us to be read,
        // another 20 us: the better bound wins.
        let ahead = 7_000_000;
        let at = clock.micros(now);
        clock.sample(0, at + ahead - 300, now);
        clock.sample(0, at + ahead - 20, now);
        clock.sample(0, at + ahead - 900, now);
        let d = now + Duration::from_millis(50);
        let server = clock.deadline(0, d).expect("learned");
        let true_server = clock.micros(d) + ahead;
        assert!(server <= true_server, "never after the local deadline");
        assert_eq!(true_server - server, 20 + MARGIN_US);
        // Another server (a Cluster node) knows nothing of it.
        let two = ServerClock::new(2);
        two.sample(0, at + ahead, now);
        assert_eq!(two.deadline(1, d), None);
    }

    #[test]
    fn a_server_clock_stepped_back_is_followed_within_two_windows() {
        let clock = ServerClock::new(1);
        let t0 = Instant::now();
        let at = |t: Instant| clock.micros(t);
        clock.sample(0, at(t0) + 1_000_000, t0);
        // Stepped back by a second: the old bound stays for a while...
        let t1 = t0 + WINDOW;
        clock.sample(0, at(t1), t1);
        assert_eq!(clock.deadline(0, t1), Some(at(t1) + 1_000_000 - MARGIN_US));
        // ...and is gone two windows later.
        let t2 = t0 + 2 * WINDOW;
        clock.sample(0, at(t2), t2);
        assert_eq!(clock.deadline(0, t2), Some(at(t2) - MARGIN_US));
    }
}

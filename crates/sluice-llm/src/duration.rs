//! Durations spelled the way Go's `time.Duration.String()` spells them.
//!
//! OpenAI's `x-ratelimit-reset-*` headers and its 429 messages ("Please try
//! again in 6m0s") use this format, and clients parse it back with Go's
//! `time.ParseDuration` (go-openai) or regexes written against it, so it must
//! match Go exactly: `0s`, `1ns`, `1.1µs`, `2.2ms`, `1.5s`, `1m0s`, `3h2m5s`.

use std::fmt::{self, Write};
use std::time::Duration;

/// Nanoseconds per millisecond.
const NANOS_PER_MS: u64 = 1_000_000;

/// Formats `d` like Go's `time.Duration.String()`.
///
/// Durations longer than Go's maximum (about 292 years) saturate at
/// `u64::MAX` nanoseconds; Go would have overflowed long before.
pub fn go_duration(d: Duration) -> String {
    let mut s = String::with_capacity(16);
    // Writing to a String cannot fail.
    let _ = write_go_duration(&mut s, nanos(d));
    s
}

/// Writes `nanos` nanoseconds in Go's `Duration.String()` format.
pub fn write_go_duration<W: Write + ?Sized>(w: &mut W, nanos: u64) -> fmt::Result {
    if nanos == 0 {
        return w.write_str("0s");
    }
    // Built right to left, as Go does; 32 bytes hold the longest value.
    let mut b = Back::new();
    let mut u = nanos;
    if u < 1_000_000_000 {
        // Under a second: the largest unit below a second that fits, with a
        // fraction ("1.1µs", "2.2ms").
        let prec = if u < 1_000 {
            b.push_str("ns");
            0
        } else if u < NANOS_PER_MS {
            b.push_str("µs");
            3
        } else {
            b.push_str("ms");
            6
        };
        u = b.frac(u, prec);
        b.int(u);
    } else {
        b.push_str("s");
        u = b.frac(u, 9);
        // u is now whole seconds.
        b.int(u % 60);
        u /= 60;
        if u > 0 {
            b.push_str("m");
            b.int(u % 60);
            u /= 60;
            // Go stops at hours: days differ in length.
            if u > 0 {
                b.push_str("h");
                b.int(u);
            }
        }
    }
    w.write_str(b.as_str())
}

/// A string built from its end.
struct Back {
    buf: [u8; 32],
    at: usize,
}

impl Back {
    const fn new() -> Self {
        Self { buf: [0; 32], at: 32 }
    }

    fn push_str(&mut self, s: &str) {
        let n = s.len();
        self.at -= n;
        self.buf[self.at..self.at + n].copy_from_slice(s.as_bytes());
    }

    fn push(&mut self, c: u8) {
        self.at -= 1;
        self.buf[self.at] = c;
    }

    /// Go's `fmtFrac`: writes the last `prec` digits of `v` as a fraction
    /// without trailing zeros (and no point if they are all zero); returns
    /// `v / 10^prec`.
    fn frac(&mut self, mut v: u64, prec: u32) -> u64 {
        let mut print = false;
        for _ in 0..prec {
            let digit = (v % 10) as u8;
            print = print || digit != 0;
            if print {
                self.push(b'0' + digit);
            }
            v /= 10;
        }
        if print {
            self.push(b'.');
        }
        v
    }

    /// Go's `fmtInt`.
    fn int(&mut self, mut v: u64) {
        if v == 0 {
            self.push(b'0');
            return;
        }
        while v > 0 {
            self.push(b'0' + (v % 10) as u8);
            v /= 10;
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and whole UTF-8 unit names were written.
        std::str::from_utf8(&self.buf[self.at..]).unwrap_or("?")
    }
}

/// `d` in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `d` rounded up to a whole millisecond: resets and waits are shown at
/// millisecond precision (as OpenAI does) and never earlier than the truth.
pub fn ceil_millis(d: Duration) -> Duration {
    Duration::from_millis(nanos(d).div_ceil(NANOS_PER_MS))
}

/// Whole milliseconds in `d`, rounded up.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    nanos(d).div_ceil(NANOS_PER_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(n: u64) -> String {
        go_duration(Duration::from_nanos(n))
    }

    #[test]
    fn matches_go_table() {
        // Values printed by Go's time.Duration.String().
        let table: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (999, "999ns"),
            (1_000, "1µs"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (12_000_000, "12ms"),
            (999_999_999, "999.999999ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (7_660_000_000, "7.66s"),
            (59_999_000_000, "59.999s"),
            (60_000_000_000, "1m0s"),
            (360_000_000_000, "6m0s"),
            (179_560_000_000, "2m59.56s"),
            (432_000_000_000, "7m12s"),
            (3_600_000_000_000, "1h0m0s"),
            (10_925_000_000_000, "3h2m5s"),
            (90_000_000_000_000, "25h0m0s"),
            (1_000_000_001, "1.000000001s"),
            (61_000_000_001, "1m1.000000001s"),
            (100_000_000, "100ms"),
            (1_234_567, "1.234567ms"),
            (u64::MAX, "5124095h34m33.709551615s"),
        ];
        for &(n, want) in table {
            assert_eq!(ns(n), want, "{n} ns");
        }
    }

    #[test]
    fn writes_into_any_writer() {
        let mut s = String::from("in ");
        write_go_duration(&mut s, 644_000_000).unwrap();
        assert_eq!(s, "in 644ms");
    }

    #[test]
    fn ceil_millis_rounds_up() {
        assert_eq!(ceil_millis(Duration::from_nanos(1)), Duration::from_millis(1));
        assert_eq!(ceil_millis(Duration::from_millis(5)), Duration::from_millis(5));
        assert_eq!(ceil_millis(Duration::ZERO), Duration::ZERO);
        assert_eq!(go_duration(ceil_millis(Duration::from_nanos(179_559_000_001))), "2m59.56s");
    }
}

//! Windows: how long a limit's budget lasts and how it comes back.
//!
//! A *rolling* window refills continuously (GCRA / token bucket): it is what
//! providers mean by "per minute" and what Anthropic documents outright. A
//! *calendar* window is a fixed slot of the calendar with an exact reset
//! instant: what users expect of "per day" or "per month" (the budget comes back
//! at midnight, not 11.6 tokens a second). Calendar slots follow the tenant's
//! time zone when it has one, so a day in a DST change is 23 or 25 hours long.

use std::cell::RefCell;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::time::{Instant, NANOS_PER_SEC};

const MINUTE: u64 = 60;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

/// How long a window is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// A fixed number of seconds.
    Seconds(NonZeroU64),
    /// Calendar months (only meaningful for calendar windows).
    Months(NonZeroU64),
}

impl Period {
    /// A period of `n` seconds; `None` for zero.
    pub const fn seconds(n: u64) -> Option<Self> {
        match NonZeroU64::new(n) {
            Some(n) => Some(Self::Seconds(n)),
            None => None,
        }
    }

    /// The nominal length in seconds (a month counts as 30 days).
    pub fn nominal_secs(self) -> u64 {
        match self {
            Self::Seconds(s) => s.get(),
            Self::Months(m) => m.get().saturating_mul(30 * DAY),
        }
    }

    /// The nominal length in nanoseconds.
    pub fn nominal_nanos(self) -> u64 {
        self.nominal_secs().saturating_mul(NANOS_PER_SEC)
    }

    /// A short, stable spelling: `1m`, `90s`, `1d`, `1mo`. Used in counter
    /// identities, so it must never change for a given period.
    pub fn spelling(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Months(m) => write!(f, "{m}mo"),
            Self::Seconds(s) => {
                let s = s.get();
                for (unit, name) in [(WEEK, "w"), (DAY, "d"), (HOUR, "h"), (MINUTE, "m")] {
                    if s % unit == 0 {
                        return write!(f, "{}{name}", s / unit);
                    }
                }
                write!(f, "{s}s")
            }
        }
    }
}

/// Why a window spelling was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{text}` is not a window: write a positive number and a unit, one of s, m, h, d, w, mo (e.g. `1m`, `30s`, `1d`, `1mo`)"
)]
pub struct ParsePeriodError {
    text: String,
}

impl FromStr for Period {
    type Err = ParsePeriodError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeriodError { text: text.to_owned() };
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let n = NonZeroU64::new(n).ok_or_else(err)?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" | "seconds" => 1,
            "m" | "min" | "minute" | "minutes" => MINUTE,
            "h" | "hour" | "hours" => HOUR,
            "d" | "day" | "days" => DAY,
            "w" | "week" | "weeks" => WEEK,
            "mo" | "month" | "months" => return Ok(Self::Months(n)),
            _ => return Err(err()),
        };
        n.checked_mul(NonZeroU64::new(secs).ok_or_else(err)?).map(Self::Seconds).ok_or_else(err)
    }
}

/// How a window's budget comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// Continuous refill (GCRA): at most `burst + amount·t/period` in any
    /// interval of length `t`.
    Rolling,
    /// Fixed calendar slots with an exact reset instant.
    Calendar,
}

impl WindowKind {
    /// `rolling` or `calendar`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rolling => "rolling",
            Self::Calendar => "calendar",
        }
    }
}

/// A window: a period and a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// How long.
    pub period: Period,
    /// How it refills.
    pub kind: WindowKind,
}

/// Why a window cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Months only exist on a calendar.
    #[error(
        "a rolling window cannot be counted in months; use `kind = \"calendar\"` or a number of days such as `30d`"
    )]
    RollingMonths,
    /// A calendar slot must tile the day, or be a day, a week or a month.
    #[error(
        "a calendar window of {0} does not line up with the calendar; use a period that divides a day (e.g. `1m`, `15m`, `1h`, `6h`), or `1d`, `1w`, `1mo`"
    )]
    Unaligned(Period),
    /// Rolling amounts are kept in 32 bits.
    #[error(
        "a rolling window holds at most 4,294,967,295 units; use a calendar window (`kind = \"calendar\"`) for {0}"
    )]
    TooLarge(u64),
    /// Rolling refill needs whole nanoseconds per unit.
    #[error("an amount of {amount} per {period} refills faster than one unit per nanosecond")]
    TooFine {
        /// The amount.
        amount: u64,
        /// The period.
        period: Period,
    },
}

impl Window {
    /// A rolling window.
    pub const fn rolling(period: Period) -> Self {
        Self { period, kind: WindowKind::Rolling }
    }

    /// A calendar window.
    pub const fn calendar(period: Period) -> Self {
        Self { period, kind: WindowKind::Calendar }
    }

    /// Checks that this window can be used with `amount`.
    pub fn validate(&self, amount: u64) -> Result<(), WindowError> {
        match (self.kind, self.period) {
            (WindowKind::Rolling, Period::Months(_)) => Err(WindowError::RollingMonths),
            (WindowKind::Rolling, _) if amount > u64::from(u32::MAX) => {
                Err(WindowError::TooLarge(amount))
            }
            (WindowKind::Rolling, p) => {
                if amount > p.nominal_nanos() {
                    Err(WindowError::TooFine { amount, period: p })
                } else {
                    Ok(())
                }
            }
            (WindowKind::Calendar, Period::Months(m)) if m.get() == 1 => Ok(()),
            (WindowKind::Calendar, Period::Seconds(s)) => {
                let s = s.get();
                if (s <= DAY && DAY.is_multiple_of(s)) || s == WEEK {
                    Ok(())
                } else {
                    Err(WindowError::Unaligned(self.period))
                }
            }
            (WindowKind::Calendar, p) => Err(WindowError::Unaligned(p)),
        }
    }

    /// The calendar slot `[start, end)` that contains `now`, in the zone `tz`
    /// (UTC when `None`). Only meaningful for calendar windows; a rolling
    /// window returns a slot of its nominal length ending now.
    pub fn slot(&self, now: Instant, tz: Option<&Zone>) -> Slot {
        if self.kind == WindowKind::Rolling {
            return Slot {
                start: Instant(now.0.saturating_sub(self.period.nominal_nanos())),
                end: now,
            };
        }
        self.slot_and_next(now, tz).0
    }

    /// The calendar slot containing `now`, and the end of the slot after it.
    pub fn slot_and_next(&self, now: Instant, tz: Option<&Zone>) -> (Slot, Instant) {
        match (self.kind, self.period, tz) {
            (WindowKind::Rolling, _, _) => (self.slot(now, tz), now),
            (_, Period::Seconds(s), None) if s.get() <= DAY => {
                let slot = utc_slot(now, s.get());
                (slot, Instant(slot.end.0.saturating_add(s.get() * NANOS_PER_SEC)))
            }
            (_, Period::Seconds(s), None) if s.get() == WEEK => {
                let slot = utc_week(now);
                (slot, Instant(slot.end.0.saturating_add(WEEK * NANOS_PER_SEC)))
            }
            (_, period, zone) => zoned_slot_cached(now, period, zone),
        }
    }
}

/// A half-open interval of time: one calendar window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// First instant in the window.
    pub start: Instant,
    /// First instant after it: the reset.
    pub end: Instant,
}

impl Slot {
    /// Whether `t` falls inside.
    pub fn contains(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }
}

/// A time zone with a stable name, as tenants carry it.
#[derive(Clone, Debug)]
pub struct Zone {
    name: std::sync::Arc<str>,
    id: u64,
    tz: TimeZone,
}

/// An unknown time-zone name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a known IANA time zone (e.g. `America/Los_Angeles`, `Europe/Paris`, `UTC`)")]
pub struct UnknownZone(pub String);

impl Zone {
    /// Looks an IANA zone up in the bundled database.
    pub fn get(name: &str) -> Result<Self, UnknownZone> {
        let tz = TimeZone::get(name).map_err(|_| UnknownZone(name.to_owned()))?;
        Ok(Self { name: name.into(), id: xxhash_rust::xxh3::xxh3_64(name.as_bytes()), tz })
    }

    /// The IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The jiff zone.
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

fn utc_slot(now: Instant, secs: u64) -> Slot {
    let len = secs * NANOS_PER_SEC;
    let start = now.0 - now.0 % len;
    Slot { start: Instant(start), end: Instant(start.saturating_add(len)) }
}

fn utc_week(now: Instant) -> Slot {
    // 1970-01-05 was a Monday: weeks start on Monday (ISO 8601).
    let len = WEEK * NANOS_PER_SEC;
    let monday = 4 * DAY * NANOS_PER_SEC;
    let since = now.0.saturating_sub(monday);
    let start = monday + since - since % len;
    Slot { start: Instant(start.min(now.0)), end: Instant(start.saturating_add(len)) }
}

/// A zone id, a period, a slot and the end of the slot after it.
type CachedSlot = (u64, Period, Slot, Instant);

thread_local! {
    /// Recently computed zoned slots: calendar arithmetic in a time zone costs
    /// hundreds of nanoseconds, and the answer is the same for every request
    /// until the slot ends.
    static SLOTS: RefCell<[Option<CachedSlot>; 8]> = const { RefCell::new([None; 8]) };
}

fn zoned_slot_cached(now: Instant, period: Period, zone: Option<&Zone>) -> (Slot, Instant) {
    let zone_id = zone.map_or(0, |z| z.id);
    let hit = SLOTS.with(|c| {
        c.borrow()
            .iter()
            .flatten()
            .find(|(z, p, s, _)| *z == zone_id && *p == period && s.contains(now))
            .map(|(_, _, s, next)| (*s, *next))
    });
    if let Some(found) = hit {
        return found;
    }
    let utc = TimeZone::UTC;
    let tz = zone.map_or(&utc, |z| &z.tz);
    let slot = zoned_slot(now, period, tz);
    let next = zoned_slot(slot.end, period, tz).end;
    SLOTS.with(|c| {
        let mut c = c.borrow_mut();
        let i = (zone_id as usize ^ period.nominal_secs() as usize) % c.len();
        c[i] = Some((zone_id, period, slot, next));
    });
    (slot, next)
}

/// The calendar slot containing `now` in `tz`, computed from the civil
/// calendar (DST-correct for days, weeks and months).
pub fn zoned_slot(now: Instant, period: Period, tz: &TimeZone) -> Slot {
    let fallback = || utc_slot(now, period.nominal_secs().clamp(1, DAY));
    let Ok(ts) = Timestamp::from_nanosecond(i128::from(now.0)) else {
        return fallback();
    };
    let zoned = ts.to_zoned(tz.clone());
    let bounds = match period {
        Period::Months(_) => month_bounds(&zoned),
        Period::Seconds(s) if s.get() == WEEK => week_bounds(&zoned),
        Period::Seconds(s) if s.get() == DAY => day_bounds(zoned.date(), tz),
        Period::Seconds(s) => subday_bounds(&zoned, s.get(), tz),
    };
    match bounds {
        Some((start, end)) if start <= now && now < end => Slot { start, end },
        _ => fallback(),
    }
}

fn to_instant(z: &Zoned) -> Option<Instant> {
    u64::try_from(z.timestamp().as_nanosecond()).ok().map(Instant)
}

fn start_of(date: Date, tz: &TimeZone) -> Option<Instant> {
    // `to_zoned` resolves a midnight that falls in a DST gap to the first
    // instant that exists (jiff's "compatible" disambiguation).
    to_instant(&date.to_zoned(tz.clone()).ok()?)
}

fn day_bounds(date: Date, tz: &TimeZone) -> Option<(Instant, Instant)> {
    Some((start_of(date, tz)?, start_of(date.tomorrow().ok()?, tz)?))
}

fn week_bounds(z: &Zoned) -> Option<(Instant, Instant)> {
    let date = z.date();
    let back = i64::from(date.weekday().to_monday_zero_offset());
    let monday = date.checked_sub(jiff::Span::new().days(back)).ok()?;
    debug_assert_eq!(monday.weekday(), Weekday::Monday);
    let next = monday.checked_add(jiff::Span::new().days(7)).ok()?;
    Some((start_of(monday, z.time_zone())?, start_of(next, z.time_zone())?))
}

fn month_bounds(z: &Zoned) -> Option<(Instant, Instant)> {
    let first = z.date().first_of_month();
    let next = first.checked_add(jiff::Span::new().months(1)).ok()?;
    Some((start_of(first, z.time_zone())?, start_of(next, z.time_zone())?))
}

fn subday_bounds(z: &Zoned, secs: u64, tz: &TimeZone) -> Option<(Instant, Instant)> {
    // Slots tile the local day from local midnight. Within the day we count
    // real elapsed time, so on a DST day the last slot is shorter or longer
    // and the next day starts a fresh tiling.
    let (day_start, day_end) = day_bounds(z.date(), tz)?;
    let now = to_instant(z)?;
    let len = secs * NANOS_PER_SEC;
    let into = now.0 - day_start.0;
    let start = day_start.0 + into - into % len;
    let end = (start + len).min(day_end.0);
    Some((Instant(start), Instant(end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Clock;
    use crate::time::FakeClock;

    fn at(s: &str) -> Instant {
        FakeClock::at(s).now()
    }

    #[test]
    fn parses_and_spells_periods() {
        for (text, spelled) in [
            ("1m", "1m"),
            ("60s", "1m"),
            ("90s", "90s"),
            ("1h", "1h"),
            ("24h", "1d"),
            ("1d", "1d"),
            ("7d", "1w"),
            ("1mo", "1mo"),
            ("2 days", "2d"),
        ] {
            let p: Period = text.parse().unwrap();
            assert_eq!(p.to_string(), spelled, "{text}");
        }
        for bad in ["", "m", "0m", "1y", "-1m", "1.5m"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validates_calendar_alignment() {
        let cal = |s: &str| Window::calendar(s.parse().unwrap());
        assert!(cal("1m").validate(1).is_ok());
        assert!(cal("15m").validate(1).is_ok());
        assert!(cal("6h").validate(1).is_ok());
        assert!(cal("1d").validate(1).is_ok());
        assert!(cal("1w").validate(1).is_ok());
        assert!(cal("1mo").validate(1).is_ok());
        assert!(cal("7m").validate(1).is_err());
        assert!(cal("2d").validate(1).is_err());
        assert!(cal("2mo").validate(1).is_err());
        let roll = |s: &str| Window::rolling(s.parse().unwrap());
        assert_eq!(roll("1mo").validate(1), Err(WindowError::RollingMonths));
        assert!(roll("1s").validate(NANOS_PER_SEC + 1).is_err());
        assert_eq!(roll("1d").validate(5_000_000_000), Err(WindowError::TooLarge(5_000_000_000)));
    }

    #[test]
    fn utc_day_slot() {
        let w = Window::calendar("1d".parse().unwrap());
        let s = w.slot(at("2026-03-08T13:45:00Z"), None);
        assert_eq!(s.start, at("2026-03-08T00:00:00Z"));
        assert_eq!(s.end, at("2026-03-09T00:00:00Z"));
    }

    #[test]
    fn utc_week_starts_monday() {
        let w = Window::calendar("1w".parse().unwrap());
        // 2026-03-08 is a Sunday.
        let s = w.slot(at("2026-03-08T13:45:00Z"), None);
        assert_eq!(s.start, at("2026-03-02T00:00:00Z"));
        assert_eq!(s.end, at("2026-03-09T00:00:00Z"));
        let zoned = zoned_slot(at("2026-03-08T13:45:00Z"), w.period, &TimeZone::UTC);
        assert_eq!(zoned, s);
    }

    #[test]
    fn day_in_a_dst_change_is_23_hours_in_the_tenant_zone() {
        // US DST starts 2026-03-08 at 02:00 local in Los Angeles.
        let la = Zone::get("America/Los_Angeles").unwrap();
        let w = Window::calendar("1d".parse().unwrap());
        let s = w.slot(at("2026-03-08T20:00:00Z"), Some(&la));
        assert_eq!(s.start, at("2026-03-08T08:00:00Z")); // midnight PST
        assert_eq!(s.end, at("2026-03-09T07:00:00Z")); // midnight PDT
        assert_eq!(s.end.since(s.start).as_secs(), 23 * 3600);
        // And the autumn change gives 25 hours.
        let s = w.slot(at("2026-11-01T20:00:00Z"), Some(&la));
        assert_eq!(s.end.since(s.start).as_secs(), 25 * 3600);
    }

    #[test]
    fn the_next_slot_follows_the_calendar() {
        let la = Zone::get("America/Los_Angeles").unwrap();
        let day = Window::calendar("1d".parse().unwrap());
        // The slot after 2026-03-07 (24 h) is the 23-hour DST day.
        let (slot, next) = day.slot_and_next(at("2026-03-07T20:00:00Z"), Some(&la));
        assert_eq!(slot.end, at("2026-03-08T08:00:00Z"));
        assert_eq!(next, at("2026-03-09T07:00:00Z"));
        let month = Window::calendar("1mo".parse().unwrap());
        let (slot, next) = month.slot_and_next(at("2026-01-15T00:00:00Z"), None);
        assert_eq!(slot.end, at("2026-02-01T00:00:00Z"));
        assert_eq!(next, at("2026-03-01T00:00:00Z"));
        let minute = Window::calendar("1m".parse().unwrap());
        let (slot, next) = minute.slot_and_next(at("2026-01-15T00:00:30Z"), None);
        assert_eq!((slot.end, next), (at("2026-01-15T00:01:00Z"), at("2026-01-15T00:02:00Z")));
    }

    #[test]
    fn month_slot_in_zone() {
        let paris = Zone::get("Europe/Paris").unwrap();
        let w = Window::calendar("1mo".parse().unwrap());
        let s = w.slot(at("2026-03-31T21:59:59Z"), Some(&paris));
        assert_eq!(s.start, at("2026-02-28T23:00:00Z"));
        assert_eq!(s.end, at("2026-03-31T22:00:00Z"));
        let s2 = w.slot(at("2026-03-31T22:00:00Z"), Some(&paris));
        assert_eq!(s2.start, s.end);
        assert_eq!(s2.end, at("2026-04-30T22:00:00Z"));
    }

    #[test]
    fn subday_slots_in_a_half_hour_zone() {
        let kolkata = Zone::get("Asia/Kolkata").unwrap();
        let w = Window::calendar("1h".parse().unwrap());
        let s = w.slot(at("2026-05-01T10:10:00Z"), Some(&kolkata));
        assert_eq!(s.start, at("2026-05-01T09:30:00Z"));
        assert_eq!(s.end, at("2026-05-01T10:30:00Z"));
    }

    #[test]
    fn unknown_zone_is_refused() {
        assert!(Zone::get("Mars/Olympus_Mons").is_err());
    }
}

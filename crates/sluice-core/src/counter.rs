//! The arithmetic of one counter: pure functions from (rule, state, cost, now)
//! to a verdict and the next state.
//!
//! Stores own the states and the atomicity; this module owns the meaning. The
//! memory store runs these functions under a lock; the Redis store runs the
//! same arithmetic in Lua, and one test suite holds both to it.
//!
//! Rolling windows are GCRA in its "theoretical arrival time" form: the state
//! is one instant `tat`, each unit of cost pushes it `period/amount` further,
//! and a request fits while `tat - now <= burst·period/amount`. `tat` is kept
//! exactly, with its fraction of a nanosecond (a 1,440 RPM limit moves it
//! 41,666,666⅔ ns per request; rounding would lose the 1,440th request of a
//! burst). The amount the state was last charged under is kept beside it, so
//! that a raised (or lowered) limit rescales the state instead of misreading
//! it: a tenant keeps exactly the usage it had and the new amount applies at
//! once.

use crate::time::Instant;
use crate::window::Slot;

/// How long to suggest waiting when a concurrency limit is full: a slot frees
/// as soon as any request ends, so there is no exact reset to give.
pub const CONCURRENCY_RETRY_NANOS: u64 = 1_000_000_000;

/// What a limit enforces on one counter, resolved for one admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Continuous refill: `amount` per `period_nanos`, holding at most `burst`.
    Rolling {
        /// Window length in nanoseconds.
        period_nanos: u64,
        /// Units per window.
        amount: u64,
        /// Most units that can be spent at once.
        burst: u64,
    },
    /// A calendar slot with a fixed budget.
    Calendar {
        /// The slot the admission falls in.
        slot: Slot,
        /// The end of the slot after it: a store whose clock has already
        /// passed `slot.end` (a server's clock, slightly ahead) counts there.
        next_end: Instant,
        /// Units per slot.
        amount: u64,
    },
    /// In-flight requests.
    Concurrent {
        /// Most at once.
        amount: u64,
    },
}

impl Rule {
    /// The limit's amount.
    pub const fn amount(&self) -> u64 {
        match *self {
            Self::Rolling { amount, .. }
            | Self::Calendar { amount, .. }
            | Self::Concurrent { amount } => amount,
        }
    }

    /// The most a single request may cost and still fit some day.
    pub const fn capacity(&self) -> u64 {
        match *self {
            Self::Rolling { burst, .. } => burst,
            Self::Calendar { amount, .. } | Self::Concurrent { amount } => amount,
        }
    }

    /// The length of the window counted in, in seconds: the rolling
    /// period, or the calendar slot as it really is (a month of 28 to 31
    /// days, a day of 23 or 25 hours across a DST change); 0 for
    /// concurrency.
    pub const fn window_secs(&self) -> u64 {
        match *self {
            Self::Rolling { period_nanos, .. } => period_nanos / 1_000_000_000,
            Self::Calendar { slot, .. } => slot.end.0.saturating_sub(slot.start.0) / 1_000_000_000,
            Self::Concurrent { .. } => 0,
        }
    }
}

/// The stored state of one counter. 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterState {
    /// GCRA: theoretical arrival time `tat + rem/amount` (ns since the
    /// epoch, exactly), and the amount it was computed under.
    Rolling {
        /// Whole nanoseconds of the theoretical arrival time.
        tat: u64,
        /// The fraction of a nanosecond beyond `tat`, in 1/amount ns.
        rem: u32,
        /// The limit's amount when the state was last moved (rolling amounts
        /// are at most `u32::MAX`, see [`crate::window::Window::validate`]).
        amount: u32,
    },
    /// Usage inside one calendar slot, identified by its end.
    Calendar {
        /// End of the slot, ns since the epoch.
        end: u64,
        /// Units used (may exceed the amount after debt).
        used: u64,
    },
    /// Requests in flight.
    Concurrent {
        /// Count.
        in_flight: u64,
    },
}

impl CounterState {
    /// Whether this state is the same as no state at all at `now`, so the
    /// store may drop it.
    pub const fn is_idle(&self, now: Instant) -> bool {
        match *self {
            Self::Rolling { tat, rem, .. } => tat < now.0 || (tat == now.0 && rem == 0),
            Self::Calendar { end, .. } => end <= now.0,
            Self::Concurrent { in_flight } => in_flight == 0,
        }
    }
}

/// Whether a cost fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It fits now.
    Fits,
    /// It will fit at the given instant (if nothing else is spent meanwhile).
    WaitUntil(Instant),
    /// It can never fit: the cost exceeds the limit's whole capacity.
    Never,
}

/// The result of checking one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    /// Fits, wait, or never.
    pub verdict: Verdict,
    /// The state after charging (only to be stored if the admission goes ahead).
    pub next: CounterState,
    /// Units used: after the charge if it fits, before it otherwise.
    pub used: u64,
    /// Units left: after the charge if it fits, before it otherwise.
    pub remaining: u64,
    /// When the counter is back to its full amount (`None` for concurrency).
    pub reset: Option<Instant>,
}

fn ceil_div(a: u128, b: u128) -> u128 {
    if b == 0 { u128::MAX } else { a.div_ceil(b) }
}

fn sat_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Checks `cost` against `rule` given the counter's current `state`.
#[inline(always)]
pub fn check(rule: &Rule, state: Option<&CounterState>, cost: u64, now: Instant) -> Check {
    match *rule {
        Rule::Rolling { period_nanos, amount, burst } => {
            rolling(period_nanos, amount, burst, state, cost, now)
        }
        Rule::Calendar { slot, amount, .. } => calendar(slot, amount, state, cost),
        Rule::Concurrent { amount } => concurrent(amount, state, cost, now),
    }
}

/// Divides, taking the fast 64-bit path when both sides fit (they nearly
/// always do: a 128-bit division is a slow library call).
#[inline]
fn div(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) if b > 0 => u128::from(a / b),
        _ if b == 0 => u128::MAX,
        _ => a / b,
    }
}

#[inline]
fn ceil(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) if b > 0 => u128::from(a.div_ceil(b)),
        _ => ceil_div(a, b),
    }
}

/// A theoretical arrival time, exactly: `tat + rem/amount` nanoseconds.
#[derive(Clone, Copy)]
struct Tat {
    tat: u64,
    rem: u64,
}

impl Tat {
    /// How far this TAT runs ahead of `now`, in ns·amount: the usage still
    /// to drain times the period. It does not depend on the amount.
    fn ahead(self, now: u64, amount: u64) -> u128 {
        if self.tat < now {
            0
        } else {
            u128::from(self.tat - now) * u128::from(amount) + u128::from(self.rem)
        }
    }

    /// As a stored state (`amount` and `rem < amount` fit in 32 bits: the
    /// policy refuses larger rolling amounts).
    fn state(self, amount: u64) -> CounterState {
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        CounterState::Rolling { tat: self.tat, rem: narrow(self.rem), amount: narrow(amount) }
    }

    /// The TAT that runs `ahead` (ns·amount) ahead of `now`.
    fn at(now: u64, ahead: u128, amount: u64) -> Self {
        let a = u128::from(amount.max(1));
        let whole = div(ahead, a);
        Self { tat: now.saturating_add(sat_u64(whole)), rem: sat_u64(ahead - whole * a) }
    }
}

/// A rolling state's TAT under `amount`. A state written under another
/// amount keeps its usage (how far it runs ahead, in ns·amount), not its time,
/// so a raised limit applies at once. Never before `now` (a bucket cannot be
/// fuller than full).
#[inline]
fn current_tat(state: Option<&CounterState>, amount: u64, now: u64) -> Tat {
    match state {
        Some(&CounterState::Rolling { tat, rem, amount: was }) if tat >= now => {
            let (rem, was) = (u64::from(rem), u64::from(was));
            if was == amount {
                Tat { tat, rem }
            } else {
                Tat::at(now, Tat { tat, rem }.ahead(now, was), amount)
            }
        }
        _ => Tat { tat: now, rem: 0 },
    }
}

#[inline(always)]
fn rolling(
    period: u64,
    amount: u64,
    burst: u64,
    state: Option<&CounterState>,
    cost: u64,
    now: Instant,
) -> Check {
    let now = now.0;
    let amount = amount.max(1);
    let (p, a) = (u128::from(period), u128::from(amount));
    let cap = u128::from(burst) * p; // the most a TAT may run ahead of now
    let base = current_tat(state, amount, now);
    let step = u128::from(base.rem) + u128::from(cost) * p;
    let whole = div(step, a);
    let next = Tat { tat: base.tat.saturating_add(sat_u64(whole)), rem: sat_u64(step - whole * a) };
    let next_ahead = next.ahead(now, amount);
    let verdict = if cost > burst {
        Verdict::Never
    } else if next_ahead <= cap {
        Verdict::Fits
    } else {
        // The earliest t with (next.tat - t)·amount + next.rem <= cap.
        let slack = cap.saturating_sub(u128::from(next.rem));
        Verdict::WaitUntil(Instant(next.tat.saturating_sub(sat_u64(div(slack, a)))))
    };
    let (shown, ahead) =
        if verdict == Verdict::Fits { (next, next_ahead) } else { (base, base.ahead(now, amount)) };
    let used = sat_u64(ceil(ahead, p));
    Check {
        verdict,
        next: next.state(amount),
        used,
        // ⌊(burst·p − ahead) / p⌋ = burst − ⌈ahead / p⌉: one division fewer.
        remaining: burst.saturating_sub(used),
        reset: Some(Instant(shown.tat.saturating_add(u64::from(shown.rem > 0)))),
    }
}

#[inline(always)]
fn calendar(slot: Slot, amount: u64, state: Option<&CounterState>, cost: u64) -> Check {
    let (end, used) = match state {
        // A state from a later slot means the clock stepped back: keep
        // counting into that slot rather than forgetting what was spent.
        Some(&CounterState::Calendar { end, used }) if end >= slot.end.0 => (end, used),
        _ => (slot.end.0, 0),
    };
    let after = used.saturating_add(cost);
    let verdict = if cost > amount {
        Verdict::Never
    } else if after <= amount {
        Verdict::Fits
    } else {
        Verdict::WaitUntil(Instant(end))
    };
    let shown = if verdict == Verdict::Fits { after } else { used };
    Check {
        verdict,
        next: CounterState::Calendar { end, used: after },
        used: shown,
        remaining: amount.saturating_sub(shown),
        reset: Some(Instant(end)),
    }
}

#[inline(always)]
fn concurrent(amount: u64, state: Option<&CounterState>, cost: u64, now: Instant) -> Check {
    let in_flight = match state {
        Some(&CounterState::Concurrent { in_flight }) => in_flight,
        _ => 0,
    };
    let after = in_flight.saturating_add(cost);
    let verdict = if cost > amount {
        Verdict::Never
    } else if after <= amount {
        Verdict::Fits
    } else {
        Verdict::WaitUntil(Instant(now.0.saturating_add(CONCURRENCY_RETRY_NANOS)))
    };
    let shown = if verdict == Verdict::Fits { after } else { in_flight };
    Check {
        verdict,
        next: CounterState::Concurrent { in_flight: after },
        used: shown,
        remaining: amount.saturating_sub(shown),
        reset: None,
    }
}

/// How a charge was made, as much as settlement needs to undo or extend it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargedAs {
    /// A rolling counter with this period and amount.
    Rolling {
        /// Window length in nanoseconds.
        period_nanos: u64,
        /// The amount at admission (rolling amounts fit in 32 bits).
        amount: u32,
    },
    /// A calendar counter, in the slot ending at `end`.
    Calendar {
        /// End of the slot charged, ns since the epoch.
        end: u64,
    },
    /// A concurrency counter.
    Concurrent,
}

impl ChargedAs {
    /// How a charge made under `rule` is recorded.
    pub const fn of(rule: &Rule) -> Self {
        match *rule {
            Rule::Rolling { period_nanos, amount, .. } => Self::Rolling {
                period_nanos,
                amount: if amount > u32::MAX as u64 { u32::MAX } else { amount as u32 },
            },
            Rule::Calendar { slot, .. } => Self::Calendar { end: slot.end.0 },
            Rule::Concurrent { .. } => Self::Concurrent,
        }
    }
}

/// Applies the difference between what was charged and what was really used
/// to a counter's state: refunds go back to the window that was charged (and
/// are lost if that window is over), overage becomes debt. Returns the new
/// state, or `None` when there is nothing worth storing.
pub fn settle(
    state: Option<CounterState>,
    how: ChargedAs,
    charged: u64,
    actual: u64,
    now: Instant,
) -> Option<CounterState> {
    let now_ns = now.0;
    match how {
        ChargedAs::Concurrent => match state {
            Some(CounterState::Concurrent { in_flight }) => {
                Some(CounterState::Concurrent { in_flight: in_flight.saturating_sub(charged) })
            }
            other => other,
        },
        ChargedAs::Calendar { end } => match state {
            Some(CounterState::Calendar { end: e, used }) if e == end => {
                let used = if actual >= charged {
                    used.saturating_add(actual - charged)
                } else {
                    used.saturating_sub(charged - actual)
                };
                Some(CounterState::Calendar { end: e, used })
            }
            // The charged slot is over: a refund has nothing to go back to,
            // overage is carried as debt into the slot now counting.
            Some(CounterState::Calendar { end: e, used }) if e > end && actual > charged => {
                Some(CounterState::Calendar { end: e, used: used.saturating_add(actual - charged) })
            }
            other => other,
        },
        ChargedAs::Rolling { period_nanos, amount } => {
            // Settle under the amount the counter now has (it may have been
            // raised since the charge).
            let amount = match state {
                Some(CounterState::Rolling { amount: a, .. }) if a > 0 => u64::from(a),
                _ => u64::from(amount.max(1)),
            };
            let p = u128::from(period_nanos);
            let ahead = current_tat(state.as_ref(), amount, now_ns).ahead(now_ns, amount);
            let ahead = if actual >= charged {
                ahead + u128::from(actual - charged) * p
            } else {
                ahead.saturating_sub(u128::from(charged - actual) * p)
            };
            Some(Tat::at(now_ns, ahead, amount).state(amount))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::NANOS_PER_SEC;

    const MIN: u64 = 60 * NANOS_PER_SEC;

    fn rolling_rule(amount: u64) -> Rule {
        Rule::Rolling { period_nanos: MIN, amount, burst: amount }
    }

    fn run(rule: &Rule, state: &mut Option<CounterState>, cost: u64, now: Instant) -> Check {
        let c = check(rule, state.as_ref(), cost, now);
        if c.verdict == Verdict::Fits {
            *state = Some(c.next);
        }
        c
    }

    #[test]
    fn rolling_admits_burst_then_refills_one_per_interval() {
        let rule = rolling_rule(60); // one per second
        let mut s = None;
        let t0 = Instant::from_secs(1_000);
        for i in 0..60 {
            let c = run(&rule, &mut s, 1, t0);
            assert_eq!(c.verdict, Verdict::Fits, "request {i}");
            assert_eq!(c.remaining, 59 - i);
        }
        let c = run(&rule, &mut s, 1, t0);
        assert_eq!(c.verdict, Verdict::WaitUntil(Instant(t0.0 + NANOS_PER_SEC)));
        assert_eq!(c.remaining, 0);
        assert_eq!(c.reset, Some(Instant(t0.0 + MIN)));
        let c = run(&rule, &mut s, 1, Instant(t0.0 + NANOS_PER_SEC));
        assert_eq!(c.verdict, Verdict::Fits);
    }

    #[test]
    fn rolling_cost_over_burst_never_fits() {
        let rule = Rule::Rolling { period_nanos: MIN, amount: 100, burst: 10 };
        let c = check(&rule, None, 11, Instant(0));
        assert_eq!(c.verdict, Verdict::Never);
        assert_eq!(check(&rule, None, 10, Instant(0)).verdict, Verdict::Fits);
    }

    #[test]
    fn raising_a_rolling_limit_keeps_usage_and_applies_at_once() {
        let mut s = None;
        let t = Instant::from_secs(5);
        for _ in 0..500 {
            run(&rolling_rule(500), &mut s, 1, t);
        }
        assert!(matches!(run(&rolling_rule(500), &mut s, 1, t).verdict, Verdict::WaitUntil(_)));
        let c = run(&rolling_rule(2_000), &mut s, 1, t);
        assert_eq!(c.verdict, Verdict::Fits);
        assert_eq!(c.used, 501);
        assert_eq!(c.remaining, 1_499);
    }

    #[test]
    fn calendar_counts_within_slot_and_resets_at_end() {
        let slot = Slot { start: Instant(0), end: Instant(100) };
        let rule = Rule::Calendar { slot, next_end: Instant(200), amount: 2 };
        let mut s = None;
        assert_eq!(run(&rule, &mut s, 1, Instant(1)).verdict, Verdict::Fits);
        assert_eq!(run(&rule, &mut s, 1, Instant(2)).verdict, Verdict::Fits);
        let c = run(&rule, &mut s, 1, Instant(3));
        assert_eq!(c.verdict, Verdict::WaitUntil(Instant(100)));
        assert_eq!((c.used, c.remaining), (2, 0));
        let next = Rule::Calendar {
            slot: Slot { start: Instant(100), end: Instant(200) },
            next_end: Instant(300),
            amount: 2,
        };
        assert_eq!(run(&next, &mut s, 2, Instant(100)).verdict, Verdict::Fits);
        assert_eq!(check(&next, None, 3, Instant(100)).verdict, Verdict::Never);
    }

    #[test]
    fn settlement_refunds_to_charged_slot_and_records_debt() {
        let slot = Slot { start: Instant(0), end: Instant(100) };
        let how = ChargedAs::Calendar { end: 100 };
        let s = Some(CounterState::Calendar { end: 100, used: 500 });
        assert_eq!(
            settle(s, how, 400, 150, Instant(50)),
            Some(CounterState::Calendar { end: 100, used: 250 })
        );
        assert_eq!(
            settle(s, how, 400, 700, Instant(50)),
            Some(CounterState::Calendar { end: 100, used: 800 })
        );
        // The next slot's counter is untouched by a refund for the old one.
        let later = Some(CounterState::Calendar { end: 200, used: 7 });
        assert_eq!(settle(later, how, 400, 0, Instant(150)), later);
        assert_eq!(
            settle(later, how, 400, 410, Instant(150)),
            Some(CounterState::Calendar { end: 200, used: 17 })
        );
        let _ = slot;
    }

    #[test]
    fn rolling_settlement_never_refills_past_full() {
        let how = ChargedAs::Rolling { period_nanos: MIN, amount: 60 };
        let now = Instant::from_secs(100);
        let s = Some(CounterState::Rolling { tat: now.0 + 2 * NANOS_PER_SEC, rem: 0, amount: 60 });
        // Refund 5 units (5 s) when only 2 s are outstanding: back to full.
        assert_eq!(
            settle(s, how, 6, 1, now),
            Some(CounterState::Rolling { tat: now.0, rem: 0, amount: 60 })
        );
        // Overage of 3 units pushes 3 s of debt.
        assert_eq!(
            settle(s, how, 1, 4, now),
            Some(CounterState::Rolling { tat: now.0 + 5 * NANOS_PER_SEC, rem: 0, amount: 60 })
        );
    }

    #[test]
    fn concurrency_releases() {
        let rule = Rule::Concurrent { amount: 1 };
        let mut s = None;
        assert_eq!(run(&rule, &mut s, 1, Instant(0)).verdict, Verdict::Fits);
        assert!(matches!(run(&rule, &mut s, 1, Instant(0)).verdict, Verdict::WaitUntil(_)));
        s = settle(s, ChargedAs::Concurrent, 1, 0, Instant(0));
        assert_eq!(s, Some(CounterState::Concurrent { in_flight: 0 }));
        assert!(s.is_some_and(|s| s.is_idle(Instant(0))));
    }

    #[test]
    fn state_is_24_bytes() {
        assert!(size_of::<CounterState>() <= 24);
    }
}

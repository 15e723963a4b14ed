//! Money: prices per model and what a request costs under them, in exact
//! integer units.
//!
//! A `cost` limit counts **micro-units** of the policy's currency (a
//! millionth of a dollar for USD): `$50` is 50,000,000. Prices are written
//! per million tokens and kept in micro-units per million tokens, which is
//! the same number as **pico-units per token**, so a request's cost is a sum
//! of integer products; it is rounded up once, to the next micro-unit, and
//! that is what the request is charged. Nothing is ever a float once the
//! policy is read: a month of requests adds up to exactly the sum of what
//! each was charged.

use std::fmt;

/// Micro-units in one unit of the currency.
pub const MICROS_PER_UNIT: u64 = 1_000_000;

/// A model's price: micro-units of the currency per million tokens (that
/// is, pico-units per token), for input read fresh, input read from the
/// provider's cache, and output (reasoning included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Price {
    /// Input tokens not read from a cache.
    pub input: u64,
    /// Input tokens read from a cache.
    pub cached_input: u64,
    /// Output tokens.
    pub output: u64,
}

impl Price {
    /// Free.
    pub const ZERO: Price = Price { input: 0, cached_input: 0, output: 0 };

    /// A price with cached input at the input price.
    pub const fn new(input: u64, output: u64) -> Self {
        Self { input, cached_input: input, output }
    }

    /// What `tokens` cost at this price, in micro-units, rounded up.
    pub fn micros(&self, tokens: Billed) -> u64 {
        let fresh = tokens.input.saturating_sub(tokens.cached_input);
        let cached = tokens.cached_input.min(tokens.input);
        let pico = u128::from(fresh) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(tokens.output) * u128::from(self.output);
        u64::try_from(pico.div_ceil(u128::from(MICROS_PER_UNIT))).unwrap_or(u64::MAX)
    }

    /// Whether every part is free.
    pub const fn is_free(&self) -> bool {
        self.input == 0 && self.cached_input == 0 && self.output == 0
    }
}

/// The tokens a request is billed for: its whole input (of which
/// `cached_input` was read from a cache) and its whole output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Billed {
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Of the input, tokens read from a cache.
    pub cached_input: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
}

impl Billed {
    /// Input and output tokens, none cached.
    pub const fn tokens(input: u64, output: u64) -> Self {
        Self { input, cached_input: 0, output }
    }
}

/// An amount of money in micro-units, written for people in a currency:
/// `$12.50`, `$0.000125`, `12.50 EUR`.
#[derive(Clone, Copy, Debug)]
pub struct Money<'a> {
    /// Micro-units.
    pub micros: u64,
    /// The currency's code (`USD`, `EUR`, …).
    pub currency: &'a str,
}

impl fmt::Display for Money<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.currency {
            "USD" => write!(f, "${}", decimal(self.micros)),
            c => write!(f, "{} {c}", decimal(self.micros)),
        }
    }
}

/// A decimal amount of money or a price as written (`50`, `12.5`,
/// `0.01875`), in micro-units; `None` if it is negative, not finite, too
/// large, or has more than six decimals.
pub fn micros_of(written: f64) -> Option<u64> {
    if !written.is_finite() || written < 0.0 {
        return None;
    }
    let scaled = written * MICROS_PER_UNIT as f64;
    if scaled >= u64::MAX as f64 {
        return None;
    }
    let rounded = scaled.round();
    // More than six decimals: the written figure is not a whole number of
    // micro-units (allowing for the binary representation of decimals).
    if (scaled - rounded).abs() > 1e-6 * rounded.max(1.0) {
        return None;
    }
    Some(rounded as u64)
}

/// An amount in micro-units as a decimal of the currency, at least cents
/// and more digits only when they are not zero: `12.50`, `0.000125` (for
/// headers and JSON; [`Money`] adds the currency).
pub fn decimal(micros: u64) -> String {
    let (whole, frac) = (micros / MICROS_PER_UNIT, micros % MICROS_PER_UNIT);
    let mut digits = format!("{frac:06}");
    while digits.len() > 2 && digits.ends_with('0') {
        digits.pop();
    }
    format!("{whole}.{digits}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_charged_its_price_rounded_up_once() {
        // $2.50 per million input, $10 per million output, $1.25 cached.
        let p = Price { input: 2_500_000, cached_input: 1_250_000, output: 10_000_000 };
        // 1,000 input + 500 output = $0.0025 + $0.005.
        assert_eq!(p.micros(Billed::tokens(1_000, 500)), 7_500);
        // Half of the input cached: $0.00125 + $0.000625 + $0.005.
        let b = Billed { input: 1_000, cached_input: 500, output: 500 };
        assert_eq!(p.micros(b), 6_875);
        // One input token: 2.5 micro-units, charged 3.
        assert_eq!(p.micros(Billed::tokens(1, 0)), 3);
        assert_eq!(p.micros(Billed::tokens(0, 0)), 0);
        // Cached beyond the input is the input.
        assert_eq!(p.micros(Billed { input: 2, cached_input: 9, output: 0 }), 3);
        assert_eq!(Price::ZERO.micros(Billed::tokens(1_000_000, 1)), 0);
        assert_eq!(Price::new(u64::MAX, u64::MAX).micros(Billed::tokens(u64::MAX, 1)), u64::MAX);
    }

    #[test]
    fn amounts_are_read_to_the_micro_unit() {
        assert_eq!(micros_of(50.0), Some(50_000_000));
        assert_eq!(micros_of(12.5), Some(12_500_000));
        assert_eq!(micros_of(0.01875), Some(18_750));
        assert_eq!(micros_of(0.000001), Some(1));
        assert_eq!(micros_of(1_000.0), Some(1_000_000_000));
        assert_eq!(micros_of(0.0000001), None);
        assert_eq!(micros_of(-1.0), None);
        assert_eq!(micros_of(f64::NAN), None);
        assert_eq!(micros_of(1e30), None);
    }

    #[test]
    fn money_is_written_for_people() {
        let usd = |micros| Money { micros, currency: "USD" }.to_string();
        assert_eq!(usd(50_000_000), "$50.00");
        assert_eq!(usd(12_500_000), "$12.50");
        assert_eq!(usd(125), "$0.000125");
        assert_eq!(usd(0), "$0.00");
        assert_eq!(Money { micros: 1_230_000, currency: "EUR" }.to_string(), "1.23 EUR");
        assert_eq!(decimal(49_990_000), "49.99");
    }
}

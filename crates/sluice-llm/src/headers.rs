//! Rate-limit headers, as OpenAI-compatible clients read them.
//!
//! Every response carries the state at admission: for each header family of
//! the policy's [`HeaderProfile`] (`requests`, `tokens`, `requests-day`, …),
//! the limit of that family with the least remaining, as
//! `x-ratelimit-{limit,remaining,reset}-<suffix>`. A denial adds what the
//! official SDKs act on: `retry-after-ms` and `retry-after` for a wait, and
//! `x-should-retry: false` where retrying soon cannot help (a long wait, or a
//! request that can never fit). The IETF `RateLimit-Policy` / `RateLimit`
//! fields are added when the profile asks for them, for request limits only
//! (the draft registers no token unit).
//!
//! [`HeaderProfile`]: sluice_core::HeaderProfile

use std::fmt::Write as _;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sluice_core::{
    Decision, HeaderFamily, HeaderMetric, HeaderSpan, Instant, LimitStatus, Metric, Outcome,
    Policy, ResetFormat,
};

use crate::duration::{millis_ceil, write_go_duration};

/// `retry-after-ms`: the wait in integer milliseconds (OpenAI SDKs read it
/// first).
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
/// `x-should-retry`: `false` tells the official SDKs not to retry.
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
/// The IETF `RateLimit-Policy` field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The IETF `RateLimit` field.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// How denials are signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderOptions {
    /// Waits longer than this also get `x-should-retry: false`: the SDKs
    /// would otherwise retry within seconds (Node, Python ≤ 2.51) and fail
    /// again.
    pub no_retry_after: Duration,
}

impl Default for HeaderOptions {
    fn default() -> Self {
        Self { no_retry_after: Duration::from_secs(60) }
    }
}

macro_rules! family_names {
    ($m:literal, $s:literal) => {
        [
            HeaderName::from_static(concat!("x-ratelimit-limit-", $m, $s)),
            HeaderName::from_static(concat!("x-ratelimit-remaining-", $m, $s)),
            HeaderName::from_static(concat!("x-ratelimit-reset-", $m, $s)),
        ]
    };
    ($m:literal) => {
        [
            family_names!($m, ""),
            family_names!($m, "-hour"),
            family_names!($m, "-day"),
            family_names!($m, "-month"),
        ]
    };
}

/// `[metric][span] -> [limit, remaining, reset]`, built at compile time.
static NAMES: [[[HeaderName; 3]; 4]; 5] = [
    family_names!("requests"),
    family_names!("tokens"),
    family_names!("input-tokens"),
    family_names!("output-tokens"),
    family_names!("cost"),
];

/// The `limit`, `remaining` and `reset` header names of a family.
pub fn family_header_names(family: HeaderFamily) -> &'static [HeaderName; 3] {
    let m = match family.metric {
        HeaderMetric::Requests => 0,
        HeaderMetric::Tokens => 1,
        HeaderMetric::InputTokens => 2,
        HeaderMetric::OutputTokens => 3,
        HeaderMetric::Cost => 4,
    };
    let s = match family.span {
        HeaderSpan::Minute => 0,
        HeaderSpan::Hour => 1,
        HeaderSpan::Day => 2,
        HeaderSpan::Month => 3,
    };
    &NAMES[m][s]
}

/// Calls `emit` with each rate-limit header for `decision`, in a stable
/// order: the families of the profile, then the IETF fields, then the retry
/// headers of a denial.
pub fn for_each_header(
    decision: &Decision,
    policy: &Policy,
    now: Instant,
    opts: &HeaderOptions,
    mut emit: impl FnMut(&HeaderName, HeaderValue),
) {
    let profile = policy.headers();
    let mut values = Values(BytesMut::with_capacity(VALUES_CAPACITY));
    for &family in &profile.families {
        let Some(status) = shown(decision, policy, family) else {
            continue;
        };
        let [limit, remaining, reset] = family_header_names(family);
        if family.metric == HeaderMetric::Cost {
            emit(limit, values.money(status.amount));
            emit(remaining, values.money(status.remaining));
        } else {
            emit(limit, values.number(status.amount));
            emit(remaining, values.number(status.remaining));
        }
        let Some(at) = status.reset else { continue };
        if write_reset(&mut values.0, profile.reset, at, now)
            && let Some(v) = values.take()
        {
            emit(reset, v);
        }
    }
    if profile.ietf {
        ietf(decision, policy, now, &mut emit);
    }
    match decision.outcome {
        Outcome::Admitted { .. } => {}
        Outcome::Limited { retry_at, .. } => {
            let wait = retry_at.since(now);
            let ms = millis_ceil(wait).max(1);
            emit(&RETRY_AFTER_MS, values.number(ms));
            emit(&RETRY_AFTER, values.number(ms.div_ceil(1000)));
            if wait > opts.no_retry_after {
                emit(&X_SHOULD_RETRY, HeaderValue::from_static("false"));
            }
        }
        Outcome::TooLarge { .. } => {
            emit(&X_SHOULD_RETRY, HeaderValue::from_static("false"));
        }
    }
}

/// Room for the values of a response's headers (three families of three
/// values each take about 60 bytes).
const VALUES_CAPACITY: usize = 128;

/// Header values written into one buffer and split off it, so that a
/// response's values share one allocation instead of taking one each.
struct Values(BytesMut);

impl Values {
    fn number(&mut self, n: u64) -> HeaderValue {
        self.0.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        let digits = self.0.split().freeze();
        // Digits are always a valid value.
        HeaderValue::from_maybe_shared(digits).unwrap_or(HeaderValue::from_static("0"))
    }

    /// Money in micro-units, as a decimal in the currency (`49.99`).
    fn money(&mut self, micros: u64) -> HeaderValue {
        self.0.extend_from_slice(sluice_core::money::decimal(micros).as_bytes());
        let digits = self.0.split().freeze();
        HeaderValue::from_maybe_shared(digits).unwrap_or(HeaderValue::from_static("0"))
    }

    /// What was written into the buffer since the last value.
    fn take(&mut self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.0.split().freeze()).ok()
    }
}

/// Sets the rate-limit headers for `decision` on `map`, replacing any value
/// already there under the same name (e.g. an upstream's own
/// `x-ratelimit-*`).
pub fn insert_headers(
    map: &mut HeaderMap,
    decision: &Decision,
    policy: &Policy,
    now: Instant,
    opts: &HeaderOptions,
) {
    // Room for them all at once, rather than growing the map on the way.
    map.reserve(12);
    for_each_header(decision, policy, now, opts, |name, value| {
        map.insert(name.clone(), value);
    });
}

/// The rate-limit headers for `decision`, in the order of
/// [`for_each_header`].
pub fn render_headers(
    decision: &Decision,
    policy: &Policy,
    now: Instant,
    opts: &HeaderOptions,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(12);
    for_each_header(decision, policy, now, opts, |name, value| {
        out.push((name.clone(), value));
    });
    out
}

/// Whether `name` is a header this module may set, or a variant upstreams
/// send (`x-ratelimit-*`, `ratelimit*`, `retry-after`, `retry-after-ms`,
/// `x-should-retry`).
pub fn is_rate_limit_header(name: &HeaderName) -> bool {
    let k = name.as_str();
    k.starts_with("x-ratelimit-")
        || k.starts_with("ratelimit")
        || k == "retry-after"
        || k == "retry-after-ms"
        || k == "x-should-retry"
}

/// Removes, in place, every header `doomed` picks.
pub fn remove_headers(map: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: smallvec::SmallVec<[HeaderName; 8]> =
        map.keys().filter(|n| doomed(n)).cloned().collect();
    for name in &names {
        map.remove(name);
    }
}

/// The status a family shows: the non-shadow limit of the family with the
/// least remaining (ties: the one that resets last).
fn shown<'d>(
    decision: &'d Decision,
    policy: &Policy,
    family: HeaderFamily,
) -> Option<&'d LimitStatus> {
    decision
        .statuses
        .iter()
        .filter(|s| !s.shadow)
        .filter(|s| {
            policy.limit(s.limit).is_some_and(|l| family.shows(l.metric, l.window.as_ref()))
        })
        .min_by_key(|s| (s.remaining, std::cmp::Reverse(s.reset)))
}

/// Writes the reset of a status; `false` when the format omits it.
fn write_reset(
    buf: &mut impl std::fmt::Write,
    format: ResetFormat,
    at: Instant,
    now: Instant,
) -> bool {
    let wait = at.since(now);
    match format {
        ResetFormat::Omit => return false,
        ResetFormat::Duration => {
            let _ = write_go_duration(buf, millis_ceil(wait).saturating_mul(1_000_000));
        }
        ResetFormat::Seconds => {
            // Milliseconds as a decimal, trailing zeros trimmed: `33011.38`.
            // Digit by digit, not `write!`: the formatting machinery cost
            // more than the digits (measured, docs/BENCHMARKS.md).
            let ms = millis_ceil(wait);
            let _ = buf.write_str(itoa::Buffer::new().format(ms / 1000));
            let frac = ms % 1000;
            if frac != 0 {
                let digits = [
                    b'.',
                    b'0' + (frac / 100) as u8,
                    b'0' + (frac / 10 % 10) as u8,
                    b'0' + (frac % 10) as u8,
                ];
                let len = if frac.is_multiple_of(100) {
                    2
                } else if frac.is_multiple_of(10) {
                    3
                } else {
                    4
                };
                // ASCII digits and a dot.
                let _ = buf.write_str(std::str::from_utf8(&digits[..len]).unwrap_or_default());
            }
        }
        ResetFormat::Epoch => {
            let _ =
                buf.write_str(itoa::Buffer::new().format(at.as_nanos().div_ceil(1_000_000_000)));
        }
    }
    true
}

/// Emits `RateLimit-Policy` and `RateLimit`, one list item per request
/// limit.
fn ietf(
    decision: &Decision,
    policy: &Policy,
    now: Instant,
    emit: &mut impl FnMut(&HeaderName, HeaderValue),
) {
    let mut policies = String::new();
    let mut states = String::new();
    for s in decision.statuses.iter().filter(|s| !s.shadow && s.metric == Metric::Requests) {
        let Some(limit) = policy.limit(s.limit) else {
            continue;
        };
        if limit.window.is_none() {
            continue;
        }
        if !policies.is_empty() {
            policies.push_str(", ");
            states.push_str(", ");
        }
        sf_string(&mut policies, &limit.name);
        // The window as counted: a calendar month of 31 days is 2678400.
        let _ = write!(policies, ";q={};w={}", s.amount, s.window_secs);
        sf_string(&mut states, &limit.name);
        let t = s.reset.map_or(0, |r| millis_ceil(r.since(now)).div_ceil(1000));
        let _ = write!(states, ";r={};t={t}", s.remaining);
    }
    if policies.is_empty() {
        return;
    }
    if let (Ok(p), Ok(r)) = (HeaderValue::from_str(&policies), HeaderValue::from_str(&states)) {
        emit(&RATELIMIT_POLICY, p);
        emit(&RATELIMIT, r);
    }
}

/// Writes `s` as an RFC 9651 sf-string: printable ASCII, with `"` and `\`
/// escaped; anything else becomes `_`.
fn sf_string(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                buf.push('\\');
                buf.push(c);
            }
            ' '..='~' => buf.push(c),
            _ => buf.push('_'),
        }
    }
    buf.push('"');
}

#[cfg(test)]
mod tests;

//! Which `x-ratelimit-*` header families a policy sends, which limits each
//! one shows, and how resets are written.

use crate::metric::Metric;
use crate::window::{Period, Window};

/// Which header families the gateway sends and how it spells resets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderProfile {
    /// Which `x-ratelimit-*` families to send.
    pub families: Vec<HeaderFamily>,
    /// How `x-ratelimit-reset-*` is written.
    pub reset: ResetFormat,
    /// Whether to send the IETF `RateLimit` / `RateLimit-Policy` fields.
    pub ietf: bool,
}

impl Default for HeaderProfile {
    fn default() -> Self {
        Self {
            families: vec![
                HeaderFamily::new(HeaderMetric::Requests, HeaderSpan::Minute),
                HeaderFamily::new(HeaderMetric::Tokens, HeaderSpan::Minute),
                HeaderFamily::new(HeaderMetric::Requests, HeaderSpan::Day),
                HeaderFamily::new(HeaderMetric::Tokens, HeaderSpan::Day),
            ],
            reset: ResetFormat::Duration,
            ietf: false,
        }
    }
}

/// One `x-ratelimit-{limit,remaining,reset}-<suffix>` family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeaderFamily {
    /// Requests or tokens.
    pub metric: HeaderMetric,
    /// Which windows it shows.
    pub span: HeaderSpan,
}

impl HeaderFamily {
    /// A family.
    pub const fn new(metric: HeaderMetric, span: HeaderSpan) -> Self {
        Self { metric, span }
    }

    /// The header suffix: `requests`, `tokens-day`, `input-tokens-hour`, …
    pub fn suffix(&self) -> String {
        match self.span.suffix() {
            "" => self.metric.as_str().to_owned(),
            s => format!("{}-{s}", self.metric.as_str()),
        }
    }

    /// Parses a suffix such as `requests`, `requests-day`, `tokens-hour`.
    pub fn parse(s: &str) -> Option<Self> {
        let (metric, span) = [
            ("input-tokens", HeaderMetric::InputTokens),
            ("output-tokens", HeaderMetric::OutputTokens),
            ("requests", HeaderMetric::Requests),
            ("tokens", HeaderMetric::Tokens),
            ("cost", HeaderMetric::Cost),
        ]
        .into_iter()
        .find_map(|(p, m)| s.strip_prefix(p).map(|rest| (m, rest)))?;
        let span = match span {
            "" => HeaderSpan::Minute,
            "-hour" => HeaderSpan::Hour,
            "-day" => HeaderSpan::Day,
            "-month" => HeaderSpan::Month,
            _ => return None,
        };
        Some(Self { metric, span })
    }

    /// Whether a limit with this metric and window belongs to this family.
    pub fn shows(&self, metric: Metric, window: Option<&Window>) -> bool {
        let Some(w) = window else { return false };
        self.metric.matches(metric) && HeaderSpan::of(w.period) == self.span
    }
}

/// The metric part of a header family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderMetric {
    /// `requests`
    Requests,
    /// `tokens`
    Tokens,
    /// `input-tokens`
    InputTokens,
    /// `output-tokens`
    OutputTokens,
    /// `cost`: money, in the policy's currency (a decimal such as `49.99`).
    Cost,
}

impl HeaderMetric {
    /// The spelling in header names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input-tokens",
            Self::OutputTokens => "output-tokens",
            Self::Cost => "cost",
        }
    }

    const fn matches(self, m: Metric) -> bool {
        matches!(
            (self, m),
            (Self::Requests, Metric::Requests)
                | (Self::Tokens, Metric::Tokens)
                | (Self::InputTokens, Metric::InputTokens)
                | (Self::OutputTokens, Metric::OutputTokens)
                | (Self::Cost, Metric::Cost)
        )
    }
}

/// Which window lengths a family shows: unsuffixed headers show windows
/// shorter than an hour (the provider convention: "per minute").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderSpan {
    /// Shorter than an hour (no suffix).
    Minute,
    /// An hour up to a day (`-hour`).
    Hour,
    /// A day up to a month (`-day`).
    Day,
    /// A month or longer (`-month`).
    Month,
}

impl HeaderSpan {
    /// The span a period falls in.
    pub fn of(p: Period) -> Self {
        match p {
            Period::Months(_) => Self::Month,
            Period::Seconds(s) => match s.get() {
                s if s < 3_600 => Self::Minute,
                s if s < 86_400 => Self::Hour,
                s if s < 28 * 86_400 => Self::Day,
                _ => Self::Month,
            },
        }
    }

    /// The header suffix.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Minute => "",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// How reset instants are written in `x-ratelimit-reset-*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetFormat {
    /// A Go-style duration until reset: `6m0s`, `1.5s`, `12ms` (OpenAI).
    Duration,
    /// Seconds until reset, as a decimal: `33011.38` (Cerebras).
    Seconds,
    /// The reset instant in Unix seconds (SambaNova's "epoch time").
    Epoch,
    /// No reset headers (Llama API).
    Omit,
}

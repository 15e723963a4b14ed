//! What a limit counts.

use std::fmt;
use std::str::FromStr;

/// The quantity a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Requests (one per admitted request).
    Requests,
    /// Input plus output tokens.
    Tokens,
    /// Prompt tokens only.
    InputTokens,
    /// Completion tokens only.
    OutputTokens,
    /// Requests in flight at once.
    Concurrent,
    /// Money: micro-units of the policy's currency, from the model's price
    /// ([`crate::money`]).
    Cost,
}

impl Metric {
    /// Every metric, in display order.
    pub const ALL: [Metric; 6] = [
        Self::Requests,
        Self::Tokens,
        Self::InputTokens,
        Self::OutputTokens,
        Self::Concurrent,
        Self::Cost,
    ];

    /// The spelling used in policy files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
            Self::Concurrent => "concurrent",
            Self::Cost => "cost",
        }
    }

    /// Whether this metric is measured in tokens.
    pub const fn is_tokens(self) -> bool {
        matches!(self, Self::Tokens | Self::InputTokens | Self::OutputTokens)
    }

    /// Whether this metric is money.
    pub const fn is_money(self) -> bool {
        matches!(self, Self::Cost)
    }

    /// What one request costs under this metric, given its token counts
    /// and (for [`Metric::Cost`]) its cost in micro-units.
    pub const fn cost(self, input_tokens: u64, output_tokens: u64, micros: u64) -> u64 {
        match self {
            Self::Requests | Self::Concurrent => 1,
            Self::Tokens => input_tokens.saturating_add(output_tokens),
            Self::InputTokens => input_tokens,
            Self::OutputTokens => output_tokens,
            Self::Cost => micros,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown metric name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a metric; use one of requests, tokens, input_tokens, output_tokens, concurrent, cost"
)]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

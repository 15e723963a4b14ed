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
}

impl Metric {
    /// Every metric, in display order.
    pub const ALL: [Metric; 5] =
        [Self::Requests, Self::Tokens, Self::InputTokens, Self::OutputTokens, Self::Concurrent];

    /// The spelling used in policy files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
            Self::Concurrent => "concurrent",
        }
    }

    /// Whether this metric is measured in tokens.
    pub const fn is_tokens(self) -> bool {
        matches!(self, Self::Tokens | Self::InputTokens | Self::OutputTokens)
    }

    /// What one request costs under this metric, given its token counts.
    pub const fn cost(self, input_tokens: u64, output_tokens: u64) -> u64 {
        match self {
            Self::Requests | Self::Concurrent => 1,
            Self::Tokens => input_tokens.saturating_add(output_tokens),
            Self::InputTokens => input_tokens,
            Self::OutputTokens => output_tokens,
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
    "`{0}` is not a metric; use one of requests, tokens, input_tokens, output_tokens, concurrent"
)]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

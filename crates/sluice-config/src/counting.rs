//! How the tokens an upstream reports count toward token limits:
//! `[tokens] cached_input` and `reasoning`. Upstreams report, within a
//! request's input tokens, those read from their prompt cache, and within
//! its output tokens, those spent reasoning; a policy says whether a
//! settled request's token charges count them.

use toml::Spanned;

use crate::gateway::Problems;
use crate::raw::RawTokens;

/// Whether a kind of token counts toward token limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Counting {
    /// Counted with the rest (the default).
    #[default]
    Count,
    /// Left out of the settled charge.
    Exclude,
}

impl Counting {
    /// Its name in the policy file.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Exclude => "exclude",
        }
    }
}

/// How cached and reasoning tokens count toward the `tokens`,
/// `input_tokens` and `output_tokens` limits when a request settles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounting {
    /// Input tokens read from the upstream's prompt cache
    /// (`tokens.cached_input`). Counted by default, as OpenAI counts them
    /// toward its TPM; Anthropic's input-tokens-per-minute limit leaves
    /// cache reads out.
    pub cached_input: Counting,
    /// Output tokens spent reasoning (`tokens.reasoning`). Counted by
    /// default: they are output tokens.
    pub reasoning: Counting,
}

/// Reads `tokens.cached_input` and `tokens.reasoning`.
pub(crate) fn token_counting(t: &RawTokens, problems: &mut Problems) -> TokenCounting {
    TokenCounting {
        cached_input: counting(t.cached_input.as_ref(), "tokens.cached_input", problems),
        reasoning: counting(t.reasoning.as_ref(), "tokens.reasoning", problems),
    }
}

fn counting(v: Option<&Spanned<String>>, field: &str, problems: &mut Problems) -> Counting {
    let Some(v) = v else { return Counting::default() };
    match v.get_ref().as_str() {
        "count" => Counting::Count,
        "exclude" => Counting::Exclude,
        other => {
            problems.push((
                Some(v.span()),
                field.into(),
                format!("`{other}` is not allowed; use `count` (the default: they count toward token limits) or `exclude` (a settled request's token charges leave them out)"),
            ));
            Counting::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(text: &str) -> Result<crate::Config, String> {
        crate::parse(text, "policy.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn both_count_by_default() {
        let c = load("[models.m]\n").unwrap();
        assert_eq!(c.gateway.tokens.counting, TokenCounting::default());
        assert_eq!(c.gateway.tokens.counting.cached_input, Counting::Count);
        assert_eq!(c.gateway.tokens.counting.reasoning, Counting::Count);
        let c = load("[models.m]\n[tokens]\ndefault_output = 10\n").unwrap();
        assert_eq!(c.gateway.tokens.counting, TokenCounting::default());
    }

    #[test]
    fn each_is_read() {
        let c = load("[models.m]\n[tokens]\ncached_input = \"exclude\"\n").unwrap();
        let want = TokenCounting { cached_input: Counting::Exclude, reasoning: Counting::Count };
        assert_eq!(c.gateway.tokens.counting, want);
        let c = load("[models.m]\n[tokens]\ncached_input = \"count\"\nreasoning = \"exclude\"\n")
            .unwrap();
        let want = TokenCounting { cached_input: Counting::Count, reasoning: Counting::Exclude };
        assert_eq!(c.gateway.tokens.counting, want);
        assert_eq!(Counting::Exclude.name(), "exclude");
    }

    #[test]
    fn other_values_are_refused_with_their_line() {
        let e = load("[models.m]\n[tokens]\ncached_input = \"free\"\nreasoning = \"Count\"\n")
            .unwrap_err();
        assert!(e.contains("policy.toml:3") && e.contains("tokens.cached_input"), "{e}");
        assert!(e.contains("`free` is not allowed"), "{e}");
        assert!(e.contains("policy.toml:4") && e.contains("tokens.reasoning"), "{e}");
        let e = load("[models.m]\n[tokens]\nreasoning = 0\n").unwrap_err();
        assert!(e.contains("reasoning"), "{e}");
    }
}

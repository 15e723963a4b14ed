//! What a request that ran is charged, from the usage its upstream
//! reported: the one conversion of an upstream's [`sluice_llm::Usage`] into
//! the engine's [`sluice_core::Usage`], for the proxy's settlements and the
//! decision service's settle API alike.

use sluice_config::counting::{Counting, TokenCounting};

/// The engine's usage of a request that ran, from what its upstream
/// reported: one request, its input and output tokens as token limits
/// count them under `counting` (`[tokens] cached_input` and `reasoning`:
/// cached input tokens and reasoning tokens counted, or left out), and
/// every token as billed (what `cost` limits price, whatever the counting).
pub fn settled_usage(upstream: sluice_llm::Usage, counting: TokenCounting) -> sluice_core::Usage {
    // As reported, each part at most its total.
    let input = upstream.input;
    let cached_input = upstream.cached_input.min(input);
    let output = upstream.output;
    let reasoning = upstream.reasoning.min(output);
    let counted = |total: u64, part: u64, rule: Counting| match rule {
        Counting::Count => total,
        Counting::Exclude => total - part,
    };
    sluice_core::Usage {
        // What money limits price: every token, cached input at its own
        // price, reasoning as output.
        billed: sluice_core::Billed { input, cached_input, output },
        ..sluice_core::Usage::tokens(
            counted(input, cached_input, counting.cached_input),
            counted(output, reasoning, counting.reasoning),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORTED: sluice_llm::Usage =
        sluice_llm::Usage { input: 2006, output: 300, cached_input: 1920, reasoning: 192 };

    fn rules(cached_input: Counting, reasoning: Counting) -> TokenCounting {
        TokenCounting { cached_input, reasoning }
    }

    #[test]
    fn counting_both_charges_what_was_reported() {
        let usage = settled_usage(REPORTED, TokenCounting::default());
        let billed = sluice_core::Billed { input: 2006, cached_input: 1920, output: 300 };
        assert_eq!(usage, sluice_core::Usage { billed, ..sluice_core::Usage::tokens(2006, 300) });
    }

    #[test]
    fn excluding_leaves_each_part_out_of_its_total() {
        use Counting::{Count, Exclude};
        let settled = |c, r| {
            let u = settled_usage(REPORTED, rules(c, r));
            // Billed in full whatever token limits count.
            assert_eq!(
                u.billed,
                sluice_core::Billed { input: 2006, cached_input: 1920, output: 300 }
            );
            (u.input_tokens, u.output_tokens)
        };
        assert_eq!(settled(Exclude, Count), (86, 300));
        assert_eq!(settled(Count, Exclude), (2006, 108));
        assert_eq!(settled(Exclude, Exclude), (86, 108));
        // Nothing cached, nothing to leave out.
        let plain = sluice_llm::Usage { input: 7, output: 3, ..sluice_llm::Usage::default() };
        assert_eq!(settled_usage(plain, rules(Exclude, Exclude)), sluice_core::Usage::tokens(7, 3));
    }

    #[test]
    fn parts_larger_than_their_totals_leave_nothing() {
        let odd = sluice_llm::Usage { input: 5, output: 2, cached_input: 9, reasoning: 4 };
        let usage = settled_usage(odd, rules(Counting::Exclude, Counting::Exclude));
        assert_eq!((usage.input_tokens, usage.output_tokens), (0, 0));
        assert_eq!(usage.billed, sluice_core::Billed { input: 5, cached_input: 5, output: 2 });
        assert_eq!(usage.requests, 1);
    }
}

//! Token estimates for admission.
//!
//! A request is charged before it runs, so its input tokens must be counted
//! from the body: with the model's real tokenizer where one is known
//! (`o200k_base`, `cl100k_base`, compiled into `bpe-openai`: no download),
//! otherwise from the byte length. Each tokenizer loads once per process, on
//! first use (or up front with [`Estimator::preload`]).
//!
//! The estimate is a reservation, settled later with the usage the upstream
//! reports, so its CPU is bounded rather than its precision made perfect
//! (ADR 0008):
//! - `bpe-openai` counts in time linear in the text (tiktoken's merge is
//!   quadratic on long runs without whitespace: 4 MB of letters took 9 s),
//!   with the same counts as tiktoken;
//! - counting stops once the count passes a ceiling the caller gives (what
//!   the request's limits could ever admit: past it, it is refused as too
//!   large whatever the exact figure);
//! - prompts longer than [`Estimator::exact_bytes`] (64 KiB by default) are
//!   counted from 16 samples spread over the text (stratified, at offsets no
//!   client can predict) and scaled by the length.
//!
//! Counting still costs up to a few milliseconds: callers on an async runtime
//! should move large bodies ([`RequestFacts::text_bytes`]) to a blocking
//! thread.
//!
//! Expected output is `max_completion_tokens ?? max_tokens ?? default`
//! times the number of choices (see [`expected_output`]).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bpe_openai::Tokenizer;

use crate::request::RequestFacts;

/// How to turn text into a token count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Encoding {
    /// OpenAI's `o200k_base` (GPT-4o, GPT-4.1, GPT-5, o-series).
    O200kBase,
    /// OpenAI's `cl100k_base` (GPT-4, GPT-3.5, `text-embedding-3`).
    Cl100kBase,
    /// No tokenizer: `ceil(bytes / bytes_per_token)`.
    Bytes {
        /// UTF-8 bytes per token (4.0 is typical for English).
        bytes_per_token: f32,
    },
}

impl Encoding {
    /// Bytes per token when nothing better is known.
    pub const DEFAULT_BYTES_PER_TOKEN: f32 = 4.0;

    /// The byte estimate with the default ratio.
    pub const DEFAULT_BYTES: Encoding =
        Encoding::Bytes { bytes_per_token: Self::DEFAULT_BYTES_PER_TOKEN };

    /// Guesses the tokenizer of an OpenAI model from its name (a provider
    /// prefix such as `openai/` is ignored). `None` for models this crate
    /// has no tokenizer for: the caller then uses [`Encoding::Bytes`].
    pub fn for_model(model: &str) -> Option<Encoding> {
        let name = model.rsplit('/').next().unwrap_or(model);
        let name = name.trim().to_ascii_lowercase();
        let family = |prefix: &str| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', ':', '_']))
        };
        let o200k = ["o1", "o3", "o4"].into_iter().any(family)
            || ["gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "codex-"]
                .iter()
                .any(|p| name.starts_with(p));
        if o200k {
            return Some(Self::O200kBase);
        }
        let cl100k = [
            "gpt-4",
            "gpt-3.5",
            "gpt-35",
            "text-embedding-3",
            "text-embedding-ada-002",
            "davinci-002",
            "babbage-002",
        ]
        .iter()
        .any(|p| name.starts_with(p));
        cl100k.then_some(Self::Cl100kBase)
    }

    /// [`Encoding::for_model`], else the byte estimate with the default ratio.
    pub fn for_model_or_bytes(model: &str) -> Encoding {
        Self::for_model(model).unwrap_or(Self::DEFAULT_BYTES)
    }

    fn bpe(self) -> Option<&'static Tokenizer> {
        match self {
            Self::O200kBase => Some(bpe_openai::o200k_base()),
            Self::Cl100kBase => Some(bpe_openai::cl100k_base()),
            Self::Bytes { .. } => None,
        }
    }
}

/// Counts tokens. Cheap to create and copy: the tokenizers themselves are
/// process-wide singletons, loaded on first use.
#[derive(Clone, Copy, Debug)]
pub struct Estimator {
    media_part_tokens: u64,
    exact_bytes: usize,
}

impl Default for Estimator {
    fn default() -> Self {
        Self::new()
    }
}

/// Samples taken from a prompt longer than [`Estimator::exact_bytes`].
const SAMPLES: usize = 16;

impl Estimator {
    /// Tokens charged per image, audio or file part by default: OpenAI's cost
    /// of a low-detail image tile. The real cost depends on the media.
    pub const DEFAULT_MEDIA_PART_TOKENS: u64 = 85;

    /// Prompts up to this many bytes of text are counted exactly.
    pub const DEFAULT_EXACT_BYTES: usize = 64 * 1024;

    /// An estimator with the default settings.
    pub const fn new() -> Self {
        Self {
            media_part_tokens: Self::DEFAULT_MEDIA_PART_TOKENS,
            exact_bytes: Self::DEFAULT_EXACT_BYTES,
        }
    }

    /// Sets the tokens charged for each non-text content part.
    #[must_use]
    pub const fn with_media_part_tokens(mut self, tokens: u64) -> Self {
        self.media_part_tokens = tokens;
        self
    }

    /// Sets how many bytes of prompt text are counted exactly; longer
    /// prompts are estimated from samples of as many bytes in all.
    #[must_use]
    pub const fn with_exact_bytes(mut self, bytes: usize) -> Self {
        self.exact_bytes = bytes;
        self
    }

    /// How many bytes of prompt text are counted exactly.
    pub const fn exact_bytes(&self) -> usize {
        self.exact_bytes
    }

    /// Loads the tokenizer of `encoding` now (e.g. at start-up) rather than
    /// on the first request.
    pub fn preload(&self, encoding: Encoding) {
        let _ = encoding.bpe();
    }

    /// Tokens in one text.
    pub fn count(&self, text: &str, encoding: Encoding) -> u64 {
        self.count_up_to(text, encoding, u64::MAX)
    }

    /// Tokens in one text, or any figure over `ceiling` once the count
    /// passes it (counting stops there).
    fn count_up_to(&self, text: &str, encoding: Encoding, ceiling: u64) -> u64 {
        if text.is_empty() {
            return 0;
        }
        match encoding.bpe() {
            Some(bpe) => {
                // The tokenizer is third-party code fed client text: should it
                // ever panic, fall back to the byte estimate rather than take
                // the process down.
                catch_unwind(AssertUnwindSafe(|| {
                    let text = bpe.normalize(text);
                    let limit = usize::try_from(ceiling).unwrap_or(usize::MAX);
                    match bpe.count_till_limit(&text, limit) {
                        Some(n) => n as u64,
                        None => ceiling.saturating_add(1),
                    }
                }))
                .unwrap_or_else(|_| bytes_estimate(text.len(), None))
            }
            None => bytes_estimate(text.len(), Some(encoding)),
        }
    }

    /// Tokens in several texts, each counted on its own (as the tiktoken
    /// cookbook counts the values of a message).
    pub fn estimate<S: AsRef<str>>(&self, texts: &[S], encoding: Encoding) -> u64 {
        self.estimate_up_to(texts, encoding, u64::MAX)
    }

    /// [`Estimator::estimate`], stopping once the count passes `ceiling`
    /// (the result is then some figure over it); texts longer in all than
    /// [`Estimator::exact_bytes`] are estimated from samples.
    pub fn estimate_up_to<S: AsRef<str>>(
        &self,
        texts: &[S],
        encoding: Encoding,
        ceiling: u64,
    ) -> u64 {
        let bytes: usize = texts.iter().map(|t| t.as_ref().len()).sum();
        if let Encoding::Bytes { .. } = encoding {
            return bytes_estimate(bytes, Some(encoding));
        }
        if bytes > self.exact_bytes {
            return self.sampled(texts, bytes, encoding);
        }
        let mut total = 0u64;
        for t in texts {
            total = total.saturating_add(self.count_up_to(
                t.as_ref(),
                encoding,
                ceiling.saturating_sub(total),
            ));
            if total > ceiling {
                break;
            }
        }
        total
    }

    /// The tokens of `bytes` bytes of text, from [`SAMPLES`] windows of
    /// `exact_bytes / SAMPLES` bytes, one at an unpredictable offset in each
    /// of as many equal stretches of the text (taken end to end), scaled by
    /// the length.
    fn sampled<S: AsRef<str>>(&self, texts: &[S], bytes: usize, encoding: Encoding) -> u64 {
        let window = (self.exact_bytes / SAMPLES).max(64);
        let stretch = bytes / SAMPLES;
        let mut seed = RandomState::new().hash_one(bytes);
        let (mut counted_bytes, mut counted_tokens) = (0u64, 0u64);
        for i in 0..SAMPLES {
            seed = splitmix64(seed);
            let slack = stretch.saturating_sub(window).max(1);
            let at = i * stretch + (seed % slack as u64) as usize;
            let Some(piece) = slice_at(texts, at, window) else { continue };
            counted_bytes += piece.len() as u64;
            counted_tokens += self.count(piece, encoding);
        }
        if counted_bytes == 0 {
            return bytes_estimate(bytes, None);
        }
        let scaled = u128::from(counted_tokens) * bytes as u128;
        u64::try_from(scaled.div_ceil(u128::from(counted_bytes))).unwrap_or(u64::MAX)
    }

    /// The input tokens of a request: its texts, plus what is known without
    /// a tokenizer (message overhead, token arrays), plus its media parts.
    pub fn input_tokens(&self, facts: &RequestFacts<'_>, encoding: Encoding) -> u64 {
        self.input_tokens_up_to(facts, encoding, u64::MAX)
    }

    /// [`Estimator::input_tokens`], counting the texts only until the total
    /// passes `ceiling` (the result is then some figure over it).
    pub fn input_tokens_up_to(
        &self,
        facts: &RequestFacts<'_>,
        encoding: Encoding,
        ceiling: u64,
    ) -> u64 {
        let known = facts
            .fixed_tokens
            .saturating_add(u64::from(facts.media_parts).saturating_mul(self.media_part_tokens));
        self.estimate_up_to(&facts.texts, encoding, ceiling.saturating_sub(known))
            .saturating_add(known)
    }
}

/// SplitMix64: the next value of a sequence from a seed.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Up to `len` bytes of the texts taken end to end, from byte `at` (within
/// the text that holds it), at character boundaries.
fn slice_at<S: AsRef<str>>(texts: &[S], mut at: usize, len: usize) -> Option<&str> {
    for t in texts {
        let t = t.as_ref();
        if at >= t.len() {
            at -= t.len();
            continue;
        }
        let mut start = at;
        while !t.is_char_boundary(start) {
            start += 1;
        }
        let mut end = (start + len).min(t.len());
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        return (start < end).then(|| &t[start..end]);
    }
    None
}

/// `ceil(bytes / ratio)`; a missing, zero or non-finite ratio means the
/// default.
pub fn bytes_estimate(bytes: usize, encoding: Option<Encoding>) -> u64 {
    let ratio = match encoding {
        Some(Encoding::Bytes { bytes_per_token })
            if bytes_per_token.is_finite() && bytes_per_token > 0.0 =>
        {
            f64::from(bytes_per_token)
        }
        _ => f64::from(Encoding::DEFAULT_BYTES_PER_TOKEN),
    };
    if bytes == 0 {
        return 0;
    }
    let t = (bytes as f64 / ratio).ceil();
    // Saturating float-to-int conversion (absurdly small ratios).
    (t as u64).max(1)
}

/// The output tokens to reserve for a request:
/// `(max_completion_tokens ?? max_tokens ?? min(default, cap)) × choices`,
/// and 0 for endpoints with no output (embeddings). What a request asks for
/// is reserved whole, never capped: the upstream may generate that much (a
/// request no limit can admit is then refused as too large); `cap` bounds
/// only the default.
pub fn expected_output(facts: &RequestFacts<'_>, default: u64, cap: u64) -> u64 {
    if !facts.kind.has_output() {
        return 0;
    }
    facts
        .max_completion_tokens
        .or(facts.max_tokens)
        .unwrap_or(default.min(cap))
        .saturating_mul(facts.choices())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{EndpointKind, parse};

    #[test]
    fn guesses_encodings() {
        use Encoding::*;
        for m in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "o1",
            "o1-mini",
            "o3-mini",
            "o4-mini",
            "gpt-4.1-nano",
            "gpt-5",
            "gpt-5-mini",
            "openai/gpt-oss-120b",
            "chatgpt-4o-latest",
        ] {
            assert_eq!(Encoding::for_model(m), Some(O200kBase), "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-4-0613",
            "gpt-3.5-turbo",
            "gpt-3.5-turbo-instruct",
            "text-embedding-3-small",
            "text-embedding-ada-002",
        ] {
            assert_eq!(Encoding::for_model(m), Some(Cl100kBase), "{m}");
        }
        for m in ["llama-3.1-8b", "o1x", "oracle", "Meta-Llama-3.3-70B-Instruct", ""] {
            assert_eq!(Encoding::for_model(m), None, "{m}");
        }
        assert_eq!(Encoding::for_model_or_bytes("mistral"), Encoding::DEFAULT_BYTES);
    }

    #[test]
    fn counts_with_real_tokenizers() {
        let e = Estimator::new();
        // Reference counts from tiktoken (Python).
        assert_eq!(e.count("hello world", Encoding::O200kBase), 2);
        assert_eq!(e.count("hello world", Encoding::Cl100kBase), 2);
        assert_eq!(e.count("tiktoken is great!", Encoding::Cl100kBase), 6);
        assert_eq!(e.count("", Encoding::O200kBase), 0);
        // Special-token text is ordinary text, not a special token (and no panic).
        assert!(e.count("<|endoftext|>", Encoding::Cl100kBase) > 1);
        // A long run with no whitespace stays fast (heap-based merge).
        let long = "a".repeat(200_000);
        let t = std::time::Instant::now();
        assert!(e.count(&long, Encoding::O200kBase) > 0);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    /// bpe-openai against tiktoken (the reference the counts used to come
    /// from): the same counts, on text, code, letters without spaces,
    /// multi-byte characters and random strings.
    #[test]
    fn counts_as_tiktoken_does() {
        let e = Estimator::new();
        let cases = [
            "Hello, world! It's a test of the tokenizer's counts.\n\n  indented",
            "fn main() { println!(\"{}\", 42); }\r\n\tlet x = vec![1, 2, 3];",
            "über naïve 日本語のテキスト 🚀🚀 emoji, and 12345678901234567890 digits",
            "   leading and trailing spaces   ",
        ];
        let o200k = tiktoken_rs::o200k_base_singleton();
        let cl100k = tiktoken_rs::cl100k_base_singleton();
        let mut texts: Vec<String> = cases.iter().map(|s| (*s).to_owned()).collect();
        texts.push(letters(20_000, 7));
        let mut x = 1u64;
        for len in [1, 5, 50, 500, 5_000] {
            x = splitmix64(x);
            let s: String = (0..len)
                .map(|i| {
                    let v = splitmix64(x ^ i as u64);
                    char::from_u32((v % 0x3000) as u32).filter(|c| !c.is_control()).unwrap_or(' ')
                })
                .collect();
            texts.push(s);
        }
        for s in &texts {
            assert_eq!(
                e.count(s, Encoding::O200kBase),
                o200k.encode_ordinary(s).len() as u64,
                "o200k: {:?}",
                &s[..s.len().min(40)]
            );
            assert_eq!(
                e.count(s, Encoding::Cl100kBase),
                cl100k.encode_ordinary(s).len() as u64,
                "cl100k: {:?}",
                &s[..s.len().min(40)]
            );
        }
    }

    fn letters(n: usize, seed: u64) -> String {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = splitmix64(x);
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    }

    fn prose(n: usize) -> String {
        let words = [
            "the",
            "model",
            "rate",
            "limit",
            "tokens,",
            "request",
            "Sluice",
            "counts",
            "every",
            "prompt.",
            "über",
            "日本語",
            "(json)",
            "x=42;",
            "It's",
            "\n",
        ];
        let mut x = 3u64;
        let mut s = String::new();
        while s.len() < n {
            x = splitmix64(x);
            s.push_str(words[(x % words.len() as u64) as usize]);
            s.push(' ');
        }
        s
    }

    /// Counting stops past the ceiling, with a figure over it; at or under
    /// it, the count is exact.
    #[test]
    fn counting_stops_past_the_ceiling() {
        let e = Estimator::new();
        let text = prose(20_000);
        let exact = e.count(&text, Encoding::O200kBase);
        assert_eq!(e.count_up_to(&text, Encoding::O200kBase, exact), exact);
        assert!(e.count_up_to(&text, Encoding::O200kBase, exact - 1) > exact - 1);
        assert!(e.count_up_to(&text, Encoding::O200kBase, 10) > 10);
        let parts = [text.as_str(), text.as_str()];
        assert_eq!(e.estimate_up_to(&parts, Encoding::O200kBase, u64::MAX), 2 * exact);
        assert!(e.estimate_up_to(&parts, Encoding::O200kBase, exact + 5) > exact + 5);
    }

    /// A prompt longer than `exact_bytes` is estimated from samples within
    /// a few percent, for prose and for letters without spaces, and for a
    /// prompt made of a cheap half and an expensive half.
    #[test]
    fn long_prompts_are_sampled_within_a_few_percent() {
        let e = Estimator::new();
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let mixed = format!("{}{}", prose(100_000), letters(100_000, 11));
            for text in [prose(200_000), letters(200_000, 5), mixed] {
                let exact = e.with_exact_bytes(usize::MAX).count(&text, enc) as f64;
                for _ in 0..3 {
                    let sampled = e.estimate(&[text.as_str()], enc) as f64;
                    let err = (sampled - exact).abs() / exact;
                    assert!(err < 0.05, "{enc:?}: sampled {sampled}, exact {exact}");
                }
            }
        }
        // Several texts taken end to end; short ones are counted exactly.
        let parts = [prose(50_000), prose(30_000), letters(70_000, 2)];
        let exact: u64 = parts.iter().map(|p| e.count(p, Encoding::O200kBase)).sum();
        let sampled = e.estimate(&parts, Encoding::O200kBase);
        assert!((sampled as f64 - exact as f64).abs() / (exact as f64) < 0.05);
        let small = [prose(10_000)];
        assert_eq!(
            e.estimate(&small, Encoding::O200kBase),
            e.count(&small[0], Encoding::O200kBase)
        );
    }

    #[test]
    fn byte_estimates() {
        let e = Estimator::new();
        assert_eq!(e.count("abcd", Encoding::DEFAULT_BYTES), 1);
        assert_eq!(e.count("abcde", Encoding::DEFAULT_BYTES), 2);
        assert_eq!(e.count("abcdef", Encoding::Bytes { bytes_per_token: 3.0 }), 2);
        assert_eq!(e.count("abcdef", Encoding::Bytes { bytes_per_token: 0.0 }), 2);
        assert_eq!(e.count("abcdef", Encoding::Bytes { bytes_per_token: f32::NAN }), 2);
        // Summed over the parts, then rounded once.
        assert_eq!(e.estimate(&["ab", "cd", "e"], Encoding::DEFAULT_BYTES), 2);
        assert_eq!(e.estimate::<&str>(&[], Encoding::DEFAULT_BYTES), 0);
    }

    #[test]
    fn chat_estimate_matches_cookbook() {
        // The OpenAI cookbook's example conversation: 129 prompt tokens for
        // gpt-4 / gpt-3.5-turbo-0613 (cl100k_base), as the API reports.
        let body = r#"{"model":"gpt-4-0613","messages":[
          {"role":"system","content":"You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
          {"role":"system","name":"example_user","content":"New synergies will help drive top-line growth."},
          {"role":"system","name":"example_assistant","content":"Things working well together will increase revenue."},
          {"role":"system","name":"example_user","content":"Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
          {"role":"system","name":"example_assistant","content":"Let's talk later when we're less busy about how to do better."},
          {"role":"user","content":"This late pivot means we don't have time to boil the ocean for the client deliverable."}
        ]}"#;
        let f = parse(EndpointKind::ChatCompletions, body.as_bytes()).unwrap();
        let e = Estimator::new();
        assert_eq!(e.input_tokens(&f, Encoding::Cl100kBase), 129);
    }

    #[test]
    fn media_and_token_arrays_count() {
        let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
            {"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#;
        let f = parse(EndpointKind::ChatCompletions, body.as_bytes()).unwrap();
        let e = Estimator::new().with_media_part_tokens(100);
        // "user" is one token; 3 per message + 3 priming; 2 images.
        assert_eq!(e.input_tokens(&f, Encoding::O200kBase), 1 + 6 + 200);
        let f = parse(EndpointKind::Embeddings, br#"{"model":"m","input":[[1,2,3]]}"#).unwrap();
        assert_eq!(e.input_tokens(&f, Encoding::DEFAULT_BYTES), 3);
    }

    #[test]
    fn expected_output_rules() {
        let chat = |extra: &str| {
            let body = format!(r#"{{"model":"m","messages":[]{extra}}}"#);
            parse(EndpointKind::ChatCompletions, body.as_bytes()).unwrap().into_owned()
        };
        assert_eq!(expected_output(&chat(""), 512, 4096), 512);
        assert_eq!(expected_output(&chat(r#","max_tokens":100"#), 512, 4096), 100);
        assert_eq!(
            expected_output(&chat(r#","max_tokens":100,"max_completion_tokens":300"#), 512, 4096),
            300
        );
        // Asked for: reserved whole, above the cap too.
        assert_eq!(expected_output(&chat(r#","max_tokens":100000"#), 512, 4096), 100_000);
        assert_eq!(expected_output(&chat(""), 8192, 4096), 4096, "the cap bounds the default");
        assert_eq!(expected_output(&chat(r#","max_tokens":100,"n":3"#), 512, 4096), 300);
        assert_eq!(expected_output(&chat(r#","max_tokens":0"#), 512, 4096), 0);
        assert_eq!(
            expected_output(&chat(r#","max_tokens":18446744073709551615,"n":4"#), 512, u64::MAX),
            u64::MAX
        );
        let c =
            parse(EndpointKind::Completions, br#"{"model":"m","max_tokens":10,"best_of":5,"n":2}"#)
                .unwrap();
        assert_eq!(expected_output(&c, 512, 4096), 50);
        let e = parse(EndpointKind::Embeddings, br#"{"model":"m","input":"x"}"#).unwrap();
        assert_eq!(expected_output(&e, 512, 4096), 0);
    }
}

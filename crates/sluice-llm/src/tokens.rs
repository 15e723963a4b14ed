//! Token estimates for admission.
//!
//! A request is charged before it runs, so its input tokens must be counted
//! from the body: with the model's real tokenizer where one is known
//! (`o200k_base`, `cl100k_base`, compiled into `tiktoken-rs`, no download),
//! otherwise from the byte length. Loading a tokenizer costs 50–120 ms, so each
//! is loaded once per process, on first use (or up front with
//! [`Estimator::preload`]). Counting costs about 3 ms per 100 KB of text:
//! callers on an async runtime should move large bodies
//! ([`RequestFacts::text_bytes`]) to a blocking thread.
//!
//! Expected output is `max_completion_tokens ?? max_tokens ?? default`
//! times the number of choices (see [`expected_output`]).

use std::panic::{AssertUnwindSafe, catch_unwind};

use tiktoken_rs::CoreBPE;

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

    fn bpe(self) -> Option<&'static CoreBPE> {
        match self {
            Self::O200kBase => Some(tiktoken_rs::o200k_base_singleton()),
            Self::Cl100kBase => Some(tiktoken_rs::cl100k_base_singleton()),
            Self::Bytes { .. } => None,
        }
    }
}

/// Counts tokens. Cheap to create and copy: the tokenizers themselves are
/// process-wide singletons, loaded on first use.
#[derive(Clone, Copy, Debug)]
pub struct Estimator {
    media_part_tokens: u64,
}

impl Default for Estimator {
    fn default() -> Self {
        Self::new()
    }
}

impl Estimator {
    /// Tokens charged per image, audio or file part by default: OpenAI's cost
    /// of a low-detail image tile. The real cost depends on the media.
    pub const DEFAULT_MEDIA_PART_TOKENS: u64 = 85;

    /// An estimator with the default settings.
    pub const fn new() -> Self {
        Self { media_part_tokens: Self::DEFAULT_MEDIA_PART_TOKENS }
    }

    /// Sets the tokens charged for each non-text content part.
    #[must_use]
    pub const fn with_media_part_tokens(mut self, tokens: u64) -> Self {
        self.media_part_tokens = tokens;
        self
    }

    /// Loads the tokenizer of `encoding` now (e.g. at start-up) rather than
    /// on the first request.
    pub fn preload(&self, encoding: Encoding) {
        let _ = encoding.bpe();
    }

    /// Tokens in one text.
    pub fn count(&self, text: &str, encoding: Encoding) -> u64 {
        if text.is_empty() {
            return 0;
        }
        match encoding.bpe() {
            Some(bpe) => {
                // The tokenizer is third-party code fed client text: should it
                // ever panic, fall back to the byte estimate rather than take
                // the process down.
                catch_unwind(AssertUnwindSafe(|| bpe.encode_ordinary(text).len() as u64))
                    .unwrap_or_else(|_| bytes_estimate(text.len(), None))
            }
            None => bytes_estimate(text.len(), Some(encoding)),
        }
    }

    /// Tokens in several texts, each counted on its own (as the tiktoken
    /// cookbook counts the values of a message).
    pub fn estimate<S: AsRef<str>>(&self, texts: &[S], encoding: Encoding) -> u64 {
        match encoding {
            Encoding::Bytes { .. } => {
                let bytes = texts.iter().map(|t| t.as_ref().len()).sum();
                bytes_estimate(bytes, Some(encoding))
            }
            _ => {
                texts.iter().map(|t| self.count(t.as_ref(), encoding)).fold(0, u64::saturating_add)
            }
        }
    }

    /// The input tokens of a request: its texts, plus what is known without
    /// a tokenizer (message overhead, token arrays), plus its media parts.
    pub fn input_tokens(&self, facts: &RequestFacts<'_>, encoding: Encoding) -> u64 {
        self.estimate(&facts.texts, encoding)
            .saturating_add(facts.fixed_tokens)
            .saturating_add(u64::from(facts.media_parts).saturating_mul(self.media_part_tokens))
    }
}

/// `ceil(bytes / ratio)`; a missing, zero or non-finite ratio means the
/// default.
pub(crate) fn bytes_estimate(bytes: usize, encoding: Option<Encoding>) -> u64 {
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

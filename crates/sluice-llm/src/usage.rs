//! What a request really used, read from the upstream's response.
//!
//! Reservations are settled with the real usage: from the `usage` object of
//! a JSON response, or, for a stream, from the chunk that carries it (see
//! [`SseUsageTap`]), which also counts the text it forwards so that a stream
//! cut before its usage chunk can still be charged.

mod sse;

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

pub use sse::SseUsageTap;

/// Tokens a request used, as the upstream reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Prompt (input) tokens, cached ones included.
    pub input: u64,
    /// Completion (output) tokens, reasoning ones included; 0 for
    /// embeddings.
    pub output: u64,
    /// The part of `input` read from the upstream's prompt cache
    /// (`prompt_tokens_details.cached_tokens`, or the Responses API's
    /// `input_tokens_details.cached_tokens`); at most `input`.
    pub cached_input: u64,
    /// The part of `output` spent reasoning
    /// (`completion_tokens_details.reasoning_tokens`, or the Responses API's
    /// `output_tokens_details.reasoning_tokens`); at most `output`.
    pub reasoning: u64,
}

impl Usage {
    /// Input plus output.
    pub const fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// Reads `usage` from a non-streamed JSON response body (chat, completions,
/// embeddings; also the Responses API's `input_tokens`/`output_tokens`),
/// with the cached and reasoning tokens of its details objects.
/// `None` when the body is not JSON or has no usable `usage`.
pub fn usage_from_json(body: &[u8]) -> Option<Usage> {
    crate::scan::response_usage(body)??.to_usage()
}

/// A `usage` object as providers send it.
#[derive(Deserialize, Clone, Copy, Debug, Default)]
pub(crate) struct UsageJson {
    #[serde(default)]
    prompt_tokens: Option<Count>,
    #[serde(default)]
    completion_tokens: Option<Count>,
    #[serde(default)]
    total_tokens: Option<Count>,
    #[serde(default)]
    input_tokens: Option<Count>,
    #[serde(default)]
    output_tokens: Option<Count>,
    #[serde(default)]
    prompt_tokens_details: Option<InputDetails>,
    #[serde(default)]
    completion_tokens_details: Option<OutputDetails>,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

/// `prompt_tokens_details` (Chat Completions) or `input_tokens_details`
/// (Responses API): of its fields, the cached tokens.
#[derive(Deserialize, Clone, Copy, Debug, Default)]
pub(crate) struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<Count>,
}

/// `completion_tokens_details` (Chat Completions) or
/// `output_tokens_details` (Responses API): of its fields, the reasoning
/// tokens.
#[derive(Deserialize, Clone, Copy, Debug, Default)]
pub(crate) struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<Count>,
}

impl From<InputDetails> for Option<u64> {
    fn from(d: InputDetails) -> Self {
        d.cached_tokens.map(|c| c.0)
    }
}

impl From<OutputDetails> for Option<u64> {
    fn from(d: OutputDetails) -> Self {
        d.reasoning_tokens.map(|c| c.0)
    }
}

/// The fields of a `usage` object, as [`crate::scan`] reads them: each
/// token count, `None` when absent or `null`; a details object's count
/// likewise (an absent or `null` object, or one without the count, is
/// `None`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UsageFields {
    pub(crate) prompt: Option<u64>,
    pub(crate) completion: Option<u64>,
    pub(crate) total: Option<u64>,
    pub(crate) input: Option<u64>,
    pub(crate) output: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`.
    pub(crate) prompt_cached: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`.
    pub(crate) completion_reasoning: Option<u64>,
    /// `input_tokens_details.cached_tokens`.
    pub(crate) input_cached: Option<u64>,
    /// `output_tokens_details.reasoning_tokens`.
    pub(crate) output_reasoning: Option<u64>,
}

impl UsageJson {
    /// A usage object from its fields, as [`crate::scan`] reads them.
    pub(crate) fn from_fields(f: UsageFields) -> Self {
        let cached = |n: Option<u64>| n.map(|n| InputDetails { cached_tokens: Some(Count(n)) });
        let reasoning =
            |n: Option<u64>| n.map(|n| OutputDetails { reasoning_tokens: Some(Count(n)) });
        Self {
            prompt_tokens: f.prompt.map(Count),
            completion_tokens: f.completion.map(Count),
            total_tokens: f.total.map(Count),
            input_tokens: f.input.map(Count),
            output_tokens: f.output.map(Count),
            prompt_tokens_details: cached(f.prompt_cached),
            completion_tokens_details: reasoning(f.completion_reasoning),
            input_tokens_details: cached(f.input_cached),
            output_tokens_details: reasoning(f.output_reasoning),
        }
    }

    /// The usage, if the object says anything at all (details alone do
    /// not: they are parts of counts it does not give).
    pub(crate) fn to_usage(self) -> Option<Usage> {
        let get = |c: Option<Count>| c.map(|c| c.0);
        let input = get(self.prompt_tokens).or(get(self.input_tokens));
        let output = get(self.completion_tokens).or(get(self.output_tokens));
        let total = get(self.total_tokens);
        if input.is_none() && output.is_none() && total.is_none() {
            return None;
        }
        let input = input.unwrap_or(0);
        // Embeddings report prompt and total only.
        let output = output.unwrap_or_else(|| total.map_or(0, |t| t.saturating_sub(input)));
        let detail = |d: Option<Option<u64>>| d.flatten();
        let cached = detail(self.prompt_tokens_details.map(Into::into))
            .or(detail(self.input_tokens_details.map(Into::into)));
        let reasoning = detail(self.completion_tokens_details.map(Into::into))
            .or(detail(self.output_tokens_details.map(Into::into)));
        Some(Usage {
            input,
            output,
            // Parts of their totals, whatever an odd upstream says.
            cached_input: cached.unwrap_or(0).min(input),
            reasoning: reasoning.unwrap_or(0).min(output),
        })
    }
}

/// A token count read by serde from the JSON of one value, as a
/// [`UsageJson`] field reads it; `None` if it is not a number.
pub(crate) fn count_from_json(value: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Count>(value).ok().map(|c| c.0)
}

/// A token count: a non-negative integer, tolerating `12.0` and negatives
/// (read as 0) from odd upstreams.
#[derive(Clone, Copy, Debug, Default)]
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).unwrap_or(0)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                Ok(Count(if v.is_finite() && v > 0.0 {
                    // Saturating float-to-int conversion.
                    v.round() as u64
                } else {
                    0
                }))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_completion_response() {
        let body = br#"{
          "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
          "object": "chat.completion",
          "created": 1741569952,
          "model": "gpt-4.1-2025-04-14",
          "choices": [
            {
              "index": 0,
              "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": null,
                "annotations": []
              },
              "logprobs": null,
              "finish_reason": "stop"
            }
          ],
          "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
              "reasoning_tokens": 0,
              "audio_tokens": 0,
              "accepted_prediction_tokens": 0,
              "rejected_prediction_tokens": 0
            }
          },
          "service_tier": "default"
        }"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage { input: 19, output: 10, ..Usage::default() })
        );
    }

    #[test]
    fn embeddings_response() {
        let body = br#"{
          "object": "list",
          "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292, -0.0028842222], "index": 0}],
          "model": "text-embedding-3-small",
          "usage": {"prompt_tokens": 8, "total_tokens": 8}
        }"#;
        assert_eq!(usage_from_json(body), Some(Usage { input: 8, output: 0, ..Usage::default() }));
    }

    #[test]
    fn other_shapes() {
        // Responses API.
        let body = br#"{"object":"response","usage":{"input_tokens":36,"output_tokens":87,"total_tokens":123}}"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage { input: 36, output: 87, ..Usage::default() })
        );
        // Only a total: all of it is output beyond the prompt.
        assert_eq!(
            usage_from_json(br#"{"usage":{"prompt_tokens":5,"total_tokens":12}}"#),
            Some(Usage { input: 5, output: 7, ..Usage::default() })
        );
        assert_eq!(
            usage_from_json(br#"{"usage":{"prompt_tokens":5.0,"completion_tokens":-3}}"#),
            Some(Usage { input: 5, output: 0, ..Usage::default() })
        );
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
        assert_eq!(usage_from_json(br#"{"usage":{}}"#), None);
        assert_eq!(usage_from_json(br#"{"choices":[]}"#), None);
        assert_eq!(usage_from_json(b"not json"), None);
        assert_eq!(usage_from_json(br#"{"usage":{"prompt_tokens":"5"}}"#), None);
        assert_eq!(Usage { input: 2, output: 3, ..Usage::default() }.total(), 5);
    }

    /// An OpenAI reasoning model answering a prompt most of which it had
    /// seen: cached prompt tokens, reasoning tokens.
    #[test]
    fn openai_chat_with_cached_and_reasoning_tokens() {
        let body = br#"{
          "id": "chatcmpl-BXf0dYvyoHqTpXq6m3e9cQe0mX1yZ",
          "object": "chat.completion",
          "created": 1747321234,
          "model": "o4-mini-2025-04-16",
          "choices": [
            {
              "index": 0,
              "message": {"role": "assistant", "content": "The answer is 42.", "refusal": null, "annotations": []},
              "finish_reason": "stop"
            }
          ],
          "usage": {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {
              "reasoning_tokens": 192,
              "audio_tokens": 0,
              "accepted_prediction_tokens": 0,
              "rejected_prediction_tokens": 0
            }
          },
          "service_tier": "default",
          "system_fingerprint": null
        }"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage { input: 2006, output: 300, cached_input: 1920, reasoning: 192 })
        );
    }

    /// The Responses API names them `input_tokens_details` and
    /// `output_tokens_details`.
    #[test]
    fn responses_api_with_details() {
        let body = br#"{
          "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
          "object": "response",
          "created_at": 1741476777,
          "status": "completed",
          "model": "o3-2025-04-16",
          "output": [],
          "usage": {
            "input_tokens": 1328,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 952,
            "output_tokens_details": {"reasoning_tokens": 896},
            "total_tokens": 2280
          }
        }"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage { input: 1328, output: 952, cached_input: 1024, reasoning: 896 })
        );
    }

    /// vLLM sends `prompt_tokens_details: null` unless it runs with
    /// `--enable-prompt-tokens-details`, and then the cached tokens alone.
    #[test]
    fn vllm_prompt_tokens_details() {
        let body = br#"{"id":"chatcmpl-b1f0","object":"chat.completion","created":1747321234,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","reasoning_content":null,"content":"Hi","tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":1034,"total_tokens":1050,"completion_tokens":16,"prompt_tokens_details":{"cached_tokens":1024}},"prompt_logprobs":null}"#;
        assert_eq!(
            usage_from_json(body),
            Some(Usage { input: 1034, output: 16, cached_input: 1024, reasoning: 0 })
        );
        let body = br#"{"object":"chat.completion","usage":{"prompt_tokens":12,"total_tokens":19,"completion_tokens":7,"prompt_tokens_details":null}}"#;
        assert_eq!(usage_from_json(body), Some(Usage { input: 12, output: 7, ..Usage::default() }));
    }

    #[test]
    fn details_are_parts_of_their_totals() {
        let read = |usage: &str| usage_from_json(format!(r#"{{"usage":{usage}}}"#).as_bytes());
        // More cached or reasoning tokens than there are: clamped.
        assert_eq!(
            read(
                r#"{"prompt_tokens":10,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":50},"completion_tokens_details":{"reasoning_tokens":9}}"#
            ),
            Some(Usage { input: 10, output: 4, cached_input: 10, reasoning: 4 })
        );
        // Absent, null, or without the count: 0.
        for details in [
            "",
            r#","prompt_tokens_details":null,"completion_tokens_details":null"#,
            r#","prompt_tokens_details":{},"completion_tokens_details":{"audio_tokens":3}"#,
            r#","prompt_tokens_details":{"cached_tokens":null}"#,
        ] {
            assert_eq!(
                read(&format!(r#"{{"prompt_tokens":10,"completion_tokens":4{details}}}"#)),
                Some(Usage { input: 10, output: 4, ..Usage::default() }),
                "{details}"
            );
        }
        // Details alone say nothing.
        assert_eq!(read(r#"{"prompt_tokens_details":{"cached_tokens":5}}"#), None);
        // The Chat Completions name wins over the Responses API's.
        assert_eq!(
            read(
                r#"{"input_tokens":10,"input_tokens_details":{"cached_tokens":2},"prompt_tokens_details":{"cached_tokens":3}}"#
            ),
            Some(Usage { input: 10, output: 0, cached_input: 3, reasoning: 0 })
        );
        // A details object of the wrong type spoils the usage, as serde
        // reads it.
        assert_eq!(read(r#"{"prompt_tokens":10,"prompt_tokens_details":5}"#), None);
        assert_eq!(
            read(r#"{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":"5"}}"#),
            None
        );
    }
}

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

/// Tokens a request used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input: u64,
    /// Completion (output) tokens; 0 for embeddings.
    pub output: u64,
}

impl Usage {
    /// Input plus output.
    pub const fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// Reads `usage` from a non-streamed JSON response body (chat, completions,
/// embeddings; also the Responses API's `input_tokens`/`output_tokens`).
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
}

impl UsageJson {
    /// A usage object from its fields, as [`crate::scan`] reads them:
    /// `prompt_tokens`, `completion_tokens`, `total_tokens`, `input_tokens`,
    /// `output_tokens`.
    pub(crate) fn from_fields(
        [prompt, completion, total, input, output]: [Option<u64>; 5],
    ) -> Self {
        Self {
            prompt_tokens: prompt.map(Count),
            completion_tokens: completion.map(Count),
            total_tokens: total.map(Count),
            input_tokens: input.map(Count),
            output_tokens: output.map(Count),
        }
    }

    /// The usage, if the object says anything at all.
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
        Some(Usage { input, output })
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
        assert_eq!(usage_from_json(body), Some(Usage { input: 19, output: 10 }));
    }

    #[test]
    fn embeddings_response() {
        let body = br#"{
          "object": "list",
          "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292, -0.0028842222], "index": 0}],
          "model": "text-embedding-3-small",
          "usage": {"prompt_tokens": 8, "total_tokens": 8}
        }"#;
        assert_eq!(usage_from_json(body), Some(Usage { input: 8, output: 0 }));
    }

    #[test]
    fn other_shapes() {
        // Responses API.
        let body = br#"{"object":"response","usage":{"input_tokens":36,"output_tokens":87,"total_tokens":123}}"#;
        assert_eq!(usage_from_json(body), Some(Usage { input: 36, output: 87 }));
        // Only a total: all of it is output beyond the prompt.
        assert_eq!(
            usage_from_json(br#"{"usage":{"prompt_tokens":5,"total_tokens":12}}"#),
            Some(Usage { input: 5, output: 7 })
        );
        assert_eq!(
            usage_from_json(br#"{"usage":{"prompt_tokens":5.0,"completion_tokens":-3}}"#),
            Some(Usage { input: 5, output: 0 })
        );
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
        assert_eq!(usage_from_json(br#"{"usage":{}}"#), None);
        assert_eq!(usage_from_json(br#"{"choices":[]}"#), None);
        assert_eq!(usage_from_json(b"not json"), None);
        assert_eq!(usage_from_json(br#"{"usage":{"prompt_tokens":"5"}}"#), None);
        assert_eq!(Usage { input: 2, output: 3 }.total(), 5);
    }
}

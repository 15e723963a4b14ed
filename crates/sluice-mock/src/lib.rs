//! A fast, deterministic mock of an OpenAI-compatible upstream.
//!
//! Sluice's end-to-end tests, its load benchmark and its quickstart need an
//! upstream that answers like OpenAI or vLLM — JSON and SSE, with `usage` —
//! without a model behind it. Every answer here follows fixed rules, so a test
//! can predict the exact usage the proxy must settle, and request headers let
//! a test drive failures (errors, latency, dead streams, hung requests)
//! through the proxy. The server is plain hyper over HTTP/1.1 with keep-alive
//! and precomputed stream events, so it is cheap enough to be the "direct"
//! baseline of a benchmark.
//!
//! The server takes its listener and a shutdown future ([`serve`]), so tests
//! bind port 0; [`spawn`] does that and returns a [`MockServer`] handle with
//! the [`MockStats`] the test reads.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use sluice_mock::{MockConfig, spawn};
//!
//! let mock = spawn(MockConfig { models: vec!["gpt-test".into()], ..MockConfig::default() }).await?;
//! let upstream = mock.base_url(); // http://127.0.0.1:PORT/v1: the proxy's upstream
//! // ... send requests through the proxy ...
//! assert_eq!(mock.stats.streams_cancelled(), 0);
//! mock.shutdown().await
//! # }
//! ```
//!
//! # Endpoints
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/chat/completions` | `chat.completion`, or a `chat.completion.chunk` SSE stream |
//! | `POST /v1/completions` | `text_completion`, JSON or SSE |
//! | `POST /v1/embeddings` | a `list` of `embedding`s |
//! | `POST /v1/feedback` | `{"status":"ok"}` |
//! | `GET /v1/models` | the configured [`MockConfig::models`] |
//!
//! Malformed JSON gets 400, an unknown path 404, a known path with the wrong
//! method 405, a model not in a non-empty [`MockConfig::models`] 404
//! (`model_not_found`); all with an OpenAI error body
//! `{"error":{"message","type","param","code"}}`.
//!
//! # Token rules
//!
//! - **Chat prompt tokens**: `ceil(B / 4) + 3 × M`, where `B` is the total
//!   UTF-8 byte length of every message's `content` (a string, or the `text`
//!   of each content part; other parts count 0) and `M` the number of
//!   messages.
//! - **Completions and embeddings prompt tokens**: the sum over the inputs of
//!   `ceil(bytes / 4)` for each string, and the length of each token array.
//! - **Completion tokens per choice**: `max_completion_tokens`, else
//!   `max_tokens`, else [`MockConfig::default_completion_tokens`]; capped at
//!   [`MAX_TOKENS_PER_CHOICE`]. The response's `completion_tokens` is that
//!   times `n` (choices; 1 to 128, default 1). For completions, `n` alone
//!   sets the number of choices: a list of prompts does not multiply them.
//! - **Text**: each choice is `"tok tok … tok"` (one word per token) in JSON;
//!   in a stream, one `"tok "` delta per token.
//! - **`finish_reason`**: `"length"` when the request set a token limit and
//!   the choice reached it, else `"stop"`.
//! - **`total_tokens`** = prompt + completion.
//! - **Details** (chat and completions): `prompt_tokens_details` with
//!   `cached_tokens` and `completion_tokens_details` with
//!   `reasoning_tokens`, both 0 (and the other fields OpenAI sends, 0)
//!   unless [`headers::CACHED_TOKENS`] or [`headers::REASONING_TOKENS`] say
//!   otherwise; reasoning tokens are part of `completion_tokens`.
//!
//! # Streams
//!
//! With `"stream": true` the body is `text/event-stream`, produced
//! incrementally: a chunk with `delta.role = "assistant"` per choice (chat
//! only), one content chunk per token per choice (choices interleaved), a
//! chunk with `finish_reason` per choice, then — only when
//! `stream_options.include_usage` is true — a chunk with `"choices": []` and
//! the `usage`, and `data: [DONE]`. When usage is included every other chunk
//! carries `"usage": null`, as OpenAI does. Chunks are separated by the chunk
//! delay; with no delay, consecutive events are sent in one write of up to
//! 16 KiB. A client that goes away before the end is counted in
//! [`MockStats::streams_cancelled`].
//!
//! # Control headers
//!
//! See [`headers`]: each lets a request (sent through the proxy) choose the
//! mock's status, latency, chunk delay, token counts (cached and reasoning
//! tokens included), a mid-stream death, or a hang. A malformed control header value gets 400.

#![forbid(unsafe_code)]

mod body;
mod controls;
mod request;
mod response;
mod server;
mod sse;
mod stats;

use std::time::Duration;

pub use controls::headers;
pub use request::MAX_TOKENS_PER_CHOICE;
pub use server::{MockServer, serve, serve_with_stats, spawn};
pub use sse::StreamAborted;
pub use stats::{MockStats, RecordedRequest};

/// How the mock behaves when a request does not say otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Delay before the response starts (status and headers).
    pub latency: Duration,
    /// Delay between two SSE events of a stream.
    pub chunk_delay: Duration,
    /// Completion tokens per choice when the request sets no
    /// `max_completion_tokens` or `max_tokens`.
    pub default_completion_tokens: u64,
    /// Length of each embedding unless the request sets `dimensions`.
    pub embedding_dims: usize,
    /// Served by `GET /v1/models`; when not empty, requests for any other
    /// model get 404 `model_not_found`. Empty accepts every model.
    pub models: Vec<String>,
    /// Obey the `x-mock-*` request headers ([`headers`]). Off by default:
    /// whoever can send a request could otherwise make a response huge, slow
    /// or free (a client of a gateway in front of the mock included). Tests
    /// and benchmarks turn it on (`sluice serve --mock-controls`,
    /// `sluice mock-upstream --controls`).
    pub controls: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            default_completion_tokens: 16,
            embedding_dims: 8,
            models: Vec::new(),
            controls: false,
        }
    }
}

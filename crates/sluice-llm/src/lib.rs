//! OpenAI wire formats for Sluice: what the gateway reads from requests and
//! responses, and what it writes back.
//!
//! Pure functions over bytes and `sluice-core` types; no I/O and no async
//! runtime, so every rule here is unit-tested without a server:
//!
//! - [`request`]: the facts admission needs from a request body (model,
//!   end user, output asked for, streaming, the text to count), with
//!   OpenAI-style 400s.
//! - [`tokens`]: token estimates (`o200k_base`/`cl100k_base`, else bytes) and the
//!   expected output to reserve.
//! - [`rewrite`]: the upstream body of a stream, with
//!   `stream_options.include_usage` forced on.
//! - [`usage`]: real usage from a JSON response, and [`usage::SseUsageTap`]
//!   for streams (which also strips the usage chunk the client did not ask
//!   for).
//! - [`headers`]: `x-ratelimit-*`, `retry-after(-ms)`, `x-should-retry`, and
//!   the IETF `RateLimit` fields, from a decision.
//! - [`error`]: OpenAI-shaped error bodies, including the 429 messages.
//! - [`duration`]: Go's `Duration.String()` format, which OpenAI's headers
//!   and messages use.
#![forbid(unsafe_code)]

pub mod duration;
pub mod error;
pub mod headers;
pub mod request;
pub mod rewrite;
pub mod tokens;
pub mod usage;

mod json;
mod scan;
#[cfg(test)]
mod testutil;

/// The fuzz targets' bodies (`fuzz/`), which the tests also run on the
/// seeds (feature `fuzzing` or tests only; not an API).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use duration::go_duration;
pub use error::ApiError;
pub use headers::{HeaderOptions, insert_headers, render_headers};
pub use request::{EndpointKind, RequestError, RequestFacts};
pub use rewrite::{Rewrite, RewriteOptions, force_include_usage};
pub use tokens::{Encoding, Estimator, expected_output};
pub use usage::{SseUsageTap, Usage, usage_from_json};

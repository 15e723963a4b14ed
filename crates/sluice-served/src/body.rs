//! The body of every response a listener sends.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// Errors of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

//! Per-request controls carried in `x-mock-*` request headers, so a test can
//! make the upstream fail, slow down or lie about usage for one request sent
//! through the proxy, without reconfiguring the mock.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

/// Names of the control headers. Values are ASCII decimal integers.
pub mod headers {
    /// Answer with this status (400–599) and an OpenAI error body, without
    /// looking at the request body. Values below 400 are ignored.
    pub const STATUS: &str = "x-mock-status";
    /// Milliseconds to wait before the response starts; replaces
    /// [`MockConfig::latency`](crate::MockConfig::latency).
    pub const LATENCY_MS: &str = "x-mock-latency-ms";
    /// Milliseconds between SSE events; replaces
    /// [`MockConfig::chunk_delay`](crate::MockConfig::chunk_delay).
    pub const CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
    /// Completion tokens per choice, replacing the `max_tokens` rule (and not
    /// bounded by it: an upstream that overshoots `max_tokens`).
    pub const COMPLETION_TOKENS: &str = "x-mock-completion-tokens";
    /// The reported `prompt_tokens`, replacing the byte rule.
    pub const PROMPT_TOKENS: &str = "x-mock-prompt-tokens";
    /// Prompt tokens read from cache: the usage's
    /// `prompt_tokens_details.cached_tokens` (chat and completions; 0
    /// without it), a part of `prompt_tokens` (not bounded by it: an
    /// upstream that says more was cached than was sent).
    pub const CACHED_TOKENS: &str = "x-mock-cached-tokens";
    /// Reasoning tokens: the usage's
    /// `completion_tokens_details.reasoning_tokens` (chat and completions;
    /// 0 without it), added to `completion_tokens` with no text standing
    /// for them, as a reasoning model's hidden reasoning.
    pub const REASONING_TOKENS: &str = "x-mock-reasoning-tokens";
    /// In a stream, after this many content chunks (or at the end of the
    /// content, if sooner) the body ends with an error: the connection is
    /// closed without the final chunk, `[DONE]` or usage, as when an upstream
    /// dies mid-stream. Ignored for JSON responses.
    pub const ABORT_AFTER_CHUNKS: &str = "x-mock-abort-after-chunks";
    /// `1` or `true`: never respond; hold the request until the client goes
    /// away (or the server shuts down).
    pub const HANG: &str = "x-mock-hang";
}

/// The controls of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Controls {
    pub(crate) status: Option<StatusCode>,
    pub(crate) latency: Option<Duration>,
    pub(crate) chunk_delay: Option<Duration>,
    pub(crate) completion_tokens: Option<u64>,
    pub(crate) prompt_tokens: Option<u64>,
    pub(crate) cached_tokens: Option<u64>,
    pub(crate) reasoning_tokens: Option<u64>,
    pub(crate) abort_after_chunks: Option<u64>,
    pub(crate) hang: bool,
}

/// A control header with a value the mock cannot read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for the {header} header: expected {expected}")]
pub(crate) struct ControlError {
    header: &'static str,
    expected: &'static str,
}

const PREFIX: &str = "x-mock-";

impl Controls {
    /// Reads the controls; other headers are skipped with one prefix check.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Self, ControlError> {
        let mut c = Self::default();
        for (name, value) in headers {
            if !name.as_str().starts_with(PREFIX) {
                continue;
            }
            match name.as_str() {
                headers::STATUS => {
                    let err = ControlError { header: headers::STATUS, expected: "a status code" };
                    let code = number(value).ok_or(err)?;
                    let status = u16::try_from(code)
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or(err)?;
                    c.status = (status.as_u16() >= 400).then_some(status);
                }
                headers::LATENCY_MS => c.latency = Some(millis(value, headers::LATENCY_MS)?),
                headers::CHUNK_DELAY_MS => {
                    c.chunk_delay = Some(millis(value, headers::CHUNK_DELAY_MS)?);
                }
                headers::COMPLETION_TOKENS => {
                    c.completion_tokens = Some(count(value, headers::COMPLETION_TOKENS)?);
                }
                headers::PROMPT_TOKENS => {
                    c.prompt_tokens = Some(count(value, headers::PROMPT_TOKENS)?);
                }
                headers::CACHED_TOKENS => {
                    c.cached_tokens = Some(count(value, headers::CACHED_TOKENS)?);
                }
                headers::REASONING_TOKENS => {
                    c.reasoning_tokens = Some(count(value, headers::REASONING_TOKENS)?);
                }
                headers::ABORT_AFTER_CHUNKS => {
                    c.abort_after_chunks = Some(count(value, headers::ABORT_AFTER_CHUNKS)?);
                }
                headers::HANG => {
                    c.hang = match value.as_bytes() {
                        b"1" | b"true" => true,
                        b"0" | b"false" => false,
                        _ => {
                            return Err(ControlError {
                                header: headers::HANG,
                                expected: "1, true, 0 or false",
                            });
                        }
                    };
                }
                _ => {}
            }
        }
        Ok(c)
    }
}

fn number(value: &HeaderValue) -> Option<u64> {
    value.to_str().ok()?.trim().parse().ok()
}

fn count(value: &HeaderValue, header: &'static str) -> Result<u64, ControlError> {
    number(value).ok_or(ControlError { header, expected: "a non-negative integer" })
}

fn millis(value: &HeaderValue, header: &'static str) -> Result<Duration, ControlError> {
    number(value)
        .map(Duration::from_millis)
        .ok_or(ControlError { header, expected: "a non-negative integer (milliseconds)" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<Controls, ControlError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        Controls::from_headers(&h)
    }

    #[test]
    fn reads_every_control() {
        let c = parse(&[
            ("x-mock-status", "503"),
            ("x-mock-latency-ms", "15"),
            ("x-mock-chunk-delay-ms", "2"),
            ("x-mock-completion-tokens", "7"),
            ("x-mock-prompt-tokens", "9"),
            ("x-mock-cached-tokens", "8"),
            ("x-mock-reasoning-tokens", "5"),
            ("x-mock-abort-after-chunks", "3"),
            ("x-mock-hang", "true"),
            ("x-mock-unknown", "whatever"),
            ("content-type", "application/json"),
        ])
        .unwrap();
        assert_eq!(
            c,
            Controls {
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                latency: Some(Duration::from_millis(15)),
                chunk_delay: Some(Duration::from_millis(2)),
                completion_tokens: Some(7),
                prompt_tokens: Some(9),
                cached_tokens: Some(8),
                reasoning_tokens: Some(5),
                abort_after_chunks: Some(3),
                hang: true,
            }
        );
        assert_eq!(parse(&[]).unwrap(), Controls::default());
    }

    #[test]
    fn rejects_bad_values_and_ignores_success_statuses() {
        assert_eq!(parse(&[("x-mock-status", "200")]).unwrap().status, None);
        for (k, v) in [
            ("x-mock-status", "abc"),
            ("x-mock-status", "700"),
            ("x-mock-status", "99"),
            ("x-mock-latency-ms", "-1"),
            ("x-mock-completion-tokens", "1.5"),
            ("x-mock-cached-tokens", "x"),
            ("x-mock-reasoning-tokens", "-2"),
            ("x-mock-hang", "yes"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }
}

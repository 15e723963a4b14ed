//! OpenAI-shaped error responses.
//!
//! The official SDKs turn a response into a typed exception from its status
//! and read `error.message`, `error.type`, `error.param` and `error.code` from
//! the body, so every refusal the gateway makes (its own limits, bad input,
//! upstream failures) uses that shape:
//! `{"error":{"message":…,"type":…,"param":…,"code":…}}`. Rate-limit messages
//! follow OpenAI's wording, which people and scripts already recognise:
//! `Rate limit reached for gpt-4o in organization org-1 on tokens per min
//! (TPM): Limit 30000, Used 29937, Requested 385. Please try again in 644ms.`

use std::borrow::Cow;
use std::fmt::Write as _;

use http::StatusCode;
use serde::Serialize;
use sluice_core::{
    Decision, Fact, Instant, Limit, LimitStatus, Metric, Outcome, Policy, describe_period,
};

use crate::duration::{ceil_millis, go_duration};
use crate::request::RequestError;

/// Echoed client strings (model names, paths) are cut to this many bytes.
const MAX_ECHO: usize = 256;

/// An error response: status plus OpenAI-shaped body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// `error.message`: what happened and what to do.
    pub message: String,
    /// `error.type`.
    pub kind: Cow<'static, str>,
    /// `error.param`: the request field at fault.
    pub param: Option<String>,
    /// `error.code`.
    pub code: Option<Cow<'static, str>>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        message: impl Into<String>,
        kind: &'static str,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind: Cow::Borrowed(kind),
            param: None,
            code: code.map(Cow::Borrowed),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let env = Envelope {
            error: Body {
                message: &self.message,
                kind: &self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        // Serializing strings and options cannot fail.
        serde_json::to_vec(&env).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }

    /// The `Content-Type` of [`ApiError::body`].
    pub const CONTENT_TYPE: &'static str = "application/json";

    /// The response every OpenAI-style listener answers with (the proxy,
    /// the tower layer, the decision service's JSON API): the status, the
    /// body in the HTTP body type `body` makes, its content type, and
    /// `retry-after: 1` on a 503 (the store or the body budget is busy: try
    /// again soon). Rate-limit headers are the caller's to add.
    pub fn response<B>(&self, body: impl FnOnce(Vec<u8>) -> B) -> http::Response<B> {
        let mut r = http::Response::new(body(self.body()));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(Self::CONTENT_TYPE));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        r
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        Self { param, ..Self::new(StatusCode::BAD_REQUEST, message, "invalid_request_error", None) }
    }

    /// 400 for a body [`crate::request::parse`] refused.
    pub fn from_request_error(e: &RequestError) -> Self {
        Self::bad_request(e.to_string(), e.param().map(str::to_owned))
    }

    /// 401 for a key that is not known (the key is never echoed).
    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        )
    }

    /// 401 for a request with no key.
    pub fn missing_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            Some("missing_api_key"),
        )
    }

    /// 404 for a model that does not exist (or the tenant may not use).
    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    echo(model)
                ),
                "invalid_request_error",
                Some("model_not_found"),
            )
        }
    }

    /// 404 for a path the gateway does not serve.
    pub fn unknown_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("Invalid URL ({} {})", echo(method), echo(path)),
            "invalid_request_error",
            Some("unknown_url"),
        )
    }

    /// 413 for a body over the size limit.
    pub fn body_too_large(limit_bytes: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is too large: the limit is {limit_bytes} bytes."),
            "invalid_request_error",
            Some("request_too_large"),
        )
    }

    /// 502 when the upstream failed or answered with something unusable.
    pub fn upstream_error() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "The upstream model server failed to answer. Please retry your request.",
            "server_error",
            Some("upstream_error"),
        )
    }

    /// 504 when the upstream did not answer in time.
    pub fn upstream_timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "The upstream model server did not answer in time. Please retry your request.",
            "server_error",
            Some("upstream_timeout"),
        )
    }

    /// 503 when the rate-limit store is down and the policy fails closed.
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Rate limits cannot be checked right now, so the request was not run. Please retry shortly.",
            "server_error",
            Some("rate_limit_store_unavailable"),
        )
    }

    /// 503 when the request bodies in flight already fill the memory budget
    /// (`server.body_memory_bytes`): send `retry-after`.
    pub fn busy() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is receiving too many request bodies at once. Please retry shortly.",
            "server_error",
            Some("server_busy"),
        )
    }

    /// 429 for a tenant whose quota or budget is exhausted (send
    /// `x-should-retry: false`, no `retry-after`).
    pub fn insufficient_quota() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        )
    }

    /// The 429 for a denied decision (`None` if it was admitted).
    pub fn rate_limited(
        decision: &Decision,
        policy: &Policy,
        model: &str,
        tenant: &str,
        now: Instant,
    ) -> Option<Self> {
        let status = decision.denied_by()?;
        let limit = policy.limit(status.limit)?;
        let message = match decision.outcome {
            Outcome::Admitted { .. } => return None,
            Outcome::Limited { retry_at, .. } => {
                limited_message(policy, status, limit, model, tenant, retry_at.since(now))
            }
            Outcome::TooLarge { .. } => too_large_message(policy, status, limit, model, tenant),
        };
        let kind = match status.metric {
            m if m.is_tokens() => "tokens",
            Metric::Cost => "cost",
            _ => "requests",
        };
        Some(Self::new(StatusCode::TOO_MANY_REQUESTS, message, kind, Some("rate_limit_exceeded")))
    }
}

impl From<&RequestError> for ApiError {
    fn from(e: &RequestError) -> Self {
        Self::from_request_error(e)
    }
}

/// `tokens per min`, `requests per day`, `input tokens per 10 seconds`, in
/// OpenAI's wording.
pub fn limit_phrase(limit: &Limit) -> String {
    let metric = match limit.metric {
        Metric::Requests => "requests",
        Metric::Tokens => "tokens",
        Metric::InputTokens => "input tokens",
        Metric::OutputTokens => "output tokens",
        Metric::Concurrent => "concurrent requests",
        Metric::Cost => "cost",
    };
    match limit.window {
        None => metric.to_owned(),
        Some(w) => match describe_period(w.period).as_str() {
            "minute" => format!("{metric} per min"),
            p => format!("{metric} per {p}"),
        },
    }
}

/// ` per end user` for a limit split by end user (the message names the
/// end user's own budget, never the end user).
fn per_end_user(limit: &Limit) -> &'static str {
    if limit.by.contains(&Fact::User) { " per end user" } else { "" }
}

fn limited_message(
    policy: &Policy,
    s: &LimitStatus,
    limit: &Limit,
    model: &str,
    tenant: &str,
    wait: std::time::Duration,
) -> String {
    let mut m = String::with_capacity(160);
    let wait = go_duration(ceil_millis(wait));
    let (model, tenant) = (echo(model), echo(tenant));
    let amount = |n| policy.format_amount(s.metric, n);
    let reached = if s.metric.is_money() { "Budget" } else { "Rate limit" };
    // Refused before its body was read: no model is known, and what it
    // would have asked for is not either.
    if model.is_empty() {
        let _ = if limit.metric == Metric::Concurrent {
            write!(
                m,
                "Too many concurrent requests in organization {tenant}: Limit {}, In flight {}. Please try again in {wait}.",
                s.amount, s.used
            )
        } else {
            write!(
                m,
                "{reached} reached in organization {tenant} on {} ({}){}: Limit {}, Used {}. Please try again in {wait}.",
                limit_phrase(limit),
                limit.shorthand(),
                per_end_user(limit),
                amount(s.amount),
                amount(s.used)
            )
        };
        return m;
    }
    let _ = if limit.metric == Metric::Concurrent {
        write!(
            m,
            "Too many concurrent requests{} for {model} in organization {tenant}: Limit {}, In flight {}. Please try again in {wait}.",
            per_end_user(limit),
            s.amount,
            s.used
        )
    } else {
        write!(
            m,
            "{reached} reached for {model} in organization {tenant} on {} ({}){}: Limit {}, Used {}, Requested {}. Please try again in {wait}.",
            limit_phrase(limit),
            limit.shorthand(),
            per_end_user(limit),
            amount(s.amount),
            amount(s.used),
            amount(s.requested)
        )
    };
    m
}

fn too_large_message(
    policy: &Policy,
    s: &LimitStatus,
    limit: &Limit,
    model: &str,
    tenant: &str,
) -> String {
    let advice = if s.metric.is_tokens() || s.metric.is_money() {
        "The input or output tokens must be reduced in order to run successfully."
    } else {
        "No request fits this limit; ask for the limit to be raised."
    };
    let (model, tenant) = (echo(model), echo(tenant));
    let shorthand = limit.shorthand();
    let short = if shorthand == "concurrent" { String::new() } else { format!(" ({shorthand})") };
    format!(
        "Request too large for {model} in organization {tenant} on {}{short}{}: Limit {}, Requested {}. {advice}",
        limit_phrase(limit),
        per_end_user(limit),
        policy.format_amount(s.metric, s.amount),
        policy.format_amount(s.metric, s.requested)
    )
}

/// A client string cut to [`MAX_ECHO`] bytes (at a character boundary).
fn echo(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_ECHO {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

#[cfg(test)]
mod tests;

//! The JSON decision API, for gateways without gRPC, and the one that can
//! reserve tokens before a request and settle them after.
//!
//! `POST /v1/decisions/check`
//!
//! ```json
//! {"tenant": "acme", "model": "llama-3.3-70b", "endpoint": "chat",
//!  "input_tokens": 120, "output_tokens": 512}
//! ```
//!
//! Facts: `tenant` (an id) and/or `api_key` (a client's key, looked up by
//! hash), `model`, `endpoint` (a name or a path; the configured default when
//! absent), `user` (the end user inside the tenant, OpenAI's `user`: limits
//! split by it or conditioned on it; `[end_users]` says whether it is
//! required and how long it may be), `domain` (the first configured domain
//! when absent). Cost: the
//! estimated `input_tokens` and `output_tokens` (whole numbers, default 0);
//! the request itself always counts one. The answer is 200 whether the
//! request is admitted or not:
//!
//! ```json
//! {"admitted": true, "outcome": "admitted", "reservation_id": "rsv_…",
//!  "limits": [{"name": "llama-3.3-70b/rpm", "metric": "requests", "amount": 10,
//!              "used": 1, "remaining": 9, "requested": 1, "reset_ms": 6000,
//!              "fits": true, "shadow": false}],
//!  "headers": {"x-ratelimit-limit-requests": "10", …}}
//! ```
//!
//! Denied: `"admitted": false`, `outcome` `limited` (with `retry_after_ms`)
//! or `too_large`, no reservation, and `error`: the OpenAI error object the
//! asking gateway should send in its 429 (with `headers`).
//!
//! `POST /v1/decisions/settle` with `{"reservation_id": "rsv_…",
//! "input_tokens": 98, "output_tokens": 310}` (and `"requests": 0` to refund
//! the request itself, e.g. when the upstream failed) answers
//! `{"settled": true}`, or `{"settled": false}` when the reservation was
//! already settled, has expired (its charge stays), or never existed. The
//! upstream's `cached_tokens` (of `input_tokens`, read from its cache) and
//! `reasoning_tokens` (of `output_tokens`) may be given too (default 0):
//! `[tokens] cached_input` and `reasoning` say whether they are charged.
//!
//! With `decisions.token_env`, both need `Authorization: Bearer <token>`
//! (401 otherwise). Bad input gets 400 (404 for an unknown model), in the
//! OpenAI error shape, and charges nothing. `GET /metrics` (Prometheus text)
//! and `GET /healthz` need no token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use serde_json::{Map, Value, json};
use sluice_core::{Cost, CounterStore, ReservationId, Settlement, Usage};
use sluice_llm::error::ApiError;
use tokio::net::TcpListener;

use crate::DecisionService;
use crate::engine::{Answer, DecisionError, Query};
use crate::metrics::{Api, CONTENT_TYPE as METRICS_CONTENT_TYPE};

/// The largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

type Body = Full<Bytes>;

/// Serves the JSON API on `listener` within `opts`' limits until `shutdown`
/// completes, then lets calls in flight finish (up to `opts.grace`) and
/// returns.
pub async fn serve_http<S: CounterStore + Clone + Unpin>(
    listener: TcpListener,
    svc: Arc<DecisionService<S>>,
    shutdown: impl Future<Output = ()>,
    opts: sluice_served::ListenerOptions,
) -> std::io::Result<()> {
    let service = service_fn(move |req| {
        let svc = svc.clone();
        async move { Ok::<_, Infallible>(handle(&svc, req).await) }
    });
    sluice_served::serve_connections(listener, service, shutdown, opts).await
}

/// Handles one request.
pub async fn handle<S: CounterStore + Clone + Unpin, B>(
    svc: &DecisionService<S>,
    req: Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/v1/decisions/check") | (&Method::POST, "/v1/decisions/settle") => {}
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(svc.metrics().encode())));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            return r;
        }
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (_, "/v1/decisions/check" | "/v1/decisions/settle") => {
            let mut r =
                error_response(&ApiError::unknown_url(req.method().as_str(), req.uri().path()));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        (m, p) => return error_response(&ApiError::unknown_url(m.as_str(), p)),
    }
    let settle = path.ends_with("/settle");
    let started = std::time::Instant::now();
    match svc.token_ok(sluice_served::auth::bearer(req.headers())) {
        None | Some(true) => {}
        Some(false) => {
            let e = if req.headers().contains_key(header::AUTHORIZATION) {
                ApiError::invalid_api_key()
            } else {
                ApiError::missing_api_key()
            };
            return error_response(&e);
        }
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(&ApiError::body_too_large(MAX_BODY as u64));
        }
        Err(_) => {
            return error_response(&ApiError::bad_request(
                "The request body could not be read.",
                None,
            ));
        }
    };
    let r = if settle { settle_call(svc, &body).await } else { check_call(svc, &body).await };
    if !settle {
        svc.metrics().observe(Api::Http, started.elapsed().as_secs_f64());
    }
    r
}

async fn check_call<S: CounterStore + Clone + Unpin>(
    svc: &DecisionService<S>,
    body: &[u8],
) -> Response<Body> {
    let default_domain = svc.config().domains.first().map_or("", String::as_str);
    let obj = match object(body, CHECK_FIELDS) {
        Ok(o) => o,
        Err(e) => return error_response(&svc.refused(Api::Http, default_domain, e).api_error()),
    };
    let fields = (|| {
        Ok::<_, DecisionError>((
            string(&obj, "domain")?,
            Query {
                tenant: string(&obj, "tenant")?,
                api_key: string(&obj, "api_key")?,
                model: string(&obj, "model")?,
                endpoint: string(&obj, "endpoint")?,
                cost: Cost::tokens(count(&obj, "input_tokens")?, count(&obj, "output_tokens")?),
                user: string(&obj, "user")?,
                max_wait: Duration::from_millis(count(&obj, "max_wait_ms")?),
            },
        ))
    })();
    let (domain, q) = match fields {
        Ok(f) => f,
        Err(e) => return error_response(&svc.refused(Api::Http, default_domain, e).api_error()),
    };
    match svc.check(domain.unwrap_or(default_domain), &q, Api::Http).await {
        Ok(answer) => json_response(StatusCode::OK, &check_body(&answer)),
        Err(e) => error_response(&e.api_error()),
    }
}

async fn settle_call<S: CounterStore + Clone + Unpin>(
    svc: &DecisionService<S>,
    body: &[u8],
) -> Response<Body> {
    let parsed = (|| {
        let obj = object(body, SETTLE_FIELDS)?;
        let id = reservation_id(&obj)?;
        let requests = match count(&obj, "requests")? {
            0 if obj.contains_key("requests") => 0,
            0 | 1 => 1,
            _ => {
                return Err(DecisionError::Malformed {
                    message: "`requests` is 1 (the request ran; the default) or 0 (refund it)"
                        .into(),
                    param: Some("requests"),
                });
            }
        };
        let reported = sluice_llm::Usage {
            input: count(&obj, "input_tokens")?,
            output: count(&obj, "output_tokens")?,
            cached_input: count(&obj, "cached_tokens")?,
            reasoning: count(&obj, "reasoning_tokens")?,
        };
        for (part, of, name, total) in [
            (reported.cached_input, reported.input, "cached_tokens", "input_tokens"),
            (reported.reasoning, reported.output, "reasoning_tokens", "output_tokens"),
        ] {
            if part > of {
                return Err(DecisionError::BadCost(format!(
                    "`{name}` ({part}) is a part of `{total}` ({of}): it cannot be more"
                )));
            }
        }
        crate::engine::check_cost(
            Cost::tokens(reported.input, reported.output),
            svc.config().max_cost,
        )?;
        let counting = svc.served().runtime().settings.tokens.counting;
        let usage = Usage { requests, ..sluice_served::settle::settled_usage(reported, counting) };
        Ok((id, usage))
    })();
    let (id, usage) = match parsed {
        Ok(p) => p,
        Err(e) => return error_response(&e.api_error()),
    };
    match svc.settle(id, usage).await {
        Ok(s) => json_response(StatusCode::OK, &json!({ "settled": s == Settlement::Settled })),
        Err(e) => error_response(&e.api_error()),
    }
}

/// The `reservation_id` of a settlement.
fn reservation_id(obj: &Map<String, Value>) -> Result<ReservationId, DecisionError> {
    let Some(Value::String(s)) = obj.get("reservation_id") else {
        return Err(malformed(
            "give the `reservation_id` that check returned",
            Some("reservation_id"),
        ));
    };
    s.parse::<ReservationId>().map_err(|()| {
        malformed(
            format!(
                "`{}` is not a reservation id (rsv_ and 32 hex digits, as check returned it)",
                crate::engine::echo(s)
            ),
            Some("reservation_id"),
        )
    })
}

const CHECK_FIELDS: &[&str] = &[
    "domain",
    "tenant",
    "api_key",
    "model",
    "endpoint",
    "user",
    "input_tokens",
    "output_tokens",
    "max_wait_ms",
];
const SETTLE_FIELDS: &[&str] = &[
    "reservation_id",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "requests",
];

fn malformed(message: impl Into<String>, param: Option<&'static str>) -> DecisionError {
    DecisionError::Malformed { message: message.into(), param }
}

/// The body as a JSON object with only `allowed` fields.
fn object(body: &[u8], allowed: &[&'static str]) -> Result<Map<String, Value>, DecisionError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let message = format!(
            "We could not parse the JSON body of your request ({e}). The API expects a JSON object."
        );
        malformed(message, None)
    })?;
    let Value::Object(obj) = v else {
        return Err(malformed("The body must be a JSON object.", None));
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(malformed(
            format!("unknown field `{}`; allowed: {}", crate::engine::echo(k), allowed.join(", ")),
            None,
        ));
    }
    Ok(obj)
}

fn param(name: &str) -> Option<&'static str> {
    CHECK_FIELDS.iter().chain(SETTLE_FIELDS).copied().find(|f| *f == name)
}

fn string<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, DecisionError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(malformed(format!("`{name}` must be a string"), param(name))),
    }
}

/// A whole number of at least 0 (0 when absent).
fn count(obj: &Map<String, Value>, name: &str) -> Result<u64, DecisionError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(v)
            } else if n.as_i64().is_some_and(|v| v < 0) || n.as_f64().is_some_and(|v| v < 0.0) {
                Err(DecisionError::BadCost(format!("`{name}` must not be negative, got {n}")))
            } else {
                Err(DecisionError::BadCost(format!("`{name}` must be a whole number, got {n}")))
            }
        }
        Some(_) => Err(malformed(format!("`{name}` must be a whole number"), param(name))),
    }
}

fn check_body(answer: &Answer) -> Value {
    let rt = answer.runtime();
    let limits: Vec<Value> = answer
        .decision
        .statuses
        .iter()
        .map(|s| {
            let name = rt.policy.limit(s.limit).map_or_else(String::new, |l| l.name.to_string());
            json!({
                "name": name,
                "metric": s.metric.as_str(),
                "amount": s.amount,
                "used": s.used,
                "remaining": s.remaining,
                "requested": s.requested,
                "reset_ms": s.reset.map(|r| millis(r.since(answer.now))),
                "fits": s.verdict == sluice_core::Verdict::Fits,
                "shadow": s.shadow,
            })
        })
        .collect();
    let headers: Map<String, Value> = answer
        .headers()
        .into_iter()
        .map(|(k, v)| {
            (k.as_str().to_owned(), Value::String(v.to_str().unwrap_or_default().to_owned()))
        })
        .collect();
    let mut out = json!({
        "admitted": answer.decision.is_admitted(),
        "outcome": answer.kind().as_str(),
        "reservation_id": answer.decision.reservation().map(|id| id.to_string()),
        "limits": limits,
        "headers": headers,
    });
    if let (sluice_core::Outcome::Limited { retry_at, .. }, Some(o)) =
        (answer.decision.outcome, out.as_object_mut())
    {
        o.insert("retry_after_ms".into(), json!(millis(retry_at.since(answer.now)).max(1)));
    }
    if let (false, Some(o)) = (answer.waited.is_zero(), out.as_object_mut()) {
        o.insert("waited_ms".into(), json!(millis(answer.waited)));
    }
    if let (Some(e), Some(o)) = (answer.error(), out.as_object_mut()) {
        o.insert(
            "error".into(),
            json!({ "message": e.message, "type": e.kind, "param": e.param, "code": e.code }),
        );
    }
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    e.response(|b| Full::new(Bytes::from(b)))
}

#[cfg(test)]
mod tests;

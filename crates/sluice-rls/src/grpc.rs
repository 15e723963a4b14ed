//! Envoy RLS v3: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//! over gRPC (tonic; the message types are `envoy-types`' ready-made ones).
//!
//! **Request -> facts.** Each descriptor entry whose key is one of
//! `[decisions.descriptors]` gives a fact: the tenant id, an API key (the
//! secret, or `Bearer <secret>` as Envoy copies it from `authorization`;
//! looked up by its hash), the model, the endpoint (a name, or a request
//! path such as `:path`), the end user inside the tenant. Other entries (`generic_key`, `remote_address`, …)
//! are ignored. The facts of all descriptors are united: two descriptors
//! that name different tenants (or keys, models, endpoints) are refused,
//! because one call decides one request.
//!
//! **Cost.** One request, plus tokens: the largest `hits_addend` given (the
//! request's, or a descriptor's own), 0 counting as 1 as in Envoy's own rate
//! limit service; `decisions.hits_addend` says whether it counts tokens (the
//! default), input tokens or output tokens. A negative hit (a refund) cannot
//! name what it refunds and is refused: settle through the JSON API.
//!
//! **One admission.** Every limit that applies to the united facts is
//! checked and charged, or none is; `overall_code` is `OVER_LIMIT` when the
//! request is denied. The reservation is released at once (Envoy never
//! reports usage), so `hits_addend` is the final charge and concurrency
//! limits are not held.
//!
//! **`DescriptorStatus`, one per descriptor.** A limit is *relevant* to a
//! descriptor when the descriptor carries every request fact the limit is
//! split by or conditioned on (model or model class: the model entry;
//! endpoint: the endpoint entry; key or key label: the API key entry; end
//! user: the user entry);
//! tenant-wide limits are relevant to every descriptor. Shadow limits are
//! never shown. A descriptor is `OVER_LIMIT` when a relevant limit had no
//! room, and then shows the limit that denied the request if it is relevant,
//! else the tightest of its relevant limits that had no room; otherwise it
//! is `OK` and shows the tightest relevant limit: the least share of its
//! amount remaining (ties: the one that resets last). A descriptor with no
//! relevant limit is `OK` with no `current_limit`. If a request is denied
//! and no descriptor has a relevant limit without room, every descriptor is
//! `OVER_LIMIT` (they were refused together). `current_limit` is the
//! limit's name and amount, with a unit when its window is one second,
//! minute, hour, day, week, month or year (`UNKNOWN` otherwise);
//! `limit_remaining` and `duration_until_reset` (until the limit is back to
//! full) are the state at admission.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue as PbHeader;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use sluice_config::decisions::HitsAddend;
use sluice_core::{Cost, CounterStore, LimitStatus, Outcome, Period, Verdict};
use sluice_llm::error::ApiError;
use sluice_served::ListenerOptions;
use sluice_served::edge::RequestBody;
use tokio::net::TcpListener;

use crate::engine::{Answer, DecisionError, Query, needs};
use crate::metrics::Api;
use crate::{DecisionService, ServeError};

/// Serves `ShouldRateLimit` on `listener` (HTTP/2, through Sluice's
/// hardened accept loop: `opts`' timeouts and caps) until `shutdown`
/// completes, then lets calls in flight finish for up to `opts.grace` and
/// returns.
pub async fn serve_grpc<S: CounterStore + Clone + Unpin>(
    listener: TcpListener,
    svc: Arc<DecisionService<S>>,
    shutdown: impl Future<Output = ()>,
    opts: ListenerOptions,
) -> Result<(), ServeError> {
    let server = RateLimitServiceServer::new(Rls(svc));
    let service = hyper::service::service_fn(move |req: http::Request<RequestBody>| {
        let mut server = server.clone();
        async move { tower_service::Service::call(&mut server, req).await }
    });
    sluice_served::serve_connections(listener, service, shutdown, opts).await?;
    Ok(())
}

/// The tonic service.
struct Rls<S>(Arc<DecisionService<S>>);

#[tonic::async_trait]
impl<S: CounterStore + Clone + Unpin> RateLimitService for Rls<S> {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let started = std::time::Instant::now();
        let req = request.get_ref();
        if tracing::enabled!(tracing::Level::TRACE) {
            // Entry keys only: values may be API keys.
            let shape: Vec<(Vec<&str>, Option<u64>)> = req
                .descriptors
                .iter()
                .map(|d| {
                    let keys = d.entries.iter().map(|e| e.key.as_str()).collect();
                    (keys, d.hits_addend.map(|h| h.value))
                })
                .collect();
            tracing::trace!(
                domain = %req.domain,
                hits_addend = req.hits_addend,
                descriptors = ?shape,
                "ShouldRateLimit"
            );
        }
        // The caller: the token in `authorization` metadata.
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v));
        if self.0.token_ok(presented) == Some(false) {
            self.0.metrics().decision(
                Api::Grpc,
                self.0.domain_label(&req.domain),
                "unauthenticated",
            );
            return Err(tonic::Status::unauthenticated(
                "send the decision service's token as `authorization: Bearer <token>` metadata",
            ));
        }
        let result = match self.0.missing_model(req) {
            Some(e) => Err(self.0.refused(Api::Grpc, &req.domain, e)),
            None => self.0.should_rate_limit(req).await,
        };
        self.0.metrics().observe(Api::Grpc, started.elapsed().as_secs_f64());
        match result {
            Ok(r) => Ok(tonic::Response::new(r)),
            // A request whose facts map to no tenant, key, model or
            // endpoint is denied, not an error: Envoy lets an error through
            // when it fails open.
            Err(e) if e.is_about_the_request() => {
                tracing::debug!(error = %e, "ShouldRateLimit denied");
                Ok(tonic::Response::new(denial(req, &e)))
            }
            Err(e) => {
                tracing::debug!(error = %e, "ShouldRateLimit refused");
                Err(e.grpc_status())
            }
        }
    }
}

/// The answer to a request that cannot be decided from its facts: every
/// descriptor `OVER_LIMIT`, and Envoy's 429 carries a body that says why.
fn denial(req: &RateLimitRequest, e: &DecisionError) -> RateLimitResponse {
    let status = DescriptorStatus { code: Code::OverLimit as i32, ..DescriptorStatus::default() };
    let body = e.api_error();
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![status; req.descriptors.len().max(1)],
        response_headers_to_add: vec![PbHeader {
            key: "content-type".into(),
            value: ApiError::CONTENT_TYPE.into(),
            raw_value: Vec::new(),
        }],
        raw_body: body.body(),
        ..RateLimitResponse::default()
    }
}

impl<S: CounterStore + Clone + Unpin> DecisionService<S> {
    /// Over gRPC a request must name its model: without one, no per-model
    /// limit could apply, so leaving it out would skip them all.
    fn missing_model(&self, req: &RateLimitRequest) -> Option<DecisionError> {
        if !self.config().domains.contains(&req.domain) {
            // The unknown domain is the error to report.
            return None;
        }
        let key = &self.config().descriptors.model;
        let named = req
            .descriptors
            .iter()
            .any(|d| d.entries.iter().any(|e| e.key == *key && !e.value.trim().is_empty()));
        (!named).then(|| DecisionError::NoModel { model_key: key.clone() })
    }
}

/// What one descriptor carries (bits of [`needs`]).
type Carried = u8;

/// The facts of a request's descriptors, united.
#[derive(Default)]
struct Facts<'a> {
    tenant: Option<&'a str>,
    api_key: Option<&'a str>,
    model: Option<&'a str>,
    endpoint: Option<&'a str>,
    user: Option<&'a str>,
    carried: Vec<Carried>,
    hits: u64,
}

fn unite<'a>(
    slot: &mut Option<&'a str>,
    value: &'a str,
    what: &'static str,
) -> Result<(), DecisionError> {
    // API keys are secrets, end users personal data: never echoed.
    let shown = |s: &str| {
        if matches!(what, "API key" | "end user") {
            "(hidden)".to_owned()
        } else {
            crate::engine::echo(s)
        }
    };
    match *slot {
        Some(v) if v != value => {
            Err(DecisionError::Conflict { what, first: shown(v), second: shown(value) })
        }
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

fn facts<'a>(
    req: &'a RateLimitRequest,
    keys: &sluice_config::decisions::DescriptorKeys,
) -> Result<Facts<'a>, DecisionError> {
    if req.descriptors.is_empty() {
        return Err(DecisionError::Malformed {
            message: "a rate limit request needs at least one descriptor".into(),
            param: None,
        });
    }
    let mut f = Facts { hits: u64::from(req.hits_addend), ..Facts::default() };
    for d in &req.descriptors {
        let mut carried = 0;
        for e in &d.entries {
            let k = e.key.as_str();
            if k == keys.tenant {
                unite(&mut f.tenant, &e.value, "tenant")?;
            } else if k == keys.api_key {
                unite(&mut f.api_key, &e.value, "API key")?;
                carried |= needs::KEY;
            } else if k == keys.model {
                unite(&mut f.model, &e.value, "model")?;
                carried |= needs::MODEL;
            } else if k == keys.endpoint {
                unite(&mut f.endpoint, &e.value, "endpoint")?;
                carried |= needs::ENDPOINT;
            } else if k == keys.user {
                unite(&mut f.user, &e.value, "end user")?;
                carried |= needs::USER;
            }
        }
        if let Some(h) = &d.hits_addend {
            if d.is_negative_hits {
                return Err(DecisionError::BadCost(
                    "a negative hits_addend (a refund) cannot say which request it refunds: reserve and settle through the JSON API instead".into(),
                ));
            }
            f.hits = f.hits.max(h.value);
        }
        f.carried.push(carried);
    }
    Ok(f)
}

impl<S: CounterStore + Clone + Unpin> DecisionService<S> {
    /// Answers one `ShouldRateLimit`.
    pub async fn should_rate_limit(
        &self,
        req: &RateLimitRequest,
    ) -> Result<RateLimitResponse, DecisionError> {
        let f = facts(req, &self.config().descriptors)
            .map_err(|e| self.refused(Api::Grpc, &req.domain, e))?;
        // Envoy's rule: no hits_addend (0) means one hit.
        let hits = f.hits.max(1);
        if hits > self.config().max_cost {
            let e = DecisionError::BadCost(format!(
                "a hits_addend of {hits} is more than one decision may carry ({} at most)",
                self.config().max_cost
            ));
            return Err(self.refused(Api::Grpc, &req.domain, e));
        }
        let cost = match self.config().hits_addend {
            HitsAddend::Tokens | HitsAddend::InputTokens => Cost::tokens(hits, 0),
            HitsAddend::OutputTokens => Cost::tokens(0, hits),
        };
        let q = Query {
            tenant: f.tenant,
            api_key: f.api_key,
            model: f.model,
            endpoint: f.endpoint,
            cost,
            user: f.user,
            // Envoy gives its rate limit call milliseconds: never wait.
            max_wait: std::time::Duration::ZERO,
        };
        let answer = self.check(&req.domain, &q, Api::Grpc).await?;
        if let Some(id) = answer.decision.reservation() {
            // Envoy never reports usage: the hits are the final charge.
            self.served().store.release(id);
        }
        Ok(response(&answer, &f.carried, |i| answer.index.needs(i)))
    }
}

/// Builds the response for a decided call.
fn response(
    answer: &Answer,
    carried: &[Carried],
    needs: impl Fn(usize) -> u8,
) -> RateLimitResponse {
    let d = &answer.decision;
    let admitted = d.is_admitted();
    let denied_by = match d.outcome {
        Outcome::Limited { limit, .. } | Outcome::TooLarge { limit } => Some(limit),
        Outcome::Admitted { .. } => None,
    };
    let mut statuses: Vec<DescriptorStatus> = carried
        .iter()
        .map(|&c| {
            let relevant = d
                .statuses
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.shadow && needs(s.limit.index()) & !c == 0);
            let failing = relevant.clone().filter(|(_, s)| s.verdict != Verdict::Fits);
            let (code, shown) = if admitted {
                (Code::Ok, tightest(relevant))
            } else if let Some(i) = denied_by.filter(|&i| failing.clone().any(|(j, _)| j == i)) {
                (Code::OverLimit, d.statuses.get(i))
            } else if let Some(s) = tightest(failing) {
                (Code::OverLimit, Some(s))
            } else {
                (Code::Ok, tightest(relevant))
            };
            descriptor_status(answer, code, shown)
        })
        .collect();
    if !admitted && statuses.iter().all(|s| s.code != Code::OverLimit as i32) {
        statuses.iter_mut().for_each(|s| s.code = Code::OverLimit as i32);
    }
    let mut response_headers_to_add: Vec<PbHeader> = answer
        .headers()
        .into_iter()
        .map(|(k, v)| PbHeader {
            key: k.as_str().to_owned(),
            value: v.to_str().unwrap_or_default().to_owned(),
            raw_value: Vec::new(),
        })
        .collect();
    // A denial: Envoy's 429 carries the OpenAI-shaped body, as JSON.
    let raw_body = answer.error().map(|e| e.body()).unwrap_or_default();
    if !raw_body.is_empty() {
        response_headers_to_add.push(PbHeader {
            key: "content-type".into(),
            value: ApiError::CONTENT_TYPE.into(),
            raw_value: Vec::new(),
        });
    }
    RateLimitResponse {
        overall_code: if admitted { Code::Ok } else { Code::OverLimit } as i32,
        statuses,
        response_headers_to_add,
        raw_body,
        ..RateLimitResponse::default()
    }
}

/// The status with the least share of its amount remaining; ties: the one
/// that resets last.
fn tightest<'a>(
    statuses: impl Iterator<Item = (usize, &'a LimitStatus)>,
) -> Option<&'a LimitStatus> {
    statuses.map(|(_, s)| s).min_by(|a, b| {
        let left_a = u128::from(a.remaining) * u128::from(b.amount.max(1));
        let left_b = u128::from(b.remaining) * u128::from(a.amount.max(1));
        left_a.cmp(&left_b).then(b.reset.cmp(&a.reset))
    })
}

fn descriptor_status(answer: &Answer, code: Code, shown: Option<&LimitStatus>) -> DescriptorStatus {
    let Some(s) = shown else {
        return DescriptorStatus { code: code as i32, ..DescriptorStatus::default() };
    };
    let limit = answer.runtime().policy.limit(s.limit);
    let unit = limit.and_then(|l| l.window).map_or(Unit::Unknown, |w| unit(w.period));
    DescriptorStatus {
        code: code as i32,
        current_limit: limit.map(|l| RateLimit {
            name: l.name.to_string(),
            requests_per_unit: u32::try_from(s.amount).unwrap_or(u32::MAX),
            unit: unit as i32,
        }),
        limit_remaining: u32::try_from(s.remaining).unwrap_or(u32::MAX),
        duration_until_reset: s.reset.map(|r| pb_duration(r.since(answer.now))),
        quota: None,
    }
}

/// The RLS unit of a window of exactly one unit.
fn unit(p: Period) -> Unit {
    match p {
        Period::Seconds(s) => match s.get() {
            1 => Unit::Second,
            60 => Unit::Minute,
            3_600 => Unit::Hour,
            86_400 => Unit::Day,
            604_800 => Unit::Week,
            _ => Unit::Unknown,
        },
        Period::Months(m) => match m.get() {
            1 => Unit::Month,
            12 => Unit::Year,
            _ => Unit::Unknown,
        },
    }
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;

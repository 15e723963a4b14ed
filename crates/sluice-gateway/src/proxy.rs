//! One request through the gateway: auth -> facts -> admit -> forward ->
//! settle. Every early exit happens before admission (so bad input never
//! charges anyone) or settles what was admitted.

use std::sync::Arc;

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice_core::policy::Model;
use sluice_core::{Clock, Cost, CounterStore, Decision, Outcome, Plan, RequestEvent, Step, Usage};
use sluice_llm::error::ApiError;
use sluice_llm::headers::{HeaderOptions, insert_headers, is_rate_limit_header};
use sluice_llm::request::EndpointKind;
use sluice_llm::usage::SseUsageTap;
use sluice_llm::{RewriteOptions, expected_output, force_include_usage};
use sluice_served::edge::{BodyError, RequestBody};

use crate::access_log::AccessRecord;
use crate::body::{JsonFrames, Metered, OutputCut, ResponseBody, Tap, full};
use crate::hop;
use crate::reservation::{Ending, FailureCost, Meter, Reservation, UsageNote};
use crate::server::Gateway;
use crate::upstream::SendError;
use sluice_served::auth::AuthError;
use sluice_served::runtime::{Endpoint, KeyEntry, Route, Runtime, Tenant};

/// Bodies larger than this are tokenized off the async runtime.
const INLINE_TOKENIZE_BYTES: usize = 32 * 1024;

/// Bodies (or prompts) larger than this cost more to read (or count) than a
/// store call: a tenant that was just refused gets a dry run first.
const EXPENSIVE_BODY_BYTES: usize = 32 * 1024;

/// The `Content-Length` of a request, if it has a valid one.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus
/// those the gateway sets itself. Those `Connection` nominates go too
/// ([`hop::strip`]).
fn skip_request_header(name: &HeaderName) -> bool {
    hop::fixed(name)
        || matches!(name.as_str(), "host" | "authorization" | "content-length" | "x-request-id")
}

fn skip_response_header(name: &HeaderName) -> bool {
    hop::fixed(name) || matches!(name.as_str(), "content-length" | "x-request-id")
}

pub(crate) fn error_response(e: &ApiError) -> Response<ResponseBody> {
    e.response(full)
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Serves `GET /v1/models`: the models this tenant's tier may use.
pub(crate) fn models<S: CounterStore>(
    gw: &Gateway<S>,
    rt: &Runtime,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    let tenant = match authenticate(rt, headers, gw.clock.now()) {
        Ok(k) => &rt.tenants[k.tenant],
        Err(e) => {
            gw.key_refused();
            return error_response(&e);
        }
    };
    let tier = tenant.facts.tier();
    let data: Vec<serde_json::Value> = rt
        .policy
        .models()
        .filter(|(_, m)| rt.policy.model_allowed(tier, rt.policy.model_ref(&m.name)))
        .map(|(_, m)| {
            serde_json::json!({
                "id": &*m.name,
                "object": "model",
                "created": 0,
                "owned_by": rt.owners.get(&*m.name).map_or("sluice", String::as_str),
            })
        })
        .collect();
    let body = serde_json::json!({ "object": "list", "data": data });
    json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Missing => ApiError::missing_api_key(),
        AuthError::Unknown => ApiError::invalid_api_key(),
    }
}

/// The key of a request, if it is known and has not expired.
pub(crate) fn authenticate<'r>(
    rt: &'r Runtime,
    headers: &HeaderMap,
    now: sluice_core::Instant,
) -> Result<&'r KeyEntry, ApiError> {
    let key = rt.keys.authenticate(headers).map_err(auth_error)?;
    if key.expires.is_some_and(|e| now >= e) {
        return Err(ApiError::invalid_api_key());
    }
    Ok(key)
}

/// Reads a request body, refusing more than `limit` bytes. A body that comes
/// in one frame (a small request's usual case) is kept as it is, not copied.
async fn read_body(mut body: RequestBody, limit: usize) -> Result<Bytes, ApiError> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e {
            BodyError::Busy => ApiError::busy(),
            _ => ApiError::bad_request("The request body could not be read.", None),
        })?;
        let Ok(data) = frame.into_data() else { continue };
        len += data.len();
        if len > limit {
            return Err(ApiError::body_too_large(limit as u64));
        }
        match (&first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut all = BytesMut::with_capacity(len.max(f.len() * 2));
                all.extend_from_slice(f);
                all.extend_from_slice(&data);
                more = Some(all);
            }
            (Some(_), Some(all)) => all.extend_from_slice(&data),
        }
    }
    Ok(match (first, more) {
        (_, Some(all)) => all.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// What a request came to, as far as the gateway's metrics and access log
/// go: filled in as it is learnt.
#[derive(Debug)]
pub(crate) struct Trace<'r> {
    /// When it arrived.
    pub(crate) arrived: std::time::Instant,
    /// The same, as a time of day, when there is an access log.
    pub(crate) time: Option<jiff::Timestamp>,
    /// The tenant (its key was accepted).
    pub(crate) tenant: Option<&'r Tenant>,
    /// Its key.
    pub(crate) key: Option<&'r KeyEntry>,
    /// Its tier.
    pub(crate) tier: Option<sluice_core::TierId>,
    /// The model, as the policy names it.
    pub(crate) model: Option<sluice_core::ModelId>,
    /// Input and output tokens as estimated.
    pub(crate) estimated: Option<(u64, u64)>,
    /// The limit that refused it.
    pub(crate) denied: Option<sluice_core::LimitId>,
    /// How long its admission took.
    pub(crate) admission: Option<std::time::Duration>,
    /// Admitted: its reservation writes its access-log line.
    pub(crate) handed_off: bool,
}

impl Trace<'_> {
    /// A request arriving now; `logged`: there is an access log.
    pub(crate) fn new(logged: bool) -> Self {
        Self {
            arrived: std::time::Instant::now(),
            time: logged.then(jiff::Timestamp::now),
            tenant: None,
            key: None,
            tier: None,
            model: None,
            estimated: None,
            denied: None,
            admission: None,
            handed_off: false,
        }
    }

    /// Its access-log line as far as it is known (status and duration to
    /// be filled in).
    pub(crate) fn record(
        &self,
        rt: &Runtime,
        endpoint: &Endpoint,
        request_id: &HeaderValue,
    ) -> AccessRecord {
        let limit = self.denied.and_then(|l| rt.policy.limit(l));
        AccessRecord {
            time: self.time.map(|t| t.to_string()).unwrap_or_default(),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            tenant: self.tenant.map(|t| t.facts.id().to_owned()),
            key_id: self.key.map(|k| k.id.clone()),
            endpoint: endpoint.name.clone(),
            model: self.model.and_then(|m| rt.policy.model_info(m)).map(|m| m.name.to_string()),
            estimated_input_tokens: self.estimated.map(|e| e.0),
            estimated_output_tokens: self.estimated.map(|e| e.1),
            denied_by: limit.map(|l| l.name.to_string()),
            admission_ms: self.admission.map(crate::access_log::ms),
            ..AccessRecord::default()
        }
    }
}

/// A proxied request, from the moment its endpoint is known.
pub(crate) async fn proxy<'r, S: CounterStore + Clone + Unpin>(
    gw: &Arc<Gateway<S>>,
    rt: &'r Runtime,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
    request_id: &HeaderValue,
    trace: &mut Trace<'r>,
) -> Response<ResponseBody> {
    if req.method() != Method::POST {
        let mut r = error_response(&ApiError::unknown_url(req.method().as_str(), req.uri().path()));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    // Who: 401 before anything is read or counted.
    let key = match authenticate(rt, req.headers(), gw.clock.now()) {
        Ok(k) => k,
        Err(e) => {
            gw.key_refused();
            return error_response(&e);
        }
    };
    let tenant = &rt.tenants[key.tenant];
    trace.tenant = Some(tenant);
    trace.key = Some(key);
    trace.tier = Some(tenant.facts.tier());
    let opts = HeaderOptions { no_retry_after: rt.settings.no_retry_after };
    let (mut parts, body) = req.into_parts();

    // A tenant just refused, sending a body worth not reading: check first
    // what can be known without it (tenant-wide and per-endpoint limits,
    // concurrency, a day's budget spent), as a dry run at the least any
    // request costs. (A small body costs less to read than a store call.)
    if tenant.recently_refused(gw.clock.now())
        && declared_length(&parts.headers).is_none_or(|n| n > EXPENSIVE_BODY_BYTES)
    {
        let now = gw.clock.now();
        let head = sluice_core::Ask {
            tenant: &tenant.facts,
            key: Some(&key.facts),
            endpoint: endpoint.id,
            model: sluice_core::ModelRef::NONE,
            cost: Cost::tokens(1, 0),
            end_user: sluice_core::EndUser::NONE,
        };
        let plan = rt.policy.plan_before_body(&head, now);
        if let Some(refused) =
            refuse_early(gw, rt, tenant, &plan, ("", None), &opts, &mut trace.denied).await
        {
            drain(body, rt.settings.max_body_bytes);
            return refused;
        }
    }

    let body = match read_body(body, rt.settings.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let kind = endpoint.kind;
    let facts = match sluice_llm::request::parse(kind, &body) {
        Ok(f) => f,
        Err(e) => return error_response(&ApiError::from(&e)),
    };
    // The end user inside the tenant: a hash of the header's value or the
    // body's `user`, never kept, logged or made a metric label.
    let end_users = &rt.settings.end_users;
    let named = match &end_users.header {
        Some(h) => parts.headers.get(h.as_str()).map(HeaderValue::as_bytes),
        None => facts.user.as_deref().map(str::as_bytes),
    };
    let end_user = match end_users.end_user(named) {
        Ok(u) => u,
        Err(e) => {
            let message = e.message(&end_users.source());
            return error_response(&ApiError::bad_request(message, Some("user".into())));
        }
    };
    let model = rt.policy.model_ref(&facts.model);
    let route = match model.id.and_then(|m| rt.routes.get(&m)) {
        Some(r) if rt.policy.model_allowed(tenant.facts.tier(), model) => r,
        _ => return error_response(&ApiError::model_not_found(&facts.model)),
    };
    // The model as the policy names it (the route was found: it has one).
    let model_info = model.id.and_then(|m| rt.policy.model_info(m));
    trace.model = model.id;
    let stream = facts.stream && kind.streams_usage();
    let client_asked_usage = facts.include_usage;
    // What a hard limit needs: the output the client asked for, if it did,
    // and how many choices share it.
    let asked_output = facts.max_completion_tokens.or(facts.max_tokens);
    let choices = facts.choices();

    // The output it may ask for; the plan, at the least input it can have.
    let tokens = &rt.settings.tokens;
    let output = if kind.has_output() {
        expected_output(&facts, tokens.default_output, tokens.max_output)
    } else {
        0
    };
    let mut request = sluice_core::Ask {
        tenant: &tenant.facts,
        key: Some(&key.facts),
        endpoint: endpoint.id,
        model,
        cost: Cost::tokens(1, output),
        end_user,
    };
    let mut now = gw.clock.now();
    let mut plan = rt.policy.plan(&request, now);
    // A long prompt, and a tenant just refused: still refused on this model
    // (its own requests per minute or day)? Then not a token is counted.
    if facts.text_bytes() > EXPENSIVE_BODY_BYTES
        && tenant.recently_refused(now)
        && plan.charges.iter().any(|c| rt.policy.limit(c.limit).is_some_and(|l| l.needs_body()))
        && let Some(refused) = refuse_early(
            gw,
            rt,
            tenant,
            &plan,
            (&facts.model, model_info),
            &opts,
            &mut trace.denied,
        )
        .await
    {
        return refused;
    }

    // The prompt, counted no further than any limit could ever admit.
    let ceiling = plan.input_token_ceiling(output).unwrap_or(u64::MAX);
    let estimator = gw.estimator.with_exact_bytes(tokens.exact_prompt_bytes);
    let (input, model_name) = if body.len() > INLINE_TOKENIZE_BYTES {
        let name = Cow::Owned(facts.model.to_string());
        let owned = facts.into_owned();
        let encoding = route.encoding;
        // Should the task fail, the byte estimate stands in.
        let fallback = sluice_llm::tokens::bytes_estimate(owned.text_bytes(), None);
        let input = tokio::task::spawn_blocking(move || {
            estimator.input_tokens_up_to(&owned, encoding, ceiling)
        })
        .await
        .unwrap_or(fallback);
        // Counting took a while: plan for the time it is admitted.
        now = gw.clock.now();
        (input, name)
    } else {
        (
            estimator.input_tokens_up_to(&facts, route.encoding, ceiling),
            Cow::Borrowed(&*facts.model),
        )
    };
    // Every request counts at least one input token (so that what was
    // checked before the body, at one token, is never more than this).
    let input = input.max(1);
    trace.estimated = Some((input, output));
    let cost = Cost::tokens(input, output);
    request.cost = cost;
    if now == plan.now {
        plan.set_cost(cost);
    } else {
        plan = rt.policy.plan(&request, now);
    }

    // Admission: every limit, all or nothing.
    // Concurrency slots in a shared store are held for a short lease, which
    // the reservation renews while the request runs (Reservation::keep_slots).
    let slot_lease = gw.store.slot_lease().filter(|_| plan.holds_slots());
    let with_slot_lease = |mut plan: sluice_core::Plan| {
        if let Some(lease) = slot_lease {
            let until =
                plan.now.0.saturating_add(u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX));
            plan.slots_until = sluice_core::Instant(until.min(plan.lease_until.0));
        }
        plan
    };
    plan = with_slot_lease(plan);
    // (The store logs its failures, once per interval.)
    let asked = std::time::Instant::now();
    let admitted = gw.store.admit(&plan).await;
    let took = asked.elapsed();
    trace.admission = Some(took);
    if let Some(m) = crate::metrics::of(rt) {
        m.admission(took.as_secs_f64());
    }
    let Ok(mut decision) = admitted else {
        return error_response(&ApiError::store_unavailable());
    };
    // Refused by limits that allow a short wait: wait in the tenant's line
    // for the instant the refusal names, then ask again.
    let mut waited = None;
    if !decision.is_admitted() {
        let wait = rt
            .policy
            .allowed_wait(tenant.facts.tier(), &decision)
            .min(client_max_wait(&parts.headers));
        if !wait.is_zero() {
            let result = gw
                .queue
                .wait_for_room(
                    sluice_store::Waiter { tenant: tenant.facts.hash(), bytes: body.len(), wait },
                    (&gw.store, &*gw.clock, &sluice_store::TokioPause),
                    decision,
                    |at| with_slot_lease(rt.policy.plan(&request, at)),
                )
                .await;
            let Ok(w) = result else {
                return error_response(&ApiError::store_unavailable());
            };
            decision = w.decision;
            now = gw.clock.now();
            waited = Some(w.waited);
        }
    }
    if !decision.is_admitted() {
        trace.denied = decision.denied_by().map(|s| s.limit);
        let mut r = refusal(gw, rt, tenant, &decision, (&model_name, model_info), now, &opts);
        if let Some(w) = waited {
            r.headers_mut().insert(WAITED_MS, waited_value(w));
        }
        return r;
    }
    gw.record(&event(tenant, model_info, Step::Admitted));
    // Under a hard limit the output is cut at what was reserved: the
    // upstream is told (a request that named no maximum gets the one it
    // was reserved at), and a stream is ended there should it go on.
    let hard = kind.has_output() && plan.charges.iter().any(|c| c.hard && !c.shadow);
    let add_max = match (hard, asked_output, kind) {
        (true, None, EndpointKind::ChatCompletions | EndpointKind::Completions) => {
            Some(("max_tokens", output / choices.max(1)))
        }
        (true, None, EndpointKind::Other) => Some(("max_output_tokens", output)),
        _ => None,
    };
    let reserved = Usage::tokens(input, output);
    let failure = FailureCost::new(rt.settings.upstream_failure, &rt.settings.refund_statuses);
    let mut reservation = Reservation::new(
        gw.store.clone(),
        decision.reservation(),
        input,
        reserved,
        failure,
        tokens.counting,
    );
    if slot_lease.is_some() {
        reservation.keep_slots();
    }
    if let (Some(sink), Some(m)) = (gw.event_sink(), model_info) {
        reservation.noting(UsageNote::new(sink, &tenant.facts, m));
    }
    if let (Some(meters), Some(m)) = (crate::metrics::shared(rt), model.id) {
        let mut meter = Meter::new(meters, &tenant.facts, m);
        if trace.time.is_some() {
            let record = trace.record(rt, endpoint, request_id);
            meter.log(Box::new(record), trace.arrived);
            trace.handed_off = true;
        }
        reservation.metered(meter);
    }

    // Forward (to this gateway's client: a runtime built by another
    // connector has none, and is answered as an upstream without a URI).
    let upstream = crate::upstream::client(&*rt.upstreams[route.upstream]);
    let cut = (hard && stream).then(|| OutputCut {
        output,
        choices,
        model: model_name.to_string(),
        id: request_id.to_str().unwrap_or("req").to_owned(),
        input,
        usage: client_asked_usage,
    });
    let upstream_body = match upstream_body(body, stream, route, add_max) {
        Ok(b) => b,
        Err(e) => {
            reservation.answered(e.status);
            reservation.end(Ending::NotForwarded);
            return error_response(&e);
        }
    };
    // Without a query, the path is the endpoint's: its URI was made once.
    let uri = match parts.uri.path_and_query().filter(|p| p.query().is_some()) {
        Some(with_query) => upstream.and_then(|u| u.uri(with_query.as_str())),
        None => endpoint.upstream_uris.get(route.upstream).cloned().flatten(),
    };
    let (Some(upstream), Some(uri)) = (upstream, uri) else {
        reservation.answered(StatusCode::BAD_GATEWAY);
        reservation.end(Ending::NotForwarded);
        return error_response(&ApiError::upstream_error());
    };
    let mut up = Request::new(Full::new(upstream_body));
    *up.method_mut() = Method::POST;
    *up.uri_mut() = uri;
    // The client's headers, less those of this hop.
    let h = up.headers_mut();
    *h = std::mem::take(&mut parts.headers);
    hop::strip(h, skip_request_header);
    if let Some(auth) = upstream.auth() {
        h.insert(header::AUTHORIZATION, auth.clone());
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(HeaderName::from_static("x-request-id"), request_id.clone());

    reservation.upstream_sent();
    let sent = upstream.send(up).await;
    if let Ok(r) = &sent {
        reservation.upstream_head(r.status());
    }
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
            let err = match e {
                SendError::Timeout(_) => ApiError::upstream_timeout(),
                SendError::Unreachable(_) => ApiError::upstream_error(),
            };
            reservation.answered(err.status);
            reservation.end(Ending::UpstreamFailed { status: err.status });
            let mut r = error_response(&err);
            insert_headers(r.headers_mut(), &decision, &rt.policy, now, &opts);
            return r;
        }
    };
    let (mut head, upstream_body) = response.into_parts();
    let ok = head.status.is_success();
    let is_sse = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let tap = if !ok {
        Tap::Failed(head.status)
    } else if is_sse {
        Tap::Sse(Box::new(
            SseUsageTap::new(stream && !client_asked_usage).with_encoding(route.encoding),
        ))
    } else {
        Tap::Json(JsonFrames::default())
    };
    let mut body = Metered::new(upstream_body, tap, reservation, gw.background.clone());
    if let Some(cut) = cut {
        body.cut_at(cut);
    }
    let mut r = Response::new(body.boxed());
    *r.status_mut() = head.status;
    // The upstream's headers, less those of this hop and its own rate limits.
    let out = r.headers_mut();
    *out = std::mem::take(&mut head.headers);
    hop::strip(out, |n| skip_response_header(n) || is_rate_limit_header(n));
    insert_headers(out, &decision, &rt.policy, now, &opts);
    if let Some(w) = waited {
        out.insert(WAITED_MS, waited_value(w));
    }
    r
}

/// `x-sluice-max-wait-ms`: the longest a client lets its request wait for
/// room (it can only shorten the policy's `max_wait`).
const MAX_WAIT_MS: HeaderName = HeaderName::from_static("x-sluice-max-wait-ms");
/// `x-sluice-waited-ms`: how long a request waited for room.
const WAITED_MS: HeaderName = HeaderName::from_static("x-sluice-waited-ms");

/// The client's own limit on waiting, if it gave one (none: no limit).
fn client_max_wait(headers: &HeaderMap) -> std::time::Duration {
    headers
        .get(&MAX_WAIT_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(std::time::Duration::MAX, std::time::Duration::from_millis)
}

fn waited_value(w: std::time::Duration) -> HeaderValue {
    HeaderValue::from(u64::try_from(w.as_millis()).unwrap_or(u64::MAX))
}

/// What the usage history (and whatever else counts requests) is told.
fn event<'a>(tenant: &'a Tenant, model: Option<&'a Model>, step: Step<'a>) -> RequestEvent<'a> {
    RequestEvent {
        tenant: tenant.facts.shared_id(),
        tenant_hash: tenant.facts.hash(),
        model: model.map_or(RequestEvent::no_model(), |m| &m.name),
        model_hash: model.map_or(0, |m| m.hash),
        step,
    }
}

/// The 429 for a refused decision; a refusal that will stand for a while
/// makes the tenant's next requests checked before their bodies are read.
/// `model`: as the client wrote it (for the message), and as the policy
/// names it (empty before the body was read).
fn refusal<S: CounterStore>(
    gw: &Gateway<S>,
    rt: &Runtime,
    tenant: &Tenant,
    decision: &Decision,
    (model, model_info): (&str, Option<&Model>),
    now: sluice_core::Instant,
    opts: &HeaderOptions,
) -> Response<ResponseBody> {
    if let Outcome::Limited { retry_at, .. } = decision.outcome {
        tenant.note_refusal(retry_at);
    }
    if let Some(denied) = decision.denied_by()
        && let Some(limit) = rt.policy.limit(denied.limit)
    {
        let step = Step::Refused { limit: &limit.name };
        gw.record(&event(tenant, model_info, step));
        if let Some(m) = crate::metrics::of(rt) {
            m.denial(denied.limit, tenant.facts.shared_id());
        }
    }
    let err = ApiError::rate_limited(decision, &rt.policy, model, tenant.facts.id(), now)
        .unwrap_or_else(ApiError::insufficient_quota);
    let mut r = error_response(&err);
    insert_headers(r.headers_mut(), decision, &rt.policy, now, opts);
    r
}

/// A dry run of `plan` (nothing is charged): the 429 if it is refused. A
/// store that does not answer refuses nothing here: the admission decides.
async fn refuse_early<S: CounterStore + Clone + Unpin>(
    gw: &Gateway<S>,
    rt: &Runtime,
    tenant: &Tenant,
    plan: &Plan,
    (model, model_info): (&str, Option<&Model>),
    opts: &HeaderOptions,
    denied: &mut Option<sluice_core::LimitId>,
) -> Option<Response<ResponseBody>> {
    if plan.charges.is_empty() {
        return None;
    }
    let decision = gw.store.peek(plan).await.ok()?;
    if !decision.is_admitted() {
        *denied = decision.denied_by().map(|s| s.limit);
    }
    (!decision.is_admitted())
        .then(|| refusal(gw, rt, tenant, &decision, (model, model_info), plan.now, opts))
}

/// How long a refused request's unread body is read and dropped, so that
/// the client sees the answer (a socket closed on unread data may lose it)
/// and its connection can be used again.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops a request body in the background: at most `limit` bytes
/// for at most [`DRAIN_FOR`]; past either the connection is closed.
fn drain(mut body: RequestBody, limit: usize) {
    tokio::spawn(async move {
        let mut left = limit;
        let read = async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, Bytes::len);
                if n > left {
                    return;
                }
                left -= n;
            }
        };
        let _ = tokio::time::timeout(DRAIN_FOR, read).await;
    });
}

/// The body sent upstream: streams ask for usage; a renamed model is renamed.
fn upstream_body(
    body: Bytes,
    stream: bool,
    route: &Route,
    add_max: Option<(&str, u64)>,
) -> Result<Bytes, ApiError> {
    let mut out = body;
    if let Some((name, n)) = add_max {
        out = sluice_llm::rewrite::with_member(&out, name, &n.to_string())
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    }
    if let Some(name) = &route.upstream_model {
        let mut v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|_| ApiError::bad_request("The request body is not valid JSON.", None))?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("model".into(), serde_json::Value::String(name.clone()));
        }
        out = serde_json::to_vec(&v).map(Bytes::from).unwrap_or(out);
    }
    if stream {
        let rewritten = force_include_usage(&out, RewriteOptions::default())
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("stream_options".into())))?;
        if let std::borrow::Cow::Owned(b) = rewritten.body {
            out = Bytes::from(b);
        }
    }
    Ok(out)
}

//! The admin HTTP API: tenants, keys, tier changes, overrides, exemptions,
//! groups, usage, counter resets and policy reloads, behind its own bearer
//! token, on its own listener. Every write goes to the tenant store and is
//! applied at once on this instance (the others see it within their watch
//! interval). A write reads and changes only its own tenant or key, so it
//! takes as long with a hundred thousand tenants as with ten. A secret key is returned once, when it is created, and never
//! again: the store keeps its hash.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{Clock, CounterStore, Instant, KeySpec, SystemClock, TenantSpec};
use sluice_gateway::auth::{bearer, hash_secret, hash_text, same};
use sluice_gateway::runtime::tenant_spec;
use sluice_gateway::usage::{counters_of, history_json, limits_of, row_json};
use sluice_store::{KeyRecord, OverrideRecord, TenantRecord, TenantStore};

use crate::audit::Audit;
use crate::control::{Control, ReloadError};
use crate::dashboard::Dashboard;
use sluice_gateway::edge::Throttle;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the handlers share.
pub struct AdminState<S, T> {
    /// The policy, tenants and gateway.
    pub control: Arc<Control<S, T>>,
    token: [u8; 32],
    /// Calls refused for their token, for the log.
    refused: Throttle,
    started: std::time::Instant,
    /// The usage dashboard, when it is served.
    dashboard: OnceLock<Dashboard>,
}

impl<S, T> AdminState<S, T> {
    /// State for an API that requires `token` as its bearer token.
    pub fn new(control: Arc<Control<S, T>>, token: &str) -> Arc<Self> {
        Arc::new(Self {
            control,
            token: hash_secret(token),
            refused: Throttle::default(),
            started: std::time::Instant::now(),
            dashboard: OnceLock::new(),
        })
    }

    /// Serves the usage dashboard too (call before [`router`]); its logins
    /// last `session_ttl`.
    pub fn enable_dashboard(&self, session_ttl: std::time::Duration) -> &Dashboard {
        self.dashboard.get_or_init(|| Dashboard::new(session_ttl))
    }

    /// The dashboard, if served.
    pub fn dashboard(&self) -> Option<&Dashboard> {
        self.dashboard.get()
    }

    /// The SHA-256 of the admin token.
    pub(crate) fn token_hash(&self) -> &[u8; 32] {
        &self.token
    }
}

/// An error answer: status, a machine code, and a sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} `{id}` does not exist"))
    }

    fn store(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "message": self.message, "code": self.code } });
        if let (Some(d), Some(obj)) = (self.details, body["error"].as_object_mut()) {
            obj.insert("details".into(), d);
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(status: StatusCode, v: Value) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

/// A path's parameters, whose rejection (say, percent-encoded bytes that are
/// not UTF-8) is answered as every other error is: a JSON error object.
struct ApiPath<T>(T);

impl<St: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<St> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &St,
    ) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad(format!("the path is not valid: {}", e.body_text()))),
        }
    }
}

fn body<B>(b: Result<Json<B>, JsonRejection>) -> Result<B, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad(format!("the request body is not valid: {}", e.body_text())))
}

fn now_text() -> String {
    SystemClock.now().rfc3339()
}

/// Tenant ids: letters, digits, `.`, `_`, `-`; 1 to 128 of them.
fn valid_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "`{id}` is not a valid id: use 1 to 128 letters, digits, `.`, `_` or `-`"
        )))
    }
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| ApiError::store(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

async fn require_token<S, T>(
    State(st): State<Arc<AdminState<S, T>>>,
    req: Request,
    next: Next,
) -> Response
where
    S: Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    match bearer(req.headers()) {
        Some(t) if same(&hash_secret(t), &st.token) => {
            let audit = Audit::of(&req);
            let resp = next.run(req).await;
            if let Some(a) = audit {
                a.done(resp.status());
            }
            resp
        }
        _ => {
            if let Some(n) = st.refused.hit(st.started) {
                tracing::warn!(target: "sluice::audit", refused = n, "admin API calls refused for a missing or wrong token");
            }
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs `Authorization: Bearer <admin token>`",
            )
            .into_response()
        }
    }
}

/// The router (mount under nothing: paths start with `/admin/v1`).
pub fn router<S, T>(state: Arc<AdminState<S, T>>) -> Router
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    let api = Router::new()
        .route("/admin/v1/tenants", get(list_tenants::<S, T>).post(create_tenant::<S, T>))
        .route(
            "/admin/v1/tenants/{id}",
            get(get_tenant::<S, T>).patch(patch_tenant::<S, T>).delete(delete_tenant::<S, T>),
        )
        .route(
            "/admin/v1/tenants/{id}/overrides/{limit}",
            put(put_override::<S, T>).delete(delete_override::<S, T>),
        )
        .route("/admin/v1/tenants/{id}/keys", get(list_keys::<S, T>).post(create_key::<S, T>))
        .route("/admin/v1/tenants/{id}/keys/{key}", delete(revoke_key::<S, T>))
        .route("/admin/v1/tenants/{id}/keys/{key}/rotate", post(rotate_key::<S, T>))
        .route("/admin/v1/tenants/{id}/usage", get(usage::<S, T>))
        .route("/admin/v1/tenants/{id}/usage/reset", post(reset_usage::<S, T>))
        .route("/admin/v1/policy", get(get_policy::<S, T>))
        .route("/admin/v1/policy/reload", post(reload_policy::<S, T>))
        .route("/metrics", get(metrics::<S, T>))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token::<S, T>))
        .with_state(state.clone());
    let mut all = Router::new().route("/admin/v1/openapi.json", get(openapi)).merge(api);
    if state.dashboard().is_some() {
        all = all.merge(crate::dashboard::router(state));
    }
    all.fallback(|| async {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint").into_response()
    })
    // Found by the `admin` fuzz target: axum's own 405 has no body.
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this admin endpoint does not take that method",
        )
        .into_response()
    })
}

async fn openapi() -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn key_view(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "labels": k.labels,
        "exempt": k.exempt,
        "expires_at": k.expires_at,
        "revoked_at": k.revoked_at,
        "created_at": k.created_at,
    })
}

fn tenant_view(t: &TenantRecord, source: &str, keys: &[&KeyRecord]) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("source".into(), json!(source));
        o.insert("keys".into(), Value::Array(keys.iter().map(|k| key_view(k)).collect()));
    }
    v
}

fn file_record(spec: &TenantSpec, name: Option<&String>) -> TenantRecord {
    TenantRecord {
        id: spec.id.clone(),
        name: name.cloned(),
        tier: spec.tier.clone(),
        environment: spec.environment.clone(),
        groups: spec.groups.clone(),
        labels: spec.labels.clone(),
        time_zone: spec.time_zone.clone(),
        overrides: spec
            .overrides
            .iter()
            .map(|o| {
                (
                    o.limit.clone(),
                    OverrideRecord { amount: o.amount, until: o.until.map(Instant::rfc3339) },
                )
            })
            .collect(),
        exempt: spec.exempt.clone(),
        ..TenantRecord::default()
    }
}

impl<S: CounterStore + Clone + Unpin, T: TenantStore + Clone> AdminState<S, T> {
    async fn stored(&self, id: &str) -> Result<(TenantRecord, Vec<KeyRecord>), ApiError> {
        valid_id(id)?;
        let tenants = &self.control.tenants;
        if let Some(t) = tenants.tenant(id).await.map_err(ApiError::store)? {
            let keys = tenants.keys_of(id).await.map_err(ApiError::store)?;
            return Ok((t, keys));
        }
        if self.control.config().tenants.iter().any(|t| t.spec.id == id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "defined_in_policy_file",
                format!(
                    "tenant `{id}` is written in the policy file: change it there (or remove it there and create it here)"
                ),
            ));
        }
        Err(ApiError::not_found("tenant", id))
    }

    /// Checks a tenant against the policy in force.
    fn check(&self, t: &TenantRecord) -> Result<(), ApiError> {
        self.control
            .gateway
            .runtime()
            .policy
            .tenant(&tenant_spec(t))
            .map(|_| ())
            .map_err(|e| ApiError::bad(e.to_string()))
    }

    async fn save(&self, t: &TenantRecord) -> Result<(), ApiError> {
        let version = self.control.tenants.put_tenant(t).await.map_err(ApiError::store)?;
        self.control.apply(version, |rt| rt.put_tenant(t)).await;
        Ok(())
    }

    async fn save_key(&self, k: &KeyRecord) -> Result<(), ApiError> {
        let version = self.control.tenants.put_key(k).await.map_err(ApiError::store)?;
        self.control.apply(version, |rt| rt.put_key(k)).await;
        Ok(())
    }
}

async fn list_tenants<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
) -> ApiResult {
    let snap = st.control.tenants.snapshot().await.map_err(ApiError::store)?;
    let mut data = Vec::new();
    let config = st.control.config();
    for t in config.tenants.iter().filter(|t| !snap.tenants.contains_key(&t.spec.id)) {
        data.push(tenant_view(&file_record(&t.spec, t.name.as_ref()), "policy_file", &[]));
    }
    for t in snap.tenants.values() {
        let keys: Vec<&KeyRecord> = snap.keys.values().filter(|k| k.tenant == t.id).collect();
        data.push(tenant_view(t, "store", &keys));
    }
    ok(StatusCode::OK, json!({ "data": data }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    name: Option<String>,
    tier: Option<String>,
    environment: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    time_zone: Option<String>,
    #[serde(default)]
    exempt: Vec<String>,
}

async fn create_tenant<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    b: Result<Json<NewTenant>, JsonRejection>,
) -> ApiResult {
    let n = body(b)?;
    valid_id(&n.id)?;
    let stored = st.control.tenants.tenant(&n.id).await.map_err(ApiError::store)?;
    let in_file = st.control.config().tenants.iter().any(|t| t.spec.id == n.id);
    if stored.is_some() || in_file {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("tenant `{}` already exists", n.id),
        ));
    }
    let now = now_text();
    let t = TenantRecord {
        id: n.id,
        name: n.name,
        tier: n.tier,
        environment: n.environment,
        groups: n.groups,
        labels: n.labels,
        time_zone: n.time_zone,
        overrides: BTreeMap::new(),
        exempt: n.exempt,
        created_at: now.clone(),
        updated_at: now,
    };
    st.check(&t)?;
    st.save(&t).await?;
    ok(StatusCode::CREATED, tenant_view(&t, "store", &[]))
}

async fn get_tenant<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    valid_id(&id)?;
    let config = st.control.config();
    let tenants = &st.control.tenants;
    if let Some(t) = tenants.tenant(&id).await.map_err(ApiError::store)? {
        let keys = tenants.keys_of(&id).await.map_err(ApiError::store)?;
        let keys: Vec<&KeyRecord> = keys.iter().collect();
        return ok(StatusCode::OK, tenant_view(&t, "store", &keys));
    }
    match config.tenants.iter().find(|t| t.spec.id == id) {
        Some(t) => ok(
            StatusCode::OK,
            tenant_view(&file_record(&t.spec, t.name.as_ref()), "policy_file", &[]),
        ),
        None => Err(ApiError::not_found("tenant", &id)),
    }
}

fn opt_string(v: &Value, field: &str) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ApiError::bad(format!("`{field}` must be a string or null"))),
    }
}

fn strings(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    serde_json::from_value(v.clone())
        .map_err(|_| ApiError::bad(format!("`{field}` must be a list of strings")))
}

async fn patch_tenant<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
    b: Result<Json<serde_json::Map<String, Value>>, JsonRejection>,
) -> ApiResult {
    let changes = body(b)?;
    let (mut t, keys) = st.stored(&id).await?;
    for (field, v) in &changes {
        match field.as_str() {
            "name" => t.name = opt_string(v, field)?,
            "tier" => t.tier = opt_string(v, field)?,
            "environment" => t.environment = opt_string(v, field)?,
            "time_zone" => t.time_zone = opt_string(v, field)?,
            "groups" => t.groups = strings(v, field)?,
            "exempt" => t.exempt = strings(v, field)?,
            "labels" => {
                t.labels = serde_json::from_value(v.clone())
                    .map_err(|_| ApiError::bad("`labels` must be an object of strings"))?;
            }
            other => {
                return Err(ApiError::bad(format!(
                    "`{other}` cannot be changed here; fields: name, tier, environment, groups, labels, time_zone, exempt (overrides and keys have their own endpoints)"
                )));
            }
        }
    }
    t.updated_at = now_text();
    st.check(&t)?;
    st.save(&t).await?;
    let keys: Vec<&KeyRecord> = keys.iter().collect();
    ok(StatusCode::OK, tenant_view(&t, "store", &keys))
}

async fn delete_tenant<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    st.stored(&id).await?;
    let (_, version) = st.control.tenants.delete_tenant(&id).await.map_err(ApiError::store)?;
    st.control.apply(version, |rt| (rt.delete_tenant(&id).0, None)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    amount: u64,
    until: Option<String>,
}

async fn put_override<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath((id, limit)): ApiPath<(String, String)>,
    b: Result<Json<Grant>, JsonRejection>,
) -> ApiResult {
    let g = body(b)?;
    let (mut t, _) = st.stored(&id).await?;
    if st.control.gateway.runtime().policy.limits_named(&limit).is_empty() {
        return Err(ApiError::bad(format!("the policy has no limit named `{limit}`")));
    }
    if g.amount == 0 {
        return Err(ApiError::bad("`amount` must be at least 1"));
    }
    if let Some(u) = &g.until {
        let Some(until) = Instant::parse(u) else {
            return Err(ApiError::bad(format!(
                "`until` is not a date or time: `{u}` (write 2026-12-31 or 2026-12-31T23:59:59Z)"
            )));
        };
        // A grant that has already ended would be stored, shown, and never apply.
        if until <= st.control.gateway.clock.now() {
            return Err(ApiError::bad(format!("`until` is in the past: `{u}`")));
        }
    }
    t.overrides.insert(limit, OverrideRecord { amount: g.amount, until: g.until });
    t.updated_at = now_text();
    st.check(&t)?;
    st.save(&t).await?;
    ok(StatusCode::OK, tenant_view(&t, "store", &[]))
}

async fn delete_override<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath((id, limit)): ApiPath<(String, String)>,
) -> ApiResult {
    let (mut t, _) = st.stored(&id).await?;
    if t.overrides.remove(&limit).is_none() {
        return Err(ApiError::not_found("override", &limit));
    }
    t.updated_at = now_text();
    st.save(&t).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    id: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    exempt: Vec<String>,
    expires_at: Option<String>,
}

async fn issue_key<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    st: &AdminState<S, T>,
    tenant: &str,
    n: NewKey,
) -> ApiResult {
    let id = match n.id {
        Some(id) => {
            valid_id(&id)?;
            if st.control.tenants.key(&id).await.map_err(ApiError::store)?.is_some()
                || st
                    .control
                    .config()
                    .tenants
                    .iter()
                    .any(|t| t.keys.iter().any(|k| k.spec.id == id))
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "exists",
                    format!("key `{id}` already exists"),
                ));
            }
            id
        }
        None => format!("key_{}", random_hex(8)?),
    };
    if let Some(e) = &n.expires_at
        && Instant::parse(e).is_none()
    {
        return Err(ApiError::bad(format!("`expires_at` is not a date or time: `{e}`")));
    }
    let spec = KeySpec { id: id.clone(), labels: n.labels.clone(), exempt: n.exempt.clone() };
    st.control.gateway.runtime().policy.key(&spec).map_err(|e| ApiError::bad(e.to_string()))?;
    let secret = format!("sk-sluice-{}", random_hex(24)?);
    let k = KeyRecord {
        id,
        tenant: tenant.to_owned(),
        hash: hash_text(&secret),
        labels: n.labels,
        exempt: n.exempt,
        expires_at: n.expires_at,
        revoked_at: None,
        created_at: now_text(),
    };
    st.save_key(&k).await?;
    ok(StatusCode::CREATED, json!({ "key": key_view(&k), "secret": secret }))
}

async fn create_key<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
    b: Result<Json<NewKey>, JsonRejection>,
) -> ApiResult {
    let n = body(b)?;
    st.stored(&id).await?;
    issue_key(&st, &id, n).await
}

async fn list_keys<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    let (_, keys) = st.stored(&id).await?;
    ok(StatusCode::OK, json!({ "data": keys.iter().map(key_view).collect::<Vec<_>>() }))
}

async fn revoke_key<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath((id, key)): ApiPath<(String, String)>,
) -> ApiResult {
    let (_, keys) = st.stored(&id).await?;
    let Some(mut k) = keys.into_iter().find(|k| k.id == key) else {
        return Err(ApiError::not_found("key", &key));
    };
    if k.revoked_at.is_none() {
        k.revoked_at = Some(now_text());
        st.save_key(&k).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rotate_key<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath((id, key)): ApiPath<(String, String)>,
) -> ApiResult {
    let (_, keys) = st.stored(&id).await?;
    let Some(mut old) = keys.into_iter().find(|k| k.id == key) else {
        return Err(ApiError::not_found("key", &key));
    };
    if old.revoked_at.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "revoked",
            format!("key `{key}` is revoked"),
        ));
    }
    let answer = issue_key(
        &st,
        &id,
        NewKey {
            id: None,
            labels: old.labels.clone(),
            exempt: old.exempt.clone(),
            expires_at: old.expires_at.clone(),
        },
    )
    .await?;
    old.revoked_at = Some(now_text());
    st.save_key(&old).await?;
    Ok(answer)
}

/// A served tenant's index, or 404.
fn served(rt: &sluice_gateway::Runtime, id: &str) -> Result<usize, ApiError> {
    rt.tenant_index.get(id).copied().ok_or_else(|| ApiError::not_found("tenant", id))
}

async fn usage<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    valid_id(&id)?;
    let gw = &st.control.gateway;
    let rt = gw.runtime();
    let index = served(&rt, &id)?;
    let now = gw.clock.now();
    let rows = limits_of(&gw.store, &rt, index, now)
        .await
        .ok_or_else(|| ApiError::not_found("tenant", &id))?
        .map_err(ApiError::store)?;
    let rows: Vec<Value> = rows.iter().filter_map(|r| row_json(&rt, r)).collect();
    let mut answer = json!({ "tenant": id, "at": now.rfc3339(), "limits": rows });
    if let (Some(h), Some(o)) = (gw.history(), answer.as_object_mut()) {
        o.insert("history".into(), history_json(h, &id, now));
    }
    ok(StatusCode::OK, answer)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    limit: Option<String>,
}

async fn reset_usage<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
    b: Result<Json<ResetRequest>, JsonRejection>,
) -> ApiResult {
    let r = body(b)?;
    valid_id(&id)?;
    let gw = &st.control.gateway;
    let rt = gw.runtime();
    let index = served(&rt, &id)?;
    let Some((tenant, found)) = counters_of(&rt, index, gw.clock.now()) else {
        return Err(ApiError::not_found("tenant", &id));
    };
    if let Some(name) = &r.limit
        && rt.policy.limits_named(name).is_empty()
    {
        return Err(ApiError::bad(format!("the policy has no limit named `{name}`")));
    }
    let mut reset = 0;
    for f in &found {
        let name = rt.policy.limit(f.charge.limit).map(|l| l.name.to_string());
        if r.limit.as_ref().is_none_or(|want| Some(want) == name.as_ref())
            && gw.store.reset(tenant, f.key).await.map_err(ApiError::store)?
        {
            reset += 1;
        }
    }
    ok(StatusCode::OK, json!({ "reset": reset }))
}

async fn get_policy<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
) -> ApiResult {
    let config = st.control.config();
    ok(
        StatusCode::OK,
        json!({
            "name": config.policy.name(),
            "report": sluice_config::report::effective_limits(&config),
        }),
    )
}

/// `GET /metrics`: the Prometheus metrics of the gateway and the decision
/// service (docs/OBSERVABILITY.md#metrics), behind the admin token.
async fn metrics<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    headers: HeaderMap,
) -> Response {
    let (text, format) = st.control.gateway.metrics_text(headers.get(axum::http::header::ACCEPT));
    ([(axum::http::header::CONTENT_TYPE, format)], text).into_response()
}

async fn reload_policy<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    _headers: HeaderMap,
) -> ApiResult {
    match st.control.reload_policy().await {
        Ok(warnings) => ok(StatusCode::OK, json!({ "reloaded": true, "warnings": warnings })),
        Err(ReloadError::Config(errors)) => {
            let mut e =
                ApiError::bad("the new policy file does not validate; the old one keeps running");
            e.details = Some(json!(errors.0.iter().map(ToString::to_string).collect::<Vec<_>>()));
            Err(e)
        }
        Err(e) => Err(ApiError::bad(format!(
            "the new policy cannot be served ({e}); the old one keeps running"
        ))),
    }
}

//! The admin HTTP API: tenants, keys, tier changes, overrides, exemptions,
//! groups, usage, counter resets and policy reloads, behind its own bearer
//! token, on its own listener. Every write goes to the tenant store and is
//! applied at once on this instance (the others see it within their watch
//! interval). A write reads and changes only its own tenant or key, so it
//! takes as long with a hundred thousand tenants as with ten. A secret key is returned once, when it is created, and never
//! again: the store keeps its hash.
//!
//! The routes by group: [`tenants`] (and their overrides), [`keys`] (and
//! theirs), [`usage`], [`policy`] (and `/metrics`).

mod keys;
#[cfg(test)]
mod openapi_check;
mod policy;
mod tenants;
mod usage;

use std::sync::{Arc, OnceLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use serde_json::{Value, json};
use sluice_core::{Clock, CounterStore, SystemClock};
use sluice_served::auth::{bearer, hash_secret, same};
use sluice_served::edge::Throttle;
use sluice_served::runtime::{key_spec, tenant_spec};
use sluice_store::{KeyRecord, TenantRecord, TenantStore};

use crate::audit::Audit;
use crate::control::Control;
use crate::dashboard::Dashboard;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

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

/// Routes as they are added to the router, with the list of their paths:
/// what the OpenAPI document is checked against (`openapi_check.rs` asks
/// the router which methods each path takes), so that neither can change
/// without the other.
pub(crate) struct Routes<St> {
    router: Router<St>,
    paths: Vec<&'static str>,
}

impl<St: Clone + Send + Sync + 'static> Routes<St> {
    fn new() -> Self {
        Self { router: Router::new(), paths: Vec::new() }
    }

    fn route(mut self, path: &'static str, methods: MethodRouter<St>) -> Self {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }
}

/// Every route of the API behind the token.
fn routes<S, T>() -> Routes<Arc<AdminState<S, T>>>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    tenants::routes().merge(keys::routes()).merge(usage::routes()).merge(policy::routes())
}

/// The paths of [`router`]'s API routes and of the OpenAPI document (the
/// dashboard's pages, which are HTML for people, aside).
#[cfg(test)]
fn paths<S, T>() -> Vec<&'static str>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    let mut paths = routes::<S, T>().paths;
    paths.push(OPENAPI_PATH);
    paths
}

/// Where the OpenAPI document is served (without the token).
const OPENAPI_PATH: &str = "/admin/v1/openapi.json";

/// The router (mount under nothing: paths start with `/admin/v1`).
pub fn router<S, T>(state: Arc<AdminState<S, T>>) -> Router
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    let api = routes::<S, T>()
        .router
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token::<S, T>))
        .with_state(state.clone());
    let mut all = Router::new().route(OPENAPI_PATH, get(openapi)).merge(api);
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
            .served
            .runtime()
            .policy
            .tenant(&tenant_spec(t))
            .map(|_| ())
            .map_err(|e| ApiError::bad(e.to_string()))
    }

    /// Checks a key against the policy in force (its grants too).
    fn check_key(&self, k: &KeyRecord) -> Result<(), ApiError> {
        self.control
            .served
            .runtime()
            .policy
            .key(&key_spec(k))
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

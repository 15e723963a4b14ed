//! `/admin/v1/policy`: the policy in force and its reload; and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sluice_core::CounterStore;
use sluice_store::TenantStore;

use super::{AdminState, ApiError, ApiResult, Routes, ok};
use crate::control::ReloadError;

/// The group's routes.
pub(super) fn routes<S, T>() -> Routes<Arc<AdminState<S, T>>>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    Routes::new()
        .route("/admin/v1/policy", get(get_policy::<S, T>))
        .route("/admin/v1/policy/reload", post(reload_policy::<S, T>))
        .route("/metrics", get(metrics::<S, T>))
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
    let (text, format) = st.control.served.metrics_text(headers.get(axum::http::header::ACCEPT));
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

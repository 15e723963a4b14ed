//! `/admin/v1/tenants/{id}/usage`: a tenant's counters and history, and
//! resetting its counters.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{Clock, CounterStore};
use sluice_served::Runtime;
use sluice_served::usage::{counters_of, history_json, limits_of, row_json};
use sluice_store::TenantStore;

use super::{AdminState, ApiError, ApiPath, ApiResult, Routes, body, ok, valid_id};

/// The group's routes.
pub(super) fn routes<S, T>() -> Routes<Arc<AdminState<S, T>>>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    Routes::new()
        .route("/admin/v1/tenants/{id}/usage", get(usage::<S, T>))
        .route("/admin/v1/tenants/{id}/usage/reset", post(reset_usage::<S, T>))
}

/// A served tenant's index, or 404.
fn tenant_index(rt: &Runtime, id: &str) -> Result<usize, ApiError> {
    rt.tenant_index.get(id).copied().ok_or_else(|| ApiError::not_found("tenant", id))
}

async fn usage<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    valid_id(&id)?;
    let served = &st.control.served;
    let rt = served.runtime();
    let index = tenant_index(&rt, &id)?;
    let now = served.clock.now();
    let rows = limits_of(&served.store, &rt, index, now)
        .await
        .ok_or_else(|| ApiError::not_found("tenant", &id))?
        .map_err(ApiError::store)?;
    let rows: Vec<Value> = rows.iter().filter_map(|r| row_json(&rt, r)).collect();
    let mut answer = json!({ "tenant": id, "at": now.rfc3339(), "limits": rows });
    if let (Some(h), Some(o)) = (served.history(), answer.as_object_mut()) {
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
    let served = &st.control.served;
    let rt = served.runtime();
    let index = tenant_index(&rt, &id)?;
    let Some((tenant, found)) = counters_of(&rt, index, served.clock.now()) else {
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
            && served.store.reset(tenant, f.key).await.map_err(ApiError::store)?
        {
            reset += 1;
        }
    }
    ok(StatusCode::OK, json!({ "reset": reset }))
}

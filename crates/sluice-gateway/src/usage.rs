//! `GET /v1/usage`: what the calling tenant has used, read as the admin API
//! reads it ([`sluice_served::usage`]).

use http::HeaderMap;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use sluice_core::{Clock, CounterStore};
use sluice_llm::error::ApiError;
use sluice_served::Runtime;
use sluice_served::usage::{history_json, limits_of, row_json};

use crate::body::ResponseBody;
use crate::proxy::{authenticate, error_response, json_response};
use crate::server::Gateway;

/// `GET /v1/usage`: the calling tenant's limits, usage and recent 429s
/// (its own key; nothing of any other tenant).
pub(crate) async fn serve<S: CounterStore + Clone + Unpin>(
    gw: &Gateway<S>,
    rt: &Runtime,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    let now = gw.clock.now();
    let key = match authenticate(rt, headers, now) {
        Ok(k) => k,
        Err(e) => return error_response(&e),
    };
    let Some(tenant) = rt.tenants.get(key.tenant) else {
        return error_response(&ApiError::invalid_api_key());
    };
    let rows = match limits_of(&gw.store, rt, key.tenant, now).await {
        Some(Ok(rows)) => rows,
        Some(Err(e)) => {
            tracing::error!(error = %e, "counter store failed");
            return error_response(&ApiError::store_unavailable());
        }
        None => return error_response(&ApiError::invalid_api_key()),
    };
    let id = tenant.facts.id();
    let tier = rt.policy.tier_info(tenant.facts.tier()).map(|t| t.name.to_string());
    let limits: Vec<Value> = rows.iter().filter_map(|r| row_json(rt, r)).collect();
    let mut body = json!({
        "object": "usage",
        "tenant": id,
        "tier": tier,
        "at": now.rfc3339(),
        "limits": limits,
    });
    if let (Some(h), Some(o)) = (gw.history(), body.as_object_mut()) {
        o.insert("history".into(), history_json(h, id, now));
    }
    json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
}

//! `/admin/v1/tenants`: list, create, read, change and delete tenants, and
//! grant or withdraw their overrides.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{Clock, CounterStore, Instant, TenantSpec};
use sluice_store::{KeyRecord, OverrideRecord, TenantRecord, TenantStore};

use super::keys::key_view;
use super::{AdminState, ApiError, ApiPath, ApiResult, Routes, body, now_text, ok, valid_id};

/// The group's routes.
pub(super) fn routes<S, T>() -> Routes<Arc<AdminState<S, T>>>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    Routes::new()
        .route("/admin/v1/tenants", get(list_tenants::<S, T>).post(create_tenant::<S, T>))
        .route(
            "/admin/v1/tenants/{id}",
            get(get_tenant::<S, T>).patch(patch_tenant::<S, T>).delete(delete_tenant::<S, T>),
        )
        .route(
            "/admin/v1/tenants/{id}/overrides/{limit}",
            put(put_override::<S, T>).delete(delete_override::<S, T>),
        )
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

/// A grant as the API takes it (of a tenant or of a key).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Grant {
    /// A whole number, or for a `cost` limit money in the policy's currency
    /// (stored in micro-units).
    amount: serde_json::Number,
    until: Option<String>,
}

/// A grant of `limit` checked against the policy in force, as stored: the
/// limit exists, the amount is at least 1 (money for a `cost` limit), and
/// its end is a time still to come. (Whether a key may have it is the
/// policy's to say when the key is checked.)
pub(super) fn grant<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    st: &AdminState<S, T>,
    limit: &str,
    g: Grant,
) -> Result<OverrideRecord, ApiError> {
    let rt = st.control.served.runtime();
    let named = rt.policy.limits_named(limit);
    if named.is_empty() {
        return Err(ApiError::bad(format!("the policy has no limit named `{limit}`")));
    }
    let money = named.iter().any(|&l| rt.policy.limit(l).is_some_and(|l| l.metric.is_money()));
    drop(rt);
    let amount = if money {
        g.amount.as_f64().and_then(sluice_core::money::micros_of).filter(|&a| a > 0).ok_or_else(
            || {
                ApiError::bad(format!(
                    "`{limit}` is a budget: `amount` is money, a positive number with at most six decimals (e.g. 100 or 12.50)"
                ))
            },
        )?
    } else {
        g.amount
            .as_u64()
            .filter(|&a| a > 0)
            .ok_or_else(|| ApiError::bad("`amount` must be a whole number, at least 1"))?
    };
    if let Some(u) = &g.until {
        let Some(until) = Instant::parse(u) else {
            return Err(ApiError::bad(format!(
                "`until` is not a date or time: `{u}` (write 2026-12-31 or 2026-12-31T23:59:59Z)"
            )));
        };
        // A grant that has already ended would be stored, shown, and never apply.
        if until <= st.control.served.clock.now() {
            return Err(ApiError::bad(format!("`until` is in the past: `{u}`")));
        }
    }
    Ok(OverrideRecord { amount, until: g.until })
}

async fn put_override<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath((id, limit)): ApiPath<(String, String)>,
    b: Result<Json<Grant>, JsonRejection>,
) -> ApiResult {
    let g = body(b)?;
    let (mut t, _) = st.stored(&id).await?;
    let granted = grant(&st, &limit, g)?;
    t.overrides.insert(limit, granted);
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

//! `/admin/v1/tenants/{id}/keys`: issue, list, revoke and rotate a
//! tenant's API keys, and grant or withdraw a key's own amounts of limits
//! split by key. A secret is shown once, when it is issued; the store keeps
//! its hash.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{CounterStore, Instant};
use sluice_served::auth::hash_text;
use sluice_store::{KeyRecord, OverrideRecord, TenantStore};

use super::tenants::{Grant, grant};
use super::{
    AdminState, ApiError, ApiPath, ApiResult, Routes, body, now_text, ok, random_hex, valid_id,
};

/// The group's routes.
pub(super) fn routes<S, T>() -> Routes<Arc<AdminState<S, T>>>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    Routes::new()
        .route("/admin/v1/tenants/{id}/keys", get(list_keys::<S, T>).post(create_key::<S, T>))
        .route("/admin/v1/tenants/{id}/keys/{key}", delete(revoke_key::<S, T>))
        .route("/admin/v1/tenants/{id}/keys/{key}/rotate", post(rotate_key::<S, T>))
        .route(
            "/admin/v1/tenants/{id}/keys/{key}/overrides/{limit}",
            put(put_key_override::<S, T>).delete(delete_key_override::<S, T>),
        )
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

pub(super) fn key_view(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "labels": k.labels,
        "exempt": k.exempt,
        "overrides": k.overrides,
        "expires_at": k.expires_at,
        "revoked_at": k.revoked_at,
        "created_at": k.created_at,
    })
}

/// Issues a key (with `overrides`: a rotated key's grants).
async fn issue_key<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    st: &AdminState<S, T>,
    tenant: &str,
    n: NewKey,
    overrides: BTreeMap<String, OverrideRecord>,
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
    let secret = format!("sk-sluice-{}", random_hex(24)?);
    let k = KeyRecord {
        id,
        tenant: tenant.to_owned(),
        hash: hash_text(&secret),
        labels: n.labels,
        exempt: n.exempt,
        overrides,
        expires_at: n.expires_at,
        revoked_at: None,
        created_at: now_text(),
    };
    st.check_key(&k)?;
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
    issue_key(&st, &id, n, BTreeMap::new()).await
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
        // A rotated key keeps its grants.
        old.overrides.clone(),
    )
    .await?;
    old.revoked_at = Some(now_text());
    st.save_key(&old).await?;
    Ok(answer)
}

/// A tenant's key that is not revoked, to change.
async fn live_key<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    st: &AdminState<S, T>,
    tenant: &str,
    key: &str,
) -> Result<KeyRecord, ApiError> {
    let (_, keys) = st.stored(tenant).await?;
    let Some(k) = keys.into_iter().find(|k| k.id == key) else {
        return Err(ApiError::not_found("key", key));
    };
    if k.revoked_at.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "revoked",
            format!("key `{key}` is revoked"),
        ));
    }
    Ok(k)
}

async fn put_key_override<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath((id, key, limit)): ApiPath<(String, String, String)>,
    b: Result<Json<Grant>, JsonRejection>,
) -> ApiResult {
    let g = body(b)?;
    let mut k = live_key(&st, &id, &key).await?;
    let granted = grant(&st, &limit, g)?;
    k.overrides.insert(limit, granted);
    // Refused here if the limit is not split by key.
    st.check_key(&k)?;
    st.save_key(&k).await?;
    ok(StatusCode::OK, key_view(&k))
}

async fn delete_key_override<S: CounterStore + Clone + Unpin, T: TenantStore + Clone>(
    State(st): State<Arc<AdminState<S, T>>>,
    ApiPath((id, key, limit)): ApiPath<(String, String, String)>,
) -> ApiResult {
    let mut k = live_key(&st, &id, &key).await?;
    if k.overrides.remove(&limit).is_none() {
        return Err(ApiError::not_found("override", &limit));
    }
    st.save_key(&k).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

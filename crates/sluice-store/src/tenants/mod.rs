//! Tenants and their keys, where operators change them: an embedded data
//! file ([`FileTenants`], the default) or Redis ([`RedisTenants`], shared by
//! every instance).
//!
//! The stores hold records only; what a record means (hashing a new key's
//! secret, checking a tier exists) is the admin API's business. Every change
//! bumps a version number, which instances watch: when it moves, they read
//! the records again and rebuild what they serve, so a revoked key stops
//! working everywhere within one watch interval. Secrets are never stored:
//! a key is its SHA-256 hash.
//!
//! Every write returns the version it made, and every read the admin API
//! makes on a write is a point lookup (a tenant, a key, a tenant's keys
//! through an index): a write costs the same with ten tenants or a million,
//! and the instance that made it applies just that change to what it serves.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

mod file;
pub(crate) mod redis;

pub use file::FileTenants;
pub use redis::RedisTenants;

/// A tenant as operators manage it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// Stable id (`org-acme`).
    pub id: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tier (the policy's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Environment: production, sandbox, demo, trial, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// User groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// IANA time zone of its calendar windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Granted amounts, by limit name.
    #[serde(default)]
    pub overrides: BTreeMap<String, OverrideRecord>,
    /// Limit names it is exempt from (`*`: all).
    #[serde(default)]
    pub exempt: Vec<String>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// When it last changed (RFC 3339).
    #[serde(default)]
    pub updated_at: String,
}

/// A granted amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRecord {
    /// The amount.
    pub amount: u64,
    /// When the grant ends (RFC 3339); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// An API key, without its secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Its id (`key_…`), unique across tenants.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// `sha256:<hex>` of the secret.
    pub hash: String,
    /// Labels (e.g. `channel = "apex"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Limit names it is exempt from.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Its own amounts of limits split by key, by limit name (absent from
    /// records written before keys had them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, OverrideRecord>,
    /// When it stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was revoked (RFC 3339): a revoked key never works again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: String,
}

/// Everything a tenant store holds, at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantSnapshot {
    /// The version (bumped by every change).
    pub version: u64,
    /// Tenants, by id.
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Keys, by id.
    pub keys: BTreeMap<String, KeyRecord>,
}

/// Why the tenant store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TenantStoreError {
    /// The data file.
    #[error("data file: {0}")]
    File(String),
    /// Redis.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A stored record that does not parse.
    #[error("a stored record is damaged: {0}")]
    Corrupt(String),
}

/// Where tenants and keys live.
pub trait TenantStore: Send + Sync + 'static {
    /// Every tenant and key.
    fn snapshot(&self) -> impl Future<Output = Result<TenantSnapshot, TenantStoreError>> + Send;

    /// The current version (cheap: instances poll it).
    fn version(&self) -> impl Future<Output = Result<u64, TenantStoreError>> + Send;

    /// One tenant.
    fn tenant(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<TenantRecord>, TenantStoreError>> + Send;

    /// One key.
    fn key(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<KeyRecord>, TenantStoreError>> + Send;

    /// A tenant's keys (revoked ones too), by id.
    fn keys_of(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, TenantStoreError>> + Send;

    /// Creates or replaces a tenant; the version this change made.
    fn put_tenant(
        &self,
        tenant: &TenantRecord,
    ) -> impl Future<Output = Result<u64, TenantStoreError>> + Send;

    /// Deletes a tenant and its keys: whether it existed, and the version
    /// this change made.
    fn delete_tenant(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(bool, u64), TenantStoreError>> + Send;

    /// Creates or replaces a key; the version this change made.
    fn put_key(
        &self,
        key: &KeyRecord,
    ) -> impl Future<Output = Result<u64, TenantStoreError>> + Send;
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, TenantStoreError> {
    serde_json::to_vec(v).map_err(|e| TenantStoreError::Corrupt(e.to_string()))
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, TenantStoreError> {
    serde_json::from_slice(b).map_err(|e| TenantStoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key written before keys had grants still loads; one with grants
    /// keeps them; one without writes no `overrides` at all.
    #[test]
    fn key_records_with_and_without_grants() {
        let old = br#"{"id":"k1","tenant":"acme","hash":"sha256:00","labels":{},"exempt":[],"created_at":"2026-01-01T00:00:00Z"}"#;
        let k: KeyRecord = from_json(old).unwrap();
        assert!(k.overrides.is_empty());
        assert!(!String::from_utf8(to_json(&k).unwrap()).unwrap().contains("overrides"));
        let mut granted = k;
        granted.overrides.insert(
            "key-rpm".into(),
            OverrideRecord { amount: 5, until: Some("2026-12-31T00:00:00Z".into()) },
        );
        let back: KeyRecord = from_json(&to_json(&granted).unwrap()).unwrap();
        assert_eq!(back, granted);
    }
}

//! Everything a request needs to be served, resolved once from a policy file:
//! the policy, tenants and keys, endpoints by path, and each model's route.
//! A reload builds a new `Runtime` and swaps it in whole; a request keeps the
//! one it started with. An admin write makes a new `Runtime` too, sharing
//! all but what it changed ([`crate::tenants`]).
//!
//! The upstreams' clients are the proxy's (sluice-gateway): a runtime
//! carries them as [`Upstream`]s, made by the [`Connect`] it is built with,
//! so that a reload swaps them with the routes that name them, and the
//! services that never forward build none ([`Unconnected`]).

use hashbrown::HashMap;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Uri;
use sluice_config::Config;
use sluice_config::gateway::{GatewayConfig, TokenEncoding, Upstream as UpstreamConfig};
use sluice_core::{
    EndpointId, Instant, KeyFacts, KeySpec, ModelId, OverrideSpec, Policy, TenantFacts, TenantSpec,
};
use sluice_llm::{Encoding, EndpointKind};
use sluice_store::{KeyRecord, OverrideRecord, TenantRecord, TenantSnapshot};

use crate::auth::{KeyTable, parse_hash};
pub use crate::tenants::{ShardedMap, TenantList};

/// An upstream's client as a runtime carries it: the proxy's (which gets
/// its own type back with `Any`), opaque to what only decides or
/// administers.
pub trait Upstream: Any + std::fmt::Debug + Send + Sync {
    /// The upstream URI for a client's request path (and query), if one
    /// can be made.
    fn uri(&self, path_and_query: &str) -> Option<Uri>;
}

/// Makes the client of each upstream of the policy file when a runtime is
/// built: the proxy's connector, or [`Unconnected`].
pub trait Connect: Send + Sync {
    /// The client of `upstream`.
    fn connect(&self, upstream: &UpstreamConfig) -> Result<Arc<dyn Upstream>, RuntimeError>;
}

/// No clients, for what never forwards a request (the decision service
/// and the admin API on their own, their tests and benchmarks): each
/// upstream is a name that makes no URI.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unconnected;

/// An upstream [`Unconnected`] stands in for.
#[derive(Debug)]
struct NotConnected;

impl Upstream for NotConnected {
    fn uri(&self, _: &str) -> Option<Uri> {
        None
    }
}

impl Connect for Unconnected {
    fn connect(&self, _: &UpstreamConfig) -> Result<Arc<dyn Upstream>, RuntimeError> {
        Ok(Arc::new(NotConnected))
    }
}

/// Why an upstream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The API key's environment variable is not set.
    #[error(
        "upstream `{upstream}`: the environment variable `{var}` (its `api_key_env`) is not set"
    )]
    MissingKey {
        /// The upstream.
        upstream: String,
        /// The variable.
        var: String,
    },
    /// The key cannot be sent as a header.
    #[error("upstream `{0}`: its API key contains characters that cannot go in a header")]
    BadKey(String),
    /// The base URL cannot be combined with request paths.
    #[error("upstream `{upstream}`: `{url}` is not a usable base URL")]
    BadUrl {
        /// The upstream.
        upstream: String,
        /// The URL.
        url: String,
    },
}

/// A tenant being served.
#[derive(Debug)]
pub struct Tenant {
    /// Resolved against the runtime's policy.
    pub facts: TenantFacts,
    /// Until when (ms since the epoch) this tenant's requests are checked
    /// before their bodies are read: set by a 429, so that a tenant over a
    /// limit is refused cheaply, and not at all otherwise.
    refused_until_ms: AtomicU64,
}

impl Tenant {
    /// A tenant to serve.
    pub fn new(facts: TenantFacts) -> Self {
        Self { facts, refused_until_ms: AtomicU64::new(0) }
    }

    /// Whether a recent 429 still stands at `now`: the tenant's requests
    /// are then checked before anything is read.
    pub fn recently_refused(&self, now: Instant) -> bool {
        self.refused_until_ms.load(Ordering::Relaxed) > now.as_millis()
    }

    /// Notes a 429 whose limit frees up at `until`.
    pub fn note_refusal(&self, until: Instant) {
        self.refused_until_ms.fetch_max(until.as_millis(), Ordering::Relaxed);
    }
}

/// What a key leads to.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The key's id (never its secret).
    pub id: String,
    /// Index into [`Runtime::tenants`].
    pub tenant: usize,
    /// The key's facts.
    pub facts: KeyFacts,
    /// When it stops working.
    pub expires: Option<Instant>,
}

/// An endpoint of the policy, by the request path it is served at.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The policy's endpoint.
    pub id: EndpointId,
    /// Its name.
    pub name: String,
    /// How its bodies are read.
    pub kind: EndpointKind,
    /// Its URI at each upstream (by index into [`Runtime::upstreams`]), for
    /// requests without a query: made once here, cloned per request.
    pub upstream_uris: Vec<Option<Uri>>,
}

/// How a model is served.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index into [`Runtime::upstreams`].
    pub upstream: usize,
    /// The name sent upstream, when it differs from the model id.
    pub upstream_model: Option<String>,
    /// The tokenizer for estimates.
    pub encoding: Encoding,
}

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A tenant or key does not fit the policy.
    #[error("tenant `{tenant}`: {source}")]
    Tenant {
        /// The tenant.
        tenant: String,
        /// Why.
        source: sluice_core::FactsError,
    },
    /// A key hash that does not parse, or is used twice.
    #[error("tenant `{tenant}`, key `{key}`: {problem}")]
    Key {
        /// The tenant.
        tenant: String,
        /// The key id.
        key: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A model with no upstream.
    #[error(
        "model `{0}` has no upstream: add an [upstreams.<name>] section (and `upstream = \"<name>\"` on the model if there are several), or a [decisions] section to run the decision service alone"
    )]
    NoUpstream(String),
    /// An upstream that cannot be used.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A mock upstream without an address.
    #[error("upstream `{0}` is a mock, but no mock server was started for it")]
    NoMock(String),
}

/// The policy, tenants and keys as served.
///
/// Its maps hash with hashbrown's default (foldhash, seeded per process), not
/// SipHash: every request looks up three of them, and they are built from
/// the configuration, never from requests, so no client can fill them with
/// colliding keys. Tenants and keys are held in shards that a copy shares
/// ([`crate::tenants`]): cloning a runtime does not copy them.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The policy.
    pub policy: Policy,
    /// Gateway settings.
    pub settings: GatewayConfig,
    /// Tenants.
    pub tenants: TenantList,
    /// Tenant id -> index into `tenants`.
    pub tenant_index: ShardedMap<String, usize>,
    /// Keys.
    pub keys: KeyTable<KeyEntry>,
    /// Endpoints by request path.
    pub endpoints: HashMap<String, Endpoint>,
    /// Routes by model.
    pub routes: HashMap<ModelId, Route>,
    /// Upstream clients (the proxy's, made by the runtime's [`Connect`]).
    pub upstreams: Vec<Arc<dyn Upstream>>,
    /// Model id -> developer, for `/v1/models`.
    pub owners: HashMap<String, String>,
    /// The proxy's metrics of the policy, resolved ahead (bound by the
    /// gateway that serves the runtime, which gets its own type back with
    /// `Any`; kept when only the tenants change).
    pub meters: Option<Arc<dyn Any + Send + Sync>>,
}

impl Runtime {
    /// Builds a runtime from a policy file and the tenants of the tenant
    /// store, with the upstreams' clients `connect` makes. Stored tenants or
    /// keys that do not fit the policy are left out and reported in the
    /// second value (a stale tenant must not stop a reload); the file's own
    /// must fit.
    pub fn build(
        config: &Config,
        stored: &TenantSnapshot,
        connect: &dyn Connect,
    ) -> Result<(Self, Vec<String>), RuntimeError> {
        let upstreams = config
            .gateway
            .upstreams
            .iter()
            .map(|u| connect.connect(u))
            .collect::<Result<Vec<_>, _>>()?;
        Self::assemble(config, stored, upstreams)
    }

    /// The same runtime with the tenant store's tenants read again (the
    /// upstream clients and their pooled connections are kept).
    pub fn with_tenants(
        &self,
        config: &Config,
        stored: &TenantSnapshot,
    ) -> Result<(Self, Vec<String>), RuntimeError> {
        let (mut runtime, warnings) = Self::assemble(config, stored, self.upstreams.clone())?;
        runtime.meters.clone_from(&self.meters);
        Ok((runtime, warnings))
    }

    fn assemble(
        config: &Config,
        stored: &TenantSnapshot,
        upstreams: Vec<Arc<dyn Upstream>>,
    ) -> Result<(Self, Vec<String>), RuntimeError> {
        let policy = config.policy.clone();
        let mut warnings = Vec::new();
        let mut tenants = TenantList::default();
        let mut keys = KeyTable::default();
        let mut index_of: ShardedMap<String, usize> = ShardedMap::default();
        // Tenants of the tenant store replace file tenants of the same id.
        for t in config.tenants.iter().filter(|t| !stored.tenants.contains_key(&t.spec.id)) {
            let facts = policy
                .tenant(&t.spec)
                .map_err(|source| RuntimeError::Tenant { tenant: t.spec.id.clone(), source })?;
            let index = tenants.push(Tenant::new(facts));
            for k in &t.keys {
                let kf = policy
                    .key(&k.spec)
                    .map_err(|source| RuntimeError::Tenant { tenant: t.spec.id.clone(), source })?;
                let hash = parse_hash(&k.hash).ok_or_else(|| RuntimeError::Key {
                    tenant: t.spec.id.clone(),
                    key: k.spec.id.clone(),
                    problem: "the hash is not sha256:<64 hex digits>",
                })?;
                if !keys.insert(
                    hash,
                    KeyEntry { id: k.spec.id.clone(), tenant: index, facts: kf, expires: None },
                ) {
                    return Err(RuntimeError::Key {
                        tenant: t.spec.id.clone(),
                        key: k.spec.id.clone(),
                        problem: "this key is already given to a tenant",
                    });
                }
                tenants.add_key(index, hash);
            }
            index_of.insert(t.spec.id.clone(), index);
        }
        for (id, record) in &stored.tenants {
            match policy.tenant(&tenant_spec(record)) {
                Ok(facts) => {
                    index_of.insert(id.clone(), tenants.push(Tenant::new(facts)));
                }
                Err(e) => warnings.push(format!("tenant `{id}` is not served: {e}")),
            }
        }
        for (id, record) in &stored.keys {
            if record.revoked_at.is_some() {
                continue;
            }
            let Some(&tenant) = index_of.get(record.tenant.as_str()) else {
                warnings.push(format!(
                    "key `{id}` belongs to tenant `{}`, which is not served",
                    record.tenant
                ));
                continue;
            };
            let (Ok(facts), Some(hash)) = (policy.key(&key_spec(record)), parse_hash(&record.hash))
            else {
                warnings.push(format!("key `{id}` does not fit the policy"));
                continue;
            };
            let expires = record.expires_at.as_deref().and_then(Instant::parse);
            if keys.insert(hash, KeyEntry { id: record.id.clone(), tenant, facts, expires }) {
                tenants.add_key(tenant, hash);
            } else {
                warnings.push(format!("key `{id}`: its secret is already another key's"));
            }
        }

        let mut endpoints = HashMap::new();
        for (name, path) in &config.endpoint_paths {
            let (Some(path), Some(id)) = (path, policy.endpoint(name)) else { continue };
            endpoints.insert(
                path.clone(),
                Endpoint {
                    id,
                    name: name.clone(),
                    kind: EndpointKind::from_path(path),
                    upstream_uris: upstreams.iter().map(|u| u.uri(path)).collect(),
                },
            );
        }

        let settings = config.gateway.clone();
        let decisions_only = config.decisions_only();
        let mut routes = HashMap::new();
        for r in &settings.routes {
            let Some(model) = policy.model(&r.model) else { continue };
            let upstream = match r.upstream {
                Some(u) => u,
                None if decisions_only => continue,
                None => return Err(RuntimeError::NoUpstream(r.model.clone())),
            };
            let bytes = settings.tokens.bytes_per_token as f32;
            let encoding = match r.encoding {
                Some(TokenEncoding::O200kBase) => Encoding::O200kBase,
                Some(TokenEncoding::Cl100kBase) => Encoding::Cl100kBase,
                Some(TokenEncoding::Bytes) => Encoding::Bytes { bytes_per_token: bytes },
                None => Encoding::for_model(&r.model)
                    .unwrap_or(Encoding::Bytes { bytes_per_token: bytes }),
            };
            routes.insert(
                model,
                Route { upstream, upstream_model: r.upstream_model.clone(), encoding },
            );
        }
        let runtime = Self {
            policy,
            settings,
            tenants,
            tenant_index: index_of,
            keys,
            endpoints,
            routes,
            upstreams,
            owners: config.developers.iter().cloned().collect(),
            meters: None,
        };
        Ok((runtime, warnings))
    }

    /// A tenant by id.
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenant_index.get(id).and_then(|&i| self.tenants.get(i))
    }
}

/// A stored tenant as the engine reads it.
pub fn tenant_spec(r: &TenantRecord) -> TenantSpec {
    TenantSpec {
        id: r.id.clone(),
        tier: r.tier.clone(),
        environment: r.environment.clone(),
        groups: r.groups.clone(),
        labels: r.labels.clone(),
        time_zone: r.time_zone.clone(),
        overrides: override_specs(&r.overrides),
        exempt: r.exempt.clone(),
    }
}

/// The spec of a stored key.
pub fn key_spec(r: &KeyRecord) -> KeySpec {
    KeySpec {
        id: r.id.clone(),
        labels: r.labels.clone(),
        exempt: r.exempt.clone(),
        overrides: override_specs(&r.overrides),
    }
}

/// Stored grants as specs.
fn override_specs(grants: &BTreeMap<String, OverrideRecord>) -> Vec<OverrideSpec> {
    grants
        .iter()
        .map(|(limit, o)| OverrideSpec {
            limit: limit.clone(),
            amount: o.amount,
            until: o.until.as_deref().and_then(Instant::parse),
        })
        .collect()
}

//! Everything a request needs to be served, resolved once from a policy file:
//! the policy, tenants and keys, endpoints by path, and each model's route.
//! A reload builds a new `Runtime` and swaps it in whole; a request keeps the
//! one it started with.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_config::Config;
use sluice_config::gateway::{GatewayConfig, TokenEncoding, UpstreamTarget};
use sluice_core::{EndpointId, KeyFacts, ModelId, Policy, TenantFacts};
use sluice_llm::{Encoding, EndpointKind};

use crate::auth::{KeyTable, parse_hash};
use crate::upstream::{UpstreamClient, UpstreamError};

/// A tenant being served.
#[derive(Debug)]
pub struct Tenant {
    /// Resolved against the runtime's policy.
    pub facts: TenantFacts,
}

/// What a key leads to.
#[derive(Debug)]
pub struct KeyEntry {
    /// Index into [`Runtime::tenants`].
    pub tenant: usize,
    /// The key's facts.
    pub facts: KeyFacts,
}

/// An endpoint the gateway serves.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The policy's endpoint.
    pub id: EndpointId,
    /// Its name.
    pub name: String,
    /// How its bodies are read.
    pub kind: EndpointKind,
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
        "model `{0}` has no upstream: add an [upstreams.<name>] section (and `upstream = \"<name>\"` on the model if there are several)"
    )]
    NoUpstream(String),
    /// An upstream that cannot be used.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A mock upstream without an address.
    #[error("upstream `{0}` is a mock, but no mock server was started for it")]
    NoMock(String),
}

/// The served state.
#[derive(Debug)]
pub struct Runtime {
    /// The policy.
    pub policy: Policy,
    /// Gateway settings.
    pub settings: GatewayConfig,
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// Keys.
    pub keys: KeyTable<KeyEntry>,
    /// Endpoints by request path.
    pub endpoints: HashMap<String, Endpoint>,
    /// Routes by model.
    pub routes: HashMap<ModelId, Route>,
    /// Upstream clients.
    pub upstreams: Vec<Arc<UpstreamClient>>,
    /// Model id -> developer, for `/v1/models`.
    pub owners: HashMap<String, String>,
}

impl Runtime {
    /// Builds a runtime. `mock_url` gives the base URL of a mock upstream
    /// the caller started for a `mock = true` upstream (by name).
    pub fn build(
        config: &Config,
        mock_url: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, RuntimeError> {
        let policy = config.policy.clone();
        let mut tenants = Vec::new();
        let mut keys = KeyTable::default();
        for t in &config.tenants {
            let facts = policy
                .tenant(&t.spec)
                .map_err(|source| RuntimeError::Tenant { tenant: t.spec.id.clone(), source })?;
            let index = tenants.len();
            for k in &t.keys {
                let kf = policy
                    .key(&k.spec)
                    .map_err(|source| RuntimeError::Tenant { tenant: t.spec.id.clone(), source })?;
                let hash = parse_hash(&k.hash).ok_or_else(|| RuntimeError::Key {
                    tenant: t.spec.id.clone(),
                    key: k.spec.id.clone(),
                    problem: "the hash is not sha256:<64 hex digits>",
                })?;
                if !keys.insert(hash, KeyEntry { tenant: index, facts: kf }) {
                    return Err(RuntimeError::Key {
                        tenant: t.spec.id.clone(),
                        key: k.spec.id.clone(),
                        problem: "this key is already given to a tenant",
                    });
                }
            }
            tenants.push(Tenant { facts });
        }

        let mut endpoints = HashMap::new();
        for (name, path) in &config.endpoint_paths {
            let (Some(path), Some(id)) = (path, policy.endpoint(name)) else { continue };
            endpoints.insert(
                path.clone(),
                Endpoint { id, name: name.clone(), kind: EndpointKind::from_path(path) },
            );
        }

        let settings = config.gateway.clone();
        let mut upstreams = Vec::new();
        for u in &settings.upstreams {
            let base = match &u.target {
                UpstreamTarget::Url(url) => url.clone(),
                UpstreamTarget::Mock => {
                    mock_url(&u.name).ok_or_else(|| RuntimeError::NoMock(u.name.clone()))?
                }
            };
            upstreams.push(Arc::new(UpstreamClient::new(u, &base)?));
        }

        let mut routes = HashMap::new();
        for r in &settings.routes {
            let Some(model) = policy.model(&r.model) else { continue };
            let upstream = r.upstream.ok_or_else(|| RuntimeError::NoUpstream(r.model.clone()))?;
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
        Ok(Self {
            policy,
            settings,
            tenants,
            keys,
            endpoints,
            routes,
            upstreams,
            owners: config.developers.iter().cloned().collect(),
        })
    }
}

//! Sluice as a library: a [`tower`](https://docs.rs/tower) layer that
//! admits each request against a Sluice policy and a counter store, and
//! settles it when its response ends, so that a Rust service (axum, tonic,
//! hyper, anything built on `tower::Service`) enforces Sluice's limits
//! without the proxy. See `docs/LIBRARY.md` and `examples/axum.rs`.
//!
//! For each request, [`SluiceLayer`]'s service:
//!
//! 1. asks the [`Classify`] function what the request is: an
//!    [`Admission`] (who pays, which endpoint and model, what it is
//!    expected to cost), exempt, or refused at once (say, 401);
//! 2. plans it under the policy and admits it in the store, all limits or
//!    none;
//! 3. refused: answers 429 with OpenAI's error body and the
//!    `x-ratelimit-*`, `retry-after` and `retry-after-ms` headers, without
//!    calling the inner service (nothing of it runs for a refused request);
//!    the store failed: 503 ([`OnStoreError`]);
//! 4. admitted: calls the inner service with a [`UsageReport`] in the
//!    request's extensions, adds the `x-ratelimit-*` headers to its
//!    response, and settles the reservation when the response body ends.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sluice_tower::{Admission, Classification, SluiceLayer, sluice_core, sluice_store};
//!
//! let config = sluice_tower::sluice_config::parse(
//!     "[endpoints]\nsummarize = \"/summarize\"\n[tiers.free]\n[[limits]]\nname = \"rpm\"\nmetric = \"requests\"\namount = 60\nwindow = \"1m\"\n",
//!     "policy.toml",
//! )?;
//! let policy = Arc::new(config.policy);
//! let acme = Arc::new(policy.tenant(&sluice_core::TenantSpec { id: "acme".into(), tier: Some("free".into()), ..Default::default() })?);
//! let endpoint = sluice_tower::endpoint(&policy, "summarize")?;
//! let store = sluice_store::MemoryStore::new(sluice_core::SystemClock);
//! let layer = SluiceLayer::new(policy, store, move |_req: &http::Request<()>| {
//!     Classification::Admit(Admission::new(acme.clone(), endpoint))
//! });
//! # let _ = layer;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What a request is charged
//!
//! Tokens are reserved at admission ([`Admission::cost`]) and the
//! reservation is settled exactly once, when the request ends:
//!
//! | how the request ends | charged |
//! | --- | --- |
//! | the response body is read to its end | the reported usage; else what was reserved |
//! | the response body is dropped before its end (the client went away, the connection was cut, the server shut down) | the reported usage; else what was reserved |
//! | the response body fails (its stream returned an error) | the reported usage; else what was reserved |
//! | the request's future is dropped before the inner service answered | the reported usage; else what was reserved |
//! | the inner service returned an error (`Err`, no response) | the reported usage; else 1 request and no token |
//! | refused (429), refused by the classifier, or the store failed (503) | nothing: nothing was reserved |
//!
//! "Reported" is what the inner service last gave [`UsageReport::set`]
//! (its real token usage, or [`Usage::REFUND`] to charge nothing) before
//! the ending. A concurrency slot is given back in every case. Settlement
//! does not wait: a shared store settles in the background
//! ([`CounterStore::settle_detached`]).
#![forbid(unsafe_code)]

mod body;
mod reservation;
mod service;

use std::collections::HashMap;
use std::sync::Arc;

pub use body::LimitedBody;
pub use reservation::UsageReport;
pub use service::{OnStoreError, ResponseFuture, Sluice, SluiceLayer};

pub use sluice_config;
pub use sluice_core;
pub use sluice_core::{
    Cost, CounterStore, EndUser, EndpointId, KeyFacts, ModelRef, TenantFacts, Usage,
};
pub use sluice_llm::error::ApiError;
pub use sluice_llm::headers::HeaderOptions;
pub use sluice_store;

/// What the policy needs to know of one request: who pays, for what, and
/// what it is expected to cost.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The tenant, resolved against the layer's policy
    /// ([`Policy::tenant`](sluice_core::Policy::tenant)), once, not per
    /// request.
    pub tenant: Arc<TenantFacts>,
    /// Which of the tenant's keys, if limits look at keys.
    pub key: Option<Arc<KeyFacts>>,
    /// The endpoint called ([`endpoint`]).
    pub endpoint: EndpointId,
    /// The model asked for ([`Policy::model_ref`](sluice_core::Policy::model_ref));
    /// [`ModelRef::NONE`] for none.
    pub model: ModelRef,
    /// The tokens to reserve (input and output), settled when the request
    /// ends. [`Cost::REQUEST`]: none (request limits only).
    pub cost: Cost,
    /// The end user inside the tenant ([`EndUser::of`] of OpenAI's `user`,
    /// or of a header); [`EndUser::NONE`] for none.
    pub end_user: EndUser,
}

impl Admission {
    /// `tenant` calling `endpoint`, with no model and no token cost.
    pub fn new(tenant: Arc<TenantFacts>, endpoint: EndpointId) -> Self {
        Self {
            tenant,
            key: None,
            endpoint,
            model: ModelRef::NONE,
            cost: Cost::REQUEST,
            end_user: EndUser::NONE,
        }
    }

    /// The same, for `model`.
    pub fn model(mut self, model: ModelRef) -> Self {
        self.model = model;
        self
    }

    /// The same, reserving `cost`.
    pub fn cost(mut self, cost: Cost) -> Self {
        self.cost = cost;
        self
    }

    /// The same, with `key`.
    pub fn key(mut self, key: Arc<KeyFacts>) -> Self {
        self.key = Some(key);
        self
    }

    /// The same, for end user `end_user`.
    pub fn end_user(mut self, end_user: EndUser) -> Self {
        self.end_user = end_user;
        self
    }

    fn request(&self) -> sluice_core::Ask<'_> {
        sluice_core::Ask {
            tenant: &self.tenant,
            key: self.key.as_deref(),
            endpoint: self.endpoint,
            model: self.model,
            cost: self.cost,
            end_user: self.end_user,
        }
    }
}

/// What a request is, for the layer.
#[derive(Clone, Debug)]
pub enum Classification {
    /// Admit it against the policy.
    Admit(Admission),
    /// Not limited: passed to the inner service as it is (a health check).
    Exempt,
    /// Answered at once with this error (an unknown tenant: 401); the inner
    /// service is not called and nothing is counted.
    Refuse(ApiError),
}

/// Says what a request is ([`Classification`]), from its head: called
/// before anything else happens to the request, so it should be cheap (a
/// map lookup; never the body). Any `Fn(&http::Request<B>) ->
/// Classification` is one.
pub trait Classify<B>: Send + Sync + 'static {
    /// What `request` is.
    fn classify(&self, request: &http::Request<B>) -> Classification;
}

impl<B, F> Classify<B> for F
where
    F: Fn(&http::Request<B>) -> Classification + Send + Sync + 'static,
{
    fn classify(&self, request: &http::Request<B>) -> Classification {
        self(request)
    }
}

/// Why a policy or its tenants could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy text does not validate.
    #[error("{0}")]
    Config(#[from] sluice_config::ConfigErrors),
    /// A tenant does not fit the policy.
    #[error(transparent)]
    Tenant(#[from] sluice_core::FactsError),
    /// The policy has no such endpoint.
    #[error("the policy has no endpoint `{0}`")]
    UnknownEndpoint(String),
}

/// The policy's endpoint `name`.
pub fn endpoint(policy: &sluice_core::Policy, name: &str) -> Result<EndpointId, Error> {
    policy.endpoint(name).ok_or_else(|| Error::UnknownEndpoint(name.to_owned()))
}

/// The tenants a policy file lists (`[tenants.<id>]`), resolved against its
/// policy, by id: what a small service can classify with.
pub fn tenants(config: &sluice_config::Config) -> Result<HashMap<String, Arc<TenantFacts>>, Error> {
    config
        .tenants
        .iter()
        .map(|t| Ok((t.spec.id.clone(), Arc::new(config.policy.tenant(&t.spec)?))))
        .collect()
}

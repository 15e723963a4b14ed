//! Sluice's decision service: the engine's admissions for gateways that
//! already proxy (Envoy, Envoy AI Gateway, Istio, Kong, nginx) and only want
//! the decisions.
//!
//! Two APIs over one [`DecisionService`], which serves the state of a
//! [`Served`] (its policy, tenants and keys, counter store and clock), so a
//! decision here and a request through `sluice serve` share the same
//! counters:
//!
//! - **Envoy RLS v3** ([`serve_grpc`]): `envoy.service.ratelimit.v3.
//!   RateLimitService/ShouldRateLimit`. The domain must be one of
//!   `decisions.domains`; descriptor entries carry request facts (tenant id,
//!   API key, model, endpoint, end user: `[decisions.descriptors]`);
//!   `hits_addend` is the token cost. One call is **one** all-or-nothing
//!   admission over the union of its descriptors' facts. The response has one
//!   `DescriptorStatus` per descriptor (the rule is in [`grpc`]), the wire
//!   contract's `x-ratelimit-*` headers in `response_headers_to_add`, and on
//!   a denial `OVER_LIMIT`, `retry-after` and the OpenAI-shaped 429 body
//!   (`raw_body`).
//! - **JSON** ([`serve_http`]): `POST /v1/decisions/check` (facts and an
//!   estimated cost -> a decision and a reservation id) and
//!   `POST /v1/decisions/settle` (the reservation id and the real usage ->
//!   refund or debt, once), which Envoy's protocol cannot express; plus
//!   `GET /metrics` (Prometheus) and `GET /healthz`.
//!
//! Bad input (an unknown domain, tenant, key, model or endpoint; facts that
//! disagree; a negative or absurd cost) is refused with INVALID_ARGUMENT or
//! 400 before the store is touched: it never charges anyone. A store that
//! fails (and a policy that fails closed) gives UNAVAILABLE or 503.
//!
//! Both servers take their listener and a shutdown future as arguments, so
//! tests bind port 0.
#![forbid(unsafe_code)]

pub mod engine;
pub mod grpc;
pub mod http_api;
pub mod metrics;
#[cfg(test)]
mod testutil;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use sluice_config::decisions::DecisionsConfig;
use sluice_core::{Clock, CounterStore, ReservationId, Settlement, Usage};
use sluice_served::{BodyBudget, ListenerOptions, Served};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use engine::{Answer, DecisionError, DecisionKind, Query};
pub use grpc::serve_grpc;
pub use http_api::serve_http;
pub use metrics::{Api, Metrics};

use engine::RuntimeIndex;

/// Why the decision service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `decisions.token_env` names a variable that is not set.
    #[error(
        "decisions.token_env names `{0}`, which is not set (or empty): set it to the bearer token the JSON API requires"
    )]
    MissingToken(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What both APIs share: the served state, the section's settings, the
/// JSON API's token, and the metrics.
pub struct DecisionService<S> {
    served: Arc<Served<S>>,
    config: DecisionsConfig,
    /// SHA-256 of the bearer token the JSON API requires, if any.
    token: Option<[u8; 32]>,
    metrics: Metrics,
    index: ArcSwapOption<RuntimeIndex>,
    /// Checks waiting for room (`max_wait`, JSON API only).
    queue: sluice_store::WaitQueue,
}

impl<S> std::fmt::Debug for DecisionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionService")
            .field("config", &self.config)
            .field("token", &self.token.map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl<S: CounterStore + Clone + Unpin> DecisionService<S> {
    /// A service over `served`; `token`, when given, is required as
    /// `Authorization: Bearer <token>` by the JSON API.
    pub fn new(served: Arc<Served<S>>, config: DecisionsConfig, token: Option<&str>) -> Arc<Self> {
        let metrics = Metrics::new();
        metrics.share(served.metrics().registry());
        Arc::new(Self {
            served,
            config,
            token: token.map(sluice_served::auth::hash_secret),
            metrics,
            index: ArcSwapOption::empty(),
            queue: sluice_store::WaitQueue::new(sluice_store::QueueBounds::default()),
        })
    }

    /// A service whose token is read from `config.token_env` (refused when
    /// that variable is not set).
    pub fn from_env(
        served: Arc<Served<S>>,
        config: DecisionsConfig,
    ) -> Result<Arc<Self>, ServeError> {
        let token = match &config.token_env {
            Some(var) => match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                _ => return Err(ServeError::MissingToken(var.clone())),
            },
            None => None,
        };
        Ok(Self::new(served, config, token.as_deref()))
    }

    /// The settings.
    pub fn config(&self) -> &DecisionsConfig {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The state served.
    pub fn served(&self) -> &Arc<Served<S>> {
        &self.served
    }

    /// The index of the runtime now served (rebuilt when it was replaced).
    pub(crate) fn index(&self) -> Arc<RuntimeIndex> {
        let rt = self.served.runtime();
        if let Some(ix) = self.index.load_full()
            && Arc::ptr_eq(&ix.runtime, &rt)
        {
            return ix;
        }
        let ix = Arc::new(RuntimeIndex::new(rt));
        self.index.store(Some(ix.clone()));
        ix
    }

    /// The domain as a metric label: a configured one, else `unknown`.
    pub(crate) fn domain_label<'a>(&'a self, domain: &'a str) -> &'a str {
        if self.config.domains.iter().any(|d| d == domain) { domain } else { "unknown" }
    }

    /// Whether the JSON API's bearer token matches (true when none is
    /// required). Compares SHA-256 digests without an early exit.
    pub(crate) fn token_ok(&self, presented: Option<&str>) -> Option<bool> {
        let want = self.token.as_ref()?;
        let Some(p) = presented else { return Some(false) };
        Some(sluice_served::auth::same(want, &sluice_served::auth::hash_secret(p)))
    }

    /// Counts a refused call and hands the error back.
    pub(crate) fn refused(&self, api: Api, domain: &str, e: DecisionError) -> DecisionError {
        let outcome =
            if matches!(e, DecisionError::Unavailable(_)) { "unavailable" } else { "invalid" };
        self.metrics.decision(api, self.domain_label(domain), outcome);
        e
    }

    /// Decides one request: checks the domain and cost, resolves the facts,
    /// and admits it against every limit that applies, all or nothing. An
    /// admitted request keeps its reservation: settle it with
    /// [`DecisionService::settle`], or release it.
    pub async fn check(
        &self,
        domain: &str,
        q: &Query<'_>,
        api: Api,
    ) -> Result<Answer, DecisionError> {
        let result = self.check_inner(domain, q).await;
        match result {
            Ok(answer) => {
                self.metrics.decision(api, domain, answer.kind().as_str());
                self.metrics.limits(domain, &answer);
                if let Some(event) = answer.event() {
                    self.served.record(&event);
                }
                Ok(answer)
            }
            Err(e) => Err(self.refused(api, domain, e)),
        }
    }

    async fn check_inner(&self, domain: &str, q: &Query<'_>) -> Result<Answer, DecisionError> {
        if !self.config.domains.iter().any(|d| d == domain) {
            return Err(DecisionError::UnknownDomain {
                domain: engine::echo(domain),
                known: self
                    .config
                    .domains
                    .iter()
                    .map(|d| format!("`{d}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        engine::check_cost(q.cost, self.config.max_cost)?;
        let index = self.index();
        let now = self.served.clock.now();
        let resolved = engine::resolve(&index, q, &self.config, now)?;
        let waiting = engine::Waiting {
            queue: &self.queue,
            clock: &*self.served.clock,
            max_wait: q.max_wait,
        };
        engine::admit(&self.served.store, now, index.clone(), resolved, q.cost, waiting).await
    }

    /// Settles a reservation made by [`DecisionService::check`] with what the
    /// request really used: the difference is refunded or becomes debt. A
    /// second settlement (or one after the lease expired) has no effect.
    pub async fn settle(
        &self,
        id: ReservationId,
        usage: Usage,
    ) -> Result<Settlement, DecisionError> {
        let s = self.served.store.settle(id, usage).await.map_err(|e| {
            tracing::error!(error = %e, "counter store failed to settle");
            DecisionError::Unavailable(e.to_string())
        })?;
        self.metrics.settlement(match s {
            Settlement::Settled => "settled",
            Settlement::Unknown => "unknown",
        });
        Ok(s)
    }
}

/// The running decision service (what `sluice serve` starts).
#[derive(Debug)]
pub struct Running {
    /// Where the gRPC listener is bound.
    pub grpc: Option<SocketAddr>,
    /// Where the JSON listener is bound.
    pub http: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    /// Stops accepting, lets calls in flight finish, and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "decision service stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "decision service task failed"),
            }
        }
    }
}

/// Binds the configured listeners (port 0: any free port) and serves both
/// APIs over `served` until [`Running::stop`].
pub async fn start<S: CounterStore + Clone + Unpin>(
    served: Arc<Served<S>>,
    config: &DecisionsConfig,
    budget: Arc<BodyBudget>,
    grace: Duration,
) -> Result<Running, ServeError> {
    let gauges = served.clone();
    let opts = |name| ListenerOptions {
        name,
        limits: config.limits,
        budget: budget.clone(),
        grace,
        meters: Some(gauges.metrics().listener(name)),
    };
    let svc = DecisionService::from_env(served, config.clone())?;
    let (stop, rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut running = Running { grpc: None, http: None, stop, tasks: Vec::new() };
    if let Some(addr) = config.grpc_listen {
        let listener =
            TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        running.grpc = Some(listener.local_addr()?);
        running.tasks.push(tokio::spawn(serve_grpc(
            listener,
            svc.clone(),
            shutdown(),
            opts("decisions-grpc"),
        )));
    }
    if let Some(addr) = config.http_listen {
        let listener =
            TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        running.http = Some(listener.local_addr()?);
        let fut = serve_http(listener, svc.clone(), shutdown(), opts("decisions-http"));
        running.tasks.push(tokio::spawn(async move { fut.await.map_err(ServeError::from) }));
    }
    Ok(running)
}

//! The proxy's Prometheus metrics (docs/OBSERVABILITY.md#metrics), in the
//! registry every metric of the process joins
//! ([`sluice_served::metrics::SharedRegistry`]).
//!
//! Label values are bounded by the policy: endpoints, models, tiers and
//! limit names are the policy's, statuses a fixed set ([`meters::STATUSES`]).
//! Tenants are labels only when the operator asks (`[metrics] per_tenant =
//! true`), in series of their own (`sluice_tenant_*`).
//!
//! The request path touches no label set: [`Meters`], built once per
//! runtime, holds each (endpoint, model, tier, status) counter in a slot of
//! its own, resolved against the registry the first time it is used (one
//! `Family::get_or_create`, a lock and a hash) and an atomic add after.

mod meters;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sluice_served::Runtime;
use sluice_served::metrics::SharedRegistry;

pub use meters::{Meters, STATUSES, status_label};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) endpoint: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) tier: Arc<str>,
    pub(crate) status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabels {
    pub(crate) limit: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TokenLabels {
    pub(crate) model: Arc<str>,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub(crate) model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TenantRequestLabels {
    pub(crate) tenant: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TenantTokenLabels {
    pub(crate) tenant: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TenantLimitLabels {
    pub(crate) tenant: Arc<str>,
    pub(crate) limit: Arc<str>,
}

pub(crate) type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 1 ms … ~65 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Seconds, 50 µs … ~1.6 s (a store call).
fn store_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// (estimated − reported) / reported input tokens.
fn error_histogram() -> Histogram {
    Histogram::new([-0.5, -0.25, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0])
}

/// Series counted per tenant (`[metrics] per_tenant = true`).
#[derive(Debug)]
pub(crate) struct PerTenant {
    pub(crate) requests: Family<TenantRequestLabels, Counter>,
    pub(crate) tokens: Family<TenantTokenLabels, Counter>,
    pub(crate) denials: Family<TenantLimitLabels, Counter>,
}

/// The proxy's metrics.
#[derive(Debug)]
pub struct ProxyMetrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) denials: Family<LimitLabels, Counter>,
    pub(crate) tokens: Family<TokenLabels, Counter>,
    pub(crate) estimate_error: Histograms<ModelLabels>,
    pub(crate) upstream_head: Histograms<ModelLabels>,
    pub(crate) upstream_first_byte: Histograms<ModelLabels>,
    pub(crate) admission: Histogram,
    access_dropped: Counter,
    pub(crate) per_tenant: Option<PerTenant>,
    access_log: std::sync::OnceLock<crate::access_log::AccessLog>,
}

impl ProxyMetrics {
    /// Empty metrics registered in `registry`; with tenant labels if
    /// `per_tenant`.
    pub fn new(registry: &SharedRegistry, per_tenant: bool) -> Self {
        let r = registry;
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "sluice_requests",
            "Requests to the policy's endpoints, by endpoint, model, tier and status (model and tier empty when refused before they were known)",
            requests.clone(),
        );
        let denials = Family::<LimitLabels, Counter>::default();
        r.register(
            "sluice_denials",
            "Requests refused (429) by a limit, by its name",
            denials.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        r.register(
            "sluice_tokens",
            "Tokens charged at settlement, by model and kind (input, output); and cached_input and reasoning: the parts of the upstream's reported input and output read from its cache and spent reasoning, charged or not as [tokens] says",
            tokens.clone(),
        );
        let estimate_error: Histograms<ModelLabels> = Family::new_with_constructor(error_histogram);
        r.register(
            "sluice_estimate_error_ratio",
            "How far the input-token estimate was from what the upstream reported: (estimated - reported) / reported, by model",
            estimate_error.clone(),
        );
        let upstream_head: Histograms<ModelLabels> =
            Family::new_with_constructor(seconds_histogram);
        r.register(
            "sluice_upstream_response_seconds",
            "Time from sending a request upstream to its response head, by model",
            upstream_head.clone(),
        );
        let upstream_first_byte: Histograms<ModelLabels> =
            Family::new_with_constructor(seconds_histogram);
        r.register(
            "sluice_upstream_first_byte_seconds",
            "Time from sending a request upstream to the first bytes of its response body (a stream's first token), by model",
            upstream_first_byte.clone(),
        );
        let admission = store_histogram();
        r.register(
            "sluice_admission_seconds",
            "Time the counter store took to admit or refuse a request",
            admission.clone(),
        );
        let access_dropped = Counter::default();
        r.register(
            "sluice_access_log_dropped",
            "Access-log lines dropped because the writer was behind",
            access_dropped.clone(),
        );
        let per_tenant = per_tenant.then(|| {
            let t = PerTenant {
                requests: Family::default(),
                tokens: Family::default(),
                denials: Family::default(),
            };
            r.register(
                "sluice_tenant_requests",
                "Requests to the policy's endpoints, by tenant, model and status",
                t.requests.clone(),
            );
            r.register(
                "sluice_tenant_tokens",
                "Tokens charged at settlement, by tenant, model and kind",
                t.tokens.clone(),
            );
            r.register(
                "sluice_tenant_denials",
                "Requests refused (429) by a limit, by tenant and limit",
                t.denials.clone(),
            );
            t
        });
        Self {
            requests,
            denials,
            tokens,
            estimate_error,
            upstream_head,
            upstream_first_byte,
            admission,
            access_dropped,
            per_tenant,
            access_log: std::sync::OnceLock::new(),
        }
    }

    /// Writes an access-log line for every request from now on (once;
    /// later calls are ignored).
    pub fn set_access_log(&self, log: crate::access_log::AccessLog) {
        let _ = self.access_log.set(log);
    }

    /// The access log, if there is one.
    #[inline]
    pub fn access_log(&self) -> Option<&crate::access_log::AccessLog> {
        self.access_log.get()
    }

    /// The counter of access-log lines dropped.
    pub fn access_log_dropped(&self) -> &Counter {
        &self.access_dropped
    }
}

/// The proxy's meters `runtime` carries, if a gateway bound them.
#[inline]
pub fn of(runtime: &Runtime) -> Option<&Meters> {
    runtime.meters.as_deref()?.downcast_ref()
}

/// The same, shared (for a request's [`crate::reservation::Meter`]).
pub fn shared(runtime: &Runtime) -> Option<Arc<Meters>> {
    runtime.meters.clone()?.downcast().ok()
}

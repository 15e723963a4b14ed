//! The gateway's Prometheus metrics (docs/OBSERVABILITY.md#metrics), in one
//! registry that the decision service's metrics join.
//!
//! Label values are bounded by the policy: endpoints, models, tiers and
//! limit names are the policy's, statuses a fixed set ([`meters::STATUSES`]),
//! listeners the few Sluice opens. Tenants are labels only when the
//! operator asks (`[metrics] per_tenant = true`), in series of their own
//! (`sluice_tenant_*`).
//!
//! The request path touches no label set: [`Meters`], built once per
//! runtime, holds each (endpoint, model, tier, status) counter in a slot of
//! its own, resolved against the registry the first time it is used (one
//! `Family::get_or_create`, a lock and a hash) and an atomic add after.

mod meters;
mod serve;

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

pub use meters::{Meters, STATUSES, status_label};
pub use serve::serve_metrics;

/// The `Content-Type` of [`SharedRegistry::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of [`SharedRegistry::encode_prometheus`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text format a scraper asked for: OpenMetrics if its `Accept` names
/// it (Prometheus does), else the Prometheus text format (0.0.4: curl,
/// `promtool check metrics`). Its `Content-Type`.
pub fn negotiate(accept: Option<&http::HeaderValue>) -> &'static str {
    let open = accept
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if open { CONTENT_TYPE } else { PROMETHEUS_CONTENT_TYPE }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics text: a counter's
/// family is named with its `_total` suffix, and there is no `# EOF`.
fn to_prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            if let Some(h) = help.take() {
                let text = h.splitn(4, ' ').nth(3).unwrap_or("");
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One registry for every metric of the process: registered into at start,
/// read at each scrape.
#[derive(Clone, Debug, Default)]
pub struct SharedRegistry(Arc<RwLock<(Registry, Vec<String>)>>);

impl SharedRegistry {
    /// Registers `metric` as `name` (a name registered already is left as
    /// it is: one family per name).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        let mut r = self.0.write();
        if r.1.iter().any(|n| n == name) {
            return;
        }
        r.1.push(name.to_owned());
        r.0.register(name, help, metric);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.0.read().0).is_err() {
            tracing::warn!("encoding metrics failed");
        }
        out
    }

    /// The Prometheus text format (0.0.4).
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

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
struct ListenerLabels {
    listener: &'static str,
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

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: SharedRegistry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) denials: Family<LimitLabels, Counter>,
    pub(crate) tokens: Family<TokenLabels, Counter>,
    pub(crate) estimate_error: Histograms<ModelLabels>,
    pub(crate) upstream_head: Histograms<ModelLabels>,
    pub(crate) upstream_first_byte: Histograms<ModelLabels>,
    pub(crate) admission: Histogram,
    store_up: Gauge,
    pending: Gauge,
    connections: Family<ListenerLabels, Gauge>,
    in_flight: Family<ListenerLabels, Gauge>,
    access_dropped: Counter,
    pub(crate) per_tenant: Option<PerTenant>,
    access_log: std::sync::OnceLock<crate::access_log::AccessLog>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// Empty metrics in a registry of their own; with tenant labels if
    /// `per_tenant`.
    pub fn new(per_tenant: bool) -> Self {
        let registry = SharedRegistry::default();
        let r = &registry;
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
            "Tokens charged at settlement, by model and kind (input, output)",
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
        let store_up = Gauge::default();
        r.register(
            "sluice_store_up",
            "1 when the counter store answers, 0 while it is degraded",
            store_up.clone(),
        );
        let pending = Gauge::default();
        r.register(
            "sluice_store_pending_settlements",
            "Settlements waiting to be sent to the counter store",
            pending.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        r.register("sluice_open_connections", "Open connections, by listener", connections.clone());
        let in_flight = Family::<ListenerLabels, Gauge>::default();
        r.register(
            "sluice_requests_in_flight",
            "Requests whose response has not ended, by listener",
            in_flight.clone(),
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
            registry,
            requests,
            denials,
            tokens,
            estimate_error,
            upstream_head,
            upstream_first_byte,
            admission,
            store_up,
            pending,
            connections,
            in_flight,
            access_dropped,
            per_tenant,
            access_log: std::sync::OnceLock::new(),
        }
    }

    /// The registry (the decision service registers its own metrics here).
    pub fn registry(&self) -> &SharedRegistry {
        &self.registry
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

    /// The gauges of listener `name`.
    pub fn listener(&self, name: &'static str) -> ListenerMeters {
        let l = ListenerLabels { listener: name };
        ListenerMeters {
            connections: self.connections.get_or_create_owned(&l),
            in_flight: self.in_flight.get_or_create_owned(&l),
        }
    }

    /// The text exposition in `format` (a `Content-Type` of
    /// [`negotiate`]), with the store's health as of now.
    pub fn encode(&self, store_up: bool, pending_settlements: usize, format: &str) -> String {
        self.store_up.set(i64::from(store_up));
        self.pending.set(i64::try_from(pending_settlements).unwrap_or(i64::MAX));
        if format == CONTENT_TYPE {
            self.registry.encode()
        } else {
            self.registry.encode_prometheus()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_names_counters_with_their_suffix() {
        let m = Metrics::new(false);
        m.access_log_dropped().inc();
        let open = m.encode(true, 3, CONTENT_TYPE);
        assert!(open.contains("# TYPE sluice_access_log_dropped counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
        let text = m.encode(true, 3, PROMETHEUS_CONTENT_TYPE);
        assert!(text.contains("# HELP sluice_access_log_dropped_total Access-log"), "{text}");
        assert!(text.contains("# TYPE sluice_access_log_dropped_total counter\n"), "{text}");
        assert!(text.contains("\nsluice_access_log_dropped_total 1\n"), "{text}");
        assert!(text.contains("\nsluice_store_pending_settlements 3\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(negotiate(None), PROMETHEUS_CONTENT_TYPE);
        let prom = http::HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4",
        );
        assert_eq!(negotiate(Some(&prom)), CONTENT_TYPE);
    }
}

/// A listener's gauges: open connections and requests in flight.
#[derive(Clone, Debug, Default)]
pub struct ListenerMeters {
    pub(crate) connections: Gauge,
    pub(crate) in_flight: Gauge,
}

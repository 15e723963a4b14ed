//! The process's Prometheus metrics (docs/OBSERVABILITY.md#metrics): one
//! registry that the proxy's metrics (sluice-gateway) and the decision
//! service's (sluice-rls) join, the counter store's health, each listener's
//! gauges, and the text exposition a scrape reads.
//!
//! Label values are bounded: listeners are the few Sluice opens.

mod serve;

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

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
struct ListenerLabels {
    listener: &'static str,
}

/// The metrics every instance has, whatever it serves: the registry the
/// others join, the counter store's health and the listeners' gauges.
#[derive(Debug)]
pub struct Metrics {
    registry: SharedRegistry,
    store_up: Gauge,
    pending: Gauge,
    connections: Family<ListenerLabels, Gauge>,
    in_flight: Family<ListenerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(SharedRegistry::default())
    }
}

impl Metrics {
    /// The store's and listeners' metrics, registered in `registry`.
    pub fn new(registry: SharedRegistry) -> Self {
        let r = &registry;
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
        Self { registry, store_up, pending, connections, in_flight }
    }

    /// The registry (the proxy and the decision service register their own
    /// metrics here).
    pub fn registry(&self) -> &SharedRegistry {
        &self.registry
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
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn the_prometheus_text_names_counters_with_their_suffix() {
        let m = Metrics::default();
        let dropped = Counter::<u64>::default();
        m.registry().register(
            "sluice_access_log_dropped",
            "Access-log lines dropped because the writer was behind",
            dropped.clone(),
        );
        dropped.inc();
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

//! Prometheus metrics of the decision service, served as text at
//! `GET /metrics` on the JSON listener.
//!
//! - `sluice_decisions_total{api, domain, outcome}`: one per call;
//!   `outcome` is `admitted`, `limited`, `too_large`, `invalid` (refused
//!   input, nothing charged) or `unavailable` (the store failed).
//! - `sluice_decision_limits_total{domain, limit, outcome}`: per limit that
//!   applied to a decided call: `admitted` (charged), `limited` or
//!   `too_large` (this limit had no room), `shadow_limited` (a shadow limit
//!   that would have denied).
//! - `sluice_settlements_total{outcome}`: settlements through the JSON API:
//!   `settled`, or `unknown` (already settled, expired, or never issued).
//! - `sluice_decision_duration_seconds{api}`: time to decide, from the
//!   request read to the answer built.
//!
//! Label values are bounded by the policy: domains are the configured ones
//! (`unknown` for any other), limits are the policy's names; tenants are not
//! labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_core::Verdict as LimitVerdict;

use crate::engine::Answer;

/// Which API a decision came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// Envoy RLS v3 over gRPC.
    Grpc,
    /// The JSON API.
    Http,
}

impl Api {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    api: &'static str,
    domain: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    domain: String,
    limit: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

type Latency = Family<ApiLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs … ~0.33 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

const DECISIONS_HELP: &str = "Decisions asked of the decision service, by API, domain and outcome";
const LIMITS_HELP: &str = "Limits that applied to decisions, by domain, limit and outcome";
const SETTLEMENTS_HELP: &str = "Settlements through the JSON API, by outcome";
const LATENCY_HELP: &str = "Time to make one decision";

/// The decision service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    limits: Family<LimitLabels, Counter>,
    settlements: Family<OutcomeLabels, Counter>,
    latency: Latency,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty counters, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let limits = Family::<LimitLabels, Counter>::default();
        let settlements = Family::<OutcomeLabels, Counter>::default();
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        registry.register("sluice_decisions", DECISIONS_HELP, decisions.clone());
        registry.register("sluice_decision_limits", LIMITS_HELP, limits.clone());
        registry.register("sluice_settlements", SETTLEMENTS_HELP, settlements.clone());
        registry.register("sluice_decision_duration_seconds", LATENCY_HELP, latency.clone());
        Self { registry, decisions, limits, settlements, latency }
    }

    /// Registers these metrics in `shared` too (the process's registry,
    /// served on the admin and metrics listeners), counting into the same
    /// series. This listener's `/metrics` keeps serving its own only.
    pub fn share(&self, shared: &sluice_served::metrics::SharedRegistry) {
        shared.register("sluice_decisions", DECISIONS_HELP, self.decisions.clone());
        shared.register("sluice_decision_limits", LIMITS_HELP, self.limits.clone());
        shared.register("sluice_settlements", SETTLEMENTS_HELP, self.settlements.clone());
        shared.register("sluice_decision_duration_seconds", LATENCY_HELP, self.latency.clone());
    }

    /// Counts one call and how it ended.
    pub fn decision(&self, api: Api, domain: &str, outcome: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                api: api.as_str(),
                domain: domain.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts the limits of a decided call.
    pub fn limits(&self, domain: &str, answer: &Answer) {
        let policy = &answer.runtime().policy;
        let admitted = answer.decision.is_admitted();
        for s in &answer.decision.statuses {
            let outcome = match (s.verdict, s.shadow, admitted) {
                (LimitVerdict::Fits, true, _) => continue,
                (_, true, _) => "shadow_limited",
                (LimitVerdict::Fits, false, true) => "admitted",
                // Fit, but another limit denied the call: nothing charged.
                (LimitVerdict::Fits, false, false) => continue,
                (LimitVerdict::WaitUntil(_), false, _) => "limited",
                (LimitVerdict::Never, false, _) => "too_large",
            };
            let Some(limit) = policy.limit(s.limit) else { continue };
            self.limits
                .get_or_create(&LimitLabels {
                    domain: domain.to_owned(),
                    limit: limit.name.to_string(),
                    outcome,
                })
                .inc();
        }
    }

    /// Counts one settlement: `settled` or `unknown`.
    pub fn settlement(&self, outcome: &'static str) {
        self.settlements.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records how long a decision took.
    pub fn observe(&self, api: Api, seconds: f64) {
        self.latency.get_or_create(&ApiLabels { api: api.as_str() }).observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encoding metrics failed");
        }
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text() {
        let m = Metrics::new();
        m.decision(Api::Grpc, "sluice", "admitted");
        m.decision(Api::Grpc, "sluice", "admitted");
        m.decision(Api::Http, "unknown", "invalid");
        m.observe(Api::Grpc, 0.000_2);
        let text = m.encode();
        assert!(
            text.contains(
                r#"sluice_decisions_total{api="grpc",domain="sluice",outcome="admitted"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sluice_decisions_total{api="http",domain="unknown",outcome="invalid"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"sluice_decision_duration_seconds_count{api="grpc"} 1"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

//! The metrics of one runtime's policy, resolved ahead: a slot for each
//! (endpoint, model, tier, status) counter, each limit, each model's
//! tokens and histograms. A slot is bound to its registry series the first
//! time it is used; after that, counting is an atomic add.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sluice_core::{EndpointId, LimitId, ModelId, Policy, TierId};

use super::{
    LimitLabels, ModelLabels, ProxyMetrics, RequestLabels, TenantLimitLabels, TenantRequestLabels,
    TenantTokenLabels, TokenLabels,
};

/// The `status` label's values: the statuses Sluice itself answers with and
/// the usual upstream ones, and a class for any other.
pub const STATUSES: [&str; 18] = [
    "200", "400", "401", "403", "404", "405", "408", "413", "422", "429", "500", "502", "503",
    "504", "2xx", "3xx", "4xx", "5xx",
];
/// Any status outside 200 to 599.
const OTHER: &str = "other";

fn status_index(status: u16) -> Option<usize> {
    Some(match status {
        200 => 0,
        400 => 1,
        401 => 2,
        403 => 3,
        404 => 4,
        405 => 5,
        408 => 6,
        413 => 7,
        422 => 8,
        429 => 9,
        500 => 10,
        502 => 11,
        503 => 12,
        504 => 13,
        201..=299 => 14,
        300..=399 => 15,
        402..=499 => 16,
        501..=599 => 17,
        _ => return None,
    })
}

/// The `status` label of an HTTP status.
pub fn status_label(status: u16) -> &'static str {
    status_index(status).map_or(OTHER, |i| STATUSES[i])
}

/// The `kind` label's values: tokens charged (input, output), and the
/// parts of the reported usage read from cache and spent reasoning (counted
/// only when there are some: an upstream that reports none adds no series).
const KINDS: [&str; 4] = ["input", "output", "cached_input", "reasoning"];
const SLOTS: usize = STATUSES.len() + 1;

fn slots<T>(n: usize) -> Box<[OnceLock<T>]> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// One runtime's metrics, resolved ahead.
#[derive(Debug)]
pub struct Meters {
    metrics: Arc<ProxyMetrics>,
    endpoints: Box<[Arc<str>]>,
    /// The policy's models, then `""` (not known).
    models: Box<[Arc<str>]>,
    /// The policy's tiers, then `""` (not known).
    tiers: Box<[Arc<str>]>,
    limits: Box<[Arc<str>]>,
    /// [endpoint][model][tier][status]
    requests: Box<[OnceLock<Counter>]>,
    denials: Box<[OnceLock<Counter>]>,
    /// [model][kind]
    tokens: Box<[OnceLock<Counter>]>,
    estimate_error: Box<[OnceLock<Histogram>]>,
    upstream_head: Box<[OnceLock<Histogram>]>,
    upstream_first_byte: Box<[OnceLock<Histogram>]>,
}

impl Meters {
    /// The slots of `policy`'s names in `metrics`.
    pub fn new(metrics: &Arc<ProxyMetrics>, policy: &Policy) -> Self {
        let none: Arc<str> = Arc::from("");
        let endpoints: Box<[Arc<str>]> = policy.endpoints().map(|(_, e)| e.name.clone()).collect();
        let models: Box<[Arc<str>]> =
            policy.models().map(|(_, m)| m.name.clone()).chain([none.clone()]).collect();
        let tiers: Box<[Arc<str>]> =
            policy.tiers().map(|(_, t)| t.name.clone()).chain([none]).collect();
        let limits: Box<[Arc<str>]> = policy.limits().map(|(_, l)| l.name.clone()).collect();
        let n_models = models.len();
        Self {
            metrics: metrics.clone(),
            requests: slots(endpoints.len() * n_models * tiers.len() * SLOTS),
            denials: slots(limits.len()),
            tokens: slots(n_models * KINDS.len()),
            estimate_error: slots(n_models),
            upstream_head: slots(n_models),
            upstream_first_byte: slots(n_models),
            endpoints,
            models,
            tiers,
            limits,
        }
    }

    /// The name of a limit.
    pub fn limit_name(&self, limit: LimitId) -> Option<&Arc<str>> {
        self.limits.get(limit.index())
    }

    /// The name of an endpoint.
    pub fn endpoint_name(&self, endpoint: EndpointId) -> Option<&Arc<str>> {
        self.endpoints.get(endpoint.index())
    }

    /// The metrics these slots count into.
    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
    }

    fn model_index(&self, model: Option<ModelId>) -> usize {
        let none = self.models.len() - 1;
        model.map_or(none, |m| m.index().min(none))
    }

    /// Counts a request to `endpoint` answered with `status`.
    #[inline]
    pub fn request(
        &self,
        endpoint: EndpointId,
        model: Option<ModelId>,
        tier: Option<TierId>,
        status: u16,
    ) {
        let e = endpoint.index();
        if e >= self.endpoints.len() {
            return;
        }
        let m = self.model_index(model);
        let t_none = self.tiers.len() - 1;
        let t = tier.map_or(t_none, |t| t.index().min(t_none));
        let s = status_index(status).unwrap_or(STATUSES.len());
        let i = ((e * self.models.len() + m) * self.tiers.len() + t) * SLOTS + s;
        let Some(slot) = self.requests.get(i) else { return };
        slot.get_or_init(|| {
            self.metrics.requests.get_or_create_owned(&RequestLabels {
                endpoint: self.endpoints[e].clone(),
                model: self.models[m].clone(),
                tier: self.tiers[t].clone(),
                status: STATUSES.get(s).copied().unwrap_or(OTHER),
            })
        })
        .inc();
    }

    /// Counts a request of `tenant` to `model` answered with `status`
    /// (per-tenant series only).
    pub fn tenant_request(&self, tenant: &Arc<str>, model: Option<ModelId>, status: u16) {
        if let Some(t) = &self.metrics.per_tenant {
            let labels = TenantRequestLabels {
                tenant: tenant.clone(),
                model: self.models[self.model_index(model)].clone(),
                status: status_label(status),
            };
            t.requests.get_or_create(&labels).inc();
        }
    }

    /// Counts a refusal by `limit`.
    #[inline]
    pub fn denial(&self, limit: LimitId, tenant: &Arc<str>) {
        let Some(slot) = self.denials.get(limit.index()) else { return };
        let name = &self.limits[limit.index()];
        slot.get_or_init(|| {
            self.metrics.denials.get_or_create_owned(&LimitLabels { limit: name.clone() })
        })
        .inc();
        if let Some(t) = &self.metrics.per_tenant {
            let labels = TenantLimitLabels { tenant: tenant.clone(), limit: name.clone() };
            t.denials.get_or_create(&labels).inc();
        }
    }

    /// Counts the tokens a request to `model` was charged, and the cached
    /// and reasoning tokens its upstream reported: `tokens` are input,
    /// output, cached input and reasoning.
    pub fn settled(&self, model: ModelId, tenant: &Arc<str>, tokens: [u64; KINDS.len()]) {
        let m = self.model_index(Some(model));
        for (k, n) in tokens.into_iter().enumerate() {
            if k >= 2 && n == 0 {
                continue;
            }
            let Some(slot) = self.tokens.get(m * KINDS.len() + k) else { continue };
            slot.get_or_init(|| {
                self.metrics.tokens.get_or_create_owned(&TokenLabels {
                    model: self.models[m].clone(),
                    kind: KINDS[k],
                })
            })
            .inc_by(n);
            if let Some(t) = &self.metrics.per_tenant {
                let labels = TenantTokenLabels {
                    tenant: tenant.clone(),
                    model: self.models[m].clone(),
                    kind: KINDS[k],
                };
                t.tokens.get_or_create(&labels).inc_by(n);
            }
        }
    }

    fn histogram<'a>(
        &'a self,
        slots: &'a [OnceLock<Histogram>],
        family: &super::Histograms<ModelLabels>,
        model: ModelId,
    ) -> Option<&'a Histogram> {
        let m = self.model_index(Some(model));
        let slot = slots.get(m)?;
        Some(slot.get_or_init(|| {
            family.get_or_create_owned(&ModelLabels { model: self.models[m].clone() })
        }))
    }

    /// How far the input estimate of a request to `model` was from what the
    /// upstream reported.
    pub fn estimate(&self, model: ModelId, estimated: u64, reported: u64) {
        if reported == 0 {
            return;
        }
        let error = (estimated as f64 - reported as f64) / reported as f64;
        if let Some(h) = self.histogram(&self.estimate_error, &self.metrics.estimate_error, model) {
            h.observe(error);
        }
    }

    /// Time from sending a request to `model` upstream to its head.
    pub fn upstream_head(&self, model: ModelId, seconds: f64) {
        if let Some(h) = self.histogram(&self.upstream_head, &self.metrics.upstream_head, model) {
            h.observe(seconds);
        }
    }

    /// Time from sending a request to `model` upstream to its body's first
    /// bytes.
    pub fn upstream_first_byte(&self, model: ModelId, seconds: f64) {
        let family = &self.metrics.upstream_first_byte;
        if let Some(h) = self.histogram(&self.upstream_first_byte, family, model) {
            h.observe(seconds);
        }
    }

    /// Time the store took to decide an admission.
    pub fn admission(&self, seconds: f64) {
        self.metrics.admission.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_status_has_a_bounded_label() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(429), "429");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(204), "2xx");
        assert_eq!(status_label(302), "3xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(100), "other");
        assert_eq!(status_label(700), "other");
        for s in 0..1000u16 {
            assert!(STATUSES.contains(&status_label(s)) || status_label(s) == OTHER);
        }
    }
}

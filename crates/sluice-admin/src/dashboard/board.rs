//! The operator's overview needs every tenant's limits to sort them by how
//! near each is to one, and reading 10,000 tenants' counters per page view
//! would be slow on Redis. So the board keeps, for each tenant, what its
//! counters said when last read, and a background task reads them again:
//! every two seconds those of the tenants the history saw since the last
//! read, every minute all of them. A page view only sorts what is kept.
//! Past its reset, a limit is shown as free again without a read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sluice_core::{CounterStore, Instant, Metric};
use sluice_served::Served;
use sluice_served::usage::limits_of;

/// How often the tenants seen since the last read are read again.
pub const ACTIVE_EVERY: Duration = Duration::from_secs(2);
/// How often every tenant is read again.
pub const ALL_EVERY: Duration = Duration::from_secs(60);

/// One limit of a tenant: its most used partition.
#[derive(Clone, Debug)]
pub struct Bar {
    /// The limit's name.
    pub name: Arc<str>,
    /// The partition shown (a model), if the limit is split.
    pub partition: Option<Arc<str>>,
    /// What it counts.
    pub metric: Metric,
    /// Used.
    pub used: u64,
    /// Its amount.
    pub amount: u64,
    /// When it is back to full.
    pub reset: Option<Instant>,
    /// A shadow limit (never refuses).
    pub shadow: bool,
}

impl Bar {
    /// Used, as of `now`: nothing once the reset has passed.
    pub fn used_at(&self, now: Instant) -> u64 {
        if self.reset.is_some_and(|r| r <= now) { 0 } else { self.used }
    }

    /// The share used, as of `now`.
    pub fn share_at(&self, now: Instant) -> f64 {
        if self.amount == 0 { 0.0 } else { self.used_at(now) as f64 / self.amount as f64 }
    }
}

/// A tenant as last read.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its tier.
    pub tier: Arc<str>,
    /// Its limits, the nearest to full first.
    pub bars: Vec<Bar>,
    /// When they were read.
    pub at: Instant,
}

impl Entry {
    /// The largest share of a (non-shadow) limit used, as of `now`.
    pub fn nearest(&self, now: Instant) -> f64 {
        self.bars.iter().filter(|b| !b.shadow).map(|b| b.share_at(now)).fold(0.0, f64::max)
    }
}

/// Every tenant's limits as last read.
#[derive(Default)]
pub struct Board {
    entries: RwLock<HashMap<Arc<str>, Arc<Entry>>>,
}

impl Board {
    /// Every tenant kept.
    pub fn entries(&self) -> Vec<(Arc<str>, Arc<Entry>)> {
        self.entries.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// One tenant.
    pub fn get(&self, tenant: &str) -> Option<Arc<Entry>> {
        self.entries.read().get(tenant).cloned()
    }

    /// Reads the counters of `only` (or of every served tenant) again, and
    /// forgets tenants no longer served. Returns how many were read.
    pub async fn refresh<S: CounterStore + Clone + Unpin>(
        &self,
        served: &Served<S>,
        only: Option<&[Arc<str>]>,
    ) -> usize {
        let rt = served.runtime();
        let indices: Vec<usize> = match only {
            Some(ids) => ids.iter().filter_map(|id| rt.tenant_index.get(&**id).copied()).collect(),
            None => (0..rt.tenants.len()).collect(),
        };
        let mut fresh = Vec::with_capacity(indices.len());
        for index in indices {
            let now = served.clock.now();
            let Some(Ok(rows)) = limits_of(&served.store, &rt, index, now).await else { continue };
            let tenant = &rt.tenants[index].facts;
            let mut bars: Vec<Bar> = Vec::new();
            for row in &rows {
                let Some(limit) = rt.policy.limit(row.status.limit) else { continue };
                let s = &row.status;
                let bar = Bar {
                    name: limit.name.clone(),
                    partition: row.found.model.clone(),
                    metric: limit.metric,
                    used: s.used,
                    amount: s.amount,
                    reset: s.reset,
                    shadow: s.shadow,
                };
                match bars.iter_mut().find(|b| b.name == bar.name) {
                    Some(b) if bar.share_at(now) > b.share_at(now) => *b = bar,
                    Some(_) => {}
                    None => bars.push(bar),
                }
            }
            bars.sort_by(|a, b| b.share_at(now).total_cmp(&a.share_at(now)));
            let tier = rt
                .policy
                .tier_info(tenant.tier())
                .map_or_else(|| Arc::from("?"), |t| t.name.clone());
            fresh.push((tenant.shared_id().clone(), Arc::new(Entry { tier, bars, at: now })));
        }
        let n = fresh.len();
        let mut entries = self.entries.write();
        if only.is_none() {
            entries.retain(|id, _| rt.tenant_index.contains_key(&**id));
        }
        entries.extend(fresh);
        n
    }

    /// Keeps the board until aborted.
    pub async fn keep<S: CounterStore + Clone + Unpin>(self: Arc<Self>, served: Arc<Served<S>>) {
        let mut tick = tokio::time::interval(ACTIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_all: Option<tokio::time::Instant> = None;
        let mut since = served.clock.now();
        loop {
            tick.tick().await;
            let now = served.clock.now();
            if last_all.is_none_or(|t| t.elapsed() >= ALL_EVERY) {
                last_all = Some(tokio::time::Instant::now());
                self.refresh(&served, None).await;
            } else if let Some(h) = served.history() {
                // The history's minutes: a tenant seen in the minute of the
                // last read may have been read before its request.
                let active = h.active_since(since);
                if !active.is_empty() {
                    self.refresh(&served, Some(&active)).await;
                }
            }
            since = now;
        }
    }
}

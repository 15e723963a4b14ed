//! The usage history: per tenant and model, what was admitted, the tokens
//! settled (input and output) and the 429s by limit, per minute and rolled
//! up per hour.
//!
//! - **Recording** ([`History::record`], an [`EventSink`]) is on the
//!   request's path: it adds into a per-minute cell in memory under one of a
//!   few locks, with no I/O ([`pending`]).
//! - **Keeping** ([`kept`]): a background task collects the cells every
//!   second or so into minute buckets (only minutes with activity) and hour
//!   buckets, each kept for its own horizon (by default 6 hours of minutes
//!   and 8 days of hours), with caps on the number of series (tenant and
//!   model) and of buckets, so memory is bounded whatever the traffic: past
//!   the series cap, new series are counted under [`OVERFLOW`]; past a
//!   bucket cap, the oldest buckets go first.
//! - **Persisting**: into the embedded data file ([`History::save`],
//!   [`History::load`]: tables of their own, written every few seconds and
//!   at shutdown) or into Redis ([`RedisHistory`]: deltas added with one
//!   pipeline of `HINCRBY`s every few seconds, read back so that every
//!   instance shows the same buckets).

mod counts;
mod file;
mod kept;
mod pending;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sluice_core::{Clock, EventSink, Instant, RequestEvent, Step};

pub use counts::Counts;
pub use kept::{Bucket, Grain};
pub use pending::OVERFLOW;
pub use redis::RedisHistory;

use kept::{Caps, Kept};
use pending::Pending;

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistorySettings {
    /// How long minute buckets are kept.
    pub minutes: Duration,
    /// How long hour buckets are kept.
    pub hours: Duration,
    /// The most series (tenant and model) kept; more go to [`OVERFLOW`].
    pub max_series: usize,
    /// The most minute buckets kept (the oldest go first).
    pub max_minute_buckets: usize,
    /// The most hour buckets kept (the oldest go first).
    pub max_hour_buckets: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            minutes: Duration::from_secs(6 * 3600),
            hours: Duration::from_secs(8 * 24 * 3600),
            max_series: 100_000,
            max_minute_buckets: 600_000,
            max_hour_buckets: 600_000,
        }
    }
}

/// Why the history could not be saved, loaded or shared.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The data file.
    #[error("data file: {0}")]
    File(String),
    /// Redis.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis answered something else than a bucket.
    #[error("redis: unexpected reply: {0}")]
    Reply(String),
}

/// A minute since the Unix epoch.
pub fn minute_of(t: Instant) -> u32 {
    u32::try_from(t.as_secs() / 60).unwrap_or(u32::MAX)
}

/// The start of a bucket.
pub fn bucket_start(grain: Grain, at: u32) -> Instant {
    let minutes = match grain {
        Grain::Minute => u64::from(at),
        Grain::Hour => u64::from(at) * 60,
    };
    Instant::from_secs(minutes * 60)
}

/// What the history holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Series (tenant and model) kept.
    pub series: usize,
    /// Minute buckets kept.
    pub minute_buckets: usize,
    /// Hour buckets kept.
    pub hour_buckets: usize,
    /// Events counted under [`OVERFLOW`] for want of room.
    pub overflowed: u64,
}

/// A 429, as the history remembers it: the minute, the model and the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusals {
    /// The minute.
    pub at: Instant,
    /// The model (empty: refused before the model was known).
    pub model: Arc<str>,
    /// The limit's name.
    pub limit: Arc<str>,
    /// How many.
    pub count: u64,
}

/// A tenant's recent activity, for the overview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activity {
    /// The tenant.
    pub tenant: Arc<str>,
    /// Everything since the time asked for, summed over models.
    pub counts: Counts,
    /// The latest minute with activity.
    pub last_seen: Instant,
}

/// The usage history of this process (or, on Redis, of every instance).
pub struct History {
    clock: Arc<dyn Clock>,
    settings: HistorySettings,
    /// Whether the buckets come from a shared store (Redis): events then go
    /// there, and are seen here when read back.
    shared: bool,
    pending: Pending,
    kept: RwLock<Kept>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("settings", &self.settings)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl History {
    /// A history kept in this process (saved to the data file by the
    /// caller).
    pub fn local(settings: HistorySettings, clock: Arc<dyn Clock>) -> Self {
        Self::new(settings, clock, false)
    }

    /// A history shared through Redis: see [`History::sync`].
    pub fn shared(settings: HistorySettings, clock: Arc<dyn Clock>) -> Self {
        Self::new(settings, clock, true)
    }

    fn new(settings: HistorySettings, clock: Arc<dyn Clock>, shared: bool) -> Self {
        let caps = Caps {
            series: settings.max_series,
            minute_buckets: settings.max_minute_buckets,
            hour_buckets: settings.max_hour_buckets,
        };
        Self {
            clock,
            settings,
            shared,
            // Between two collections, at most as many cells as series.
            pending: Pending::new(settings.max_series),
            kept: RwLock::new(Kept::new(caps)),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &HistorySettings {
        &self.settings
    }

    /// Now, by the history's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Takes note of one event (on the request's path: memory only).
    #[inline]
    pub fn record(&self, e: &RequestEvent<'_>) {
        let minute = minute_of(self.clock.now());
        let names =
            pending::Names { tenant: e.tenant, model: e.model, key: (e.tenant_hash, e.model_hash) };
        match e.step {
            Step::Admitted => self.pending.with(names, minute, |c| c.requests += 1),
            Step::Refused { limit } => {
                self.pending.with(names, minute, |c| c.add_limited(limit, 1));
            }
            Step::Settled { input_tokens: 0, output_tokens: 0 } => {}
            Step::Settled { input_tokens, output_tokens } => {
                self.pending.with(names, minute, |c| {
                    c.input_tokens += input_tokens;
                    c.output_tokens += output_tokens;
                });
            }
        }
    }

    /// Moves what was recorded into the kept buckets (a history in this
    /// process; a shared one sends it to Redis instead), and drops what is
    /// past its horizon or its cap.
    pub fn collect(&self) {
        if self.shared {
            return;
        }
        let cells = self.pending.collect();
        let overflowed = self.pending.overflowed.swap(0, std::sync::atomic::Ordering::Relaxed);
        let mut kept = self.kept.write();
        kept.overflowed += overflowed;
        for c in &cells {
            kept.add_minute(&c.tenant, &c.model, c.minute, &c.counts);
        }
        self.trim(&mut kept);
    }

    fn trim(&self, kept: &mut Kept) {
        let now = self.clock.now().as_secs();
        let minute = now.saturating_sub(self.settings.minutes.as_secs()) / 60;
        let hour = now.saturating_sub(self.settings.hours.as_secs()) / 3600;
        kept.trim(u32::try_from(minute).unwrap_or(0), u32::try_from(hour).unwrap_or(0));
    }

    /// Reads the kept buckets, after collecting what was recorded.
    fn read<T>(&self, f: impl FnOnce(&Kept) -> T) -> T {
        if !self.shared && self.pending.len() > 0 {
            self.collect();
        }
        f(&self.kept.read())
    }

    /// What the history holds.
    pub fn stats(&self) -> HistoryStats {
        self.read(|k| HistoryStats {
            series: k.series(),
            minute_buckets: k.buckets(Grain::Minute),
            hour_buckets: k.buckets(Grain::Hour),
            overflowed: k.overflowed
                + self.pending.overflowed.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The models a tenant used, by name.
    pub fn models(&self, tenant: &str) -> Vec<Arc<str>> {
        self.read(|k| {
            let mut m: Vec<Arc<str>> = k
                .tenants
                .get(tenant)
                .map(|t| t.models.iter().map(|(m, _)| m.clone()).collect())
                .unwrap_or_default();
            m.sort();
            m
        })
    }

    /// `count` consecutive buckets of `grain` from the one holding `from`,
    /// for one tenant and one model (or every model): one entry per bucket,
    /// empty ones included.
    pub fn series(
        &self,
        tenant: &str,
        model: Option<&str>,
        grain: Grain,
        from: Instant,
        count: usize,
    ) -> Vec<Counts> {
        let first = match grain {
            Grain::Minute => minute_of(from),
            Grain::Hour => minute_of(from) / 60,
        };
        let mut out = vec![Counts::default(); count];
        self.read(|k| {
            let Some(t) = k.tenants.get(tenant) else { return };
            for (_, s) in t.models.iter().filter(|(m, _)| model.is_none_or(|want| **m == *want)) {
                let buckets = s.buckets(grain);
                let start = buckets.partition_point(|b| b.at < first);
                for b in buckets.range(start..) {
                    let Some(slot) = out.get_mut((b.at - first) as usize) else { break };
                    slot.add(&b.counts);
                }
            }
        });
        out
    }

    /// A tenant's counts since `since`, summed over models: from minute
    /// buckets when `since` is within their horizon, else from hour buckets
    /// (whole hours).
    pub fn totals(&self, tenant: &str, since: Instant) -> Counts {
        let (grain, first) = self.grain_for(since);
        self.read(|k| {
            let mut c = Counts::default();
            if let Some(t) = k.tenants.get(tenant) {
                for (_, s) in &t.models {
                    sum_from(s.buckets(grain), first, &mut c);
                }
            }
            c
        })
    }

    fn grain_for(&self, since: Instant) -> (Grain, u32) {
        let horizon = self.clock.now().as_secs().saturating_sub(self.settings.minutes.as_secs());
        if since.as_secs() >= horizon {
            (Grain::Minute, minute_of(since))
        } else {
            (Grain::Hour, minute_of(since) / 60)
        }
    }

    /// A tenant's 429s since `since`, by minute, model and limit, the
    /// newest first; at most `limit` rows.
    pub fn refusals(&self, tenant: &str, since: Instant, limit: usize) -> Vec<Refusals> {
        let first = minute_of(since);
        let mut out = self.read(|k| {
            let mut out = Vec::new();
            let Some(t) = k.tenants.get(tenant) else { return out };
            for (model, s) in &t.models {
                let start = s.minutes.partition_point(|b| b.at < first);
                for b in s.minutes.range(start..).filter(|b| b.counts.limited > 0) {
                    for (name, n) in &b.counts.limited_by {
                        out.push(Refusals {
                            at: bucket_start(Grain::Minute, b.at),
                            model: model.clone(),
                            limit: name.clone(),
                            count: *n,
                        });
                    }
                }
            }
            out
        });
        out.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.limit.cmp(&b.limit)));
        out.truncate(limit);
        out
    }

    /// Every tenant's counts since `since` (and when it was last seen),
    /// summed over models; tenants with nothing since then are left out.
    pub fn activity(&self, since: Instant) -> Vec<Activity> {
        let (grain, first) = self.grain_for(since);
        self.read(|k| {
            let mut out = Vec::with_capacity(k.tenants.len());
            for (tenant, t) in &k.tenants {
                let mut c = Counts::default();
                for (_, s) in &t.models {
                    sum_from(s.buckets(grain), first, &mut c);
                }
                if !c.is_empty() {
                    out.push(Activity {
                        tenant: tenant.clone(),
                        counts: c,
                        last_seen: bucket_start(Grain::Minute, t.last_minute),
                    });
                }
            }
            out
        })
    }

    /// Tenants with activity in or after the minute of `since`.
    pub fn active_since(&self, since: Instant) -> Vec<Arc<str>> {
        let first = minute_of(since);
        self.read(|k| {
            k.tenants
                .iter()
                .filter(|(_, t)| t.last_minute >= first)
                .map(|(n, _)| n.clone())
                .collect()
        })
    }
}

/// Adds every bucket from `first` on into `c`.
fn sum_from(buckets: &std::collections::VecDeque<Bucket>, first: u32, c: &mut Counts) {
    let start = buckets.partition_point(|b| b.at < first);
    for b in buckets.range(start..) {
        c.add(&b.counts);
    }
}

impl EventSink for History {
    fn record(&self, event: &RequestEvent<'_>) {
        History::record(self, event);
    }
}

#[cfg(test)]
mod tests;

//! What the history keeps: for each tenant and model, per-minute buckets
//! (only minutes with activity) and per-hour buckets, within a horizon each
//! and within caps on series and buckets. Written by the background task
//! that collects the request path's cells (or reads Redis); read by the
//! dashboard and `/v1/usage`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hashbrown::HashMap;

use super::counts::Counts;
use super::pending::OVERFLOW;

/// A bucket: its start (in minutes or hours since the Unix epoch) and counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Minutes (or hours) since the Unix epoch.
    pub at: u32,
    /// What happened in it.
    pub counts: Counts,
}

/// Minute or hour buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

/// How a value lands in a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Merge {
    /// Added to what is there (this process's own events).
    Add,
    /// Replaces it (read from the shared store, which has every instance's).
    Set,
}

/// One tenant's use of one model.
#[derive(Debug, Default)]
pub(crate) struct Series {
    pub(crate) minutes: VecDeque<Bucket>,
    pub(crate) hours: VecDeque<Bucket>,
}

impl Series {
    pub(crate) fn buckets(&self, grain: Grain) -> &VecDeque<Bucket> {
        match grain {
            Grain::Minute => &self.minutes,
            Grain::Hour => &self.hours,
        }
    }
}

/// One tenant's series, by model.
#[derive(Debug, Default)]
pub(crate) struct TenantSeries {
    pub(crate) models: Vec<(Arc<str>, Series)>,
    /// The latest minute with activity.
    pub(crate) last_minute: u32,
}

/// The caps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub(crate) series: usize,
    pub(crate) minute_buckets: usize,
    pub(crate) hour_buckets: usize,
}

/// Everything kept.
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) tenants: HashMap<Arc<str>, TenantSeries>,
    caps: Caps,
    series: usize,
    /// Buckets per start, for each grain: finds the oldest without a scan.
    minute_starts: BTreeMap<u32, usize>,
    hour_starts: BTreeMap<u32, usize>,
    /// The earliest minute and hour changed since the last save.
    pub(crate) dirty_from: Option<(u32, u32)>,
    /// Everything before these was dropped since the last save.
    pub(crate) dropped_before: (u32, u32),
    /// Events that went to the overflow series for want of room.
    pub(crate) overflowed: u64,
}

impl Kept {
    pub(crate) fn new(caps: Caps) -> Self {
        Self {
            tenants: HashMap::new(),
            caps,
            series: 0,
            minute_starts: BTreeMap::new(),
            hour_starts: BTreeMap::new(),
            dirty_from: None,
            dropped_before: (0, 0),
            overflowed: 0,
        }
    }

    pub(crate) fn series(&self) -> usize {
        self.series
    }

    pub(crate) fn buckets(&self, grain: Grain) -> usize {
        self.starts(grain).values().sum()
    }

    fn starts(&self, grain: Grain) -> &BTreeMap<u32, usize> {
        match grain {
            Grain::Minute => &self.minute_starts,
            Grain::Hour => &self.hour_starts,
        }
    }

    /// The series of (`tenant`, `model`), made if there is room; else the
    /// overflow series.
    fn series_mut(&mut self, tenant: &Arc<str>, model: &Arc<str>, grain: Grain) -> &mut Series {
        let known =
            self.tenants.get(&**tenant).is_some_and(|t| t.models.iter().any(|(m, _)| m == model));
        let (tenant, model) = if known || self.series < self.caps.series {
            (tenant.clone(), model.clone())
        } else {
            // Counted once per event: its minute, not its hour again.
            self.overflowed += u64::from(grain == Grain::Minute);
            (Arc::from(OVERFLOW), Arc::from(""))
        };
        let t = self.tenants.entry(tenant).or_default();
        let at = match t.models.iter().position(|(m, _)| Arc::ptr_eq(m, &model) || *m == model) {
            Some(i) => i,
            None => {
                self.series += 1;
                t.models.push((model, Series::default()));
                t.models.len() - 1
            }
        };
        &mut t.models[at].1
    }

    /// Puts `counts` into the bucket of (`tenant`, `model`) at `at`.
    pub(crate) fn merge(
        &mut self,
        tenant: &Arc<str>,
        model: &Arc<str>,
        grain: Grain,
        at: u32,
        counts: &Counts,
        how: Merge,
    ) {
        if counts.is_empty() && how == Merge::Add {
            return;
        }
        let series = self.series_mut(tenant, model, grain);
        let buckets = match grain {
            Grain::Minute => &mut series.minutes,
            Grain::Hour => &mut series.hours,
        };
        let new = put(buckets, at, counts, how);
        self.placed(tenant, grain, at, new);
    }

    /// Books a bucket just written: its start if it is new, the tenant's
    /// latest minute, what the next save must write.
    fn placed(&mut self, tenant: &Arc<str>, grain: Grain, at: u32, new: bool) {
        let starts = match grain {
            Grain::Minute => &mut self.minute_starts,
            Grain::Hour => &mut self.hour_starts,
        };
        if new {
            *starts.entry(at).or_default() += 1;
        }
        if grain == Grain::Minute
            && let Some(t) = self.tenants.get_mut(&**tenant)
        {
            t.last_minute = t.last_minute.max(at);
        }
        let (m, h) = self.dirty_from.unwrap_or((u32::MAX, u32::MAX));
        self.dirty_from = Some(match grain {
            Grain::Minute => (m.min(at), h),
            Grain::Hour => (m, h.min(at)),
        });
    }

    /// A minute of this process's own events: into its minute and its hour.
    pub(crate) fn add_minute(
        &mut self,
        tenant: &Arc<str>,
        model: &Arc<str>,
        minute: u32,
        counts: &Counts,
    ) {
        if counts.is_empty() {
            return;
        }
        let series = self.series_mut(tenant, model, Grain::Minute);
        let new_minute = put(&mut series.minutes, minute, counts, Merge::Add);
        let new_hour = put(&mut series.hours, minute / 60, counts, Merge::Add);
        self.placed(tenant, Grain::Minute, minute, new_minute);
        self.placed(tenant, Grain::Hour, minute / 60, new_hour);
    }

    /// Drops minute buckets before `minute` and hour buckets before `hour`,
    /// then the oldest of either while over its cap (down to nine tenths
    /// of it, so that this does not run on every collection).
    pub(crate) fn trim(&mut self, minute: u32, hour: u32) {
        let minute = minute.max(cutoff(&self.minute_starts, self.caps.minute_buckets));
        let hour = hour.max(cutoff(&self.hour_starts, self.caps.hour_buckets));
        let old_minutes = self.minute_starts.first_key_value().is_some_and(|(&at, _)| at < minute);
        let old_hours = self.hour_starts.first_key_value().is_some_and(|(&at, _)| at < hour);
        if !old_minutes && !old_hours {
            return;
        }
        self.minute_starts = self.minute_starts.split_off(&minute);
        self.hour_starts = self.hour_starts.split_off(&hour);
        let mut emptied = 0;
        self.tenants.retain(|_, t| {
            t.models.retain_mut(|(_, s)| {
                while s.minutes.front().is_some_and(|b| b.at < minute) {
                    s.minutes.pop_front();
                }
                while s.hours.front().is_some_and(|b| b.at < hour) {
                    s.hours.pop_front();
                }
                let keep = !s.minutes.is_empty() || !s.hours.is_empty();
                emptied += usize::from(!keep);
                keep
            });
            !t.models.is_empty()
        });
        self.series -= emptied;
        self.dropped_before = (self.dropped_before.0.max(minute), self.dropped_before.1.max(hour));
    }
}

/// Puts `counts` into `buckets` at `at`; whether the bucket is new.
fn put(buckets: &mut VecDeque<Bucket>, at: u32, counts: &Counts, how: Merge) -> bool {
    // Mostly the newest bucket, or one after it.
    let i = match buckets.back() {
        Some(b) if b.at == at => Ok(buckets.len() - 1),
        Some(b) if b.at < at => Err(buckets.len()),
        None => Err(0),
        Some(_) => buckets.binary_search_by_key(&at, |b| b.at),
    };
    match i {
        Ok(i) => {
            match how {
                Merge::Add => buckets[i].counts.add(counts),
                Merge::Set => buckets[i].counts = counts.clone(),
            }
            false
        }
        Err(i) => {
            buckets.insert(i, Bucket { at, counts: counts.clone() });
            true
        }
    }
}

/// The start before which buckets must go for `starts` to hold at most nine
/// tenths of `cap` (0 when under the cap).
fn cutoff(starts: &BTreeMap<u32, usize>, cap: usize) -> u32 {
    let total: usize = starts.values().sum();
    if total <= cap {
        return 0;
    }
    let target = cap - cap / 10;
    let mut left = total;
    for (&at, &n) in starts {
        if left <= target {
            return at;
        }
        left -= n;
    }
    u32::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64) -> Counts {
        Counts { requests, ..Counts::default() }
    }

    #[test]
    fn minutes_roll_up_to_hours_and_old_buckets_go() {
        let caps = Caps { series: 10, minute_buckets: 1_000, hour_buckets: 1_000 };
        let mut k = Kept::new(caps);
        let (t, m): (Arc<str>, Arc<str>) = (Arc::from("acme"), Arc::from("model"));
        for minute in 6_000..6_130 {
            k.add_minute(&t, &m, minute, &counts(2));
        }
        let s = &k.tenants["acme"].models[0].1;
        assert_eq!(s.minutes.len(), 130);
        assert_eq!(
            s.hours.iter().map(|b| (b.at, b.counts.requests)).collect::<Vec<_>>(),
            [(100, 120), (101, 120), (102, 20)]
        );
        k.trim(6_100, 101);
        let s = &k.tenants["acme"].models[0].1;
        assert_eq!((s.minutes.len(), s.hours.len()), (30, 2));
        assert_eq!(k.buckets(Grain::Minute), 30);
        k.trim(7_000, 200);
        assert!(k.tenants.is_empty());
        assert_eq!((k.series(), k.buckets(Grain::Minute), k.buckets(Grain::Hour)), (0, 0, 0));
    }

    #[test]
    fn caps_bound_series_and_buckets() {
        let caps = Caps { series: 100, minute_buckets: 500, hour_buckets: 250 };
        let mut k = Kept::new(caps);
        let m: Arc<str> = Arc::from("model");
        // 1,000 tenants for 10 minutes each, then trimmed: never more than
        // the caps, and every request still counted somewhere.
        for minute in 0..10u32 {
            for t in 0..1_000 {
                let t: Arc<str> = Arc::from(format!("t{t}"));
                k.add_minute(&t, &m, 60_000 + minute, &counts(1));
            }
            k.trim(0, 0);
        }
        assert!(k.series() <= 101, "{} series", k.series());
        assert!(k.buckets(Grain::Minute) <= 500, "{}", k.buckets(Grain::Minute));
        assert!(k.buckets(Grain::Hour) <= 250, "{}", k.buckets(Grain::Hour));
        let overflow = &k.tenants[OVERFLOW].models[0].1;
        assert_eq!(overflow.hours[0].counts.requests, 10 * 900);
        assert_eq!(k.overflowed, 10 * 900);
        // The newest minutes are the ones kept.
        assert_eq!(k.minute_starts.keys().last(), Some(&60_009));
    }
}

//! `[history]`: the usage history behind the dashboard and `/v1/usage`
//! (what each tenant did with each model, per minute and per hour). The raw
//! section and its validation live here.
//!
//! ```toml
//! [history]
//! minutes = "6h"               # minute buckets kept this long
//! hours = "8d"                 # hour buckets kept this long
//! max_series = 100000          # tenant and model pairs; more are counted together
//! max_minute_buckets = 600000  # the oldest go first past this
//! max_hour_buckets = 600000
//! sync_every = "2s"            # with [store] kind = "redis": how often instances share it
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::gateway::{Problems, parse_duration};
use crate::raw::RawFile;

/// `[history]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    /// Whether usage is recorded at all.
    pub enabled: Option<bool>,
    /// How long minute buckets are kept.
    pub minutes: Option<Spanned<String>>,
    /// How long hour buckets are kept.
    pub hours: Option<Spanned<String>>,
    /// The most series (tenant and model pairs).
    pub max_series: Option<Spanned<i64>>,
    /// The most minute buckets.
    pub max_minute_buckets: Option<Spanned<i64>>,
    /// The most hour buckets.
    pub max_hour_buckets: Option<Spanned<i64>>,
    /// With Redis: how often each instance sends its events and reads the
    /// others'.
    pub sync_every: Option<Spanned<String>>,
}

/// `[history]`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Whether usage is recorded.
    pub enabled: bool,
    /// How long minute buckets are kept.
    pub minutes: Duration,
    /// How long hour buckets are kept.
    pub hours: Duration,
    /// The most series.
    pub max_series: usize,
    /// The most minute buckets.
    pub max_minute_buckets: usize,
    /// The most hour buckets.
    pub max_hour_buckets: usize,
    /// With Redis: how often instances share it.
    pub sync_every: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            minutes: Duration::from_secs(6 * 3600),
            hours: Duration::from_secs(8 * 24 * 3600),
            max_series: 100_000,
            max_minute_buckets: 600_000,
            max_hour_buckets: 600_000,
            sync_every: Duration::from_secs(2),
        }
    }
}

fn duration(v: &Spanned<String>, field: &str, problems: &mut Problems) -> Option<Duration> {
    let d = parse_duration(v.get_ref());
    if d.is_none() {
        problems.push((
            Some(v.span()),
            field.into(),
            format!("`{}` is not a duration; write e.g. `6h`, `8d`, `2s`", v.get_ref()),
        ));
    }
    d
}

fn count(v: &Spanned<i64>, field: &str, problems: &mut Problems) -> Option<usize> {
    match usize::try_from(*v.get_ref()) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            problems.push((
                Some(v.span()),
                field.into(),
                format!("must be a positive whole number, got {}", v.get_ref()),
            ));
            None
        }
    }
}

/// Validates `[history]`.
pub(crate) fn history(raw: &RawFile, problems: &mut Problems) -> HistoryConfig {
    let mut h = HistoryConfig::default();
    let Some(section) = &raw.history else { return h };
    let r = section.get_ref();
    let sp = Some(section.span());
    if let Some(e) = r.enabled {
        h.enabled = e;
    }
    if let Some(d) = r.minutes.as_ref().and_then(|v| duration(v, "history.minutes", problems)) {
        h.minutes = d;
    }
    if let Some(d) = r.hours.as_ref().and_then(|v| duration(v, "history.hours", problems)) {
        h.hours = d;
    }
    if let Some(d) = r.sync_every.as_ref().and_then(|v| duration(v, "history.sync_every", problems))
    {
        h.sync_every = d;
    }
    if let Some(n) = r.max_series.as_ref().and_then(|v| count(v, "history.max_series", problems)) {
        h.max_series = n;
    }
    if let Some(n) =
        r.max_minute_buckets.as_ref().and_then(|v| count(v, "history.max_minute_buckets", problems))
    {
        h.max_minute_buckets = n;
    }
    if let Some(n) =
        r.max_hour_buckets.as_ref().and_then(|v| count(v, "history.max_hour_buckets", problems))
    {
        h.max_hour_buckets = n;
    }
    if h.minutes < Duration::from_secs(3600) || h.minutes > h.hours {
        problems.push((
            sp.clone(),
            "history.minutes".into(),
            "keep minutes for at least `1h` (the dashboard's last hour) and no longer than `hours`"
                .into(),
        ));
    }
    if h.sync_every < Duration::from_millis(100) || h.sync_every > Duration::from_secs(30) {
        problems.push((
            sp.clone(),
            "history.sync_every".into(),
            "between `100ms` and `30s` (instances read back the last two minutes each time)".into(),
        ));
    }
    for (field, n) in [
        ("history.max_minute_buckets", h.max_minute_buckets),
        ("history.max_hour_buckets", h.max_hour_buckets),
    ] {
        if n < h.max_series.saturating_mul(2) {
            problems.push((
                sp.clone(),
                field.into(),
                format!(
                    "must be at least twice `max_series` ({}), so that the current minute and hour always fit",
                    h.max_series
                ),
            ));
        }
    }
    h
}

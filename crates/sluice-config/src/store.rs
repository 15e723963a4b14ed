//! `[store]`: where counters live (this process's memory, or Redis/Valkey
//! shared by every instance), how to reach Redis, and what to do when it
//! fails. Validated with the rest of the gateway's sections.

use std::time::Duration;

use toml::Spanned;

use crate::gateway::{Problems, duration, positive};
use crate::raw::RawFile;

/// Where counters live: `[store]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// In this process (the embedded default).
    #[default]
    Memory,
    /// Redis or Valkey, shared by every instance.
    Redis(RedisConfig),
}

/// How to reach Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server.
    Standalone(String),
    /// Sentinels and the master's name.
    Sentinel {
        /// Sentinel URLs.
        sentinels: Vec<String>,
        /// The master's name.
        master: String,
    },
    /// Cluster seed nodes.
    Cluster(Vec<String>),
}

/// What to do when the store fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// Admit without counting.
    Open,
    /// Refuse with 503.
    Closed,
    /// Count in memory meanwhile.
    Local,
}

/// `[store]` with `kind = "redis"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where.
    pub topology: RedisTopology,
    /// Key prefix.
    pub namespace: String,
    /// Timeout of one call.
    pub timeout: Duration,
    /// On failure.
    pub on_failure: StoreFailure,
    /// Probe interval while degraded.
    pub probe_interval: Duration,
    /// Instances sharing limits (local fallback share).
    pub instances: u64,
    /// How long a concurrency slot is held unless its running request
    /// renews it.
    pub slot_lease: Duration,
}

/// Validates `[store]` (memory when the file has none).
pub(crate) fn store(raw: &RawFile, problems: &mut Problems) -> StoreConfig {
    let Some(s) = &raw.store else { return StoreConfig::Memory };
    let sp = Some(s.span());
    let r = s.get_ref();
    match r.kind.as_ref().map(|k| k.get_ref().as_str()) {
        None | Some("memory") => {
            if r.url.is_some() || r.cluster.is_some() || r.sentinels.is_some() {
                problems.push((
                    sp,
                    "store.kind".into(),
                    "Redis settings are given: add `kind = \"redis\"`".into(),
                ));
            }
            return StoreConfig::Memory;
        }
        Some("redis") => {}
        Some(other) => {
            let span = r.kind.as_ref().map(Spanned::span);
            problems.push((
                span,
                "store.kind".into(),
                format!("`{other}` is not a store; use `memory` or `redis`"),
            ));
            return StoreConfig::Memory;
        }
    }
    let urls_ok = |v: &[String]| {
        v.iter().all(|u| {
            u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("valkey://")
                || u.starts_with("redis+unix://")
                || u.starts_with("unix://")
        })
    };
    let topology = match (&r.url, &r.cluster, &r.sentinels) {
        (Some(u), None, None) if urls_ok(std::slice::from_ref(u.get_ref())) => {
            RedisTopology::Standalone(u.get_ref().clone())
        }
        (None, Some(c), None) if !c.get_ref().is_empty() && urls_ok(c.get_ref()) => {
            RedisTopology::Cluster(c.get_ref().clone())
        }
        (None, None, Some(se)) if !se.get_ref().is_empty() && urls_ok(se.get_ref()) => {
            let Some(master) = &r.master else {
                problems.push((
                    Some(se.span()),
                    "store.master".into(),
                    "with `sentinels`, name the master: `master = \"mymaster\"`".into(),
                ));
                return StoreConfig::Memory;
            };
            RedisTopology::Sentinel {
                sentinels: se.get_ref().clone(),
                master: master.get_ref().clone(),
            }
        }
        (None, None, None) => {
            problems.push((sp, "store".into(), "a redis store needs `url` (one server), `cluster` (seed nodes) or `sentinels` and `master`".into()));
            return StoreConfig::Memory;
        }
        _ => {
            problems.push((
                sp,
                "store".into(),
                "give exactly one of `url`, `cluster`, `sentinels`, with redis:// URLs".into(),
            ));
            return StoreConfig::Memory;
        }
    };
    let timeout = r
        .timeout
        .as_ref()
        .and_then(|d| duration(d, "store.timeout", problems))
        .unwrap_or(Duration::from_millis(50));
    let probe_interval = r
        .probe_interval
        .as_ref()
        .and_then(|d| duration(d, "store.probe_interval", problems))
        .unwrap_or(Duration::from_secs(1));
    let on_failure = match r.on_failure.as_ref().map(|f| (f.span(), f.get_ref().as_str())) {
        None | Some((_, "local")) => StoreFailure::Local,
        Some((_, "open")) => StoreFailure::Open,
        Some((_, "closed")) => StoreFailure::Closed,
        Some((span, other)) => {
            problems.push((Some(span), "store.on_failure".into(), format!("`{other}` is not allowed; use `open` (admit, count nothing), `closed` (refuse with 503) or `local` (count in memory until the store is back)")));
            StoreFailure::Local
        }
    };
    let instances =
        r.instances.as_ref().and_then(|i| positive(i, "store.instances", problems)).unwrap_or(1);
    let slot_lease = match &r.slot_lease {
        Some(d) => match duration(d, "store.slot_lease", problems) {
            Some(l) if l < Duration::from_secs(1) => {
                problems.push((
                    Some(d.span()),
                    "store.slot_lease".into(),
                    format!("`{}` is too short: a slot is renewed every third of its lease; give at least `1s`", d.get_ref()),
                ));
                Duration::from_secs(10)
            }
            Some(l) => l,
            None => Duration::from_secs(10),
        },
        None => Duration::from_secs(10),
    };
    let namespace =
        r.namespace.as_ref().map_or_else(|| "sluice".to_owned(), |n| n.get_ref().clone());
    if namespace.is_empty() || namespace.contains(['{', '}', ' ']) {
        problems.push((
            r.namespace.as_ref().map(Spanned::span),
            "store.namespace".into(),
            "a namespace is a non-empty word without braces or spaces".into(),
        ));
    }
    StoreConfig::Redis(RedisConfig {
        topology,
        namespace,
        timeout,
        on_failure,
        probe_interval,
        instances,
        slot_lease,
    })
}

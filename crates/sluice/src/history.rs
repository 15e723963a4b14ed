//! The usage history of `sluice serve`: made from `[history]`, loaded from
//! the data file or Redis at start, kept there by a background task, and
//! written a last time at shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_config::gateway::GatewayConfig;
use sluice_core::SystemClock;
use sluice_store::history::HistoryError;
use sluice_store::{FileTenants, History, HistorySettings, RedisHistory, Topology};

/// How often a history in the data file is collected from the request path
/// (the file itself is written every `[data] save_every`).
const COLLECT_EVERY: Duration = Duration::from_secs(1);

fn settings(g: &GatewayConfig) -> HistorySettings {
    let h = &g.history;
    HistorySettings {
        minutes: h.minutes,
        hours: h.hours,
        max_series: h.max_series,
        max_minute_buckets: h.max_minute_buckets,
        max_hour_buckets: h.max_hour_buckets,
    }
}

/// Where the history is kept.
enum Backend {
    File(FileTenants),
    Redis(RedisHistory),
}

/// A history being kept.
pub struct Kept {
    pub history: Arc<History>,
    backend: Backend,
    every: Duration,
}

/// A history in the data file (`None` when `[history] enabled = false`).
pub fn in_file(g: &GatewayConfig, file: &FileTenants) -> anyhow::Result<Option<Kept>> {
    if !g.history.enabled {
        return Ok(None);
    }
    let history = Arc::new(History::local(settings(g), Arc::new(SystemClock)));
    let n = history.load(file).context("reading the usage history from the data file")?;
    tracing::info!(buckets = n, "usage history restored from the data file");
    Ok(Some(Kept { history, backend: Backend::File(file.clone()), every: g.save_every }))
}

/// A history shared through Redis (`None` when disabled).
pub async fn in_redis(
    g: &GatewayConfig,
    topology: &Topology,
    namespace: &str,
) -> anyhow::Result<Option<Kept>> {
    if !g.history.enabled {
        return Ok(None);
    }
    let history = Arc::new(History::shared(settings(g), Arc::new(SystemClock)));
    let redis = RedisHistory::connect(topology, namespace, &history)
        .await
        .context("connecting the usage history to redis")?;
    match history.load_shared(&redis).await {
        Ok(n) => tracing::info!(buckets = n, "usage history read from redis"),
        // Serving matters more than the history: it fills in as it syncs.
        Err(e) => tracing::warn!(error = %e, "reading the usage history from redis failed"),
    }
    Ok(Some(Kept { history, backend: Backend::Redis(redis), every: g.history.sync_every }))
}

impl Kept {
    /// Writes what is new (to the file off the async runtime, or to Redis).
    async fn flush(&self) -> Result<(), HistoryError> {
        match &self.backend {
            Backend::File(file) => {
                let (h, f) = (self.history.clone(), file.clone());
                tokio::task::spawn_blocking(move || h.save(&f))
                    .await
                    .map_err(|e| HistoryError::File(e.to_string()))?
                    .map(|n| tracing::debug!(buckets = n, "usage history saved"))
            }
            Backend::Redis(r) => self.history.sync(r).await.map(|s| {
                tracing::debug!(
                    sent = s.sent,
                    lost = s.lost,
                    read = s.read,
                    "usage history synced"
                );
            }),
        }
    }

    /// Keeps the history until aborted: collects every second, and writes
    /// every `every`.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COLLECT_EVERY.min(this.every));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                this.history.collect();
                if last.elapsed() >= this.every {
                    last = tokio::time::Instant::now();
                    if let Err(e) = this.flush().await {
                        tracing::warn!(error = %e, "keeping the usage history failed");
                    }
                }
            }
        })
    }

    /// The last write, at shutdown (the requests have settled).
    pub async fn finish(&self) {
        match self.flush().await {
            Ok(()) => tracing::info!("usage history saved"),
            Err(e) => tracing::warn!(error = %e, "saving the usage history failed"),
        }
    }
}

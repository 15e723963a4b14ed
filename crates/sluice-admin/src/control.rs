//! Keeping what is served in step with the policy file and the
//! tenant store: a policy reload (SIGHUP or the admin API), a watch on the
//! tenant store's version (so a change made through any instance reaches
//! every instance within one interval), and an admin write applied to this
//! instance at once.
//!
//! A full rebuild (reload, or the watch seeing another instance's change)
//! reads and builds on a blocking thread and swaps the result in: requests
//! never wait for it. An admin write changes just its tenant or key
//! ([`Runtime::put_tenant`] and the like): its cost does not grow with the
//! number of tenants.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_config::{Config, ConfigErrors};
use sluice_core::CounterStore;
use sluice_served::{Connect, Runtime, RuntimeError, Served};
use sluice_store::{TenantStore, TenantStoreError};

/// Why a reload did not happen (the old policy keeps running).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new policy file does not validate.
    #[error("{0}")]
    Config(ConfigErrors),
    /// It validates but cannot be served (an upstream's key is missing…).
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The tenant store could not be read.
    #[error("{0}")]
    Tenants(#[from] TenantStoreError),
    /// The rebuild's thread stopped before it finished.
    #[error("the rebuild stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

/// Runs `f` on a blocking thread.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ReloadError> + Send + 'static,
) -> Result<R, ReloadError> {
    tokio::task::spawn_blocking(f).await?
}

/// The policy, the tenant store, and the served state they feed.
pub struct Control<S, T> {
    config_path: PathBuf,
    config: ArcSwap<Config>,
    /// The served state.
    pub served: Arc<Served<S>>,
    /// The tenant store.
    pub tenants: T,
    /// Makes the upstreams' clients of a reloaded policy.
    connect: Arc<dyn Connect>,
    applied: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
}

impl<S: CounterStore + Clone + Unpin, T: TenantStore> Control<S, T> {
    /// Ties the served state to its policy file and tenant store (a reload
    /// builds its runtime with `connect`). `applied` is the tenant store
    /// version the served runtime was built from.
    pub fn new(
        config_path: PathBuf,
        config: Config,
        served: Arc<Served<S>>,
        tenants: T,
        connect: Arc<dyn Connect>,
        applied: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            config_path,
            config: ArcSwap::from_pointee(config),
            served,
            tenants,
            connect,
            applied: AtomicU64::new(applied),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The policy file in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Serves `runtime`; the one it replaces is freed on a blocking thread
    /// (after a full rebuild, that is every tenant and key). Requests under
    /// way may still hold it: the thread waits for them, so that it, not a
    /// request, is the last holder and does the freeing.
    fn serve(&self, runtime: Runtime) {
        let old = self.served.swap_runtime(runtime);
        drop(tokio::task::spawn_blocking(move || {
            let mut old = old;
            while let Err(held) = Arc::try_unwrap(old) {
                old = held;
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }

    /// Reads the tenant store again and serves what it says now. Returns
    /// warnings about stored tenants or keys that do not fit the policy.
    pub async fn refresh_tenants(&self) -> Result<Vec<String>, ReloadError> {
        let _guard = self.reload_lock.lock().await;
        let snap = self.tenants.snapshot().await?;
        let version = snap.version;
        let config = self.config();
        let current = self.served.runtime();
        let (runtime, warnings) =
            blocking(move || Ok(current.with_tenants(&config, &snap)?)).await?;
        self.serve(runtime);
        self.applied.store(version, Ordering::Relaxed);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(warnings)
    }

    /// Reads the policy file again; if it validates, serves it (counters of
    /// unchanged limits keep their counts); if not, keeps the old one and
    /// returns the errors.
    pub async fn reload_policy(&self) -> Result<Vec<String>, ReloadError> {
        let _guard = self.reload_lock.lock().await;
        let snap = self.tenants.snapshot().await?;
        let version = snap.version;
        let (path, connect) = (self.config_path.clone(), self.connect.clone());
        let (config, runtime, warnings) = blocking(move || {
            let config = sluice_config::load(&path).map_err(ReloadError::Config)?;
            let (runtime, warnings) = Runtime::build(&config, &snap, &*connect)?;
            Ok((config, runtime, warnings))
        })
        .await?;
        if config.gateway.store != self.config().gateway.store {
            tracing::warn!("the [store] section changed: it takes effect at the next restart");
        }
        self.serve(runtime);
        self.config.store(Arc::new(config));
        self.applied.store(version, Ordering::Relaxed);
        tracing::info!(policy = %self.config_path.display(), "policy reloaded");
        Ok(warnings)
    }

    /// Serves a change this instance just wrote to the tenant store (which
    /// made `version`): `change` makes the new runtime from the served one.
    /// If the store moved by more than this change (another instance wrote
    /// meanwhile), the watch reads it all again.
    pub async fn apply(
        &self,
        version: u64,
        change: impl FnOnce(&Runtime) -> (Runtime, Option<String>),
    ) {
        let _guard = self.reload_lock.lock().await;
        let (runtime, warning) = change(&self.served.runtime());
        self.served.replace_runtime(runtime);
        let _ = self.applied.compare_exchange(
            version.wrapping_sub(1),
            version,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
    }

    /// Watches the tenant store's version; refreshes when it moves.
    pub async fn watch_tenants(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            match self.tenants.version().await {
                Ok(v) if v != self.applied.load(Ordering::Relaxed) => {
                    if let Err(e) = self.refresh_tenants().await {
                        tracing::warn!(error = %e, "reading the tenant store failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "tenant store version unavailable"),
            }
        }
    }
}

//! `sluice serve`: load the policy, open the tenant store and the counter
//! store (and start any mock upstream), serve the gateway and the admin API,
//! reload on SIGHUP, and stop cleanly on SIGINT or SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_admin::{AdminState, Control};
use sluice_config::Config;
use sluice_config::gateway::UpstreamTarget;
use sluice_config::store::{RedisTopology, StoreConfig, StoreFailure};
use sluice_core::{CounterStore, SystemClock};
use sluice_gateway::{Connector, Gateway, MockUrls};
use sluice_served::{Connect, Runtime};
use sluice_store::{
    FileTenants, GuardOptions, Guarded, MemoryStore, OnFailure, RedisStore, RedisTenants,
    SavedCounters, TenantStore, TimeSource, Topology,
};
use tokio::sync::watch;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How often each instance checks whether tenants changed.
const TENANT_WATCH: Duration = Duration::from_millis(250);
/// At shutdown, what settlements still pending get at least, after the
/// requests have finished or been cut at the grace.
const SETTLE_AT_EXIT: Duration = Duration::from_secs(2);

pub fn run(
    config_path: &Path,
    listen: Option<SocketAddr>,
    mock_controls: bool,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_file_limit();
    let config = match sluice_config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} problem(s); not serving", config_path.display(), errors.0.len());
            return Ok(ExitCode::from(2));
        }
    };
    sluice_gateway::tokio_runtime()?.block_on(serve(
        config_path.to_path_buf(),
        config,
        listen,
        mock_controls,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit of open files to the hard limit: every connection
/// is a file descriptor, and the usual soft default (1,024) is far below
/// the connection caps.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
}

/// The data file: `[data] path`, relative to the policy file's folder, or
/// `sluice.redb` beside the policy file.
fn data_path(config_path: &Path, config: &Config) -> PathBuf {
    let dir = config_path.parent().unwrap_or(Path::new("."));
    match &config.gateway.data_path {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => dir.join(p),
        None => dir.join("sluice.redb"),
    }
}

fn topology(r: &RedisTopology) -> Topology {
    match r {
        RedisTopology::Standalone(url) => Topology::Standalone(url.clone()),
        RedisTopology::Cluster(nodes) => Topology::Cluster(nodes.clone()),
        RedisTopology::Sentinel { sentinels, master } => {
            Topology::Sentinel { sentinels: sentinels.clone(), master: master.clone() }
        }
    }
}

async fn serve(
    config_path: PathBuf,
    config: Config,
    listen: Option<SocketAddr>,
    mock_controls: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.gateway.upstreams.is_empty() || config.decisions.is_some(),
        "the policy has no [upstreams]: say where requests go, or add [decisions] to run the decision service alone (see docs/CONFIG.md)"
    );
    let mut mocks = Vec::new();
    let mut urls = HashMap::new();
    for u in &config.gateway.upstreams {
        if u.target == UpstreamTarget::Mock {
            let models = config.policy.models().map(|(_, m)| m.name.to_string()).collect();
            let mock = sluice_mock::spawn(sluice_mock::MockConfig {
                models,
                controls: mock_controls,
                ..Default::default()
            })
            .await
            .context("starting the mock upstream")?;
            tracing::info!(upstream = %u.name, addr = %mock.addr, "built-in mock upstream started");
            urls.insert(u.name.clone(), format!("http://{}/v1", mock.addr));
            mocks.push(mock);
        }
    }
    let mock_urls: MockUrls = Arc::new(move |name: &str| urls.get(name).cloned());
    match config.gateway.store.clone() {
        StoreConfig::Memory => {
            let path = data_path(&config_path, &config);
            let file = FileTenants::open(&path)
                .with_context(|| format!("opening the data file {}", path.display()))?;
            tracing::info!(data = %path.display(), "tenants and saved counters in the data file");
            let store = MemoryStore::new(SystemClock);
            let counters = SavedCounters::in_file(&file);
            let saved = counters.load()?;
            let restored = saved.len();
            store.restore(saved);
            tracing::info!(counters = restored, "counters restored from the data file");
            let persist = Persist { counters, store: store.clone() };
            let sweep = store.clone();
            let history = crate::history::in_file(&config.gateway, &file)?;
            let parts = Parts { config_path, config, listen, mock_urls, history };
            run_gateway(parts, store, file, move || sweep.sweep(), Some(persist)).await?;
        }
        StoreConfig::Redis(r) => {
            let topology = topology(&r.topology);
            let redis = RedisStore::connect_in(&topology, TimeSource::Server, &r.namespace)
                .await
                .with_context(|| format!("connecting to redis ({topology:?})"))?
                .with_slot_lease(r.slot_lease);
            let tenants = RedisTenants::connect(&topology, &r.namespace)
                .await
                .context("reading tenants from redis")?;
            tracing::info!(?topology, namespace = %r.namespace, "counters and tenants in redis");
            let store = Guarded::new(
                redis,
                GuardOptions {
                    timeout: r.timeout,
                    on_failure: match r.on_failure {
                        StoreFailure::Open => OnFailure::Open,
                        StoreFailure::Closed => OnFailure::Closed,
                        StoreFailure::Local => OnFailure::Local,
                    },
                    probe_interval: r.probe_interval,
                    instances: r.instances,
                },
            );
            let sweep = store.clone();
            let history =
                crate::history::in_redis(&config.gateway, &topology, &r.namespace).await?;
            let parts = Parts { config_path, config, listen, mock_urls, history };
            run_gateway(parts, store, tenants, move || sweep.local().sweep(), None).await?;
        }
    }
    drop(mocks);
    tracing::info!("stopped");
    Ok(())
}

/// What every store variant serves with.
struct Parts {
    config_path: PathBuf,
    config: Config,
    listen: Option<SocketAddr>,
    mock_urls: MockUrls,
    /// The usage history, where it is kept.
    history: Option<crate::history::Kept>,
}

/// Saving the memory store's counters to the data file, behind admission.
#[derive(Clone)]
struct Persist {
    counters: SavedCounters,
    store: MemoryStore,
}

impl Persist {
    async fn save(&self) {
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let counters = this.store.snapshot();
            this.counters.save(&counters).map(|()| counters.len())
        })
        .await;
        match result {
            Ok(Ok(n)) => tracing::debug!(counters = n, "counters saved"),
            Ok(Err(e)) => tracing::warn!(error = %e, "saving counters failed"),
            Err(e) => tracing::warn!(error = %e, "saving counters failed"),
        }
    }
}

async fn run_gateway<S, T>(
    parts: Parts,
    store: S,
    tenants: T,
    sweep: impl Fn() + Send + 'static,
    persist: Option<Persist>,
) -> anyhow::Result<()>
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    let Parts { config_path, config, listen, mock_urls, history } = parts;
    let snapshot = tenants.snapshot().await.context("reading tenants")?;
    let connect: Arc<dyn Connect> = Arc::new(Connector::new(mock_urls));
    let (runtime, warnings) = Runtime::build(&config, &snapshot, &*connect)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let gateway = Gateway::new(runtime, store, Arc::new(SystemClock));
    open_access_log(&config_path, &config, &gateway)?;
    let history = history.map(Arc::new);
    if let Some(h) = &history {
        gateway.set_history(h.history.clone());
    }
    let history_task = history.as_ref().map(crate::history::Kept::spawn);
    let served = gateway.served().clone();
    let control = Control::new(
        config_path,
        config.clone(),
        served.clone(),
        tenants,
        connect,
        snapshot.version,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // The admin token is checked before any listener opens (a process
    // that printed "listening" and then exits would confuse a supervisor).
    let admin_token = match &config.gateway.admin {
        Some(admin) => {
            let token = std::env::var(&admin.token_env).map_err(|_| {
                anyhow::anyhow!(
                    "the admin API needs a token: set the environment variable `{}` (or remove [admin])",
                    admin.token_env
                )
            })?;
            anyhow::ensure!(
                token.len() >= 16,
                "the admin token in `{}` is too short (16 characters at least)",
                admin.token_env
            );
            Some(token)
        }
        None => None,
    };

    // With [decisions] and no [upstreams], Sluice only decides: the proxy
    // listener (health checks, /v1/models) is opened only if asked for.
    let decisions_only = config.decisions_only();
    let addr = match listen.or(config.gateway.listen) {
        Some(a) => Some(a),
        None if decisions_only => None,
        None => Some(DEFAULT_LISTEN.parse()?),
    };
    let listener = match addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let local = listener.local_addr()?;
            // Tests and scripts read these lines to find the ports.
            println!("sluice listening on http://{local}");
            tracing::info!(%local, policy = config.policy.name(), "serving");
            Some(listener)
        }
        None => {
            println!("sluice: no [upstreams]: the decision service only");
            tracing::info!(policy = config.policy.name(), "deciding only (no [upstreams])");
            None
        }
    };

    let budget = sluice_served::BodyBudget::new(config.gateway.body_memory_bytes);
    let grace = config.gateway.shutdown_grace;
    let opts = |name, limits| sluice_served::ListenerOptions {
        name,
        limits,
        budget: budget.clone(),
        grace,
        meters: Some(served.metrics().listener(name)),
    };
    warn_if_caps_exceed_file_limit(&config);
    let mut tasks = Vec::new();
    let mut board = None;
    if let (Some(admin), Some(token)) = (&config.gateway.admin, admin_token) {
        let admin_listener = tokio::net::TcpListener::bind(admin.listen)
            .await
            .with_context(|| format!("admin API listening on {}", admin.listen))?;
        println!("sluice admin on http://{}", admin_listener.local_addr()?);
        let state = AdminState::new(control.clone(), &token);
        if admin.dashboard {
            let d = state.enable_dashboard(admin.session_ttl);
            board = Some(tokio::spawn(d.board.clone().keep(served.clone())));
            println!("sluice dashboard on http://{}/dashboard", admin_listener.local_addr()?);
        }
        tasks.push(tokio::spawn(sluice_admin::serve(
            admin_listener,
            state,
            stopped(),
            opts("admin", admin.limits),
        )));
    }

    if let Some(m) = &config.gateway.metrics.listener {
        let token = std::env::var(&m.token_env).map_err(|_| {
            anyhow::anyhow!(
                "the metrics listener needs a token: set the environment variable `{}` (or remove [metrics] listen)",
                m.token_env
            )
        })?;
        anyhow::ensure!(
            token.len() >= 16,
            "the metrics token in `{}` is too short (16 characters at least)",
            m.token_env
        );
        let metrics_listener = tokio::net::TcpListener::bind(m.listen)
            .await
            .with_context(|| format!("metrics listening on {}", m.listen))?;
        println!("sluice metrics on http://{}/metrics", metrics_listener.local_addr()?);
        let served = served.clone();
        let opts = opts("metrics", m.limits);
        let stop = stopped();
        tasks.push(tokio::spawn(async move {
            sluice_served::metrics::serve_metrics(metrics_listener, served, &token, stop, opts)
                .await
        }));
    }

    // --- decision service (sluice-rls): Envoy RLS v3 and JSON check/settle ---
    let decisions = match &config.decisions {
        Some(d) => {
            let running = sluice_rls::start(served.clone(), d, budget.clone(), grace)
                .await
                .context("starting the decision service ([decisions])")?;
            if let Some(a) = running.grpc {
                println!("sluice decisions grpc on {a}");
            }
            if let Some(a) = running.http {
                println!("sluice decisions http on http://{a}");
            }
            Some(running)
        }
        None => None,
    };
    // --- end of decision service ---

    let watcher = tokio::spawn(control.clone().watch_tenants(TENANT_WATCH));
    let reloader = tokio::spawn(reload_on_sighup(control.clone()));
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            sweep();
        }
    });
    let saver = persist.clone().map(|p| {
        let every = config.gateway.save_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                p.save().await;
            }
        })
    });

    // One signal stops every listener at once: each finishes within the
    // grace, so the whole shutdown does too.
    let proxy = listener.map(|listener| {
        tokio::spawn(sluice_gateway::serve(
            listener,
            gateway.clone(),
            stopped(),
            opts("proxy", config.gateway.limits),
        ))
    });
    shutdown_signal().await;
    // When the shutdown began: the grace runs from then.
    let stop_began = tokio::time::Instant::now();
    let _ = stop_tx.send(true);
    let stopping = async {
        if let Some(p) = proxy
            && let Ok(Err(e)) = p.await
        {
            tracing::warn!(error = %e, "the proxy listener stopped with an error");
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(d) = decisions {
            d.stop().await;
        }
    };
    // The listeners end within the grace; this is only a backstop.
    if tokio::time::timeout(grace + Duration::from_secs(1), stopping).await.is_err() {
        tracing::warn!("listeners did not stop within the shutdown grace; stopping anyway");
    }
    watcher.abort();
    reloader.abort();
    sweeper.abort();
    if let Some(s) = saver {
        s.abort();
    }
    // Settlements still on their way (a shared store that was slow or down)
    // get the rest of the grace, and at least SETTLE_AT_EXIT.
    let pending = gateway.store.pending_settlements();
    if pending > 0 {
        let grace_end = stop_began + grace;
        let within =
            grace_end.saturating_duration_since(tokio::time::Instant::now()).max(SETTLE_AT_EXIT);
        tracing::info!(pending, ?within, "sending the settlements still pending");
        let left = gateway.store.flush(within).await;
        if left > 0 {
            tracing::warn!(
                left,
                "settlements not sent before exit: their reservations keep what was reserved until their lease ends"
            );
        }
    }
    if let Some(t) = history_task {
        t.abort();
    }
    if let Some(b) = board {
        b.abort();
    }
    if gateway.proxy_metrics().access_log().is_some() {
        let gw = gateway.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            gw.proxy_metrics().access_log().is_none_or(|l| l.flush(SETTLE_AT_EXIT))
        })
        .await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!("the access log's last lines were not written before exit");
        }
    }
    if let Some(h) = &history {
        // Bounded: a stalled store must not hold the exit.
        if tokio::time::timeout(SETTLE_AT_EXIT, h.finish()).await.is_err() {
            tracing::warn!("saving the usage history took too long: the last minutes are lost");
        }
    }
    // A clean shutdown loses no count: the requests have been settled.
    if let Some(p) = persist {
        p.save().await;
        tracing::info!("counters saved to the data file");
    }
    Ok(())
}

/// Opens `[access_log]`: stdout, or a file (relative to the policy file's
/// folder) created 0600 and appended to.
fn open_access_log<S: CounterStore + Clone + Unpin>(
    config_path: &Path,
    config: &Config,
    gateway: &Gateway<S>,
) -> anyhow::Result<()> {
    use sluice_config::observe::AccessLogTo;
    use sluice_gateway::access_log::AccessLog;
    let a = &config.gateway.access_log;
    let dropped = gateway.proxy_metrics().access_log_dropped().clone();
    let log = match &a.to {
        AccessLogTo::Off => return Ok(()),
        AccessLogTo::Stdout => AccessLog::stdout(a.queue, dropped)?,
        AccessLogTo::File(p) => {
            let dir = config_path.parent().unwrap_or(Path::new("."));
            let path = if p.is_absolute() { p.clone() } else { dir.join(p) };
            let log = AccessLog::file(&path, a.queue, dropped)
                .with_context(|| format!("opening the access log {}", path.display()))?;
            tracing::info!(path = %path.display(), "access log");
            log
        }
    };
    gateway.proxy_metrics().set_access_log(log);
    Ok(())
}

/// Warns when the connection caps of every listener together exceed what
/// the open file limit allows.
fn warn_if_caps_exceed_file_limit(config: &Config) {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else { return };
    let mut caps = config.gateway.limits.max_connections;
    if let Some(a) = &config.gateway.admin {
        caps += a.limits.max_connections;
    }
    if let Some(d) = &config.decisions {
        caps += d.limits.max_connections
            * (usize::from(d.grpc_listen.is_some()) + usize::from(d.http_listen.is_some()));
    }
    // Upstream connections, the data file, the log: a margin.
    let needed = caps as u64 + 256;
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            connection_caps = caps,
            "the open file limit is below the listeners' connection caps; past it, new connections wait (raise `ulimit -n` or lower max_connections)"
        );
    }
}

async fn reload_on_sighup<S, T>(control: Arc<Control<S, T>>)
where
    S: CounterStore + Clone + Unpin,
    T: TenantStore + Clone,
{
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match control.reload_policy().await {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("policy reload refused; the old policy keeps running:\n{e}");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = control;
}

/// `sluice mock-upstream`.
pub fn mock_upstream(
    listen: SocketAddr,
    latency_ms: u64,
    chunk_delay_ms: u64,
    tokens: u64,
    controls: bool,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        println!("mock upstream listening on http://{}/v1", listener.local_addr()?);
        let config = sluice_mock::MockConfig {
            latency: Duration::from_millis(latency_ms),
            chunk_delay: Duration::from_millis(chunk_delay_ms),
            default_completion_tokens: tokens,
            controls,
            ..Default::default()
        };
        sluice_mock::serve(listener, config, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

//! `sluice serve`: load the policy, start the store (and any mock
//! upstream), and serve until SIGINT or SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_config::gateway::{RedisTopology, StoreConfig, StoreFailure, UpstreamTarget};
use sluice_core::{CounterStore, SystemClock};
use sluice_gateway::{Gateway, Runtime};
use sluice_store::{
    GuardOptions, Guarded, MemoryStore, OnFailure, RedisStore, TimeSource, Topology,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub fn run(config_path: &Path, listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match sluice_config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} problem(s); not serving", config_path.display(), errors.0.len());
            return Ok(ExitCode::from(2));
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(config, listen))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: sluice_config::Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut mocks = Vec::new();
    let mut mock_urls = HashMap::new();
    for u in &config.gateway.upstreams {
        if u.target == UpstreamTarget::Mock {
            let models = config.policy.models().map(|(_, m)| m.name.to_string()).collect();
            let mock = sluice_mock::spawn(sluice_mock::MockConfig { models, ..Default::default() })
                .await
                .context("starting the mock upstream")?;
            tracing::info!(upstream = %u.name, addr = %mock.addr, "built-in mock upstream started");
            mock_urls.insert(u.name.clone(), format!("http://{}/v1", mock.addr));
            mocks.push(mock);
        }
    }
    anyhow::ensure!(
        !config.gateway.upstreams.is_empty(),
        "the policy has no [upstreams]: say where requests go (see docs/CONFIG.md)"
    );
    let runtime = Runtime::build(&config, &|name| mock_urls.get(name).cloned())?;
    match &config.gateway.store {
        StoreConfig::Memory => {
            let store = MemoryStore::new(SystemClock);
            let sweep = store.clone();
            run_gateway(&config, listen, runtime, store, move || sweep.sweep()).await?;
        }
        StoreConfig::Redis(r) => {
            let topology = match &r.topology {
                RedisTopology::Standalone(url) => Topology::Standalone(url.clone()),
                RedisTopology::Cluster(nodes) => Topology::Cluster(nodes.clone()),
                RedisTopology::Sentinel { sentinels, master } => {
                    Topology::Sentinel { sentinels: sentinels.clone(), master: master.clone() }
                }
            };
            let redis = RedisStore::connect_in(&topology, TimeSource::Server, &r.namespace)
                .await
                .with_context(|| format!("connecting to redis ({topology:?})"))?;
            tracing::info!(?topology, namespace = %r.namespace, "counters in redis");
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
            run_gateway(&config, listen, runtime, store, move || sweep.local().sweep()).await?;
        }
    }
    drop(mocks);
    tracing::info!("stopped");
    Ok(())
}

async fn run_gateway<S: CounterStore + Clone + Unpin>(
    config: &sluice_config::Config,
    listen: Option<SocketAddr>,
    runtime: Runtime,
    store: S,
    sweep: impl Fn() + Send + 'static,
) -> anyhow::Result<()> {
    let gateway = Gateway::new(runtime, store, Arc::new(SystemClock));
    let addr = match listen.or(config.gateway.listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN.parse()?,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find the port.
    println!("sluice listening on http://{local}");
    tracing::info!(%local, policy = config.policy.name(), "serving");

    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            sweep();
        }
    });
    sluice_gateway::serve(listener, gateway, shutdown_signal(), config.gateway.shutdown_grace)
        .await?;
    sweeper.abort();
    Ok(())
}

/// `sluice mock-upstream`.
pub fn mock_upstream(
    listen: SocketAddr,
    latency_ms: u64,
    chunk_delay_ms: u64,
    tokens: u64,
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

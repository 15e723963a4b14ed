//! A gRPC load generator for `ShouldRateLimit`: N concurrent callers over a
//! few HTTP/2 connections, for a fixed time; reports calls per second and
//! the latency distribution (p50, p90, p99, p99.9, max).
//!
//! `./scripts/bench-rls` runs it the way docs/BENCHMARKS.md reports it (the
//! server pinned to one CPU, the load generator to the other). By hand:
//!
//! ```sh
//! # The decision service in this process (memory store), then the load:
//! cargo run --release -p sluice-rls --example rls_load -- --duration 10 --concurrency 64
//!
//! # Or against a running `sluice serve` (write its policy first); both
//! # read the decision service's token from SLUICE_DECISIONS_TOKEN:
//! cargo run --release -p sluice-rls --example rls_load -- --print-policy > /tmp/rls.toml
//! export SLUICE_DECISIONS_TOKEN=a-token-of-your-own
//! sluice serve --config /tmp/rls.toml &
//! cargo run --release -p sluice-rls --example rls_load -- --target http://127.0.0.1:8081
//! ```
//!
//! Workload: `--tenants` tenants (1,000) on one tier, each call for a random
//! tenant and one of six models, as Envoy sends it (one descriptor with the
//! tenant and the model, `hits_addend` 100 tokens). Each call is one
//! admission over four limits (the model's RPM, rolling; its RPD and TPD,
//! calendar days; the tier's tokens per day across models), with amounts
//! high enough that every call is admitted: the cost measured is deciding
//! and charging, not refusing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use sluice_core::SystemClock;
use sluice_served::{Runtime, Served, Unconnected};
use sluice_store::{MemoryStore, TenantSnapshot};
use tonic::transport::{Channel, Endpoint};

const MODELS: [&str; 6] = ["m0", "m1", "m2", "m3", "m4", "m5"];

struct Args {
    target: Option<String>,
    connections: usize,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    tenants: usize,
    print_policy: bool,
}

fn args() -> Args {
    let mut a = Args {
        target: None,
        connections: 2,
        concurrency: 64,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        tenants: 1_000,
        print_policy: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => a.target = Some(value()),
            "--connections" => a.connections = value().parse().expect("--connections N"),
            "--concurrency" => a.concurrency = value().parse().expect("--concurrency N"),
            "--duration" => {
                a.duration = Duration::from_secs(value().parse().expect("--duration SECS"));
            }
            "--warmup" => {
                a.warmup = Duration::from_secs(value().parse().expect("--warmup SECS"));
            }
            "--tenants" => a.tenants = value().parse().expect("--tenants N"),
            "--print-policy" => a.print_policy = true,
            other => panic!(
                "unknown flag {other}; flags: --target URL, --connections N, --concurrency N, --duration SECS, --warmup SECS, --tenants N, --print-policy"
            ),
        }
    }
    a
}

fn policy(tenants: usize) -> String {
    let mut p = String::from(
        r#"[policy]
name = "rls-load"

[server]
listen = "127.0.0.1:8080"

[upstreams.none]
base_url = "http://127.0.0.1:9/v1"

[decisions]
grpc_listen = "127.0.0.1:8081"
token_env = "SLUICE_DECISIONS_TOKEN"

[headers]
families = ["requests", "tokens", "requests-day", "tokens-day"]

[tiers.load.models]
"#,
    );
    for m in MODELS {
        let _ = writeln!(
            p,
            "{m} = {{ rpm = 1_000_000_000, rpd = 1_000_000_000, tpd = 1_000_000_000_000 }}"
        );
    }
    p.push_str(
        "\n[[tiers.load.limits]]\nname = \"tpd-all-models\"\nmetric = \"tokens\"\namount = 1_000_000_000_000\nwindow = \"1d\"\n\n",
    );
    for m in MODELS {
        let _ = writeln!(p, "[models.{m}]");
    }
    for t in 0..tenants {
        let _ = writeln!(p, "\n[tenants.t{t}]\ntier = \"load\"");
    }
    p
}

/// A small xorshift: the load generator needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn request(tenant: usize, model: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "sluice".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry { key: "tenant".into(), value: format!("t{tenant}") },
                Entry { key: "model".into(), value: model.into() },
            ],
            ..Default::default()
        }],
        hits_addend: 100,
    }
}

async fn caller(
    channel: Channel,
    seed: u64,
    tenants: usize,
    until: Instant,
) -> (Vec<u32>, u64, u64) {
    let mut client = RateLimitServiceClient::new(channel);
    // The decision service's token (`[decisions] token_env`), as Envoy
    // sends it.
    let token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        std::env::var("SLUICE_DECISIONS_TOKEN")
            .ok()
            .and_then(|t| format!("Bearer {t}").parse().ok());
    let mut rng = Rng(seed | 1);
    let mut lat = Vec::with_capacity(100_000);
    let (mut over, mut errors) = (0, 0);
    while Instant::now() < until {
        let r = rng.next();
        let req = request((r % tenants as u64) as usize, MODELS[((r >> 32) % 6) as usize]);
        let mut req = tonic::Request::new(req);
        if let Some(t) = &token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        let t0 = Instant::now();
        match client.should_rate_limit(req).await {
            Ok(resp) => {
                if resp.get_ref().overall_code != Code::Ok as i32 {
                    over += 1;
                }
            }
            Err(_) => errors += 1,
        }
        lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    (lat, over, errors)
}

fn main() {
    let a = args();
    if a.print_policy {
        print!("{}", policy(a.tenants));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (target, _server) = match &a.target {
            Some(t) => (t.clone(), None),
            None => {
                let config = sluice_config::parse(&policy(a.tenants), "rls-load.toml").unwrap();
                let (runtime, _) =
                    Runtime::build(&config, &TenantSnapshot::default(), &Unconnected).unwrap();
                let store = MemoryStore::new(SystemClock);
                let served = Served::new(runtime, store, Arc::new(SystemClock));
                let svc = sluice_rls::DecisionService::new(served, config.decisions.unwrap(), None);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let server = tokio::spawn(sluice_rls::serve_grpc(
                    listener,
                    svc,
                    std::future::pending::<()>(),
                    sluice_served::ListenerOptions::standalone("decisions-grpc"),
                ));
                (format!("http://{addr}"), Some(server))
            }
        };
        let mut channels = Vec::new();
        for _ in 0..a.connections.max(1) {
            let ch = Endpoint::from_shared(target.clone())
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
            channels.push(ch);
        }
        // Warm up: tenants' first counters, connections, allocator.
        let warm = Instant::now() + a.warmup;
        let mut tasks = Vec::new();
        for i in 0..a.concurrency {
            let ch = channels[i % channels.len()].clone();
            tasks.push(tokio::spawn(caller(ch, 7 + i as u64, a.tenants, warm)));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let start = Instant::now();
        let until = start + a.duration;
        let mut tasks = Vec::new();
        for i in 0..a.concurrency {
            let ch = channels[i % channels.len()].clone();
            tasks.push(tokio::spawn(caller(ch, 1_000 + i as u64, a.tenants, until)));
        }
        let mut lat = Vec::new();
        let (mut over, mut errors) = (0, 0);
        for t in tasks {
            let (l, o, e) = t.await.unwrap();
            lat.extend(l);
            over += o;
            errors += e;
        }
        let elapsed = start.elapsed().as_secs_f64();
        lat.sort_unstable();
        let q = |p: f64| {
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat.get(i).copied().unwrap_or(0)
        };
        println!(
            "target {target} ({}), {} connections, {} concurrent callers, {:.1} s, {} tenants",
            if a.target.is_some() { "external" } else { "in-process" },
            channels.len(),
            a.concurrency,
            elapsed,
            a.tenants
        );
        println!(
            "calls {}  ({:.0}/s)  over-limit {over}  errors {errors}",
            lat.len(),
            lat.len() as f64 / elapsed
        );
        println!(
            "latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            q(0.50),
            q(0.90),
            q(0.99),
            q(0.999),
            lat.last().copied().unwrap_or(0)
        );
    });
}

//! Admissions per second through the Redis store, against the ceiling of the
//! same Redis running the same script with `redis-benchmark`, and Redis
//! commands per admission from `INFO commandstats`.
//!
//! `cargo bench -p sluice-store --bench redis_admission` (needs
//! `redis-server` and `redis-benchmark`: `apt-get install redis-server
//! redis-tools`). Starts its own `redis-server` on a free port.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as WallClock};

use sluice_core::{Clock, CounterStore, SystemClock};
use sluice_store::{RedisStore, TimeSource, Topology};
use sluice_testkit::RedisServer;

use common::{TENANTS, Workload};

const CLIENTS: usize = 64;
const SECONDS: u64 = 8;

fn stat(info: &str, cmd: &str, field: &str) -> u64 {
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
        .and_then(|l| l.split(&format!("{field}=")).nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // Criterion passes its own flags (`--bench`); nothing to parse.
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let w = Arc::new(Workload::new(TENANTS));
    let store = rt
        .block_on(RedisStore::connect(&Topology::Standalone(server.url()), TimeSource::Server))
        .expect("connect");

    // Warm up (scripts cached, connection up), then count from zero.
    rt.block_on(async {
        for i in 0..1_000 {
            let plan = w.policy.plan(&w.request(i), SystemClock.now());
            store.admit(&plan).await.expect("admit");
        }
    });
    server.command("CONFIG RESETSTAT");

    let admitted = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = WallClock::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (w, store, admitted, done) =
                (w.clone(), store.clone(), admitted.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 1_000 + c * 1_000_003;
                while started.elapsed() < Duration::from_secs(SECONDS) {
                    let plan = w.policy.plan(&w.request(i), SystemClock.now());
                    // With a deadline, as the guard sends it.
                    let deadline = std::time::Instant::now() + Duration::from_secs(1);
                    let d = store.admit_by(&plan, Some(deadline)).1.await.expect("admit");
                    if d.is_admitted() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let ours = n as f64 / secs;
    let info = server.command("INFO commandstats");
    let evalsha = stat(&info, "evalsha", "calls");
    // Redis's own CPU time per script call (what the script costs the
    // server, whatever the client's machine does meanwhile).
    let usec_per_call = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("usec_per_call=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    // The client sends nothing but EVALSHA after the warm-up; Redis also
    // counts the commands the script runs inside (HGET, HSET, SET, TIME…).
    let eval = stat(&info, "eval", "calls") + stat(&info, "script", "calls");

    // The ceiling: redis-benchmark sending the same script with the same
    // kind of arguments (one real admission's KEYS and ARGV, tenant
    // randomized over 10,000), 64 connections, pipelined 16 deep.
    let plan = w.policy.plan(&w.request(7), SystemClock.now());
    let mut cmd = store.admission_command(&plan);
    let tenant = format!("{:016x}", plan.tenant);
    // The lease id too (the lease key's and the concurrency member's): an
    // admission that finds its lease is a duplicate and charges nothing,
    // which would flatter the ceiling.
    let lease = cmd[3].rsplit(':').next().unwrap_or_default().to_owned();
    for part in cmd.iter_mut() {
        *part = part.replace(&tenant, "00000000__rand_int__");
        if !lease.is_empty() {
            *part = part.replace(&lease, "__rand_int____rand_int__");
        }
    }
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &server.port.to_string(),
            "-c",
            "64",
            "-P",
            "16",
            "-n",
            "400000",
            "-r",
            "10000",
            "-q",
        ])
        .args(&cmd)
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    // `-q` ends with "<command>: <n> requests per second, p50=…" after
    // progress lines separated by carriage returns.
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.rsplit('\r').next().unwrap_or("").trim().to_owned();
    let ceiling: f64 = last
        .rsplit(": ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);

    println!("redis admission benchmark ({} tenants x 6 models, 4 limits per request)", TENANTS);
    println!(
        "  sluice RedisStore: {n} admissions in {secs:.1}s = {ours:.0}/s ({} admitted), {CLIENTS} concurrent callers on one multiplexed connection",
        admitted.load(Ordering::Relaxed)
    );
    println!(
        "  redis commands per admission (INFO commandstats): EVALSHA {evalsha} / {n} admissions = {:.3}; EVAL/SCRIPT: {eval}",
        evalsha as f64 / n as f64
    );
    println!("  redis CPU per admission script (usec_per_call of EVALSHA): {usec_per_call:.2} us");
    println!("  ceiling: redis-benchmark -c 64 -P 16 EVALSHA (same script): {ceiling:.0}/s");
    println!("  ratio: {:.2} of the ceiling", ours / ceiling.max(1.0));
    println!("  redis-benchmark: {}", last.rsplit(": ").next().unwrap_or(""));
    assert!(ceiling > 0.0, "could not read redis-benchmark's result: {last}");
}

//! Admission throughput of the memory store: plan, all-or-nothing decision
//! and reservation, for a request that touches four limits. Settlement is
//! measured on its own. Run with `cargo bench -p sluice-store --bench admission`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant as WallClock};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::{FakeClock, Instant, ReservationId, Usage};
use sluice_store::MemoryStore;

use common::{TENANTS, Workload};

const CHUNK: usize = 1024;
const START: &str = "2026-05-01T08:00:00Z";

/// Runs `iters` admissions spread over `threads` threads; returns the wall
/// time spent admitting (settling happens between timed chunks) and the
/// wall time spent settling.
fn run(
    w: &Workload,
    store: &MemoryStore,
    iters: u64,
    threads: usize,
    offset: &mut usize,
) -> (Duration, Duration) {
    let per_thread = (iters as usize).div_ceil(threads);
    let base = FakeClock::at(START);
    let t0 = sluice_core::Clock::now(&base).0;
    let results: Vec<(Duration, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = *offset + t * 7_919;
                s.spawn(move || {
                    let mut admit = Duration::ZERO;
                    let mut settle = Duration::ZERO;
                    let mut ids: Vec<ReservationId> = Vec::with_capacity(CHUNK);
                    let mut done = 0;
                    while done < per_thread {
                        let n = CHUNK.min(per_thread - done);
                        let clock = WallClock::now();
                        for k in 0..n {
                            let i = start + done + k;
                            // A millisecond of virtual time per request.
                            let now = Instant(t0 + (i as u64) * 1_000_000);
                            let plan = w.policy.plan(&w.request(i), now);
                            let d = store.admit_now(black_box(&plan));
                            if let Some(id) = d.reservation() {
                                ids.push(id);
                            }
                        }
                        admit += clock.elapsed();
                        let clock = WallClock::now();
                        for id in ids.drain(..) {
                            black_box(store.settle_now(id, Usage::tokens(200, 250)));
                        }
                        settle += clock.elapsed();
                        done += n;
                    }
                    (admit, settle)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).collect()
    });
    *offset += per_thread * threads;
    // Threads run side by side: wall time is the slowest thread's.
    let admit = results.iter().map(|r| r.0).max().unwrap_or_default();
    let settle = results.iter().map(|r| r.1).max().unwrap_or_default();
    (admit, settle)
}

fn admission(c: &mut Criterion) {
    // The same work with 100 tenants: everything stays in cache, which
    // separates the engine's own cost from the memory traffic of 10,000.
    {
        let w = Workload::new(100);
        let store = MemoryStore::new(FakeClock::at(START));
        let mut offset = 0usize;
        run(&w, &store, 600, 1, &mut offset);
        let mut g = c.benchmark_group("admission-hot");
        g.throughput(Throughput::Elements(1));
        g.bench_function("plan+admit, 100 tenants, 1 thread", |b| {
            b.iter_custom(|iters| run(&w, &store, iters, 1, &mut offset).0);
        });
        g.finish();
    }
    // The same request with a fifth limit, a budget in money: priced at
    // planning, one more counter charged.
    {
        let w = Workload::with_budget(100);
        let store = MemoryStore::new(FakeClock::at(START));
        let mut offset = 0usize;
        run(&w, &store, 600, 1, &mut offset);
        let mut g = c.benchmark_group("admission-hot");
        g.throughput(Throughput::Elements(1));
        g.bench_function("plan+admit with a budget, 100 tenants, 1 thread", |b| {
            b.iter_custom(|iters| run(&w, &store, iters, 1, &mut offset).0);
        });
        g.finish();
    }
    // `SLUICE_BENCH_TENANTS` changes the tenant count (to see how the cost
    // follows the working set); the figures in BENCHMARKS.md use 10,000.
    let tenants =
        std::env::var("SLUICE_BENCH_TENANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(TENANTS);
    let w = Workload::new(tenants);
    let store = MemoryStore::new(FakeClock::at(START));
    let mut offset = 0usize;
    // Warm up: every tenant and model has its counters.
    run(&w, &store, (tenants * 6) as u64, 1, &mut offset);

    let mut g = c.benchmark_group("admission");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plan", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            black_box(w.policy.plan(&w.request(i), Instant(1_777_622_400_000_000_000 + i as u64)))
        });
    });
    g.bench_function("admit only (plans made beforehand), 1 thread", |b| {
        b.iter_custom(|iters| {
            let base = sluice_core::Clock::now(&FakeClock::at(START)).0;
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            let mut plans = Vec::with_capacity(CHUNK);
            let mut ids = Vec::with_capacity(CHUNK);
            while done < iters {
                let n = (CHUNK as u64).min(iters - done) as usize;
                plans.clear();
                for k in 0..n {
                    let i = offset + k;
                    plans.push(w.policy.plan(&w.request(i), Instant(base + i as u64 * 1_000_000)));
                }
                let t = WallClock::now();
                for p in &plans {
                    if let Some(id) = store.admit_now(black_box(p)).reservation() {
                        ids.push(id);
                    }
                }
                total += t.elapsed();
                for id in ids.drain(..) {
                    store.settle_now(id, Usage::tokens(200, 250));
                }
                offset += n;
                done += n as u64;
            }
            total
        });
    });
    for threads in [1, 2] {
        g.bench_function(format!("plan+admit, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| run(&w, &store, iters, threads, &mut offset).0);
        });
        g.bench_function(format!("settle, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| run(&w, &store, iters, threads, &mut offset).1);
        });
    }
    // The four limits and a budget in money.
    let wb = Workload::with_budget(tenants);
    let budget_store = MemoryStore::new(FakeClock::at(START));
    let mut budget_offset = 0usize;
    run(&wb, &budget_store, (tenants * 6) as u64, 1, &mut budget_offset);
    g.bench_function("plan+admit with a budget, 1 thread", |b| {
        b.iter_custom(|iters| run(&wb, &budget_store, iters, 1, &mut budget_offset).0);
    });
    g.finish();
    let st = store.stats();
    println!(
        "memory store after the run: {} counters, {} open reservations, {} bytes of counter tables ({:.1} bytes per counter)",
        st.counters,
        st.reservations,
        st.counter_bytes,
        st.counter_bytes as f64 / st.counters.max(1) as f64
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = admission
}
criterion_main!(benches);

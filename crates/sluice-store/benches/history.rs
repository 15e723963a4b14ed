//! The usage history's cost on the request path: one admission event and
//! one settlement event per request, as the gateway records them, over
//! 10,000 tenants × 6 models (consecutive requests never of one tenant),
//! on one thread and on two. Collection (the background task's work) is
//! timed apart. Run with `cargo bench -p sluice-store --bench history`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant as WallClock};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::policy::name_hash;
use sluice_core::{FakeClock, RequestEvent, Step};
use sluice_store::{History, HistorySettings};

const TENANTS: usize = 10_000;
const MODELS: [&str; 6] = [
    "Meta-Llama-3.3-70B-Instruct",
    "Meta-Llama-3.1-8B-Instruct",
    "DeepSeek-R1-0528",
    "DeepSeek-V3.1",
    "Qwen3-32B",
    "gpt-oss-120b",
];

/// Names as the gateway has them: shared, with their hashes.
struct Names {
    tenants: Vec<(Arc<str>, u64)>,
    models: Vec<(Arc<str>, u64)>,
}

impl Names {
    fn new() -> Self {
        let named = |n: String| (Arc::from(n.as_str()), name_hash(&n));
        Self {
            tenants: (0..TENANTS).map(|i| named(format!("org-{i:05}"))).collect(),
            models: MODELS.iter().map(|m| named((*m).to_owned())).collect(),
        }
    }

    /// Request `i`'s event: tenants stride by a prime, so consecutive
    /// requests never share one; every (tenant, model) pair in 60,000.
    fn event(&self, i: usize, step: Step<'static>) -> RequestEvent<'_> {
        let (tenant, tenant_hash) = &self.tenants[(i * 7_919) % TENANTS];
        let (model, model_hash) = &self.models[(i / TENANTS) % MODELS.len()];
        RequestEvent { tenant, tenant_hash: *tenant_hash, model, model_hash: *model_hash, step }
    }
}

/// Records `iters` requests (two events each) on `threads` threads; the
/// wall time.
fn run(h: &History, names: &Names, iters: u64, threads: usize, offset: usize) -> Duration {
    let per = (iters as usize).div_ceil(threads);
    let clock = WallClock::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for k in 0..per {
                    let i = offset + t * per + k;
                    h.record(black_box(&names.event(i, Step::Admitted)));
                    let settled = Step::Settled { input_tokens: 200, output_tokens: 250 };
                    h.record(black_box(&names.event(i, settled)));
                }
            });
        }
    });
    clock.elapsed()
}

fn bench(c: &mut Criterion) {
    let names = Names::new();
    let clock = Arc::new(FakeClock::at("2026-05-01T08:00:00Z"));
    let h = History::local(HistorySettings::default(), clock.clone());
    // Every series exists, as in a server that has run a while.
    run(&h, &names, (TENANTS * MODELS.len()) as u64, 1, 0);
    h.collect();

    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        let mut offset = 0;
        g.bench_function(
            format!("record a request (admission + settlement), {threads} thread(s)"),
            |b| {
                b.iter_custom(|iters| {
                    let took = run(&h, &names, iters, threads, offset);
                    offset += iters as usize;
                    // What the background task does every second, untimed.
                    h.collect();
                    took
                });
            },
        );
    }
    g.bench_function("collect 60,000 cells into buckets", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run(&h, &names, (TENANTS * MODELS.len()) as u64, 1, 0);
                let t = WallClock::now();
                h.collect();
                total += t.elapsed();
                clock.advance(Duration::from_secs(60));
            }
            total
        });
    });
    g.finish();
    let s = h.stats();
    println!(
        "history after the run: {} series, {} minute buckets, {} hour buckets",
        s.series, s.minute_buckets, s.hour_buckets
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = bench
}
criterion_main!(benches);

//! The usage dashboard with 10,000 tenants (6 models, four limits a
//! request): reading every tenant's counters into the board (what the
//! background task does each minute), rendering the operator's overview
//! (what a page view costs), and one tenant's page. Memory store, a history
//! with an hour of traffic. Run with `cargo bench -p sluice-admin --bench
//! dashboard`.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_admin::dashboard::board::Board;
use sluice_admin::dashboard::pages::{self, OverviewQuery, Range};
use sluice_core::{Clock, Cost, CounterStore, FakeClock, RequestEvent, Step};
use sluice_served::usage::limits_of;
use sluice_served::{Runtime, Served, Unconnected};
use sluice_store::{History, HistorySettings, MemoryStore, TenantRecord, TenantSnapshot};

const TENANTS: usize = 10_000;
const MODELS: [&str; 6] = ["m-70b", "m-8b", "m-r1", "m-v3", "m-32b", "m-120b"];

fn policy() -> String {
    let mut p = String::from(
        "[policy]\nname = \"bench\"\ndefault_tier = \"developer\"\n\n[upstreams.up]\nbase_url = \"http://127.0.0.1:9/v1\"\n\n",
    );
    for m in MODELS {
        let _ = writeln!(p, "[models.\"{m}\"]");
    }
    p.push_str("\n[tiers.developer.models]\n");
    for m in MODELS {
        let _ = writeln!(p, "\"{m}\" = {{ rpm = 60, rpd = 12000, tpd = 5000000 }}");
    }
    p.push_str(
        "\n[[tiers.developer.limits]]\nname = \"tokens-per-day-all-models\"\nmetric = \"tokens\"\namount = 20000000\nwindow = \"1d\"\n",
    );
    p
}

fn bench(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("bench setup");
    let config = sluice_config::parse(&policy(), "bench.toml").expect("bench setup");
    let mut snapshot = TenantSnapshot::default();
    for i in 0..TENANTS {
        let id = format!("org-{i:05}");
        snapshot.tenants.insert(id.clone(), TenantRecord { id, ..TenantRecord::default() });
    }
    let (runtime, warnings) =
        Runtime::build(&config, &snapshot, &Unconnected).expect("bench setup");
    assert!(warnings.is_empty(), "{warnings:?}");
    let clock = Arc::new(FakeClock::at("2026-05-01T08:00:00Z"));
    let served = Served::new(runtime, MemoryStore::new(clock.clone()), clock.clone());
    let history = Arc::new(History::local(HistorySettings::default(), clock.clone()));
    served.set_history(history.clone());

    // An hour of traffic: every tenant, a request a minute on one of its
    // models; one tenant in 50 over its RPM now and then.
    let rt_now = served.runtime();
    let chat = rt_now.policy.endpoint("chat").expect("bench setup");
    let rpm: Arc<str> = Arc::from("m-70b/rpm");
    for minute in 0..60 {
        for (i, t) in rt_now.tenants.iter().enumerate() {
            let m = &rt_now
                .policy
                .model_info(rt_now.policy.model(MODELS[(i + minute) % 6]).expect("bench setup"))
                .expect("bench setup");
            let model = rt_now.policy.model_ref(&m.name);
            let req = sluice_core::Ask {
                tenant: &t.facts,
                key: None,
                endpoint: chat,
                model,
                cost: Cost::tokens(300, 200),
                end_user: sluice_core::EndUser::NONE,
            };
            let plan = rt_now.policy.plan(&req, clock.now());
            let d = rt.block_on(served.store.admit(&plan)).expect("bench setup");
            if let Some(id) = d.reservation() {
                rt.block_on(served.store.settle(id, sluice_core::Usage::tokens(280, 150)))
                    .expect("bench setup");
            }
            let e = |step| RequestEvent {
                tenant: t.facts.shared_id(),
                tenant_hash: t.facts.hash(),
                model: &m.name,
                model_hash: m.hash,
                step,
            };
            history.record(&e(Step::Admitted));
            history.record(&e(Step::Settled { input_tokens: 280, output_tokens: 150 }));
            if i % 50 == 0 {
                history.record(&e(Step::Refused { limit: &rpm }));
            }
        }
        history.collect();
        clock.advance(Duration::from_secs(60));
    }
    let board = Board::default();

    let mut g = c.benchmark_group("dashboard, 10,000 tenants");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("board: read every tenant's counters (memory store)", |b| {
        b.iter(|| rt.block_on(board.refresh(&served, None)));
    });
    let q = OverviewQuery::default();
    let html = pages::overview(&served, &board, &q);
    println!("overview page: {} bytes", html.len());
    g.bench_function("overview page (sort 10,000, render 50)", |b| {
        b.iter(|| pages::overview(&served, &board, &q));
    });
    let index = rt_now.tenant_index["org-00050"];
    g.bench_function("a tenant's page (read its counters, 14 charts)", |b| {
        b.iter(|| {
            let now = clock.now();
            let rows = rt
                .block_on(limits_of(&served.store, &rt_now, index, now))
                .expect("bench setup")
                .expect("bench setup");
            let rows: Vec<_> = rows
                .into_iter()
                .map(|r| {
                    let name =
                        rt_now.policy.limit(r.status.limit).expect("bench setup").name.clone();
                    (r, name)
                })
                .collect();
            pages::tenant(Some(&history), "org-00050", "developer", &rows, Range::Hour, now, "/x")
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The admin API and reloads with many tenants, over loopback with the real
//! binary: an admin write costs as much with thousands of tenants as with a
//! few (it reads and changes only its own tenant), and a policy reload of
//! many tenants does not hold up proxied requests (it runs on a blocking
//! thread and is swapped in whole). Bounds are generous: only the old
//! behaviour (each write re-reading and rebuilding every tenant, a reload on
//! the async workers) exceeds them. `./scripts/bench-admin` has the figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn env() -> [(&'static str, &'static str); 2] {
    [("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

/// One model, a token limit no request here reaches, the admin API, and
/// tenant `bench` with key `sk-bench`; `file_tenants` more tenants in the
/// policy file.
fn policy(mock: &sluice_mock::MockServer, file_tenants: usize) -> String {
    let mut p = format!(
        "[models.m]\n{}\n[[limits]]\nname = \"tokens\"\nmetric = \"tokens\"\namount = 4_000_000_000\nwindow = \"1m\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SLUICE_ADMIN_TOKEN\"\ndashboard = false\n\n[tenants.bench]\n[[tenants.bench.keys]]\nid = \"k\"\nhash = \"{}\"\n",
        upstream_section(mock),
        key_hash("sk-bench"),
    );
    for i in 0..file_tenants {
        writeln!(p, "[tenants.f{i:06}]").unwrap();
    }
    p
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// 5,000 tenants created one call at a time: the last 500 calls take as
/// long as the first 500 (the old code, which re-read and rebuilt every
/// tenant on each write, took about ten times as long at the end; it
/// needed 117 s in all for 5,000 in a release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_5000_tenants_costs_the_same_per_tenant_at_the_end_as_at_the_start() {
    const N: usize = 5_000;
    let mock = mock().await;
    let mut s = Sluice::start(&policy(&mock, 0), &env());
    let ops = Ops::of(&mut s);
    let started = Instant::now();
    let mut took = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        let (status, v) = ops
            .call(reqwest::Method::POST, "/tenants", Some(json!({"id": format!("t{i:05}")})))
            .await;
        assert_eq!(status, 201, "{v}");
        took.push(t.elapsed());
    }
    let total = started.elapsed();
    let first = median(took[100..600].to_vec());
    let last = median(took[N - 500..].to_vec());
    eprintln!("{N} tenants in {total:?}; median create: {first:?} (100..600), {last:?} (last 500)");
    assert!(
        last <= first * 3 + Duration::from_millis(2),
        "a create with {N} tenants took {last:?}, with a few hundred {first:?}: writes grow with the tenants"
    );
    assert!(total < Duration::from_secs(150), "{N} tenants took {total:?}");
    // And each one is served at once: a key of the last one works.
    let (_, secret) = ops.key(&format!("t{:05}", N - 1), json!({})).await;
    let r = post(
        &client(),
        &format!("{}/v1/chat/completions", s.url),
        Some(&secret),
        &chat("m", 5),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    // The tenant's keys are listed, revoked ones included, and go with it.
    let (status, keys) =
        ops.call(reqwest::Method::GET, &format!("/tenants/t{:05}/keys", N - 1), None).await;
    assert_eq!((status, keys["data"].as_array().map(Vec::len)), (200, Some(1)), "{keys}");
    let (status, _) =
        ops.call(reqwest::Method::DELETE, &format!("/tenants/t{:05}", N - 1), None).await;
    assert_eq!(status, 204);
    let r = post(
        &client(),
        &format!("{}/v1/chat/completions", s.url),
        Some(&secret),
        &chat("m", 5),
        &[],
    )
    .await;
    assert_eq!(r.status(), 401, "a deleted tenant's key stops at once");
}

/// A policy file of 30,000 tenants reloaded three times while a client
/// sends chat completions one after another, Sluice on one CPU (one
/// runtime thread, as in a one-CPU container): no request waits for a
/// reload (the old code parsed and built it on the runtime's thread,
/// holding up every request for the whole reload, about a second here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_30000_tenants_does_not_hold_up_requests() {
    const BOUND: Duration = Duration::from_millis(200);
    let mock = mock().await;
    let mut s = Sluice::start_on_one_cpu(&policy(&mock, 30_000), &env());
    let ops = Ops::of(&mut s);
    let url = format!("{}/v1/chat/completions", s.url);
    let chat_loop = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        let (http, url) = (client(), url.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = post(&http, &url, Some("sk-bench"), &chat("m", 5), &[]).await;
                assert_eq!(r.status(), 200);
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (worst, n)
        })
    };
    // Alone first, for the record.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let alone = chat_loop(stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (alone, _) = alone.await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = chat_loop(stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut reloads = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (status, v) = ops.call(reqwest::Method::POST, "/policy/reload", None).await;
        assert_eq!(status, 200, "{v}");
        reloads.push(t.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, n) = during.await.unwrap();
    eprintln!(
        "reloads took {reloads:?}; slowest chat alone {alone:?}, during the reloads {worst:?} ({n} requests)"
    );
    assert!(n >= 10, "only {n} requests were served during three reloads");
    assert!(
        worst < BOUND,
        "a request took {worst:?} during reloads of {reloads:?} (alone: {alone:?})"
    );
}

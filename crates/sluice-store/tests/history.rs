//! The usage history shared through a real Redis (standalone and Cluster):
//! what one instance records, every instance reads back, bucket for bucket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Clock, FakeClock, RequestEvent, Step};
use sluice_store::history::{Grain, HistorySettings};
use sluice_store::{History, RedisHistory, Topology};
use sluice_testkit::{RedisCluster, RedisServer};

/// Records one event of `tenant` and `model`.
fn record(h: &History, tenant: &str, model: &str, step: Step<'_>) {
    let (t, m): (Arc<str>, Arc<str>) = (Arc::from(tenant), Arc::from(model));
    h.record(&RequestEvent::new(&t, &m, step));
}

async fn two_instances_see_the_same_buckets(topology: Topology) {
    let clock = Arc::new(FakeClock::at("2026-05-04T10:00:10Z"));
    let start = clock.now();
    let a = History::shared(HistorySettings::default(), clock.clone());
    let b = History::shared(HistorySettings::default(), clock.clone());
    let ra = RedisHistory::connect(&topology, "t", &a).await.unwrap();
    let rb = RedisHistory::connect(&topology, "t", &b).await.unwrap();
    // Each instance serves part of the traffic, of several tenants.
    for i in 0..20u64 {
        let (h, tenant) = if i % 2 == 0 { (&a, "acme") } else { (&b, "globex") };
        record(h, tenant, "m:1", Step::Admitted);
        record(h, tenant, "m:1", Step::Settled { input_tokens: i, output_tokens: 1 });
    }
    record(&a, "acme", "", Step::Refused { limit: &Arc::from("rpm/x") });
    record(&b, "acme", "m:1", Step::Admitted);
    clock.advance(Duration::from_secs(60));
    record(&b, "acme", "m:1", Step::Refused { limit: &Arc::from("tpd") });
    for h in [(&a, &ra), (&b, &rb), (&a, &ra)] {
        let r = h.0.sync(h.1).await.unwrap();
        assert_eq!(r.lost, 0);
    }
    for (name, h) in [("a", &a), ("b", &b)] {
        let minutes = h.series("acme", None, Grain::Minute, start, 2);
        assert_eq!(minutes[0].requests, 11, "{name}");
        assert_eq!(minutes[0].input_tokens, (0..20).step_by(2).sum::<u64>(), "{name}");
        assert_eq!(minutes[0].limited_by("rpm/x"), 1, "{name}");
        assert_eq!(minutes[1].limited_by("tpd"), 1, "{name}");
        let hour = h.series("globex", Some("m:1"), Grain::Hour, start, 1);
        assert_eq!((hour[0].requests, hour[0].output_tokens), (10, 10), "{name}");
    }
    // The buckets are the same, field for field.
    for tenant in ["acme", "globex"] {
        for grain in [Grain::Minute, Grain::Hour] {
            assert_eq!(
                a.series(tenant, None, grain, start, 2),
                b.series(tenant, None, grain, start, 2)
            );
        }
    }
    // A third instance, started now, reads it all from Redis.
    let c = History::shared(HistorySettings::default(), clock.clone());
    let rc = RedisHistory::connect(&topology, "t", &c).await.unwrap();
    assert!(c.load_shared(&rc).await.unwrap() >= 4);
    assert_eq!(
        c.series("acme", None, Grain::Minute, start, 2),
        a.series("acme", None, Grain::Minute, start, 2)
    );
    assert_eq!(c.totals("globex", start).requests, 10);
}

#[tokio::test]
async fn two_instances_on_one_redis_see_the_same_buckets() {
    let redis = RedisServer::start();
    two_instances_see_the_same_buckets(Topology::Standalone(redis.url())).await;
    // Every key the history wrote has a TTL.
    let keys = redis.command("KEYS *");
    assert!(keys.contains(":hm:") && keys.contains(":am:"), "{keys}");
    for key in keys.split_whitespace().filter(|k| k.starts_with("t:")) {
        let ttl: i64 =
            redis.command(&format!("TTL {key}")).trim().trim_start_matches(':').parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[tokio::test]
async fn two_instances_on_one_cluster_see_the_same_buckets() {
    let cluster = RedisCluster::start();
    two_instances_see_the_same_buckets(Topology::Cluster(cluster.urls())).await;
}

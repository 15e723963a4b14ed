//! The engine's test suite, run on every store: one list of tests, one
//! instantiation per store (limitador's pattern). A store joins by adding a
//! module with its factory and one `engine_tests!` line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod end_users;
mod faults;
mod hard;
mod harness;
mod keys;
mod money;
mod scenarios;
mod suite;
mod waiting;

/// Instantiates every engine test for one store factory.
macro_rules! engine_tests {
    ($factory:expr) => {
        engine_tests!(@each $factory;
            suite::rolling_never_exceeds_its_bound,
            suite::calendar_never_exceeds_its_limit,
            suite::gcra_admits_exactly_what_its_model_says,
            suite::racing_threads_admit_exactly_the_limit,
            suite::racing_threads_respect_the_bound_over_time,
            suite::an_earlier_clock_frees_nothing,
            suite::calendar_resets_at_local_midnight_across_dst,
            suite::refunds_and_debt_land_in_the_right_window,
            suite::settlement_is_idempotent,
            suite::a_dry_run_denies_as_admission_would_and_charges_nothing,
            suite::a_denial_before_the_body_is_a_denial_of_the_request,
            suite::denied_request_changes_no_counter,
            suite::too_large_is_its_own_outcome,
            suite::unsettled_reservation_expires_and_keeps_its_charge,
            suite::settlement_after_the_lease_changes_nothing,
            suite::concurrency_is_released_on_settle_and_release,
            suite::shadow_limits_never_deny,
            suite::exemptions_of_tenant_key_and_channel,
            suite::raised_limit_applies_at_once_and_keeps_counts,
            suite::reloaded_policy_keeps_counters,
            suite::tenants_do_not_share_counters,
            suite::decision_reports_every_limit,
            suite::limits_sharing_a_counter_charge_it_once,
            suite::a_tenant_on_many_models_keeps_every_count,
            scenarios::provider_documents_replay,
            money::money_is_charged_to_the_micro_unit,
            money::a_month_of_spend_adds_up_exactly,
            money::a_budget_denies_until_its_window_turns,
            money::a_developer_tier_with_a_daily_budget_across_models,
            waiting::a_refused_request_waits_for_room_and_is_admitted,
            waiting::a_wait_longer_than_max_wait_is_refused_at_once,
            waiting::one_tenants_line_does_not_hold_up_another,
            waiting::waiting_lines_are_bounded,
            hard::a_hard_limit_is_never_passed,
            keys::a_keys_grant_is_its_own_amount_within_the_tenants,
            keys::a_request_larger_than_a_keys_whole_budget_is_too_large,
            keys::a_keys_grant_ends_with_its_until,
            end_users::end_users_are_split_inside_the_tenants_budget,
            end_users::a_first_seen_end_user_is_held_to_its_budget_from_its_first_request,
            end_users::requests_without_an_end_user_share_one_budget,
            end_users::conditions_test_the_end_user,
            end_users::invented_end_users_leave_counters_only_for_those_admitted,
            end_users::an_application_with_per_end_user_limits
        );
    };
    (@each $factory:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                crate::$module::$name(&$factory);
            }
        )*
    };
}

/// Instantiates the tests of a shared store's calls (deadlines, duplicates)
/// for one Redis-like store factory.
macro_rules! redis_fault_tests {
    ($factory:expr) => {
        #[test]
        fn an_admission_past_its_deadline_does_nothing() {
            crate::faults::an_admission_past_its_deadline_does_nothing(&$factory);
        }
        #[test]
        fn a_duplicated_admission_charges_once() {
            crate::faults::a_duplicated_admission_charges_once(&$factory);
        }
        #[test]
        fn slots_lapse_unless_renewed() {
            crate::faults::slots_lapse_unless_renewed(&$factory);
        }
    };
}

/// Instantiates the stopped-server oracle, in each failure mode, for one
/// way of making (and stopping) a server.
macro_rules! stopped_server_tests {
    ($target:expr) => {
        #[test]
        fn a_stopped_server_counts_exactly_what_it_admitted_failing_closed() {
            crate::faults::stopped_server_oracle($target, sluice_store::OnFailure::Closed);
        }
        #[test]
        fn a_stopped_server_counts_exactly_what_it_admitted_failing_open() {
            crate::faults::stopped_server_oracle($target, sluice_store::OnFailure::Open);
        }
        #[test]
        fn a_stopped_server_counts_exactly_what_it_admitted_failing_local() {
            crate::faults::stopped_server_oracle($target, sluice_store::OnFailure::Local);
        }
    };
}

mod memory {
    use sluice_core::FakeClock;
    use sluice_store::MemoryStore;

    use crate::harness::StoreFactory;

    pub struct Memory;

    impl StoreFactory for Memory {
        type Store = MemoryStore;
        fn make(&self, clock: FakeClock, _rt: &tokio::runtime::Runtime) -> MemoryStore {
            MemoryStore::with_shards(clock, 8)
        }
        fn counters_of(
            &self,
            store: &MemoryStore,
            tenant: u64,
            _rt: &tokio::runtime::Runtime,
        ) -> usize {
            let bits = (tenant >> 32) as u32;
            store.snapshot().iter().filter(|(k, _)| k.group.tenant_bits() == bits).count()
        }
    }

    engine_tests!(Memory);

    /// The memory store's own bookkeeping with a tenant whose counters do
    /// not all fit side by side: sweeping drops only idle counters, and a
    /// snapshot restored into a new store (the data file's path) has them all.
    #[test]
    fn sweep_and_snapshot_keep_a_busy_tenants_counters() {
        use std::time::Duration;

        use sluice_core::Cost;

        use crate::harness::{Harness, policy, status, tenant};

        let mut text = String::new();
        for m in 0..40 {
            text.push_str(&format!("[models.m{m}]\n"));
        }
        text.push_str("[tiers.free.models]\n");
        for m in 0..40 {
            text.push_str(&format!("m{m} = {{ rpm = 3, rpd = 100 }}\n"));
        }
        let h = Harness::new(&Memory, policy(&text), "2026-05-01T10:00:00Z");
        let t = h.tenant(&tenant("busy"));
        for m in 0..40 {
            for _ in 0..2 {
                assert!(h.admit(&t, &format!("m{m}"), Cost::REQUEST).is_admitted());
            }
        }
        // 40 RPM and 40 RPD counters.
        assert_eq!(h.store.stats().counters, 80);
        h.advance(Duration::from_secs(61));
        h.store.sweep();
        // The RPMs refilled and went; the day's counts stay.
        assert_eq!(h.store.stats().counters, 40);
        let copy = MemoryStore::with_shards(h.clock.clone(), 8);
        copy.restore(h.store.snapshot());
        let h2 = Harness { store: copy, ..h };
        for m in 0..40 {
            let model = format!("m{m}");
            let d = h2.peek(&t, &model);
            let rpd = status(&h2.policy, &d, &format!("{model}/rpd"));
            assert_eq!(rpd.used, 2, "{model}");
        }
    }
}

/// A Redis store on `topology`, in a key namespace of its own (one server
/// serves every test of a binary), its time from the test's fake clock,
/// passed to the scripts, so that windows can be stepped through.
fn redis_store(
    topology: &sluice_store::Topology,
    clock: sluice_core::FakeClock,
    rt: &tokio::runtime::Runtime,
) -> sluice_store::RedisStore {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ns = format!("t{}", SEQ.fetch_add(1, Ordering::Relaxed));
    let time = sluice_store::TimeSource::Client(std::sync::Arc::new(clock));
    rt.block_on(sluice_store::RedisStore::connect_in(topology, time, &ns))
        .unwrap_or_else(|e| panic!("connect to {topology:?}: {e}"))
}

/// How many counters of `tenant` a Redis store holds: the fields of its
/// groups' hashes (`KEYS` goes to every master of a Cluster; every key of
/// a tenant carries its hash tag).
fn redis_counters(
    store: &sluice_store::RedisStore,
    tenant: u64,
    rt: &tokio::runtime::Runtime,
) -> usize {
    let pattern = format!("{}:{{{tenant:016x}}}:g:*", store.namespace());
    let keys = rt.block_on(store.command(&["KEYS".to_owned(), pattern])).expect("KEYS");
    let keys: Vec<String> = ::redis::from_redis_value(keys).expect("a list of keys");
    keys.iter()
        .map(|k| {
            let n = rt.block_on(store.command(&["HLEN".to_owned(), k.clone()])).expect("HLEN");
            ::redis::from_redis_value::<usize>(n).expect("a count")
        })
        .sum()
}

mod redis {
    //! The same suite on a real `redis-server`.
    use std::sync::OnceLock;

    use sluice_core::FakeClock;
    use sluice_store::{RedisStore, Topology};
    use sluice_testkit::RedisServer;

    use crate::harness::StoreFactory;

    static SERVER: OnceLock<RedisServer> = OnceLock::new();

    pub struct Redis;

    impl StoreFactory for Redis {
        type Store = RedisStore;
        fn make(&self, clock: FakeClock, rt: &tokio::runtime::Runtime) -> RedisStore {
            let server = SERVER.get_or_init(RedisServer::start);
            crate::redis_store(&Topology::Standalone(server.url()), clock, rt)
        }
        fn counters_of(
            &self,
            store: &RedisStore,
            tenant: u64,
            rt: &tokio::runtime::Runtime,
        ) -> usize {
            crate::redis_counters(store, tenant, rt)
        }
    }

    engine_tests!(Redis);
    redis_fault_tests!(Redis);
    stopped_server_tests!(crate::faults::standalone(RedisServer::start()));

    #[test]
    fn settlements_wait_for_a_restarted_server() {
        crate::faults::settlements_wait_for_a_restarted_server();
    }

    #[test]
    fn the_settlement_queue_is_bounded() {
        crate::faults::the_settlement_queue_is_bounded();
    }
}

mod valkey {
    //! The same suite on a real `valkey-server` (the scripts run unchanged
    //! on Valkey: same protocol, same Lua).
    use std::sync::OnceLock;

    use sluice_core::FakeClock;
    use sluice_store::{RedisStore, Topology};
    use sluice_testkit::RedisServer;

    use crate::harness::StoreFactory;

    static SERVER: OnceLock<RedisServer> = OnceLock::new();

    pub struct Valkey;

    impl StoreFactory for Valkey {
        type Store = RedisStore;
        fn make(&self, clock: FakeClock, rt: &tokio::runtime::Runtime) -> RedisStore {
            let server = SERVER.get_or_init(RedisServer::start_valkey);
            crate::redis_store(&Topology::Standalone(server.url()), clock, rt)
        }
        fn counters_of(
            &self,
            store: &RedisStore,
            tenant: u64,
            rt: &tokio::runtime::Runtime,
        ) -> usize {
            crate::redis_counters(store, tenant, rt)
        }
    }

    engine_tests!(Valkey);
    redis_fault_tests!(Valkey);
    stopped_server_tests!(crate::faults::standalone(RedisServer::start_valkey()));
}

mod redis_cluster {
    //! The same suite on a three-master Redis Cluster: every admission's keys
    //! share the tenant's hash tag, so each lands on one slot.
    use std::sync::OnceLock;

    use sluice_core::FakeClock;
    use sluice_store::{RedisStore, Topology};
    use sluice_testkit::RedisCluster;

    use crate::harness::StoreFactory;

    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

    pub struct Cluster;

    impl StoreFactory for Cluster {
        type Store = RedisStore;
        fn make(&self, clock: FakeClock, rt: &tokio::runtime::Runtime) -> RedisStore {
            let cluster = CLUSTER.get_or_init(RedisCluster::start);
            crate::redis_store(&Topology::Cluster(cluster.urls()), clock, rt)
        }
        fn counters_of(
            &self,
            store: &RedisStore,
            tenant: u64,
            rt: &tokio::runtime::Runtime,
        ) -> usize {
            crate::redis_counters(store, tenant, rt)
        }
    }

    engine_tests!(Cluster);
    redis_fault_tests!(Cluster);
    stopped_server_tests!(crate::faults::cluster_node(RedisCluster::start()));
}

//! Counters shared by many Sluice instances, in Redis or Valkey
//! (standalone, Sentinel or Cluster).
//!
//! One admission is **one** round trip: `EVALSHA` of the versioned script
//! `admit.lua`, which checks every charge of the plan and applies all of
//! them or none, server-side, with the engine's arithmetic (in milliseconds)
//! and, by default, the server's clock (`TIME`). Settlement is one more
//! script (`settle.lua`), idempotent because it deletes the lease it reads.
//! Every key of a tenant carries the tenant's hash tag, so a whole admission
//! lands on one Cluster slot. Nothing is left without a TTL.
//!
//! An admission that its caller gave up on never takes effect later: each
//! carries its deadline in the server's time ([`RedisStore::admit_by`]; the
//! server's clock is learned from replies, `clock.rs`), past which the
//! script does nothing; and admission is idempotent by its reservation id,
//! so a retried or duplicated call charges once.
//!
//! Key layout (`<t>` is the tenant's 64-bit hash in hex):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `sluice:{<t>}:g:<group>` | hash | one field per counter of a group: `r:<ahead>:<at>` (rolling) or `c:<slot end>:<used>` (calendar) |
//! | `sluice:{<t>}:n:<group><counter>` | sorted set | requests in flight: lease ids scored by when their slot lapses unless renewed |
//! | `sluice:{<t>}:l:<id>` | string | an open reservation: its charges, until settled or expired (settled before its admission's deadline: `x` until then) |

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use sluice_core::{
    Clock, CounterKey, CounterStore, Decision, Plan, ReservationId, Settlement, Usage,
};

mod admission;
mod clock;
mod nodes;
mod pending;
mod sentinel;

use clock::ServerClock;
pub use nodes::MAX_NODES;
use nodes::SlotMap;
use pending::Settlements;

/// The most settlements kept waiting for Redis; more are dropped (counted
/// by [`RedisStore::lost_settlements`]): their reservations keep what was
/// reserved until the lease ends.
pub const SETTLEMENT_QUEUE: usize = pending::CAPACITY;
pub(crate) use sentinel::SentinelConn;

/// The admission script (see admit.lua's header for KEYS and ARGV), after
/// the functions it shares with settlement.
pub const ADMIT_LUA: &str = concat!(include_str!("rolling.lua"), include_str!("admit.lua"));
/// The settlement script (see settle.lua's header for KEYS and ARGV), after
/// the functions it shares with admission.
pub const SETTLE_LUA: &str = concat!(include_str!("rolling.lua"), include_str!("settle.lua"));
/// The heartbeat of a running request's concurrency slots (see renew.lua).
pub const RENEW_LUA: &str = include_str!("renew.lua");
/// How long a concurrency slot is held unless renewed, by default.
pub const DEFAULT_SLOT_LEASE: Duration = Duration::from_secs(10);
/// Forgets one counter. KEYS[1] the group hash, KEYS[2] the concurrency
/// set; ARGV[1] the counter's field. Returns how many things were removed.
pub const RESET_LUA: &str =
    "return redis.call('HDEL', KEYS[1], ARGV[1]) + redis.call('DEL', KEYS[2])";

/// Where the Redis servers are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a proxy in front of several): `redis://host:port/db`.
    Standalone(String),
    /// Sentinels that know the master of `master`.
    Sentinel {
        /// Sentinel URLs (`redis://host:26379`).
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
    },
    /// Cluster seed nodes.
    Cluster(Vec<String>),
}

/// Whose clock windows follow.
#[derive(Clone)]
pub enum TimeSource {
    /// The Redis server's `TIME` (one clock per shard): production.
    Server,
    /// A clock of this process, passed to the scripts (tests with a fake
    /// clock).
    Client(Arc<dyn Clock>),
}

impl std::fmt::Debug for TimeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Server => "Server",
            Self::Client(_) => "Client",
        })
    }
}

/// Why Redis could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// A connection or command error.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The script answered something else than expected.
    #[error("redis: unexpected reply from the admission script ({0})")]
    Reply(String),
    /// The admission reached the server after its deadline: it did nothing.
    #[error("redis: the admission reached the server after its deadline; nothing was charged")]
    Late,
}

impl RedisStoreError {
    /// Whether a retry could succeed (the server is down, restarting,
    /// failing over), as opposed to a bug.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_cluster_error()
            }
            Self::Reply(_) | Self::Late => false,
        }
    }

    /// Whether the command may have run on the server although no answer
    /// came: it was sent (or may have been) and the connection broke or
    /// timed out. Not when the server answered, or could not be reached.
    pub fn may_have_run(&self) -> bool {
        match self {
            // An error reply is an answer; a refused connection sent nothing.
            Self::Redis(e) => e.code().is_none() && !e.is_connection_refusal(),
            Self::Reply(_) | Self::Late => false,
        }
    }
}

enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Box<SentinelConn>),
}

struct Inner {
    namespace: String,
    conn: Conn,
    admit: Script,
    settle: Script,
    renew: Script,
    /// How long a concurrency slot is held unless renewed, in ms.
    slot_lease_ms: AtomicU64,
    time: TimeSource,
    /// The servers' clocks, learned from replies.
    clock: ServerClock,
    /// A Cluster's slot map: which master holds a tenant's keys.
    slots: Option<SlotMap>,
    ids: RandomState,
    seq: AtomicU64,
    /// Settlements on their way, retried until they land.
    settlements: Arc<Settlements>,
    /// The longest lease of the admissions made so far, in ms: how long a
    /// settlement may be worth retrying.
    longest_lease_ms: AtomicU64,
}

/// A Redis-backed counter store. Cheap to clone (shared).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("time", &self.inner.time).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, with keys under `sluice:`. Must be called inside a tokio
    /// runtime: the task that sends settlements runs on it.
    pub async fn connect(topology: &Topology, time: TimeSource) -> Result<Self, RedisStoreError> {
        Self::connect_in(topology, time, "sluice").await
    }

    /// Connects, with keys under `<namespace>:` (several deployments, or
    /// tests, sharing one Redis).
    pub async fn connect_in(
        topology: &Topology,
        time: TimeSource,
        namespace: &str,
    ) -> Result<Self, RedisStoreError> {
        let cluster = matches!(topology, Topology::Cluster(_));
        let conn = match topology {
            Topology::Standalone(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1);
                Conn::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            Topology::Cluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .build()?;
                Conn::Cluster(client.get_async_connection().await?)
            }
            Topology::Sentinel { sentinels, master } => {
                Conn::Sentinel(Box::new(SentinelConn::connect(sentinels, master).await?))
            }
        };
        let store = Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_owned(),
                conn,
                admit: Script::new(ADMIT_LUA),
                settle: Script::new(SETTLE_LUA),
                renew: Script::new(RENEW_LUA),
                slot_lease_ms: AtomicU64::new(DEFAULT_SLOT_LEASE.as_millis() as u64),
                time,
                clock: ServerClock::new(if cluster { MAX_NODES } else { 1 }),
                slots: cluster.then(SlotMap::new),
                ids: RandomState::new(),
                seq: AtomicU64::new(1),
                settlements: Arc::new(Settlements::default()),
                longest_lease_ms: AtomicU64::new(0),
            }),
        };
        tokio::spawn(store.inner.settlements.clone().run(Arc::downgrade(&store.inner)));
        // Load the scripts now, so that admissions are one EVALSHA from the
        // start. (A cluster's nodes learn them on first use: EVALSHA answers
        // NOSCRIPT once per node, and the script is sent then.)
        store.load_scripts().await?;
        store.learn_time().await?;
        if store.inner.slots.is_some() {
            store.read_slots().await?;
            let inner = Arc::downgrade(&store.inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(nodes::REFRESH);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = inner.upgrade() else { return };
                    let store = RedisStore { inner };
                    if let Err(e) = store.read_slots().await {
                        tracing::debug!(error = %e, "reading the cluster's slot map failed");
                    }
                }
            });
        }
        Ok(store)
    }

    /// Reads a Cluster's slot map, and each master's clock.
    async fn read_slots(&self) -> Result<(), RedisStoreError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let (Conn::Cluster(c), Some(slots)) = (&self.inner.conn, &self.inner.slots) else {
            return Ok(());
        };
        let mut c = c.clone();
        let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let call = c.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), any);
        let reply = tokio::time::timeout(Duration::from_secs(2), call).await.map_err(|_| {
            RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "CLUSTER SLOTS"))
        })??;
        for (index, host, port) in slots.update(&reply) {
            if !matches!(self.inner.time, TimeSource::Server) {
                continue;
            }
            let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            let call = c.route_command(redis::cmd("TIME"), node);
            // A master that does not answer is learned from its replies.
            if let Ok(Ok(time)) = tokio::time::timeout(Duration::from_millis(500), call).await
                && let Ok((secs, micros)) = redis::from_redis_value::<(i64, i64)>(time)
            {
                self.inner.clock.sample(
                    index,
                    secs * 1_000_000 + micros,
                    std::time::Instant::now(),
                );
            }
        }
        Ok(())
    }

    /// The server that holds `tenant`'s keys, by index (0 but on a
    /// Cluster: its master's, below [`MAX_NODES`]).
    pub fn node_of(&self, tenant: u64) -> usize {
        self.inner.slots.as_ref().map_or(0, |s| s.node_of(tenant))
    }

    /// The prefix of every key of this store (before `:{<tenant>}:`).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// How many servers [`RedisStore::node_of`] tells apart.
    pub fn nodes(&self) -> usize {
        if self.inner.slots.is_some() { MAX_NODES } else { 1 }
    }

    /// The address of server `index` (for logs), if known.
    pub fn node_name(&self, index: usize) -> Option<String> {
        self.inner.slots.as_ref().and_then(|s| s.name(index))
    }

    /// Holds concurrency slots for `lease` unless renewed (the default is
    /// [`DEFAULT_SLOT_LEASE`]); at least a second.
    #[must_use]
    pub fn with_slot_lease(self, lease: Duration) -> Self {
        let ms = lease.max(Duration::from_secs(1)).as_millis();
        self.inner.slot_lease_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        self
    }

    /// Learns the server's clock before the first admission (a Cluster's
    /// nodes are learned from their replies).
    async fn learn_time(&self) -> Result<(), RedisStoreError> {
        if !matches!(self.inner.time, TimeSource::Server) {
            return Ok(());
        }
        let time = redis::cmd("TIME");
        let reply: Option<(i64, i64)> = match &self.inner.conn {
            Conn::Single(c) => Some(time.query_async(&mut c.clone()).await?),
            Conn::Sentinel(s) => match s.current() {
                Some(mut c) => Some(time.query_async(&mut c).await?),
                None => None,
            },
            Conn::Cluster(_) => None,
        };
        if let Some((secs, micros)) = reply {
            self.inner.clock.sample(0, secs * 1_000_000 + micros, std::time::Instant::now());
        }
        Ok(())
    }

    async fn load_scripts(&self) -> Result<(), RedisStoreError> {
        async fn load(c: &mut impl redis::aio::ConnectionLike) -> Result<(), RedisError> {
            for script in [ADMIT_LUA, SETTLE_LUA, RENEW_LUA] {
                let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(script).query_async(c).await?;
            }
            Ok(())
        }
        match &self.inner.conn {
            Conn::Single(c) => load(&mut c.clone()).await?,
            Conn::Sentinel(s) => {
                if let Some(mut c) = s.current() {
                    load(&mut c).await?;
                }
            }
            Conn::Cluster(_) => {}
        }
        Ok(())
    }

    fn time_arg(&self) -> String {
        match &self.inner.time {
            TimeSource::Server => "s".to_owned(),
            TimeSource::Client(c) => c.now().as_millis().to_string(),
        }
    }

    async fn run(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<redis::Value, RedisStoreError> {
        match &self.inner.conn {
            Conn::Single(c) => Ok(inv.invoke_async(&mut c.clone()).await?),
            Conn::Cluster(c) => Ok(inv.invoke_async(&mut c.clone()).await?),
            Conn::Sentinel(s) => {
                Ok(s.run(|mut c| async move { inv.invoke_async(&mut c).await }).await?)
            }
        }
    }

    fn lease_id(&self, tenant: u64) -> (ReservationId, String) {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        // The top bit marks ids of a Redis store (memory ids never set it).
        let random = self.inner.ids.hash_one(seq) | (1 << 63);
        (ReservationId((u128::from(tenant) << 64) | u128::from(random)), format!("{random:016x}"))
    }

    async fn settle_inner(
        &self,
        id: ReservationId,
        usage: Usage,
        release: bool,
    ) -> Result<Settlement, RedisStoreError> {
        let tenant = (id.0 >> 64) as u64;
        let random = id.0 as u64;
        let lease = format!("{random:016x}");
        let mut inv = self.inner.settle.prepare_invoke();
        inv.key(format!("{}:{{{tenant:016x}}}:l:{lease}", self.inner.namespace));
        inv.arg(self.time_arg())
            .arg(if release { "release" } else { "settle" })
            .arg(&lease)
            .arg(usage.requests)
            .arg(usage.input_tokens)
            .arg(usage.output_tokens)
            .arg(usage.billed.input)
            .arg(usage.billed.cached_input.min(usage.billed.input))
            .arg(usage.billed.output);
        let reply = self.run(&inv).await?;
        let done: i64 =
            redis::from_redis_value(reply).map_err(|e| RedisStoreError::Reply(e.to_string()))?;
        Ok(if done == 1 { Settlement::Settled } else { Settlement::Unknown })
    }

    async fn renew_inner(&self, id: ReservationId) -> Result<bool, RedisStoreError> {
        let tenant = (id.0 >> 64) as u64;
        let lease = format!("{:016x}", id.0 as u64);
        let mut inv = self.inner.renew.prepare_invoke();
        inv.key(format!("{}:{{{tenant:016x}}}:l:{lease}", self.inner.namespace));
        inv.arg(self.time_arg()).arg(&lease);
        let reply = self.run(&inv).await?;
        let open: i64 =
            redis::from_redis_value(reply).map_err(|e| RedisStoreError::Reply(e.to_string()))?;
        Ok(open == 1)
    }

    /// Queues a settlement, retried until it lands or the longest lease
    /// seen has passed (by then Redis has expired the lease it settles).
    fn detached(&self, id: ReservationId, usage: Usage, release: bool) {
        let lease = match self.inner.longest_lease_ms.load(Ordering::Relaxed) {
            0 => sluice_core::DEFAULT_LEASE,
            ms => Duration::from_millis(ms),
        };
        let until = std::time::Instant::now() + lease;
        self.inner.settlements.push(id, usage, release, until);
    }

    /// Settlements accepted and not landed yet: being sent, or waiting for
    /// Redis to answer again.
    pub fn pending_settlements(&self) -> usize {
        self.inner.settlements.len()
    }

    /// Settlements lost: dropped because too many were waiting, and given
    /// up because their lease ended first (their reservations keep what was
    /// reserved).
    pub fn lost_settlements(&self) -> (u64, u64) {
        self.inner.settlements.lost()
    }

    /// Waits until every settlement accepted so far has landed, or
    /// `within` has passed; how many are still pending.
    pub async fn flush_settlements(&self, within: Duration) -> usize {
        self.inner.settlements.flush(within).await
    }
}

impl CounterStore for RedisStore {
    type Error = RedisStoreError;

    async fn admit(&self, plan: &Plan) -> Result<Decision, RedisStoreError> {
        self.admit_or_peek(plan, false).await
    }

    async fn peek(&self, plan: &Plan) -> Result<Decision, RedisStoreError> {
        self.admit_or_peek(plan, true).await
    }

    async fn settle(&self, id: ReservationId, usage: Usage) -> Result<Settlement, RedisStoreError> {
        self.settle_inner(id, usage, false).await
    }

    fn settle_detached(&self, id: ReservationId, usage: Usage) {
        self.detached(id, usage, false);
    }

    fn release(&self, id: ReservationId) {
        self.detached(id, Usage::REFUND, true);
    }

    fn slot_lease(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.inner.slot_lease_ms.load(Ordering::Relaxed)))
    }

    async fn renew(&self, id: ReservationId) -> Result<bool, RedisStoreError> {
        self.renew_inner(id).await
    }

    fn pending_settlements(&self) -> usize {
        self.inner.settlements.len()
    }

    async fn flush(&self, within: Duration) -> usize {
        self.flush_settlements(within).await
    }

    async fn reset(&self, tenant: u64, key: CounterKey) -> Result<bool, RedisStoreError> {
        let tag = format!("{}:{{{tenant:016x}}}", self.inner.namespace);
        let group = format!("{:016x}{:016x}", key.group.hi, key.group.lo);
        let field = format!("{:016x}", key.counter);
        let script = Script::new(RESET_LUA);
        let mut inv = script.prepare_invoke();
        inv.key(format!("{tag}:g:{group}")).key(format!("{tag}:n:{group}{field}")).arg(&field);
        let reply = self.run(&inv).await?;
        let n: i64 =
            redis::from_redis_value(reply).map_err(|e| RedisStoreError::Reply(e.to_string()))?;
        Ok(n > 0)
    }
}

/// Whether a reservation id was issued by a Redis store.
pub const fn is_redis_id(id: ReservationId) -> bool {
    (id.0 as u64) & (1 << 63) != 0
}

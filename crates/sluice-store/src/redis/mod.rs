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
//! Key layout (`<t>` is the tenant's 64-bit hash in hex):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `sluice:{<t>}:g:<group>` | hash | one field per counter of a group: `r:<ahead>:<at>` (rolling) or `c:<slot end>:<used>` (calendar) |
//! | `sluice:{<t>}:n:<group><counter>` | sorted set | requests in flight: lease ids scored by lease expiry |
//! | `sluice:{<t>}:l:<id>` | string | an open reservation: its charges, until settled or expired |

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use sluice_core::{
    Clock, CounterKey, CounterStore, Decision, Instant, LimitStatus, Metric, Outcome, Plan,
    ReservationId, Rule, Settlement, Usage, Verdict,
};
use smallvec::SmallVec;

mod sentinel;

pub(crate) use sentinel::SentinelConn;

/// The admission script (see admit.lua's header for KEYS and ARGV), after
/// the functions it shares with settlement.
pub const ADMIT_LUA: &str = concat!(include_str!("rolling.lua"), include_str!("admit.lua"));
/// The settlement script (see settle.lua's header for KEYS and ARGV), after
/// the functions it shares with admission.
pub const SETTLE_LUA: &str = concat!(include_str!("rolling.lua"), include_str!("settle.lua"));
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
            Self::Reply(_) => false,
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
    time: TimeSource,
    ids: RandomState,
    seq: AtomicU64,
    runtime: tokio::runtime::Handle,
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
    /// runtime; detached settlements run on it.
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
                time,
                ids: RandomState::new(),
                seq: AtomicU64::new(1),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        // Load the scripts now, so that admissions are one EVALSHA from the
        // start. (A cluster's nodes learn them on first use: EVALSHA answers
        // NOSCRIPT once per node, and the script is sent then.)
        store.load_scripts().await?;
        Ok(store)
    }

    async fn load_scripts(&self) -> Result<(), RedisStoreError> {
        async fn load(c: &mut impl redis::aio::ConnectionLike) -> Result<(), RedisError> {
            for script in [ADMIT_LUA, SETTLE_LUA] {
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

    /// The KEYS and ARGV of the admission script for `plan`, and the
    /// reservation id it would create.
    fn admission_call(&self, plan: &Plan, peek: bool) -> (Vec<String>, Vec<String>, ReservationId) {
        let tag = format!("{}:{{{:016x}}}", self.inner.namespace, plan.tenant);
        let (id, lease) = self.lease_id(plan.tenant);
        let mut keys = Vec::with_capacity(4);
        keys.push(format!("{tag}:l:{lease}"));
        let lease_ms = plan.lease_until.0.saturating_sub(plan.now.0) / 1_000_000;
        let mut args = Vec::with_capacity(5 + 10 * plan.charges.len());
        args.push(match &self.inner.time {
            TimeSource::Server => "s".to_owned(),
            // The plan's time, from the same clock: what the memory store
            // uses too.
            TimeSource::Client(_) => (plan.now.0 / 1_000_000).to_string(),
        });
        args.push(lease_ms.max(1).to_string());
        args.push(if peek { "p" } else { "a" }.to_owned());
        args.push(lease);
        args.push(plan.charges.len().to_string());
        for c in &plan.charges {
            let key = match c.rule {
                Rule::Concurrent { .. } => format!(
                    "{tag}:n:{:016x}{:016x}{:016x}",
                    c.key.group.hi, c.key.group.lo, c.key.counter
                ),
                _ => format!("{tag}:g:{:016x}{:016x}", c.key.group.hi, c.key.group.lo),
            };
            let index = match keys.iter().position(|k| *k == key) {
                Some(i) => i + 1,
                None => {
                    keys.push(key);
                    keys.len()
                }
            };
            let cost = c.cost;
            args.push(index.to_string());
            args.push(format!("{:016x}", c.key.counter));
            let (kind, p1, p2, p3) = match c.rule {
                Rule::Rolling { period_nanos, amount: _, burst } => {
                    ("r", burst, period_nanos / 1_000_000, 0)
                }
                Rule::Calendar { slot, next_end, .. } => {
                    ("c", slot.start.as_millis(), slot.end.as_millis(), next_end.as_millis())
                }
                Rule::Concurrent { .. } => ("n", 0, 0, 0),
            };
            args.push(kind.to_owned());
            args.push(cost.to_string());
            args.push(c.rule.amount().to_string());
            args.push(p1.to_string());
            args.push(p2.to_string());
            args.push(p3.to_string());
            args.push(if c.shadow { "s" } else { "-" }.to_owned());
            args.push(c.metric.as_str().to_owned());
        }
        (keys, args, id)
    }

    /// The admission of `plan` as one Redis command line (`EVALSHA <sha>
    /// <numkeys> <keys…> <args…>`), for benchmarks and debugging.
    pub fn admission_command(&self, plan: &Plan) -> Vec<String> {
        let (keys, args, _) = self.admission_call(plan, false);
        let mut cmd = vec!["EVALSHA".to_owned(), self.inner.admit.get_hash().to_owned()];
        cmd.push(keys.len().to_string());
        cmd.extend(keys);
        cmd.extend(args);
        cmd
    }

    async fn admit_or_peek(&self, plan: &Plan, peek: bool) -> Result<Decision, RedisStoreError> {
        if plan.charges.is_empty() {
            // No limit applies: nothing to ask.
            return Ok(Decision {
                outcome: Outcome::Admitted { reservation: None },
                statuses: SmallVec::new(),
            });
        }
        let (keys, args, id) = self.admission_call(plan, peek);
        let mut inv = self.inner.admit.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in &args {
            inv.arg(a);
        }
        let reply = self.run(&inv).await?;
        let nums: Vec<i64> =
            redis::from_redis_value(reply).map_err(|e| RedisStoreError::Reply(e.to_string()))?;
        decision(plan, &nums, (!peek).then_some(id))
            .ok_or_else(|| RedisStoreError::Reply(format!("{nums:?}")))
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
            .arg(usage.output_tokens);
        let reply = self.run(&inv).await?;
        let done: i64 =
            redis::from_redis_value(reply).map_err(|e| RedisStoreError::Reply(e.to_string()))?;
        Ok(if done == 1 { Settlement::Settled } else { Settlement::Unknown })
    }

    fn detached(&self, id: ReservationId, usage: Usage, release: bool) {
        let store = self.clone();
        self.inner.runtime.spawn(async move {
            let call = store.settle_inner(id, usage, release);
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(Ok(_)) => {}
                // The lease expires on its own and keeps its charge.
                Ok(Err(e)) => tracing::warn!(error = %e, "settling a reservation in redis failed"),
                Err(_) => tracing::warn!("settling a reservation in redis timed out"),
            }
        });
    }
}

/// Reads the admission script's reply into a decision.
fn decision(plan: &Plan, nums: &[i64], id: Option<ReservationId>) -> Option<Decision> {
    let (head, rest) = nums.split_at_checked(4)?;
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let ms = |v: i64| Instant::from_millis(u(v));
    let mut statuses = SmallVec::new();
    for (c, r) in plan.charges.iter().zip(rest.chunks_exact(5)) {
        let verdict = match r[0] {
            0 => Verdict::Fits,
            1 => Verdict::WaitUntil(ms(r[4])),
            _ => Verdict::Never,
        };
        statuses.push(LimitStatus {
            limit: c.limit,
            metric: c.metric,
            amount: c.rule.amount(),
            used: u(r[1]),
            remaining: u(r[2]),
            requested: c.cost,
            reset: (r[3] >= 0 && c.metric != Metric::Concurrent).then(|| ms(r[3])),
            verdict,
            shadow: c.shadow,
            window_secs: c.rule.window_secs(),
        });
    }
    if statuses.len() != plan.charges.len() {
        return None;
    }
    let denied = usize::try_from(head[1]).ok()?.checked_sub(1);
    let outcome = match (head[0], denied) {
        (0, _) => Outcome::Admitted { reservation: id },
        (1, Some(limit)) => Outcome::Limited { limit, retry_at: ms(head[2]) },
        (2, Some(limit)) => Outcome::TooLarge { limit },
        _ => return None,
    };
    Some(Decision { outcome, statuses })
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

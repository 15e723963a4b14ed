//! A connection to the master that Sentinel names, which follows a
//! failover: an error that says the master is gone (the connection broke or
//! was refused) or is no longer the master (`READONLY`, after a demotion)
//! drops the connection, and the next command asks the sentinels again.
//! Both the counter store and the tenant store use it.
//!
//! A master can also hang rather than die: the process is stopped, its VM
//! frozen, or a partition drops packets. The TCP connection stays open and
//! nothing answers, so no error comes in time: the caller's timeout (the
//! `Guarded` store's, 50 ms by default, shorter than the redis client's own
//! 500 ms response timeout, whose error would drop the connection) drops the
//! command's future before its outcome can be noted. Left at that, the
//! connection would be kept until the kernel gives up on it (many minutes),
//! long after the sentinels promoted a replica. So every lent connection is
//! a [`Lent`] guard: a command whose future is dropped before its outcome is
//! noted is a *stall* of that connection, and [`STALLS_BEFORE_ASKING`]
//! stalls in a row, with no answer in between, drop the connection: the
//! next command asks the sentinels again. Until they have promoted a
//! replica they name the hung master, whose role check does not answer
//! either, so asking fails (within [`ASKING_TIMEOUT`] at most); once they
//! have, the next command finds the new master. Any answer (a reply, or an
//! ordinary error reply) clears the count, so a master that is only slow now
//! and then keeps its connection; a caller that gives up for another
//! reason (a client that went away) counts as a stall too, and the worst a
//! false stall can do is one reconnection to the same master. The count
//! costs one atomic load per command (and a store only after a stall);
//! stalls of an older connection are not counted against a newer one.
//!
//! Asking the sentinels takes several round trips (to a sentinel, then to
//! the master it names), more than a caller's 50 ms when the sentinels are
//! far away or the first one listed is down. So the asking runs as a task
//! of its own, one at a time, that every caller waiting for a connection
//! shares: a caller that gives up does not cancel it, and once it has
//! found the master the next command uses the connection. Asked inside
//! the caller's future, it would be dropped with each caller's timeout and
//! never finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, RedisError};

/// Commands in a row, with no answer in between, that the master left
/// unanswered before its connection is dropped and the sentinels asked
/// again.
pub(crate) const STALLS_BEFORE_ASKING: u32 = 3;

/// The most asking the sentinels (and connecting to the master they name)
/// may take. The redis crate bounds each step; this bounds them together.
pub(crate) const ASKING_TIMEOUT: Duration = Duration::from_secs(3);

/// The most connecting to the master may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Commands on the current connection that the master left unanswered, in
/// a row.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    in_a_row: AtomicU32,
}

impl Stalls {
    /// Notes an answer: the master is alive. A load, and a store only
    /// after stalls, so the hot path writes no shared memory.
    pub(crate) fn answered(&self) {
        if self.in_a_row.load(Ordering::Relaxed) != 0 {
            self.in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// Notes a command left unanswered; whether the connection should now
    /// be dropped (the count then starts again).
    pub(crate) fn stalled(&self) -> bool {
        let n = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= STALLS_BEFORE_ASKING {
            self.in_a_row.store(0, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Starts again (a new connection).
    fn clear(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
    }
}

/// Why the sentinels could not be asked: not in time.
fn asking_timed_out() -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the sentinels, or the master they name, did not answer within {ASKING_TIMEOUT:?}"),
    )
    .into()
}

/// Why asking ended without an answer: its task failed.
fn asking_failed(e: &tokio::task::JoinError) -> RedisError {
    std::io::Error::other(format!("asking the sentinels failed: {e}")).into()
}

/// The current master's connection, found through the sentinels.
pub(crate) struct SentinelConn {
    inner: Arc<Inner>,
}

/// A connection and its generation (how many were made before it).
type Found = (u64, MultiplexedConnection);

/// An asking under way, shared by the callers that wait for it.
type Asking = Shared<BoxFuture<'static, Result<Found, RedisError>>>;

struct Inner {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection and its generation, so that a late error on an old
    /// connection does not drop a new one.
    conn: Mutex<Option<Found>>,
    made: AtomicU64,
    /// Commands on the current connection left unanswered, in a row.
    stalls: Stalls,
    /// The asking under way, if any.
    asking: Mutex<Option<Asking>>,
}

impl Inner {
    /// Asks the sentinels and installs the connection found.
    async fn ask(&self) -> Result<Found, RedisError> {
        let mut client = self.client.lock().await;
        let conn = ask(&mut client).await?;
        let generation = self.made.fetch_add(1, Ordering::Relaxed);
        self.stalls.clear();
        *self.conn.lock() = Some((generation, conn.clone()));
        Ok((generation, conn))
    }
}

/// A connection lent by [`SentinelConn::get`]: give it back to
/// [`SentinelConn::after`] with the command's outcome. Dropped without
/// that (its command's future was dropped, by a timeout), it counts as a
/// stall of its connection.
pub(crate) struct Lent<'a> {
    owner: &'a SentinelConn,
    generation: u64,
    pub(crate) conn: MultiplexedConnection,
    noted: bool,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if !self.noted {
            self.owner.stalled(self.generation);
        }
    }
}

impl SentinelConn {
    /// Asks `sentinels` for the master named `master` and connects to it.
    pub(crate) async fn connect(sentinels: &[String], master: &str) -> Result<Self, RedisError> {
        let mut client = SentinelClient::build(
            sentinels.to_vec(),
            master.to_owned(),
            None,
            SentinelServerType::Master,
        )?;
        let c = ask(&mut client).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client: tokio::sync::Mutex::new(client),
                conn: Mutex::new(Some((0, c))),
                made: AtomicU64::new(1),
                stalls: Stalls::default(),
                asking: Mutex::new(None),
            }),
        })
    }

    /// The connection to the master, asking the sentinels if there is none.
    /// Callers that come while another asks wait for the same answer.
    pub(crate) async fn get(&self) -> Result<Lent<'_>, RedisError> {
        if let Some((generation, conn)) = self.inner.conn.lock().clone() {
            return Ok(self.lend(generation, conn));
        }
        let (generation, conn) = self.asking().await?;
        Ok(self.lend(generation, conn))
    }

    /// The asking under way, or a new one, in a task of its own (see the
    /// module's doc): dropping the returned future does not stop it.
    fn asking(&self) -> Asking {
        let mut slot = self.inner.asking.lock();
        if let Some(asking) = &*slot {
            return asking.clone();
        }
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let found = inner.ask().await;
            // Done: the next caller without a connection asks again. (This
            // waits for the spawner to have stored the asking, since it holds
            // the lock until then.)
            *inner.asking.lock() = None;
            found
        });
        let asking =
            async move { task.await.unwrap_or_else(|e| Err(asking_failed(&e))) }.boxed().shared();
        *slot = Some(asking.clone());
        asking
    }

    fn lend(&self, generation: u64, conn: MultiplexedConnection) -> Lent<'_> {
        Lent { owner: self, generation, conn, noted: false }
    }

    /// The connection if there is one (no asking).
    pub(crate) fn current(&self) -> Option<MultiplexedConnection> {
        self.inner.conn.lock().as_ref().map(|(_, c)| c.clone())
    }

    /// Notes the outcome of a command run on `lent`: an error that means
    /// the master moved makes the next command ask the sentinels (unless a
    /// newer connection was made meanwhile). Any other outcome is an
    /// answer, which clears the stalls.
    pub(crate) fn after<T>(&self, mut lent: Lent<'_>, result: &Result<T, RedisError>) {
        lent.noted = true;
        match result {
            Err(e) if master_moved(e) => self.forget(lent.generation),
            _ => self.inner.stalls.answered(),
        }
    }

    /// A command on generation `generation` got no answer.
    fn stalled(&self, generation: u64) {
        // Stalls of an older connection say nothing of the current one.
        if self.inner.made.load(Ordering::Relaxed) != generation + 1 {
            return;
        }
        if self.inner.stalls.stalled() {
            tracing::warn!(
                stalls = STALLS_BEFORE_ASKING,
                "the Redis master did not answer: asking the sentinels again"
            );
            self.forget(generation);
        }
    }

    /// Drops generation `generation`'s connection, if it is still the one.
    fn forget(&self, generation: u64) {
        let mut conn = self.inner.conn.lock();
        if conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            *conn = None;
        }
    }

    /// Runs `f` on the master's connection, following a failover.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let lent = self.get().await?;
        let result = f(lent.conn.clone()).await;
        self.after(lent, &result);
        result
    }
}

/// Asks the sentinels for the master and connects to it, within
/// [`ASKING_TIMEOUT`] (a hung master still named accepts the connection and
/// never answers the check).
async fn ask(client: &mut SentinelClient) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT));
    tokio::time::timeout(ASKING_TIMEOUT, client.get_async_connection_with_config(&config))
        .await
        .map_err(|_| asking_timed_out())?
}

/// Whether an error says the master is gone (the connection broke or was
/// refused) or is no longer the master: `READONLY`, alone or inside an
/// aborted transaction (`EXECABORT`, what a `MULTI` of writes gets).
fn master_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code() == Some("READONLY")
        || (e.code() == Some("EXECABORT")
            && e.clone()
                .into_server_errors()
                .is_some_and(|errs| errs.iter().any(|(_, s)| s.code() == "READONLY")))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use redis::aio::MultiplexedConnection;
    use sluice_testkit::{RedisSentinels, RedisServer};

    use super::{STALLS_BEFORE_ASKING, SentinelConn, Stalls, master_moved};

    /// A few stalls in a row give up on the connection; an answer in
    /// between starts the count again, and so does giving up.
    #[test]
    fn stalls_in_a_row_give_up_on_the_connection() {
        let stalls = Stalls::default();
        for _ in 1..STALLS_BEFORE_ASKING {
            assert!(!stalls.stalled());
        }
        stalls.answered();
        for _ in 1..STALLS_BEFORE_ASKING {
            assert!(!stalls.stalled(), "an answer starts the count again");
        }
        assert!(stalls.stalled(), "{STALLS_BEFORE_ASKING} in a row");
        for _ in 1..STALLS_BEFORE_ASKING {
            assert!(!stalls.stalled(), "giving up starts the count again");
        }
        assert!(stalls.stalled());
    }

    async fn port(c: MultiplexedConnection) -> Result<u16, redis::RedisError> {
        let mut c = c;
        let (_, port): (String, u16) =
            redis::cmd("CONFIG").arg("GET").arg("port").query_async(&mut c).await?;
        Ok(port)
    }

    /// A hung master (SIGSTOP: connections stay open, nothing answers):
    /// each command is dropped by its caller's timeout, never failing. After
    /// a few such stalls the connection is given up, and once the sentinels
    /// have promoted the replica, commands run there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_master_is_given_up_after_a_few_stalls() {
        let mut sentinels = RedisSentinels::start_with_replica();
        let master_port = sentinels.master.port;
        let replica_port = sentinels.replica.as_ref().map(|r| r.port).expect("a replica");
        let conn =
            SentinelConn::connect(&sentinels.urls(), &sentinels.name).await.expect("connect");
        assert_eq!(conn.run(port).await.expect("the master answers"), master_port);

        sentinels.master.pause();
        let short = Duration::from_millis(50);
        for _ in 1..STALLS_BEFORE_ASKING {
            assert!(tokio::time::timeout(short, conn.run(port)).await.is_err(), "no answer");
            assert!(conn.current().is_some(), "kept after fewer stalls");
        }
        assert!(tokio::time::timeout(short, conn.run(port)).await.is_err(), "no answer");
        assert!(conn.current().is_none(), "given up after {STALLS_BEFORE_ASKING} stalls");

        // Asking fails (the sentinels name the hung master) until they
        // promote the replica; then the commands run there.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let asked = tokio::time::timeout(Duration::from_secs(5), conn.run(port)).await;
            let asked = asked.expect("asking the sentinels is bounded");
            if asked.as_ref().is_ok_and(|p| *p == replica_port) {
                break;
            }
            assert!(Instant::now() < deadline, "not on the promoted replica: {asked:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sentinels.master.kill();
    }

    /// A TCP relay to `port` that holds every chunk for `delay` each way:
    /// a sentinel far away (or behind a slow link).
    async fn slow_relay(port: u16, delay: Duration) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
        use tokio::net::{TcpListener, TcpStream};

        async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf).await {
                tokio::time::sleep(delay).await;
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to.shutdown().await;
        }

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let relay = listener.local_addr().expect("relay address").port();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(client_read, server_write, delay),
                        pipe(server_read, client_write, delay)
                    );
                });
            }
        });
        relay
    }

    /// Sentinels far away: asking them takes longer than a caller waits
    /// (50 ms, the guarded store's timeout). Callers keep giving up, and
    /// the asking still ends and its connection is used; asked inside the
    /// callers' futures, it was dropped with each of them and never ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asking_far_sentinels_outlasts_the_callers_who_give_up() {
        let sentinels = RedisSentinels::start();
        let master_port = sentinels.master.port;
        let sentinel_port: u16 = sentinels.urls()[0]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a sentinel's port");
        let far = format!(
            "redis://127.0.0.1:{}",
            slow_relay(sentinel_port, Duration::from_millis(40)).await
        );
        let conn = SentinelConn::connect(&[far], &sentinels.name).await.expect("connect");
        assert_eq!(conn.run(port).await.expect("the master answers"), master_port);

        // The connection is lost (as in a failover): the next command asks.
        conn.forget(0);
        assert!(conn.current().is_none());
        let short = Duration::from_millis(50);
        let started = Instant::now();
        let mut gave_up = 0;
        loop {
            match tokio::time::timeout(short, conn.run(port)).await {
                Ok(answer) => {
                    assert_eq!(answer.expect("the master answers"), master_port);
                    break;
                }
                Err(_) => gave_up += 1,
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no connection after {gave_up} callers gave up: the asking ended with them"
            );
        }
        // Else this would show nothing: the asking outlasted a caller.
        assert!(gave_up > 0, "asking took less than {short:?}");
    }

    /// What a demoted master answers: `READONLY` to a write, and
    /// `EXECABORT` (wrapping `READONLY`) to a transaction of writes, which
    /// is how the tenant store writes. Both mean "ask the sentinels"; an
    /// ordinary error does not.
    #[tokio::test]
    async fn a_replica_refusing_writes_means_the_master_moved() {
        let master = RedisServer::start();
        let port = master.url().rsplit(':').next().unwrap_or_default().to_owned();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        let client = redis::Client::open(replica.url()).expect("client");
        let mut c = client.get_multiplexed_async_connection().await.expect("connect");

        let plain: Result<(), _> = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await;
        let plain = plain.expect_err("a replica refuses writes");
        assert_eq!(plain.code(), Some("READONLY"));
        assert!(master_moved(&plain));

        let mut pipe = redis::pipe();
        pipe.atomic().set("a", 1).ignore().set("b", 2).ignore();
        let tx: Result<(), _> = pipe.query_async(&mut c).await;
        let tx = tx.expect_err("a replica refuses a transaction of writes");
        assert_eq!(tx.code(), Some("EXECABORT"), "{tx}");
        assert!(master_moved(&tx), "{tx}");

        let other: Result<(), _> = redis::cmd("NOSUCHCOMMAND").query_async(&mut c).await;
        assert!(!master_moved(&other.expect_err("unknown command")));
    }
}

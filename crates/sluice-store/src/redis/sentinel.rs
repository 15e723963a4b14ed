//! A connection to the master that Sentinel names, which follows a
//! failover: an error that says the master is gone (the connection broke or
//! was refused) or is no longer the master (`READONLY`, after a demotion)
//! drops the connection, and the next command asks the sentinels again.
//! Both the counter store and the tenant store use it.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use redis::RedisError;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};

/// The current master's connection, found through the sentinels.
pub(crate) struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection and its generation (how many were made before it),
    /// so that a late error on an old connection does not drop a new one.
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    made: AtomicU64,
}

/// A connection lent by [`SentinelConn::get`]: give it back to
/// [`SentinelConn::after`] with the command's outcome.
pub(crate) struct Lent {
    generation: u64,
    pub(crate) conn: MultiplexedConnection,
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
        let c = client.get_async_connection().await?;
        Ok(Self {
            client: tokio::sync::Mutex::new(client),
            conn: Mutex::new(Some((0, c))),
            made: AtomicU64::new(1),
        })
    }

    /// The connection to the master, asking the sentinels if there is none.
    /// Callers that waited while another asked use the connection it found.
    pub(crate) async fn get(&self) -> Result<Lent, RedisError> {
        if let Some((generation, conn)) = self.conn.lock().clone() {
            return Ok(Lent { generation, conn });
        }
        let mut client = self.client.lock().await;
        if let Some((generation, conn)) = self.conn.lock().clone() {
            return Ok(Lent { generation, conn });
        }
        let conn = client.get_async_connection().await?;
        let generation = self.made.fetch_add(1, Ordering::Relaxed);
        *self.conn.lock() = Some((generation, conn.clone()));
        Ok(Lent { generation, conn })
    }

    /// The connection if there is one (no asking).
    pub(crate) fn current(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().as_ref().map(|(_, c)| c.clone())
    }

    /// Notes the outcome of a command run on `lent`: an error that means
    /// the master moved makes the next command ask the sentinels (unless a
    /// newer connection was made meanwhile).
    pub(crate) fn after<T>(&self, lent: &Lent, result: &Result<T, RedisError>) {
        if let Err(e) = result
            && master_moved(e)
        {
            let mut conn = self.conn.lock();
            if conn.as_ref().is_some_and(|(g, _)| *g == lent.generation) {
                *conn = None;
            }
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
        self.after(&lent, &result);
        result
    }
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
    use sluice_testkit::RedisServer;

    use super::master_moved;

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

//! A connection to the master that Sentinel names, which follows a
//! failover: an error that says the master is gone (the connection broke or
//! was refused) or is no longer the master (`READONLY`, after a demotion)
//! drops the connection, and the next command asks the sentinels again.
//! Both the counter store and the tenant store use it.

use parking_lot::Mutex;
use redis::RedisError;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};

/// The current master's connection, found through the sentinels.
pub(crate) struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    conn: Mutex<Option<MultiplexedConnection>>,
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
        Ok(Self { client: tokio::sync::Mutex::new(client), conn: Mutex::new(Some(c)) })
    }

    /// The connection to the master, asking the sentinels if there is none.
    pub(crate) async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        let c = self.client.lock().await.get_async_connection().await?;
        *self.conn.lock() = Some(c.clone());
        Ok(c)
    }

    /// The connection if there is one (no asking).
    pub(crate) fn current(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().clone()
    }

    /// Notes the outcome of a command: an error that means the master moved
    /// makes the next command ask the sentinels.
    pub(crate) fn after<T>(&self, result: &Result<T, RedisError>) {
        if let Err(e) = result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.code() == Some("READONLY"))
        {
            *self.conn.lock() = None;
        }
    }

    /// Runs `f` on the master's connection, following a failover.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let result = match self.get().await {
            Ok(c) => f(c).await,
            Err(e) => Err(e),
        };
        self.after(&result);
        result
    }
}

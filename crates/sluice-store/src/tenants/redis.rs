//! Tenants and keys in Redis, seen by every instance.
//!
//! Three keys under one hash tag (so a change is one `MULTI` even on a
//! Cluster): `<ns>:{tenants}:records` (hash: id -> JSON),
//! `<ns>:{tenants}:keys` (hash: key id -> JSON) and `<ns>:{tenants}:version`
//! (a counter every change increments; instances poll it).

use std::sync::Arc;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::{
    KeyRecord, TenantRecord, TenantSnapshot, TenantStore, TenantStoreError, from_json, to_json,
};
use crate::redis::{SentinelConn, Topology};

/// Field and value pairs of a hash.
type Rows = Vec<(String, Vec<u8>)>;

/// A connection to Redis, whichever its topology (shared with the usage
/// history).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// The master the sentinels name, followed across failovers.
    Sentinel(Arc<SentinelConn>),
}

/// Tenants and keys in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisTenants {
    conn: Conn,
    records: String,
    keys: String,
    version: String,
}

impl std::fmt::Debug for RedisTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTenants").field("records", &self.records).finish_non_exhaustive()
    }
}

/// Runs `$body` with `$c` bound to a connection of `$self.conn`.
macro_rules! with_conn {
    ($self:expr, $c:ident => $body:expr) => {
        match &$self.conn {
            Conn::Single(c) => {
                let mut $c = c.clone();
                $body
            }
            Conn::Cluster(c) => {
                let mut $c = c.clone();
                $body
            }
            Conn::Sentinel(s) => match s.get().await {
                Ok(lent) => {
                    let mut $c = lent.conn.clone();
                    let result = $body;
                    s.after(lent, &result);
                    result
                }
                Err(e) => Err(e),
            },
        }
    };
}

pub(crate) use with_conn;

impl Conn {
    /// Connects. With Sentinel, the connection follows the master across
    /// failovers.
    pub(crate) async fn connect(topology: &Topology) -> Result<Self, ::redis::RedisError> {
        Ok(match topology {
            Topology::Standalone(url) => {
                Conn::Single(ConnectionManager::new(redis::Client::open(url.as_str())?).await?)
            }
            Topology::Cluster(nodes) => Conn::Cluster(
                redis::cluster::ClusterClient::new(nodes.clone())?.get_async_connection().await?,
            ),
            Topology::Sentinel { sentinels, master } => {
                Conn::Sentinel(Arc::new(SentinelConn::connect(sentinels, master).await?))
            }
        })
    }
}

impl RedisTenants {
    /// Connects; keys under `<namespace>:{tenants}:`. With Sentinel, the
    /// connection follows the master across failovers.
    pub async fn connect(topology: &Topology, namespace: &str) -> Result<Self, TenantStoreError> {
        Ok(Self {
            conn: Conn::connect(topology).await?,
            records: format!("{namespace}:{{tenants}}:records"),
            keys: format!("{namespace}:{{tenants}}:keys"),
            version: format!("{namespace}:{{tenants}}:version"),
        })
    }

    async fn put(&self, table: &str, id: &str, json: Vec<u8>) -> Result<(), TenantStoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().hset(table, id, json).ignore().incr(&self.version, 1).ignore();
        with_conn!(self, c => pipe.query_async::<()>(&mut c).await)?;
        Ok(())
    }
}

impl TenantStore for RedisTenants {
    async fn snapshot(&self) -> Result<TenantSnapshot, TenantStoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().get(&self.version).hgetall(&self.records).hgetall(&self.keys);
        let (version, records, keys): (Option<u64>, Rows, Rows) =
            with_conn!(self, c => pipe.query_async(&mut c).await)?;
        let mut snap =
            TenantSnapshot { version: version.unwrap_or(0), ..TenantSnapshot::default() };
        for (id, json) in records {
            snap.tenants.insert(id, from_json(&json)?);
        }
        for (id, json) in keys {
            snap.keys.insert(id, from_json(&json)?);
        }
        Ok(snap)
    }

    async fn version(&self) -> Result<u64, TenantStoreError> {
        let v: Option<u64> = with_conn!(self, c => c.get(&self.version).await)?;
        Ok(v.unwrap_or(0))
    }

    async fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), TenantStoreError> {
        self.put(&self.records, &tenant.id, to_json(tenant)?).await
    }

    async fn delete_tenant(&self, id: &str) -> Result<bool, TenantStoreError> {
        let snap = self.snapshot().await?;
        let doomed: Vec<&String> =
            snap.keys.iter().filter(|(_, k)| k.tenant == id).map(|(kid, _)| kid).collect();
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(&self.records, id);
        for k in &doomed {
            pipe.hdel(&self.keys, *k).ignore();
        }
        pipe.incr(&self.version, 1).ignore();
        let (removed,): (u64,) = with_conn!(self, c => pipe.query_async(&mut c).await)?;
        Ok(removed > 0)
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<(), TenantStoreError> {
        self.put(&self.keys, &key.id, to_json(key)?).await
    }
}

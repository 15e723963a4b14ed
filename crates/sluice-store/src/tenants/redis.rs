//! Tenants and keys in Redis, seen by every instance.
//!
//! Keys under one hash tag (so a change is one `MULTI` even on a Cluster):
//! `<ns>:{tenants}:records` (hash: id -> JSON), `<ns>:{tenants}:keys` (hash:
//! key id -> JSON), `<ns>:{tenants}:version` (a counter every change
//! increments; instances poll it), and `<ns>:{tenants}:keys-of:<tenant>` (a
//! set of the tenant's key ids, so that reading or deleting one tenant's
//! keys never reads every key; built at connect when
//! `<ns>:{tenants}:keys-indexed` is absent, for data written before it).

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
    /// `<ns>:{tenants}:keys-of:` (a tenant id follows).
    keys_of: String,
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
        let this = Self {
            conn: Conn::connect(topology).await?,
            records: format!("{namespace}:{{tenants}}:records"),
            keys: format!("{namespace}:{{tenants}}:keys"),
            version: format!("{namespace}:{{tenants}}:version"),
            keys_of: format!("{namespace}:{{tenants}}:keys-of:"),
        };
        this.index_keys(namespace).await?;
        Ok(this)
    }

    /// Builds the tenant -> keys sets once, for keys stored before them
    /// (adding a member twice is harmless, so instances may race to it).
    async fn index_keys(&self, namespace: &str) -> Result<(), TenantStoreError> {
        let flag = format!("{namespace}:{{tenants}}:keys-indexed");
        let done: bool = with_conn!(self, c => c.exists(&flag).await)?;
        if done {
            return Ok(());
        }
        let keys: Rows = with_conn!(self, c => c.hgetall(&self.keys).await)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (id, json) in keys {
            let rec: KeyRecord = from_json(&json)?;
            pipe.sadd(self.set_of(&rec.tenant), id).ignore();
        }
        pipe.set(&flag, 1).ignore();
        with_conn!(self, c => pipe.query_async::<()>(&mut c).await)?;
        Ok(())
    }

    fn set_of(&self, tenant: &str) -> String {
        format!("{}{tenant}", self.keys_of)
    }
}

impl TenantStore for RedisTenants {
    async fn snapshot(&self) -> Result<TenantSnapshot, TenantStoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().get(&self.version).hgetall(&self.records).hgetall(&self.keys);
        let (version, records, keys): (Option<u64>, Rows, Rows) =
            with_conn!(self, c => pipe.query_async(&mut c).await)?;
        // Reading every record is work for a blocking thread, not for the
        // async workers that serve requests.
        let decode = move || {
            let mut snap =
                TenantSnapshot { version: version.unwrap_or(0), ..TenantSnapshot::default() };
            for (id, json) in records {
                snap.tenants.insert(id, from_json(&json)?);
            }
            for (id, json) in keys {
                snap.keys.insert(id, from_json(&json)?);
            }
            Ok(snap)
        };
        tokio::task::spawn_blocking(decode)
            .await
            .map_err(|e| TenantStoreError::Corrupt(e.to_string()))?
    }

    async fn version(&self) -> Result<u64, TenantStoreError> {
        let v: Option<u64> = with_conn!(self, c => c.get(&self.version).await)?;
        Ok(v.unwrap_or(0))
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, TenantStoreError> {
        let json: Option<Vec<u8>> = with_conn!(self, c => c.hget(&self.records, id).await)?;
        json.map(|j| from_json(&j)).transpose()
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, TenantStoreError> {
        let json: Option<Vec<u8>> = with_conn!(self, c => c.hget(&self.keys, id).await)?;
        json.map(|j| from_json(&j)).transpose()
    }

    async fn keys_of(&self, tenant: &str) -> Result<Vec<KeyRecord>, TenantStoreError> {
        let ids: Vec<String> = with_conn!(self, c => c.smembers(self.set_of(tenant)).await)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<Vec<u8>>> = with_conn!(self, c => redis::cmd("HMGET")
            .arg(&self.keys)
            .arg(&ids)
            .query_async(&mut c)
            .await)?;
        let mut keys: Vec<KeyRecord> =
            found.iter().flatten().map(|j| from_json(j)).collect::<Result<_, _>>()?;
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    async fn put_tenant(&self, tenant: &TenantRecord) -> Result<u64, TenantStoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().hset(&self.records, &tenant.id, to_json(tenant)?).ignore();
        pipe.incr(&self.version, 1);
        let (version,): (u64,) = with_conn!(self, c => pipe.query_async(&mut c).await)?;
        Ok(version)
    }

    async fn delete_tenant(&self, id: &str) -> Result<(bool, u64), TenantStoreError> {
        // One script, so that a key added meanwhile cannot outlive its tenant.
        let script = redis::Script::new(
            r"
            for _, key in ipairs(redis.call('SMEMBERS', KEYS[4])) do
                redis.call('HDEL', KEYS[2], key)
            end
            redis.call('DEL', KEYS[4])
            local removed = redis.call('HDEL', KEYS[1], ARGV[1])
            return {removed, redis.call('INCR', KEYS[3])}
            ",
        );
        let mut call = script.prepare_invoke();
        call.key(&self.records).key(&self.keys).key(&self.version).key(self.set_of(id)).arg(id);
        let (removed, version): (u64, u64) =
            with_conn!(self, c => call.invoke_async(&mut c).await)?;
        Ok((removed > 0, version))
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<u64, TenantStoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().hset(&self.keys, &key.id, to_json(key)?).ignore();
        pipe.sadd(self.set_of(&key.tenant), &key.id).ignore();
        pipe.incr(&self.version, 1);
        let (version,): (u64,) = with_conn!(self, c => pipe.query_async(&mut c).await)?;
        Ok(version)
    }
}

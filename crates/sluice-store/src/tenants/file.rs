//! The embedded data file (redb): tenants and keys, in one crash-safe file.
//!
//! [`FileTenants`] opens (or creates) the file; the other things kept in it
//! share its handle, each in tables of its own: the memory store's counters
//! ([`SavedCounters`](crate::SavedCounters)) and the usage history
//! (`history/file.rs`).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    KeyRecord, TenantRecord, TenantSnapshot, TenantStore, TenantStoreError, from_json, to_json,
};

const TENANTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tenants");
const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Tenant id -> its key ids: the index that makes a tenant's keys a point
/// lookup (built at open from the keys when an older file lacks it).
const TENANT_KEYS: MultimapTableDefinition<'_, &str, &str> =
    MultimapTableDefinition::new("tenant_keys");
/// Set in META once TENANT_KEYS holds every key.
const INDEXED: &str = "tenant_keys_indexed";

fn err(e: impl std::fmt::Display) -> TenantStoreError {
    TenantStoreError::File(e.to_string())
}

/// Tenants and keys in a local file. Cheap to clone.
#[derive(Clone)]
pub struct FileTenants {
    db: Arc<Database>,
}

impl std::fmt::Debug for FileTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTenants").finish_non_exhaustive()
    }
}

/// Creates the data file readable and writable by its owner only (0600): it
/// holds key hashes, tenants and counters. An existing file that others may
/// read or write is tightened to 0600.
#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mut perms = file.metadata()?.permissions();
    if perms.mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", perms.mode() & 0o777), "the data file was readable by others; now 0600");
        perms.set_mode(0o600);
        file.set_permissions(perms)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

impl FileTenants {
    /// Opens (or creates) the data file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TenantStoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        private_file(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let db = Database::create(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(err)?;
        {
            tx.open_table(TENANTS).map_err(err)?;
            tx.open_table(KEYS).map_err(err)?;
            tx.open_table(META).map_err(err)?;
            let mut index = tx.open_multimap_table(TENANT_KEYS).map_err(err)?;
            let mut meta = tx.open_table(META).map_err(err)?;
            if meta.get(INDEXED).map_err(err)?.is_none() {
                for row in tx.open_table(KEYS).map_err(err)?.iter().map_err(err)? {
                    let (k, v) = row.map_err(err)?;
                    let rec: KeyRecord = from_json(v.value())?;
                    index.insert(rec.tenant.as_str(), k.value()).map_err(err)?;
                }
                meta.insert(INDEXED, 1).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `f` on a blocking thread: redb reads and writes (and a commit's
    /// fsync) never hold up the async workers that serve requests.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<R, TenantStoreError> + Send + 'static,
    ) -> Result<R, TenantStoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this)).await.map_err(err)?
    }

    fn get<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        id: &str,
    ) -> Result<Option<T>, TenantStoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(table).map_err(err)?;
        let v = t.get(id).map_err(err)?;
        v.map(|v| from_json(v.value())).transpose()
    }

    fn keys_of_now(&self, tenant: &str) -> Result<Vec<KeyRecord>, TenantStoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let index = tx.open_multimap_table(TENANT_KEYS).map_err(err)?;
        let keys = tx.open_table(KEYS).map_err(err)?;
        let mut out = Vec::new();
        for id in index.get(tenant).map_err(err)? {
            let id = id.map_err(err)?;
            if let Some(v) = keys.get(id.value()).map_err(err)? {
                out.push(from_json(v.value())?);
            }
        }
        Ok(out)
    }

    /// The database, for the other tables of the file (saved counters, the
    /// usage history).
    pub(crate) fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// One change: `f`, then the version bumped; the new version.
    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), TenantStoreError>,
    ) -> Result<u64, TenantStoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        f(&tx)?;
        let v = {
            let mut meta = tx.open_table(META).map_err(err)?;
            let v = meta.get("version").map_err(err)?.map_or(0, |g| g.value()) + 1;
            meta.insert("version", v).map_err(err)?;
            v
        };
        tx.commit().map_err(err)?;
        Ok(v)
    }

    fn snapshot_now(&self) -> Result<TenantSnapshot, TenantStoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let mut snap = TenantSnapshot {
            version: tx
                .open_table(META)
                .map_err(err)?
                .get("version")
                .map_err(err)?
                .map_or(0, |g| g.value()),
            ..TenantSnapshot::default()
        };
        for row in tx.open_table(TENANTS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            snap.tenants.insert(k.value().to_owned(), from_json(v.value())?);
        }
        for row in tx.open_table(KEYS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            snap.keys.insert(k.value().to_owned(), from_json(v.value())?);
        }
        Ok(snap)
    }
}

impl TenantStore for FileTenants {
    async fn snapshot(&self) -> Result<TenantSnapshot, TenantStoreError> {
        self.blocking(Self::snapshot_now).await
    }

    async fn version(&self) -> Result<u64, TenantStoreError> {
        self.blocking(|this| {
            let tx = this.db.begin_read().map_err(err)?;
            let v = tx.open_table(META).map_err(err)?.get("version").map_err(err)?;
            Ok(v.map_or(0, |g| g.value()))
        })
        .await
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, TenantStoreError> {
        let id = id.to_owned();
        self.blocking(move |this| this.get(TENANTS, &id)).await
    }

    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, TenantStoreError> {
        let id = id.to_owned();
        self.blocking(move |this| this.get(KEYS, &id)).await
    }

    async fn keys_of(&self, tenant: &str) -> Result<Vec<KeyRecord>, TenantStoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |this| this.keys_of_now(&tenant)).await
    }

    async fn put_tenant(&self, tenant: &TenantRecord) -> Result<u64, TenantStoreError> {
        let json = to_json(tenant)?;
        let id = tenant.id.clone();
        self.blocking(move |this| {
            this.write(|tx| {
                tx.open_table(TENANTS)
                    .map_err(err)?
                    .insert(id.as_str(), json.as_slice())
                    .map_err(err)?;
                Ok(())
            })
        })
        .await
    }

    async fn delete_tenant(&self, id: &str) -> Result<(bool, u64), TenantStoreError> {
        let id = id.to_owned();
        self.blocking(move |this| {
            let mut existed = false;
            let version = this.write(|tx| {
                existed = tx
                    .open_table(TENANTS)
                    .map_err(err)?
                    .remove(id.as_str())
                    .map_err(err)?
                    .is_some();
                let mut keys = tx.open_table(KEYS).map_err(err)?;
                let mut index = tx.open_multimap_table(TENANT_KEYS).map_err(err)?;
                for key in index.remove_all(id.as_str()).map_err(err)? {
                    keys.remove(key.map_err(err)?.value()).map_err(err)?;
                }
                Ok(())
            })?;
            Ok((existed, version))
        })
        .await
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<u64, TenantStoreError> {
        let json = to_json(key)?;
        let (id, tenant) = (key.id.clone(), key.tenant.clone());
        self.blocking(move |this| {
            this.write(|tx| {
                let mut keys = tx.open_table(KEYS).map_err(err)?;
                let mut index = tx.open_multimap_table(TENANT_KEYS).map_err(err)?;
                let before = keys.insert(id.as_str(), json.as_slice()).map_err(err)?;
                if let Some(before) = before {
                    let before: KeyRecord = from_json(before.value())?;
                    index.remove(before.tenant.as_str(), id.as_str()).map_err(err)?;
                }
                index.insert(tenant.as_str(), id.as_str()).map_err(err)?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data file holds key hashes: its owner's only (0600), whether
    /// Sluice creates it or finds it readable by others.
    #[cfg(unix)]
    #[test]
    fn the_data_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sluice-file-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let new = dir.join("new.redb");
        drop(FileTenants::open(&new).unwrap());
        assert_eq!(mode(&new), 0o600);
        let loose = dir.join("loose.redb");
        drop(FileTenants::open(&loose).unwrap());
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(FileTenants::open(&loose).unwrap());
        assert_eq!(mode(&loose), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("sluice-file-tenants-{}", std::process::id()));
        let path = dir.join("data.redb");
        let _ = std::fs::remove_file(&path);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        {
            let f = FileTenants::open(&path).unwrap();
            let t =
                TenantRecord { id: "acme".into(), tier: Some("free".into()), ..Default::default() };
            rt.block_on(f.put_tenant(&t)).unwrap();
            let k = KeyRecord {
                id: "k1".into(),
                tenant: "acme".into(),
                hash: "sha256:00".into(),
                ..Default::default()
            };
            rt.block_on(f.put_key(&k)).unwrap();
        }
        let f = FileTenants::open(&path).unwrap();
        let snap = rt.block_on(f.snapshot()).unwrap();
        assert_eq!(snap.version, 2);
        assert_eq!(snap.tenants["acme"].tier.as_deref(), Some("free"));
        assert_eq!(snap.keys["k1"].tenant, "acme");
        let keys = rt.block_on(f.keys_of("acme")).unwrap();
        assert_eq!(keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["k1"]);
        assert_eq!(rt.block_on(f.key("k1")).unwrap().map(|k| k.tenant), Some("acme".into()));
        assert!(rt.block_on(f.tenant("acme")).unwrap().is_some());
        assert!(rt.block_on(f.keys_of("other")).unwrap().is_empty());
        assert_eq!(rt.block_on(f.delete_tenant("acme")).unwrap(), (true, 3));
        assert!(rt.block_on(f.key("k1")).unwrap().is_none(), "a tenant's keys go with it");
        let snap = rt.block_on(f.snapshot()).unwrap();
        assert!(snap.tenants.is_empty() && snap.keys.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

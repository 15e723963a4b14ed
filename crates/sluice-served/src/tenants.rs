//! The served tenants and keys as copy-on-write collections, and the
//! changes an admin write makes to them.
//!
//! A runtime is swapped whole (requests keep the one they started with), so
//! a change to one tenant makes a new runtime. Its tenant and key
//! collections are split into shards (and the tenant list into chunks) held
//! by `Arc`: the new runtime shares every shard but the one the change
//! touched, so applying a change copies a few hundred entries, not every
//! tenant. Lookups cost one more hash and pointer than a flat map.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap};
use sluice_core::Instant;
use sluice_store::{KeyRecord, TenantRecord};

use crate::auth::{KeyHash, parse_hash};
use crate::runtime::{KeyEntry, Runtime, Tenant, key_spec, tenant_spec};

/// Shards of a [`ShardedMap`].
const SHARDS: usize = 256;
/// Tenants per chunk of a [`TenantList`].
const CHUNK: usize = 1024;

/// A hash map split into shards that clones share until one is written.
#[derive(Clone, Debug)]
pub struct ShardedMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    /// Picks a shard. Hashes a salted key, so a shard's entries do not share
    /// bits of the hash its own map uses.
    pick: DefaultHashBuilder,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            pick: DefaultHashBuilder::default(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The modulo of a 64-bit hash by a power of two: its low bits.
        (self.pick.hash_one((0x5eu8, key)) % SHARDS as u64) as usize
    }

    /// The value of `key`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.shards[self.shard(key)].get(key)
    }

    /// Whether `key` is there.
    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    /// The shard of `key`, to change (copied first if another map shares it).
    fn shard_mut<Q: Hash + ?Sized>(&mut self, key: &Q) -> &mut HashMap<K, V> {
        let i = self.shard(key);
        Arc::make_mut(&mut self.shards[i])
    }

    /// Sets `key`; the value it had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.shard_mut(&key).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; the value it had.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let old = self.shard_mut(key).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Every value, in no order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

impl<K: Hash + Eq + Clone + Borrow<str>, V: Clone> std::ops::Index<&str> for ShardedMap<K, V> {
    type Output = V;

    fn index(&self, key: &str) -> &V {
        self.get(key).unwrap_or_else(|| panic!("no entry `{key}`"))
    }
}

/// A served tenant and the hashes of its served keys (so that deleting it
/// removes exactly those).
#[derive(Clone, Debug)]
struct Slot {
    tenant: Arc<Tenant>,
    keys: Arc<Vec<KeyHash>>,
    /// False once deleted: its index is never reused, and no key leads to it.
    live: bool,
}

/// The served tenants, by index ([`crate::runtime::KeyEntry::tenant`]). An
/// index stays the tenant's while it is served; a deleted tenant's index is
/// not reused until the next full rebuild.
#[derive(Clone, Debug, Default)]
pub struct TenantList {
    chunks: Vec<Arc<Vec<Slot>>>,
    len: usize,
}

impl TenantList {
    fn slot(&self, index: usize) -> Option<&Slot> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    fn slot_mut(&mut self, index: usize) -> Option<&mut Slot> {
        let chunk = self.chunks.get_mut(index / CHUNK)?;
        Arc::make_mut(chunk).get_mut(index % CHUNK)
    }

    /// The tenant at `index`, unless there is none or it was deleted.
    pub fn get(&self, index: usize) -> Option<&Tenant> {
        self.slot(index).filter(|s| s.live).map(|s| &*s.tenant)
    }

    /// How many indices are in use (deleted tenants' included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every tenant by index (deleted ones' too, so that positions are
    /// indices; [`TenantList::get`] leaves them out).
    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.chunks.iter().flat_map(|c| c.iter()).map(|s| &*s.tenant)
    }

    /// Adds a tenant; its index.
    pub(crate) fn push(&mut self, tenant: Tenant) -> usize {
        let index = self.len;
        if index.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        if let Some(last) = self.chunks.last_mut() {
            Arc::make_mut(last).push(Slot {
                tenant: Arc::new(tenant),
                keys: Arc::default(),
                live: true,
            });
        }
        self.len += 1;
        index
    }

    /// Notes that `hash` leads to the tenant at `index`.
    pub(crate) fn add_key(&mut self, index: usize, hash: KeyHash) {
        if let Some(s) = self.slot_mut(index) {
            Arc::make_mut(&mut s.keys).push(hash);
        }
    }

    fn remove_key(&mut self, index: usize, hash: &KeyHash) {
        if let Some(s) = self.slot_mut(index) {
            Arc::make_mut(&mut s.keys).retain(|h| h != hash);
        }
    }

    fn replace(&mut self, index: usize, tenant: Tenant) {
        if let Some(s) = self.slot_mut(index) {
            s.tenant = Arc::new(tenant);
        }
    }

    /// Marks the tenant at `index` deleted; the hashes of its keys.
    fn delete(&mut self, index: usize) -> Vec<KeyHash> {
        self.slot_mut(index).map_or_else(Vec::new, |s| {
            s.live = false;
            std::mem::take(Arc::make_mut(&mut s.keys))
        })
    }
}

impl std::ops::Index<usize> for TenantList {
    type Output = Tenant;

    fn index(&self, index: usize) -> &Tenant {
        match self.slot(index) {
            Some(s) => &s.tenant,
            None => panic!("no tenant at index {index}"),
        }
    }
}

/// Admin writes, applied to a copy of the runtime that shares everything
/// they do not touch. Each checks what it applies as a full rebuild would,
/// and leaves out (with a warning) what does not fit the policy.
impl Runtime {
    /// The runtime with `record` served (created or replaced).
    pub fn put_tenant(&self, record: &TenantRecord) -> (Self, Option<String>) {
        let facts = match self.policy.tenant(&tenant_spec(record)) {
            Ok(facts) => facts,
            Err(e) => {
                let (rt, _) = self.delete_tenant(&record.id);
                return (rt, Some(format!("tenant `{}` is not served: {e}", record.id)));
            }
        };
        let mut rt = self.clone();
        match rt.tenant_index.get(record.id.as_str()) {
            Some(&index) => rt.tenants.replace(index, Tenant::new(facts)),
            None => {
                let index = rt.tenants.push(Tenant::new(facts));
                rt.tenant_index.insert(record.id.clone(), index);
            }
        }
        (rt, None)
    }

    /// The runtime without tenant `id` and its keys; whether it was served.
    pub fn delete_tenant(&self, id: &str) -> (Self, bool) {
        let mut rt = self.clone();
        let Some(index) = rt.tenant_index.remove(id) else { return (rt, false) };
        for hash in rt.tenants.delete(index) {
            rt.keys.remove(&hash);
        }
        (rt, true)
    }

    /// The runtime with key `record` as it now is: served, or no longer
    /// (revoked).
    pub fn put_key(&self, record: &KeyRecord) -> (Self, Option<String>) {
        let mut rt = self.clone();
        let Some(hash) = parse_hash(&record.hash) else {
            return (rt, Some(format!("key `{}` does not fit the policy", record.id)));
        };
        let held = rt.keys.find_hash(&hash).filter(|e| e.id == record.id).map(|e| e.tenant);
        if let Some(index) = held {
            rt.keys.remove(&hash);
            rt.tenants.remove_key(index, &hash);
        }
        if record.revoked_at.is_some() {
            return (rt, None);
        }
        let Some(&tenant) = rt.tenant_index.get(record.tenant.as_str()) else {
            let w = format!(
                "key `{}` belongs to tenant `{}`, which is not served",
                record.id, record.tenant
            );
            return (rt, Some(w));
        };
        let Ok(facts) = rt.policy.key(&key_spec(record)) else {
            return (rt, Some(format!("key `{}` does not fit the policy", record.id)));
        };
        let expires = record.expires_at.as_deref().and_then(Instant::parse);
        if !rt.keys.insert(hash, KeyEntry { id: record.id.clone(), tenant, facts, expires }) {
            return (rt, Some(format!("key `{}`: its secret is already another key's", record.id)));
        }
        rt.tenants.add_key(tenant, hash);
        (rt, None)
    }
}

//! API keys: `Authorization: Bearer <key>` -> a tenant and a key.
//!
//! Keys are only ever held as SHA-256 hashes. A presented key is hashed, the
//! table is indexed by the first eight bytes of the hash, and the whole hash
//! is then compared in constant time, so the time a lookup takes does not
//! depend on how much of a stored hash an attacker's guess matches. The secret
//! itself is never stored, logged, or echoed in an error.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::tenants::ShardedMap;

/// A key hash: SHA-256 of the secret.
pub type KeyHash = [u8; 32];

/// Hashes a secret.
pub fn hash_secret(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// `sha256:<hex>` of a secret, as policy files and the admin API store it.
pub fn hash_text(secret: &str) -> String {
    format!("sha256:{}", hex::encode(hash_secret(secret)))
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse_hash(text: &str) -> Option<KeyHash> {
    let hex = text.trim().strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// Compares two hashes without an early exit.
pub fn same(a: &KeyHash, b: &KeyHash) -> bool {
    subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]).into()
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A key that is not known (or was revoked).
    Unknown,
}

/// Known keys, by hash, to whatever the caller attaches (a tenant index and
/// key facts). A clone shares the table's shards until it changes them.
#[derive(Debug)]
pub struct KeyTable<T> {
    by_prefix: ShardedMap<u64, Vec<(KeyHash, Arc<T>)>>,
    len: usize,
}

impl<T> Clone for KeyTable<T> {
    fn clone(&self) -> Self {
        Self { by_prefix: self.by_prefix.clone(), len: self.len }
    }
}

impl<T> Default for KeyTable<T> {
    fn default() -> Self {
        Self { by_prefix: ShardedMap::default(), len: 0 }
    }
}

fn prefix(h: &KeyHash) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&h[..8]);
    u64::from_le_bytes(p)
}

impl<T> KeyTable<T> {
    /// Adds a key; returns `false` if the hash was already there.
    pub fn insert(&mut self, hash: KeyHash, value: T) -> bool {
        let p = prefix(&hash);
        let mut bucket = self.by_prefix.get(&p).cloned().unwrap_or_default();
        if bucket.iter().any(|(h, _)| same(h, &hash)) {
            return false;
        }
        bucket.push((hash, Arc::new(value)));
        self.by_prefix.insert(p, bucket);
        self.len += 1;
        true
    }

    /// Removes a key; whether it was there.
    pub fn remove(&mut self, hash: &KeyHash) -> bool {
        let p = prefix(hash);
        let Some(mut bucket) = self.by_prefix.get(&p).cloned() else { return false };
        let before = bucket.len();
        bucket.retain(|(h, _)| !same(h, hash));
        if bucket.len() == before {
            return false;
        }
        if bucket.is_empty() {
            self.by_prefix.remove(&p);
        } else {
            self.by_prefix.insert(p, bucket);
        }
        self.len -= 1;
        true
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every key and what it leads to.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.by_prefix.values().flatten().map(|(_, v)| &**v)
    }

    /// Looks a presented secret up.
    pub fn find(&self, secret: &str) -> Option<&T> {
        self.find_hash(&hash_secret(secret))
    }

    /// Looks a key up by its hash (compared in constant time).
    pub fn find_hash(&self, hash: &KeyHash) -> Option<&T> {
        let hash = *hash;
        let mut found = None;
        for (h, v) in self.by_prefix.get(&prefix(&hash))? {
            if same(h, &hash) {
                found = Some(&**v);
            }
        }
        found
    }

    /// Authenticates a request by its `Authorization` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&T, AuthError> {
        let secret = bearer(headers).ok_or(AuthError::Missing)?;
        self.find(secret).ok_or(AuthError::Unknown)
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_by_hash_only() {
        let mut t = KeyTable::default();
        assert!(t.insert(hash_secret("sk-one"), 1));
        assert!(t.insert(hash_secret("sk-two"), 2));
        assert!(!t.insert(hash_secret("sk-two"), 3), "one secret, one tenant");
        assert_eq!(t.find("sk-one"), Some(&1));
        assert_eq!(t.find("sk-two"), Some(&2));
        assert_eq!(t.find("sk-three"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn hash_text_round_trips() {
        let text = hash_text("test");
        assert_eq!(text, "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!(parse_hash(&text), Some(hash_secret("test")));
        assert_eq!(parse_hash("sha256:zz"), None);
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer sk-abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("sk-abc"));
        h.insert(http::header::AUTHORIZATION, "bearer   sk-abc  ".parse().unwrap());
        assert_eq!(bearer(&h), Some("sk-abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}

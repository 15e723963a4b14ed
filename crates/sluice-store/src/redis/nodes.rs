//! Which server holds a tenant's keys: one for a standalone server or
//! Sentinel's master; on a Cluster, the master of the tenant's hash slot,
//! from the cluster's slot map (`CLUSTER SLOTS`, read at connect and every
//! [`REFRESH`]). The guard keeps a health state per server, so that a
//! stalled master sends only the tenants whose keys it holds to the failure
//! mode, and the server clock is learned per server.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;

/// How often a Cluster's slot map is read again.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// The most servers told apart; more share the last index.
pub const MAX_NODES: usize = 64;

const SLOTS: usize = 16_384;

/// The hash slot of a key tagged `{tag}`: CRC16 (XMODEM) of the tag, mod
/// 16,384, as the Cluster specification says (the `crc16` crate is the
/// redis client's own).
pub(crate) fn slot_of_tag(tag: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS as u16
}

/// The hash slot of a tenant's keys: their tag is the tenant's hash in hex.
pub(crate) fn slot_of(tenant: u64) -> u16 {
    let mut hex = [0u8; 16];
    // 8 bytes fill the 16 digits exactly: this cannot fail.
    let _ = hex::encode_to_slice(tenant.to_be_bytes(), &mut hex);
    slot_of_tag(&hex)
}

/// A Cluster's slot map: slot -> the index of its master's address.
pub(crate) struct SlotMap {
    slots: Box<[AtomicU8]>,
    /// Known masters' addresses (`host:port`), by index; only grows.
    nodes: Mutex<Vec<String>>,
}

impl std::fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotMap").field("nodes", &*self.nodes.lock()).finish_non_exhaustive()
    }
}

impl SlotMap {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU8::new(0)).collect(),
            nodes: Mutex::new(Vec::new()),
        }
    }

    /// The index of the master that holds `tenant`'s keys.
    pub(crate) fn node_of(&self, tenant: u64) -> usize {
        usize::from(self.slots[usize::from(slot_of(tenant))].load(Ordering::Relaxed))
    }

    /// The address of node `index`.
    pub(crate) fn name(&self, index: usize) -> Option<String> {
        self.nodes.lock().get(index).cloned()
    }

    fn index_of(&self, addr: &str) -> u8 {
        let mut nodes = self.nodes.lock();
        let i = match nodes.iter().position(|n| n == addr) {
            Some(i) => i,
            None if nodes.len() < MAX_NODES => {
                nodes.push(addr.to_owned());
                nodes.len() - 1
            }
            None => MAX_NODES - 1,
        };
        u8::try_from(i).unwrap_or(u8::MAX)
    }

    /// Takes in a `CLUSTER SLOTS` reply; returns the masters it names
    /// (index, host, port).
    pub(crate) fn update(&self, reply: &Value) -> Vec<(usize, String, u16)> {
        let mut masters = Vec::new();
        let Value::Array(ranges) = reply else { return masters };
        for range in ranges {
            let Value::Array(r) = range else { continue };
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (int(r.first()), int(r.get(1)), r.get(2))
            else {
                continue;
            };
            let (Some(host), Some(port)) = (text(master.first()), int(master.get(1))) else {
                continue;
            };
            let Ok(port) = u16::try_from(port) else { continue };
            let index = self.index_of(&format!("{host}:{port}"));
            for slot in start.max(0)..=end.min(SLOTS as i64 - 1) {
                self.slots[slot as usize].store(index, Ordering::Relaxed);
            }
            if !masters.iter().any(|(i, _, _)| *i == usize::from(index)) {
                masters.push((usize::from(index), host, port));
            }
        }
        masters
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_map() {
        let map = SlotMap::new();
        let node = |host: &str, port: i64| {
            Value::Array(vec![Value::BulkString(host.as_bytes().to_vec()), Value::Int(port)])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("10.0.0.1", 7000)]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("10.0.0.2", 7000)]),
        ]);
        let masters = map.update(&reply);
        assert_eq!(masters.len(), 2);
        let t = (0u64..).find(|t| slot_of(*t) > 5460).unwrap_or(0);
        assert_eq!(map.name(map.node_of(t)).as_deref(), Some("10.0.0.2:7000"));
        let t = (0u64..).find(|t| slot_of(*t) <= 5460).unwrap_or(0);
        assert_eq!(map.name(map.node_of(t)).as_deref(), Some("10.0.0.1:7000"));
        // The Cluster specification's example: "123456789" is slot 12739.
        assert_eq!(slot_of_tag(b"123456789"), 12_739);
        assert_eq!(slot_of(0x1234), slot_of_tag(b"0000000000001234"));
    }
}

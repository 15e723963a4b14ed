//! The memory store's counters in the embedded data file, so that a
//! restart does not forget what tenants have used.
//!
//! Counters are written behind admission, never on its path: the server
//! saves a snapshot of the memory store every few seconds and at a clean
//! shutdown, and loads it at start ([`SavedCounters::save`],
//! [`SavedCounters::load`]). They share the data file (and its handle) with
//! the tenants ([`FileTenants`]), in a table of their own.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use sluice_core::{CounterKey, CounterState, GroupKey};

use crate::FileTenants;

const COUNTERS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("counters");

/// Why saved counters could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SavedCountersError {
    /// The data file.
    #[error("data file: {0}")]
    File(String),
}

fn err(e: impl std::fmt::Display) -> SavedCountersError {
    SavedCountersError::File(e.to_string())
}

/// The counters saved in a data file. Cheap to clone.
#[derive(Clone)]
pub struct SavedCounters {
    db: Arc<Database>,
}

impl std::fmt::Debug for SavedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedCounters").finish_non_exhaustive()
    }
}

impl SavedCounters {
    /// The counters saved in the data file `file` has open.
    pub fn in_file(file: &FileTenants) -> Self {
        Self { db: Arc::clone(file.database()) }
    }

    /// Replaces the saved counters with `counters` (blocking: call it off
    /// the async runtime).
    pub fn save(&self, counters: &[(CounterKey, CounterState)]) -> Result<(), SavedCountersError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(COUNTERS).map_err(err)?;
            t.retain(|_, _| false).map_err(err)?;
            for (k, s) in counters {
                t.insert(encode_key(k).as_slice(), encode_state(s).as_slice()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// The saved counters (none in a file that never saved any).
    pub fn load(&self) -> Result<Vec<(CounterKey, CounterState)>, SavedCountersError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = match tx.open_table(COUNTERS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if let (Some(k), Some(s)) = (decode_key(k.value()), decode_state(v.value())) {
                out.push((k, s));
            }
        }
        Ok(out)
    }
}

fn encode_key(k: &CounterKey) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&k.group.hi.to_be_bytes());
    b[8..16].copy_from_slice(&k.group.lo.to_be_bytes());
    b[16..].copy_from_slice(&k.counter.to_be_bytes());
    b
}

fn word(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes)
}

fn decode_key(b: &[u8]) -> Option<CounterKey> {
    Some(CounterKey { group: GroupKey { hi: word(b, 0)?, lo: word(b, 8)? }, counter: word(b, 16)? })
}

fn encode_state(s: &CounterState) -> Vec<u8> {
    let (tag, a, b, c) = match *s {
        CounterState::Rolling { tat, rem, amount } => {
            (b'r', tat, u64::from(rem), u64::from(amount))
        }
        CounterState::Calendar { end, used } => (b'c', end, used, 0),
        CounterState::Concurrent { in_flight } => (b'n', in_flight, 0, 0),
    };
    let mut v = Vec::with_capacity(25);
    v.push(tag);
    v.extend_from_slice(&a.to_be_bytes());
    v.extend_from_slice(&b.to_be_bytes());
    v.extend_from_slice(&c.to_be_bytes());
    v
}

fn decode_state(b: &[u8]) -> Option<CounterState> {
    let (a, x, y) = (word(b, 1)?, word(b, 9)?, word(b, 17)?);
    match b.first()? {
        b'r' => Some(CounterState::Rolling {
            tat: a,
            rem: u32::try_from(x).ok()?,
            amount: u32::try_from(y).ok()?,
        }),
        b'c' => Some(CounterState::Calendar { end: a, used: x }),
        // In-flight counts do not survive a restart: those requests are gone.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_reopening() {
        let dir =
            std::env::temp_dir().join(format!("sluice-saved-counters-{}", std::process::id()));
        let path = dir.join("data.redb");
        let _ = std::fs::remove_file(&path);
        let key = CounterKey { group: GroupKey { hi: 1, lo: 2 }, counter: 3 };
        {
            let file = FileTenants::open(&path).unwrap();
            let saved = SavedCounters::in_file(&file);
            assert!(saved.load().unwrap().is_empty(), "a new file has none");
            saved
                .save(&[
                    (key, CounterState::Calendar { end: 99, used: 7 }),
                    (
                        CounterKey { counter: 4, ..key },
                        CounterState::Rolling { tat: 5, rem: 6, amount: 60 },
                    ),
                    (CounterKey { counter: 5, ..key }, CounterState::Concurrent { in_flight: 2 }),
                ])
                .unwrap();
        }
        let file = FileTenants::open(&path).unwrap();
        let saved = SavedCounters::in_file(&file);
        let counters = saved.load().unwrap();
        // In-flight counts do not survive a restart.
        assert_eq!(counters.len(), 2);
        assert!(counters.contains(&(key, CounterState::Calendar { end: 99, used: 7 })));
        assert!(counters.contains(&(
            CounterKey { counter: 4, ..key },
            CounterState::Rolling { tat: 5, rem: 6, amount: 60 }
        )));
        // Counters are not tenants: saving them changes no tenant version.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(crate::TenantStore::version(&file)).unwrap(), 0);
        saved.save(&[]).unwrap();
        assert!(saved.load().unwrap().is_empty(), "a save replaces what was saved");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The history in the embedded data file: two tables of its own
//! (`history_minutes`, `history_hours`), keyed by the bucket's start first
//! (so that what is past its horizon is one range to delete), then the
//! tenant and the model. A save writes the buckets changed since the last
//! one and deletes what was dropped; a load reads everything back.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::kept::{Grain, Merge};
use super::{Counts, History, HistoryError};
use crate::FileTenants;

const MINUTES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("history_minutes");
const HOURS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("history_hours");

fn err(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::File(e.to_string())
}

fn table(grain: Grain) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    match grain {
        Grain::Minute => MINUTES,
        Grain::Hour => HOURS,
    }
}

/// `at` (big-endian, so keys sort by time), the tenant's length (`u16`),
/// the tenant, the model.
fn encode_key(at: u32, tenant: &str, model: &str) -> Vec<u8> {
    let tenant = &tenant.as_bytes()[..tenant.len().min(usize::from(u16::MAX))];
    let mut k = Vec::with_capacity(6 + tenant.len() + model.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(&(tenant.len() as u16).to_be_bytes());
    k.extend_from_slice(tenant);
    k.extend_from_slice(model.as_bytes());
    k
}

fn decode_key(k: &[u8]) -> Option<(u32, &str, &str)> {
    let at = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
    let len = usize::from(u16::from_be_bytes(k.get(4..6)?.try_into().ok()?));
    let tenant = std::str::from_utf8(k.get(6..6 + len)?).ok()?;
    let model = std::str::from_utf8(k.get(6 + len..)?).ok()?;
    Some((at, tenant, model))
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

impl History {
    /// Writes the buckets changed since the last save into the data file
    /// and deletes those dropped (blocking: call it off the async runtime).
    /// Returns how many buckets were written.
    pub fn save(&self, file: &FileTenants) -> Result<usize, HistoryError> {
        self.collect();
        let (dirty, dropped) = {
            let mut kept = self.kept.write();
            (kept.dirty_from.take(), kept.dropped_before)
        };
        let mut rows: [Rows; 2] = [Vec::new(), Vec::new()];
        if let Some((minute, hour)) = dirty {
            let kept = self.kept.read();
            for (tenant, t) in &kept.tenants {
                for (model, s) in &t.models {
                    for (i, (grain, from)) in
                        [(Grain::Minute, minute), (Grain::Hour, hour)].into_iter().enumerate()
                    {
                        let buckets = s.buckets(grain);
                        let start = buckets.partition_point(|b| b.at < from);
                        for b in buckets.range(start..) {
                            rows[i].push((encode_key(b.at, tenant, model), b.counts.encode()));
                        }
                    }
                }
            }
        }
        let written = rows[0].len() + rows[1].len();
        let result = write(file, dropped, &rows);
        if result.is_err()
            && let Some((m, h)) = dirty
        {
            // Try again next time.
            let mut kept = self.kept.write();
            let (m2, h2) = kept.dirty_from.unwrap_or((u32::MAX, u32::MAX));
            kept.dirty_from = Some((m.min(m2), h.min(h2)));
        }
        result.map(|()| written)
    }

    /// Reads the history saved in the data file (at start, before serving).
    /// Returns how many buckets were read.
    pub fn load(&self, file: &FileTenants) -> Result<usize, HistoryError> {
        let tx = file.database().begin_read().map_err(err)?;
        let mut n = 0;
        let mut kept = self.kept.write();
        for grain in [Grain::Minute, Grain::Hour] {
            let t = match tx.open_table(table(grain)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(err(e)),
            };
            for row in t.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let (Some((at, tenant, model)), Some(counts)) =
                    (decode_key(k.value()), Counts::decode(v.value()))
                else {
                    continue;
                };
                kept.merge(&Arc::from(tenant), &Arc::from(model), grain, at, &counts, Merge::Set);
                n += 1;
            }
        }
        self.trim(&mut kept);
        kept.dirty_from = None;
        Ok(n)
    }
}

fn write(file: &FileTenants, dropped: (u32, u32), rows: &[Rows; 2]) -> Result<(), HistoryError> {
    let tx = file.database().begin_write().map_err(err)?;
    {
        for (i, grain) in [Grain::Minute, Grain::Hour].into_iter().enumerate() {
            let mut t = tx.open_table(table(grain)).map_err(err)?;
            let before = if i == 0 { dropped.0 } else { dropped.1 };
            if before > 0 {
                let end = before.to_be_bytes();
                t.retain_in::<&[u8], _>(..&end[..], |_, _| false).map_err(err)?;
            }
            for (k, v) in &rows[i] {
                t.insert(k.as_slice(), v.as_slice()).map_err(err)?;
            }
        }
    }
    tx.commit().map_err(err)
}

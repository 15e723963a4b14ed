//! The history in Redis, shared by every instance.
//!
//! Each instance sends what it recorded every few seconds as one pipeline
//! of `HINCRBY`s (on a Cluster, one pipeline per tenant, since a tenant's
//! keys share its hash tag and so its slot), then reads back the buckets of
//! the tenants active in the last two minutes, so that every instance shows
//! the same numbers. Every key has a TTL: minute buckets live as long as the
//! history keeps minutes, hour buckets as long as it keeps hours.
//!
//! Key layout (`<t>`: the tenant's 64-bit hash in hex, the hash tag of its
//! counters too; `<m>`: minutes since the Unix epoch, `<h>`: hours):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `sluice:{<t>}:hm:<m>` | hash | one tenant's minute: `r:<model>` requests, `i:<model>` input and `o:<model>` output tokens, `l:<n>:<limit><model>` 429s (`<n>`: the limit name's length) |
//! | `sluice:{<t>}:hh:<h>` | hash | the same for an hour |
//! | `sluice:{history}:am:<m>` | set | the ids of the tenants active in that minute |
//! | `sluice:{history}:ah:<h>` | set | the ids of the tenants active in that hour |
//!
//! A flush is sent once: if Redis does not answer, those events are lost
//! (and logged) rather than risk counting them twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use redis::RedisError;
use sluice_core::policy::name_hash;

use super::kept::{Grain, Merge};
use super::pending::Cell;
use super::{Counts, History, HistoryError, minute_of};
use crate::Topology;
use crate::tenants::redis::{Conn, with_conn};

/// Pipelines sent at once on a Cluster.
const PARALLEL: usize = 16;
/// Commands per pipeline when reading.
const READ_BATCH: usize = 512;

/// The history's keys in Redis.
#[derive(Clone)]
pub struct RedisHistory {
    conn: Conn,
    namespace: String,
    minute_ttl: u64,
    hour_ttl: u64,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Cells sent.
    pub sent: usize,
    /// Cells that could not be sent (lost).
    pub lost: usize,
    /// Buckets read back.
    pub read: usize,
}

impl RedisHistory {
    /// Connects; keys under `<namespace>:`. `history` says how long keys
    /// live.
    pub async fn connect(
        topology: &Topology,
        namespace: &str,
        history: &History,
    ) -> Result<Self, HistoryError> {
        let s = history.settings();
        Ok(Self {
            conn: Conn::connect(topology).await?,
            namespace: namespace.to_owned(),
            // An extra minute or hour: a bucket outlives its horizon a little.
            minute_ttl: s.minutes.as_secs() + 60,
            hour_ttl: s.hours.as_secs() + 3600,
        })
    }

    fn tenant_key(&self, tenant: &str, grain: Grain, at: u32) -> String {
        let kind = match grain {
            Grain::Minute => "hm",
            Grain::Hour => "hh",
        };
        format!("{}:{{{:016x}}}:{kind}:{at}", self.namespace, name_hash(tenant))
    }

    fn active_key(&self, grain: Grain, at: u32) -> String {
        let kind = match grain {
            Grain::Minute => "am",
            Grain::Hour => "ah",
        };
        format!("{}:{{history}}:{kind}:{at}", self.namespace)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    async fn run(&self, pipe: &redis::Pipeline) -> Result<Vec<redis::Value>, RedisError> {
        with_conn!(self, c => pipe.query_async::<Vec<redis::Value>>(&mut c).await)
    }

    /// Runs pipelines: one after the other on one server (merged into one),
    /// several at once on a Cluster. Answers in order.
    async fn run_all(
        &self,
        pipes: Vec<redis::Pipeline>,
    ) -> Vec<Result<Vec<redis::Value>, RedisError>> {
        if !self.is_cluster() {
            let mut one = redis::pipe();
            let sizes: Vec<usize> = pipes.iter().map(|p| p.cmd_iter().count()).collect();
            for p in &pipes {
                for c in p.cmd_iter() {
                    one.add_command(c.clone());
                }
            }
            return match self.run(&one).await {
                Ok(all) => {
                    let mut all = all.into_iter();
                    sizes.iter().map(|&n| Ok(all.by_ref().take(n).collect())).collect()
                }
                Err(e) => {
                    let text = e.to_string();
                    let mut out = vec![Err(e)];
                    out.extend((1..pipes.len()).map(|_| {
                        Err(RedisError::from((
                            redis::ErrorKind::Io,
                            "pipeline failed",
                            text.clone(),
                        )))
                    }));
                    out
                }
            };
        }
        let mut out = Vec::with_capacity(pipes.len());
        for chunk in pipes.chunks(PARALLEL) {
            let mut running = Vec::with_capacity(chunk.len());
            for p in chunk {
                running.push(self.run(p));
            }
            out.extend(futures_util::future::join_all(running).await);
        }
        out
    }

    /// Adds `cells` to the shared buckets. Returns how many were lost.
    async fn push(&self, cells: &[Cell]) -> usize {
        let mut by_tenant: BTreeMap<&str, Vec<&Cell>> = BTreeMap::new();
        for c in cells {
            by_tenant.entry(&c.tenant).or_default().push(c);
        }
        let mut pipes = Vec::with_capacity(by_tenant.len() + 1);
        let mut sizes = Vec::with_capacity(by_tenant.len());
        let mut active = redis::pipe();
        let mut active_keys: HashMap<String, u64> = HashMap::new();
        for (tenant, cells) in &by_tenant {
            let mut p = redis::pipe();
            let mut keys: HashMap<String, u64> = HashMap::new();
            for c in cells {
                let hour = c.minute / 60;
                for (grain, at, ttl) in
                    [(Grain::Minute, c.minute, self.minute_ttl), (Grain::Hour, hour, self.hour_ttl)]
                {
                    let key = self.tenant_key(tenant, grain, at);
                    for (field, n) in fields(&c.model, &c.counts) {
                        p.hincr(&key, field, n).ignore();
                    }
                    keys.insert(key, ttl);
                    let set = self.active_key(grain, at);
                    active.sadd(&set, *tenant).ignore();
                    active_keys.insert(set, ttl);
                }
            }
            for (key, ttl) in keys {
                p.expire(key, ttl as i64).ignore();
            }
            sizes.push(cells.len());
            pipes.push(p);
        }
        for (key, ttl) in active_keys {
            active.expire(key, ttl as i64).ignore();
        }
        pipes.push(active);
        let results = self.run_all(pipes).await;
        let mut lost = 0;
        for (r, n) in results.iter().zip(sizes.iter().copied().chain(std::iter::once(0))) {
            if let Err(e) = r {
                tracing::warn!(error = %e, "usage history: a flush to redis failed; its events are lost");
                lost += n;
            }
        }
        lost
    }

    /// The tenants active in each bucket of `grain` in `ats`.
    async fn active(
        &self,
        grain: Grain,
        ats: &[u32],
    ) -> Result<Vec<(u32, Vec<String>)>, HistoryError> {
        let mut out = Vec::with_capacity(ats.len());
        for chunk in ats.chunks(READ_BATCH) {
            let mut p = redis::pipe();
            for &at in chunk {
                p.smembers(self.active_key(grain, at));
            }
            let got: Vec<Vec<String>> =
                with_conn!(self, c => p.query_async::<Vec<Vec<String>>>(&mut c).await)?;
            out.extend(chunk.iter().copied().zip(got));
        }
        Ok(out)
    }

    /// The buckets of (tenant, grain, at): per model.
    async fn buckets(
        &self,
        wanted: &[(String, Grain, u32)],
    ) -> Result<Vec<HashMap<String, Counts>>, HistoryError> {
        let mut out = Vec::with_capacity(wanted.len());
        if self.is_cluster() {
            // One pipeline per tenant (one slot each), a few at once.
            let mut pipes = Vec::new();
            let mut i = 0;
            while i < wanted.len() {
                let mut p = redis::pipe();
                let tenant = &wanted[i].0;
                while i < wanted.len() && wanted[i].0 == *tenant {
                    p.hgetall(self.tenant_key(tenant, wanted[i].1, wanted[i].2));
                    i += 1;
                }
                pipes.push(p);
            }
            for r in self.run_all(pipes).await {
                for v in r? {
                    out.push(parse(
                        redis::from_redis_value(v)
                            .map_err(|e| HistoryError::Reply(e.to_string()))?,
                    ));
                }
            }
        } else {
            for chunk in wanted.chunks(READ_BATCH) {
                let mut p = redis::pipe();
                for (tenant, grain, at) in chunk {
                    p.hgetall(self.tenant_key(tenant, *grain, *at));
                }
                let got: Vec<Vec<(String, u64)>> =
                    with_conn!(self, c => p.query_async::<Vec<Vec<(String, u64)>>>(&mut c).await)?;
                out.extend(got.into_iter().map(parse));
            }
        }
        Ok(out)
    }
}

/// The fields of a cell's counts (zeros left out).
fn fields(model: &str, c: &Counts) -> Vec<(String, u64)> {
    let mut out = Vec::with_capacity(3 + c.limited_by.len());
    for (kind, n) in [("r", c.requests), ("i", c.input_tokens), ("o", c.output_tokens)] {
        if n > 0 {
            out.push((format!("{kind}:{model}"), n));
        }
    }
    for (limit, n) in &c.limited_by {
        out.push((format!("l:{}:{limit}{model}", limit.len()), *n));
    }
    out
}

/// A bucket's hash, by model.
fn parse(fields: Vec<(String, u64)>) -> HashMap<String, Counts> {
    let mut out: HashMap<String, Counts> = HashMap::new();
    for (field, n) in fields {
        let Some((kind, rest)) = field.split_once(':') else { continue };
        match kind {
            "r" => out.entry(rest.to_owned()).or_default().requests += n,
            "i" => out.entry(rest.to_owned()).or_default().input_tokens += n,
            "o" => out.entry(rest.to_owned()).or_default().output_tokens += n,
            "l" => {
                let Some((len, rest)) = rest.split_once(':') else { continue };
                let Ok(len) = len.parse::<usize>() else { continue };
                let (Some(limit), Some(model)) = (rest.get(..len), rest.get(len..)) else {
                    continue;
                };
                out.entry(model.to_owned()).or_default().add_limited(&Arc::from(limit), n);
            }
            _ => {}
        }
    }
    out
}

impl History {
    /// Sends what this instance recorded to Redis, then reads back the
    /// last two minutes (and their hours) of every tenant active in them.
    pub async fn sync(&self, redis: &RedisHistory) -> Result<SyncReport, HistoryError> {
        let cells = self.pending.collect();
        let overflowed = self.pending.overflowed.swap(0, std::sync::atomic::Ordering::Relaxed);
        self.kept.write().overflowed += overflowed;
        let lost = if cells.is_empty() { 0 } else { redis.push(&cells).await };
        let now = minute_of(self.now());
        let read = self.pull(redis, &[now.saturating_sub(1), now], true).await?;
        self.trim(&mut self.kept.write());
        Ok(SyncReport { sent: cells.len() - lost, lost, read })
    }

    /// Reads the minutes `minutes` of every tenant active in them (and, with
    /// `hours`, those tenants' hours of those minutes).
    async fn pull(
        &self,
        redis: &RedisHistory,
        minutes: &[u32],
        hours: bool,
    ) -> Result<usize, HistoryError> {
        let mut wanted = Vec::new();
        for (minute, tenants) in redis.active(Grain::Minute, minutes).await? {
            for t in tenants {
                if hours {
                    wanted.push((t.clone(), Grain::Hour, minute / 60));
                }
                wanted.push((t, Grain::Minute, minute));
            }
        }
        wanted.sort();
        wanted.dedup();
        self.pull_buckets(redis, &wanted).await
    }

    async fn pull_buckets(
        &self,
        redis: &RedisHistory,
        wanted: &[(String, Grain, u32)],
    ) -> Result<usize, HistoryError> {
        let got = redis.buckets(wanted).await?;
        let mut kept = self.kept.write();
        let mut n = 0;
        for ((tenant, grain, at), models) in wanted.iter().zip(got) {
            let tenant: Arc<str> = Arc::from(tenant.as_str());
            for (model, counts) in models {
                kept.merge(&tenant, &Arc::from(model), *grain, *at, &counts, Merge::Set);
                n += 1;
            }
        }
        kept.dirty_from = None;
        Ok(n)
    }

    /// Reads everything Redis keeps (at start): the hours within the
    /// history's horizon, then the minutes, the newest first, until the caps
    /// are reached. Returns how many buckets were read.
    pub async fn load_shared(&self, redis: &RedisHistory) -> Result<usize, HistoryError> {
        let now = self.now().as_secs();
        let s = *self.settings();
        let mut n = 0;
        for (grain, span, size, cap) in [
            (Grain::Hour, s.hours.as_secs(), 3600, s.max_hour_buckets),
            (Grain::Minute, s.minutes.as_secs(), 60, s.max_minute_buckets),
        ] {
            let last = u32::try_from(now / size).unwrap_or(u32::MAX);
            let first = u32::try_from(now.saturating_sub(span) / size).unwrap_or(0);
            let ats: Vec<u32> = (first..=last).rev().collect();
            let mut wanted = Vec::new();
            for (at, tenants) in redis.active(grain, &ats).await? {
                wanted.extend(tenants.into_iter().map(|t| (t, grain, at)));
                if wanted.len() >= cap {
                    break;
                }
            }
            wanted.truncate(cap);
            wanted.sort();
            n += self.pull_buckets(redis, &wanted).await?;
        }
        self.trim(&mut self.kept.write());
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_whatever_the_names() {
        let mut c = Counts { requests: 2, input_tokens: 10, output_tokens: 0, ..Counts::default() };
        c.add_limited(&Arc::from("a:b"), 3);
        let model = "org/model:v1";
        let back = parse(fields(model, &c));
        assert_eq!(back.len(), 1);
        assert_eq!(back[model], c);
    }
}

//! The admission call: the KEYS and ARGV of `admit.lua` for a plan, with
//! its deadline in the script's time, and the decision read from its reply.

use std::sync::atomic::Ordering;

use sluice_core::{
    Decision, Instant, LimitStatus, Metric, Outcome, Plan, ReservationId, Rule, Verdict,
};
use smallvec::SmallVec;

use super::{Conn, RedisStore, RedisStoreError, TimeSource};

impl RedisStore {
    /// The KEYS and ARGV of the admission script for `plan`, with lease id
    /// `lease` and `deadline` (microseconds on the script's clock).
    fn admission_call(
        &self,
        plan: &Plan,
        peek: bool,
        lease: &str,
        deadline: Option<i64>,
    ) -> (Vec<String>, Vec<String>) {
        let tag = format!("{}:{{{:016x}}}", self.inner.namespace, plan.tenant);
        let mut keys = Vec::with_capacity(4);
        keys.push(format!("{tag}:l:{lease}"));
        let lease_ms = (plan.lease_until.0.saturating_sub(plan.now.0) / 1_000_000).max(1);
        if !peek && lease_ms > self.inner.longest_lease_ms.load(Ordering::Relaxed) {
            self.inner.longest_lease_ms.fetch_max(lease_ms, Ordering::Relaxed);
        }
        let mut args = Vec::with_capacity(7 + 10 * plan.charges.len());
        args.push(match &self.inner.time {
            TimeSource::Server => "s".to_owned(),
            // The plan's time, from the same clock: what the memory store
            // uses too.
            TimeSource::Client(_) => (plan.now.0 / 1_000_000).to_string(),
        });
        args.push(lease_ms.to_string());
        args.push(if peek { "p" } else { "a" }.to_owned());
        args.push(lease.to_owned());
        args.push(deadline.map_or_else(|| "-".to_owned(), |d| d.to_string()));
        let slot_ms = plan.slots_until.0.saturating_sub(plan.now.0) / 1_000_000;
        args.push(slot_ms.clamp(1, lease_ms).to_string());
        args.push(plan.charges.len().to_string());
        for c in &plan.charges {
            let key = match c.rule {
                Rule::Concurrent { .. } => format!(
                    "{tag}:n:{:016x}{:016x}{:016x}",
                    c.key.group.hi, c.key.group.lo, c.key.counter
                ),
                _ => format!("{tag}:g:{:016x}{:016x}", c.key.group.hi, c.key.group.lo),
            };
            let index = match keys.iter().position(|k| *k == key) {
                Some(i) => i + 1,
                None => {
                    keys.push(key);
                    keys.len()
                }
            };
            let cost = c.cost;
            args.push(index.to_string());
            args.push(format!("{:016x}", c.key.counter));
            let (kind, p1, p2, p3) = match c.rule {
                Rule::Rolling { period_nanos, amount: _, burst } => {
                    ("r", burst, period_nanos / 1_000_000, 0)
                }
                Rule::Calendar { slot, next_end, .. } => {
                    ("c", slot.start.as_millis(), slot.end.as_millis(), next_end.as_millis())
                }
                Rule::Concurrent { .. } => ("n", 0, 0, 0),
            };
            args.push(kind.to_owned());
            args.push(cost.to_string());
            args.push(c.rule.amount().to_string());
            args.push(p1.to_string());
            args.push(p2.to_string());
            args.push(p3.to_string());
            args.push(if c.shadow { "s" } else { "-" }.to_owned());
            // A cost charge carries the price it is settled at
            // (settle.lua): `cost:<input>:<cached input>:<output>`.
            // A hard limit's charge ends in `!` (settled at most at what
            // was charged).
            let hard = if c.hard { "!" } else { "" };
            args.push(if c.metric == Metric::Cost {
                let p = plan.price;
                format!("cost:{}:{}:{}{hard}", p.input, p.cached_input, p.output)
            } else {
                format!("{}{hard}", c.metric.as_str())
            });
        }
        (keys, args)
    }

    /// The admission of `plan` as one Redis command line (`EVALSHA <sha>
    /// <numkeys> <keys…> <args…>`), with no deadline and a lease id of its
    /// own, for benchmarks and tests (running it twice is a duplicated
    /// admission: it charges once).
    pub fn admission_command(&self, plan: &Plan) -> Vec<String> {
        self.admission_command_by(plan, None).1
    }

    /// [`RedisStore::admission_command`] with a deadline (see
    /// [`RedisStore::admit_by`]), and the reservation id it creates.
    pub fn admission_command_by(
        &self,
        plan: &Plan,
        deadline: Option<std::time::Instant>,
    ) -> (ReservationId, Vec<String>) {
        let (id, lease) = self.lease_id(plan.tenant);
        let deadline = deadline.and_then(|d| self.script_deadline(plan, d));
        let (keys, args) = self.admission_call(plan, false, &lease, deadline);
        let mut cmd = vec!["EVALSHA".to_owned(), self.inner.admit.get_hash().to_owned()];
        cmd.push(keys.len().to_string());
        cmd.extend(keys);
        cmd.extend(args);
        (id, cmd)
    }

    /// Runs one command line (as [`RedisStore::admission_command`] gives)
    /// on the store's connection: benchmarks and tests.
    pub async fn command(&self, line: &[String]) -> Result<redis::Value, RedisStoreError> {
        let mut cmd = redis::Cmd::new();
        for a in line {
            cmd.arg(a);
        }
        Ok(match &self.inner.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await?,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await?,
            Conn::Sentinel(s) => {
                s.run(|mut c| {
                    let cmd = cmd.clone();
                    async move { cmd.query_async(&mut c).await }
                })
                .await?
            }
        })
    }

    /// The server (a cell of [`ServerClock`]) that holds `tenant`'s keys.
    pub(super) fn server_of(&self, tenant: u64) -> usize {
        self.node_of(tenant)
    }

    /// `deadline` as the script's ARGV: microseconds on the clock the
    /// script uses (the server's, as learned; or the test's clock).
    fn script_deadline(&self, plan: &Plan, deadline: std::time::Instant) -> Option<i64> {
        match &self.inner.time {
            TimeSource::Server => self.inner.clock.deadline(self.server_of(plan.tenant), deadline),
            TimeSource::Client(_) => {
                let now = std::time::Instant::now();
                let plan_us = i64::try_from(plan.now.0 / 1_000).unwrap_or(i64::MAX);
                let ahead = deadline.saturating_duration_since(now).as_micros();
                let behind = now.saturating_duration_since(deadline).as_micros();
                Some(
                    plan_us + i64::try_from(ahead).unwrap_or(0)
                        - i64::try_from(behind).unwrap_or(0),
                )
            }
        }
    }

    /// Admits `plan` unless the call reaches the server after `deadline`
    /// (on this process's monotonic clock): a late call does nothing and
    /// answers [`RedisStoreError::Late`]. Returns, before anything is sent,
    /// the reservation id an admission creates, so that a caller that gives
    /// up can queue its undoing ([`CounterStore::settle_detached`] with
    /// [`Usage::REFUND`]: runs after the admission on the same connection,
    /// and is a no-op if the admission never ran or came late).
    pub fn admit_by<'a>(
        &'a self,
        plan: &'a Plan,
        deadline: Option<std::time::Instant>,
    ) -> (ReservationId, impl Future<Output = Result<Decision, RedisStoreError>> + Send + 'a) {
        let (id, lease) = self.lease_id(plan.tenant);
        (id, async move {
            if plan.charges.is_empty() {
                // No limit applies: nothing to ask.
                return Ok(Decision {
                    outcome: Outcome::Admitted { reservation: None },
                    statuses: SmallVec::new(),
                });
            }
            let deadline = deadline.and_then(|d| self.script_deadline(plan, d));
            let (keys, args) = self.admission_call(plan, false, &lease, deadline);
            let nums = self.run_admission(plan.tenant, &keys, &args).await?;
            decision(plan, &nums, Some(id))
        })
    }

    async fn run_admission(
        &self,
        tenant: u64,
        keys: &[String],
        args: &[String],
    ) -> Result<Vec<i64>, RedisStoreError> {
        let mut inv = self.inner.admit.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        let reply = self.run(&inv).await?;
        let read = std::time::Instant::now();
        let nums: Vec<i64> =
            redis::from_redis_value(reply).map_err(|e| RedisStoreError::Reply(e.to_string()))?;
        if matches!(self.inner.time, TimeSource::Server)
            && let Some(&server_us) = nums.get(4)
        {
            self.inner.clock.sample(self.server_of(tenant), server_us, read);
        }
        Ok(nums)
    }

    pub(super) async fn admit_or_peek(
        &self,
        plan: &Plan,
        peek: bool,
    ) -> Result<Decision, RedisStoreError> {
        if !peek {
            return self.admit_by(plan, None).1.await;
        }
        if plan.charges.is_empty() {
            return Ok(Decision {
                outcome: Outcome::Admitted { reservation: None },
                statuses: SmallVec::new(),
            });
        }
        let (keys, args) = self.admission_call(plan, true, "peek", None);
        let nums = self.run_admission(plan.tenant, &keys, &args).await?;
        decision(plan, &nums, None)
    }
}

/// Reads the admission script's reply into a decision.
fn decision(
    plan: &Plan,
    nums: &[i64],
    id: Option<ReservationId>,
) -> Result<Decision, RedisStoreError> {
    let bad = || RedisStoreError::Reply(format!("{nums:?}"));
    let (head, rest) = nums.split_at_checked(5).ok_or_else(bad)?;
    if head[0] == 3 {
        return Err(RedisStoreError::Late);
    }
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let ms = |v: i64| Instant::from_millis(u(v));
    let mut statuses = SmallVec::new();
    for (c, r) in plan.charges.iter().zip(rest.chunks_exact(5)) {
        let verdict = match r[0] {
            0 => Verdict::Fits,
            1 => Verdict::WaitUntil(ms(r[4])),
            _ => Verdict::Never,
        };
        statuses.push(LimitStatus {
            limit: c.limit,
            metric: c.metric,
            amount: c.rule.amount(),
            used: u(r[1]),
            remaining: u(r[2]),
            requested: c.cost,
            reset: (r[3] >= 0 && c.metric != Metric::Concurrent).then(|| ms(r[3])),
            verdict,
            shadow: c.shadow,
            window_secs: c.rule.window_secs(),
        });
    }
    if statuses.len() != plan.charges.len() {
        return Err(bad());
    }
    let denied = usize::try_from(head[1]).ok().and_then(|d| d.checked_sub(1));
    let outcome = match (head[0], denied) {
        // 4: admitted before under this id (a retried call).
        (0 | 4, _) => Outcome::Admitted { reservation: id },
        (1, Some(limit)) => Outcome::Limited { limit, retry_at: ms(head[2]) },
        (2, Some(limit)) => Outcome::TooLarge { limit },
        _ => return Err(bad()),
    };
    Ok(Decision { outcome, statuses })
}

//! From a request to the counters it must be charged to, and from those
//! counters' states to a decision.
//!
//! Planning is pure and needs no store: it finds every limit that applies
//! (conditions, exemptions, overrides), resolves its window to a slot, and
//! names the counter. Deciding is pure too: given the counters' states it says
//! admit or deny for the request as a whole. A store only has to run
//! [`decide`] atomically and write back the states it returns. That is the
//! whole of "all or nothing".

use smallvec::SmallVec;

use crate::counter::{ChargedAs, Check, CounterState, Rule, Verdict, check};
use crate::facts::{Ask, lease_end};
use crate::metric::Metric;
use crate::money::{Billed, Price};
use crate::policy::{Clause, Condition, LimitId, Part, Policy, Sym};
use crate::time::Instant;
use crate::window::WindowKind;

/// A group of counters: one tenant's counters for one partition (e.g. the
/// tenant and model `m`: its RPM, RPD and TPD of `m`), stored together so
/// that an admission touches one place per partition, not one per limit. The
/// top 32 bits are the tenant's (`tenant_hash >> 32`), so a store can find a
/// group's tenant shard from the key alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// High 64 bits: the tenant's 32 bits, then 32 bits of the group hash.
    pub hi: u64,
    /// Low 64 bits of the group hash.
    pub lo: u64,
}

impl GroupKey {
    /// The group of `tenant`'s counters for these partition values (each
    /// tagged with its fact, so equal hashes of different facts differ):
    /// two independent chains of folded multiplications (the mixing step of
    /// wyhash and foldhash) over inputs that are already xxh3 hashes. Part of
    /// the persisted and shared format: never change it.
    pub fn new(tenant: u64, parts: &[u64]) -> Self {
        Self::of(tenant, parts.iter().copied())
    }

    /// [`GroupKey::new`] over the values as they come (no buffer).
    #[inline]
    pub fn of(tenant: u64, parts: impl ExactSizeIterator<Item = u64>) -> Self {
        const K: [u64; 4] = [
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
        ];
        fn fold(a: u64, b: u64) -> u64 {
            let m = u128::from(a) * u128::from(b);
            (m as u64) ^ ((m >> 64) as u64)
        }
        let n = parts.len() as u64;
        let mut h1 = fold(tenant ^ K[0], K[1]);
        let mut h2 = fold(tenant ^ K[2], K[3]);
        for (i, p) in parts.enumerate() {
            let i = i as u64 + 1;
            h1 = fold(h1 ^ K[1].wrapping_mul(i), p ^ K[0]);
            h2 = fold(h2 ^ K[3].wrapping_mul(i), p ^ K[2]);
        }
        h1 = fold(h1 ^ K[2], n ^ K[3]);
        Self { hi: (tenant & 0xFFFF_FFFF_0000_0000) | (h1 >> 32), lo: h2 ^ (h1 << 32) }
    }

    /// The tenant bits: `tenant_hash >> 32` of the tenant it belongs to.
    pub const fn tenant_bits(self) -> u32 {
        (self.hi >> 32) as u32
    }
}

/// A counter: a group and a limit identity (xxh3 of the limit's counter
/// identity) within it. Stable across versions, processes and policy reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// The group (tenant and partition).
    pub group: GroupKey,
    /// The limit identity within the group.
    pub counter: u64,
}

/// One counter an admission will charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedCharge {
    /// The limit that asks for it.
    pub limit: LimitId,
    /// The counter.
    pub key: CounterKey,
    /// What it counts.
    pub metric: Metric,
    /// What the limit enforces (amount after overrides, slot resolved).
    pub rule: Rule,
    /// What this request costs on it.
    pub cost: u64,
    /// A shadow limit: reported, never denies.
    pub shadow: bool,
    /// A hard limit: settled at most at what was reserved.
    pub hard: bool,
}

/// Everything a store needs to admit one request.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The tenant's hash: the store keeps all of a tenant's counters together.
    pub tenant: u64,
    /// The instant planned for.
    pub now: Instant,
    /// When an unsettled reservation expires.
    pub lease_until: Instant,
    /// When its concurrency slots are given back unless renewed
    /// ([`crate::CounterStore::renew`]): the lease by default; a caller
    /// that renews them while the request runs sets it sooner, so that the
    /// slots of a process that dies free soon.
    pub slots_until: Instant,
    /// The counters to charge.
    pub charges: SmallVec<[PlannedCharge; 8]>,
    /// The price of the request's model, which its `cost` charges are
    /// estimated at and settled at (a price changed meanwhile applies from
    /// the next request).
    pub price: Price,
}

impl Plan {
    /// Whether admitting it holds a concurrency slot.
    pub fn holds_slots(&self) -> bool {
        self.charges.iter().any(|c| c.metric == Metric::Concurrent)
    }

    /// The same plan costing nothing: deciding it reports the counters as
    /// they are, without this request.
    pub fn at_zero_cost(&self) -> Plan {
        let mut p = self.clone();
        p.charges.iter_mut().for_each(|c| c.cost = 0);
        p
    }

    /// Prices every charge at `cost` (the plan was made before the cost was
    /// known, e.g. to bound the work of estimating it).
    pub fn set_cost(&mut self, cost: crate::facts::Cost) {
        let micros = self.price.micros(Billed::tokens(cost.input_tokens, cost.output_tokens));
        for c in &mut self.charges {
            c.cost = c.metric.cost(cost.input_tokens, cost.output_tokens, micros);
        }
    }

    /// The most input tokens this request could ever be admitted with, given
    /// `output` expected output tokens: over it, some limit's whole capacity
    /// is exceeded and the request is too large whatever the counters say.
    /// `None` when no limit counts input tokens. An estimate may stop
    /// counting past this figure.
    pub fn input_token_ceiling(&self, output: u64) -> Option<u64> {
        self.charges
            .iter()
            .filter(|c| !c.shadow)
            .filter_map(|c| match c.metric {
                Metric::InputTokens => Some(c.rule.capacity()),
                Metric::Tokens => Some(c.rule.capacity().saturating_sub(output)),
                _ => None,
            })
            .min()
    }
}

impl Policy {
    /// Plans the admission of `req` at `now`.
    #[inline]
    pub fn plan(&self, req: &Ask<'_>, now: Instant) -> Plan {
        let lease_until = lease_end(self, now);
        let mut plan = Plan {
            tenant: req.tenant.hash,
            now,
            lease_until,
            slots_until: lease_until,
            charges: SmallVec::new(),
            price: Price::ZERO,
        };
        // Filled where it will be used: a plan is over 600 bytes, and
        // returning it from the loop below would copy it.
        self.plan_charges(req, &mut plan, false);
        plan
    }

    /// Plans what can be known of `req` before its body is read: the limits
    /// that apply and the counters they charge whatever the model and the
    /// end user ([`Limit::needs_body`](crate::Limit::needs_body) is false),
    /// at `req.cost`. `req.model` and `req.end_user` are not looked at.
    /// Every charge of this plan is also a charge of the full plan of the
    /// same request (same counter, same rule), so a denial here is a denial
    /// there: the gateway refuses such a request before it reads, parses or
    /// tokenizes anything.
    pub fn plan_before_body(&self, req: &Ask<'_>, now: Instant) -> Plan {
        let lease_until = lease_end(self, now);
        let mut plan = Plan {
            tenant: req.tenant.hash,
            now,
            lease_until,
            slots_until: lease_until,
            charges: SmallVec::new(),
            price: Price::ZERO,
        };
        let req = Ask {
            model: crate::facts::ModelRef::NONE,
            end_user: crate::facts::EndUser::NONE,
            ..*req
        };
        self.plan_charges(&req, &mut plan, true);
        plan
    }

    /// The charges of `plan` (for `plan.now`), appended; `model_free`: only
    /// the limits that do not need the body (its model or end user).
    fn plan_charges(&self, req: &Ask<'_>, plan: &mut Plan, model_free: bool) {
        let tenant = req.tenant;
        let now = plan.now;
        let Some(tier) = self.tiers.get(tenant.tier.index()) else {
            return;
        };
        let slot = req.model.id.map_or(tier.by_model.len().saturating_sub(1), |m| m.index());
        let Some(candidates) = tier.by_model.get(slot) else {
            return;
        };
        // Money is priced only when a cost limit may apply.
        let micros = if tier.prices {
            plan.price = self.price_of(req.model);
            plan.price.micros(Billed::tokens(req.cost.input_tokens, req.cost.output_tokens))
        } else {
            0
        };
        // Exemptions are few; find the ones that hold for this request once.
        let mut exempting: SmallVec<[&crate::policy::LimitSet; 2]> = SmallVec::new();
        for e in &self.exemptions {
            if self.holds(&e.when, req) {
                exempting.push(&e.limits);
            }
        }
        // Limits often share a window (RPD, TPD and a daily cap): resolve
        // each calendar window once per plan.
        let mut resolved: Option<(crate::window::Window, (crate::window::Slot, Instant))> = None;
        let mut group_memo: Option<(&[Part], GroupKey)> = None;
        for &(id, always) in &candidates.limits {
            let limit = &self.limits[id.index()];
            if model_free && limit.needs_body {
                continue;
            }
            if !(always
                || self.holds(&limit.when, req) && !limit.unless.iter().any(|u| self.holds(u, req)))
                || tenant.exempt.contains(id)
                || req.key.is_some_and(|k| k.exempt.contains(id))
                || exempting.iter().any(|s| s.contains(id))
            {
                continue;
            }
            // The key's grant wins over the tenant's (only limits split by
            // key carry key grants).
            let amount = req
                .key
                .and_then(|k| k.override_for(id, now))
                .or_else(|| tenant.override_for(id, now))
                .unwrap_or(limit.amount);
            let rule = match limit.window {
                None => Rule::Concurrent { amount },
                Some(w) if w.kind == WindowKind::Rolling => Rule::Rolling {
                    period_nanos: w.period.nominal_nanos(),
                    amount,
                    // An explicit burst scales with a granted increase.
                    burst: limit.burst.map_or(amount, |b| {
                        if amount == limit.amount {
                            b
                        } else {
                            u64::try_from(
                                u128::from(b) * u128::from(amount) / u128::from(limit.amount),
                            )
                            .unwrap_or(u64::MAX)
                            .max(1)
                        }
                    }),
                },
                Some(w) => {
                    let (slot, next_end) = match resolved {
                        Some((rw, r)) if rw == w => r,
                        _ => {
                            let r = w.slot_and_next(now, tenant.zone.as_ref());
                            resolved = Some((w, r));
                            r
                        }
                    };
                    Rule::Calendar { slot, next_end, amount }
                }
            };
            // Limits split the same way (a model's RPM, RPD, TPD) share a
            // group: hash it once.
            let group = match group_memo {
                Some((parts, g)) if parts == limit.parts.as_slice() => g,
                _ => {
                    let g = GroupKey::of(
                        tenant.hash,
                        limit.parts.iter().map(|part| self.part_value(part, req)),
                    );
                    group_memo = Some((limit.parts.as_slice(), g));
                    g
                }
            };
            let key = CounterKey { group, counter: limit.identity };
            let charge = PlannedCharge {
                limit: id,
                key,
                metric: limit.metric,
                rule,
                cost: limit.metric.cost(req.cost.input_tokens, req.cost.output_tokens, micros),
                shadow: limit.shadow,
                hard: limit.hard,
            };
            // Two limits that name one counter (overlapping conditions): the
            // stricter one decides and the counter is charged once.
            let same = if candidates.distinct {
                None
            } else {
                plan.charges.iter_mut().find(|c| c.key == key)
            };
            match same {
                Some(c) if rule.amount() < c.rule.amount() || (c.shadow && !charge.shadow) => {
                    *c = charge;
                }
                Some(_) => {}
                None => plan.charges.push(charge),
            }
        }
    }

    /// How long the request refused by `decision` may wait for room instead
    /// of a 429: the shortest `max_wait` of the limits that refused it (a
    /// limit's own, else its tier's); zero when any of them allows none or
    /// it can never fit.
    pub fn allowed_wait(
        &self,
        tier: crate::policy::TierId,
        decision: &Decision,
    ) -> std::time::Duration {
        if !matches!(decision.outcome, Outcome::Limited { .. }) {
            return std::time::Duration::ZERO;
        }
        let tier_wait = self.tiers.get(tier.index()).and_then(|t| t.max_wait);
        decision
            .statuses
            .iter()
            .filter(|s| !s.shadow && matches!(s.verdict, crate::counter::Verdict::WaitUntil(_)))
            .map(|s| {
                self.limits
                    .get(s.limit.index())
                    .and_then(|l| l.max_wait)
                    .or(tier_wait)
                    .unwrap_or(std::time::Duration::ZERO)
            })
            .min()
            .unwrap_or(std::time::Duration::ZERO)
    }

    /// A partition value, tagged with its fact.
    fn part_value(&self, part: &Part, req: &Ask<'_>) -> u64 {
        let (tag, value) = self.part_raw(part, req);
        value ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn part_raw(&self, part: &Part, req: &Ask<'_>) -> (u64, u64) {
        let value = match part {
            Part::Model => req.model.hash,
            Part::Endpoint => self.endpoints.get(req.endpoint.index()).map_or(0, |e| e.hash),
            Part::ModelClass => req
                .model
                .id
                .and_then(|m| self.models[m.index()].class)
                .map_or(0, |c| crate::policy::name_hash(self.classes.name(c))),
            Part::Key => req.key.map_or(0, |k| k.hash),
            Part::KeyLabel(l, _) => req
                .key
                .and_then(|k| k.labels.iter().find(|(key, _, _)| key == l))
                .map_or(0, |&(_, _, h)| h),
            // No end user: 0, one partition for all such requests.
            Part::User => req.end_user.hash(),
        };
        let tag = match part {
            Part::Model => 1,
            Part::Endpoint => 2,
            Part::ModelClass => 3,
            Part::Key => 4,
            Part::User => 5,
            // The label's name, hashed: stable across policy reloads.
            Part::KeyLabel(_, name) => *name,
        };
        (tag, value)
    }

    fn holds(&self, cond: &Condition, req: &Ask<'_>) -> bool {
        let t = req.tenant;
        let some = |v: &[Sym], s: Sym| s != Sym::NONE && v.contains(&s);
        cond.iter().all(|clause| match clause {
            Clause::Tenant(v) => some(v, t.name),
            Clause::Tier(v) => v.contains(&t.tier),
            Clause::Environment(v) => some(v, t.environment),
            Clause::Group(v) => t.groups.iter().any(|&g| some(v, g)),
            Clause::TenantLabel(k, v) => t.labels.iter().any(|(lk, lv)| lk == k && some(v, *lv)),
            Clause::Key(v) => req.key.is_some_and(|k| some(v, k.name)),
            Clause::KeyLabel(k, v) => req
                .key
                .is_some_and(|key| key.labels.iter().any(|(lk, lv, _)| lk == k && some(v, *lv))),
            Clause::Endpoint(v) => v.contains(&req.endpoint),
            Clause::Model(v) => req.model.id.is_some_and(|m| v.contains(&m)),
            Clause::ModelClass(v) => req
                .model
                .id
                .and_then(|m| self.models[m.index()].class)
                .is_some_and(|c| v.contains(&c)),
            Clause::User(v) => v.contains(&req.end_user.hash()),
        })
    }
}

/// The state of one limit, as a decision reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// Which limit.
    pub limit: LimitId,
    /// What it counts.
    pub metric: Metric,
    /// Its amount (after overrides).
    pub amount: u64,
    /// Used: after this request if it was admitted, before it otherwise
    /// (a denied request charges nothing, whichever limit denied it).
    pub used: u64,
    /// Remaining: after this request if it was admitted, before it otherwise.
    pub remaining: u64,
    /// What this request asked of it.
    pub requested: u64,
    /// When it is back to full (`None` for concurrency).
    pub reset: Option<Instant>,
    /// Whether this request fit it.
    pub verdict: Verdict,
    /// A shadow limit (never denies).
    pub shadow: bool,
    /// The length of the window counted in, in seconds
    /// ([`Rule::window_secs`]); 0 for concurrency.
    pub window_secs: u64,
}

/// Admit or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted; settle the reservation when the request ends (`None` when no
    /// limit applied, so there is nothing to settle).
    Admitted {
        /// What to settle.
        reservation: Option<ReservationId>,
    },
    /// Denied until `retry_at`; `limit` is the index (in the statuses) of the
    /// limit that frees up last.
    Limited {
        /// Index into [`Decision::statuses`].
        limit: usize,
        /// When the request would fit, if nothing else is spent meanwhile.
        retry_at: Instant,
    },
    /// Denied for good: the cost exceeds the whole capacity of a limit.
    TooLarge {
        /// Index into [`Decision::statuses`].
        limit: usize,
    },
}

/// The answer to one admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Admit or deny.
    pub outcome: Outcome,
    /// Every limit that applied, in plan order.
    pub statuses: SmallVec<[LimitStatus; 8]>,
}

impl Decision {
    /// Whether the request may go ahead.
    pub const fn is_admitted(&self) -> bool {
        matches!(self.outcome, Outcome::Admitted { .. })
    }

    /// The reservation to settle, if admitted with one.
    pub const fn reservation(&self) -> Option<ReservationId> {
        match self.outcome {
            Outcome::Admitted { reservation } => reservation,
            _ => None,
        }
    }

    /// The status of the limit that denied the request.
    pub fn denied_by(&self) -> Option<&LimitStatus> {
        match self.outcome {
            Outcome::Limited { limit, .. } | Outcome::TooLarge { limit } => {
                self.statuses.get(limit)
            }
            Outcome::Admitted { .. } => None,
        }
    }
}

/// An opaque, unguessable reservation id (128 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReservationId(pub u128);

impl std::fmt::Display for ReservationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rsv_{:032x}", self.0)
    }
}

impl std::str::FromStr for ReservationId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let hex = s.strip_prefix("rsv_").ok_or(())?;
        if hex.len() != 32 {
            return Err(());
        }
        u128::from_str_radix(hex, 16).map(Self).map_err(|_| ())
    }
}

/// One charge of an admitted request, kept until it is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChargeRecord {
    /// The counter.
    pub key: CounterKey,
    /// What it counts.
    pub metric: Metric,
    /// How it was charged.
    pub how: ChargedAs,
    /// How much.
    pub charged: u64,
    /// A hard limit's charge: never settled above what was charged.
    pub hard: bool,
}

impl ChargeRecord {
    /// What settling with `usage` (priced at `price`) charges it: the real
    /// amount, at most what was reserved under a hard limit.
    pub fn settled(&self, usage: &Usage, price: &Price) -> u64 {
        let actual = usage.amount(self.metric, price);
        if self.hard { actual.min(self.charged) } else { actual }
    }
}

/// What an admitted request really used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests to count: 1 normally, 0 to refund the request itself (e.g. the
    /// upstream failed and the policy refunds failures).
    pub requests: u64,
    /// Prompt tokens, as token limits count them.
    pub input_tokens: u64,
    /// Completion tokens, as token limits count them.
    pub output_tokens: u64,
    /// The tokens billed for, which `cost` limits price at the price the
    /// request was admitted at ([`Plan::price`]).
    pub billed: Billed,
}

impl Usage {
    /// A request that ran and used these tokens (none from a cache; token
    /// limits count them all).
    pub const fn tokens(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            requests: 1,
            input_tokens,
            output_tokens,
            billed: Billed::tokens(input_tokens, output_tokens),
        }
    }

    /// Nothing: the request is refunded entirely.
    pub const REFUND: Usage =
        Usage { requests: 0, input_tokens: 0, output_tokens: 0, billed: Billed::tokens(0, 0) };

    /// The real amount under `metric` at `price` (concurrency is always
    /// released).
    pub fn amount(&self, metric: Metric, price: &Price) -> u64 {
        match metric {
            Metric::Requests => self.requests,
            Metric::Concurrent => 0,
            Metric::Cost => price.micros(self.billed),
            m => m.cost(self.input_tokens, self.output_tokens, 0),
        }
    }
}

/// What settling did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The reservation was settled now.
    Settled,
    /// Nothing to do: already settled, released, expired, or never issued.
    Unknown,
}

/// The verdict on a whole plan, and what to write back if admitted.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The decision (reservation id not yet filled in).
    pub decision: Decision,
    /// For each charge: the state to store if the request is admitted and the
    /// charge applies (`None`: leave the counter alone).
    pub writes: SmallVec<[Option<CounterState>; 8]>,
}

/// Decides a plan given each charge's current counter state (`states[i]` for
/// `plan.charges[i]`). Pure: the caller provides atomicity.
pub fn decide(plan: &Plan, states: &[Option<CounterState>]) -> Evaluation {
    let mut decision =
        Decision { outcome: Outcome::Admitted { reservation: None }, statuses: SmallVec::new() };
    let mut writes = SmallVec::new();
    decide_into(plan, states, &mut decision, &mut writes);
    Evaluation { decision, writes }
}

/// [`decide`], into the caller's decision and writes (cleared first): a
/// store's hot path builds the decision where it will return it instead of
/// moving a kilobyte of statuses around.
#[inline(always)]
pub fn decide_into(
    plan: &Plan,
    states: &[Option<CounterState>],
    decision: &mut Decision,
    writes: &mut SmallVec<[Option<CounterState>; 8]>,
) {
    let statuses = &mut decision.statuses;
    statuses.clear();
    writes.clear();
    let mut never: Option<usize> = None;
    let mut wait: Option<(usize, Instant)> = None;
    for (i, c) in plan.charges.iter().enumerate() {
        let state = states.get(i).copied().flatten();
        let Check { verdict, next, used, remaining, reset } =
            check(&c.rule, state.as_ref(), c.cost, plan.now);
        statuses.push(LimitStatus {
            limit: c.limit,
            metric: c.metric,
            amount: c.rule.amount(),
            used,
            remaining,
            requested: c.cost,
            reset,
            verdict,
            shadow: c.shadow,
            window_secs: c.rule.window_secs(),
        });
        writes.push((verdict == Verdict::Fits).then_some(next));
        if c.shadow {
            continue;
        }
        match verdict {
            Verdict::Fits => {}
            Verdict::Never => {
                never.get_or_insert(i);
            }
            Verdict::WaitUntil(t) => {
                if wait.is_none_or(|(_, w)| t > w) {
                    wait = Some((i, t));
                }
            }
        }
    }
    let outcome = if let Some(limit) = never {
        Outcome::TooLarge { limit }
    } else if let Some((limit, retry_at)) = wait {
        Outcome::Limited { limit, retry_at }
    } else {
        Outcome::Admitted { reservation: None }
    };
    if !matches!(outcome, Outcome::Admitted { .. }) {
        writes.iter_mut().for_each(|w| *w = None);
        // Nothing was charged: limits that would have fit report their state
        // as it is, not as it would have been after this request.
        for (i, st) in statuses.iter_mut().enumerate() {
            if st.verdict == Verdict::Fits
                && let Some(c) = plan.charges.get(i)
            {
                let state = states.get(i).copied().flatten();
                let now = check(&c.rule, state.as_ref(), 0, plan.now);
                st.used = now.used;
                st.remaining = now.remaining;
                st.reset = now.reset;
            }
        }
    }
    decision.outcome = outcome;
}

/// The charges to remember for settlement of an admitted plan: one for
/// each charge that [`decide_into`] wrote (`writes[i]` for
/// `plan.charges[i]`).
#[inline]
pub fn records<'a>(
    plan: &'a Plan,
    writes: &'a [Option<CounterState>],
) -> impl Iterator<Item = ChargeRecord> + 'a {
    plan.charges.iter().zip(writes).filter(|(_, w)| w.is_some()).map(|(c, _)| ChargeRecord {
        key: c.key,
        metric: c.metric,
        how: ChargedAs::of(&c.rule),
        charged: c.cost,
        hard: c.hard,
    })
}

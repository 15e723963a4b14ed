//! What a tenant has used: every counter its requests can touch, read
//! without charging anything (a dry run at zero cost), and the usage
//! history. Shared by `GET /v1/usage` (the tenant, with its own key), the
//! admin API and the dashboard.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use sluice_core::{
    Ask, Cost, CounterKey, CounterStore, Fact, Instant, LimitStatus, ModelRef, Plan, PlannedCharge,
};
use sluice_store::history::{Counts, Grain, History};

use crate::runtime::Runtime;

/// One counter of a tenant, with how it was found.
#[derive(Clone, Debug)]
pub struct Found {
    /// The counter.
    pub key: CounterKey,
    /// The charge that names it.
    pub charge: PlannedCharge,
    /// The model of its partition.
    pub model: Option<Arc<str>>,
    /// The endpoint of its partition.
    pub endpoint: Arc<str>,
    /// The key of its partition.
    pub key_id: Option<String>,
}

/// Every counter the requests of tenant `index` can touch: each model its
/// tier may use, on each endpoint, with each of its keys (and without),
/// for requests that name no end user (end users are never kept, so their
/// own counters cannot be listed). Returns the tenant's hash too.
pub fn counters_of(rt: &Runtime, index: usize, now: Instant) -> Option<(u64, Vec<Found>)> {
    let tenant = rt.tenants.get(index)?;
    let policy = &rt.policy;
    let keys: Vec<Option<(&sluice_core::KeyFacts, &str)>> = std::iter::once(None)
        .chain(
            rt.keys.values().filter(|k| k.tenant == index).map(|k| Some((&k.facts, k.id.as_str()))),
        )
        .collect();
    let mut models: Vec<(ModelRef, Option<Arc<str>>)> = policy
        .models()
        .map(|(_, m)| (policy.model_ref(&m.name), Some(m.name.clone())))
        .filter(|(r, _)| policy.model_allowed(tenant.facts.tier(), *r))
        .collect();
    models.push((ModelRef::NONE, None));
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (endpoint, info) in policy.endpoints() {
        for (model, model_name) in &models {
            for key in &keys {
                let req = Ask {
                    tenant: &tenant.facts,
                    key: key.as_ref().map(|(k, _)| *k),
                    endpoint,
                    model: *model,
                    cost: Cost::REQUEST,
                    end_user: sluice_core::EndUser::NONE,
                };
                for c in policy.plan(&req, now).charges {
                    if seen.insert(c.key) {
                        out.push(Found {
                            key: c.key,
                            charge: c,
                            model: model_name.clone(),
                            endpoint: info.name.clone(),
                            key_id: key.as_ref().map(|(_, id)| (*id).to_owned()),
                        });
                    }
                }
            }
        }
    }
    Some((tenant.facts.hash(), out))
}

/// A counter of a tenant and its state.
#[derive(Clone, Debug)]
pub struct LimitRow {
    /// How it was found.
    pub found: Found,
    /// Its state (used, remaining, reset…).
    pub status: LimitStatus,
}

/// The state of every counter of tenant `index`, read from the store
/// without charging anything (one dry run).
pub async fn limits_of<S: CounterStore>(
    store: &S,
    rt: &Runtime,
    index: usize,
    now: Instant,
) -> Option<Result<Vec<LimitRow>, S::Error>> {
    let (tenant, found) = counters_of(rt, index, now)?;
    let plan = Plan {
        tenant,
        now,
        lease_until: now,
        slots_until: now,
        charges: found.iter().map(|f| f.charge).collect(),
        price: sluice_core::Price::ZERO,
    };
    let decision = match store.peek(&plan.at_zero_cost()).await {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(found
        .into_iter()
        .zip(decision.statuses)
        .map(|(found, status)| LimitRow { found, status })
        .collect()))
}

/// A row as the admin API and `/v1/usage` show it.
pub fn row_json(rt: &Runtime, row: &LimitRow) -> Option<Value> {
    let (f, s) = (&row.found, &row.status);
    let limit = rt.policy.limit(s.limit)?;
    let mut partition = serde_json::Map::new();
    for fact in &limit.by {
        match fact {
            Fact::Model | Fact::ModelClass => {
                partition.insert(fact.to_string(), json!(f.model.as_deref()));
            }
            Fact::Endpoint => {
                partition.insert("endpoint".into(), json!(&*f.endpoint));
            }
            // End users are never kept: the counter shown is that of the
            // requests that name none, the end user "".
            Fact::User => {
                partition.insert("user".into(), json!(""));
            }
            _ => {
                partition.insert(fact.to_string(), json!(f.key_id));
            }
        }
    }
    let mut row = json!({
        "limit": &*limit.name,
        "description": limit.describe(),
        "metric": limit.metric.as_str(),
        "window": limit.window.map(|w| format!("{} {}", w.period, w.kind.as_str())),
        "partition": partition,
        "amount": s.amount,
        "used": s.used,
        "remaining": s.remaining,
        "reset_at": s.reset.map(Instant::rfc3339),
        "shadow": s.shadow,
    });
    // A budget counts micro-units of the currency; say it in money too.
    if limit.metric.is_money()
        && let Some(obj) = row.as_object_mut()
    {
        let decimal = sluice_core::money::decimal;
        obj.insert(
            "money".into(),
            json!({
                "currency": rt.policy.currency(),
                "amount": decimal(s.amount),
                "used": decimal(s.used),
                "remaining": decimal(s.remaining),
            }),
        );
    }
    Some(row)
}

/// Counts as JSON.
pub fn counts_json(c: &Counts) -> Value {
    let by: serde_json::Map<String, Value> =
        c.limited_by.iter().map(|(l, n)| (l.to_string(), json!(n))).collect();
    json!({
        "requests": c.requests,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "rate_limited": c.limited,
        "rate_limited_by": by,
    })
}

/// A tenant's history as JSON: totals of the last hour, day and week, per
/// model for the day, each minute of the last hour with activity, and its
/// 429s of the last day.
pub fn history_json(history: &History, tenant: &str, now: Instant) -> Value {
    let ago = |secs: u64| Instant::from_secs(now.as_secs().saturating_sub(secs));
    let hour_ago = ago(3_600 - 60);
    let minutes: Vec<Value> = history
        .series(tenant, None, Grain::Minute, hour_ago, 60)
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_empty())
        .map(|(i, c)| {
            let at = Instant::from_secs((hour_ago.as_secs() / 60 + i as u64) * 60);
            let mut v = counts_json(c);
            if let Some(o) = v.as_object_mut() {
                o.insert("at".into(), json!(at.rfc3339()));
            }
            v
        })
        .collect();
    let day = ago(86_400);
    let models: Vec<Value> = history
        .models(tenant)
        .iter()
        .map(|m| {
            let c = history.series(tenant, Some(m), Grain::Hour, day, 25);
            let mut total = Counts::default();
            for h in &c {
                total.add(h);
            }
            let mut v = counts_json(&total);
            if let Some(o) = v.as_object_mut() {
                o.insert("model".into(), if m.is_empty() { Value::Null } else { json!(&**m) });
            }
            v
        })
        .collect();
    let refusals: Vec<Value> = history
        .refusals(tenant, day, 100)
        .iter()
        .map(|r| {
            json!({
                "at": r.at.rfc3339(),
                "model": if r.model.is_empty() { Value::Null } else { json!(&*r.model) },
                "limit": &*r.limit,
                "count": r.count,
            })
        })
        .collect();
    json!({
        "last_hour": counts_json(&history.totals(tenant, hour_ago)),
        "last_day": counts_json(&history.totals(tenant, day)),
        "last_week": counts_json(&history.totals(tenant, ago(7 * 86_400))),
        "models_last_day": models,
        "minutes": minutes,
        "recent_429s": refusals,
    })
}

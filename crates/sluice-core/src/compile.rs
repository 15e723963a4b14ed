//! Specs -> compiled [`Policy`]: names checked, strings interned, tiers
//! flattened and indexed by model.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::facts::EndUser;
use crate::metric::Metric;
use crate::money::Price;
use crate::policy::{
    Candidates, Clause, ClauseSpec, Condition, ConditionSpec, DEFAULT_ENDPOINTS, Endpoint,
    EndpointId, Exemption, Fact, Interner, Limit, LimitId, LimitSet, Model, ModelId, Part, Policy,
    PolicyBuilder, PolicyError, Scope, Tier, TierId, TierSpec, counter_identity, hint, name_hash,
};

/// The tier a policy gets when it declares none.
pub const DEFAULT_TIER: &str = "default";

/// How long a reservation may stay unsettled unless the policy says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15 * 60);

/// Most facts one limit may partition by.
pub const MAX_PARTITION_FACTS: usize = 4;

pub(crate) fn compile(b: &PolicyBuilder) -> Result<Policy, PolicyError> {
    let mut p = Policy {
        name: b.name.clone(),
        models: Vec::new(),
        model_index: hashbrown::HashMap::new(),
        classes: Interner::default(),
        endpoints: Vec::new(),
        endpoint_index: HashMap::new(),
        tiers: Vec::new(),
        tier_index: HashMap::new(),
        default_tier: None,
        limits: Vec::new(),
        limits_by_name: HashMap::new(),
        exemptions: Vec::new(),
        groups: Interner::default(),
        environments: Interner::default(),
        tenant_names: Interner::default(),
        key_names: Interner::default(),
        tenant_label_keys: Interner::default(),
        key_label_keys: Interner::default(),
        label_values: Interner::default(),
        headers: b.headers.clone(),
        lease: b.lease.unwrap_or(DEFAULT_LEASE),
        default_price: b.default_price.unwrap_or(Price::ZERO),
        currency: b.currency.as_deref().unwrap_or("USD").into(),
        end_users: false,
    };

    for (name, class) in &b.models {
        let id = ModelId(p.models.len() as u32);
        if p.model_index.insert(name.as_str().into(), id).is_some() {
            return Err(PolicyError::Duplicate { what: "model", name: name.clone() });
        }
        let class = class.as_deref().map(|c| p.classes.intern(c));
        p.models.push(Model {
            name: name.as_str().into(),
            class,
            hash: name_hash(name),
            price: None,
        });
    }
    for (name, price) in &b.prices {
        let Some(&id) = p.model_index.get(name.as_str()) else {
            return Err(PolicyError::Unknown {
                what: "model (with a price)",
                name: name.clone(),
                hint: hint(p.models.iter().map(|m| &*m.name)),
            });
        };
        p.models[id.index()].price = Some(*price);
    }

    let endpoints: Vec<&str> = if b.endpoints.is_empty() {
        DEFAULT_ENDPOINTS.to_vec()
    } else {
        b.endpoints.iter().map(String::as_str).collect()
    };
    for name in endpoints {
        let id = EndpointId(p.endpoints.len() as u32);
        if p.endpoint_index.insert(name.into(), id).is_some() {
            return Err(PolicyError::Duplicate { what: "endpoint", name: name.to_owned() });
        }
        p.endpoints.push(Endpoint { name: name.into(), hash: name_hash(name) });
    }

    compile_tiers(b, &mut p)?;

    let mut seen: HashSet<(Scope, &str)> = HashSet::new();
    for spec in &b.limits {
        if !seen.insert((spec.scope.clone(), spec.name.as_str())) {
            return Err(PolicyError::Duplicate {
                what: "limit",
                name: format!("{} (in {})", spec.name, spec.scope),
            });
        }
        let limit = compile_limit(spec, &mut p)?;
        let id = LimitId(p.limits.len() as u32);
        p.limits_by_name.entry(spec.name.as_str().into()).or_default().push(id);
        p.limits.push(limit);
    }

    index_tiers(&mut p);

    for e in &b.exemptions {
        let limits = limit_set(&p, &e.limits, "exemption")?;
        let when = compile_condition(&e.when, &mut p)?;
        p.exemptions.push(Exemption { name: e.name.clone(), limits, when });
    }
    mark_body_dependence(&mut p);
    Ok(p)
}

fn compile_tiers(b: &PolicyBuilder, p: &mut Policy) -> Result<(), PolicyError> {
    let mut tiers = b.tiers.clone();
    if tiers.is_empty() {
        tiers.push(TierSpec { name: DEFAULT_TIER.to_owned(), ..TierSpec::default() });
    }
    for spec in &tiers {
        let id = TierId(p.tiers.len() as u32);
        if p.tier_index.insert(spec.name.as_str().into(), id).is_some() {
            return Err(PolicyError::Duplicate { what: "tier", name: spec.name.clone() });
        }
        let allowed_models = match &spec.allowed_models {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|m| {
                        p.model(m).ok_or_else(|| PolicyError::Unknown {
                            what: "model",
                            name: m.clone(),
                            hint: hint(p.models.iter().map(|m| &*m.name)),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        p.tiers.push(Tier {
            name: spec.name.as_str().into(),
            description: spec.description.clone(),
            extends: None,
            by_model: Vec::new(),
            all: Vec::new(),
            allowed_models,
            prices: false,
            max_wait: spec.max_wait,
        });
    }
    for (i, spec) in tiers.iter().enumerate() {
        if let Some(parent) = &spec.extends {
            let pid = p.tier(parent).ok_or_else(|| PolicyError::Unknown {
                what: "tier",
                name: parent.clone(),
                hint: hint(p.tiers.iter().map(|t| &*t.name)),
            })?;
            p.tiers[i].extends = Some(pid);
        }
    }
    for (i, t) in p.tiers.iter().enumerate() {
        let mut at = t.extends;
        let mut steps = 0;
        while let Some(id) = at {
            steps += 1;
            if id.index() == i || steps > p.tiers.len() {
                return Err(PolicyError::Cycle(t.name.to_string()));
            }
            at = p.tiers[id.index()].extends;
        }
    }
    // A tier without its own wait has the one of the tier it extends.
    for i in 0..p.tiers.len() {
        let mut at = Some(TierId(i as u32));
        let mut steps = 0;
        while let Some(id) = at
            && p.tiers[i].max_wait.is_none()
            && steps <= p.tiers.len()
        {
            p.tiers[i].max_wait = p.tiers[id.index()].max_wait;
            at = p.tiers[id.index()].extends;
            steps += 1;
        }
    }
    p.default_tier = match &b.default_tier {
        Some(name) => Some(p.tier(name).ok_or_else(|| PolicyError::Unknown {
            what: "tier",
            name: name.clone(),
            hint: hint(p.tiers.iter().map(|t| &*t.name)),
        })?),
        None => Some(TierId(0)),
    };
    Ok(())
}

fn compile_limit(spec: &crate::policy::LimitSpec, p: &mut Policy) -> Result<Limit, PolicyError> {
    let bad = |reason: String| PolicyError::BadLimit { limit: spec.name.clone(), reason };
    if spec.amount == 0 {
        return Err(bad("the amount must be at least 1 (to stop all traffic, use an amount of 1 with a long window, or remove the model)".into()));
    }
    match (spec.metric, &spec.window) {
        (Metric::Concurrent, Some(_)) => {
            return Err(bad(
                "a `concurrent` limit counts requests in flight and takes no window".into()
            ));
        }
        (Metric::Concurrent, None) => {}
        (_, None) => return Err(bad(format!("a `{}` limit needs a window", spec.metric))),
        (_, Some(w)) => w
            .validate(spec.amount)
            .map_err(|source| PolicyError::BadWindow { limit: spec.name.clone(), source })?,
    }
    if let Some(burst) = spec.burst {
        if burst == 0 {
            return Err(bad("`burst` must be at least 1".into()));
        }
        if spec.window.is_none_or(|w| w.kind != crate::window::WindowKind::Rolling) {
            return Err(bad("`burst` only applies to rolling windows".into()));
        }
    }
    match &spec.scope {
        Scope::Global => {}
        Scope::Tier(t) => {
            if p.tier(t).is_none() {
                return Err(PolicyError::Unknown {
                    what: "tier",
                    name: t.clone(),
                    hint: hint(p.tiers.iter().map(|t| &*t.name)),
                });
            }
        }
        Scope::Group(g) => {
            p.groups.intern(g);
        }
    }
    if spec.by.len() > MAX_PARTITION_FACTS {
        return Err(bad(format!("`by` may name at most {MAX_PARTITION_FACTS} facts")));
    }
    let mut parts = SmallVec::new();
    for fact in &spec.by {
        parts.push(match fact {
            Fact::Key => Part::Key,
            Fact::KeyLabel(l) => Part::KeyLabel(p.key_label_keys.intern(l), name_hash(l)),
            Fact::Endpoint => Part::Endpoint,
            Fact::Model => Part::Model,
            Fact::ModelClass => Part::ModelClass,
            Fact::User => Part::User,
            other => {
                return Err(bad(format!(
                    "`by` cannot split a tenant's counter by `{other}` (it is the same for every request of a tenant); use model, endpoint, model_class, key, key.<label> or user"
                )));
            }
        });
    }
    let mut when = compile_condition(&spec.when, p)?;
    if let Scope::Group(g) = &spec.scope {
        when.push(Clause::Group(SmallVec::from_slice(&[p.groups.intern(g)])));
    }
    let mut unless = SmallVec::new();
    for u in &spec.unless {
        unless.push(compile_condition(u, p)?);
    }
    let counter = counter_identity(spec);
    Ok(Limit {
        name: spec.name.as_str().into(),
        scope: spec.scope.clone(),
        metric: spec.metric,
        amount: spec.amount,
        burst: spec.burst,
        window: spec.window,
        by: spec.by.clone(),
        shadow: spec.shadow,
        identity: name_hash(&counter),
        counter: Arc::from(counter),
        origin: spec.origin.clone(),
        max_wait: spec.max_wait,
        hard: spec.hard,
        when_spec: spec.when.clone(),
        unless_spec: spec.unless.clone(),
        when,
        unless,
        parts,
        // Set once the exemptions are known (`mark_body_dependence`).
        needs_body: false,
    })
}

/// Whether a condition looks at the end user.
fn names_user(cond: &Condition) -> bool {
    cond.iter().any(|c| matches!(c, Clause::User(_)))
}

/// Whether a condition looks at what a request's body says: its model
/// (or the model's class) or its end user.
fn names_body(cond: &Condition) -> bool {
    cond.iter().any(|c| matches!(c, Clause::Model(_) | Clause::ModelClass(_) | Clause::User(_)))
}

/// Marks the limits whose applicability or counter depends on the body
/// (the model or the end user): split by it, conditioned on it, or covered
/// by an exemption that is; and whether the policy looks at end users at
/// all.
fn mark_body_dependence(p: &mut Policy) {
    let exempted_by_body: Vec<&LimitSet> =
        p.exemptions.iter().filter(|e| names_body(&e.when)).map(|e| &e.limits).collect();
    let marks: Vec<bool> = p
        .limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let id = LimitId(i as u32);
            l.parts.iter().any(|part| matches!(part, Part::Model | Part::ModelClass | Part::User))
                || names_body(&l.when)
                || l.unless.iter().any(names_body)
                || exempted_by_body.iter().any(|s| s.contains(id))
        })
        .collect();
    // Limits that share a counter are planned as one charge (the stricter
    // decides): if one of them needs the body, the counter's charge does.
    let shared: HashSet<u64> =
        p.limits.iter().zip(&marks).filter(|(_, m)| **m).map(|(l, _)| l.identity).collect();
    for (l, m) in p.limits.iter_mut().zip(marks) {
        l.needs_body = m || shared.contains(&l.identity);
    }
    p.end_users = p.limits.iter().any(|l| {
        l.parts.contains(&Part::User) || names_user(&l.when) || l.unless.iter().any(names_user)
    }) || p.exemptions.iter().any(|e| names_user(&e.when));
}

pub(crate) fn compile_condition(
    spec: &ConditionSpec,
    p: &mut Policy,
) -> Result<Condition, PolicyError> {
    spec.iter().map(|c| compile_clause(c, p)).collect()
}

fn compile_clause(c: &ClauseSpec, p: &mut Policy) -> Result<Clause, PolicyError> {
    let v = &c.values;
    fn syms(v: &[String], i: &mut Interner) -> SmallVec<[crate::policy::Sym; 4]> {
        v.iter().map(|s| i.intern(s)).collect()
    }
    Ok(match &c.fact {
        Fact::Tenant => Clause::Tenant(syms(v, &mut p.tenant_names)),
        Fact::Environment => Clause::Environment(syms(v, &mut p.environments)),
        Fact::Group => Clause::Group(syms(v, &mut p.groups)),
        Fact::Key => Clause::Key(syms(v, &mut p.key_names)),
        Fact::TenantLabel(k) => {
            Clause::TenantLabel(p.tenant_label_keys.intern(k), syms(v, &mut p.label_values))
        }
        Fact::KeyLabel(k) => {
            Clause::KeyLabel(p.key_label_keys.intern(k), syms(v, &mut p.label_values))
        }
        Fact::Tier => Clause::Tier(
            v.iter()
                .map(|t| {
                    p.tier(t).ok_or_else(|| PolicyError::Unknown {
                        what: "tier",
                        name: t.clone(),
                        hint: hint(p.tiers.iter().map(|t| &*t.name)),
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Fact::Endpoint => Clause::Endpoint(
            v.iter()
                .map(|e| {
                    p.endpoint(e).ok_or_else(|| PolicyError::Unknown {
                        what: "endpoint",
                        name: e.clone(),
                        hint: hint(p.endpoints.iter().map(|e| &*e.name)),
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Fact::Model => Clause::Model(
            v.iter()
                .map(|m| {
                    p.model(m).ok_or_else(|| PolicyError::Unknown {
                        what: "model",
                        name: m.clone(),
                        hint: hint(p.models.iter().map(|m| &*m.name)),
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        // Hashed, as requests carry them: end users are never interned.
        Fact::User => Clause::User(v.iter().map(|u| EndUser::of(u).hash()).collect()),
        Fact::ModelClass => Clause::ModelClass(
            v.iter()
                .map(|c| {
                    let sym = p.classes.get(c);
                    if sym == crate::policy::Sym::NONE {
                        Err(PolicyError::Unknown {
                            what: "model class",
                            name: c.clone(),
                            hint: hint(p.classes_iter()),
                        })
                    } else {
                        Ok(sym)
                    }
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

impl Policy {
    fn classes_iter(&self) -> impl Iterator<Item = &str> {
        self.models
            .iter()
            .filter_map(|m| m.class.map(|c| self.classes.name(c)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
    }
}

/// Which limits can apply to each tier, and of those, which to each model.
fn index_tiers(p: &mut Policy) {
    let n_models = p.models.len();
    for t in 0..p.tiers.len() {
        // Own limits first, then each ancestor's, skipping names already taken
        // (a tier that extends another replaces the parent's limit of the
        // same name), then the global and group limits.
        let mut chain = vec![t];
        let mut at = p.tiers[t].extends;
        while let Some(id) = at {
            chain.push(id.index());
            at = p.tiers[id.index()].extends;
        }
        let mut names: HashSet<Arc<str>> = HashSet::new();
        let mut all = Vec::new();
        for &tier in &chain {
            let tname = &p.tiers[tier].name;
            for (i, l) in p.limits.iter().enumerate() {
                if matches!(&l.scope, Scope::Tier(s) if **s == **tname)
                    && names.insert(l.name.clone())
                {
                    all.push(LimitId(i as u32));
                }
            }
        }
        for (i, l) in p.limits.iter().enumerate() {
            if matches!(l.scope, Scope::Global | Scope::Group(_)) {
                all.push(LimitId(i as u32));
            }
        }
        all.sort_unstable();
        let tier = TierId(t as u32);
        let mut by_model = vec![Candidates::default(); n_models + 1];
        for &id in &all {
            let l = &p.limits[id.index()];
            let models = l.when.iter().find_map(|c| match c {
                Clause::Model(ms) => Some(ms),
                _ => None,
            });
            // Whether the conditions hold for every request of this tier
            // and of the model of slot `slot`.
            let always = |slot: usize| {
                l.unless.is_empty()
                    && l.when.iter().all(|clause| match clause {
                        Clause::Tier(v) => v.contains(&tier),
                        Clause::Model(v) => v.iter().any(|m| m.index() == slot),
                        _ => false,
                    })
            };
            match models {
                None => by_model
                    .iter_mut()
                    .enumerate()
                    .for_each(|(slot, c)| c.limits.push((id, always(slot)))),
                Some(ms) => {
                    ms.iter()
                        .for_each(|m| by_model[m.index()].limits.push((id, always(m.index()))));
                }
            }
        }
        for c in &mut by_model {
            let mut seen = HashSet::new();
            c.distinct = c.limits.iter().all(|(id, _)| seen.insert(p.limits[id.index()].identity));
        }
        p.tiers[t].prices = all.iter().any(|id| p.limits[id.index()].metric == Metric::Cost);
        p.tiers[t].all = all;
        p.tiers[t].by_model = by_model;
    }
}

/// Limit names (or `*`) to a set of ids.
pub(crate) fn limit_set(
    p: &Policy,
    names: &[String],
    what: &'static str,
) -> Result<LimitSet, PolicyError> {
    if names.is_empty() || names.iter().any(|n| n == "*") {
        return Ok(LimitSet::All);
    }
    let mut ids = SmallVec::new();
    for n in names {
        let found = p.limits_named(n);
        if found.is_empty() {
            return Err(PolicyError::Unknown {
                what: if what == "exemption" { "limit (in an exemption)" } else { "limit" },
                name: n.clone(),
                hint: hint(
                    p.limits
                        .iter()
                        .map(|l| &*l.name)
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter(),
                ),
            });
        }
        ids.extend_from_slice(found);
    }
    Ok(LimitSet::Some(ids))
}

//! The effective limits of a policy, as tables a person can hold against the
//! provider's page: one table per tier with a row per model, then every other
//! limit in words.

use std::collections::BTreeMap;
use std::fmt::Write;

use sluice_core::{
    ClauseSpec, Fact, Limit, LimitId, Policy, ResetFormat, Scope, TierId, WindowKind,
};

use crate::Config;

/// `12000` -> `12,000`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clause(c: &ClauseSpec) -> String {
    match c.values.as_slice() {
        [one] => format!("{} = {one}", c.fact),
        many => format!("{} in [{}]", c.fact, many.join(", ")),
    }
}

fn conjunction(cs: &[ClauseSpec]) -> String {
    cs.iter().map(clause).collect::<Vec<_>>().join(" and ")
}

/// A limit in words: `500 requests per minute (rolling), per endpoint, when
/// endpoint in [chat], unless environment = sandbox and key.channel = apex`.
pub fn describe(policy: &Policy, l: &Limit) -> String {
    let amount = if l.metric.is_money() {
        policy.format_amount(l.metric, l.amount)
    } else {
        thousands(l.amount)
    };
    let mut s = format!("{amount} {}", l.describe());
    if let Some(w) = &l.window {
        let _ = write!(s, " ({})", w.kind.as_str());
    }
    if let Some(b) = l.burst {
        let _ = write!(s, ", burst {}", thousands(b));
    }
    if !l.by.is_empty() {
        let by: Vec<String> =
            l.by.iter()
                .map(|f| if *f == Fact::User { "end user".to_owned() } else { f.to_string() })
                .collect();
        let _ = write!(s, ", per {}", by.join(" and "));
    } else {
        s.push_str(", across everything the tenant does");
    }
    if !l.when_spec.is_empty() {
        let _ = write!(s, ", when {}", conjunction(&l.when_spec));
    }
    match l.max_wait {
        Some(w) if w.is_zero() => s.push_str(", no wait"),
        Some(w) => {
            let _ = write!(s, ", waits up to {w:?}");
        }
        None => {}
    }
    if !l.unless_spec.is_empty() {
        let alts: Vec<String> = l.unless_spec.iter().map(|u| conjunction(u)).collect();
        let _ = write!(s, ", unless {}", alts.join(", or "));
    }
    if l.shadow {
        s.push_str(" [shadow: reported, never denies]");
    }
    s
}

/// Whether a limit is a cell of a per-model table: split by model, applying
/// to one model, nothing else.
fn model_cell(l: &Limit) -> Option<&str> {
    match (l.when_spec.as_slice(), l.unless_spec.is_empty(), l.by.as_slice()) {
        ([ClauseSpec { fact: Fact::Model, values }], true, [Fact::Model]) if values.len() == 1 => {
            values.first().map(String::as_str)
        }
        _ => None,
    }
}

fn table(
    out: &mut String,
    policy: &Policy,
    config: &Config,
    ids: &[LimitId],
    indent: &str,
) -> Vec<LimitId> {
    // Columns: each distinct shorthand among the model cells.
    let mut columns: Vec<String> = Vec::new();
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut cells: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut rest = Vec::new();
    for &id in ids {
        let Some(l) = policy.limit(id) else { continue };
        match model_cell(l) {
            Some(model) if !l.shadow => {
                let col = l.shorthand();
                if !columns.contains(&col) {
                    columns.push(col.clone());
                }
                if let Some(w) = &l.window {
                    kinds.insert(
                        col.clone(),
                        match w.kind {
                            WindowKind::Rolling => "rolling".into(),
                            WindowKind::Calendar => "calendar".into(),
                        },
                    );
                }
                cells.insert((model, col), l.amount);
            }
            _ => rest.push(id),
        }
    }
    if !columns.is_empty() {
        let mut models: Vec<(&str, String, String)> = policy
            .models()
            .filter(|(_, m)| columns.iter().any(|c| cells.contains_key(&(&*m.name, c.clone()))))
            .map(|(_, m)| {
                let class = m.class.map(|c| policy.class_name(c).to_owned()).unwrap_or_default();
                let dev = config
                    .developers
                    .iter()
                    .find(|(name, _)| **name == *m.name)
                    .map(|(_, d)| d.clone())
                    .unwrap_or_default();
                (&*m.name, class, dev)
            })
            .collect();
        // Group rows by class, classes in the order they first appear (the
        // provider pages have one table per class).
        let mut class_order: Vec<String> = Vec::new();
        for (_, c, _) in &models {
            if !class_order.contains(c) {
                class_order.push(c.clone());
            }
        }
        models.sort_by_key(|(_, c, _)| class_order.iter().position(|x| x == c));
        let any_dev = models.iter().any(|(_, _, d)| !d.is_empty());
        let wm = models.iter().map(|(m, _, _)| m.len()).max().unwrap_or(5).max(5);
        let wc = models.iter().map(|(_, c, _)| c.len()).max().unwrap_or(5).max(5);
        let wd = models.iter().map(|(_, _, d)| d.len()).max().unwrap_or(9).max(9);
        let widths: Vec<usize> = columns
            .iter()
            .map(|c| {
                models
                    .iter()
                    .filter_map(|(m, _, _)| cells.get(&(*m, c.clone())))
                    .map(|v| thousands(*v).len())
                    .max()
                    .unwrap_or(1)
                    .max(c.len())
            })
            .collect();
        let _ = write!(out, "{indent}");
        if any_dev {
            let _ = write!(out, "{:<wd$}  ", "developer");
        }
        let _ = write!(out, "{:<wm$}  {:<wc$}", "model", "class");
        for (c, w) in columns.iter().zip(&widths) {
            let _ = write!(out, "  {c:>w$}");
        }
        out.push('\n');
        for (m, class, dev) in &models {
            let _ = write!(out, "{indent}");
            if any_dev {
                let _ = write!(out, "{dev:<wd$}  ");
            }
            let _ = write!(out, "{m:<wm$}  {class:<wc$}");
            for (c, w) in columns.iter().zip(&widths) {
                let v =
                    cells.get(&(*m, c.clone())).map_or_else(|| "-".to_owned(), |v| thousands(*v));
                let _ = write!(out, "  {v:>w$}");
            }
            out.push('\n');
        }
        let legend: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} {}", kinds.get(c).map_or("", String::as_str)))
            .collect();
        let _ = writeln!(out, "{indent}({}; each model counted on its own)", legend.join(", "));
    }
    rest
}

fn tier_name(policy: &Policy, id: TierId) -> String {
    policy.tier_info(id).map_or_else(|| "?".into(), |t| t.name.to_string())
}

/// The whole report.
pub fn effective_limits(config: &Config) -> String {
    let policy = &config.policy;
    let mut out = String::new();
    let _ = writeln!(out, "policy {}", policy.name());
    if let Some(d) = &config.description {
        let _ = writeln!(out, "  {d}");
    }
    for s in &config.sources {
        let _ = writeln!(out, "  source: {s}");
    }
    let h = policy.headers();
    let fams: Vec<String> =
        h.families.iter().map(|f| format!("x-ratelimit-*-{}", f.suffix())).collect();
    let reset = match h.reset {
        ResetFormat::Duration => "as a duration (6m0s)",
        ResetFormat::Seconds => "in seconds (360.5)",
        ResetFormat::Epoch => "as Unix epoch seconds",
        ResetFormat::Omit => "not sent",
    };
    let _ = writeln!(
        out,
        "  headers: {}; reset {reset}{}",
        if fams.is_empty() { "none".into() } else { fams.join(", ") },
        if h.ietf { "; IETF RateLimit fields" } else { "" }
    );
    let _ = writeln!(out, "  reservations expire after {}s unsettled", policy.lease().as_secs());
    let end_users = &config.gateway.end_users;
    if policy.looks_at_end_users() || *end_users != crate::end_users::EndUsersConfig::default() {
        let _ = writeln!(out, "  {}", end_users.describe());
    }
    if policy.limits().any(|(_, l)| l.metric.is_money()) {
        let _ = writeln!(
            out,
            "  prices per million tokens ({}: input / cached input / output):",
            policy.currency()
        );
        let price = |p: sluice_core::Price| {
            let d = sluice_core::money::decimal;
            format!("{} / {} / {}", d(p.input), d(p.cached_input), d(p.output))
        };
        for (_, m) in policy.models() {
            if let Some(p) = m.price {
                let _ = writeln!(out, "    {}: {}", m.name, price(p));
            }
        }
        let _ = writeln!(out, "    any other model: {}", price(policy.default_price()));
    }

    for (tid, tier) in policy.tiers() {
        out.push('\n');
        let mut head = format!("tier {}", tier.name);
        if policy.default_tier() == Some(tid) {
            head.push_str(" (default)");
        }
        if let Some(p) = tier.extends {
            let _ = write!(head, ", extends {}", tier_name(policy, p));
        }
        if let Some(w) = tier.max_wait.filter(|w| !w.is_zero()) {
            let _ = write!(head, ", refused requests wait up to {w:?} for room");
        }
        if let Some(d) = &tier.description {
            let _ = write!(head, ": {d}");
        }
        let _ = writeln!(out, "{head}");
        let ids: Vec<LimitId> = policy
            .tier_limits(tid)
            .iter()
            .copied()
            .filter(|&id| policy.limit(id).is_some_and(|l| !matches!(l.scope, Scope::Group(_))))
            .collect();
        if ids.is_empty() {
            let _ = writeln!(out, "  no limits");
            continue;
        }
        let rest = table(&mut out, policy, config, &ids, "  ");
        for id in rest {
            if let Some(l) = policy.limit(id) {
                let _ =
                    writeln!(out, "  {:<10} {}  [{}]", l.shorthand(), describe(policy, l), l.name);
            }
        }
        // The names `sluice tenants grant` and `usage --reset` take.
        let mut names: Vec<&str> =
            ids.iter().filter_map(|&id| policy.limit(id)).map(|l| &*l.name).collect();
        names.dedup();
        let _ = writeln!(out, "  limit names: {}", names.join(", "));
    }

    let mut groups: BTreeMap<String, Vec<LimitId>> = BTreeMap::new();
    for (id, l) in policy.limits() {
        if let Scope::Group(g) = &l.scope {
            groups.entry(g.clone()).or_default().push(id);
        }
    }
    for (g, ids) in groups {
        out.push('\n');
        let _ =
            writeln!(out, "group {g} (every tier; each tenant in the group counted on its own)");
        let rest = table(&mut out, policy, config, &ids, "  ");
        for id in rest {
            if let Some(l) = policy.limit(id) {
                let _ =
                    writeln!(out, "  {:<10} {}  [{}]", l.shorthand(), describe(policy, l), l.name);
            }
        }
        // The names `sluice tenants grant` and `usage --reset` take.
        let mut names: Vec<&str> =
            ids.iter().filter_map(|&id| policy.limit(id)).map(|l| &*l.name).collect();
        names.dedup();
        let _ = writeln!(out, "  limit names: {}", names.join(", "));
    }

    if !policy.exemptions().is_empty() {
        out.push('\n');
        let _ = writeln!(out, "exemptions");
        for e in policy.exemptions() {
            let what = match &e.limits {
                sluice_core::LimitSet::All | sluice_core::LimitSet::Nothing => {
                    "every limit".to_owned()
                }
                sluice_core::LimitSet::Some(ids) => {
                    let mut names: Vec<String> = ids
                        .iter()
                        .filter_map(|&i| policy.limit(i))
                        .map(|l| l.name.to_string())
                        .collect();
                    names.dedup();
                    names.join(", ")
                }
            };
            let _ = writeln!(out, "  {}: {what}", e.name);
        }
    }
    if !config.tenants.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "tenants");
        for t in &config.tenants {
            let tier = t.spec.tier.clone().unwrap_or_else(|| {
                policy.default_tier().map_or_else(String::new, |d| tier_name(policy, d))
            });
            let mut line = format!("  {}: tier {tier}", t.spec.id);
            if let Some(e) = &t.spec.environment {
                let _ = write!(line, ", environment {e}");
            }
            if !t.spec.groups.is_empty() {
                let _ = write!(line, ", groups {}", t.spec.groups.join(", "));
            }
            let _ = write!(line, ", {} key(s)", t.keys.len());
            let amount = |o: &sluice_core::OverrideSpec| {
                let money = policy
                    .limits_named(&o.limit)
                    .iter()
                    .any(|&l| policy.limit(l).is_some_and(|l| l.metric.is_money()));
                if money {
                    policy.format_amount(sluice_core::Metric::Cost, o.amount)
                } else {
                    thousands(o.amount)
                }
            };
            for o in &t.spec.overrides {
                let _ = write!(line, ", {} raised to {}", o.limit, amount(o));
            }
            // Key grants: each key's own amount of a limit split by key.
            for k in &t.keys {
                for o in &k.spec.overrides {
                    let _ = write!(line, ", key {} granted {} {}", k.spec.id, o.limit, amount(o));
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(20_000_000), "20,000,000");
    }

    /// A policy that looks at end users says where they are read from and
    /// what happens without one; one that does not says nothing of them.
    #[test]
    fn end_users_are_reported_when_they_matter() {
        let text = "[models.m]\n[[limits]]\nname = \"end-user-rpm\"\nmetric = \"requests\"\namount = 20\nwindow = \"1m\"\nby = [\"user\"]\n";
        let report = effective_limits(&crate::parse(text, "p.toml").expect("a policy"));
        assert!(
            report.contains("  end users: from the body's `user`; requests that name none share one budget per tenant; at most 256 bytes\n"),
            "{report}"
        );
        assert!(report.contains("20 requests per minute (rolling), per end user"), "{report}");
        let plain = effective_limits(&crate::parse("[models.m]\n", "p.toml").expect("a policy"));
        assert!(!plain.contains("end users"), "{plain}");
    }
}

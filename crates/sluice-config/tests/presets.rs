#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The presets in `examples/` load, and say what the provider documents say.
//!
//! `tests/providers/limits.json` (in the repository) holds every number of the
//! provider pages as data, with each page's title and address; each preset is
//! checked against it: every number is a limit of the compiled policy, for the
//! right model, tier and window, and the per-model tables hold nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_config::Config;
use sluice_core::{ClauseSpec, Fact, Limit, LimitSet, Metric, Period, Policy, Scope, WindowKind};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn examples_dir() -> PathBuf {
    repo_root().join("examples")
}

fn preset(name: &str) -> Config {
    let path = examples_dir().join(format!("{name}.toml"));
    sluice_config::load(&path).unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()))
}

/// `tests/providers/limits.json`: the provider numbers, kept in the repository.
fn limits_json() -> Value {
    let path = repo_root().join("tests/providers/limits.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the provider numbers at {} ({e})", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn section<'a>(json: &'a Value, key: &str) -> &'a Value {
    json.get(key).unwrap_or_else(|| panic!("limits.json has no `{key}`"))
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("limits.json: `{key}` is not a list in {v}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("no string `{key}` in {v}"))
}

fn period(s: &str) -> Period {
    s.parse().unwrap()
}

/// A column of the provider tables: metric and window.
fn column(key: &str) -> Option<(Metric, Period)> {
    Some(match key {
        "rpm" => (Metric::Requests, period("1m")),
        "rph" => (Metric::Requests, period("1h")),
        "rpd" => (Metric::Requests, period("1d")),
        "tpm" => (Metric::Tokens, period("1m")),
        "tpd" => (Metric::Tokens, period("1d")),
        _ => return None,
    })
}

/// One cell of a per-model table: `(model, metric, window, amount)`.
type Cell = (String, Metric, String, u64);

/// The cells a list of `{ "model": …, "rpm": …, … }` rows gives.
fn expected_cells(rows: &[Value]) -> Vec<Cell> {
    let mut out = Vec::new();
    for row in rows {
        let model = str_of(row, "model");
        let obj = row.as_object().unwrap();
        for (key, value) in obj {
            if key == "model" {
                continue;
            }
            let (metric, p) =
                column(key).unwrap_or_else(|| panic!("limits.json: unknown column `{key}`"));
            let amount = value.as_u64().unwrap_or_else(|| panic!("not a number: {value}"));
            out.push((model.to_owned(), metric, p.to_string(), amount));
        }
    }
    out.sort();
    out
}

/// The model a limit is a table cell of: split by model, applying to that one
/// model, nothing else.
fn cell_model(l: &Limit) -> Option<&str> {
    match (l.when_spec.as_slice(), l.by.as_slice(), l.unless_spec.is_empty()) {
        ([ClauseSpec { fact: Fact::Model, values }], [Fact::Model], true) if values.len() == 1 => {
            Some(values[0].as_str())
        }
        _ => None,
    }
}

fn cell_of(l: &Limit) -> Option<Cell> {
    let model = cell_model(l)?;
    let w = l.window.unwrap_or_else(|| panic!("table cell `{}` has no window", l.name));
    Some((model.to_owned(), l.metric, w.period.to_string(), l.amount))
}

/// Every table cell written in `scope`, sorted.
fn cells_in_scope(policy: &Policy, scope: &Scope) -> Vec<Cell> {
    let mut v: Vec<Cell> = policy
        .limits()
        .filter(|(_, l)| &l.scope == scope)
        .filter_map(|(_, l)| cell_of(l))
        .collect();
    v.sort();
    v
}

/// Every table cell that applies to tenants of `tier` (its own, its parents',
/// and any written at the top level), sorted.
fn cells_for_tier(policy: &Policy, tier: &str) -> Vec<Cell> {
    let tid = policy.tier(tier).unwrap_or_else(|| panic!("no tier `{tier}`"));
    let mut v: Vec<Cell> = policy
        .tier_limits(tid)
        .iter()
        .filter_map(|&id| policy.limit(id))
        .filter_map(cell_of)
        .collect();
    v.sort();
    v
}

/// Every table cell of the policy, wherever written, sorted.
fn all_cells(policy: &Policy) -> Vec<Cell> {
    let mut v: Vec<Cell> = policy.limits().filter_map(|(_, l)| cell_of(l)).collect();
    v.sort();
    v
}

fn tier_names(policy: &Policy) -> BTreeSet<String> {
    policy.tiers().map(|(_, t)| t.name.to_string()).collect()
}

/// Model -> class name, for every model of the policy.
fn classes(policy: &Policy) -> BTreeMap<String, String> {
    policy
        .models()
        .map(|(_, m)| {
            let class = m.class.map(|c| policy.class_name(c).to_owned()).unwrap_or_default();
            (m.name.to_string(), class)
        })
        .collect()
}

/// Model -> class from `{ "production": [...], "preview": [...] }`.
fn expected_classes(v: &Value, map: &mut BTreeMap<String, String>) {
    for class in ["production", "preview"] {
        for row in array(v, class) {
            let model = str_of(row, "model").to_owned();
            if let Some(prev) = map.insert(model.clone(), class.to_owned()) {
                assert_eq!(prev, class, "limits.json lists `{model}` as {prev} and {class}");
            }
        }
    }
}

/// Minute windows refill continuously; day windows reset at the calendar
/// boundary (what the SambaNova and Llama presets promise).
fn check_window_kinds(policy: &Policy, preset: &str) {
    for (_, l) in policy.limits() {
        let Some(w) = l.window else { continue };
        if w.period == period("1m") {
            assert_eq!(w.kind, WindowKind::Rolling, "{preset}: `{}` per minute", l.name);
        }
        if w.period == period("1d") {
            assert_eq!(w.kind, WindowKind::Calendar, "{preset}: `{}` per day", l.name);
        }
    }
}

fn no_partition_by_key(policy: &Policy, preset: &str) {
    for (_, l) in policy.limits() {
        assert!(
            !l.by.iter().any(|f| matches!(f, Fact::Key | Fact::KeyLabel(_))),
            "{preset}: `{}` is split by key, but the budget belongs to the whole tenant",
            l.name
        );
    }
}

// ---------------------------------------------------------------------------

const PRESETS: [&str; 5] =
    ["llama-api", "salesforce-models-api", "sambanova-cloud", "sambanova-cloud-2025", "sambastack"];

#[test]
fn every_preset_loads() {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = sluice_config::load(&path)
                .unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()));
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert_eq!(config.policy.name(), stem, "{}: [policy] name", path.display());
            assert!(config.policy.limits().count() > 0, "{}: no limits", path.display());
            if PRESETS.contains(&stem.as_str()) {
                // A provider preset says where its numbers come from.
                assert!(!config.sources.is_empty(), "{}: no source", path.display());
            }
            found.push(stem);
        }
    }
    found.sort();
    for name in PRESETS {
        assert!(
            found.iter().any(|f| f == name),
            "examples/{name}.toml is missing; found {found:?}"
        );
    }
}

/// The preset that reproduces each provider page of `limits.json`.
const PAGE_PRESETS: [(&str, &str); 4] = [
    ("sambanova-cloud", "sambanova-cloud"),
    ("sambanova-cloud-2025", "sambanova-cloud-2025"),
    ("llama-api", "llama-api"),
    ("salesforce-models-api", "salesforce-models-api"),
];

#[test]
fn every_preset_cites_the_page_its_numbers_come_from() {
    let json = limits_json();
    for (provider, preset) in PAGE_PRESETS {
        let source = section(section(&json, provider), "source");
        let url = str_of(source, "url");
        assert!(url.starts_with("https://"), "{provider}: source url {url:?}");
        assert!(!str_of(source, "title").is_empty(), "{provider}: a source without a title");
        let path = examples_dir().join(format!("{preset}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let header: String =
            text.lines().take_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
        assert!(
            header.contains(url),
            "examples/{preset}.toml does not cite {url} (the page of `{provider}` in \
             tests/providers/limits.json) in its header"
        );
    }
}

// ---------------------------------------------------------------------------
// SambaNova Cloud, the newer page.
// ---------------------------------------------------------------------------

#[test]
fn sambanova_cloud_matches_its_document() {
    let json = limits_json();
    check_sambanova_cloud(section(&json, "sambanova-cloud"), &preset("sambanova-cloud").policy);
}

fn check_sambanova_cloud(doc: &Value, policy: &Policy) {
    let tiers = section(doc, "tiers").as_object().unwrap();
    let want_tiers: BTreeSet<String> = tiers.keys().cloned().collect();
    assert_eq!(tier_names(policy), want_tiers, "tiers");

    let mut want_classes = BTreeMap::new();
    for (tier, t) in tiers {
        expected_classes(t, &mut want_classes);

        // The per-model table of this tier, exactly.
        let mut rows = array(t, "production").to_vec();
        rows.extend_from_slice(array(t, "preview"));
        let want = expected_cells(&rows);
        assert_eq!(
            cells_in_scope(policy, &Scope::Tier(tier.clone())),
            want,
            "tier {tier}: the per-model table"
        );
        assert_eq!(cells_for_tier(policy, tier), want, "tier {tier}: cells that apply to it");

        // Only the listed models are available to the tier.
        let tid = policy.tier(tier).unwrap();
        let listed: BTreeSet<&str> = rows.iter().map(|r| str_of(r, "model")).collect();
        for (_, m) in policy.models() {
            assert_eq!(
                policy.model_allowed(tid, policy.model_ref(&m.name)),
                listed.contains(&*m.name),
                "tier {tier}: is `{}` available",
                m.name
            );
        }

        // Limits that are not table cells: the developer tier's daily token cap.
        let others: Vec<&Limit> = policy
            .tier_limits(tid)
            .iter()
            .filter_map(|&id| policy.limit(id))
            .filter(|l| cell_model(l).is_none())
            .collect();
        match t.get("tokens_per_day_across_all_models").and_then(Value::as_u64) {
            None => assert!(others.is_empty(), "tier {tier}: unexpected limits {others:?}"),
            Some(amount) => {
                assert_eq!(amount, 20_000_000);
                assert_eq!(others.len(), 1, "tier {tier}: {others:?}");
                let l = others[0];
                assert_eq!(l.amount, amount, "{}", l.name);
                assert_eq!(l.metric, Metric::Tokens, "{}", l.name);
                assert_eq!(l.window.map(|w| w.period), Some(period("1d")), "{}", l.name);
                assert_eq!(l.scope, Scope::Tier(tier.clone()), "{}", l.name);
                assert!(l.when_spec.is_empty(), "across all models: {:?}", l.when_spec);
                assert!(l.unless_spec.is_empty(), "{:?}", l.unless_spec);
                assert!(l.by.is_empty(), "one counter across all models: {:?}", l.by);
            }
        }
    }
    assert_eq!(classes(policy), want_classes, "model classes");
    assert_eq!(all_cells(policy).len(), 5 * 3 + 6 * 2, "cells of both tables and nothing else");
    check_window_kinds(policy, "sambanova-cloud");
    no_partition_by_key(policy, "sambanova-cloud");
}

// ---------------------------------------------------------------------------
// SambaNova Cloud, the older page: one table for every tier.
// ---------------------------------------------------------------------------

#[test]
fn sambanova_cloud_2025_matches_its_document() {
    let json = limits_json();
    check_sambanova_cloud_2025(
        section(&json, "sambanova-cloud-2025"),
        &preset("sambanova-cloud-2025").policy,
    );
}

fn check_sambanova_cloud_2025(doc: &Value, policy: &Policy) {
    // "free (no payment method)" -> free
    let want_tiers: BTreeSet<String> = array(doc, "tiers")
        .iter()
        .map(|t| t.as_str().unwrap().split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(tier_names(policy), want_tiers, "tiers");

    let mut rows = array(doc, "production").to_vec();
    rows.extend_from_slice(array(doc, "preview"));
    let want = expected_cells(&rows);
    assert_eq!(want.len(), 11 * 2);

    // The page gives one table for every tier: each tier gets all of it.
    for tier in &want_tiers {
        assert_eq!(cells_for_tier(policy, tier), want, "tier {tier}: cells that apply to it");
        let tid = policy.tier(tier).unwrap();
        let others: Vec<&str> = policy
            .tier_limits(tid)
            .iter()
            .filter_map(|&id| policy.limit(id))
            .filter(|l| cell_model(l).is_none())
            .map(|l| &*l.name)
            .collect();
        assert!(others.is_empty(), "tier {tier}: limits the page does not give: {others:?}");
    }
    // Written once, not once per tier.
    assert_eq!(all_cells(policy), want, "the per-model table");

    let mut want_classes = BTreeMap::new();
    expected_classes(doc, &mut want_classes);
    assert_eq!(classes(policy), want_classes, "model classes");
    for (_, m) in policy.models() {
        let class = m.class.map(|c| policy.class_name(c)).unwrap_or("");
        assert!(class == "production" || class == "preview", "{}: class `{class}`", m.name);
    }
    check_window_kinds(policy, "sambanova-cloud-2025");
    no_partition_by_key(policy, "sambanova-cloud-2025");
}

// ---------------------------------------------------------------------------
// Meta Llama API.
// ---------------------------------------------------------------------------

#[test]
fn llama_api_matches_its_document() {
    let json = limits_json();
    check_llama_api(section(&json, "llama-api"), &preset("llama-api").policy);
}

fn check_llama_api(doc: &Value, policy: &Policy) {
    let rows = array(doc, "models");
    let want = expected_cells(rows);
    assert_eq!(want.len(), 4 * 2);
    assert_eq!(all_cells(policy), want, "the per-model table");
    for (_, tier) in policy.tiers() {
        assert_eq!(cells_for_tier(policy, &tier.name), want, "tier {}", tier.name);
    }
    let extra: Vec<&str> =
        policy.limits().filter(|(_, l)| cell_model(l).is_none()).map(|(_, l)| &*l.name).collect();
    assert!(extra.is_empty(), "limits the page does not give: {extra:?}");

    let want_models: BTreeSet<&str> = rows.iter().map(|r| str_of(r, "model")).collect();
    let models: BTreeSet<&str> = policy.models().map(|(_, m)| &*m.name).collect();
    assert_eq!(models, want_models, "models");

    // "Rate limits are applied per team, not per API key."
    no_partition_by_key(policy, "llama-api");
    check_window_kinds(policy, "llama-api");
}

// ---------------------------------------------------------------------------
// Salesforce Models API.
// ---------------------------------------------------------------------------

fn clause<'a>(cond: &'a [ClauseSpec], fact: &Fact) -> Option<&'a [String]> {
    cond.iter().find(|c| &c.fact == fact).map(|c| c.values.as_slice())
}

fn channel() -> Fact {
    Fact::KeyLabel("channel".into())
}

/// An `environment in [...] and key.channel = apex` condition.
fn is_apex_in(cond: &[ClauseSpec], envs: &[&str]) -> bool {
    let env: BTreeSet<&str> =
        clause(cond, &Fact::Environment).unwrap_or(&[]).iter().map(String::as_str).collect();
    env == envs.iter().copied().collect() && clause(cond, &channel()) == Some(&["apex".to_owned()])
}

#[test]
fn salesforce_models_api_matches_its_document() {
    let json = limits_json();
    check_salesforce(
        section(&json, "salesforce-models-api"),
        &preset("salesforce-models-api").policy,
    );
}

fn check_salesforce(doc: &Value, policy: &Policy) {
    let endpoints: Vec<String> = policy.endpoints().map(|(_, e)| e.name.to_string()).collect();
    let mut accounted: BTreeSet<String> = BTreeSet::new();

    // Per org, per REST endpoint, per minute, in production orgs (and over
    // REST in the others): not in sandbox, demo and trial orgs over Apex.
    let non_production: Vec<&str> =
        array(doc, "apex_channel_only").iter().map(|r| str_of(r, "org_type")).collect();
    assert_eq!(str_of(doc, "rest_channel_in_sandbox_demo_trial"), "same as production");
    for row in array(doc, "production") {
        let endpoint = str_of(row, "endpoint");
        let rpm = row["rpm"].as_u64().unwrap();
        // `generation` is both the generations and the chat-generations endpoint.
        let covered: Vec<&String> = endpoints.iter().filter(|e| e.contains(endpoint)).collect();
        assert!(!covered.is_empty(), "no endpoint for `{endpoint}` in {endpoints:?}");
        let found: Vec<&Limit> = policy
            .limits()
            .map(|(_, l)| l)
            .filter(|l| {
                l.amount == rpm
                    && l.metric == Metric::Requests
                    && l.window.map(|w| w.period) == Some(period("1m"))
                    && l.scope == Scope::Global
                    && l.by == [Fact::Endpoint]
                    && clause(&l.when_spec, &Fact::Endpoint)
                        .is_some_and(|v| covered.iter().all(|e| v.contains(e)))
            })
            .collect();
        assert_eq!(found.len(), 1, "{endpoint}: {rpm} requests per minute per endpoint: {found:?}");
        let l = found[0];
        assert!(
            l.unless_spec.iter().any(|u| is_apex_in(u, &non_production)),
            "{}: not for Apex calls in sandbox, demo and trial orgs: {:?}",
            l.name,
            l.unless_spec
        );
        for u in &l.unless_spec {
            assert!(
                clause(u, &Fact::Environment).is_none() || is_apex_in(u, &non_production),
                "{}: REST calls in sandbox, demo and trial orgs are limited as in production: {u:?}",
                l.name
            );
        }
        accounted.insert(l.name.to_string());
    }

    // Apex methods only, per hour, by org type.
    for row in array(doc, "apex_channel_only") {
        let org = str_of(row, "org_type");
        let rph = row["rph"].as_u64().unwrap();
        let hourly: Vec<&Limit> = policy
            .limits()
            .map(|(_, l)| l)
            .filter(|l| {
                l.window.map(|w| w.period) == Some(period("1h"))
                    && clause(&l.when_spec, &Fact::Environment)
                        .is_some_and(|v| v.iter().any(|e| e == org))
            })
            .collect();
        assert_eq!(hourly.len(), 1, "{org}: one hourly limit: {hourly:?}");
        let l = hourly[0];
        assert_eq!(l.amount, rph, "{org}: {}", l.name);
        assert_eq!(l.metric, Metric::Requests, "{org}: {}", l.name);
        assert_eq!(l.scope, Scope::Global, "{org}: {}", l.name);
        assert_eq!(
            clause(&l.when_spec, &channel()),
            Some(&["apex".to_owned()][..]),
            "{org}: Apex only: {:?}",
            l.when_spec
        );
        assert!(l.unless_spec.is_empty(), "{org}: {:?}", l.unless_spec);
        accounted.insert(l.name.to_string());
    }

    // The one exemption: every limit, for the Agentforce reasoning engine in sandboxes.
    let want_exemptions = array(doc, "exemptions");
    assert_eq!(policy.exemptions().len(), want_exemptions.len(), "exemptions");
    let e = &policy.exemptions()[0];
    assert!(e.name.contains("agentforce") && e.name.contains("sandbox"), "{}", e.name);
    assert_eq!(e.limits, LimitSet::All, "not rate limited at all");

    // No per-model tables; the only limit the numbers above do not account for
    // is the example of a model whose RPM differs ("can vary by model": the
    // page gives no number).
    assert!(all_cells(policy).is_empty(), "per-model tables: {:?}", all_cells(policy));
    let rest: Vec<&str> =
        policy.limits().map(|(_, l)| &*l.name).filter(|n| !accounted.contains(*n)).collect();
    assert_eq!(rest, ["model-rpm"], "limits the page does not give");
    assert!(
        array(doc, "production").iter().any(|r| r
            .get("note")
            .and_then(Value::as_str)
            .is_some_and(|n| n.contains("can vary by model"))),
        "the page says the RPM can vary by model"
    );
    // Per org: no limit is split by key.
    no_partition_by_key(policy, "salesforce-models-api");
}

// ---------------------------------------------------------------------------
// SambaStack: no limits until an administrator applies them to groups.
// ---------------------------------------------------------------------------

#[test]
fn sambastack_limits_only_groups() {
    let config = preset("sambastack");
    let policy = &config.policy;
    for (_, l) in policy.limits() {
        assert!(matches!(l.scope, Scope::Group(_)), "`{}` is not a group limit", l.name);
    }
    for (tid, t) in policy.tiers() {
        let own: Vec<&str> = policy
            .tier_limits(tid)
            .iter()
            .filter_map(|&id| policy.limit(id))
            .filter(|l| !matches!(l.scope, Scope::Group(_)))
            .map(|l| &*l.name)
            .collect();
        assert!(own.is_empty(), "tier {}: {own:?}", t.name);
    }
}

// ---------------------------------------------------------------------------
// The checks above have teeth: a preset that drifts from its document fails.
// ---------------------------------------------------------------------------

type Check = fn(&Value, &Policy);

/// Parses `examples/<name>.toml` with `from` replaced by `to` (which must
/// occur), and runs `check` on it; returns whether the check passed.
fn check_passes(name: &str, from: &str, to: &str, check: Check) -> bool {
    let json = limits_json();
    let path = examples_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{}: no `{from}` to change", path.display());
    let changed = text.replacen(from, to, 1);
    let config = sluice_config::parse(&changed, &path)
        .unwrap_or_else(|e| panic!("the changed preset does not load:\n{e}"));
    let doc = section(&json, name).clone();
    std::panic::catch_unwind(move || check(&doc, &config.policy)).is_ok()
}

#[test]
fn a_preset_that_drifts_from_its_document_fails_the_check() {
    let drifts: [(&str, &str, &str, Check); 10] = [
        (
            "sambanova-cloud",
            "\"Meta-Llama-3.3-70B-Instruct\" = { rpm = 240,",
            "\"Meta-Llama-3.3-70B-Instruct\" = { rpm = 241,",
            check_sambanova_cloud,
        ),
        (
            "sambanova-cloud",
            "\"gemma-4-31B-it\"              = { rpm = 60,  rpd = 12_000 }",
            "\"gemma-4-31B-it\"              = { rpm = 60,  rpd = 12_000, tpd = 1_000_000 }",
            check_sambanova_cloud,
        ),
        ("sambanova-cloud", "amount = 20_000_000", "amount = 2_000_000", check_sambanova_cloud),
        (
            "sambanova-cloud",
            "window = \"1d\"",
            "window = \"1d\"\nwhen = { model_class = \"production\" }",
            check_sambanova_cloud,
        ),
        (
            "sambanova-cloud-2025",
            "\"Qwen3-32B\"                           = { rpm = 30,   rpd = 6_000 }",
            "\"Qwen3-32B\"                           = { rpm = 30,   rpd = 6_001 }",
            check_sambanova_cloud_2025,
        ),
        (
            "sambanova-cloud-2025",
            "[models.\"Qwen3-32B\"]\nclass = \"preview\"",
            "[models.\"Qwen3-32B\"]\nclass = \"production\"",
            check_sambanova_cloud_2025,
        ),
        ("llama-api", "rpm = 10, tpm = 250_000", "rpm = 10, tpm = 25_000", check_llama_api),
        ("salesforce-models-api", "amount = 150", "amount = 15", check_salesforce),
        (
            "salesforce-models-api",
            "when = { environment = \"sandbox\", \"key.channel\" = \"apex\" }",
            "when = { environment = \"sandbox\" }",
            check_salesforce,
        ),
        (
            "salesforce-models-api",
            "unless = { environment = [\"sandbox\", \"demo\", \"trial\"], \"key.channel\" = \"apex\" }\n\n[[limits]]\nname = \"sandbox",
            "unless = { environment = [\"sandbox\", \"demo\", \"trial\"] }\n\n[[limits]]\nname = \"sandbox",
            check_salesforce,
        ),
    ];
    for (name, from, to, check) in drifts {
        assert!(!check_passes(name, from, to, check), "{name}: `{from}` -> `{to}` went unnoticed");
    }
    // And the unchanged presets pass through the same path.
    assert!(check_passes("llama-api", "[policy]", "[policy]", check_llama_api));
}

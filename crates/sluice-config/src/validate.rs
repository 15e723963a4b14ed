//! Raw file -> validated policy and tenants. Every reference is checked here,
//! where the file's positions are still known, so that each error can say
//! where it is and what would be accepted instead.
//!
//! This file walks the whole file (policy settings, headers, models,
//! endpoints, tiers and their `extends`, exemptions) and assembles the
//! [`Config`]; limits and conditions are checked in `limits.rs`, tenants and
//! their keys in `tenants.rs`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use indexmap::IndexMap;
use sluice_core::money::micros_of;
use sluice_core::{
    ExemptionSpec, Fact, HeaderFamily, HeaderProfile, Metric, Period, PolicyBuilder, Price,
    ResetFormat, Scope, TierSpec, WindowKind,
};
use toml::Spanned;

use crate::error::{ConfigError, Locator};
use crate::raw::{OneOrMany, RawEndpoint, RawFile, RawLimit, RawNumber, RawPrice, RawTier};
use crate::{Config, TenantEntry};

mod limits;
mod tenants;

/// The longest `max_wait` a policy may give.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The default endpoints and their OpenAI paths.
pub const DEFAULT_ENDPOINT_PATHS: [(&str, &str); 4] = [
    ("chat", "/v1/chat/completions"),
    ("completions", "/v1/completions"),
    ("embeddings", "/v1/embeddings"),
    ("feedback", "/v1/feedback"),
];

struct Names {
    tiers: Vec<String>,
    models: Vec<String>,
    classes: BTreeSet<String>,
    endpoints: Vec<String>,
}

pub(crate) struct Validator<'a> {
    loc: Locator<'a>,
    errors: Vec<ConfigError>,
    long_windows: WindowKind,
    key_ids: HashSet<String>,
    key_hashes: HashSet<String>,
    /// Names of `cost` limits (their overrides are money too).
    money_limits: HashSet<String>,
    /// Where the first `cost` limit is written.
    first_money_limit: Option<(Option<Range<usize>>, String)>,
    /// Names of limits not split by key (somewhere): no key grants them
    /// an amount of its own.
    not_by_key: HashSet<String>,
}

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

/// Where a limit's name is written (the limit itself if it has none).
fn name_span(l: &Spanned<RawLimit>) -> Option<Range<usize>> {
    l.get_ref().name.as_ref().map_or_else(|| span(l), span)
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = names.into_iter().map(|s| format!("`{}`", s.as_ref())).collect();
    if v.is_empty() { "none are defined".into() } else { format!("defined: {}", v.join(", ")) }
}

impl<'a> Validator<'a> {
    pub(crate) fn new(loc: Locator<'a>) -> Self {
        Self {
            loc,
            errors: Vec::new(),
            long_windows: WindowKind::Calendar,
            key_ids: HashSet::new(),
            key_hashes: HashSet::new(),
            money_limits: HashSet::new(),
            first_money_limit: None,
            not_by_key: HashSet::new(),
        }
    }

    fn err(&mut self, span: Option<Range<usize>>, field: &str, message: impl Into<String>) {
        let e = self.loc.at(span, field, message);
        self.errors.push(e);
    }

    fn origin(&self, s: &Range<usize>) -> String {
        format!("{}:{}", self.loc.file().display(), self.loc.line(s))
    }

    fn amount(&mut self, v: &Spanned<i64>, field: &str) -> Option<u64> {
        match u64::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.err(
                    span(v),
                    field,
                    format!("must be a positive whole number (at least 1), got {}", v.get_ref()),
                );
                None
            }
        }
    }

    /// A limit's or override's amount: a positive whole number, or for a
    /// `cost` limit money (at most six decimals), in micro-units.
    fn number(
        &mut self,
        v: RawNumber,
        sp: Option<Range<usize>>,
        field: &str,
        money: bool,
    ) -> Option<u64> {
        let got = match (money, v) {
            (true, RawNumber::Whole(n)) => u64::try_from(n).ok().and_then(|n| micros_of(n as f64)),
            (true, RawNumber::Decimal(x)) => micros_of(x),
            (false, RawNumber::Whole(n)) => u64::try_from(n).ok(),
            (false, RawNumber::Decimal(_)) => None,
        };
        match got {
            Some(n) if n > 0 => Some(n),
            _ if money => {
                self.err(sp, field, format!("a `cost` amount is money in the policy's currency: a positive number with at most six decimals (e.g. `50` or `12.50`), got {v}"));
                None
            }
            _ => {
                self.err(
                    sp,
                    field,
                    format!("must be a positive whole number (at least 1), got {v}"),
                );
                None
            }
        }
    }

    /// A `max_wait`: a duration of at most [`MAX_WAIT`].
    fn max_wait(&mut self, v: Option<&Spanned<String>>, field: &str) -> Option<Duration> {
        let v = v?;
        // `0s`: no wait (for one limit of a tier that allows one).
        if matches!(v.get_ref().trim(), "0" | "0s" | "0ms") {
            return Some(Duration::ZERO);
        }
        let mut problems = Vec::new();
        let d = crate::gateway::duration(v, field, &mut problems);
        for (sp, f, m) in problems {
            self.err(sp, &f, m);
        }
        let d = d?;
        if d > MAX_WAIT {
            self.err(span(v), field, format!("a request waits at most {}s for room (it holds its connection and its body meanwhile); got `{}`", MAX_WAIT.as_secs(), v.get_ref()));
            return None;
        }
        Some(d)
    }

    /// A price per million tokens.
    fn price(&mut self, p: &Spanned<RawPrice>, field: &str) -> Option<Price> {
        let r = p.get_ref();
        let mut part = |v: Option<&Spanned<f64>>, name: &str| -> Option<u64> {
            let v = v?;
            let got = micros_of(*v.get_ref());
            if got.is_none() {
                self.err(span(v), &format!("{field}.{name}"), format!("a price per million tokens: a number from 0 with at most six decimals, got {}", v.get_ref()));
            }
            got
        };
        let input = part(r.input.as_ref(), "input");
        let cached = part(r.cached_input.as_ref(), "cached_input");
        let output = part(r.output.as_ref(), "output");
        if r.input.is_none() || r.output.is_none() {
            self.err(span(p), field, "give the price per million tokens of both `input` and `output` (and `cached_input` if the provider's cache is cheaper), e.g. `{ input = 2.00, cached_input = 0.50, output = 8.00 }`");
            return None;
        }
        let (input, output) = (input?, output?);
        Some(Price { input, cached_input: cached.unwrap_or(input), output })
    }

    pub(crate) fn run(mut self, raw: &RawFile) -> Result<Config, Vec<ConfigError>> {
        let meta = raw.policy.as_ref().map(|m| m.get_ref());
        let name = meta
            .and_then(|m| m.name.clone())
            .or_else(|| self.loc.file().file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "policy".into());
        let mut b = PolicyBuilder::new(name);
        if let Some(kind) = meta.and_then(|m| m.long_windows.as_ref()) {
            match kind.get_ref().as_str() {
                "calendar" => self.long_windows = WindowKind::Calendar,
                "rolling" => self.long_windows = WindowKind::Rolling,
                other => self.err(
                    span(kind),
                    "policy.long_windows",
                    format!("`{other}` is not a window kind; use `calendar` or `rolling`"),
                ),
            }
        }
        if let Some(lease) = meta.and_then(|m| m.lease.as_ref()) {
            match lease.get_ref().parse::<Period>() {
                Ok(Period::Seconds(s)) => {
                    b.lease(Duration::from_secs(s.get()));
                }
                Ok(Period::Months(_)) => self.err(
                    span(lease),
                    "policy.lease",
                    "a lease is counted in seconds, minutes or hours (e.g. `15m`)",
                ),
                Err(e) => self.err(span(lease), "policy.lease", e.to_string()),
            }
        }
        if let Some(h) = &raw.headers {
            let profile = self.headers(h);
            b.headers(profile);
        }

        // Names first: everything else refers to them.
        let names = Names {
            tiers: raw.tiers.keys().cloned().collect(),
            models: raw.models.keys().cloned().collect(),
            classes: raw.models.values().filter_map(|m| m.get_ref().class.clone()).collect(),
            endpoints: match &raw.endpoints {
                Some(e) if !e.is_empty() => e.keys().cloned().collect(),
                _ => DEFAULT_ENDPOINT_PATHS.iter().map(|(n, _)| (*n).to_owned()).collect(),
            },
        };
        for (model, spec) in &raw.models {
            if model.trim().is_empty() {
                self.err(span(spec), "models", "a model id must not be empty");
            }
            b.model(model.clone(), spec.get_ref().class.clone());
            if let Some(p) = &spec.get_ref().price
                && let Some(price) = self.price(p, &format!("models.{model}.price"))
            {
                b.price(model.clone(), price);
            }
        }
        if let Some(c) = meta.and_then(|m| m.currency.as_ref()) {
            let code = c.get_ref();
            if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                b.currency(code.clone());
            } else {
                self.err(span(c), "policy.currency", format!("`{code}` is not a currency code; use three capital letters (ISO 4217), e.g. `USD` or `EUR`"));
            }
        }
        let default_price = meta
            .and_then(|m| m.default_price.as_ref())
            .map(|p| (span(p), self.price(p, "policy.default_price")));
        if let Some((_, Some(p))) = default_price {
            b.default_price(p);
        }
        let mut endpoint_paths = Vec::new();
        match &raw.endpoints {
            Some(e) if !e.is_empty() => {
                for (n, ep) in e {
                    b.endpoint(n.clone());
                    let path = match ep.get_ref() {
                        RawEndpoint::Path(p) => Some(p.clone()),
                        RawEndpoint::Table(t) => t.path.clone(),
                    };
                    if let Some(p) = &path
                        && !p.starts_with('/')
                    {
                        self.err(
                            span(ep),
                            &format!("endpoints.{n}"),
                            format!("a path must start with `/`, got `{p}`"),
                        );
                    }
                    endpoint_paths.push((n.clone(), path));
                }
            }
            _ => {
                for (n, p) in DEFAULT_ENDPOINT_PATHS {
                    b.endpoint(n);
                    endpoint_paths.push((n.to_owned(), Some(p.to_owned())));
                }
            }
        }

        for (tname, tier) in &raw.tiers {
            let t = tier.get_ref();
            let extends = t.extends.as_ref().map(|e| {
                if !names.tiers.contains(e.get_ref()) {
                    self.err(
                        span(e),
                        &format!("tiers.{tname}.extends"),
                        format!("tier `{}` is not defined; {}", e.get_ref(), list(&names.tiers)),
                    );
                }
                e.get_ref().clone()
            });
            let allowed_models = t.listed_models_only.then(|| {
                let mut models: Vec<String> = Vec::new();
                let mut at = Some(tname.clone());
                let mut guard = 0;
                while let Some(n) = at.take() {
                    guard += 1;
                    let Some(tier) = raw.tiers.get(&n) else { break };
                    models.extend(
                        tier.get_ref().models.keys().filter(|m| names.models.contains(m)).cloned(),
                    );
                    at = tier
                        .get_ref()
                        .extends
                        .as_ref()
                        .map(|e| e.get_ref().clone())
                        .filter(|_| guard <= raw.tiers.len());
                }
                models
            });
            let max_wait = self.max_wait(t.max_wait.as_ref(), &format!("tiers.{tname}.max_wait"));
            b.tier(TierSpec {
                name: tname.clone(),
                description: t.description.clone(),
                extends,
                allowed_models,
                max_wait,
            });
        }
        self.check_cycles(&raw.tiers);
        if let Some(dt) = meta.and_then(|m| m.default_tier.as_ref()) {
            if names.tiers.contains(dt.get_ref())
                || (names.tiers.is_empty() && dt.get_ref() == sluice_core::DEFAULT_TIER)
            {
                b.default_tier(dt.get_ref().clone());
            } else {
                self.err(
                    span(dt),
                    "policy.default_tier",
                    format!("tier `{}` is not defined; {}", dt.get_ref(), list(&names.tiers)),
                );
            }
        }

        let mut scoped_names: HashMap<Scope, HashSet<String>> = HashMap::new();
        let mut limits = Vec::new();
        for (tname, tier) in &raw.tiers {
            let scope = Scope::Tier(tname.clone());
            self.section(&format!("tiers.{tname}"), tier, &scope, &names, &mut limits);
        }
        for (gname, group) in &raw.groups {
            if group.get_ref().extends.is_some()
                || group.get_ref().listed_models_only
                || group.get_ref().max_wait.is_some()
            {
                self.err(
                    span(group),
                    &format!("groups.{gname}"),
                    "`extends`, `listed_models_only` and `max_wait` are for tiers, not groups (a group's limit can have its own `max_wait`)",
                );
            }
            let scope = Scope::Group(gname.clone());
            self.section(&format!("groups.{gname}"), group, &scope, &names, &mut limits);
        }
        for (i, l) in raw.limits.iter().enumerate() {
            if let Some(spec) = self.limit(&format!("limits[{i}]"), l, Scope::Global, &names) {
                limits.push((name_span(l), format!("limits[{i}].name"), spec));
            }
        }
        for (sp, field, spec) in limits {
            let taken = scoped_names.entry(spec.scope.clone()).or_default();
            if !taken.insert(spec.name.clone()) {
                self.err(sp, &field, format!("limit `{}` is defined twice in {}; names must be unique within a tier, a group, or the top level", spec.name, spec.scope));
                continue;
            }
            if !spec.by.contains(&Fact::Key) {
                self.not_by_key.insert(spec.name.clone());
            }
            if spec.metric == Metric::Cost && self.first_money_limit.is_none() {
                self.first_money_limit = Some((sp.clone(), field.clone()));
            }
            b.limit(spec);
        }
        // Every request must have a price once money is counted: models
        // the policy does not list (or lists without a price) are charged
        // the default price, which is therefore required.
        if let Some((sp, field)) = self.first_money_limit.clone()
            && default_price.is_none()
        {
            self.err(sp, &field, "a `cost` limit needs `default_price` in `[policy]` (e.g. `default_price = { input = 10.00, output = 30.00 }`): requests for models without a `price` of their own, and for models the policy does not list, are charged at it");
        }
        let all_limit_names: BTreeSet<String> = scoped_names.values().flatten().cloned().collect();

        for (i, e) in raw.exemptions.iter().enumerate() {
            let field = format!("exemptions[{i}]");
            let ex = e.get_ref();
            let mut limits = Vec::new();
            for l in &ex.limits {
                if l.get_ref() != "*" && !all_limit_names.contains(l.get_ref()) {
                    self.err(
                        span(l),
                        &format!("{field}.limits"),
                        format!(
                            "limit `{}` is not defined; {}",
                            l.get_ref(),
                            list(all_limit_names.iter().take(40))
                        ),
                    );
                }
                limits.push(l.get_ref().clone());
            }
            let when = self.condition(&format!("{field}.when"), &ex.when, &names);
            b.exemption(ExemptionSpec {
                name: ex.name.clone().unwrap_or_else(|| format!("exemption {}", i + 1)),
                limits,
                when,
            });
        }

        // Tenants are checked against the names of the file, so their
        // problems are reported with the policy's.
        let mut tenants = IndexMap::new();
        for (id, t) in &raw.tenants {
            if let Some(entry) = self.tenant(id, t, &names, &all_limit_names) {
                tenants.insert(id.clone(), entry);
            }
        }

        let mut problems = Vec::new();
        let gateway = crate::gateway::gateway(raw, &mut problems);
        let decisions = crate::decisions::decisions(raw, &names.endpoints, &mut problems);
        for (sp, field, message) in problems {
            self.err(sp, &field, message);
        }

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let policy = match b.build() {
            Ok(p) => p,
            Err(e) => {
                self.err(None, "", e.to_string());
                return Err(self.errors);
            }
        };

        for (id, t) in &raw.tenants {
            if let Some(entry) = tenants.get(id) {
                let entry: &TenantEntry = entry;
                if let Err(e) = policy.tenant(&entry.spec) {
                    self.err(span(t), &format!("tenants.{id}"), e.to_string());
                }
                for k in &entry.keys {
                    if let Err(e) = policy.key(&k.spec) {
                        self.err(span(t), &format!("tenants.{id}.keys"), e.to_string());
                    }
                }
            }
        }
        let tenants: Vec<TenantEntry> = tenants.into_values().collect();
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let sources =
            meta.and_then(|m| m.source.as_ref()).map(OneOrMany::to_vec).unwrap_or_default();
        Ok(Config {
            policy,
            description: meta.and_then(|m| m.description.clone()),
            sources,
            endpoint_paths,
            developers: raw
                .models
                .iter()
                .filter_map(|(m, s)| s.get_ref().developer.clone().map(|d| (m.clone(), d)))
                .collect(),
            tenants,
            gateway,
            decisions,
        })
    }

    fn headers(&mut self, h: &Spanned<crate::raw::RawHeaders>) -> HeaderProfile {
        let mut p = HeaderProfile::default();
        let h = h.get_ref();
        if let Some(f) = &h.families {
            p.families.clear();
            for name in f.get_ref() {
                match HeaderFamily::parse(name) {
                    Some(fam) => p.families.push(fam),
                    None => self.err(span(f), "headers.families", format!("`{name}` is not a header family; use requests, tokens, input-tokens, output-tokens or cost, optionally followed by -hour, -day or -month (e.g. `requests-day`)")),
                }
            }
        }
        if let Some(r) = &h.reset {
            p.reset = match r.get_ref().as_str() {
                "duration" => ResetFormat::Duration,
                "seconds" => ResetFormat::Seconds,
                "epoch" => ResetFormat::Epoch,
                "none" => ResetFormat::Omit,
                other => {
                    self.err(span(r), "headers.reset", format!("`{other}` is not a reset format; use `duration` (6m0s), `seconds` (360.5), `epoch` (Unix seconds of the reset) or `none`"));
                    ResetFormat::Duration
                }
            };
        }
        p.ietf = h.ietf.unwrap_or(false);
        p
    }

    /// Reports each tier on a cycle of `extends`, at its `extends` value.
    fn check_cycles(&mut self, tiers: &IndexMap<String, Spanned<RawTier>>) {
        let parent = |n: &str| tiers.get(n).and_then(|t| t.get_ref().extends.as_ref());
        for name in tiers.keys() {
            let mut path = vec![name.clone()];
            let mut at = parent(name).map(|e| e.get_ref().clone());
            while let Some(n) = at {
                if n == *name {
                    path.push(n);
                    if let Some(e) = parent(name) {
                        self.err(
                            span(e),
                            &format!("tiers.{name}.extends"),
                            format!(
                                "tier `{name}` extends itself through `extends` ({})",
                                path.join(" -> ")
                            ),
                        );
                    }
                    break;
                }
                if path.contains(&n) {
                    // Leads into a cycle it is not part of: the cycle's
                    // own tiers are reported.
                    break;
                }
                path.push(n.clone());
                at = parent(&n).map(|e| e.get_ref().clone());
            }
        }
    }
}

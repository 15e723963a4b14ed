//! Raw file -> validated policy and tenants. Every reference is checked here,
//! where the file's positions are still known, so that each error can say
//! where it is and what would be accepted instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use indexmap::IndexMap;
use sluice_core::{
    ClauseSpec, ConditionSpec, ExemptionSpec, Fact, HeaderFamily, HeaderProfile, KeySpec,
    LimitSpec, Metric, OverrideSpec, Period, PolicyBuilder, ResetFormat, Scope, TenantSpec,
    TierSpec, Window, WindowKind,
};
use toml::Spanned;

use crate::error::{ConfigError, Locator};
use crate::raw::{
    OneOrMany, RawCondition, RawEndpoint, RawFile, RawLimit, RawOverride, RawTenant, RawTier,
    RawUnless,
};
use crate::{Config, KeyEntry, TenantEntry};

const FACTS_ALLOWED: &str = "tier, environment, group, tenant, tenant.<label>, key, key.<label>, endpoint, model, model_class";
const CELLS_ALLOWED: &str = "rps, rpm, rph, rpd, rpw, rpmo (requests), tps, tpm, tph, tpd, tpw, tpmo (tokens), itpm, itpd, … (input tokens), otpm, otpd, … (output tokens), concurrent";

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

/// `rpm` -> (requests, 1m); `concurrent` -> (concurrent, none).
fn cell(key: &str) -> Option<(Metric, Option<Period>)> {
    if key == "concurrent" {
        return Some((Metric::Concurrent, None));
    }
    let (metric, rest) = [
        ("itp", Metric::InputTokens),
        ("otp", Metric::OutputTokens),
        ("rp", Metric::Requests),
        ("tp", Metric::Tokens),
    ]
    .into_iter()
    .find_map(|(p, m)| key.strip_prefix(p).map(|r| (m, r)))?;
    let period = match rest {
        "s" => "1s",
        "m" => "1m",
        "h" => "1h",
        "d" => "1d",
        "w" => "1w",
        "mo" => "1mo",
        _ => return None,
    };
    Some((metric, period.parse().ok()))
}

impl<'a> Validator<'a> {
    pub(crate) fn new(loc: Locator<'a>) -> Self {
        Self {
            loc,
            errors: Vec::new(),
            long_windows: WindowKind::Calendar,
            key_ids: HashSet::new(),
            key_hashes: HashSet::new(),
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
            b.tier(TierSpec {
                name: tname.clone(),
                description: t.description.clone(),
                extends,
                allowed_models,
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
            if group.get_ref().extends.is_some() || group.get_ref().listed_models_only {
                self.err(
                    span(group),
                    &format!("groups.{gname}"),
                    "`extends` and `listed_models_only` are for tiers, not groups",
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
            b.limit(spec);
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
                    None => self.err(span(f), "headers.families", format!("`{name}` is not a header family; use requests, tokens, input-tokens or output-tokens, optionally followed by -hour, -day or -month (e.g. `requests-day`)")),
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

    fn section(
        &mut self,
        field: &str,
        tier: &Spanned<RawTier>,
        scope: &Scope,
        names: &Names,
        out: &mut Vec<(Option<Range<usize>>, String, LimitSpec)>,
    ) {
        let t = tier.get_ref();
        for (model, cells) in &t.models {
            let f = format!("{field}.models.{model}");
            if !names.models.contains(model) {
                self.err(span(cells), &f, format!("model `{model}` is not in [models]; add it there (with its class) or fix the name; {}", list(&names.models)));
                continue;
            }
            if cells.get_ref().is_empty() {
                self.err(span(cells), &f, format!("no limits given; use {CELLS_ALLOWED}"));
            }
            for (key, value) in cells.get_ref() {
                let cf = format!("{f}.{key}");
                let Some((metric, period)) = cell(key) else {
                    self.err(
                        span(value),
                        &cf,
                        format!("`{key}` is not a table column; use {CELLS_ALLOWED}"),
                    );
                    continue;
                };
                let Some(amount) = self.amount(value, &cf) else { continue };
                let window = period.map(|p| self.default_window(p));
                if let Some(w) = window
                    && let Err(e) = w.validate(amount)
                {
                    self.err(span(value), &cf, e.to_string());
                    continue;
                }
                out.push((
                    span(value),
                    cf.clone(),
                    LimitSpec {
                        name: format!("{model}/{key}"),
                        scope: scope.clone(),
                        metric,
                        amount,
                        burst: None,
                        window,
                        by: vec![Fact::Model],
                        when: vec![ClauseSpec { fact: Fact::Model, values: vec![model.clone()] }],
                        unless: vec![],
                        shadow: false,
                        counter: None,
                        origin: Some(self.origin(&value.span())),
                    },
                ));
            }
        }
        for (i, l) in t.limits.iter().enumerate() {
            if let Some(spec) = self.limit(&format!("{field}.limits[{i}]"), l, scope.clone(), names)
            {
                out.push((name_span(l), format!("{field}.limits[{i}].name"), spec));
            }
        }
    }

    fn default_window(&self, period: Period) -> Window {
        let kind = match period {
            Period::Months(_) => WindowKind::Calendar,
            p if p.nominal_secs() < 3_600 => WindowKind::Rolling,
            _ => self.long_windows,
        };
        Window { period, kind }
    }

    fn limit(
        &mut self,
        field: &str,
        l: &Spanned<RawLimit>,
        scope: Scope,
        names: &Names,
    ) -> Option<LimitSpec> {
        let before = self.errors.len();
        let r = l.get_ref();
        let name = match &r.name {
            Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().clone(),
            Some(n) => {
                self.err(span(n), &format!("{field}.name"), "a limit name must not be empty");
                String::new()
            }
            None => {
                self.err(span(l), &format!("{field}.name"), "every limit needs a `name` (overrides and exemptions refer to it), e.g. `name = \"requests-per-minute\"`");
                String::new()
            }
        };
        let metric = match r.metric.get_ref().parse::<Metric>() {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(span(&r.metric), &format!("{field}.metric"), e.to_string());
                None
            }
        };
        let amount = self.amount(&r.amount, &format!("{field}.amount"));
        let period = match (&r.window, metric) {
            (Some(w), Some(Metric::Concurrent)) => {
                self.err(
                    span(w),
                    &format!("{field}.window"),
                    "a `concurrent` limit counts requests in flight and takes no window",
                );
                None
            }
            (Some(w), _) => match w.get_ref().parse::<Period>() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.err(span(w), &format!("{field}.window"), e.to_string());
                    None
                }
            },
            (None, Some(m)) if m != Metric::Concurrent => {
                self.err(
                    span(l),
                    &format!("{field}.window"),
                    format!(
                        "a `{m}` limit needs a window, e.g. `window = \"1m\"` (s, m, h, d, w, mo)"
                    ),
                );
                None
            }
            _ => None,
        };
        let window = period.map(|p| {
            let mut w = self.default_window(p);
            if let Some(k) = &r.kind {
                match k.get_ref().as_str() {
                    "rolling" => w.kind = WindowKind::Rolling,
                    "calendar" => w.kind = WindowKind::Calendar,
                    other => self.err(span(k), &format!("{field}.kind"), format!("`{other}` is not a window kind; use `rolling` (continuous refill) or `calendar` (resets at the boundary)")),
                }
            }
            w
        });
        if let (Some(w), Some(a)) = (window, amount)
            && let Err(e) = w.validate(a)
        {
            self.err(
                r.window.as_ref().map(|w| w.span()),
                &format!("{field}.window"),
                e.to_string(),
            );
        }
        let burst = r.burst.as_ref().and_then(|b| {
            let v = self.amount(b, &format!("{field}.burst"));
            if window.is_none_or(|w| w.kind != WindowKind::Rolling) {
                self.err(
                    span(b),
                    &format!("{field}.burst"),
                    "`burst` only applies to rolling windows",
                );
            }
            v
        });
        let mut by = Vec::new();
        for f in &r.by {
            match Fact::parse(f.get_ref()) {
                Some(fact) if fact.can_partition() => by.push(fact),
                Some(fact) => self.err(span(f), &format!("{field}.by"), format!("`{fact}` is the same for every request of a tenant and cannot split its counter; use model, endpoint, model_class, key or key.<label>")),
                None => self.err(span(f), &format!("{field}.by"), format!("`{}` is not a fact; use model, endpoint, model_class, key or key.<label>", f.get_ref())),
            }
        }
        if by.len() > sluice_core::MAX_PARTITION_FACTS {
            self.err(
                span(l),
                &format!("{field}.by"),
                format!("at most {} facts", sluice_core::MAX_PARTITION_FACTS),
            );
        }
        let when = r
            .when
            .as_ref()
            .map(|w| self.condition(&format!("{field}.when"), w, names))
            .unwrap_or_default();
        let unless = match r.unless.as_ref() {
            None => vec![],
            Some(u) => {
                let conds: Vec<&RawCondition> = match u.get_ref() {
                    RawUnless::One(c) => vec![c],
                    RawUnless::Many(cs) => cs.iter().collect(),
                };
                conds
                    .into_iter()
                    .map(|c| self.condition_at(&format!("{field}.unless"), c, &span(u), names))
                    .collect()
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(LimitSpec {
            name,
            scope,
            metric: metric?,
            amount: amount?,
            burst,
            window,
            by,
            when,
            unless,
            shadow: r.shadow,
            counter: r.counter.clone(),
            origin: Some(self.origin(&l.span())),
        })
    }

    fn condition(
        &mut self,
        field: &str,
        c: &Spanned<RawCondition>,
        names: &Names,
    ) -> ConditionSpec {
        self.condition_at(field, c.get_ref(), &span(c), names)
    }

    fn condition_at(
        &mut self,
        field: &str,
        c: &RawCondition,
        sp: &Option<Range<usize>>,
        names: &Names,
    ) -> ConditionSpec {
        let mut out = Vec::new();
        for (k, v) in c {
            let f = format!("{field}.{k}");
            let Some(fact) = Fact::parse(k) else {
                self.err(
                    sp.clone(),
                    &f,
                    format!("`{k}` is not a fact a condition can test; use {FACTS_ALLOWED}"),
                );
                continue;
            };
            let values = v.to_vec();
            if values.is_empty() {
                self.err(sp.clone(), &f, "give at least one value");
            }
            let (known, what): (Vec<&str>, &str) = match fact {
                Fact::Tier => (names.tiers.iter().map(String::as_str).collect(), "tier"),
                Fact::Model => (names.models.iter().map(String::as_str).collect(), "model"),
                Fact::Endpoint => {
                    (names.endpoints.iter().map(String::as_str).collect(), "endpoint")
                }
                Fact::ModelClass => {
                    (names.classes.iter().map(String::as_str).collect(), "model class")
                }
                _ => (vec![], ""),
            };
            if !what.is_empty() {
                for val in &values {
                    let implicit_tier = fact == Fact::Tier
                        && names.tiers.is_empty()
                        && val == sluice_core::DEFAULT_TIER;
                    if !known.contains(&val.as_str()) && !implicit_tier {
                        self.err(
                            sp.clone(),
                            &f,
                            format!("{what} `{val}` is not defined; {}", list(&known)),
                        );
                    }
                }
            }
            out.push(ClauseSpec { fact, values });
        }
        out
    }

    fn tenant(
        &mut self,
        id: &str,
        t: &Spanned<RawTenant>,
        names: &Names,
        limit_names: &BTreeSet<String>,
    ) -> Option<TenantEntry> {
        let before = self.errors.len();
        let f = format!("tenants.{id}");
        let r = t.get_ref();
        if let Some(tier) = &r.tier {
            let implicit = names.tiers.is_empty() && tier.get_ref() == sluice_core::DEFAULT_TIER;
            if !names.tiers.contains(tier.get_ref()) && !implicit {
                self.err(
                    span(tier),
                    &format!("{f}.tier"),
                    format!("tier `{}` is not defined; {}", tier.get_ref(), list(&names.tiers)),
                );
            }
        }
        if let Some(tz) = &r.time_zone
            && let Err(e) = sluice_core::Zone::get(tz.get_ref())
        {
            self.err(span(tz), &format!("{f}.time_zone"), e.to_string());
        }
        let check_names =
            |this: &mut Self, list_: &[Spanned<String>], field: &str| -> Vec<String> {
                list_
                    .iter()
                    .map(|n| {
                        if n.get_ref() != "*" && !limit_names.contains(n.get_ref()) {
                            this.err(
                                span(n),
                                field,
                                format!(
                                    "limit `{}` is not defined; {}",
                                    n.get_ref(),
                                    list(limit_names.iter().take(40))
                                ),
                            );
                        }
                        n.get_ref().clone()
                    })
                    .collect()
            };
        let exempt = check_names(self, &r.exempt, &format!("{f}.exempt"));
        let mut overrides = Vec::new();
        for (limit, o) in &r.overrides {
            let of = format!("{f}.overrides.{limit}");
            if !limit_names.contains(limit) {
                self.err(
                    span(o),
                    &of,
                    format!(
                        "limit `{limit}` is not defined; {}",
                        list(limit_names.iter().take(40))
                    ),
                );
                continue;
            }
            let (amount, until) = match o.get_ref() {
                RawOverride::Amount(a) => (*a, None),
                RawOverride::Full { amount, until } => (*amount, until.clone()),
            };
            let Ok(amount) = u64::try_from(amount)
                .map_err(|_| ())
                .and_then(|a| if a > 0 { Ok(a) } else { Err(()) })
            else {
                self.err(
                    span(o),
                    &of,
                    format!("must be a positive whole number (at least 1), got {amount}"),
                );
                continue;
            };
            let until = match until.as_deref().map(parse_instant) {
                None => None,
                Some(Some(t)) => Some(t),
                Some(None) => {
                    self.err(
                        span(o),
                        &format!("{of}.until"),
                        "not a date or time; write `2026-12-31` or `2026-12-31T23:59:59Z`",
                    );
                    continue;
                }
            };
            overrides.push(OverrideSpec { limit: limit.clone(), amount, until });
        }
        let mut keys = Vec::new();
        for (i, k) in r.keys.iter().enumerate() {
            let kf = format!("{f}.keys[{i}]");
            let kr = k.get_ref();
            let hash = kr.hash.get_ref().trim().to_ascii_lowercase();
            let ok = hash
                .strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                self.err(span(&kr.hash), &format!("{kf}.hash"), "a key hash is `sha256:` and 64 hex digits, as `sluice keys generate` prints it (the secret itself never goes in the file)");
            }
            let exempt = check_names(self, &kr.exempt, &format!("{kf}.exempt"));
            if ok && !self.key_hashes.insert(hash.clone()) {
                self.err(
                    span(&kr.hash),
                    &format!("{kf}.hash"),
                    "the same key hash appears twice: one secret can belong to one tenant and one key only",
                );
            }
            let key_id = kr
                .id
                .as_ref()
                .map_or_else(|| format!("{id}-key-{}", i + 1), |k| k.get_ref().clone());
            if !self.key_ids.insert(key_id.clone()) {
                self.err(
                    kr.id.as_ref().map_or_else(|| span(k), span),
                    &format!("{kf}.id"),
                    format!(
                        "key id `{key_id}` is used twice; key ids must be unique across tenants"
                    ),
                );
            }
            keys.push(KeyEntry {
                spec: KeySpec {
                    id: key_id,
                    labels: kr.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    exempt,
                },
                hash,
            });
        }
        if self.errors.len() > before {
            return None;
        }
        Some(TenantEntry {
            spec: TenantSpec {
                id: id.to_owned(),
                tier: r.tier.as_ref().map(|t| t.get_ref().clone()),
                environment: r.environment.clone(),
                groups: r.groups.clone(),
                labels: r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                time_zone: r.time_zone.as_ref().map(|t| t.get_ref().clone()),
                overrides,
                exempt,
            },
            name: r.name.clone(),
            keys,
        })
    }
}

/// `2026-12-31` (end of that day, UTC) or an RFC 3339 timestamp.
fn parse_instant(s: &str) -> Option<sluice_core::Instant> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return u64::try_from(ts.as_nanosecond()).ok().map(sluice_core::Instant);
    }
    let date: jiff::civil::Date = s.parse().ok()?;
    let next = date.tomorrow().ok()?;
    let ts = next.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    u64::try_from(ts.as_nanosecond()).ok().map(sluice_core::Instant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells() {
        assert_eq!(cell("rpm"), Some((Metric::Requests, "1m".parse().ok())));
        assert_eq!(cell("tpd"), Some((Metric::Tokens, "1d".parse().ok())));
        assert_eq!(cell("itpm"), Some((Metric::InputTokens, "1m".parse().ok())));
        assert_eq!(cell("rpmo"), Some((Metric::Requests, "1mo".parse().ok())));
        assert_eq!(cell("concurrent"), Some((Metric::Concurrent, None)));
        assert_eq!(cell("rpx"), None);
        assert_eq!(cell("tokens"), None);
    }
}

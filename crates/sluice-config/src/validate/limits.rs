//! Limits and conditions: a tier's or a group's model table and `limits`,
//! the top-level `[[limits]]`, and the `when`/`unless` conditions they and
//! the exemptions test, each checked against the names the file defines.

use std::ops::Range;

use sluice_core::{
    ClauseSpec, ConditionSpec, Fact, LimitSpec, Metric, Period, Scope, Window, WindowKind,
};
use toml::Spanned;

use super::{Names, Validator, list, name_span, span};
use crate::raw::{RawCondition, RawLimit, RawTier, RawUnless};

const FACTS_ALLOWED: &str = "tier, environment, group, tenant, tenant.<label>, key, key.<label>, endpoint, model, model_class, user";
const CELLS_ALLOWED: &str = "rps, rpm, rph, rpd, rpw, rpmo (requests), tps, tpm, tph, tpd, tpw, tpmo (tokens), itpm, itpd, … (input tokens), otpm, otpd, … (output tokens), concurrent";

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

impl Validator<'_> {
    pub(super) fn section(
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
                        max_wait: None,
                        hard: false,
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

    pub(super) fn limit(
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
        let money = metric == Some(Metric::Cost);
        let amount =
            self.number(*r.amount.get_ref(), span(&r.amount), &format!("{field}.amount"), money);
        if money {
            self.money_limits.insert(name.clone());
        }
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
            let message = if money && w.kind == WindowKind::Rolling {
                format!(
                    "a rolling `cost` limit holds at most {} (money is counted in millionths, and a rolling amount is at most 4,294,967,295 of them); use a calendar window (`kind = \"calendar\"`) for more",
                    sluice_core::Money { micros: u64::from(u32::MAX), currency: "USD" }
                )
            } else {
                e.to_string()
            };
            self.err(r.window.as_ref().map(|w| w.span()), &format!("{field}.window"), message);
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
                Some(fact) => self.err(span(f), &format!("{field}.by"), format!("`{fact}` is the same for every request of a tenant and cannot split its counter; use model, endpoint, model_class, key, key.<label> or user")),
                None => self.err(span(f), &format!("{field}.by"), format!("`{}` is not a fact; use model, endpoint, model_class, key, key.<label> or user", f.get_ref())),
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
        let max_wait = self.max_wait(r.max_wait.as_ref(), &format!("{field}.max_wait"));
        let hard = r.hard.as_ref().is_some_and(|h| *h.get_ref());
        if let (Some(h), Some(m)) = (r.hard.as_ref().filter(|h| *h.get_ref()), metric)
            && !matches!(m, Metric::Tokens | Metric::OutputTokens | Metric::Cost)
        {
            self.err(span(h), &format!("{field}.hard"), format!("only a limit that counts output can be hard (`tokens`, `output_tokens` or `cost`: a request's output is what is cut); a `{m}` limit is charged in full when a request is admitted, so there is nothing to cut"));
        }
        if self.errors.len() > before {
            return None;
        }
        Some(LimitSpec {
            max_wait,
            hard,
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

    pub(super) fn condition(
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

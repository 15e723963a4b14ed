//! Tenants written in the file (`[tenants.<id>]`): their tier, time zone,
//! exemptions, overrides and keys (with their own overrides of limits split
//! by key), checked against the names of the file; key ids and key hashes
//! must be unique across tenants.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use sluice_core::{KeySpec, OverrideSpec, TenantSpec};
use toml::Spanned;

use super::{Names, Validator, list, span};
use crate::raw::{RawOverride, RawTenant};
use crate::{KeyEntry, TenantEntry};

impl Validator<'_> {
    pub(super) fn tenant(
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
        let overrides = self.grants(&r.overrides, &f, limit_names, false);
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
            let overrides = self.grants(&kr.overrides, &kf, limit_names, true);
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
                    overrides,
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

    /// The `overrides` of a tenant or (`of_key`) of one of its keys, under
    /// `field`: each names a defined limit (a key's, a limit split by key)
    /// and grants it an amount (money for a `cost` limit), until a date or
    /// for good.
    fn grants(
        &mut self,
        raw: &IndexMap<String, Spanned<RawOverride>>,
        field: &str,
        limit_names: &BTreeSet<String>,
        of_key: bool,
    ) -> Vec<OverrideSpec> {
        let mut overrides = Vec::new();
        for (limit, o) in raw {
            let of = format!("{field}.overrides.{limit}");
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
            if of_key && self.not_by_key.contains(limit) {
                self.err(span(o), &of, format!("limit `{limit}`: {}", sluice_core::NOT_BY_KEY));
                continue;
            }
            let (amount, until) = match o.get_ref() {
                RawOverride::Amount(a) => (*a, None),
                RawOverride::Full { amount, until } => (*amount, until.clone()),
            };
            let money = self.money_limits.contains(limit);
            let Some(amount) = self.number(amount, span(o), &of, money) else {
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
        overrides
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

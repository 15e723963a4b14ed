//! The dashboard's pages, rendered on the server from the board, the usage
//! history and (for one tenant) its counters read now.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use sluice_core::{CounterStore, Instant};
use sluice_served::Served;
use sluice_served::usage::LimitRow;
use sluice_store::History;
use sluice_store::history::{Counts, Grain, OVERFLOW};

use super::board::{Bar, Board};
use super::html::{clock, count, esc, number, until, url};
use super::svg::{Chart, Series, chart, meter};

/// Rows per page of the overview.
pub const PAGE: usize = 50;

/// What the overview is asked for.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct OverviewQuery {
    /// The page (from 1).
    pub page: Option<usize>,
    /// Only tenants whose id contains this.
    pub q: Option<String>,
}

/// A chart's time range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// The last 60 minutes, minute by minute.
    Hour,
    /// The last 24 hours, hour by hour.
    Day,
    /// The last 7 days, hour by hour.
    Week,
}

impl Range {
    /// From a query value (`hour` when absent or unknown).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("day") => Self::Day,
            Some("week") => Self::Week,
            _ => Self::Hour,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
        }
    }

    /// The grain, the number of buckets, and minutes per bucket.
    fn buckets(self) -> (Grain, usize, f64) {
        match self {
            Self::Hour => (Grain::Minute, 60, 1.0),
            Self::Day => (Grain::Hour, 24, 60.0),
            Self::Week => (Grain::Hour, 168, 60.0),
        }
    }

    /// The first bucket's start.
    fn from(self, now: Instant) -> Instant {
        let (grain, n, _) = self.buckets();
        let unit = match grain {
            Grain::Minute => 60,
            Grain::Hour => 3_600,
        };
        Instant::from_secs((now.as_secs() / unit + 1).saturating_sub(n as u64) * unit)
    }
}

/// A limit's bar with its name, numbers and reset.
fn limit_cell(s: &mut String, b: &Bar, now: Instant) {
    let used = b.used_at(now);
    let _ = write!(
        s,
        r#"<div class="limit" data-limit="{name}"><span class="name">{name}{part}</span>{meter}<span>{used} / {amount}</span>"#,
        name = esc(&b.name),
        part = b
            .partition
            .as_deref()
            .map(|p| format!(" <small>({})</small>", esc(p)))
            .unwrap_or_default(),
        meter = meter(used, b.amount, b.shadow),
        used = count(used),
        amount = count(b.amount),
    );
    if let Some(r) = b.reset.filter(|r| *r > now && used > 0) {
        let _ = write!(
            s,
            r#"<span class="reset" title="{}">resets {}</span>"#,
            r.rfc3339(),
            until(r, now)
        );
    }
    if b.shadow {
        s.push_str(r#"<span class="reset">shadow</span>"#);
    }
    s.push_str("</div>");
}

fn refusals_cell(s: &mut String, c: Option<&Counts>) {
    match c.filter(|c| c.limited > 0) {
        None => s.push_str(r#"<td class="num none">0</td>"#),
        Some(c) => {
            let _ = write!(
                s,
                r#"<td class="num"><span class="r429" data-429="{}">{}</span>"#,
                c.limited,
                count(c.limited)
            );
            for (limit, n) in &c.limited_by {
                let _ = write!(s, "<br><small>{}: {}</small>", esc(limit), count(*n));
            }
            s.push_str("</td>");
        }
    }
}

/// A row of the overview: its sort keys (share of the nearest limit, 429s
/// and requests of the last hour), the tenant and its limits.
type Row = (f64, u64, u64, Arc<str>, Arc<super::board::Entry>);

/// The operator's overview: every tenant, the nearest to a limit first.
pub fn overview<S: CounterStore + Clone + Unpin>(
    served: &Served<S>,
    board: &Board,
    q: &OverviewQuery,
) -> String {
    let now = served.clock.now();
    let hour_ago = Instant::from_secs(now.as_secs().saturating_sub(3_540));
    let history = served.history();
    let activity: HashMap<Arc<str>, Counts> = history
        .map(|h| h.activity(hour_ago).into_iter().map(|a| (a.tenant, a.counts)).collect())
        .unwrap_or_default();
    let filter = q.q.as_deref().map(str::trim).filter(|f| !f.is_empty());
    let mut rows: Vec<Row> = board
        .entries()
        .into_iter()
        .filter(|(id, _)| filter.is_none_or(|f| id.contains(f)))
        .map(|(id, e)| {
            let c = activity.get(&id);
            let (limited, requests) = c.map_or((0, 0), |c| (c.limited, c.requests));
            (e.nearest(now), limited, requests, id, e)
        })
        .collect();
    rows.sort_by(|a, b| {
        b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)).then_with(|| a.3.cmp(&b.3))
    });
    let pages = rows.len().div_ceil(PAGE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);

    let total: Counts = activity.values().fold(Counts::default(), |mut t, c| {
        t.add(c);
        t
    });
    let mut s = String::with_capacity(64 * 1_024);
    let _ = write!(
        s,
        r#"<h1>All tenants</h1><p class="sub">The nearest to a limit first; counters as last read (every tenant each minute, active ones every two seconds); usage of the last hour from the history. {now}</p>"#,
        now = esc(&now.rfc3339())
    );
    let _ = write!(
        s,
        r#"<div class="stats"><div>tenants<b>{}</b></div><div>requests, last hour<b>{}</b></div><div>tokens, last hour<b>{}</b></div><div>429s, last hour<b class="r429">{}</b></div></div>"#,
        count(board.entries().len() as u64),
        count(total.requests),
        number(total.tokens() as f64),
        count(total.limited)
    );
    if let Some(h) = history {
        let stats = h.stats();
        if stats.overflowed > 0 || activity.contains_key(OVERFLOW) {
            let _ = write!(
                s,
                r#"<p class="error">The history keeps at most {} series (tenant and model): {} events of further ones are counted under “{}”.</p>"#,
                count(h.settings().max_series as u64),
                count(stats.overflowed),
                esc(OVERFLOW)
            );
        }
        let (requests, limited) = all_minutes(h, now);
        s.push_str(&chart(&Chart {
            title: "Requests per minute, all tenants, last hour",
            id: "all-requests",
            from: clock(Range::Hour.from(now)),
            to: clock(now),
            series: vec![
                Series { name: "admitted", color: "#2b6cb0", values: requests },
                Series { name: "429", color: "#c53030", values: limited },
            ],
        }));
    }
    let _ = write!(
        s,
        r#"<form class="search" method="get" action="/dashboard"><input name="q" placeholder="tenant id" value="{}"> <button type="submit">Filter</button></form>"#,
        esc(filter.unwrap_or(""))
    );
    s.push_str(r#"<table id="tenants"><thead><tr><th>Tenant</th><th>Tier</th><th>Limits (used / limit, reset)</th><th class="num">429s, last hour</th><th class="num">Requests, last hour</th><th class="num">Tokens, last hour</th></tr></thead><tbody>"#);
    for (_, _, _, id, e) in rows.iter().skip((page - 1) * PAGE).take(PAGE) {
        let c = activity.get(id);
        let _ = write!(
            s,
            r#"<tr data-tenant="{id}"><td><a href="/dashboard/tenants/{href}">{id}</a></td><td>{tier}</td><td>"#,
            id = esc(id),
            href = url(id),
            tier = esc(&e.tier)
        );
        for b in e.bars.iter().take(4) {
            limit_cell(&mut s, b, now);
        }
        if e.bars.len() > 4 {
            let _ = write!(s, r#"<small class="none">and {} more</small>"#, e.bars.len() - 4);
        }
        s.push_str("</td>");
        refusals_cell(&mut s, c);
        let _ = write!(
            s,
            r#"<td class="num">{}</td><td class="num">{}</td></tr>"#,
            count(c.map_or(0, |c| c.requests)),
            number(c.map_or(0, Counts::tokens) as f64)
        );
    }
    s.push_str("</tbody></table>");
    if pages > 1 {
        let q = filter.map(|f| format!("&q={}", url(f))).unwrap_or_default();
        let _ = write!(s, r#"<p class="pager">Page {page} of {pages}. "#);
        if page > 1 {
            let _ = write!(s, r#"<a href="/dashboard?page={}{q}">previous</a>"#, page - 1);
        }
        if page < pages {
            let _ = write!(s, r#"<a href="/dashboard?page={}{q}" rel="next">next</a>"#, page + 1);
        }
        s.push_str("</p>");
    }
    s
}

/// Every tenant's admitted requests and 429s per minute of the last hour.
fn all_minutes(h: &History, now: Instant) -> (Vec<f64>, Vec<f64>) {
    let from = Range::Hour.from(now);
    let mut requests = vec![0.0; 60];
    let mut limited = vec![0.0; 60];
    for a in h.activity(from) {
        for (i, c) in h.series(&a.tenant, None, Grain::Minute, from, 60).iter().enumerate() {
            requests[i] += c.requests as f64;
            limited[i] += c.limited as f64;
        }
    }
    (requests, limited)
}

/// Requests and tokens per minute for `range`, of every model or one.
fn charts(
    s: &mut String,
    h: &History,
    tenant: &str,
    model: Option<&str>,
    range: Range,
    now: Instant,
    id: &str,
) {
    let (grain, n, per) = range.buckets();
    let from = range.from(now);
    let buckets = h.series(tenant, model, grain, from, n);
    let values =
        |f: fn(&Counts) -> u64| buckets.iter().map(|c| f(c) as f64 / per).collect::<Vec<f64>>();
    let label = |at: Instant| match range {
        Range::Hour => clock(at),
        _ => at.rfc3339()[5..16].replace('T', " "),
    };
    let what = model.map_or_else(
        || "all models".to_owned(),
        |m| {
            if m.is_empty() { "refused before the model was read".to_owned() } else { m.to_owned() }
        },
    );
    let avg = if per > 1.0 { ", hourly average" } else { "" };
    s.push_str(r#"<div class="charts">"#);
    s.push_str(&chart(&Chart {
        title: &format!("Requests per minute — {what}, last {}{avg}", range.name()),
        id: &format!("{id}-requests"),
        from: label(from),
        to: label(now),
        series: vec![
            Series { name: "admitted", color: "#2b6cb0", values: values(|c| c.requests) },
            Series { name: "429", color: "#c53030", values: values(|c| c.limited) },
        ],
    }));
    s.push_str(&chart(&Chart {
        title: &format!("Tokens per minute — {what}, last {}{avg}", range.name()),
        id: &format!("{id}-tokens"),
        from: label(from),
        to: label(now),
        series: vec![
            Series { name: "input", color: "#2f855a", values: values(|c| c.input_tokens) },
            Series { name: "output", color: "#b7791f", values: values(|c| c.output_tokens) },
        ],
    }));
    s.push_str("</div>");
}

/// One tenant's page: its limits now, its 429s, and its charts. `base`:
/// this page's path (for the range links).
pub fn tenant(
    history: Option<&History>,
    tenant: &str,
    tier: &str,
    rows: &[(LimitRow, Arc<str>)],
    range: Range,
    now: Instant,
    base: &str,
) -> String {
    let mut s = String::with_capacity(32 * 1_024);
    let _ = write!(
        s,
        r#"<h1 data-tenant="{t}">{t}</h1><p class="sub">Tier <b>{tier}</b> · counters read {now}</p><h2>Limits</h2><table id="limits"><thead><tr><th>Limit</th><th>Endpoint</th><th>Used</th><th class="num">Remaining</th><th>Resets</th></tr></thead><tbody>"#,
        t = esc(tenant),
        tier = esc(tier),
        now = esc(&now.rfc3339())
    );
    for (row, name) in rows {
        let st = &row.status;
        let part = row
            .found
            .model
            .as_deref()
            .map(|m| format!(" <small>({})</small>", esc(m)))
            .unwrap_or_default();
        let _ = write!(
            s,
            r#"<tr data-limit="{name}"><td>{name}{part}</td><td>{what}</td><td><div class="limit">{meter}<span>{used} / {amount}</span></div></td><td class="num">{rem}</td><td>{reset}</td></tr>"#,
            name = esc(name),
            what = esc(row.found.endpoint.as_ref()),
            meter = meter(st.used, st.amount, st.shadow),
            used = count(st.used),
            amount = count(st.amount),
            rem = count(st.remaining),
            reset = st.reset.filter(|r| *r > now).map_or_else(String::new, |r| format!(
                r#"<span title="{}">{}</span>"#,
                r.rfc3339(),
                until(r, now)
            )),
        );
    }
    s.push_str("</tbody></table>");
    let Some(h) = history else {
        s.push_str(r#"<p class="sub">The usage history is off (<code>[history] enabled = false</code>).</p>"#);
        return s;
    };
    let ago = |secs: u64| Instant::from_secs(now.as_secs().saturating_sub(secs));
    let (hour, day) = (h.totals(tenant, ago(3_540)), h.totals(tenant, ago(86_400)));
    s.push_str(r#"<h2>429s</h2><table id="refusals"><thead><tr><th>Limit</th><th class="num">Last hour</th><th class="num">Last day</th></tr></thead><tbody>"#);
    if day.limited == 0 {
        s.push_str(r#"<tr><td colspan="3" class="none">none in the last day</td></tr>"#);
    }
    for (limit, n) in &day.limited_by {
        let _ = write!(
            s,
            r#"<tr data-limit="{l}"><td>{l}</td><td class="num r429">{}</td><td class="num">{}</td></tr>"#,
            count(hour.limited_by(limit)),
            count(*n),
            l = esc(limit)
        );
    }
    s.push_str("</tbody></table>");
    let recent = h.refusals(tenant, ago(86_400), 20);
    if !recent.is_empty() {
        s.push_str(r#"<h2>Recent 429s</h2><table id="recent"><thead><tr><th>Minute (UTC)</th><th>Model</th><th>Limit</th><th class="num">429s</th></tr></thead><tbody>"#);
        for r in &recent {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#,
                esc(&r.at.rfc3339()),
                if r.model.is_empty() { "—".into() } else { esc(&r.model) },
                esc(&r.limit),
                count(r.count)
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str(r#"<h2 id="charts">Usage</h2><p class="tabs">"#);
    for r in [Range::Hour, Range::Day, Range::Week] {
        let _ = write!(
            s,
            r##"<a href="{base}?range={n}#charts"{on}>last {n}</a>"##,
            n = r.name(),
            on = if r == range { r#" class="on""# } else { "" }
        );
    }
    s.push_str("</p>");
    charts(&mut s, h, tenant, None, range, now, "all");
    for (i, m) in h.models(tenant).iter().enumerate() {
        let what = if m.is_empty() {
            "Refused before the model was read".to_owned()
        } else {
            format!("Model {}", m)
        };
        let _ = write!(s, r#"<h2 data-model="{}">{}</h2>"#, esc(m), esc(&what));
        charts(&mut s, h, tenant, Some(m), range, now, &format!("model-{i}"));
    }
    s
}

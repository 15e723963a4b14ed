//! Charts as inline SVG, drawn on the server: no script, no library, no
//! network. A chart is a row of bars, one per bucket, each a stack of
//! series (requests and 429s; input and output tokens).

use std::fmt::Write;

use super::html::{esc, number};

/// One series of a chart: a name, a colour and one value per bucket.
pub struct Series<'a> {
    /// Its name (the legend).
    pub name: &'a str,
    /// Its colour (`#rrggbb`).
    pub color: &'a str,
    /// One value per bucket.
    pub values: Vec<f64>,
}

/// A stacked bar chart.
pub struct Chart<'a> {
    /// What it shows (`requests per minute`); also the accessible name.
    pub title: &'a str,
    /// A name tests and styles can find it by.
    pub id: &'a str,
    /// Labels under the first and the last bar.
    pub from: String,
    /// The label under the last bar.
    pub to: String,
    /// The series, stacked in this order from the bottom.
    pub series: Vec<Series<'a>>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 52.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;

/// The chart as an SVG element inside a `<figure>`.
pub fn chart(c: &Chart<'_>) -> String {
    let n = c.series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let totals: Vec<f64> =
        (0..n).map(|i| c.series.iter().filter_map(|s| s.values.get(i)).sum()).collect();
    let max = nice(totals.iter().copied().fold(0.0, f64::max));
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bar = if n == 0 { 0.0 } else { plot_w / n as f64 };
    let mut s = String::with_capacity(256 + n * 120 * c.series.len());
    let _ = write!(s, r#"<figure class="chart"><figcaption>{title}"#, title = esc(c.title));
    for series in &c.series {
        let _ = write!(
            s,
            r#" <span class="key"><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{}"/></svg> {}</span>"#,
            series.color,
            esc(series.name)
        );
    }
    let _ = write!(
        s,
        r#"</figcaption><svg class="chart" data-chart="{id}" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{title}">"#,
        id = esc(c.id),
        title = esc(c.title)
    );
    // Axes and the top and middle gridlines.
    for (frac, label) in [(1.0, max), (0.5, max / 2.0), (0.0, 0.0)] {
        let y = TOP + plot_h * (1.0 - frac);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#d0d5dd" stroke-width="1"/><text x="{tx}" y="{ty:.1}" text-anchor="end" font-size="10" fill="#555">{label}</text>"##,
            x2 = WIDTH - 4.0,
            tx = LEFT - 4.0,
            ty = y + 3.5,
            label = number(label)
        );
    }
    if max > 0.0 {
        for i in 0..n {
            let x = LEFT + bar * i as f64;
            let mut base = TOP + plot_h;
            let mut tip = String::new();
            for series in &c.series {
                let v = series.values.get(i).copied().unwrap_or(0.0);
                if v > 0.0 {
                    let _ = write!(tip, "{}: {} ", series.name, number(v));
                }
            }
            if tip.is_empty() {
                continue;
            }
            let _ = write!(s, "<g><title>{}</title>", esc(tip.trim_end()));
            for series in &c.series {
                let v = series.values.get(i).copied().unwrap_or(0.0);
                if v <= 0.0 {
                    continue;
                }
                let h = (v / max * plot_h).max(1.0);
                base -= h;
                let _ = write!(
                    s,
                    r#"<rect x="{x:.2}" y="{base:.2}" width="{w:.2}" height="{h:.2}" fill="{color}"/>"#,
                    w = (bar - 1.0).max(1.0),
                    color = series.color
                );
            }
            s.push_str("</g>");
        }
    }
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{y}" font-size="10" fill="#555">{from}</text><text x="{x}" y="{y}" font-size="10" fill="#555" text-anchor="end">{to}</text></svg></figure>"##,
        y = HEIGHT - 4.0,
        x = WIDTH - 4.0,
        from = esc(&c.from),
        to = esc(&c.to)
    );
    s
}

/// A round number at or above `v` for the top of the axis.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 0.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

/// A bar of `used` out of `amount`, as an SVG (no inline style: the
/// page's content security policy allows none).
pub fn meter(used: u64, amount: u64, shadow: bool) -> String {
    let frac = if amount == 0 { 0.0 } else { (used as f64 / amount as f64).min(1.0) };
    let color = if shadow {
        "#a0aec0"
    } else if frac >= 1.0 {
        "#c53030"
    } else if frac >= 0.8 {
        "#dd6b20"
    } else {
        "#2b6cb0"
    };
    format!(
        r##"<svg class="meter" width="120" height="10" role="img" aria-label="{pct:.0}%"><rect width="120" height="10" fill="#e2e8f0"/><rect width="{w:.1}" height="10" fill="{color}"/></svg>"##,
        pct = frac * 100.0,
        w = frac * 120.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_scale_to_their_largest_stack_and_escape_names() {
        let c = Chart {
            title: "requests <per> minute",
            id: "requests",
            from: "10:00".into(),
            to: "11:00".into(),
            series: vec![
                Series { name: "requests", color: "#000000", values: vec![1.0, 3.0, 0.0] },
                Series { name: "429s", color: "#ff0000", values: vec![0.0, 1.0, 0.0] },
            ],
        };
        let svg = chart(&c);
        assert!(svg.contains("requests &lt;per&gt; minute"));
        assert_eq!(svg.matches("<rect x=").count(), 3, "{svg}");
        assert!(svg.contains(">5<"), "the axis tops at a round 5: {svg}");
        assert_eq!(nice(0.0), 0.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(1_200.0), 2_000.0);
        assert!(meter(5, 10, false).contains("width=\"60.0\""));
    }
}

//! Pieces of the dashboard's HTML: escaping, numbers, times, the page frame.

use std::borrow::Cow;
use std::fmt::Write;

use sluice_core::Instant;

/// The stylesheet, served at `/dashboard/style.css`.
pub const STYLE: &str = include_str!("style.css");

/// Escapes text for HTML (elements and quoted attributes).
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.contains(['<', '>', '&', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes text for a URL path segment.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A number for people: `950`, `1.2k`, `3.4M`, `0.25`.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A whole number with thousands separated: `12,000`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How long until `at`, for people: `in 42s`, `in 3h 05m`, `now`.
pub fn until(at: Instant, now: Instant) -> String {
    let s = at.as_secs().saturating_sub(now.as_secs());
    match s {
        0 => "now".into(),
        1..=59 => format!("in {s}s"),
        60..=3_599 => format!("in {}m {:02}s", s / 60, s % 60),
        3_600..=86_399 => format!("in {}h {:02}m", s / 3_600, (s % 3_600) / 60),
        _ => format!("in {}d {}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

/// `HH:MM` (UTC) of an instant.
pub fn clock(at: Instant) -> String {
    let m = at.as_secs() / 60;
    format!("{:02}:{:02}", (m / 60) % 24, m % 60)
}

/// Who is looking, for the page's header.
pub enum Viewer<'a> {
    /// Nobody yet (the login page).
    Nobody,
    /// The operator.
    Operator,
    /// A tenant.
    Tenant(&'a str),
}

/// A whole page.
pub fn page(title: &str, viewer: &Viewer<'_>, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 1_024);
    let _ = write!(
        s,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{title} · Sluice</title><link rel="stylesheet" href="/dashboard/style.css"></head><body><header><span class="brand">Sluice usage</span>"#,
        title = esc(title)
    );
    match viewer {
        Viewer::Nobody => {}
        Viewer::Operator => s.push_str(
            r#"<nav><a href="/dashboard">All tenants</a></nav><span class="who">operator</span>"#,
        ),
        Viewer::Tenant(t) => {
            let _ = write!(s, r#"<span class="who">tenant {}</span>"#, esc(t));
        }
    }
    if !matches!(viewer, Viewer::Nobody) {
        s.push_str(
            r#"<form method="post" action="/dashboard/logout" class="logout"><button type="submit">Log out</button></form>"#,
        );
    }
    s.push_str("</header><main>");
    s.push_str(body);
    s.push_str("</main></body></html>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_numbers_read_well() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
        assert!(matches!(esc("plain"), Cow::Borrowed(_)));
        assert_eq!(url("org/a b"), "org%2Fa%20b");
        assert_eq!(
            (number(950.0), number(1_234.0), number(2_500_000.0)),
            ("950".into(), "1.2k".into(), "2.5M".into())
        );
        assert_eq!(count(12_000), "12,000");
        let now = Instant::from_secs(1_000);
        assert_eq!(until(Instant::from_secs(1_042), now), "in 42s");
        assert_eq!(until(Instant::from_secs(1_000 + 3 * 3_600 + 300), now), "in 3h 05m");
        assert_eq!(clock(Instant::from_secs(3_600 * 25 + 60 * 7)), "01:07");
    }
}

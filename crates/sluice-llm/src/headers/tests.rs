use sluice_core::{Clock, Cost, FakeClock, HeaderProfile, LimitSpec};

use super::*;
use crate::testutil::{Store, calendar, limit, policy, rolling};

/// 10:00 UTC: 14 hours before the day's calendar reset.
fn ten_am() -> Instant {
    FakeClock::at("2026-03-02T10:00:00Z").now()
}

fn openai_limits() -> Vec<LimitSpec> {
    vec![
        limit("rpm", Metric::Requests, 60, rolling("1m")),
        limit("tpm", Metric::Tokens, 30_000, rolling("1m")),
        limit("rpd", Metric::Requests, 1_000, calendar("1d")),
        limit("tpd", Metric::Tokens, 1_000_000, calendar("1d")),
    ]
}

fn headers_of(p: &Policy, d: &Decision, now: Instant) -> Vec<(String, String)> {
    render_headers(d, p, now, &HeaderOptions::default())
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn openai_style_headers_on_admission() {
    let p = policy(openai_limits(), HeaderProfile::default());
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::tokens(100, 50), now);
    assert!(d.is_admitted());
    assert_eq!(
        headers_of(&p, &d, now),
        pairs(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "29850"),
            ("x-ratelimit-reset-tokens", "300ms"),
            ("x-ratelimit-limit-requests-day", "1000"),
            ("x-ratelimit-remaining-requests-day", "999"),
            ("x-ratelimit-reset-requests-day", "14h0m0s"),
            ("x-ratelimit-limit-tokens-day", "1000000"),
            ("x-ratelimit-remaining-tokens-day", "999850"),
            ("x-ratelimit-reset-tokens-day", "14h0m0s"),
        ])
    );
}

#[test]
fn families_without_limits_are_left_out() {
    let p =
        policy(vec![limit("rpm", Metric::Requests, 60, rolling("1m"))], HeaderProfile::default());
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::REQUEST, now);
    let names: Vec<String> = headers_of(&p, &d, now).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests"
        ]
    );
}

#[test]
fn least_remaining_wins_and_shadows_are_ignored() {
    let mut all = limit("rpm-all", Metric::Requests, 10, rolling("1m"));
    all.by = vec![];
    let mut shadow = limit("rpm-shadow", Metric::Requests, 2, rolling("1m"));
    shadow.shadow = true;
    let p = policy(
        vec![limit("rpm", Metric::Requests, 60, rolling("1m")), all, shadow],
        HeaderProfile::default(),
    );
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::REQUEST, now);
    let h = headers_of(&p, &d, now);
    assert_eq!(h[0], ("x-ratelimit-limit-requests".into(), "10".into()));
    assert_eq!(h[1], ("x-ratelimit-remaining-requests".into(), "9".into()));
    assert_eq!(h[2], ("x-ratelimit-reset-requests".into(), "6s".into()));
}

#[test]
fn reset_formats() {
    let now = ten_am();
    let run = |reset: ResetFormat| {
        let profile = HeaderProfile { reset, ..HeaderProfile::default() };
        let p = policy(openai_limits(), profile);
        let d = Store::default().admit(&p, Cost::tokens(100, 50), now);
        headers_of(&p, &d, now)
            .into_iter()
            .filter(|(k, _)| k.starts_with("x-ratelimit-reset-"))
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(ResetFormat::Seconds), ["1", "0.3", "50400", "50400"]);
    let midnight = FakeClock::at("2026-03-03T00:00:00Z").now().as_secs().to_string();
    let in_1s = (now.as_secs() + 1).to_string();
    // 0.3 s from now rounds up to the next whole second.
    assert_eq!(run(ResetFormat::Epoch), [in_1s.clone(), in_1s, midnight.clone(), midnight]);
    assert!(run(ResetFormat::Omit).is_empty());
}

#[test]
fn seconds_format_trims_to_milliseconds() {
    let now = Instant::from_secs(1_000);
    let s = |ns: u64| {
        let mut b = String::new();
        assert!(write_reset(&mut b, ResetFormat::Seconds, Instant(now.0 + ns), now));
        b
    };
    assert_eq!(s(0), "0");
    assert_eq!(s(1), "0.001");
    assert_eq!(s(33_011_380_000_000), "33011.38");
    assert_eq!(s(1_500_000_000), "1.5");
    assert_eq!(s(2_050_000_000), "2.05");
    assert_eq!(s(2_005_000_000), "2.005");
    // A reset in the past reads as now.
    let mut b = String::new();
    write_reset(&mut b, ResetFormat::Duration, Instant(0), now);
    assert_eq!(b, "0s");
}

#[test]
fn limited_by_the_minute_says_when_to_retry() {
    let p =
        policy(vec![limit("rpm", Metric::Requests, 2, rolling("1m"))], HeaderProfile::default());
    let now = ten_am();
    let mut store = Store::default();
    store.admit(&p, Cost::REQUEST, now);
    store.admit(&p, Cost::REQUEST, now);
    let d = store.admit(&p, Cost::REQUEST, now);
    let Outcome::Limited { retry_at, .. } = d.outcome else { panic!("{d:?}") };
    assert_eq!(retry_at.since(now), Duration::from_secs(30));
    assert_eq!(
        headers_of(&p, &d, now),
        pairs(&[
            ("x-ratelimit-limit-requests", "2"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1m0s"),
            ("retry-after-ms", "30000"),
            ("retry-after", "30"),
        ])
    );
}

#[test]
fn retry_after_rounds_up_and_is_at_least_one() {
    let p =
        policy(vec![limit("tpm", Metric::Tokens, 60_000, rolling("1m"))], HeaderProfile::default());
    let now = ten_am();
    let mut store = Store::default();
    assert!(store.admit(&p, Cost::tokens(60_000, 0), now).is_admitted());
    // One token refills every millisecond: 7 tokens need 7 ms.
    let d = store.admit(&p, Cost::tokens(7, 0), now);
    let h = headers_of(&p, &d, now);
    assert!(h.contains(&("retry-after-ms".into(), "7".into())), "{h:?}");
    assert!(h.contains(&("retry-after".into(), "1".into())), "{h:?}");
    // A wait already over (clock moved on) still says at least 1 ms.
    let later = Instant(now.0 + 3_600_000_000_000);
    let h = headers_of(&p, &d, later);
    assert!(h.contains(&("retry-after-ms".into(), "1".into())), "{h:?}");
    assert!(h.contains(&("retry-after".into(), "1".into())), "{h:?}");
}

#[test]
fn long_waits_say_do_not_retry() {
    let p =
        policy(vec![limit("rpd", Metric::Requests, 2, calendar("1d"))], HeaderProfile::default());
    let now = ten_am();
    let mut store = Store::default();
    store.admit(&p, Cost::REQUEST, now);
    store.admit(&p, Cost::REQUEST, now);
    let d = store.admit(&p, Cost::REQUEST, now);
    assert_eq!(
        headers_of(&p, &d, now),
        pairs(&[
            ("x-ratelimit-limit-requests-day", "2"),
            ("x-ratelimit-remaining-requests-day", "0"),
            ("x-ratelimit-reset-requests-day", "14h0m0s"),
            ("retry-after-ms", "50400000"),
            ("retry-after", "50400"),
            ("x-should-retry", "false"),
        ])
    );
    // A raised threshold keeps the SDKs retrying.
    let opts = HeaderOptions { no_retry_after: Duration::from_secs(86_400) };
    let h = render_headers(&d, &p, now, &opts);
    assert!(!h.iter().any(|(k, _)| *k == X_SHOULD_RETRY));
}

#[test]
fn too_large_says_do_not_retry_and_no_retry_after() {
    let p =
        policy(vec![limit("tpm", Metric::Tokens, 1_000, rolling("1m"))], HeaderProfile::default());
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::tokens(900, 500), now);
    assert!(matches!(d.outcome, Outcome::TooLarge { .. }));
    assert_eq!(
        headers_of(&p, &d, now),
        pairs(&[
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", "1000"),
            ("x-ratelimit-reset-tokens", "0s"),
            ("x-should-retry", "false"),
        ])
    );
}

#[test]
fn ietf_fields_for_request_limits_only() {
    let profile = HeaderProfile { ietf: true, ..HeaderProfile::default() };
    let p = policy(openai_limits(), profile);
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::tokens(100, 50), now);
    let h = headers_of(&p, &d, now);
    let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(
        get("ratelimit-policy").as_deref(),
        Some(r#""rpm";q=60;w=60, "rpd";q=1000;w=86400"#)
    );
    assert_eq!(get("ratelimit").as_deref(), Some(r#""rpm";r=59;t=1, "rpd";r=999;t=50400"#));
    // Only token limits: no IETF fields.
    let p = policy(
        vec![limit("tpm", Metric::Tokens, 100, rolling("1m"))],
        HeaderProfile { ietf: true, ..HeaderProfile::default() },
    );
    let d = Store::default().admit(&p, Cost::tokens(1, 1), now);
    assert!(!headers_of(&p, &d, now).iter().any(|(k, _)| k.starts_with("ratelimit")));
}

/// `w` is the window as counted: a calendar month of 31 days is 2,678,400
/// seconds and one of 28 days 2,419,200 (not a nominal 30 days).
#[test]
fn ietf_window_of_a_calendar_month_is_its_real_length() {
    let profile = HeaderProfile { ietf: true, ..HeaderProfile::default() };
    let p = policy(vec![limit("rpmo", Metric::Requests, 5_000, calendar("1mo"))], profile);
    for (at, days) in [("2026-03-02T10:00:00Z", 31), ("2026-02-10T10:00:00Z", 28)] {
        let now = FakeClock::at(at).now();
        let d = Store::default().admit(&p, Cost::REQUEST, now);
        let h = headers_of(&p, &d, now);
        let policy_field = h.iter().find(|(k, _)| k == "ratelimit-policy").map(|(_, v)| v.clone());
        assert_eq!(
            policy_field.as_deref(),
            Some(format!(r#""rpmo";q=5000;w={}"#, days * 86_400).as_str()),
            "{at}"
        );
    }
}

#[test]
fn sf_strings_are_escaped() {
    let mut b = String::new();
    sf_string(&mut b, "a\"b\\c é");
    assert_eq!(b, r#""a\"b\\c _""#);
}

#[test]
fn other_families() {
    let profile = HeaderProfile {
        families: vec![
            HeaderFamily::new(HeaderMetric::InputTokens, HeaderSpan::Minute),
            HeaderFamily::new(HeaderMetric::Requests, HeaderSpan::Hour),
            HeaderFamily::new(HeaderMetric::Tokens, HeaderSpan::Month),
        ],
        ..HeaderProfile::default()
    };
    let p = policy(
        vec![
            limit("itpm", Metric::InputTokens, 1_000, rolling("1m")),
            limit("rph", Metric::Requests, 100, rolling("1h")),
            limit("tpmo", Metric::Tokens, 1_000_000, calendar("1mo")),
            limit("conc", Metric::Concurrent, 4, None),
        ],
        profile,
    );
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::tokens(10, 5), now);
    let h = headers_of(&p, &d, now);
    let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-ratelimit-limit-input-tokens",
            "x-ratelimit-remaining-input-tokens",
            "x-ratelimit-reset-input-tokens",
            "x-ratelimit-limit-requests-hour",
            "x-ratelimit-remaining-requests-hour",
            "x-ratelimit-reset-requests-hour",
            "x-ratelimit-limit-tokens-month",
            "x-ratelimit-remaining-tokens-month",
            "x-ratelimit-reset-tokens-month",
        ]
    );
    assert_eq!(h[1].1, "990");
    assert_eq!(h[4].1, "99");
    assert_eq!(h[7].1, "999985");
    // March 2 10:00 to April 1 00:00.
    assert_eq!(h[8].1, "710h0m0s");
}

#[test]
fn name_table_matches_suffixes() {
    for m in [
        HeaderMetric::Requests,
        HeaderMetric::Tokens,
        HeaderMetric::InputTokens,
        HeaderMetric::OutputTokens,
        HeaderMetric::Cost,
    ] {
        for s in [HeaderSpan::Minute, HeaderSpan::Hour, HeaderSpan::Day, HeaderSpan::Month] {
            let f = HeaderFamily::new(m, s);
            let suffix = f.suffix();
            let [l, r, t] = family_header_names(f);
            assert_eq!(l.as_str(), format!("x-ratelimit-limit-{suffix}"));
            assert_eq!(r.as_str(), format!("x-ratelimit-remaining-{suffix}"));
            assert_eq!(t.as_str(), format!("x-ratelimit-reset-{suffix}"));
        }
    }
}

#[test]
fn insert_replaces_upstream_values() {
    let p = policy(openai_limits(), HeaderProfile::default());
    let now = ten_am();
    let d = Store::default().admit(&p, Cost::tokens(100, 50), now);
    let mut map = HeaderMap::new();
    map.insert("x-ratelimit-limit-requests", HeaderValue::from_static("5000"));
    map.insert("x-ratelimit-limit-project-tokens", HeaderValue::from_static("1"));
    map.insert("content-type", HeaderValue::from_static("application/json"));
    map.append("retry-after", HeaderValue::from_static("3"));
    remove_headers(&mut map, is_rate_limit_header);
    assert_eq!(map.len(), 1);
    map.insert("x-ratelimit-limit-requests", HeaderValue::from_static("5000"));
    insert_headers(&mut map, &d, &p, now, &HeaderOptions::default());
    assert_eq!(map.get_all("x-ratelimit-limit-requests").iter().count(), 1);
    assert_eq!(map["x-ratelimit-limit-requests"], "60");
    assert_eq!(map.len(), 13);
}

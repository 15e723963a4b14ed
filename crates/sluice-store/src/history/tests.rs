#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_core::FakeClock;

use super::*;

/// Records one event of `tenant` and `model` (names interned per test).
fn record(h: &History, tenant: &str, model: &str, step: Step<'_>) {
    let (t, m): (Arc<str>, Arc<str>) = (Arc::from(tenant), Arc::from(model));
    h.record(&RequestEvent::new(&t, &m, step));
}

fn refused(limit: &str) -> Arc<str> {
    Arc::from(limit)
}

fn history(clock: &Arc<FakeClock>) -> History {
    History::local(HistorySettings::default(), clock.clone())
}

#[test]
fn events_land_in_their_minute_and_hour() {
    let clock = Arc::new(FakeClock::at("2026-05-04T10:00:30Z"));
    let h = history(&clock);
    let start = clock.now();
    for _ in 0..3 {
        record(&h, "acme", "m1", Step::Admitted);
        record(&h, "acme", "m1", Step::Settled { input_tokens: 10, output_tokens: 5 });
    }
    record(&h, "acme", "", Step::Refused { limit: &refused("rpm") });
    clock.advance(Duration::from_secs(60));
    record(&h, "acme", "m2", Step::Admitted);
    record(&h, "acme", "m2", Step::Refused { limit: &refused("tpd") });
    record(&h, "other", "m1", Step::Admitted);

    let minutes = h.series("acme", None, Grain::Minute, start, 3);
    assert_eq!(minutes.iter().map(|c| c.requests).collect::<Vec<_>>(), [3, 1, 0]);
    assert_eq!((minutes[0].input_tokens, minutes[0].output_tokens), (30, 15));
    assert_eq!((minutes[0].limited_by("rpm"), minutes[1].limited_by("tpd")), (1, 1));
    let m2 = h.series("acme", Some("m2"), Grain::Minute, start, 2);
    assert_eq!(m2.iter().map(|c| c.requests).collect::<Vec<_>>(), [0, 1]);
    let hours = h.series("acme", None, Grain::Hour, start, 1);
    assert_eq!((hours[0].requests, hours[0].limited), (4, 2));
    assert_eq!(h.models("acme").iter().map(|m| &**m).collect::<Vec<_>>(), ["", "m1", "m2"]);

    let total = h.totals("acme", start);
    assert_eq!((total.requests, total.tokens(), total.limited), (4, 45, 2));
    let refusals = h.refusals("acme", start, 10);
    assert_eq!(refusals.len(), 2);
    assert_eq!((&*refusals[0].limit, &*refusals[0].model), ("tpd", "m2"), "newest first");
    let activity = h.activity(start);
    assert_eq!(activity.len(), 2);
    assert!(h.refusals("other", start, 10).is_empty());
}

#[test]
fn minutes_go_after_their_horizon_and_hours_after_theirs() {
    let clock = Arc::new(FakeClock::at("2026-05-04T10:00:00Z"));
    let h = history(&clock);
    let start = clock.now();
    record(&h, "acme", "m", Step::Admitted);
    clock.advance(Duration::from_secs(7 * 3600));
    record(&h, "acme", "m", Step::Admitted);
    h.collect();
    assert_eq!(h.series("acme", None, Grain::Minute, start, 1)[0].requests, 0, "minutes: 6 h");
    assert_eq!(h.series("acme", None, Grain::Hour, start, 1)[0].requests, 1, "hours: 8 days");
    assert_eq!(h.stats().minute_buckets, 1);
    clock.advance(Duration::from_secs(9 * 24 * 3600));
    h.collect();
    assert_eq!(h.stats(), HistoryStats::default(), "all gone");
}

#[test]
fn the_data_file_keeps_the_history() {
    let dir = std::env::temp_dir().join(format!("sluice-history-{}", std::process::id()));
    let path = dir.join("data.redb");
    let _ = std::fs::remove_file(&path);
    let clock = Arc::new(FakeClock::at("2026-05-04T10:00:00Z"));
    let start = clock.now();
    {
        let file = crate::FileTenants::open(&path).unwrap();
        let h = history(&clock);
        record(&h, "acme", "m", Step::Admitted);
        record(&h, "acme", "m", Step::Refused { limit: &refused("rpm") });
        assert_eq!(h.save(&file).unwrap(), 2, "a minute and an hour");
        assert_eq!(h.save(&file).unwrap(), 0, "nothing changed");
        clock.advance(Duration::from_secs(60));
        record(&h, "acme", "m", Step::Settled { input_tokens: 7, output_tokens: 3 });
        assert_eq!(h.save(&file).unwrap(), 2, "the new minute, the hour again");
    }
    let file = crate::FileTenants::open(&path).unwrap();
    let h = history(&clock);
    assert_eq!(h.load(&file).unwrap(), 3);
    let minutes = h.series("acme", Some("m"), Grain::Minute, start, 2);
    assert_eq!((minutes[0].requests, minutes[0].limited_by("rpm")), (1, 1));
    assert_eq!(minutes[1].tokens(), 10);
    // Past the horizon: dropped from memory and from the file.
    clock.advance(Duration::from_secs(9 * 24 * 3600));
    h.collect();
    h.save(&file).unwrap();
    let again = history(&clock);
    assert_eq!(again.load(&file).unwrap(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

//! Budgets in money (`metric = "cost"`), on every store: requests are
//! charged their model's price in micro-units, reserved from the estimate
//! and settled from the usage, and a window's spend resets when it turns.

use std::time::Duration;

use sluice_core::money::Billed;
use sluice_core::{Cost, Outcome, Usage};

use crate::harness::{Harness, StoreFactory, denied_by, is_limited, policy, status, tenant};
use crate::scenarios::{Expect, Scenario, Source, Step, run_scenario};

/// $2.50 / $1.25 cached / $10.00 per million tokens on `gpt`, $0.15 / $0.60
/// on `mini`, $20 / $60 for anything else; a tenant's day is $1.00 and its
/// month $20.00 (calendar), its rolling hour $0.50.
const MONEY: &str = r#"
[policy]
currency = "USD"
default_price = { input = 20.00, output = 60.00 }

[models.gpt]
price = { input = 2.50, cached_input = 1.25, output = 10.00 }
[models.mini]
price = { input = 0.15, output = 0.60 }

[[limits]]
name = "daily-budget"
metric = "cost"
amount = 1
window = "1d"

[[limits]]
name = "monthly-budget"
metric = "cost"
amount = 20.00
window = "1mo"

[[limits]]
name = "hourly-budget"
metric = "cost"
amount = 0.5
window = "1h"
kind = "rolling"
"#;

/// What a request of `input` and `output` tokens costs at $2.50/$10.00 per
/// million, in micro-units, rounded up.
fn gpt_micros(input: u64, output: u64) -> u64 {
    (input * 2_500_000 + output * 10_000_000).div_ceil(1_000_000)
}

/// Each request is reserved at its estimate and settled at its usage, to
/// the micro-unit, on every budget; a cached prompt is charged its cached
/// price; a model without a price is charged the default price.
pub fn money_is_charged_to_the_micro_unit<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(MONEY), "2026-05-10T08:00:00Z");
    let t = h.tenant(&tenant("acme"));
    // 1,000 in + 500 out on gpt: $0.0075 reserved.
    let d = h.admit(&t, "gpt", Cost::tokens(1_000, 500));
    assert!(d.is_admitted());
    assert_eq!(status(&h.policy, &d, "daily-budget").requested, 7_500);
    assert_eq!(status(&h.policy, &d, "daily-budget").used, 7_500);
    // It used 1,000 in, 800 of them from the cache, and 100 out:
    // 200 × 2.5 + 800 × 1.25 + 100 × 10 = 2,500 micro-units.
    let usage = Usage {
        billed: Billed { input: 1_000, cached_input: 800, output: 100 },
        ..Usage::tokens(1_000, 100)
    };
    h.settle(d.reservation().unwrap(), usage);
    let p = h.peek(&t, "gpt");
    for name in ["daily-budget", "monthly-budget", "hourly-budget"] {
        assert_eq!(status(&h.policy, &p, name).used, 2_500, "{name}");
    }
    // One token of input on mini: 0.15 micro-units, charged 1.
    let d = h.admit(&t, "mini", Cost::tokens(1, 0));
    h.settle(d.reservation().unwrap(), Usage::tokens(1, 0));
    assert_eq!(status(&h.policy, &h.peek(&t, "gpt"), "daily-budget").used, 2_501);
    // An unlisted model is charged the default price: 100 in at $20/M.
    let d = h.admit(&t, "somebody-elses-model", Cost::tokens(100, 0));
    assert_eq!(status(&h.policy, &d, "daily-budget").requested, 2_000);
    h.settle(d.reservation().unwrap(), Usage::REFUND);
    assert_eq!(status(&h.policy, &h.peek(&t, "gpt"), "daily-budget").used, 2_501);
}

/// A simulated month of traffic: every day's requests are settled with
/// random usage; the month's budget holds exactly the sum of what each was
/// charged (no drift), and each day's budget starts again at zero.
pub fn a_month_of_spend_adds_up_exactly<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(MONEY), "2026-05-01T00:30:00Z");
    let t = h.tenant(&tenant("acme"));
    let mut month = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for day in 0..31 {
        let mut today = 0u64;
        for _ in 0..6 {
            let (input, output) = (next(3_000) + 1, next(700));
            let d = h.admit(&t, "gpt", Cost::tokens(input, output));
            assert!(d.is_admitted(), "day {day}: {}", denied_by(&h.policy, &d));
            let (used_in, cached, used_out) = (input, next(input + 1), next(900));
            let usage = Usage {
                billed: Billed { input: used_in, cached_input: cached, output: used_out },
                ..Usage::tokens(used_in, used_out)
            };
            h.settle(d.reservation().unwrap(), usage);
            let micros =
                ((used_in - cached) * 2_500_000 + cached * 1_250_000 + used_out * 10_000_000)
                    .div_ceil(1_000_000);
            today += micros;
            month += micros;
            // Spread over the day, far apart enough that the rolling hour
            // has room again.
            h.advance(Duration::from_secs(3 * 3_600));
        }
        let p = h.peek(&t, "gpt");
        assert_eq!(status(&h.policy, &p, "daily-budget").used, today, "day {day}");
        assert_eq!(status(&h.policy, &p, "monthly-budget").used, month, "day {day}");
        // Past midnight: the daily budget is back at zero; the month keeps
        // every micro-unit.
        h.advance(Duration::from_secs(6 * 3_600));
        let p = h.peek(&t, "gpt");
        assert_eq!(status(&h.policy, &p, "daily-budget").used, 0, "day {day} ({today} spent)");
        if day < 30 {
            assert_eq!(status(&h.policy, &p, "monthly-budget").used, month, "day {day}");
        }
    }
    // It is June the 1st: the month has turned too.
    let p = h.peek(&t, "gpt");
    assert_eq!(status(&h.policy, &p, "monthly-budget").used, 0);
    assert!(month > 0);
}

/// A budget denies the request that would pass it, names itself, and says
/// when there is room: a daily budget at the next midnight.
pub fn a_budget_denies_until_its_window_turns<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(MONEY), "2026-05-10T20:00:00Z");
    let t = h.tenant(&tenant("acme"));
    // $0.40 a request (40,000 in at $2.50 + 30,000 out at $10 = 0.1 + 0.3):
    // the rolling hour ($0.50) admits one, then denies.
    let big = Cost::tokens(40_000, 30_000);
    assert_eq!(gpt_micros(40_000, 30_000), 400_000);
    let d = h.admit(&t, "gpt", big);
    assert!(d.is_admitted());
    let d = h.admit(&t, "gpt", big);
    assert!(is_limited(&d));
    assert_eq!(denied_by(&h.policy, &d), "hourly-budget");
    // Spend the day's dollar over a few hours.
    h.advance(Duration::from_secs(3_600));
    assert!(h.admit(&t, "gpt", big).is_admitted());
    h.advance(Duration::from_secs(3_600));
    let d = h.admit(&t, "gpt", big);
    assert!(is_limited(&d), "the third $0.40 passes the day's $1.00");
    assert_eq!(denied_by(&h.policy, &d), "daily-budget");
    let Outcome::Limited { retry_at, .. } = d.outcome else { unreachable!() };
    assert_eq!(retry_at, sluice_core::Instant::parse("2026-05-11T00:00:00Z").unwrap());
    // After midnight it has room again.
    h.advance(Duration::from_secs(2 * 3_600));
    assert!(h.admit(&t, "gpt", big).is_admitted());
    // A request whose estimate alone passes a whole budget is too large.
    let d = h.admit(&t, "gpt", Cost::tokens(0, 100_000));
    assert!(matches!(d.outcome, Outcome::TooLarge { .. }), "{:?}", d.outcome);
    assert_eq!(denied_by(&h.policy, &d), "hourly-budget");
}

/// A Developer-tier tenant with a $10 a day budget across two models at
/// their own prices, a Free-tier tenant with none, in the provider style.
const TIERS: &str = r#"
[policy]
default_tier = "free"
default_price = { input = 10.00, output = 30.00 }

[models.big]
price = { input = 5.00, output = 15.00 }
[models.small]
price = { input = 0.50, output = 1.50 }

[tiers.free.models]
big = { rpd = 10 }
small = { rpd = 100 }

[tiers.developer.models]
big = { rpd = 1_000 }
small = { rpd = 10_000 }

[[tiers.developer.limits]]
name = "daily-budget"
metric = "cost"
amount = 10
window = "1d"
"#;

const fn prompt(tenant: &'static str, model: &'static str, tokens: u64, expect: Expect) -> Step {
    Step::Admit { tenant, key: None, user: None, endpoint: "chat", model, tokens, times: 1, expect }
}

static DEVELOPER_BUDGET: Scenario = Scenario {
    name: "A Developer tier with $10 a day across models",
    policy: Source::Text(TIERS),
    start: "2026-05-01T08:00:00Z",
    tenants: &[("dev", Some("developer"), None, &[]), ("free", None, None, &[])],
    keys: &[],
    steps: &[
        // $5.00 of the big model's prompts, $4.00 of the small one's.
        prompt("dev", "big", 1_000_000, Expect::Remaining("daily-budget", 5_000_000)),
        prompt("dev", "small", 8_000_000, Expect::Remaining("daily-budget", 1_000_000)),
        // $1.50 does not fit the dollar left; $1.00 does, exactly.
        prompt("dev", "big", 300_000, Expect::DeniedBy("daily-budget")),
        prompt("dev", "small", 2_000_000, Expect::Remaining("daily-budget", 0)),
        // A single token costs a micro-unit: none left.
        prompt("dev", "small", 1, Expect::DeniedBy("daily-budget")),
        // $15 can never fit $10.
        prompt("dev", "big", 3_000_000, Expect::TooLarge("daily-budget")),
        // The Free tier has no budget, only its requests per day.
        prompt("free", "big", 3_000_000, Expect::Admitted),
        // The next day, the budget is whole again.
        Step::Wait(std::time::Duration::from_secs(86_400)),
        prompt("dev", "big", 1_000_000, Expect::Remaining("daily-budget", 5_000_000)),
    ],
};

/// The scenario, on one store.
pub fn a_developer_tier_with_a_daily_budget_across_models<F: StoreFactory>(f: &F) {
    run_scenario(f, &DEVELOPER_BUDGET);
}

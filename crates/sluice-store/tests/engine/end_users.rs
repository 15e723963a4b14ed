//! End users inside a tenant (OpenAI's `user`), on every store: each end
//! user split from the others inside the tenant's budget, one seen for the
//! first time held to the per-end-user budget from its first request,
//! requests without one sharing one budget, conditions on end users, and a
//! store that holds counters only for end users it admitted, however many
//! are invented.

use std::time::Duration;

use sluice_core::Cost;

use crate::harness::{Harness, StoreFactory, denied_by, is_limited, policy, status, tenant};
use crate::scenarios::{Expect::*, MIN, Scenario, Source, Step, chat_as, run_scenario};

/// A tenant's 5 requests a minute, and 2 for each of its end users.
const SPLIT: &str = r#"
[models.m]

[[limits]]
name = "rpm"
metric = "requests"
amount = 5
window = "1m"

[[limits]]
name = "end-user-rpm"
metric = "requests"
amount = 2
window = "1m"
by = ["user"]
"#;

/// Alice and Bob each get their 2 a minute, inside the tenant's 5: one end
/// user out of its budget leaves the others theirs, and the tenant's budget
/// still caps them all.
pub fn end_users_are_split_inside_the_tenants_budget<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(SPLIT), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    for user in ["alice", "bob"] {
        for n in 0..2 {
            let d = h.admit_as(&t, Some(user), "m", Cost::REQUEST);
            assert!(d.is_admitted(), "{user}, request {n}: {d:?}");
            assert_eq!(status(&h.policy, &d, "end-user-rpm").remaining, 1 - n, "{user}");
        }
        let d = h.admit_as(&t, Some(user), "m", Cost::REQUEST);
        assert!(is_limited(&d), "{user}: {d:?}");
        assert_eq!(denied_by(&h.policy, &d), "end-user-rpm", "{user}");
    }
    // The tenant has used 4 of its 5: Carol gets the last one, Dave none.
    let d = h.admit_as(&t, Some("carol"), "m", Cost::REQUEST);
    assert_eq!(status(&h.policy, &d, "rpm").remaining, 0);
    let d = h.admit_as(&t, Some("dave"), "m", Cost::REQUEST);
    assert_eq!(denied_by(&h.policy, &d), "rpm");
    // Denials charged nothing: Dave's own budget is whole.
    let p = h.peek_req(&{
        let mut req = h.request(&t, None, "chat", "m", Cost::REQUEST);
        req.end_user = sluice_core::EndUser::of("dave");
        req
    });
    assert_eq!(status(&h.policy, &p, "end-user-rpm").used, 0);
    // Another tenant's Alice is another end user.
    let other = h.tenant(&tenant("globex"));
    assert!(h.admit_as(&other, Some("alice"), "m", Cost::REQUEST).is_admitted());
}

/// An end user never seen before is held to the per-end-user budget from
/// its very first request (nothing to create first, no free pass): its
/// first request already counts against its 2 a minute.
pub fn a_first_seen_end_user_is_held_to_its_budget_from_its_first_request<F: StoreFactory>(f: &F) {
    let text = SPLIT.replace("amount = 5\n", "amount = 500\n");
    let h = Harness::new(f, policy(&text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    for user in ["first-seen-1", "first-seen-2", "first-seen-3"] {
        let d = h.admit_as(&t, Some(user), "m", Cost::REQUEST);
        let s = status(&h.policy, &d, "end-user-rpm");
        assert!(d.is_admitted(), "{user}: {d:?}");
        assert_eq!((s.amount, s.used, s.remaining), (2, 1, 1), "{user}");
        assert!(h.admit_as(&t, Some(user), "m", Cost::REQUEST).is_admitted(), "{user}");
        let d = h.admit_as(&t, Some(user), "m", Cost::REQUEST);
        assert_eq!(denied_by(&h.policy, &d), "end-user-rpm", "{user}");
    }
    // Its budget comes back as any rolling window's does.
    h.advance(Duration::from_secs(31));
    assert!(h.admit_as(&t, Some("first-seen-1"), "m", Cost::REQUEST).is_admitted());
    assert!(is_limited(&h.admit_as(&t, Some("first-seen-1"), "m", Cost::REQUEST)));
}

/// Requests that name no end user (or an empty one) are one end user,
/// `""`: together they get one end user's budget, and named end users
/// keep theirs.
pub fn requests_without_an_end_user_share_one_budget<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(SPLIT), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    assert!(h.admit_as(&t, None, "m", Cost::REQUEST).is_admitted());
    assert!(h.admit_as(&t, Some(""), "m", Cost::REQUEST).is_admitted());
    for user in [None, Some("")] {
        let d = h.admit_as(&t, user, "m", Cost::REQUEST);
        assert_eq!(denied_by(&h.policy, &d), "end-user-rpm", "{user:?}");
    }
    // The tenant-wide limit counts them as any request: 3 of 5 left.
    let d = h.admit_as(&t, Some("alice"), "m", Cost::REQUEST);
    assert_eq!(status(&h.policy, &d, "rpm").remaining, 2);
    assert_eq!(status(&h.policy, &d, "end-user-rpm").remaining, 1);
}

/// `when` and `unless` test the end user, and so do exemptions: a VIP's own
/// smaller limit, a batch end user left out of the per-end-user limit, an
/// operator exempt from the tenant-wide one.
pub fn conditions_test_the_end_user<F: StoreFactory>(f: &F) {
    let text = r#"
[models.m]

[[limits]]
name = "rpm"
metric = "requests"
amount = 10
window = "1m"

[[limits]]
name = "end-user-rpm"
metric = "requests"
amount = 3
window = "1m"
by = ["user"]
unless = { user = ["batch"] }

[[limits]]
name = "trial-user-rpm"
metric = "requests"
amount = 1
window = "1m"
by = ["end_user"]
when = { end_user = ["trial-1", "trial-2"] }

[[exemptions]]
name = "operators"
limits = ["rpm"]
when = { user = "ops" }
"#;
    let h = Harness::new(f, policy(text), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    let names = |d: &sluice_core::Decision| -> Vec<String> {
        let mut v: Vec<String> = d
            .statuses
            .iter()
            .filter_map(|s| h.policy.limit(s.limit))
            .map(|l| l.name.to_string())
            .collect();
        v.sort();
        v
    };
    // A trial end user: its own 1 a minute on top of the 3.
    let d = h.admit_as(&t, Some("trial-1"), "m", Cost::REQUEST);
    assert_eq!(names(&d), ["end-user-rpm", "rpm", "trial-user-rpm"]);
    let d = h.admit_as(&t, Some("trial-1"), "m", Cost::REQUEST);
    assert_eq!(denied_by(&h.policy, &d), "trial-user-rpm");
    // Each trial end user has its own.
    assert!(h.admit_as(&t, Some("trial-2"), "m", Cost::REQUEST).is_admitted());
    // The batch end user: only the tenant's limit.
    for _ in 0..5 {
        let d = h.admit_as(&t, Some("batch"), "m", Cost::REQUEST);
        assert_eq!(names(&d), ["rpm"]);
    }
    // 7 of the tenant's 10 used; the operator is not counted there.
    for _ in 0..3 {
        let d = h.admit_as(&t, Some("ops"), "m", Cost::REQUEST);
        assert_eq!(names(&d), ["end-user-rpm"]);
    }
    let d = h.admit_as(&t, Some("alice"), "m", Cost::REQUEST);
    assert_eq!(status(&h.policy, &d, "rpm").remaining, 2);
}

/// Bounded memory whoever invents end users: a counter of an end user
/// exists only once a request of theirs was admitted (a denied request
/// writes nothing), so 10,000 invented end users against a tenant's 5
/// requests a minute leave counters for 5 of them, and the tenant's own.
pub fn invented_end_users_leave_counters_only_for_those_admitted<F: StoreFactory>(f: &F) {
    let h = Harness::new(f, policy(SPLIT), "2026-05-01T10:00:00Z");
    let t = h.tenant(&tenant("acme"));
    let mut admitted = 0;
    for n in 0..10_000 {
        let user = format!("invented-{n}");
        let d = h.admit_as(&t, Some(&user), "m", Cost::REQUEST);
        if d.is_admitted() {
            admitted += 1;
        } else {
            assert_eq!(denied_by(&h.policy, &d), "rpm", "{user}");
        }
    }
    assert_eq!(admitted, 5);
    let counters = h.counters_of(f, &t);
    assert_eq!(counters, 1 + 5, "the tenant's counter and one for each end user admitted");
}

/// An application's key with 500 requests a minute in all and 20 for each
/// of its end users (LiteLLM's "end user budgets", OpenAI's `user`).
const APP: &str = r#"
[policy]
name = "end users"
description = "An application's key: 500 requests a minute in all, 20 for each of its end users"

[models."gpt-4o-mini"]

[[limits]]
name = "rpm"
metric = "requests"
amount = 500
window = "1m"

[[limits]]
name = "end-user-rpm"
description = "each end user of the application"
metric = "requests"
amount = 20
window = "1m"
by = ["user"]
"#;

const MINI: &str = "gpt-4o-mini";

static SCENARIO: Scenario = Scenario {
    name: "An application with 500 RPM, each of its end users 20 RPM",
    policy: Source::Text(APP),
    start: "2026-05-01T08:00:00Z",
    tenants: &[("app", None, None, &[])],
    keys: &[],
    steps: &[
        chat_as("app", Some("alice"), MINI, 1, Remaining("end-user-rpm", 19)),
        chat_as("app", Some("alice"), MINI, 19, Admitted),
        chat_as("app", Some("alice"), MINI, 1, DeniedBy("end-user-rpm")),
        // Bob is not held back by Alice.
        chat_as("app", Some("bob"), MINI, 20, Admitted),
        // Carol, never seen: held to 20 from her first request.
        chat_as("app", Some("carol"), MINI, 1, Remaining("end-user-rpm", 19)),
        // Requests naming no end user share one end user's 20.
        chat_as("app", None, MINI, 20, Admitted),
        chat_as("app", None, MINI, 1, DeniedBy("end-user-rpm")),
        // 61 used; 21 more end users take 420, Dave 19: the 500 are spent.
        Step::EndUsers { tenant: "app", model: MINI, users: 21, times: 20, expect: Admitted },
        chat_as("app", Some("dave"), MINI, 18, Admitted),
        chat_as("app", Some("dave"), MINI, 1, Remaining("rpm", 0)),
        // Dave has room of his own, but the application has none.
        chat_as("app", Some("dave"), MINI, 1, DeniedBy("rpm")),
        chat_as("app", Some("erin"), MINI, 1, DeniedBy("rpm")),
        Step::Wait(MIN),
        chat_as("app", Some("alice"), MINI, 20, Admitted),
        chat_as("app", Some("erin"), MINI, 1, Remaining("end-user-rpm", 19)),
    ],
};

/// The scenario, on one store.
pub fn an_application_with_per_end_user_limits<F: StoreFactory>(f: &F) {
    run_scenario(f, &SCENARIO);
}

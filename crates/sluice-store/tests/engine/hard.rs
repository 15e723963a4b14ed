//! Hard limits (`hard = true`), on every store: a request under one is
//! settled at most at what it reserved, so that the limit is never passed
//! however much the upstream reports (the gateway also cuts the output
//! there); the same limit without `hard` records the overage as debt.

use sluice_core::{Cost, Usage};

use crate::harness::{Harness, StoreFactory, is_limited, policy, status, tenant};

fn output_budget(hard: bool) -> String {
    format!(
        r#"
[models.m]
[[limits]]
name = "otpd"
metric = "output_tokens"
amount = 100
window = "1d"
hard = {hard}
"#
    )
}

/// 60 reserved, 90 reported: a hard limit counts 60, and the next 40 fit
/// exactly; a soft one counts 90 and refuses them.
pub fn a_hard_limit_is_never_passed<F: StoreFactory>(f: &F) {
    for hard in [true, false] {
        let h = Harness::new(f, policy(&output_budget(hard)), "2026-05-10T08:00:00Z");
        let t = h.tenant(&tenant("acme"));
        let d = h.admit(&t, "m", Cost::tokens(10, 60));
        assert!(d.is_admitted());
        h.settle(d.reservation().unwrap(), Usage::tokens(10, 90));
        let used = status(&h.policy, &h.peek(&t, "m"), "otpd").used;
        assert_eq!(used, if hard { 60 } else { 90 }, "hard = {hard}");
        let d = h.admit(&t, "m", Cost::tokens(10, 40));
        if hard {
            assert!(d.is_admitted());
            // Less than reserved is refunded as usual.
            h.settle(d.reservation().unwrap(), Usage::tokens(10, 25));
            assert_eq!(status(&h.policy, &h.peek(&t, "m"), "otpd").used, 85);
        } else {
            assert!(is_limited(&d), "the soft limit's debt refuses the next 40");
        }
    }
}

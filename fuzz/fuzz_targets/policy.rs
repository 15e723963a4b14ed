//! The policy file: any text gives a policy or errors with a place, never a
//! panic; a policy that loads reports its effective limits and plans a
//! request for each of its tenants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::{Cost, Instant, ModelRef, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match sluice_config::parse(text, "fuzz.toml") {
        Ok(c) => c,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a problem");
            let _ = errors.to_string();
            return;
        }
    };
    let _ = sluice_config::report::effective_limits(&config);
    let policy = &config.policy;
    let now = Instant::from_millis(1_780_000_000_000);
    for t in config.tenants.iter().take(8) {
        let Ok(facts) = policy.tenant(&t.spec) else { continue };
        for (_, m) in policy.models().take(4) {
            for (name, _) in config.endpoint_paths.iter().take(2) {
                let Some(endpoint) = policy.endpoint(name) else { continue };
                let req = Request {
                    tenant: &facts,
                    key: None,
                    endpoint,
                    model: policy.model_ref(&m.name),
                    cost: Cost::tokens(10, 10),
                };
                let plan = policy.plan(&req, now);
                let early = policy.plan_before_body(&Request { model: ModelRef::NONE, ..req }, now);
                // What is checked before the body is a part of the plan.
                for c in &early.charges {
                    assert!(plan.charges.iter().any(|p| p.key == c.key), "{c:?} not in the plan");
                }
            }
        }
    }
});

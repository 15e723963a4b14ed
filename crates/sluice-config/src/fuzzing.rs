//! The body of the `policy` fuzz target (`fuzz/fuzz_targets/`), as a plain
//! function that panics when a property fails: `cargo fuzz` runs it on
//! generated input, and the test below runs every file of
//! `fuzz/seeds/policy/` through it on stable, so that a crash turned into a
//! seed is a regression test of `cargo test`. Compiled for tests and with
//! the feature `fuzzing` (the fuzz crate's), never in a release.

use sluice_core::{Ask, Cost, EndUser, Instant, ModelRef};

/// `policy`: any text gives a policy or errors with a place, never a panic;
/// a policy that loads reports its effective limits and plans a request for
/// each of its tenants (without an end user and with one), and what is
/// checked before the body is part of the plan.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match crate::parse(text, "fuzz.toml") {
        Ok(c) => c,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a problem");
            let _ = errors.to_string();
            return;
        }
    };
    let _ = crate::report::effective_limits(&config);
    let policy = &config.policy;
    let now = Instant::from_millis(1_780_000_000_000);
    for t in config.tenants.iter().take(8) {
        let Ok(facts) = policy.tenant(&t.spec) else { continue };
        for (_, m) in policy.models().take(4) {
            for (name, _) in config.endpoint_paths.iter().take(2) {
                let Some(endpoint) = policy.endpoint(name) else { continue };
                for end_user in [EndUser::NONE, EndUser::of("alice")] {
                    let req = Ask {
                        tenant: &facts,
                        key: None,
                        endpoint,
                        model: policy.model_ref(&m.name),
                        cost: Cost::tokens(10, 10),
                        end_user,
                    };
                    let plan = policy.plan(&req, now);
                    let head = Ask { model: ModelRef::NONE, end_user: EndUser::NONE, ..req };
                    let early = policy.plan_before_body(&head, now);
                    // What is checked before the body is a part of the plan.
                    for c in &early.charges {
                        let found = plan.charges.iter().any(|p| p.key == c.key);
                        assert!(found, "{c:?} not in the plan");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn policy_seeds() {
        // Every seed, in name order; the file being run is printed first,
        // so that a failure names it.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/policy");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for file in files {
            eprintln!("replaying {}", file.display());
            super::policy(&std::fs::read(&file).expect("a seed"));
        }
    }
}

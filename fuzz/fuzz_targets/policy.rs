//! The policy file (the body, and what it checks:
//! `sluice_config::fuzzing::policy`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_config::fuzzing::policy(data));

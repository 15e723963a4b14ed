//! The admin API through its real router (the body, and what it checks:
//! `sluice_admin::fuzzing::admin`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_admin::fuzzing::admin(data));

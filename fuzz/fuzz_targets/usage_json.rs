//! The JSON walker that reads `usage` from responses and stream chunks,
//! against the serde readers it replaced (the body, and what it checks:
//! `sluice_llm::fuzzing::usage_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_llm::fuzzing::usage_json(data));

//! The request parser (the body, and what it checks:
//! `sluice_llm::fuzzing::request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_llm::fuzzing::request(data));

//! The SSE usage tap, with the stream cut anywhere (the body, and what it
//! checks: `sluice_llm::fuzzing::sse`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_llm::fuzzing::sse(data));

//! The JSON walker that reads `usage` from responses and stream chunks,
//! against the serde readers it replaced: on any valid JSON they read the
//! same thing; on anything else the walker does not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_llm::fuzzing::{by_serde, by_walker, response_by_serde, response_by_walker};

fuzz_target!(|data: &[u8]| {
    let walker = response_by_walker(data);
    let chunk = by_walker(data);
    let _ = sluice_llm::usage_from_json(data);
    // Valid JSON: UTF-8 throughout (`IgnoredAny` alone does not check the
    // bytes of strings it skips).
    if std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
    {
        assert_eq!(walker, response_by_serde(data), "response usage");
        assert_eq!(chunk, by_serde(data), "stream chunk");
    }
});

//! The JSON walker that reads `usage` from responses and stream chunks,
//! against the serde readers it replaced: on any valid JSON they read the
//! same thing (but for structs written as arrays, which the walker refuses);
//! on anything else the walker does not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_llm::fuzzing::{
    by_serde, by_walker, chunk_struct_as_array, response_as_array, response_by_serde,
    response_by_walker,
};

fuzz_target!(|data: &[u8]| {
    let walker = response_by_walker(data);
    let chunk = by_walker(data);
    let _ = sluice_llm::usage_from_json(data);
    // Valid JSON: UTF-8 throughout (`IgnoredAny` alone does not check the
    // bytes of strings it skips).
    if std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
    {
        // A struct written as an array of its fields: serde reads it, the
        // walker refuses it by design (see `response_as_array`).
        if response_as_array(data) {
            assert_eq!(walker, None, "response as an array");
        } else {
            assert_eq!(walker, response_by_serde(data), "response usage");
        }
        if chunk_struct_as_array(data) {
            assert_eq!(chunk, None, "chunk with a struct as an array");
        } else {
            assert_eq!(chunk, by_serde(data), "stream chunk");
        }
    }
});

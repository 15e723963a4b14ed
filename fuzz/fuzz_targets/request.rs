//! The request parser (chat, completions, embeddings, other): any bytes
//! give facts or an error, never a panic; facts are consistent (a model,
//! the same estimate borrowed or owned).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_llm::request::parse;
use sluice_llm::{Encoding, EndpointKind, Estimator, expected_output};

fuzz_target!(|data: &[u8]| {
    let Some((&k, body)) = data.split_first() else { return };
    let kinds = [
        EndpointKind::ChatCompletions,
        EndpointKind::Completions,
        EndpointKind::Embeddings,
        EndpointKind::Other,
    ];
    let kind = kinds[usize::from(k) % kinds.len()];
    let Ok(facts) = parse(kind, body) else { return };
    assert!(!facts.model.trim().is_empty(), "a request without a model was accepted");
    let e = Estimator::new();
    let bytes = e.input_tokens(&facts, Encoding::DEFAULT_BYTES);
    let capped = e.input_tokens_up_to(&facts, Encoding::DEFAULT_BYTES, 10);
    assert!(capped <= bytes.max(capped));
    let _ = expected_output(&facts, 1_024, 32_768);
    let text = facts.text_bytes();
    let owned = facts.into_owned();
    assert_eq!(owned.text_bytes(), text);
    assert_eq!(e.input_tokens(&owned, Encoding::DEFAULT_BYTES), bytes);
});

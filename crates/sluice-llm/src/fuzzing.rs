//! The bodies of this crate's fuzz targets (`fuzz/fuzz_targets/`), as plain
//! functions that panic when a property fails: `cargo fuzz` runs them on
//! generated input, and the tests below run every file of
//! `fuzz/seeds/<target>/` through them on stable, so that a crash turned
//! into a seed is a regression test of `cargo test`. Compiled for tests and
//! with the feature `fuzzing` (the fuzz crate's), never in a release.

use bytes::BytesMut;

use crate::request::parse;
use crate::scan::reference::{
    by_serde, by_walker, chunk_struct_as_array, response_as_array, response_by_serde,
    response_by_walker,
};
use crate::usage::Usage;
use crate::{Encoding, EndpointKind, Estimator, SseUsageTap, expected_output};

/// `request`: the request parser (chat, completions, embeddings, other):
/// any bytes give facts or an error, never a panic; facts are consistent (a
/// model, the same estimate and end user borrowed or owned). The first byte picks the
/// endpoint.
pub fn request(data: &[u8]) {
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
    let user = facts.user.as_deref().map(str::to_owned);
    let owned = facts.into_owned();
    assert_eq!(owned.text_bytes(), text);
    assert_eq!(owned.user.as_deref(), user.as_deref(), "the end user, owned");
    assert_eq!(e.input_tokens(&owned, Encoding::DEFAULT_BYTES), bytes);
}

/// `usage_json`: the JSON walker that reads `usage` from responses and
/// stream chunks, against the serde readers it replaced: on any valid JSON
/// they read the same thing (but for structs written as arrays, which the
/// walker refuses); on anything else the walker does not panic.
pub fn usage_json(data: &[u8]) {
    let walker = response_by_walker(data);
    let chunk = by_walker(data);
    let _ = crate::usage_from_json(data);
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
}

/// `sse`: the SSE usage tap: whatever the bytes, and however the stream is
/// cut into frames, it passes on the same bytes and reads the same usage
/// and the same count of generated tokens as when the stream comes whole.
/// The first byte says whether to strip the usage chunk, the next three
/// where to cut.
pub fn sse(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let (head, stream) = data.split_at(4);
    let strip = head[0] & 1 == 1;
    let n = stream.len().max(1);
    let mut cuts: Vec<usize> = head[1..].iter().map(|&b| usize::from(b) * n / 256).collect();
    cuts.sort_unstable();
    let whole = tap(stream, &[], strip);
    assert_eq!(tap(stream, &cuts, strip), whole, "cut at {cuts:?}");
    let every_byte: Vec<usize> = (1..stream.len().min(512)).collect();
    assert_eq!(tap(stream, &every_byte, strip), whole, "a byte at a time");
}

/// What the tap passes on, the usage it reads and the tokens it counts,
/// with `stream` pushed in pieces cut at `cuts`.
fn tap(stream: &[u8], cuts: &[usize], strip: bool) -> (Vec<u8>, Option<Usage>, u64) {
    let mut tap = SseUsageTap::new(strip);
    let mut out = BytesMut::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.min(stream.len()).max(at);
        tap.push(&stream[at..c], &mut out);
        at = c;
    }
    tap.push(&stream[at..], &mut out);
    tap.finish(&mut out);
    (out.to_vec(), tap.usage(), tap.estimated_output_tokens())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs every file of `fuzz/seeds/<target>/` through `check`, in name
    /// order; the file being run is printed first, so that a failure names
    /// it.
    fn replay(target: &str, check: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for file in files {
            eprintln!("replaying {}", file.display());
            check(&std::fs::read(&file).expect("a seed"));
        }
    }

    #[test]
    fn request_seeds() {
        replay("request", super::request);
    }

    #[test]
    fn usage_json_seeds() {
        replay("usage_json", super::usage_json);
    }

    #[test]
    fn sse_seeds() {
        replay("sse", super::sse);
    }
}

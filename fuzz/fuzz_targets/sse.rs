//! The SSE usage tap: whatever the bytes, and however the stream is cut
//! into frames, it passes on the same bytes and reads the same usage and
//! the same count of generated tokens as when the stream comes whole.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_llm::SseUsageTap;

fn run(stream: &[u8], cuts: &[usize], strip: bool) -> (Vec<u8>, Option<(u64, u64)>, u64) {
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
    let usage = tap.usage().map(|u| (u.input, u.output));
    (out.to_vec(), usage, tap.estimated_output_tokens())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, stream) = data.split_at(4);
    let strip = head[0] & 1 == 1;
    let n = stream.len().max(1);
    let mut cuts: Vec<usize> = head[1..].iter().map(|&b| usize::from(b) * n / 256).collect();
    cuts.sort_unstable();
    let whole = run(stream, &[], strip);
    assert_eq!(run(stream, &cuts, strip), whole, "cut at {cuts:?}");
    let every_byte: Vec<usize> = (1..stream.len().min(512)).collect();
    assert_eq!(run(stream, &every_byte, strip), whole, "a byte at a time");
});

//! Prompt estimates: tiktoken-rs (the tokenizer Sluice used) against
//! bpe-openai (the one it uses), counting exactly, and Sluice's estimate
//! (exact up to 64 KiB, sampled beyond), on prose and on letters without a
//! space (the worst case of a BPE merge), for both encodings.
//!
//! ```sh
//! cargo bench -p sluice-llm --bench tokenize
//! ```
//!
//! Not criterion: one case of tiktoken takes seconds. Each figure is the
//! median of five runs (one for runs over 2 s), after one warm-up.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice_llm::{Encoding, Estimator};

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// English-like text with punctuation, numbers, code and some non-Latin
/// words.
fn prose(n: usize) -> String {
    let words: Vec<&str> = "the|model|answers|questions|about|rate|limits,|and|every|request|\
         counts.|Sluice|reserves|tokens|before|it|runs;|It's|(json)|x = 42;|über|naïve|日本語|\n"
        .split('|')
        .collect();
    let mut x = 1u64;
    let mut s = String::with_capacity(n + 16);
    while s.len() < n {
        x = splitmix64(x);
        s.push_str(words[(x % words.len() as u64) as usize]);
        s.push(' ');
    }
    s
}

fn letters(n: usize) -> String {
    let mut x = 7u64;
    (0..n)
        .map(|_| {
            x = splitmix64(x);
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

fn time(mut f: impl FnMut() -> u64) -> (Duration, u64) {
    let start = Instant::now();
    let n = black_box(f());
    let first = start.elapsed();
    let runs = if first > Duration::from_secs(2) { 1 } else { 5 };
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        black_box(f());
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], n)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let estimator = Estimator::new();
    let exact = Estimator::new().with_exact_bytes(usize::MAX);
    println!(
        "| text | size | encoding | tiktoken-rs, ms | bpe-openai, ms | Sluice's estimate, ms | its error |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (kind, make) in [("prose", prose as fn(usize) -> String), ("letters", letters)] {
        for size in [10_000, 100_000, 400_000, 2_000_000, 4_000_000] {
            let text = make(size);
            for (name, enc, tk) in [
                ("o200k_base", Encoding::O200kBase, tiktoken_rs::o200k_base_singleton()),
                ("cl100k_base", Encoding::Cl100kBase, tiktoken_rs::cl100k_base_singleton()),
            ] {
                let (old, old_n) = time(|| tk.encode_ordinary(&text).len() as u64);
                let (new, new_n) = time(|| exact.count(&text, enc));
                assert_eq!(old_n, new_n, "the same count");
                let (est, est_n) = time(|| estimator.estimate(&[text.as_str()], enc));
                let err = (est_n as f64 - new_n as f64) / new_n as f64 * 100.0;
                println!(
                    "| {kind} | {} KB | {name} | {} | {} | {} | {err:+.1}% |",
                    size / 1000,
                    ms(old),
                    ms(new),
                    ms(est)
                );
            }
        }
    }
}

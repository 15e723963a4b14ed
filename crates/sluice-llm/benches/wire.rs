//! What the gateway spends on the wire formats per request: reading a
//! request's facts, estimating its tokens, and reading usage from a JSON
//! response and from an SSE stream (per event, with and without stripping
//! the usage chunk).
//!
//! `cargo bench -p sluice-llm --bench wire`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_llm::request::{EndpointKind, parse};
use sluice_llm::tokens::{Encoding, Estimator};
use sluice_llm::usage::{SseUsageTap, usage_from_json};

const CHUNK: &str = r#"{"id":"chatcmpl-BJ1x","object":"chat.completion.chunk","created":1743900000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_b376dfbbd5","choices":[{"index":0,"delta":{"content":" there"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
const USAGE: &str = r#"{"id":"chatcmpl-BJ1x","object":"chat.completion.chunk","created":1743900000,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":1000,"total_tokens":1019}}"#;
const REQUEST: &str = r#"{"model":"Meta-Llama-3.3-70B-Instruct","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about rate limits and quotas."}],"max_tokens":256,"temperature":0.7}"#;
const RESPONSE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1741569952,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}"#;

/// A 1,000-token stream as a server sends it, in 512-byte socket reads.
fn stream() -> Vec<u8> {
    let mut s = String::new();
    for _ in 0..1000 {
        s.push_str("data: ");
        s.push_str(CHUNK);
        s.push_str("\n\n");
    }
    s.push_str("data: ");
    s.push_str(USAGE);
    s.push_str("\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn sse(c: &mut Criterion) {
    let body = stream();
    let mut g = c.benchmark_group("sse_tap");
    g.throughput(Throughput::Elements(1002));
    for (name, strip, encoding) in [
        ("forward", false, None),
        ("strip", true, None),
        ("strip_o200k", true, Some(Encoding::O200kBase)),
    ] {
        g.bench_function(name, |b| {
            let mut out = Vec::with_capacity(body.len());
            b.iter(|| {
                let mut tap = SseUsageTap::new(strip);
                if let Some(e) = encoding {
                    tap = tap.with_encoding(e);
                }
                out.clear();
                for chunk in body.chunks(512) {
                    tap.push(chunk, &mut out);
                }
                tap.finish(&mut out);
                black_box(tap.usage())
            });
        });
    }
    g.finish();
}

fn json(c: &mut Criterion) {
    let estimator = Estimator::new();
    estimator.preload(Encoding::O200kBase);
    c.bench_function("request_facts", |b| {
        b.iter(|| {
            parse(EndpointKind::ChatCompletions, black_box(REQUEST.as_bytes())).map(|f| f.stream)
        });
    });
    c.bench_function("request_facts_and_tokens_o200k", |b| {
        b.iter(|| {
            let facts =
                parse(EndpointKind::ChatCompletions, black_box(REQUEST.as_bytes())).unwrap();
            estimator.input_tokens(&facts, Encoding::O200kBase)
        });
    });
    c.bench_function("usage_from_json", |b| {
        b.iter(|| usage_from_json(black_box(RESPONSE.as_bytes())));
    });
    // A long answer: 4 KiB of text, some of it escaped.
    let long = RESPONSE.replace(
        "Hello! How can I assist you today?",
        &"Rate limits keep a shared service fair.\\n ".repeat(100),
    );
    c.bench_function("usage_from_json_4k", |b| {
        b.iter(|| usage_from_json(black_box(long.as_bytes())));
    });
}

criterion_group!(benches, sse, json);
criterion_main!(benches);

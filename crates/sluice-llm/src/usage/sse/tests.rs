use proptest::prelude::*;

use super::*;

/// A chat completion stream as OpenAI sends it with `include_usage`.
const OPENAI_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-BJ1x\",\"object\":\"chat.completion.chunk\",\"created\":1743900000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_b376dfbbd5\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-BJ1x\",\"object\":\"chat.completion.chunk\",\"created\":1743900000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_b376dfbbd5\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-BJ1x\",\"object\":\"chat.completion.chunk\",\"created\":1743900000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_b376dfbbd5\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\\n\\\"friend\\\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-BJ1x\",\"object\":\"chat.completion.chunk\",\"created\":1743900000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_b376dfbbd5\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-BJ1x\",\"object\":\"chat.completion.chunk\",\"created\":1743900000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_b376dfbbd5\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":5,\"total_tokens\":24,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

/// The usage chunk of [`OPENAI_STREAM`].
fn usage_event() -> &'static str {
    let start = OPENAI_STREAM.find("data: {\"id\":\"chatcmpl-BJ1x\",\"object\":\"chat.completion.chunk\",\"created\":1743900000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_b376dfbbd5\",\"choices\":[],").unwrap();
    let end = OPENAI_STREAM.find("data: [DONE]").unwrap();
    &OPENAI_STREAM[start..end]
}

/// vLLM with `continuous_usage_stats`: cumulative usage on every chunk.
const VLLM_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-9f1c\",\"object\":\"chat.completion.chunk\",\"created\":1743900001,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":12,\"completion_tokens\":0}}\n\n",
    "data: {\"id\":\"chatcmpl-9f1c\",\"object\":\"chat.completion.chunk\",\"created\":1743900001,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":13,\"completion_tokens\":1}}\n\n",
    "data: {\"id\":\"chatcmpl-9f1c\",\"object\":\"chat.completion.chunk\",\"created\":1743900001,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" sky\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":14,\"completion_tokens\":2}}\n\n",
);

fn run(tap: &mut SseUsageTap, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        tap.push(c, &mut out);
    }
    tap.finish(&mut out);
    out
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    out: Vec<u8>,
    usage: Option<Usage>,
    done: bool,
    error: bool,
    stripped: bool,
    events: u64,
    text: u64,
    deltas: u64,
}

fn seen(strip: bool, chunks: &[&[u8]]) -> Seen {
    let mut tap = SseUsageTap::new(strip);
    let out = run(&mut tap, chunks);
    assert_eq!(tap.pending_len(), 0);
    Seen {
        out,
        usage: tap.usage(),
        done: tap.saw_done(),
        error: tap.saw_error(),
        stripped: tap.stripped_usage_chunk(),
        events: tap.events(),
        text: tap.generated_text_len(),
        deltas: tap.text_deltas(),
    }
}

#[test]
fn strips_the_usage_chunk_and_nothing_else() {
    let s = seen(true, &[OPENAI_STREAM.as_bytes()]);
    let expected = OPENAI_STREAM.replace(usage_event(), "");
    assert_eq!(String::from_utf8(s.out).unwrap(), expected);
    assert_eq!(s.usage, Some(Usage { input: 19, output: 5, ..Usage::default() }));
    assert!(s.done && s.stripped && !s.error);
    assert_eq!(s.events, 6);
    // "Hello" + " there\n\"friend\"" decoded.
    assert_eq!(s.text, 5 + 15);
    assert_eq!(s.deltas, 2);
}

#[test]
fn forwards_everything_when_not_stripping() {
    let s = seen(false, &[OPENAI_STREAM.as_bytes()]);
    assert_eq!(s.out, OPENAI_STREAM.as_bytes());
    assert_eq!(s.usage, Some(Usage { input: 19, output: 5, ..Usage::default() }));
    assert!(s.done && !s.stripped);
}

#[test]
fn every_split_point_gives_the_same_result() {
    for stream in
        [OPENAI_STREAM.to_owned(), OPENAI_STREAM.replace('\n', "\r\n"), VLLM_STREAM.to_owned()]
    {
        let bytes = stream.as_bytes();
        for strip in [true, false] {
            let whole = seen(strip, &[bytes]);
            for i in 0..=bytes.len() {
                let (a, b) = bytes.split_at(i);
                assert_eq!(seen(strip, &[a, b]), whole, "split at {i}");
            }
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(seen(strip, &bytewise), whole);
        }
    }
}

#[test]
fn crlf_streams() {
    let stream = OPENAI_STREAM.replace('\n', "\r\n");
    let s = seen(true, &[stream.as_bytes()]);
    let expected = stream.replace(&usage_event().replace('\n', "\r\n"), "");
    assert_eq!(String::from_utf8(s.out).unwrap(), expected);
    assert_eq!(s.usage, Some(Usage { input: 19, output: 5, ..Usage::default() }));
}

/// A reasoning model's stream: the final usage chunk carries the cached
/// prompt tokens and the reasoning tokens, and the tap keeps them.
#[test]
fn the_usage_chunk_carries_cached_and_reasoning_tokens() {
    let usage = "{\"prompt_tokens\":2006,\"completion_tokens\":300,\"total_tokens\":2306,\"prompt_tokens_details\":{\"cached_tokens\":1920,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":192,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}";
    let old = "{\"prompt_tokens\":19,\"completion_tokens\":5,\"total_tokens\":24,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}";
    assert!(OPENAI_STREAM.contains(old));
    let stream = OPENAI_STREAM.replace(old, usage);
    let want = Usage { input: 2006, output: 300, cached_input: 1920, reasoning: 192 };
    for strip in [true, false] {
        let s = seen(strip, &[stream.as_bytes()]);
        assert_eq!(s.usage, Some(want));
        assert_eq!(s.stripped, strip);
        // Cut anywhere, the same.
        let bytewise: Vec<&[u8]> = stream.as_bytes().chunks(7).collect();
        assert_eq!(seen(strip, &bytewise), s);
    }
    // The Responses API's names, on a chunk of their own.
    let s = seen(
        true,
        &[b"data: {\"choices\":[],\"usage\":{\"input_tokens\":40,\"input_tokens_details\":{\"cached_tokens\":32},\"output_tokens\":9,\"output_tokens_details\":{\"reasoning_tokens\":4}}}\n\n"],
    );
    assert_eq!(s.usage, Some(Usage { input: 40, output: 9, cached_input: 32, reasoning: 4 }));
}

#[test]
fn continuous_usage_keeps_the_latest_and_strips_nothing() {
    let s = seen(true, &[VLLM_STREAM.as_bytes()]);
    assert_eq!(s.out, VLLM_STREAM.as_bytes());
    assert_eq!(s.usage, Some(Usage { input: 12, output: 2, ..Usage::default() }));
    assert!(!s.stripped && !s.done);
    // A stream cut here still has its usage so far.
    assert_eq!(s.text, 7);
}

#[test]
fn comments_fields_and_multiline_data() {
    let stream = concat!(
        ": keep-alive\n\n",
        "event: message\nid: 7\nretry: 1000\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\n",
        "data: \"usage\":null}\n\n",
        "data:{\"choices\":[],\n",
        "data:\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        "data\n\n",
        "data: [DONE]\n\n",
    );
    let s = seen(true, &[stream.as_bytes()]);
    let expected = concat!(
        ": keep-alive\n\n",
        "event: message\nid: 7\nretry: 1000\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\n",
        "data: \"usage\":null}\n\n",
        "data\n\n",
        "data: [DONE]\n\n",
    );
    assert_eq!(String::from_utf8(s.out).unwrap(), expected);
    assert_eq!(s.usage, Some(Usage { input: 3, output: 1, ..Usage::default() }));
    assert_eq!(s.deltas, 1);
    assert!(s.done);
}

#[test]
fn chunks_without_usage_are_never_stripped() {
    // Azure's first chunk: empty choices, prompt filter results, no usage.
    let stream = concat!(
        "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n",
        "data: {\"choices\":[],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{}}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n",
        "data: not json\n\n",
        "data: {\"choices\":[] \n\n",
    );
    let s = seen(true, &[stream.as_bytes()]);
    assert_eq!(s.out, stream.as_bytes());
    assert_eq!(s.usage, Some(Usage { input: 1, output: 1, ..Usage::default() }));
    assert!(!s.stripped);
}

#[test]
fn legacy_completions_and_tool_calls_count_as_text() {
    let stream = concat!(
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"This is\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\"}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\"}},{\"index\":1,\"delta\":{\"content\":\"ok\"}}]}\n\n",
    );
    let s = seen(false, &[stream.as_bytes()]);
    assert_eq!(s.text, 7 + 11 + 8 + 3 + 2);
    assert_eq!(s.deltas, 4);
    assert_eq!(s.usage, None);
}

#[test]
fn errors_mid_stream_are_noticed() {
    let stream = "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"code\":null}}\n\n";
    let s = seen(true, &[stream.as_bytes()]);
    assert!(s.error);
    assert_eq!(s.out, stream.as_bytes());
    assert!(!seen(true, &[b"data: {\"error\":null}\n\n"]).error);
}

#[test]
fn unterminated_last_event_is_still_read() {
    // Cut right before the blank line that ends the usage chunk.
    let without_done = OPENAI_STREAM.strip_suffix("data: [DONE]\n\n").unwrap();
    let cut = without_done.strip_suffix("\n\n").unwrap();
    let s = seen(true, &[cut.as_bytes()]);
    assert_eq!(s.usage, Some(Usage { input: 19, output: 5, ..Usage::default() }));
    assert!(s.stripped);
    let usage_start = OPENAI_STREAM.find(usage_event()).unwrap();
    assert_eq!(s.out, &OPENAI_STREAM.as_bytes()[..usage_start]);
    // Cut inside the JSON: forwarded as it is, no usage.
    let cut = &without_done[..without_done.len() - 20];
    let s = seen(true, &[cut.as_bytes()]);
    assert_eq!(s.usage, None);
    assert_eq!(s.out, cut.as_bytes());
}

#[test]
fn oversized_events_pass_through_unparsed() {
    let big = format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1}},\"pad\":\"{}\"}}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":2}}}}\n\n",
        "x".repeat(5000)
    );
    let bytes = big.as_bytes();
    for chunk in [1usize, 7, 100, 4096, bytes.len()] {
        let mut tap = SseUsageTap::new(true).with_max_event_bytes(1024);
        let mut out = Vec::new();
        let mut most = 0;
        for c in bytes.chunks(chunk) {
            tap.push(c, &mut out);
            most = most.max(tap.pending_len());
        }
        tap.finish(&mut out);
        assert!(most <= 1024 + chunk, "held {most} bytes");
        // The big one went through; the small usage chunk after it was stripped.
        let first_end = big.find("\n\n").unwrap() + 2;
        assert_eq!(out, bytes[..first_end], "chunk size {chunk}");
        assert_eq!(tap.usage(), Some(Usage { input: 2, output: 0, ..Usage::default() }));
        assert_eq!(tap.events(), 2);
    }
}

#[test]
fn holds_only_the_trailing_event() {
    let mut tap = SseUsageTap::new(true);
    let mut out = Vec::new();
    for _ in 0..1000 {
        tap.push(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"cho",
            &mut out,
        );
        tap.push(b"ices\":[]}\n\n", &mut out);
    }
    assert_eq!(tap.pending_len(), 0);
    tap.push(b"data: {\"choices\"", &mut out);
    assert_eq!(tap.pending_len(), 16);
}

#[test]
fn estimates_output_without_usage() {
    let stream = OPENAI_STREAM.replace(usage_event(), "");
    let mut tap = SseUsageTap::new(true);
    run(&mut tap, &[stream.as_bytes()]);
    assert_eq!(tap.usage(), None);
    // 20 bytes / 4 = 5; 2 deltas.
    assert_eq!(tap.estimated_output_tokens(), 5);
    let mut tap = SseUsageTap::new(true).with_encoding(Encoding::O200kBase);
    run(&mut tap, &[stream.as_bytes()]);
    // "Hello" = 1; " there\n\"friend\"" = a handful.
    let t = tap.estimated_output_tokens();
    assert!((3..=8).contains(&t), "{t}");
    let mut tap = SseUsageTap::new(true).with_encoding(Encoding::Bytes { bytes_per_token: 2.0 });
    run(&mut tap, &[stream.as_bytes()]);
    assert_eq!(tap.estimated_output_tokens(), 10);
}

#[test]
fn writes_into_bytes_mut() {
    let mut tap = SseUsageTap::new(true);
    let mut out = bytes::BytesMut::new();
    tap.push(OPENAI_STREAM.as_bytes(), &mut out);
    tap.finish(&mut out);
    assert_eq!(&out[..], OPENAI_STREAM.replace(usage_event(), "").as_bytes());
}

/// One generated event and whether the tap should strip it.
fn arb_event() -> impl Strategy<Value = (String, bool)> {
    let content = "[a-zA-Z \\n\"é]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap());
    prop_oneof![
        content.prop_map(|c| (
            format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{c}}}}}],\"usage\":null}}"),
            false
        )),
        (0u64..1000, 0u64..1000).prop_map(|(p, c)| (
            format!("data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}"),
            true
        )),
        (0u64..1000, 0u64..1000).prop_map(|(p, c)| (
            format!("data: {{\"choices\":[],\ndata: \"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}"),
            true
        )),
        (0u64..1000).prop_map(|p| (
            format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{}}}}],\"usage\":{{\"prompt_tokens\":{p}}}}}"),
            false
        )),
        Just((": ping".to_owned(), false)),
        Just(("event: x\ndata: [DONE]".to_owned(), false)),
        "[ -~]{0,20}".prop_map(|s| (format!("data: {s}"), false)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_chunking_gives_the_same_output_and_usage(
        events in prop::collection::vec(arb_event(), 0..12),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        strip in any::<bool>(),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut stream = String::new();
        let mut expected = String::new();
        for (text, usage_only) in &events {
            let ev = format!("{}{nl}{nl}", text.replace('\n', nl));
            stream.push_str(&ev);
            if !(strip && *usage_only) {
                expected.push_str(&ev);
            }
        }
        if trailing {
            // An incomplete comment at the end is forwarded as it is.
            stream.push_str(": partial");
            expected.push_str(": partial");
        }
        let bytes = stream.as_bytes();
        let whole = seen(strip, &[bytes]);
        prop_assert_eq!(&whole.out, expected.as_bytes());
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        prop_assert_eq!(seen(strip, &chunks), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_pass_through(
        data in prop::collection::vec(any::<u8>(), 0..600),
        cut in any::<prop::sample::Index>(),
    ) {
        let i = cut.index(data.len() + 1);
        let s = seen(false, &[&data[..i], &data[i..]]);
        prop_assert_eq!(&s.out, &data);
        let stripped = seen(true, &[&data[..i], &data[i..]]);
        prop_assert_eq!(stripped, seen(true, &[&data]));
    }
}

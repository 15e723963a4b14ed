//! The walker against serde: the serde readers of [`super::reference`] are
//! the ones the SSE tap and `usage_from_json` used before the walker.

use proptest::prelude::*;

use super::reference::{
    by_serde, by_walker, chunk_struct_as_array, response_as_array, response_by_serde,
    response_by_walker, sorted,
};
use super::*;
use crate::usage::Usage;

// --------------------------------------------------------------- examples --

#[test]
fn reads_an_openai_chunk() {
    let data = br#"{"id":"chatcmpl-BJ1x","object":"chat.completion.chunk","created":1743900000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" there\n\"friend\""},"logprobs":null,"finish_reason":null}],"usage":null}"#;
    let c = chunk(data).unwrap();
    let choices = c.choices.unwrap();
    assert_eq!(choices.count, 1);
    assert_eq!(choices.texts.as_slice(), [" there\n\"friend\""]);
    assert!(c.usage.is_none());
    assert!(!c.error);
}

#[test]
fn reads_tool_calls_reasoning_and_legacy_text() {
    let data = br#"{"choices":[{"delta":{"reasoning_content":"think","tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\":1}"}}]}},{"text":"legacy"}]}"#;
    assert_eq!(
        by_walker(data),
        Some((
            Some((2, sorted(["think", "f", "{\"a\":1}", "legacy"].map(String::from)))),
            None,
            false,
            false
        ))
    );
}

#[test]
fn reads_usage_and_errors() {
    let data = br#"{"choices":[],"usage":{"prompt_tokens":19,"completion_tokens":5,"total_tokens":24,"prompt_tokens_details":{"cached_tokens":0}}}"#;
    assert_eq!(
        by_walker(data),
        Some((
            Some((0, vec![])),
            Some(Usage { input: 19, output: 5, ..Usage::default() }),
            true,
            false
        ))
    );
    let data = br#"{"error":{"message":"overloaded","type":"server_error"}}"#;
    assert_eq!(by_walker(data), Some((None, None, false, true)));
    assert_eq!(by_walker(br#"{"error":null}"#), Some((None, None, false, false)));
}

#[test]
fn refuses_what_serde_refuses() {
    for bad in [
        &br#"{"choices":[],"choices":[]}"#[..],
        br#"{"choices":[{"delta":{"content":5}}]}"#,
        br#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
        br#"{"choices":{}}"#,
        br#"{"choices":[null]}"#,
        br#"{"usage":{"prompt_tokens":"5"}}"#,
        br#"{"usage":5}"#,
        br#"{"id":"x"} trailing"#,
        br#"{"id":"x""#,
        br#"{"id":"a"b"}"#,
        b"{\"choices\":[{\"text\":\"tab\there\"}]}",
        b"",
    ] {
        assert_eq!(by_walker(bad), None, "{}", String::from_utf8_lossy(bad));
        assert_eq!(by_serde(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn escaped_keys_are_matched_unescaped() {
    let data = br#"{"us\u0061ge":{"prompt_tokens":3,"completion_tokens":4}}"#;
    assert_eq!(
        response_by_walker(data),
        Some(Some(Usage { input: 3, output: 4, ..Usage::default() }))
    );
    assert_eq!(response_by_walker(data), response_by_serde(data));
}

#[test]
fn a_response_usage() {
    let body = br#"{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","usage":{"prompt_tokens":1}}}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29},"service_tier":"default"}"#;
    assert_eq!(
        response_by_walker(body),
        Some(Some(Usage { input: 19, output: 10, ..Usage::default() }))
    );
    assert_eq!(response_by_walker(br#"{"usage":null}"#), Some(None));
    assert_eq!(response_by_walker(br#"{"choices":[]}"#), Some(None));
    assert_eq!(response_by_walker(b"not json"), None);
}

#[test]
fn details_read_as_serde_reads_them() {
    for (body, want) in [
        (
            r#"{"usage":{"prompt_tokens":9,"completion_tokens":5,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":3,"x":[{}]}}}"#,
            Some(Some(Usage { input: 9, output: 5, cached_input: 8, reasoning: 3 })),
        ),
        // A details object written as an array: serde's form of a struct.
        (
            r#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":[4],"completion_tokens_details":[]}}"#,
            Some(Some(Usage { input: 9, output: 0, cached_input: 4, reasoning: 0 })),
        ),
        (r#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":[4,5]}}"#, None),
        (r#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":"x"}}"#, None),
        (
            r#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":{},"prompt_tokens_details":{}}}"#,
            None,
        ),
        (
            r#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":1}}}"#,
            None,
        ),
        (
            r#"{"usage":{"output_tokens":9,"output_tokens_details":{"reasoning_tokens":12.4,"reasoning_token":1}}}"#,
            Some(Some(Usage { input: 0, output: 9, cached_input: 0, reasoning: 9 })),
        ),
    ] {
        assert_eq!(response_by_walker(body.as_bytes()), want, "{body}");
        assert_eq!(response_by_serde(body.as_bytes()), want, "{body} (serde)");
    }
}

/// Found by the `usage_json` fuzz target (it failed CI): a body that is an
/// array, `\n[]`. serde reads a struct from the array of its fields, the
/// walker refuses it (module doc): no usage, so the request is charged what
/// was reserved. The oracle expects the refusal.
#[test]
fn a_struct_written_as_an_array_is_refused() {
    let data = b"\n[]";
    assert_eq!(response_by_serde(data), Some(None));
    assert_eq!(by_serde(data), Some((None, None, false, false)));
    assert_eq!(response_by_walker(data), None);
    assert_eq!(by_walker(data), None);
    assert!(response_as_array(data) && chunk_struct_as_array(data));
    crate::fuzzing::usage_json(data);
    // With a usage as its first element: serde would bill it, the walker
    // reads none.
    let data = br#" [{"prompt_tokens":5,"completion_tokens":3}]"#;
    assert_eq!(
        response_by_serde(data),
        Some(Some(Usage { input: 5, output: 3, ..Usage::default() }))
    );
    assert_eq!(crate::usage_from_json(data), None);
    assert!(response_as_array(data));
    // A choice, a delta, a tool call, a function.
    for data in [
        &br#"{"choices":[[]]}"#[..],
        br#"{"choices":[{"delta":[]}]}"#,
        br#"{"choices":[{"delta":{"tool_calls":[[]]}}]}"#,
        br#"{"choices":[{"delta":{"tool_calls":[{"function":["f"]}]}}]}"#,
        br#"{"ch\u006fices":[{"delta":{"function_call":["f","{}"]}}]}"#,
    ] {
        let text = String::from_utf8_lossy(data);
        assert!(by_serde(data).is_some(), "{text}");
        assert_eq!(by_walker(data), None, "{text}");
        assert!(chunk_struct_as_array(data), "{text}");
        assert!(!response_as_array(data), "{text}");
    }
    // `usage` as an array is read as serde reads it, and is not one of them.
    let data = br#"{"choices":[{"delta":{}}],"usage":[1,2]}"#;
    assert_eq!(
        by_walker(data),
        Some((
            Some((1, vec![])),
            Some(Usage { input: 1, output: 2, ..Usage::default() }),
            true,
            false
        ))
    );
    assert_eq!(by_walker(data), by_serde(data));
    assert!(!chunk_struct_as_array(data));
}

// ------------------------------------------------------ generated documents --

/// A JSON document as a tree, rendered with optional spacing and escaping.
#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn render(&self, style: &Style, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => render_str(s, style.escape_all, out),
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(style.space);
                    }
                    v.render(style, out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                out.push_str(style.space);
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(style.space);
                    }
                    render_str(k, style.escape_keys, out);
                    out.push_str(style.space);
                    out.push(':');
                    out.push_str(style.space);
                    v.render(style, out);
                }
                out.push_str(style.space);
                out.push('}');
            }
        }
    }
}

#[derive(Debug)]
struct Style {
    space: &'static str,
    /// Every ASCII letter of a string as `\u00XX`.
    escape_all: bool,
    escape_keys: bool,
}

fn render_str(s: &str, escape_letters: bool, out: &mut String) {
    if !escape_letters {
        out.push_str(&serde_json::to_string(s).unwrap());
        return;
    }
    out.push('"');
    for ch in s.chars() {
        if ch.is_ascii_alphabetic() {
            out.push_str(&format!("\\u{:04x}", ch as u32));
        } else {
            let quoted = serde_json::to_string(&ch.to_string()).unwrap();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
    }
    out.push('"');
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("Hello".to_owned()),
        Just(" there\n\"friend\"".to_owned()),
        Just("naïve 😀 \\ back".to_owned()),
        Just("\u{0}\u{1f} ctl".to_owned()),
        "[a-z \"\\\\{}\\[\\]:,]{0,12}",
        any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = J> {
    prop_oneof![
        any::<u32>().prop_map(|n| J::Num(n.to_string())),
        any::<i64>().prop_map(|n| J::Num(n.to_string())),
        Just(J::Num("12.0".into())),
        Just(J::Num("-3.5e2".into())),
        Just(J::Num("1E400".into())),
        Just(J::Num("18446744073709551616".into())),
    ]
}

fn scalar() -> impl Strategy<Value = J> {
    prop_oneof![Just(J::Null), any::<bool>().prop_map(J::Bool), number(), text().prop_map(J::Str),]
}

/// Any value, nested a little; keys that the readers look for show up too.
fn any_value() -> impl Strategy<Value = J> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((key(&["usage", "content", "choices", "x"]), inner), 0..4)
                .prop_map(J::Obj),
        ]
    })
}

fn key(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(known).prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ]
}

/// A value where serde expects a struct (an object): mostly one, sometimes
/// something else (never an array: see the module doc).
fn struct_or_wrong(obj: BoxedStrategy<J>) -> BoxedStrategy<J> {
    prop_oneof![
        6 => obj,
        1 => Just(J::Null),
        1 => prop_oneof![any::<bool>().prop_map(J::Bool), number(), text().prop_map(J::Str)],
    ]
    .boxed()
}

/// Where serde expects `Option<string>`.
fn text_field() -> BoxedStrategy<J> {
    prop_oneof![6 => text().prop_map(J::Str), 1 => Just(J::Null), 1 => scalar()].boxed()
}

/// An object with fields drawn from `fields` (a key may repeat, rarely) and
/// unknown ones.
fn object(fields: &[(&'static str, BoxedStrategy<J>)]) -> BoxedStrategy<J> {
    let n = fields.len();
    let picks = prop::collection::vec((0..n + 2, any::<prop::sample::Index>()), 0..6);
    let values: Vec<BoxedStrategy<J>> = fields.iter().map(|(_, s)| s.clone()).collect();
    let names: Vec<&'static str> = fields.iter().map(|(k, _)| *k).collect();
    (picks, values, any_value())
        .prop_map(move |(picks, values, other)| {
            let mut out: Vec<(String, J)> = Vec::new();
            for (which, _) in picks {
                if which < n {
                    // A known field, at most once unless the dice say so.
                    if out.iter().any(|(k, _)| k == names[which]) && which % 3 != 0 {
                        continue;
                    }
                    out.push((names[which].to_owned(), values[which].clone()));
                } else {
                    out.push((format!("unknown{which}"), other.clone()));
                }
            }
            J::Obj(out)
        })
        .boxed()
}

fn usage_value() -> BoxedStrategy<J> {
    let count =
        || prop_oneof![4 => number(), 1 => Just(J::Null), 1 => text().prop_map(J::Str)].boxed();
    // A details object: mostly an object with its count and others, at
    // times null, an array (serde's form of a struct, which the walker
    // hands to serde) or any other value.
    let details = |name: &'static str| {
        let obj = object(&[(name, count()), ("audio_tokens", count())]);
        let arr = prop::collection::vec(count(), 0..3).prop_map(J::Arr);
        prop_oneof![6 => obj, 1 => Just(J::Null), 1 => arr, 1 => any_value()].boxed()
    };
    let obj = object(&[
        ("prompt_tokens", count()),
        ("completion_tokens", count()),
        ("total_tokens", count()),
        ("input_tokens", count()),
        ("output_tokens", count()),
        ("prompt_tokens_details", details("cached_tokens")),
        ("completion_tokens_details", details("reasoning_tokens")),
        ("input_tokens_details", details("cached_tokens")),
        ("output_tokens_details", details("reasoning_tokens")),
    ]);
    prop_oneof![5 => obj, 1 => Just(J::Null), 1 => any_value()].boxed()
}

fn function() -> BoxedStrategy<J> {
    struct_or_wrong(object(&[("name", text_field()), ("arguments", text_field())]))
}

fn delta() -> BoxedStrategy<J> {
    let tool_call = struct_or_wrong(object(&[("function", function()), ("id", text_field())]));
    let tool_calls = prop_oneof![
        4 => prop::collection::vec(tool_call, 0..3).prop_map(J::Arr),
        1 => Just(J::Null),
        1 => scalar(),
    ]
    .boxed();
    struct_or_wrong(object(&[
        ("content", text_field()),
        ("refusal", text_field()),
        ("reasoning_content", text_field()),
        ("reasoning", text_field()),
        ("tool_calls", tool_calls),
        ("function_call", function()),
        ("role", text_field()),
    ]))
}

fn chunk_doc() -> BoxedStrategy<J> {
    let choice = object(&[
        ("delta", delta()),
        ("text", text_field()),
        ("index", number().boxed()),
        ("logprobs", any_value().boxed()),
    ]);
    let choice = prop_oneof![8 => choice, 1 => scalar()].boxed();
    let choices = prop_oneof![
        5 => prop::collection::vec(choice, 0..3).prop_map(J::Arr),
        1 => Just(J::Null),
        // Not an array of arrays: see `struct_or_wrong`.
        1 => any_value().prop_filter("no arrays", |v| !matches!(v, J::Arr(_))),
    ]
    .boxed();
    object(&[
        ("choices", choices),
        ("usage", usage_value()),
        ("error", any_value().boxed()),
        ("id", text_field()),
        ("model", text_field()),
    ])
}

fn style() -> impl Strategy<Value = Style> {
    (prop::sample::select(vec!["", " ", "\n  "]), any::<bool>(), any::<bool>())
        .prop_map(|(space, a, k)| Style { space, escape_all: a, escape_keys: k })
}

fn render(doc: &J, style: &Style) -> Vec<u8> {
    let mut s = String::new();
    doc.render(style, &mut s);
    s.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn chunks_read_as_serde_reads_them(doc in chunk_doc(), style in style(), cut in any::<prop::sample::Index>()) {
        let bytes = render(&doc, &style);
        prop_assert_eq!(by_walker(&bytes), by_serde(&bytes), "{}", String::from_utf8_lossy(&bytes));
        // Cut short: neither reads anything (or both read the same).
        let short = &bytes[..cut.index(bytes.len() + 1)];
        prop_assert_eq!(by_walker(short), by_serde(short), "{}", String::from_utf8_lossy(short));
    }

    #[test]
    fn responses_read_as_serde_reads_them(
        fields in prop::collection::vec((key(&["usage", "id", "choices"]), prop_oneof![usage_value(), any_value().boxed()]), 0..5),
        style in style(),
    ) {
        let bytes = render(&J::Obj(fields), &style);
        prop_assert_eq!(response_by_walker(&bytes), response_by_serde(&bytes), "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn any_bytes_are_safe(bytes in prop::collection::vec(any::<u8>(), 0..64), prefix in "[{\\[\"a-z:,]{0,6}") {
        let mut all = prefix.into_bytes();
        all.extend_from_slice(&bytes);
        let _ = chunk(&all);
        let _ = response_usage(&all);
    }
}

// ------------------------------------------------------------ the pieces --

#[test]
fn finds_the_first_quote_or_backslash_at_any_offset() {
    // Every length up to past the word-at-a-time part, every position of
    // the stop byte, and bytes around it that differ from it by one bit
    // (the word trick's usual false friends).
    for len in 0..80 {
        for at in 0..=len {
            for stop in [b'"', b'\\'] {
                let mut b: Vec<u8> =
                    (0..len).map(|i| [b'a', b'#', b'!', b']', 0xa2, 0xdc][i % 6]).collect();
                if at < len {
                    b[at] = stop;
                }
                let want = b.iter().position(|&c| c == b'"' || c == b'\\');
                assert_eq!(super::quote_or_backslash(&b), want, "len {len} at {at} stop {stop}");
            }
        }
    }
}

#[test]
fn token_counts_read_as_serde_reads_them() {
    for (body, want) in [
        (
            r#"{"usage":{"prompt_tokens":0,"completion_tokens":7}}"#,
            Some(Some(Usage { input: 0, output: 7, ..Usage::default() })),
        ),
        (
            r#"{"usage":{"prompt_tokens":9999999999999999999,"completion_tokens":1}}"#,
            Some(Some(Usage { input: 9_999_999_999_999_999_999, output: 1, ..Usage::default() })),
        ),
        (
            r#"{"usage":{"prompt_tokens":99999999999999999999,"completion_tokens":1}}"#,
            Some(Some(Usage { input: u64::MAX, output: 1, ..Usage::default() })),
        ),
        (
            r#"{"usage":{"prompt_tokens":12.6,"completion_tokens":1e2}}"#,
            Some(Some(Usage { input: 13, output: 100, ..Usage::default() })),
        ),
        (
            r#"{"usage":{"prompt_tokens":-4,"completion_tokens":3}}"#,
            Some(Some(Usage { input: 0, output: 3, ..Usage::default() })),
        ),
        (r#"{"usage":{"prompt_tokens":01}}"#, None),
        (r#"{"usage":{"prompt_tokens":5,"prompt_tokens":6}}"#, None),
        (r#"{"usage":{"prompt_tokens":"5"}}"#, None),
        (r#"{"usage":{"prompt_tokens":5x}}"#, None),
        // The array form of a struct, which serde takes (all fields absent).
        (r#"{"usage":[]}"#, Some(None)),
    ] {
        assert_eq!(response_by_walker(body.as_bytes()), want, "{body}");
        assert_eq!(response_by_serde(body.as_bytes()), want, "{body} (serde)");
    }
}

//! Response bodies, written straight into one buffer: the shapes are fixed,
//! so writing them by hand is both simple and the cheapest way (no
//! intermediate values, one allocation per body).

use std::fmt::{Display, Write as _};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::body::MockBody;

/// Token usage of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) prompt: u64,
    /// Reasoning tokens included.
    pub(crate) completion: u64,
    /// Of `prompt`, read from cache.
    pub(crate) cached: u64,
    /// Of `completion`, spent reasoning.
    pub(crate) reasoning: u64,
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            push(out, format_args!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends a formatted value. Writing to a `String` cannot fail.
pub(crate) fn push(out: &mut String, v: impl Display) {
    let _ = write!(out, "{v}");
}

/// The start of a completion object or stream chunk, up to and including
/// `"choices":[`: id, object, created, model (and, for chat, the
/// `system_fingerprint` OpenAI sends).
pub(crate) fn push_head(
    out: &mut String,
    id: &str,
    object: &str,
    created: u64,
    model: &str,
    chat: bool,
) {
    out.push_str("{\"id\":");
    push_json_str(out, id);
    out.push_str(",\"object\":\"");
    out.push_str(object);
    out.push_str("\",\"created\":");
    push(out, created);
    out.push_str(",\"model\":");
    push_json_str(out, model);
    if chat {
        out.push_str(",\"system_fingerprint\":null");
    }
    out.push_str(",\"choices\":[");
}

/// Appends `"usage":{...}`, with its details objects as OpenAI sends them
/// (zeros but for the cached and reasoning tokens).
pub(crate) fn push_usage(out: &mut String, u: Usage) {
    out.push_str("\"usage\":{\"prompt_tokens\":");
    push(out, u.prompt);
    out.push_str(",\"completion_tokens\":");
    push(out, u.completion);
    out.push_str(",\"total_tokens\":");
    push(out, u.prompt.saturating_add(u.completion));
    out.push_str(",\"prompt_tokens_details\":{\"cached_tokens\":");
    push(out, u.cached);
    out.push_str(",\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":");
    push(out, u.reasoning);
    out.push_str(
        ",\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}",
    );
}

/// Appends `"tok tok … tok"` (`words` words) as a JSON string.
fn push_text(out: &mut String, words: u64) {
    out.push('"');
    for i in 0..words {
        out.push_str(if i == 0 { "tok" } else { " tok" });
    }
    out.push('"');
}

/// What a JSON chat or completions response says.
pub(crate) struct Completion<'a> {
    pub(crate) chat: bool,
    pub(crate) id: &'a str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) n: u64,
    pub(crate) tokens_per_choice: u64,
    pub(crate) finish_reason: &'static str,
    pub(crate) usage: Usage,
}

/// A `chat.completion` or `text_completion` body.
pub(crate) fn completion_json(c: &Completion<'_>) -> String {
    let text_len = usize::try_from(c.tokens_per_choice.saturating_mul(4)).unwrap_or(usize::MAX);
    let n = usize::try_from(c.n).unwrap_or(1);
    let mut out = String::with_capacity(
        (text_len.saturating_add(120)).saturating_mul(n).saturating_add(400 + c.model.len()),
    );
    let object = if c.chat { "chat.completion" } else { "text_completion" };
    push_head(&mut out, c.id, object, c.created, c.model, c.chat);
    for i in 0..c.n {
        if i > 0 {
            out.push(',');
        }
        if c.chat {
            out.push_str("{\"index\":");
            push(&mut out, i);
            out.push_str(",\"message\":{\"role\":\"assistant\",\"content\":");
            push_text(&mut out, c.tokens_per_choice);
            out.push_str(",\"refusal\":null}");
        } else {
            out.push_str("{\"text\":");
            push_text(&mut out, c.tokens_per_choice);
            out.push_str(",\"index\":");
            push(&mut out, i);
        }
        out.push_str(",\"logprobs\":null,\"finish_reason\":\"");
        out.push_str(c.finish_reason);
        out.push_str("\"}");
    }
    out.push_str("],");
    push_usage(&mut out, c.usage);
    out.push('}');
    out
}

/// One input's embedding.
pub(crate) struct Embedding {
    pub(crate) seed: u64,
}

/// An embeddings `list` body. Each vector is a deterministic function of its
/// input's content (same text, same vector), of unit length like OpenAI's.
pub(crate) fn embeddings_json(
    seeds: impl ExactSizeIterator<Item = Embedding>,
    dims: usize,
    base64: bool,
    model: &str,
    prompt_tokens: u64,
) -> String {
    let per = if base64 { dims.div_ceil(3) * 8 } else { dims * 12 };
    let mut out = String::with_capacity((per + 60).saturating_mul(seeds.len()) + 120);
    let mut raw = Vec::new();
    out.push_str("{\"object\":\"list\",\"data\":[");
    for (i, e) in seeds.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"object\":\"embedding\",\"index\":");
        push(&mut out, i);
        out.push_str(",\"embedding\":");
        let norm = vector(e.seed, dims).map(|v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        let values = vector(e.seed, dims).map(|v| (f64::from(v) * scale) as f32);
        if base64 {
            raw.clear();
            raw.extend(values.flat_map(f32::to_le_bytes));
            out.push('"');
            push_base64(&mut out, &raw);
            out.push('"');
        } else {
            out.push('[');
            for (j, v) in values.enumerate() {
                if j > 0 {
                    out.push(',');
                }
                push(&mut out, v);
            }
            out.push(']');
        }
        out.push('}');
    }
    out.push_str("],\"model\":");
    push_json_str(&mut out, model);
    out.push_str(",\"usage\":{\"prompt_tokens\":");
    push(&mut out, prompt_tokens);
    out.push_str(",\"total_tokens\":");
    push(&mut out, prompt_tokens);
    out.push_str("}}");
    out
}

/// `dims` pseudo-random values in [-1, 1) from `seed` (splitmix64).
fn vector(seed: u64, dims: usize) -> impl Iterator<Item = f32> {
    (0..dims as u64).map(move |j| {
        let mut z = seed.wrapping_add(j.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 24 random bits: exact in an f32.
        ((z >> 40) as f32 / (1u32 << 23) as f32) - 1.0
    })
}

/// Standard base64 with padding.
fn push_base64(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

/// The `GET /v1/models` body.
pub(crate) fn models_json(models: &[String]) -> String {
    let mut out = String::from("{\"object\":\"list\",\"data\":[");
    for (i, m) in models.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":");
        push_json_str(&mut out, m);
        out.push_str(",\"object\":\"model\",\"created\":0,\"owned_by\":\"sluice-mock\"}");
    }
    out.push_str("]}");
    out
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<MockBody> {
    let mut r = Response::new(MockBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An OpenAI error response: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<MockBody> {
    let mut out = String::with_capacity(message.len() + 100);
    out.push_str("{\"error\":{\"message\":");
    push_json_str(&mut out, message);
    out.push_str(",\"type\":");
    push_json_str(&mut out, kind);
    for (key, value) in [(",\"param\":", param), (",\"code\":", code)] {
        out.push_str(key);
        match value {
            Some(v) => push_json_str(&mut out, v),
            None => out.push_str("null"),
        }
    }
    out.push_str("}}");
    json(status, out)
}

/// The error a forced `x-mock-status` answers with, typed as OpenAI types
/// errors of that status.
pub(crate) fn status_error(status: StatusCode) -> Response<MockBody> {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("invalid_request_error", Some("unsupported_country_region_territory")),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let message = format!(
        "The mock upstream answered {} as the x-mock-status header asked.",
        status.as_u16()
    );
    error(status, &message, kind, None, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let v: String = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn completion_bodies_parse() {
        let c = Completion {
            chat: true,
            id: "chatcmpl-mock1",
            created: 7,
            model: "m\"x",
            n: 2,
            tokens_per_choice: 3,
            finish_reason: "length",
            usage: Usage { prompt: 4, completion: 6, cached: 2, reasoning: 3 },
        };
        let v: serde_json::Value = serde_json::from_str(&completion_json(&c)).unwrap();
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][1]["message"]["content"], "tok tok tok");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 10);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 3);
        let c = Completion { chat: false, tokens_per_choice: 0, n: 1, ..c };
        let v: serde_json::Value = serde_json::from_str(&completion_json(&c)).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "");
    }

    #[test]
    fn embeddings_are_unit_vectors_and_base64_matches() {
        let body = embeddings_json(
            [Embedding { seed: 1 }, Embedding { seed: 2 }].into_iter(),
            5,
            false,
            "e",
            3,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let floats: Vec<f32> = v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(floats.len(), 5);
        let norm: f32 = floats.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_ne!(v["data"][0]["embedding"], v["data"][1]["embedding"]);
        assert_eq!(v["usage"]["prompt_tokens"], 3);

        let body = embeddings_json([Embedding { seed: 1 }].into_iter(), 5, true, "e", 3);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        assert_eq!(b64.len(), 28); // 20 bytes -> 28 chars with padding
        let mut expected = String::new();
        push_base64(
            &mut expected,
            &floats.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<_>>(),
        );
        assert_eq!(b64, expected);
    }

    #[test]
    fn base64_known_values() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
        ] {
            let mut s = String::new();
            push_base64(&mut s, input);
            assert_eq!(s, want);
        }
    }
}

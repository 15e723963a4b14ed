//! The upstream body of a streamed request, with usage asked for.
//!
//! A stream only reports usage when the request says
//! `stream_options.include_usage: true`, and settlement needs that usage, so
//! the gateway forces it on and remembers whether the client had asked (if
//! not, the usage chunk is stripped again on the way back, see
//! [`crate::usage::SseUsageTap`]).
//!
//! The rest of the body is forwarded byte for byte: only the value of
//! `stream_options` is rewritten (or the member is added before the final
//! `}`), so unknown fields, number spellings and key order all survive. The
//! body is located, not re-serialized: `serde_json` hands back the raw text
//! of each top-level value, borrowed from the body, and its offset is where
//! the splice goes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::Str;

/// What to ask upstream for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewriteOptions {
    /// Also set vLLM's `stream_options.continuous_usage_stats: true`, so that
    /// every chunk carries cumulative usage and a broken stream can still be
    /// metered. Only for upstreams that accept it (vLLM, SGLang): OpenAI
    /// rejects unknown `stream_options` fields.
    pub continuous_usage_stats: bool,
}

/// The result of [`force_include_usage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite<'a> {
    /// The body to send upstream (borrowed when nothing had to change).
    pub body: Cow<'a, [u8]>,
    /// Whether the client itself had asked for `include_usage: true`.
    pub client_asked: bool,
}

/// Why a body could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// Not a JSON object.
    #[error("the request body is not a JSON object: {0}")]
    NotAnObject(String),
    /// `stream_options` is neither an object nor null.
    #[error("Invalid type for 'stream_options': expected an object.")]
    StreamOptionsNotAnObject,
    /// A member given twice.
    #[error("Invalid request body: duplicate field `{0}`.")]
    Duplicate(&'static str),
}

/// Returns `body` with `stream_options.include_usage` set to `true` (and
/// `continuous_usage_stats` if asked), changing nothing else.
pub fn force_include_usage(body: &[u8], opts: RewriteOptions) -> Result<Rewrite<'_>, RewriteError> {
    let top = scan_top(body)?;
    let Some(raw) = top.stream_options else {
        // No `stream_options`: add one as the last member.
        let out = append_member(body, top.members > 0, |out| {
            out.extend_from_slice(b"\"stream_options\":");
            write_options(out, &[], opts);
        })?;
        return Ok(Rewrite { body: Cow::Owned(out), client_asked: false });
    };
    let span = span_of(body, raw.get())
        .ok_or_else(|| RewriteError::NotAnObject("value outside the body".into()))?;
    let text = raw.get();
    let members: Vec<(Cow<'_, str>, &RawValue)> = if text == "null" {
        Vec::new()
    } else if text.starts_with('{') {
        serde_json::from_str::<Members<'_>>(text)
            .map_err(|_| RewriteError::StreamOptionsNotAnObject)?
            .0
    } else {
        return Err(RewriteError::StreamOptionsNotAnObject);
    };
    let is_true = |k: &str| members.iter().any(|(key, v)| key == k && v.get() == "true");
    let client_asked = is_true("include_usage");
    if client_asked && (!opts.continuous_usage_stats || is_true("continuous_usage_stats")) {
        return Ok(Rewrite { body: Cow::Borrowed(body), client_asked });
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&body[..span.0]);
    write_options(&mut out, &members, opts);
    out.extend_from_slice(&body[span.1..]);
    Ok(Rewrite { body: Cow::Owned(out), client_asked })
}

/// `body`, a JSON object with at least one member (a parsed request: it has
/// its `model`), with `"name":value` added as its last member, changing
/// nothing else. The caller knows the member is not there yet.
pub fn with_member(body: &[u8], name: &str, value: &str) -> Result<Vec<u8>, RewriteError> {
    append_member(body, true, |out| {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value.as_bytes());
    })
}

/// `body` with a member written by `write` added after its last one (a
/// comma first if it has `members`), right before the closing brace's
/// whitespace, so that everything else stays byte for byte.
fn append_member(
    body: &[u8],
    members: bool,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, RewriteError> {
    let close = body
        .iter()
        .rposition(|&b| b == b'}')
        .ok_or_else(|| RewriteError::NotAnObject("no closing brace".into()))?;
    // Right after the last member (or the opening brace), so whitespace
    // before the `}` stays where it was.
    let at = body[..close]
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(close, |i| i + 1);
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(&body[..at]);
    if members {
        out.push(b',');
    }
    write(&mut out);
    out.extend_from_slice(&body[at..]);
    Ok(out)
}

/// Writes a `stream_options` object: the client's members except the ones we
/// set, then ours.
fn write_options(out: &mut Vec<u8>, members: &[(Cow<'_, str>, &RawValue)], opts: RewriteOptions) {
    out.push(b'{');
    for (k, v) in members {
        if k == "include_usage" || (opts.continuous_usage_stats && k == "continuous_usage_stats") {
            continue;
        }
        // Keys were decoded; re-encoding one cannot fail.
        if let Ok(key) = serde_json::to_string(k) {
            out.extend_from_slice(key.as_bytes());
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"include_usage\":true");
    if opts.continuous_usage_stats {
        out.extend_from_slice(b",\"continuous_usage_stats\":true");
    }
    out.push(b'}');
}

/// Where `inner` (a slice of `outer`) lies in it.
fn span_of(outer: &[u8], inner: &str) -> Option<(usize, usize)> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some((start, end))
}

/// What the top level of a body says about `stream_options`.
struct Top<'a> {
    members: usize,
    stream_options: Option<&'a RawValue>,
    /// `stream_options` appears more than once (which one an upstream
    /// uses is anyone's guess, so the body is refused).
    duplicate: bool,
}

fn scan_top(body: &[u8]) -> Result<Top<'_>, RewriteError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = TopSeed.deserialize(&mut de).map_err(|e| RewriteError::NotAnObject(e.to_string()))?;
    de.end().map_err(|e| RewriteError::NotAnObject(e.to_string()))?;
    if top.duplicate {
        return Err(RewriteError::Duplicate("stream_options"));
    }
    Ok(top)
}

struct TopSeed;

impl<'de> DeserializeSeed<'de> for TopSeed {
    type Value = Top<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut top = Top { members: 0, stream_options: None, duplicate: false };
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            top.members += 1;
            if key == "stream_options" {
                top.duplicate |= top.stream_options.is_some();
                top.stream_options = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(top)
    }
}

/// An object's members in order, values raw.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(Str(k)) = map.next_key::<Str<'de>>()? {
                    v.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_added_last_and_nothing_else_changes() {
        let body = br#"{"model":"m", "messages":[] }"#;
        let out = with_member(body, "max_tokens", "512").unwrap();
        assert_eq!(out, br#"{"model":"m", "messages":[],"max_tokens":512 }"#);
        assert!(with_member(b"[1]", "max_tokens", "1").is_err());
    }

    fn force(body: &str) -> (String, bool) {
        let r = force_include_usage(body.as_bytes(), RewriteOptions::default()).unwrap();
        (String::from_utf8(r.body.into_owned()).unwrap(), r.client_asked)
    }

    #[test]
    fn adds_stream_options_when_absent() {
        let body = r#"{"model":"gpt-4o","stream":true,"temperature":0.70,"messages":[{"role":"user","content":"hi"}]}"#;
        let (out, asked) = force(body);
        assert!(!asked);
        assert_eq!(
            out,
            r#"{"model":"gpt-4o","stream":true,"temperature":0.70,"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#
        );
        // Pretty-printed, with trailing whitespace: still spliced in place.
        let body = "{\n  \"model\": \"m\",\n  \"stream\": true\n}\n";
        let (out, _) = force(body);
        assert_eq!(
            out,
            "{\n  \"model\": \"m\",\n  \"stream\": true,\"stream_options\":{\"include_usage\":true}\n}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(force("{}").0, r#"{"stream_options":{"include_usage":true}}"#);
        assert_eq!(force(" { } ").0, r#" {"stream_options":{"include_usage":true} } "#);
    }

    #[test]
    fn rewrites_existing_options() {
        let (out, asked) =
            force(r#"{"stream_options":{"include_usage":false,"x":[1, 2]},"model":"m"}"#);
        assert!(!asked);
        assert_eq!(out, r#"{"stream_options":{"x":[1, 2],"include_usage":true},"model":"m"}"#);
        let (out, asked) = force(r#"{"model":"m","stream_options":null}"#);
        assert!(!asked);
        assert_eq!(out, r#"{"model":"m","stream_options":{"include_usage":true}}"#);
        let (out, _) = force(r#"{"model":"m","stream_options":{}}"#);
        assert_eq!(out, r#"{"model":"m","stream_options":{"include_usage":true}}"#);
        // Escaped keys are understood as what they decode to.
        let (out, asked) = force(r#"{"stream\u005foptions":{"include\u005fusage":true}}"#);
        assert!(asked);
        assert_eq!(out, r#"{"stream\u005foptions":{"include\u005fusage":true}}"#);
    }

    #[test]
    fn borrowed_when_client_asked() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let r = force_include_usage(body, RewriteOptions::default()).unwrap();
        assert!(r.client_asked);
        assert!(matches!(r.body, Cow::Borrowed(_)));
    }

    #[test]
    fn continuous_usage_for_vllm() {
        let opts = RewriteOptions { continuous_usage_stats: true };
        let body = br#"{"model":"m","stream_options":{"include_usage":true}}"#;
        let r = force_include_usage(body, opts).unwrap();
        assert!(r.client_asked);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"model":"m","stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#
        );
        let r = force_include_usage(br#"{"model":"m"}"#, opts).unwrap();
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"model":"m","stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#
        );
    }

    #[test]
    fn refuses_what_it_cannot_splice() {
        let f = |b: &'static str| force_include_usage(b.as_bytes(), RewriteOptions::default());
        assert!(matches!(f("[]"), Err(RewriteError::NotAnObject(_))));
        assert!(matches!(f("{"), Err(RewriteError::NotAnObject(_))));
        assert!(matches!(f("{} {}"), Err(RewriteError::NotAnObject(_))));
        assert_eq!(f(r#"{"stream_options":"yes"}"#), Err(RewriteError::StreamOptionsNotAnObject));
        assert_eq!(
            f(r#"{"stream_options":{},"stream_options":{}}"#),
            Err(RewriteError::Duplicate("stream_options"))
        );
    }

    #[test]
    fn everything_else_is_byte_for_byte() {
        let body = r#"{"model":"m","n":1.0e0,"z":"\u00e9","a":{"b":[true,null]},"stream_options":{"include_usage":false},"stream":true}"#;
        let (out, _) = force(body);
        let (before, after) = body.split_once(r#""stream_options":"#).unwrap();
        assert!(out.starts_with(before));
        assert!(out.ends_with(r#","stream":true}"#));
        let _ = after;
    }
}

//! The reference readers the walker is checked against: the serde readers
//! the SSE tap and `usage_from_json` used before the walker. Compiled for
//! tests and for the fuzz targets (feature `fuzzing`), never in a release.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::{chunk, response_usage};
use crate::json::{Str, cow};
use crate::usage::{Usage, UsageJson};

#[derive(Deserialize)]
struct SerdeChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<SerdeChoices<'a>>,
    #[serde(default)]
    usage: Option<UsageJson>,
    #[serde(default)]
    error: Option<de::IgnoredAny>,
}

struct SerdeChoices<'a> {
    count: usize,
    texts: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SerdeChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<SerdeDelta<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct SerdeDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Str<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Str<'a>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Str<'a>>,
    #[serde(borrow, default)]
    reasoning: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<SerdeToolCall<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<SerdeFunction<'a>>,
}

#[derive(Deserialize)]
struct SerdeToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<SerdeFunction<'a>>,
}

#[derive(Deserialize)]
struct SerdeFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for SerdeChoices<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = SerdeChoices<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut c = SerdeChoices { count: 0, texts: Vec::new() };
                while let Some(choice) = seq.next_element::<SerdeChoice<'a>>()? {
                    c.count += 1;
                    c.texts.extend(cow(choice.text));
                    let Some(d) = choice.delta else { continue };
                    c.texts.extend(cow(d.content));
                    c.texts.extend(cow(d.refusal));
                    c.texts.extend(cow(d.reasoning_content));
                    c.texts.extend(cow(d.reasoning));
                    let calls = d.tool_calls.into_iter().flatten().filter_map(|t| t.function);
                    for f in calls.chain(d.function_call) {
                        c.texts.extend(cow(f.name));
                        c.texts.extend(cow(f.arguments));
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// What a chunk says, comparable: (choices count and sorted texts, usage, error).
pub type Read = (Option<(usize, Vec<String>)>, Option<Usage>, bool, bool);

pub fn sorted(texts: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = texts.into_iter().collect();
    v.sort();
    v
}

pub fn by_serde(data: &[u8]) -> Option<Read> {
    let c: SerdeChunk<'_> = serde_json::from_slice(data).ok()?;
    Some((
        c.choices.map(|c| (c.count, sorted(c.texts.into_iter().map(Cow::into_owned)))),
        c.usage.and_then(UsageJson::to_usage),
        c.usage.is_some(),
        c.error.is_some(),
    ))
}

pub fn by_walker(data: &[u8]) -> Option<Read> {
    let c = chunk(data)?;
    Some((
        c.choices.map(|c| (c.count, sorted(c.texts.into_iter().map(Cow::into_owned)))),
        c.usage.and_then(UsageJson::to_usage),
        c.usage.is_some(),
        c.error,
    ))
}

pub fn response_by_serde(body: &[u8]) -> Option<Option<Usage>> {
    #[derive(Deserialize)]
    struct Response {
        #[serde(default)]
        usage: Option<UsageJson>,
    }
    serde_json::from_slice::<Response>(body).ok().map(|r| r.usage.and_then(UsageJson::to_usage))
}

pub fn response_by_walker(body: &[u8]) -> Option<Option<Usage>> {
    response_usage(body).map(|u| u.and_then(UsageJson::to_usage))
}

// The one place where the walker and serde read valid JSON differently, by
// design (the module doc of `scan`): serde's derived readers take a struct
// written as an array of its fields in order (`[usage]` for a response,
// `[choices, usage, error]` for a chunk, `[]` for one with no fields); the
// walker reads structs from objects only and refuses the document. No
// OpenAI-compatible server sends that form, and refusing costs nothing:
// a response without a usage is charged what was reserved, and the SSE tap
// reads only chunks that start with `{`. `usage` itself is not among these
// structs: the walker hands its array form to serde.

/// Whether a response body is an array: serde reads its usage from the
/// first element, the walker refuses it.
pub fn response_as_array(body: &[u8]) -> bool {
    body.trim_ascii_start().starts_with(b"[")
}

/// Whether a stream chunk has one of the structs the walker reads (the
/// chunk itself, a choice, a delta, a tool call, a function) as an array:
/// serde reads it, the walker refuses the chunk. False if `data` is not
/// JSON.
pub fn chunk_struct_as_array(data: &[u8]) -> bool {
    use serde_json::Value;
    fn function(v: Option<&Value>) -> bool {
        v.is_some_and(Value::is_array)
    }
    fn delta(v: Option<&Value>) -> bool {
        match v {
            Some(Value::Array(_)) => true,
            Some(Value::Object(d)) => {
                let calls = match d.get("tool_calls") {
                    Some(Value::Array(calls)) => calls.as_slice(),
                    _ => &[],
                };
                let call = |c: &Value| match c {
                    Value::Array(_) => true,
                    Value::Object(c) => function(c.get("function")),
                    _ => false,
                };
                calls.iter().any(call) || function(d.get("function_call"))
            }
            _ => false,
        }
    }
    let choice = |c: &Value| match c {
        Value::Array(_) => true,
        Value::Object(c) => delta(c.get("delta")),
        _ => false,
    };
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Array(_)) => true,
        Ok(Value::Object(chunk)) => match chunk.get("choices") {
            Some(Value::Array(choices)) => choices.iter().any(choice),
            _ => false,
        },
        _ => false,
    }
}

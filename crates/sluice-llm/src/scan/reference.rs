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

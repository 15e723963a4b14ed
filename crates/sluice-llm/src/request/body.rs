//! The bodies of each endpoint as serde reads them (only the fields
//! admission needs, strings borrowed where JSON allows), and how each is
//! folded into [`RequestFacts`]: texts to count, fixed tokens, output asked
//! for, streaming flags.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::{SmallVec, smallvec};

use super::{
    EndpointKind, REPLY_PRIMING_TOKENS, RequestError, RequestFacts, TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
};
use crate::json::{Str, cow};

/// Fields every generating endpoint shares.
#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(default)]
    continuous_usage_stats: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct ChatBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    /// The end user (OpenAI's `user`).
    #[serde(borrow, default)]
    user: Option<Str<'a>>,
    #[serde(borrow, default)]
    messages: Option<Messages<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
}

/// `messages`, folded as they are read into what admission needs (no
/// vector of messages is built).
struct Messages<'a> {
    /// Their texts, in body order.
    texts: Vec<Cow<'a, str>>,
    /// Tokens known without a tokenizer (per message and per name).
    fixed: u64,
    /// Non-text content parts.
    media: u32,
}

impl<'a> Messages<'a> {
    fn add(&mut self, m: Message<'a>) {
        self.fixed = self.fixed.saturating_add(TOKENS_PER_MESSAGE);
        self.texts.extend(cow(m.role));
        if let Some(c) = m.content {
            self.texts.extend(c.texts);
            self.media = self.media.saturating_add(c.media);
        }
        if let Some(name) = cow(m.name) {
            self.fixed = self.fixed.saturating_add(TOKENS_PER_NAME);
            self.texts.push(name);
        }
        self.texts.extend(cow(m.refusal));
        self.texts.extend(cow(m.tool_call_id));
        for call in m.tool_calls.into_iter().flatten().filter_map(|c| c.function) {
            self.texts.extend(cow(call.name));
            self.texts.extend(cow(call.arguments));
        }
        if let Some(call) = m.function_call {
            self.texts.extend(cow(call.name));
            self.texts.extend(cow(call.arguments));
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Messages<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Messages<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // What serde says for a `Vec`, which this replaces.
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // A role and a content each, usually.
                let room = seq.size_hint().unwrap_or(1).min(1024) * 2;
                let mut out = Messages { texts: Vec::with_capacity(room), fixed: 0, media: 0 };
                while let Some(m) = seq.next_element::<Message<'a>>()? {
                    out.add(m);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a tool call object")]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a function call object")]
struct FunctionCall<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
}

/// A message's `content`: a string or an array of parts.
struct Content<'a> {
    /// Usually one (a string), so kept inline.
    texts: SmallVec<[Cow<'a, str>; 1]>,
    media: u32,
}

#[derive(Deserialize)]
#[serde(expecting = "a content part object")]
struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content { texts: smallvec![Cow::Borrowed(v)], media: 0 })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                self.visit_string(v.to_owned())
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content { texts: smallvec![Cow::Owned(v)], media: 0 })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut c = Content { texts: SmallVec::new(), media: 0 };
                while let Some(part) = seq.next_element::<Part<'a>>()? {
                    match part.kind.as_ref().map(|k| &*k.0) {
                        Some("text" | "input_text" | "output_text") | None => {
                            c.texts.extend(cow(part.text));
                        }
                        Some("refusal") => c.texts.extend(cow(part.refusal)),
                        Some(_) => c.media = c.media.saturating_add(1),
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A `prompt` or `input`: a string, an array of strings, an array of token
/// ids, or an array of token-id arrays.
struct Inputs<'a> {
    texts: Vec<Cow<'a, str>>,
    tokens: u64,
}

/// One element of an [`Inputs`] array.
enum InputItem<'a> {
    Text(Cow<'a, str>),
    Tokens(u64),
}

impl<'de: 'a, 'a> Deserialize<'de> for Inputs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Inputs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a string, an array of strings, an array of tokens, or an array of token arrays",
                )
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Inputs { texts: vec![Cow::Borrowed(v)], tokens: 0 })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                self.visit_string(v.to_owned())
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Inputs { texts: vec![Cow::Owned(v)], tokens: 0 })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Inputs { texts: Vec::new(), tokens: 0 };
                while let Some(item) = seq.next_element::<InputItem<'a>>()? {
                    match item {
                        InputItem::Text(t) => out.texts.push(t),
                        InputItem::Tokens(n) => out.tokens = out.tokens.saturating_add(n),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for InputItem<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = InputItem<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a token id, or an array of token ids")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(InputItem::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(InputItem::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(InputItem::Text(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(InputItem::Tokens(1))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut n = 0u64;
                while seq.next_element::<TokenId>()?.is_some() {
                    n = n.saturating_add(1);
                }
                Ok(InputItem::Tokens(n))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A token id (a non-negative integer).
struct TokenId;

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TokenId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token id (a non-negative integer)")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TokenId, E> {
                Ok(TokenId)
            }
        }
        d.deserialize_u64(V)
    }
}

#[derive(Deserialize)]
pub(super) struct CompletionsBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    /// The end user (OpenAI's `user`).
    #[serde(borrow, default)]
    user: Option<Str<'a>>,
    #[serde(borrow, default)]
    prompt: Option<Inputs<'a>>,
    #[serde(borrow, default)]
    suffix: Option<Str<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    best_of: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
pub(super) struct EmbeddingsBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    /// The end user (OpenAI's `user`).
    #[serde(borrow, default)]
    user: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<Inputs<'a>>,
}

#[derive(Deserialize)]
pub(super) struct OtherBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    /// The end user (OpenAI's `user`).
    #[serde(borrow, default)]
    user: Option<Str<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

fn model(m: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, RequestError> {
    match m {
        Some(m) if !m.trim().is_empty() => Ok(m),
        _ => Err(RequestError::MissingModel),
    }
}

fn at_least_one(param: &str, v: Option<u64>) -> Result<Option<u64>, RequestError> {
    match v {
        Some(0) => Err(RequestError::InvalidValue {
            param: param.to_owned(),
            detail: "0 is less than the minimum of 1".to_owned(),
        }),
        v => Ok(v),
    }
}

fn stream_flags(stream: Option<bool>, opts: Option<&StreamOptions>) -> (bool, bool, bool) {
    let include = opts.and_then(|o| o.include_usage).unwrap_or(false);
    let continuous = include && opts.and_then(|o| o.continuous_usage_stats).unwrap_or(false);
    (stream.unwrap_or(false), include, continuous)
}

fn base<'a>(kind: EndpointKind, model: Cow<'a, str>, user: Option<Str<'a>>) -> RequestFacts<'a> {
    RequestFacts {
        kind,
        model,
        user: cow(user),
        max_tokens: None,
        max_completion_tokens: None,
        n: 1,
        best_of: None,
        stream: false,
        include_usage: false,
        continuous_usage: false,
        texts: Vec::new(),
        fixed_tokens: 0,
        media_parts: 0,
    }
}

pub(super) fn chat(b: ChatBody<'_>) -> Result<RequestFacts<'_>, RequestError> {
    let mut f = base(EndpointKind::ChatCompletions, model(cow(b.model))?, b.user);
    let messages = b.messages.ok_or(RequestError::MissingField { param: "messages" })?;
    f.max_tokens = b.max_tokens;
    f.max_completion_tokens = b.max_completion_tokens;
    f.n = at_least_one("n", b.n)?.unwrap_or(1);
    (f.stream, f.include_usage, f.continuous_usage) =
        stream_flags(b.stream, b.stream_options.as_ref());
    f.texts = messages.texts;
    f.media_parts = messages.media;
    // Tool definitions are rendered into the prompt; their JSON text is a
    // fair (slightly high) stand-in for what the model sees.
    for raw in [b.tools, b.functions].into_iter().flatten() {
        if raw.get() != "null" {
            f.texts.push(Cow::Borrowed(raw.get()));
        }
    }
    f.fixed_tokens = REPLY_PRIMING_TOKENS.saturating_add(messages.fixed);
    Ok(f)
}

pub(super) fn completions(b: CompletionsBody<'_>) -> Result<RequestFacts<'_>, RequestError> {
    let mut f = base(EndpointKind::Completions, model(cow(b.model))?, b.user);
    f.max_tokens = b.max_tokens;
    f.n = at_least_one("n", b.n)?.unwrap_or(1);
    f.best_of = at_least_one("best_of", b.best_of)?;
    (f.stream, f.include_usage, f.continuous_usage) =
        stream_flags(b.stream, b.stream_options.as_ref());
    if let Some(p) = b.prompt {
        f.texts = p.texts;
        f.fixed_tokens = p.tokens;
    }
    f.texts.extend(cow(b.suffix));
    Ok(f)
}

pub(super) fn embeddings(b: EmbeddingsBody<'_>) -> Result<RequestFacts<'_>, RequestError> {
    let mut f = base(EndpointKind::Embeddings, model(cow(b.model))?, b.user);
    let input = b.input.ok_or(RequestError::MissingField { param: "input" })?;
    f.texts = input.texts;
    f.fixed_tokens = input.tokens;
    Ok(f)
}

pub(super) fn other<'a>(
    b: OtherBody<'a>,
    body: &'a [u8],
) -> Result<RequestFacts<'a>, RequestError> {
    let mut f = base(EndpointKind::Other, model(cow(b.model))?, b.user);
    f.max_tokens = b.max_tokens;
    f.max_completion_tokens = b.max_completion_tokens.or(b.max_output_tokens);
    f.n = at_least_one("n", b.n)?.unwrap_or(1);
    (f.stream, f.include_usage, f.continuous_usage) =
        stream_flags(b.stream, b.stream_options.as_ref());
    // The body parsed as JSON, so it is UTF-8.
    if let Ok(text) = std::str::from_utf8(body) {
        f.texts.push(Cow::Borrowed(text));
    }
    Ok(f)
}

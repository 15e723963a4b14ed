//! Request facts: what admission needs to know about an OpenAI-style request
//! body, and nothing more.
//!
//! Admission needs the model, the output the client may ask for
//! (`max_completion_tokens`, `max_tokens`, `n`), whether it streams, and the
//! text whose tokens it will be charged for. Everything else in the body is
//! left alone: it is forwarded byte for byte, so there is no typed model of
//! every OpenAI field here, and fields this module does not know are neither
//! validated nor dropped. The fields it does read are type-checked, and a
//! wrong type is reported as an OpenAI-style 400 naming the field (`param`).
//!
//! Strings are borrowed from the body where JSON allows it (no escapes), so
//! parsing a large prompt does not copy it.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::{SmallVec, smallvec};

use crate::json::{Str, cow};

/// Tokens every chat message costs beyond its text (tiktoken cookbook,
/// `num_tokens_from_messages`: `<|start|>{role}\n ... <|end|>`).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens a `name` on a message costs beyond its text.
pub const TOKENS_PER_NAME: u64 = 1;
/// Tokens that prime the assistant's reply (`<|start|>assistant<|message|>`).
pub const REPLY_PRIMING_TOKENS: u64 = 3;

/// The kind of endpoint a body was sent to: it decides which fields hold the
/// text to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    /// `POST /v1/chat/completions`: `messages`.
    ChatCompletions,
    /// `POST /v1/completions` (legacy): `prompt`.
    Completions,
    /// `POST /v1/embeddings`: `input`.
    Embeddings,
    /// Anything else with a JSON body and a `model` (e.g. `/v1/responses`):
    /// the whole body is counted as text.
    Other,
}

impl EndpointKind {
    /// The kind for a request path such as `/v1/chat/completions` (a query
    /// string and a trailing slash are ignored).
    pub fn from_path(path: &str) -> Self {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.ends_with("/chat/completions") {
            Self::ChatCompletions
        } else if path.ends_with("/completions") {
            Self::Completions
        } else if path.ends_with("/embeddings") {
            Self::Embeddings
        } else {
            Self::Other
        }
    }

    /// Whether requests of this kind produce output tokens.
    pub const fn has_output(self) -> bool {
        !matches!(self, Self::Embeddings)
    }

    /// Whether streamed responses of this kind can carry usage
    /// (`stream_options.include_usage`).
    pub const fn streams_usage(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }
}

/// What admission needs to know about one request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// The endpoint kind it was parsed for.
    pub kind: EndpointKind,
    /// The model asked for (never empty).
    pub model: Cow<'a, str>,
    /// `max_tokens`, if given.
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens` (or `max_output_tokens` on other endpoints), if
    /// given; it wins over `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    /// `n`: how many choices to generate (1 unless given).
    pub n: u64,
    /// `best_of` (legacy completions): completions generated server-side.
    pub best_of: Option<u64>,
    /// `stream: true`.
    pub stream: bool,
    /// The client asked for `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// The client asked for vLLM's `stream_options.continuous_usage_stats`.
    pub continuous_usage: bool,
    /// Texts whose tokens count as input, in body order.
    pub texts: Vec<Cow<'a, str>>,
    /// Input tokens known without a tokenizer: per-message overhead, reply
    /// priming, names, and prompts sent as token arrays.
    pub fixed_tokens: u64,
    /// Non-text content parts (images, audio, files), which cost tokens the
    /// text does not show.
    pub media_parts: u32,
}

impl RequestFacts<'_> {
    /// How many completions the request generates: `max(n, best_of)`.
    pub fn choices(&self) -> u64 {
        self.n.max(self.best_of.unwrap_or(0)).max(1)
    }

    /// Bytes of text to tokenize: lets a caller decide whether estimating is
    /// cheap enough to do inline.
    pub fn text_bytes(&self) -> usize {
        self.texts.iter().map(|t| t.len()).sum()
    }

    /// The same facts, owning their strings (to move them to another thread).
    pub fn into_owned(self) -> RequestFacts<'static> {
        RequestFacts {
            kind: self.kind,
            model: Cow::Owned(self.model.into_owned()),
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
            n: self.n,
            best_of: self.best_of,
            stream: self.stream,
            include_usage: self.include_usage,
            continuous_usage: self.continuous_usage,
            texts: self.texts.into_iter().map(|t| Cow::Owned(t.into_owned())).collect(),
            fixed_tokens: self.fixed_tokens,
            media_parts: self.media_parts,
        }
    }
}

/// Why a request body was refused. `Display` is a message for the client
/// (an OpenAI-style 400); [`RequestError::param`] names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is empty.
    #[error("The request body is empty; the API expects a JSON object.")]
    Empty,
    /// Not JSON at all, or broken JSON.
    #[error(
        "We could not parse the JSON body of your request ({detail}). The API expects a JSON object."
    )]
    Malformed {
        /// What the parser said, with the position.
        detail: String,
    },
    /// JSON, but not an object.
    #[error("The request body must be a JSON object.")]
    NotAnObject,
    /// No `model`, or an empty one.
    #[error("You must provide a model parameter.")]
    MissingModel,
    /// A field the endpoint requires is missing.
    #[error("Missing required parameter: '{param}'.")]
    MissingField {
        /// The field.
        param: &'static str,
    },
    /// A field has the wrong type or shape.
    #[error("Invalid type for '{param}': {detail}.")]
    InvalidType {
        /// Where, e.g. `messages[0].content`.
        param: String,
        /// What was wrong.
        detail: String,
    },
    /// A field has a value out of range.
    #[error("Invalid value for '{param}': {detail}.")]
    InvalidValue {
        /// The field.
        param: String,
        /// What was wrong.
        detail: String,
    },
    /// The body as a whole is wrong (e.g. a field given twice).
    #[error("Invalid request body: {detail}.")]
    Invalid {
        /// What was wrong.
        detail: String,
    },
}

impl RequestError {
    /// The field at fault, as OpenAI's `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::MissingModel => Some("model"),
            Self::MissingField { param } => Some(param),
            Self::InvalidType { param, .. } | Self::InvalidValue { param, .. } => Some(param),
            Self::Empty | Self::Malformed { .. } | Self::NotAnObject | Self::Invalid { .. } => None,
        }
    }
}

/// Parses the body of a request to an endpoint of `kind`.
pub fn parse(kind: EndpointKind, body: &[u8]) -> Result<RequestFacts<'_>, RequestError> {
    match body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        None => return Err(RequestError::Empty),
        Some(b'{') => {}
        Some(_) => {
            // Say "not JSON" for garbage and "not an object" for other JSON.
            return match serde_json::from_slice::<de::IgnoredAny>(body) {
                Ok(_) => Err(RequestError::NotAnObject),
                Err(e) => Err(malformed(&e)),
            };
        }
    }
    match kind {
        EndpointKind::ChatCompletions => chat(from_body::<ChatBody<'_>>(body)?),
        EndpointKind::Completions => completions(from_body::<CompletionsBody<'_>>(body)?),
        EndpointKind::Embeddings => embeddings(from_body::<EmbeddingsBody<'_>>(body)?),
        EndpointKind::Other => other(from_body::<OtherBody<'_>>(body)?, body),
    }
}

fn from_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, RequestError> {
    // The common case first, at full speed; the error's path is worked out
    // only when there is an error to explain.
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            let detail = without_position(&inner);
            if path == "." || path.is_empty() {
                RequestError::Invalid { detail }
            } else {
                RequestError::InvalidType { param: path, detail }
            }
        } else {
            malformed(&inner)
        }
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn malformed(e: &serde_json::Error) -> RequestError {
    RequestError::Malformed { detail: e.to_string() }
}

/// serde_json's message without its " at line L column C" tail (a field
/// error names the field instead).
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let tail = format!(" at line {} column {}", e.line(), e.column());
    match s.strip_suffix(&tail) {
        Some(head) => head.to_owned(),
        None => s,
    }
}

/// Fields every generating endpoint shares.
#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(default)]
    continuous_usage_stats: Option<bool>,
}

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
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
struct CompletionsBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
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
struct EmbeddingsBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<Inputs<'a>>,
}

#[derive(Deserialize)]
struct OtherBody<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
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

fn base<'a>(kind: EndpointKind, model: Cow<'a, str>) -> RequestFacts<'a> {
    RequestFacts {
        kind,
        model,
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

fn chat(b: ChatBody<'_>) -> Result<RequestFacts<'_>, RequestError> {
    let mut f = base(EndpointKind::ChatCompletions, model(cow(b.model))?);
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

fn completions(b: CompletionsBody<'_>) -> Result<RequestFacts<'_>, RequestError> {
    let mut f = base(EndpointKind::Completions, model(cow(b.model))?);
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

fn embeddings(b: EmbeddingsBody<'_>) -> Result<RequestFacts<'_>, RequestError> {
    let mut f = base(EndpointKind::Embeddings, model(cow(b.model))?);
    let input = b.input.ok_or(RequestError::MissingField { param: "input" })?;
    f.texts = input.texts;
    f.fixed_tokens = input.tokens;
    Ok(f)
}

fn other<'a>(b: OtherBody<'a>, body: &'a [u8]) -> Result<RequestFacts<'a>, RequestError> {
    let mut f = base(EndpointKind::Other, model(cow(b.model))?);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_facts(body: &str) -> RequestFacts<'_> {
        parse(EndpointKind::ChatCompletions, body.as_bytes()).unwrap()
    }

    fn err(kind: EndpointKind, body: &str) -> RequestError {
        parse(kind, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn endpoint_kind_from_path() {
        use EndpointKind::*;
        assert_eq!(EndpointKind::from_path("/v1/chat/completions"), ChatCompletions);
        assert_eq!(EndpointKind::from_path("/v1/chat/completions/"), ChatCompletions);
        assert_eq!(EndpointKind::from_path("/openai/v1/chat/completions?x=1"), ChatCompletions);
        assert_eq!(EndpointKind::from_path("/v1/completions"), Completions);
        assert_eq!(EndpointKind::from_path("/v1/embeddings"), Embeddings);
        assert_eq!(EndpointKind::from_path("/v1/responses"), Other);
        assert!(!Embeddings.has_output());
        assert!(ChatCompletions.streams_usage() && !Other.streams_usage());
    }

    #[test]
    fn chat_basic() {
        let f = chat_facts(
            r#"{
              "model": "gpt-4o-mini",
              "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello!", "name": "alice"}
              ],
              "temperature": 0.2,
              "max_tokens": 100,
              "logit_bias": {"50256": -100}
            }"#,
        );
        assert_eq!(f.model, "gpt-4o-mini");
        assert!(matches!(f.model, Cow::Borrowed(_)));
        assert_eq!(f.max_tokens, Some(100));
        assert_eq!(f.max_completion_tokens, None);
        assert_eq!(f.n, 1);
        assert!(!f.stream && !f.include_usage);
        assert_eq!(f.texts, ["system", "You are a helpful assistant.", "user", "Hello!", "alice"]);
        // 2 messages * 3 + 3 priming + 1 name.
        assert_eq!(f.fixed_tokens, 10);
    }

    #[test]
    fn chat_parts_tools_and_calls() {
        let f = chat_facts(
            r#"{
              "model": "gpt-4o",
              "n": 2,
              "max_tokens": 10,
              "max_completion_tokens": 50,
              "stream": true,
              "stream_options": {"include_usage": true},
              "messages": [
                {"role": "user", "content": [
                  {"type": "text", "text": "What is in this image?"},
                  {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                  {"id": "call_abc", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}
              ],
              "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
            }"#,
        );
        assert_eq!(f.n, 2);
        assert_eq!(f.max_completion_tokens, Some(50));
        assert!(f.stream && f.include_usage && !f.continuous_usage);
        assert_eq!(f.media_parts, 1);
        assert_eq!(f.fixed_tokens, 4 * 3 + 3);
        let texts: Vec<&str> = f.texts.iter().map(|t| &**t).collect();
        assert_eq!(
            texts,
            [
                "user",
                "What is in this image?",
                "assistant",
                "get_weather",
                "{\"city\":\"Paris\"}",
                "tool",
                "sunny",
                "call_abc",
                "assistant",
                "I can't.",
                r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]"#,
            ]
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let f = chat_facts(r#"{"model":"m","messages":[{"role":"user","content":"a\nb \u00e9"}]}"#);
        assert_eq!(f.texts[1], "a\nb é");
        assert!(matches!(f.texts[1], Cow::Owned(_)));
        let owned = f.clone().into_owned();
        assert_eq!(owned, f);
    }

    #[test]
    fn completions_prompt_shapes() {
        let p = |body: &'static str| parse(EndpointKind::Completions, body.as_bytes()).unwrap();
        let f = p(
            r#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7,"best_of":3,"n":2}"#,
        );
        assert_eq!(f.texts, ["Say this is a test"]);
        assert_eq!(f.fixed_tokens, 0);
        assert_eq!(f.choices(), 3);
        let f = p(r#"{"model":"m","prompt":["a","b"],"suffix":"c"}"#);
        assert_eq!(f.texts, ["a", "b", "c"]);
        let f = p(r#"{"model":"m","prompt":[1212, 318, 257, 1332]}"#);
        assert!(f.texts.is_empty());
        assert_eq!(f.fixed_tokens, 4);
        let f = p(r#"{"model":"m","prompt":[[1,2,3],[4,5]]}"#);
        assert_eq!(f.fixed_tokens, 5);
        let f = p(r#"{"model":"m"}"#);
        assert!(f.texts.is_empty());
        let e = err(EndpointKind::Completions, r#"{"model":"m","prompt":[[1,"x"]]}"#);
        assert_eq!(e.param(), Some("prompt[0][1]"));
        let e = err(EndpointKind::Completions, r#"{"model":"m","prompt":[-1]}"#);
        assert_eq!(e.param(), Some("prompt[0]"));
        let e = err(EndpointKind::Completions, r#"{"model":"m","best_of":0}"#);
        assert_eq!(e.param(), Some("best_of"));
    }

    #[test]
    fn embeddings_input_shapes() {
        let p = |body: &'static str| parse(EndpointKind::Embeddings, body.as_bytes()).unwrap();
        let f = p(
            r#"{"model":"text-embedding-3-small","input":"The food was delicious","encoding_format":"float"}"#,
        );
        assert_eq!(f.texts, ["The food was delicious"]);
        assert!(!f.kind.has_output());
        let f = p(r#"{"model":"m","input":["a","b"]}"#);
        assert_eq!(f.texts.len(), 2);
        let f = p(r#"{"model":"m","input":[[1,2],[3]]}"#);
        assert_eq!(f.fixed_tokens, 3);
        let e = err(EndpointKind::Embeddings, r#"{"model":"m"}"#);
        assert_eq!(e, RequestError::MissingField { param: "input" });
        assert_eq!(e.to_string(), "Missing required parameter: 'input'.");
        let e = err(EndpointKind::Embeddings, r#"{"model":"m","input":{"a":1}}"#);
        assert_eq!(e.param(), Some("input"));
    }

    #[test]
    fn other_counts_whole_body() {
        let body = r#"{"model":"gpt-4.1","input":"hi","max_output_tokens":64,"stream":true}"#;
        let f = parse(EndpointKind::Other, body.as_bytes()).unwrap();
        assert_eq!(f.max_completion_tokens, Some(64));
        assert!(f.stream);
        assert_eq!(f.texts, [body]);
    }

    #[test]
    fn model_is_required() {
        use EndpointKind::*;
        for kind in [ChatCompletions, Completions, Embeddings, Other] {
            assert_eq!(err(kind, r#"{"messages":[],"input":"x"}"#), RequestError::MissingModel);
            assert_eq!(
                err(kind, r#"{"model":"  ","messages":[],"input":"x"}"#),
                RequestError::MissingModel
            );
            assert_eq!(
                err(kind, r#"{"model":null,"messages":[],"input":"x"}"#),
                RequestError::MissingModel
            );
        }
        let e = err(ChatCompletions, r#"{"model":"m"}"#);
        assert_eq!(e.to_string(), "Missing required parameter: 'messages'.");
        assert_eq!(RequestError::MissingModel.param(), Some("model"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = err(EndpointKind::ChatCompletions, r#"{"model":5,"messages":[]}"#);
        assert_eq!(e.param(), Some("model"));
        assert!(e.to_string().starts_with("Invalid type for 'model': invalid type: integer `5`"));
        let e = err(
            EndpointKind::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":{"x":1}}]}"#,
        );
        assert_eq!(e.param(), Some("messages[0].content"));
        assert!(e.to_string().contains("a string or an array of content parts"), "{e}");
        assert!(!e.to_string().contains("line 1"), "{e}");
        let e = err(
            EndpointKind::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":7}]}]}"#,
        );
        assert_eq!(e.param(), Some("messages[0].content[0].text"));
        let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":"hi"}"#);
        assert_eq!(e.param(), Some("messages"));
        assert_eq!(
            e.to_string(),
            "Invalid type for 'messages': invalid type: string \"hi\", expected a sequence."
        );
        let e =
            err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[{"role":"user"},7]}"#);
        assert_eq!(e.param(), Some("messages[1]"));
        assert!(e.to_string().contains("expected a message object"), "{e}");
        let e =
            err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"max_tokens":"9"}"#);
        assert_eq!(e.param(), Some("max_tokens"));
        let e =
            err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"max_tokens":-1}"#);
        assert_eq!(e.param(), Some("max_tokens"));
        let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"stream":"yes"}"#);
        assert_eq!(e.param(), Some("stream"));
        let e = err(
            EndpointKind::ChatCompletions,
            r#"{"model":"m","messages":[],"stream_options":{"include_usage":1}}"#,
        );
        assert_eq!(e.param(), Some("stream_options.include_usage"));
        let e = err(EndpointKind::ChatCompletions, r#"{"model":"m","messages":[],"n":0}"#);
        assert_eq!(e.to_string(), "Invalid value for 'n': 0 is less than the minimum of 1.");
    }

    #[test]
    fn malformed_bodies() {
        use EndpointKind::ChatCompletions as C;
        assert_eq!(err(C, ""), RequestError::Empty);
        assert_eq!(err(C, "  \n"), RequestError::Empty);
        assert!(matches!(err(C, "{"), RequestError::Malformed { .. }));
        assert!(matches!(err(C, "model=gpt-4o"), RequestError::Malformed { .. }));
        assert!(matches!(
            err(C, r#"{"model":"m","messages":[]} x"#),
            RequestError::Malformed { .. }
        ));
        assert!(matches!(
            err(C, r#"{"model":"m","messages":[],}"#),
            RequestError::Malformed { .. }
        ));
        assert_eq!(err(C, r#"["model"]"#), RequestError::NotAnObject);
        assert_eq!(err(C, "42"), RequestError::NotAnObject);
        let e = err(C, r#"{"model":"a","model":"b","messages":[]}"#);
        assert_eq!(e, RequestError::Invalid { detail: "duplicate field `model`".into() });
        assert!(err(C, "{").to_string().starts_with("We could not parse the JSON body"));
        // Deep nesting never overflows the stack: skipped in fields we do
        // not read, refused in fields we do.
        let deep = format!(
            r#"{{"model":"m","messages":[],"x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(parse(C, deep.as_bytes()).unwrap().model, "m");
        let deep = format!(
            r#"{{"model":"m","messages":[{{"content":[{{"text":{}1{}}}]}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(err(C, &deep).param(), Some("messages[0].content[0].text"));
        // Invalid UTF-8 inside a string.
        assert!(matches!(
            parse(C, b"{\"model\":\"\xff\",\"messages\":[]}").unwrap_err(),
            RequestError::Malformed { .. }
        ));
    }

    #[test]
    fn unknown_fields_of_other_kinds_are_not_validated() {
        // An embeddings body with a strange `messages` is fine: not ours to judge.
        let f =
            parse(EndpointKind::Embeddings, br#"{"model":"m","input":"x","messages":7}"#).unwrap();
        assert_eq!(f.texts, ["x"]);
        // Continuous usage only counts when include_usage is on.
        let f = chat_facts(
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
        );
        assert!(f.continuous_usage);
        let f = chat_facts(
            r#"{"model":"m","messages":[],"stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
        );
        assert!(!f.continuous_usage && !f.include_usage);
    }
}

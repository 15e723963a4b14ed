//! Reading request bodies: only what the token rules and the response need
//! (model, content lengths, limits, `n`, stream flags), counted while
//! parsing so a request's text is never copied or collected.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

/// Completion tokens generated per choice are capped here, to bound the
/// memory of one JSON response (about 4 MiB of text per choice).
pub const MAX_TOKENS_PER_CHOICE: u64 = 1 << 20;

/// Most choices a request may ask for (OpenAI's limit).
const MAX_N: u64 = 128;

/// Longest embedding a request may ask for with `dimensions`.
const MAX_DIMENSIONS: u64 = 1 << 16;

/// A request the mock refuses with 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestError {
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
    pub(crate) code: Option<&'static str>,
}

impl RequestError {
    fn json(e: &serde_json::Error) -> Self {
        let message = if e.is_data() {
            format!("Invalid request body: {e}")
        } else {
            format!("We could not parse the JSON body of your request: {e}")
        };
        Self { message, param: None, code: None }
    }

    fn missing(param: &'static str) -> Self {
        Self {
            message: format!("Missing required parameter: '{param}'."),
            param: Some(param),
            code: Some("missing_required_parameter"),
        }
    }

    fn no_model() -> Self {
        Self { message: "you must provide a model parameter".to_owned(), param: None, code: None }
    }
}

/// A chat or completions request, as far as the mock cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Generation<'a> {
    pub(crate) model: Cow<'a, str>,
    /// By the byte rule; the `x-mock-prompt-tokens` override is applied later.
    pub(crate) prompt_tokens: u64,
    /// `max_completion_tokens` ?? `max_tokens`.
    pub(crate) limit: Option<u64>,
    pub(crate) n: u64,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

impl Generation<'_> {
    /// Tokens generated per choice.
    pub(crate) fn tokens_per_choice(&self, default: u64, forced: Option<u64>) -> u64 {
        forced.or(self.limit).unwrap_or(default).min(MAX_TOKENS_PER_CHOICE)
    }

    /// `"length"` when the request's limit stopped the choice.
    pub(crate) fn finish_reason(&self, tokens_per_choice: u64) -> &'static str {
        match self.limit {
            Some(limit) if tokens_per_choice >= limit => "length",
            _ => "stop",
        }
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    messages: Option<Messages>,
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
}

#[derive(Deserialize)]
struct CompletionBody<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    prompt: Option<Inputs>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

/// Parses `POST /v1/chat/completions`.
pub(crate) fn chat(body: &[u8]) -> Result<Generation<'_>, RequestError> {
    let b: ChatBody<'_> = serde_json::from_slice(body).map_err(|e| RequestError::json(&e))?;
    let model = b.model.ok_or_else(RequestError::no_model)?.0;
    let messages = b.messages.ok_or_else(|| RequestError::missing("messages"))?;
    let prompt_tokens =
        messages.content_bytes.div_ceil(4).saturating_add(messages.count.saturating_mul(3));
    Ok(Generation {
        model,
        prompt_tokens,
        limit: b.max_completion_tokens.or(b.max_tokens),
        n: choices(b.n)?,
        stream: b.stream.unwrap_or(false),
        include_usage: b.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

/// Parses `POST /v1/completions`.
pub(crate) fn completion(body: &[u8]) -> Result<Generation<'_>, RequestError> {
    let b: CompletionBody<'_> = serde_json::from_slice(body).map_err(|e| RequestError::json(&e))?;
    let model = b.model.ok_or_else(RequestError::no_model)?.0;
    let prompt = b.prompt.ok_or_else(|| RequestError::missing("prompt"))?;
    Ok(Generation {
        model,
        prompt_tokens: prompt.tokens(),
        limit: b.max_tokens,
        n: choices(b.n)?,
        stream: b.stream.unwrap_or(false),
        include_usage: b.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

fn choices(n: Option<u64>) -> Result<u64, RequestError> {
    match n {
        None => Ok(1),
        Some(0) => Err(RequestError {
            message: "Invalid value for 'n': 0 is less than the minimum of 1.".to_owned(),
            param: Some("n"),
            code: Some("integer_below_min_value"),
        }),
        Some(n) if n > MAX_N => Err(RequestError {
            message: format!("Invalid value for 'n': {n} is greater than the maximum of {MAX_N}."),
            param: Some("n"),
            code: Some("integer_above_max_value"),
        }),
        Some(n) => Ok(n),
    }
}

/// A `POST /v1/embeddings` request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EmbeddingsRequest<'a> {
    pub(crate) model: Cow<'a, str>,
    pub(crate) inputs: Vec<InputItem>,
    pub(crate) dimensions: Option<usize>,
    pub(crate) base64: bool,
}

#[derive(Deserialize)]
struct EmbeddingsBody<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    input: Option<Inputs>,
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(borrow, default)]
    encoding_format: Option<Text<'a>>,
}

/// Parses `POST /v1/embeddings`.
pub(crate) fn embeddings(body: &[u8]) -> Result<EmbeddingsRequest<'_>, RequestError> {
    let b: EmbeddingsBody<'_> = serde_json::from_slice(body).map_err(|e| RequestError::json(&e))?;
    let model = b.model.ok_or_else(RequestError::no_model)?.0;
    let inputs = b.input.ok_or_else(|| RequestError::missing("input"))?.0;
    let dimensions = match b.dimensions {
        None => None,
        Some(d @ 1..=MAX_DIMENSIONS) => usize::try_from(d).ok(),
        Some(d) => {
            return Err(RequestError {
                message: format!(
                    "Invalid value for 'dimensions': {d}; expected 1 to {MAX_DIMENSIONS}."
                ),
                param: Some("dimensions"),
                code: None,
            });
        }
    };
    let base64 = match b.encoding_format.as_ref().map(|t| &*t.0) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(RequestError {
                message: format!(
                    "Invalid value for 'encoding_format': '{other}'; expected 'float' or 'base64'."
                ),
                param: Some("encoding_format"),
                code: None,
            });
        }
    };
    Ok(EmbeddingsRequest { model, inputs, dimensions, base64 })
}

/// Checks that a body is JSON (for endpoints that ignore its content).
pub(crate) fn any_json(body: &[u8]) -> Result<(), RequestError> {
    serde_json::from_slice::<IgnoredAny>(body).map(drop).map_err(|e| RequestError::json(&e))
}

/// A string, borrowed from the body unless it had escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The UTF-8 length of a string.
#[derive(Clone, Copy, Default)]
struct StrLen(u64);

impl<'de> Deserialize<'de> for StrLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrLen, E> {
                Ok(StrLen(len(v.as_bytes())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Messages of a chat request: how many, and the bytes of their content.
#[derive(Clone, Copy, Default)]
struct Messages {
    count: u64,
    content_bytes: u64,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Content,
}

/// The byte length of a message's `content`: a string, content parts (their
/// `text` counts), or null.
#[derive(Clone, Copy, Default)]
struct Content(u64);

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<StrLen>,
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut m = Messages::default();
                while let Some(message) = seq.next_element::<Message>()? {
                    m.count = m.count.saturating_add(1);
                    m.content_bytes = m.content_bytes.saturating_add(message.content.0);
                }
                Ok(m)
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an array of content parts, or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content(len(v.as_bytes())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content(0))
            }
            fn visit_none<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut bytes = 0u64;
                while let Some(part) = seq.next_element::<Part>()? {
                    bytes = bytes.saturating_add(part.text.map_or(0, |t| t.0));
                }
                Ok(Content(bytes))
            }
        }
        d.deserialize_any(V)
    }
}

/// One input of a `prompt` or embeddings `input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InputItem {
    /// `ceil(bytes / 4)` for a string, the length of a token array.
    pub(crate) tokens: u64,
    /// A hash of the input, which seeds its embedding.
    pub(crate) seed: u64,
}

/// A `prompt` or `input`: a string, an array of strings, one array of token
/// ids, or an array of token arrays.
struct Inputs(Vec<InputItem>);

impl Inputs {
    fn tokens(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, i| sum.saturating_add(i.tokens))
    }
}

/// An element of an input array.
enum Element {
    Text(InputItem),
    Token(u64),
    Tokens(InputItem),
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an array of strings, or token arrays")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Inputs, E> {
                Ok(Inputs(vec![text_item(v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
                // A flat array of token ids is one input.
                let mut ids = None::<InputItem>;
                while let Some(e) = seq.next_element::<Element>()? {
                    match e {
                        Element::Token(id) if items.is_empty() => {
                            let t = ids.get_or_insert(InputItem { tokens: 0, seed: FNV_OFFSET });
                            t.tokens = t.tokens.saturating_add(1);
                            t.seed = fnv(t.seed, &id.to_le_bytes());
                        }
                        Element::Text(item) | Element::Tokens(item) if ids.is_none() => {
                            items.push(item);
                        }
                        _ => {
                            return Err(de::Error::custom(
                                "an input array must hold only strings, only token arrays, \
                                 or only token ids",
                            ));
                        }
                    }
                }
                items.extend(ids);
                Ok(Inputs(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Element;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a token id, or an array of token ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Element, E> {
                Ok(Element::Text(text_item(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Element, E> {
                Ok(Element::Token(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
                let mut item = InputItem { tokens: 0, seed: FNV_OFFSET };
                while let Some(id) = seq.next_element::<u64>()? {
                    item.tokens = item.tokens.saturating_add(1);
                    item.seed = fnv(item.seed, &id.to_le_bytes());
                }
                Ok(Element::Tokens(item))
            }
        }
        d.deserialize_any(V)
    }
}

fn text_item(s: &str) -> InputItem {
    InputItem { tokens: len(s.as_bytes()).div_ceil(4), seed: fnv(FNV_OFFSET, s.as_bytes()) }
}

fn len(b: &[u8]) -> u64 {
    u64::try_from(b.len()).unwrap_or(u64::MAX)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, continued from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_tokens_follow_the_byte_rule() {
        // 5 + 11 bytes of text parts + 0 (null) = 16 bytes -> 4, plus 3 x 3.
        let g = chat(
            br#"{"model":"m","messages":[
                {"role":"system","content":"hello"},
                {"role":"user","content":[{"type":"text","text":"hello world"},
                                          {"type":"image_url","image_url":{"url":"x"}}]},
                {"role":"assistant","content":null,"tool_calls":[]}
            ],"max_tokens":5,"n":2,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(
            g,
            Generation {
                model: Cow::Borrowed("m"),
                prompt_tokens: 4 + 9,
                limit: Some(5),
                n: 2,
                stream: true,
                include_usage: true,
            }
        );
        // Escapes count as the decoded text; ceil(5 / 4) = 2.
        let g = chat(br#"{"model":"a\"b","messages":[{"role":"user","content":"\u00e9abc"}]}"#)
            .unwrap();
        assert_eq!(g.prompt_tokens, 2 + 3);
        assert_eq!(g.model, "a\"b");
        assert!(!g.stream && !g.include_usage);
        assert_eq!(g.n, 1);
    }

    #[test]
    fn completion_limits_and_finish_reason() {
        let g = chat(br#"{"model":"m","messages":[],"max_tokens":9,"max_completion_tokens":4}"#)
            .unwrap();
        assert_eq!(g.limit, Some(4));
        assert_eq!(g.tokens_per_choice(16, None), 4);
        assert_eq!(g.finish_reason(4), "length");
        assert_eq!(g.tokens_per_choice(16, Some(2)), 2);
        assert_eq!(g.finish_reason(2), "stop");
        let g = chat(br#"{"model":"m","messages":[],"max_tokens":null}"#).unwrap();
        assert_eq!(g.tokens_per_choice(16, None), 16);
        assert_eq!(g.finish_reason(16), "stop");
        assert_eq!(g.tokens_per_choice(u64::MAX, None), MAX_TOKENS_PER_CHOICE);
    }

    #[test]
    fn prompt_shapes() {
        let t = |body: &str| completion(body.as_bytes()).unwrap().prompt_tokens;
        assert_eq!(t(r#"{"model":"m","prompt":"Say this is a test"}"#), 5);
        assert_eq!(t(r#"{"model":"m","prompt":["a","bcdef"]}"#), 1 + 2);
        assert_eq!(t(r#"{"model":"m","prompt":[1212, 318, 257]}"#), 3);
        assert_eq!(t(r#"{"model":"m","prompt":[[1,2,3],[4,5]]}"#), 5);
        assert_eq!(t(r#"{"model":"m","prompt":[]}"#), 0);
        assert!(completion(br#"{"model":"m","prompt":[1,"x"]}"#).is_err());
        assert!(completion(br#"{"model":"m","prompt":["x",1]}"#).is_err());
        assert!(completion(br#"{"model":"m","prompt":[-1]}"#).is_err());
        assert_eq!(completion(br#"{"model":"m"}"#).unwrap_err().param, Some("prompt"));
    }

    #[test]
    fn embeddings_inputs() {
        let e = embeddings(
            br#"{"model":"e","input":["abcde","abcde",""],"dimensions":3,"encoding_format":"base64"}"#,
        )
        .unwrap();
        assert_eq!(e.inputs.iter().map(|i| i.tokens).collect::<Vec<_>>(), [2, 2, 0]);
        assert_eq!(e.inputs[0].seed, e.inputs[1].seed);
        assert_ne!(e.inputs[0].seed, e.inputs[2].seed);
        assert_eq!(e.dimensions, Some(3));
        assert!(e.base64);
        let e = embeddings(br#"{"model":"e","input":[[1,2],[3]]}"#).unwrap();
        assert_eq!(e.inputs.len(), 2);
        assert!(embeddings(br#"{"model":"e","input":"x","encoding_format":"hex"}"#).is_err());
        assert!(embeddings(br#"{"model":"e","input":"x","dimensions":0}"#).is_err());
    }

    #[test]
    fn refusals() {
        let e = chat(b"{not json").unwrap_err();
        assert!(e.message.starts_with("We could not parse the JSON body"), "{}", e.message);
        let e = chat(br#"{"model":"m","messages":"hi"}"#).unwrap_err();
        assert!(e.message.starts_with("Invalid request body"), "{}", e.message);
        assert_eq!(chat(br#"{"model":"m"}"#).unwrap_err().param, Some("messages"));
        assert_eq!(
            chat(br#"{"messages":[]}"#).unwrap_err().message,
            "you must provide a model parameter"
        );
        assert_eq!(
            chat(br#"{"model":"m","messages":[],"n":0}"#).unwrap_err().code,
            Some("integer_below_min_value")
        );
        assert!(chat(br#"{"model":"m","messages":[],"n":129}"#).is_err());
        assert!(chat(br#"{"model":"m","messages":[{"content":5}]}"#).is_err());
        assert!(any_json(b"{}").is_ok());
        assert!(any_json(b"").is_err());
    }
}

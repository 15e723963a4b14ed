//! Request facts: what admission needs to know about an OpenAI-style request
//! body, and nothing more.
//!
//! Admission needs the model, the end user (`user`), the output the client
//! may ask for (`max_completion_tokens`, `max_tokens`, `n`), whether it
//! streams, and the text whose tokens it will be charged for. Everything
//! else in the body is left alone: it is forwarded byte for byte, so there
//! is no typed model of every OpenAI field here, and fields this module
//! does not know are neither validated nor dropped. The fields it does read
//! are type-checked, and a wrong type is reported as an OpenAI-style 400
//! naming the field (`param`).
//!
//! Strings are borrowed from the body where JSON allows it (no escapes), so
//! parsing a large prompt does not copy it.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de;

mod body;
#[cfg(test)]
mod tests;

use body::{
    ChatBody, CompletionsBody, EmbeddingsBody, OtherBody, chat, completions, embeddings, other,
};

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
    /// The end user the request is made for (OpenAI's `user`), if given.
    pub user: Option<Cow<'a, str>>,
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
            user: self.user.map(|u| Cow::Owned(u.into_owned())),
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

//! A JSON walker for the response path: it reads the few fields settlement
//! needs (`usage`, an `error`, and in a stream chunk the generated text) and
//! jumps over everything else without building anything.
//!
//! Why not serde alone: a response or a stream chunk is mostly fields Sluice
//! never reads (ids, fingerprints, logprobs), and serde_json spends most of
//! its time validating and visiting them. For a stream that was about
//! 0.4 µs per event, on every event, a quarter of the gateway's CPU per
//! streamed request. The walker skips strings with `memchr` and containers
//! by counting brackets.
//!
//! What it reads, it reads as serde does: text is unescaped by serde_json
//! (when it has escapes), a token count that is not a plain integer is
//! deserialized by serde, and a duplicate field, a field of the wrong type
//! or a document that does not parse gives nothing, as the derived
//! deserializers would. It is more lenient only in what it skips: a
//! malformed number, a stray bracket or invalid UTF-8 inside a value it does
//! not read goes unnoticed (the fields of `usage` other than its counts and
//! details objects, and those objects' fields other than `cached_tokens`
//! and `reasoning_tokens`, such as `audio_tokens`, included). And it reads
//! structs from JSON objects only, the response and the chunk themselves
//! included (serde would also take the array form, `[field1, field2]`,
//! which no server sends; a `usage` or a details object in that form goes
//! to serde).
//! The tests compare it with serde readers on generated documents.

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::usage::{InputDetails, OutputDetails, UsageFields, UsageJson, count_from_json};

/// serde_json's nesting limit.
const MAX_DEPTH: usize = 128;

/// Strings are searched eight bytes at a time for this long before `memchr`
/// takes over (its setup costs more than it saves on a few bytes).
const SHORT: usize = 64;

/// Where the first `"` or `\` of `b` is, if any.
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A word's zero bytes, as their high bits; only the lowest one is
    // exact (a borrow may mark the bytes above it), which is all this needs.
    let zeros = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let head = &b[..b.len().min(SHORT)];
    let mut words = head.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let w = u64::from_le_bytes(eight);
        let hits = zeros(w ^ (ONES * u64::from(b'"'))) | zeros(w ^ (ONES * u64::from(b'\\')));
        if hits != 0 {
            // Little-endian: the lowest bit is the first byte.
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if let Some(i) = words.remainder().iter().position(|&c| c == b'"' || c == b'\\') {
        return Some(at + i);
    }
    if head.len() < SHORT {
        return None;
    }
    memchr::memchr2(b'"', b'\\', &b[SHORT..]).map(|i| SHORT + i)
}

/// The bytes [`Cursor::skip_container`] stops at: quotes and brackets.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

/// The parts of a stream chunk the SSE tap reads.
#[derive(Debug, Default)]
pub(crate) struct Chunk<'a> {
    /// `choices`, unless absent or `null`.
    pub(crate) choices: Option<Choices<'a>>,
    /// `usage`, unless absent or `null`.
    pub(crate) usage: Option<UsageJson>,
    /// Whether there is an `error` (not `null`).
    pub(crate) error: bool,
}

/// `choices`: how many, and the generated text they carry (in no particular
/// order).
#[derive(Debug, Default)]
pub(crate) struct Choices<'a> {
    pub(crate) count: usize,
    pub(crate) texts: Texts<'a>,
}

/// Reads a stream chunk (one event's data), or nothing if it does not parse.
pub(crate) fn chunk(data: &[u8]) -> Option<Chunk<'_>> {
    let mut c = Cursor { b: data, i: 0 };
    let mut out = Chunk::default();
    let names = |key: &[u8]| match key {
        b"choices" => Some(0),
        b"usage" => Some(1),
        b"error" => Some(2),
        _ => None,
    };
    c.fields::<3>(names, |c, field| {
        match field {
            0 => out.choices = c.nullable(choices)?,
            1 => out.usage = c.nullable(Cursor::usage)?,
            _ => out.error = !c.skip_value()?,
        }
        Some(())
    })?;
    c.at_end().then_some(out)
}

/// Reads the top-level `usage` of a JSON response: `Some(None)` when the
/// body parses but has none (or `null`), `None` when it does not parse.
pub(crate) fn response_usage(body: &[u8]) -> Option<Option<UsageJson>> {
    let mut c = Cursor { b: body, i: 0 };
    let mut usage = None;
    c.fields::<1>(
        |key| (key == b"usage").then_some(0),
        |c, _| {
            usage = c.nullable(Cursor::usage)?;
            Some(())
        },
    )?;
    c.at_end().then_some(usage)
}

fn choices<'a>(c: &mut Cursor<'a>) -> Option<Choices<'a>> {
    let mut out = Choices::default();
    c.array(|c| {
        out.count += 1;
        choice(c, &mut out.texts)
    })?;
    Some(out)
}

type Texts<'a> = SmallVec<[Cow<'a, str>; 2]>;

fn choice<'a>(c: &mut Cursor<'a>, texts: &mut Texts<'a>) -> Option<()> {
    // `text`: legacy completions.
    let names = |key: &[u8]| match key {
        b"delta" => Some(0),
        b"text" => Some(1),
        _ => None,
    };
    c.fields::<2>(names, |c, field| match field {
        0 => c.nullable(|c| delta(c, texts)).map(drop),
        _ => c.text_into(texts),
    })
}

fn delta<'a>(c: &mut Cursor<'a>, texts: &mut Texts<'a>) -> Option<()> {
    // `reasoning_content` and `reasoning`: vLLM / DeepSeek reasoning models.
    let names = |key: &[u8]| match key {
        b"content" => Some(0),
        b"refusal" => Some(1),
        b"reasoning_content" => Some(2),
        b"reasoning" => Some(3),
        b"tool_calls" => Some(4),
        b"function_call" => Some(5),
        _ => None,
    };
    c.fields::<6>(names, |c, field| match field {
        4 => c.nullable(|c| c.array(|c| tool_call(c, texts))).map(drop),
        5 => c.nullable(|c| function(c, texts)).map(drop),
        _ => c.text_into(texts),
    })
}

fn tool_call<'a>(c: &mut Cursor<'a>, texts: &mut Texts<'a>) -> Option<()> {
    let names = |key: &[u8]| (key == b"function").then_some(0);
    c.fields::<1>(names, |c, _| c.nullable(|c| function(c, texts)).map(drop))
}

fn function<'a>(c: &mut Cursor<'a>, texts: &mut Texts<'a>) -> Option<()> {
    let names = |key: &[u8]| match key {
        b"name" => Some(0),
        b"arguments" => Some(1),
        _ => None,
    };
    c.fields::<2>(names, |c, _| c.text_into(texts))
}

/// A position in a JSON document. Every method returns `None` when the
/// document does not continue as expected.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            // Servers send compact JSON, and no whitespace byte is above a
            // space: one comparison settles the usual case.
            if c > b' ' || !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    /// The next byte that is not whitespace (not consumed).
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// A string (cursor at its opening quote): where it starts (the quote)
    /// and whether it has escapes; the cursor ends after its closing quote.
    #[inline]
    fn raw_string(&mut self) -> Option<(usize, bool)> {
        let start = self.i;
        if self.b.get(start) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..)?;
            self.i += quote_or_backslash(rest)?;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Some((start, escaped));
            }
            // A backslash and the byte it escapes (`\u` is followed by
            // four hex digits, neither quotes nor backslashes).
            escaped = true;
            self.i += 2;
        }
    }

    /// A string value, unescaped as serde_json does.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.ws();
        let (start, escaped) = self.raw_string()?;
        let quoted = &self.b[start..self.i];
        if escaped {
            return serde_json::from_slice::<String>(quoted).ok().map(Cow::Owned);
        }
        let raw = &quoted[1..quoted.len() - 1];
        // Control characters must be escaped in JSON.
        if raw.iter().any(|&b| b < 0x20) {
            return None;
        }
        std::str::from_utf8(raw).ok().map(Cow::Borrowed)
    }

    /// `null` (consumed: `Some(None)`), or what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// A `usage` value: an object whose token counts, and the cached and
    /// reasoning counts of its details objects, are read as serde reads
    /// [`UsageJson`]'s fields.
    fn usage(&mut self) -> Option<UsageJson> {
        if self.peek()? == b'[' {
            // The array form of a struct, which serde takes: let it.
            let start = self.i;
            self.skip_value()?;
            return serde_json::from_slice(&self.b[start..self.i]).ok();
        }
        let mut f = UsageFields::default();
        let names = |key: &[u8]| match key {
            b"prompt_tokens" => Some(0),
            b"completion_tokens" => Some(1),
            b"total_tokens" => Some(2),
            b"input_tokens" => Some(3),
            b"output_tokens" => Some(4),
            b"prompt_tokens_details" => Some(5),
            b"completion_tokens_details" => Some(6),
            b"input_tokens_details" => Some(7),
            b"output_tokens_details" => Some(8),
            _ => None,
        };
        self.fields::<9>(names, |c, field| {
            let count = match field {
                0 => &mut f.prompt,
                1 => &mut f.completion,
                2 => &mut f.total,
                3 => &mut f.input,
                4 => &mut f.output,
                5 => &mut f.prompt_cached,
                6 => &mut f.completion_reasoning,
                7 => &mut f.input_cached,
                _ => &mut f.output_reasoning,
            };
            *count = match field {
                0..=4 => c.nullable(Cursor::count)?,
                5 | 7 => c.nullable(|c| c.details::<InputDetails>(b"cached_tokens"))?.flatten(),
                _ => c.nullable(|c| c.details::<OutputDetails>(b"reasoning_tokens"))?.flatten(),
            };
            Some(())
        })?;
        Some(UsageJson::from_fields(f))
    }

    /// A details object of `usage` (`prompt_tokens_details`, …): the one
    /// count `name` in it, read as serde reads `D` (`None` when absent or
    /// `null`); other fields are skipped.
    fn details<D>(&mut self, name: &[u8]) -> Option<Option<u64>>
    where
        D: serde::de::DeserializeOwned + Into<Option<u64>>,
    {
        if self.peek()? == b'[' {
            // The array form of a struct, which serde takes: let it.
            let start = self.i;
            self.skip_value()?;
            return serde_json::from_slice::<D>(&self.b[start..self.i]).ok().map(Into::into);
        }
        let mut count = None;
        self.fields::<1>(
            |key| (key == name).then_some(0),
            |c, _| {
                count = c.nullable(Cursor::count)?;
                Some(())
            },
        )?;
        Some(count)
    }

    /// A token count. Plain integers (the usual case) are read here; any
    /// other value is handed to serde, which reads floats, negatives and
    /// huge numbers as the usage's deserializer does, and refuses the rest.
    fn count(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let rest = self.b.get(start..)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // Up to 19 digits always fit in a u64; a leading zero, a fraction or
        // an exponent go to serde.
        let plain = (1..=19).contains(&digits)
            && (digits == 1 || rest[0] != b'0')
            && !matches!(rest.get(digits), Some(b'.' | b'e' | b'E'));
        if plain {
            self.i += digits;
            return Some(rest[..digits].iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')));
        }
        self.skip_value()?;
        count_from_json(&self.b[start..self.i])
    }

    /// An object read as a struct of `N` fields, `names` giving a key's
    /// index (a `match`, which compiles to better code than a search of a
    /// list): `field` is called with the index of each one present and must consume its value; other
    /// keys are skipped, and a field that comes twice fails the read (serde's
    /// "duplicate field").
    fn fields<const N: usize>(
        &mut self,
        names: impl Fn(&[u8]) -> Option<usize>,
        mut field: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        let mut seen = [false; N];
        self.object(|c, key| match names(key) {
            Some(i) if !std::mem::replace(&mut seen[i], true) => field(c, i),
            Some(_) => None,
            None => c.skip_value().map(drop),
        })
    }

    /// An `Option<String>` field: its text, if any, goes to `texts`.
    fn text_into(&mut self, texts: &mut Texts<'a>) -> Option<()> {
        texts.extend(self.nullable(Cursor::string)?);
        Some(())
    }

    /// An object: `field` is called with each key (unescaped if need be) and
    /// must consume its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        if !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.ws();
            let (start, escaped) = self.raw_string()?;
            let end = self.i;
            if !self.eat(b':') {
                return None;
            }
            if escaped {
                let key = serde_json::from_slice::<String>(&self.b[start..end]).ok()?;
                field(self, key.as_bytes())?;
            } else {
                let b = self.b;
                field(self, &b[start + 1..end - 1])?;
            }
            if !self.eat(b',') {
                return self.eat(b'}').then_some(());
            }
        }
    }

    /// An array: `element` is called at each element and must consume it.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if !self.eat(b'[') {
            return None;
        }
        if self.eat(b']') {
            return Some(());
        }
        loop {
            element(self)?;
            if !self.eat(b',') {
                return self.eat(b']').then_some(());
            }
        }
    }

    /// Skips one value; true if it was `null`.
    fn skip_value(&mut self) -> Option<bool> {
        match self.peek()? {
            b'"' => {
                self.raw_string()?;
            }
            b'{' | b'[' => self.skip_container()?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => {
                self.literal(b"null")?;
                return Some(true);
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.b.get(self.i)
                {
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
            }
            _ => return None,
        }
        Some(false)
    }

    /// Skips an object or array (cursor at its opening bracket) by counting
    /// brackets outside strings.
    fn skip_container(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            // Most bytes are neither quotes nor brackets: step over them.
            let rest = self.b.get(self.i..)?;
            self.i += rest.iter().position(|&b| STRUCTURAL[usize::from(b)])?;
            match self.b[self.i] {
                b'"' => {
                    self.raw_string()?;
                    continue;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                }
                _ => {
                    // `}` or `]`.
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
            }
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod reference;
#[cfg(test)]
mod tests;

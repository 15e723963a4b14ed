//! Usage from a streamed (SSE) response, read as it passes through.
//!
//! The tap sits between upstream and client and sees every chunk. It forwards
//! the bytes unchanged, except that it can drop the final usage-only chunk
//! (`"choices": []` with a `usage`) that the gateway asked for on the client's
//! behalf. Events are never re-serialized: an event is either forwarded byte
//! for byte or dropped whole. Only the current, incomplete event is held
//! (and only while stripping; otherwise bytes go out as they come), and an
//! event larger than a cap is passed through unparsed rather than buffered.
//!
//! Usage on ordinary chunks (vLLM's `continuous_usage_stats`) is recorded but
//! left in place: removing a field would mean re-serializing the event.
//!
//! Line endings are `\n` or `\r\n` (what OpenAI, vLLM, SGLang and TGI send);
//! a lone `\r` is not treated as a line end.

use bytes::BufMut;
use smallvec::SmallVec;

use super::{Usage, UsageJson};
use crate::scan;
use crate::tokens::{Encoding, Estimator, bytes_estimate};

/// Events larger than this are forwarded without being parsed. A real chunk
/// is a few hundred bytes; a usage chunk well under 1 KiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// Reads usage from an SSE stream while forwarding it.
///
/// ```
/// use sluice_llm::usage::{SseUsageTap, Usage};
///
/// let mut tap = SseUsageTap::new(true);
/// let mut out = Vec::new();
/// tap.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\nda", &mut out);
/// tap.push(b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\n", &mut out);
/// tap.push(b"data: [DONE]\n\n", &mut out);
/// tap.finish(&mut out);
/// assert_eq!(tap.usage(), Some(Usage { input: 9, output: 1, ..Usage::default() }));
/// assert!(tap.saw_done());
/// // The usage chunk was removed; everything else went through as it came.
/// assert_eq!(
///     out,
///     b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"
/// );
/// ```
#[derive(Debug)]
pub struct SseUsageTap {
    strip_usage_chunk: bool,
    max_event_bytes: usize,
    /// Tokenizer for the fallback count of generated text, if any.
    encoding: Option<Encoding>,
    estimator: Estimator,
    /// The current event's bytes (all of them when stripping, for parsing
    /// either way), unless `skipping`.
    event: Vec<u8>,
    /// Where the current line starts in `event`.
    line_start: usize,
    /// Length and first byte of the current line, kept even while skipping.
    line_len: usize,
    line_first: u8,
    /// The current event is over the cap: passed through, not parsed.
    skipping: bool,
    /// Value ranges of the current event's `data:` lines, in `event`.
    data: SmallVec<[(usize, usize); 2]>,
    /// Joined value of a multi-line `data` field.
    scratch: Vec<u8>,
    stats: Stats,
}

/// What the tap has seen.
#[derive(Debug, Default)]
struct Stats {
    usage: Option<Usage>,
    done: bool,
    error: bool,
    stripped: bool,
    events: u64,
    text_bytes: u64,
    text_deltas: u64,
    text_tokens: u64,
}

impl SseUsageTap {
    /// A tap; `strip_usage_chunk` when the client did not ask for usage.
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            strip_usage_chunk,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            encoding: None,
            estimator: Estimator::new(),
            event: Vec::new(),
            line_start: 0,
            line_len: 0,
            line_first: 0,
            skipping: false,
            data: SmallVec::new(),
            scratch: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Counts generated text with this tokenizer (per delta), for
    /// [`SseUsageTap::estimated_output_tokens`].
    #[must_use]
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = Some(encoding);
        self
    }

    /// Sets the size above which an event is passed through unparsed.
    #[must_use]
    pub fn with_max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = max.max(1);
        self
    }

    /// Takes the next chunk from upstream and appends what to send to the
    /// client to `out`.
    pub fn push<B: BufMut + ?Sized>(&mut self, chunk: &[u8], out: &mut B) {
        if !self.strip_usage_chunk {
            // Nothing will be removed: forward at once, parse on the side.
            out.put_slice(chunk);
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            let newline = memchr::memchr(b'\n', rest);
            let take = newline.map_or(rest.len(), |i| i + 1);
            let (part, tail) = rest.split_at(take);
            rest = tail;
            let content = if newline.is_some() { &part[..part.len() - 1] } else { part };
            if self.line_len == 0
                && let Some(&b) = content.first()
            {
                self.line_first = b;
            }
            self.line_len += content.len();
            if self.skipping {
                if self.strip_usage_chunk {
                    out.put_slice(part);
                }
            } else {
                self.event.extend_from_slice(part);
            }
            if newline.is_some() {
                self.end_line(out);
            }
            if !self.skipping && self.event.len() > self.max_event_bytes {
                // Too big to hold: send what we have and pass the rest of
                // this event through.
                if self.strip_usage_chunk {
                    out.put_slice(&self.event);
                }
                self.event.clear();
                self.data.clear();
                self.line_start = 0;
                self.skipping = true;
            }
        }
    }

    /// Ends the stream: an unterminated last event is handled as if it had
    /// been terminated, and whatever is still held goes to `out`.
    pub fn finish<B: BufMut + ?Sized>(&mut self, out: &mut B) {
        if !self.skipping && !self.event.is_empty() {
            if self.line_len > 0 {
                self.note_line(self.event.len());
            }
            self.dispatch(out);
        }
        self.event.clear();
        self.data.clear();
        self.line_start = 0;
        self.line_len = 0;
        self.skipping = false;
    }

    /// The last usage seen (the final usage chunk, or the latest cumulative
    /// usage with vLLM's `continuous_usage_stats`).
    pub fn usage(&self) -> Option<Usage> {
        self.stats.usage
    }

    /// Whether `data: [DONE]` came through.
    pub fn saw_done(&self) -> bool {
        self.stats.done
    }

    /// Whether an event carried an `error` object (a mid-stream failure).
    pub fn saw_error(&self) -> bool {
        self.stats.error
    }

    /// Whether the usage chunk was removed from the client's stream.
    pub fn stripped_usage_chunk(&self) -> bool {
        self.stats.stripped
    }

    /// Events seen (including comments and `[DONE]`).
    pub fn events(&self) -> u64 {
        self.stats.events
    }

    /// UTF-8 bytes of generated text seen: content, refusal and reasoning
    /// deltas, tool-call arguments, and legacy `choices[].text`.
    pub fn generated_text_len(&self) -> u64 {
        self.stats.text_bytes
    }

    /// Chunks that carried generated text (about one token each on most
    /// servers).
    pub fn text_deltas(&self) -> u64 {
        self.stats.text_deltas
    }

    /// Output tokens estimated from the text seen, for a stream that ended
    /// before its usage: per-delta tokenizer counts when an encoding was set,
    /// else the larger of the delta count and a 4-bytes-per-token estimate.
    pub fn estimated_output_tokens(&self) -> u64 {
        match self.encoding {
            Some(Encoding::O200kBase | Encoding::Cl100kBase) => self.stats.text_tokens,
            other => {
                let bytes = usize::try_from(self.stats.text_bytes).unwrap_or(usize::MAX);
                bytes_estimate(bytes, other).max(self.stats.text_deltas)
            }
        }
    }

    /// Bytes held back (the incomplete trailing event).
    pub fn pending_len(&self) -> usize {
        self.event.len()
    }

    /// A line ended (its `\n` is the last byte of `event`, unless skipping).
    fn end_line<B: BufMut + ?Sized>(&mut self, out: &mut B) {
        let empty = self.line_len == 0 || (self.line_len == 1 && self.line_first == b'\r');
        if self.skipping {
            if empty {
                // The oversized event is over.
                self.skipping = false;
                self.stats.events += 1;
            }
        } else if empty {
            self.dispatch(out);
        } else {
            self.note_line(self.event.len() - 1);
        }
        self.line_len = 0;
        self.line_first = 0;
    }

    /// Looks at the line `event[line_start..end]` (without its `\n`).
    fn note_line(&mut self, end: usize) {
        let mut line = &self.event[self.line_start..end];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        let start = self.line_start;
        if let Some(value) = line.strip_prefix(b"data") {
            let value_start = match value {
                [] => Some(start + 4),
                [b':', b' ', ..] => Some(start + 6),
                [b':', ..] => Some(start + 5),
                _ => None, // e.g. `database: x`, another field
            };
            if let Some(vs) = value_start {
                self.data.push((vs, start + line.len()));
            }
        }
        self.line_start = end + 1;
    }

    /// The current event is complete: parse it, then forward or drop it.
    fn dispatch<B: BufMut + ?Sized>(&mut self, out: &mut B) {
        self.stats.events += 1;
        let drop_it = match self.data.as_slice() {
            [] => false,
            [(s, e)] => self.stats.observe(
                &self.event[*s..*e],
                self.strip_usage_chunk,
                self.encoding,
                &self.estimator,
            ),
            ranges => {
                self.scratch.clear();
                for (i, (s, e)) in ranges.iter().enumerate() {
                    if i > 0 {
                        self.scratch.push(b'\n');
                    }
                    self.scratch.extend_from_slice(&self.event[*s..*e]);
                }
                self.stats.observe(
                    &self.scratch,
                    self.strip_usage_chunk,
                    self.encoding,
                    &self.estimator,
                )
            }
        };
        if self.strip_usage_chunk && !drop_it {
            out.put_slice(&self.event);
        }
        self.event.clear();
        self.data.clear();
        self.line_start = 0;
    }
}

impl Stats {
    /// Reads one event's data; returns whether to drop the event.
    fn observe(
        &mut self,
        data: &[u8],
        strip: bool,
        encoding: Option<Encoding>,
        estimator: &Estimator,
    ) -> bool {
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            self.done = true;
            return false;
        }
        if !trimmed.starts_with(b"{") {
            return false;
        }
        let Some(chunk) = scan::chunk(trimmed) else {
            return false;
        };
        if chunk.error {
            self.error = true;
        }
        let usage = chunk.usage.and_then(UsageJson::to_usage);
        if usage.is_some() {
            self.usage = usage;
        }
        if let Some(choices) = &chunk.choices {
            let mut any = false;
            for text in &choices.texts {
                if text.is_empty() {
                    continue;
                }
                any = true;
                self.text_bytes = self.text_bytes.saturating_add(text.len() as u64);
                if let Some(enc @ (Encoding::O200kBase | Encoding::Cl100kBase)) = encoding {
                    self.text_tokens = self.text_tokens.saturating_add(estimator.count(text, enc));
                }
            }
            if any {
                self.text_deltas += 1;
            }
        }
        let drop_it =
            strip && usage.is_some() && chunk.choices.as_ref().is_some_and(|c| c.count == 0);
        if drop_it {
            self.stripped = true;
        }
        drop_it
    }
}

#[cfg(test)]
mod tests;

//! What one bucket of the usage history holds, and its byte encoding (the
//! data file's values).

use std::sync::Arc;

/// What one tenant did with one model in one bucket (a minute or an hour).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests admitted.
    pub requests: u64,
    /// Prompt tokens settled.
    pub input_tokens: u64,
    /// Completion tokens settled.
    pub output_tokens: u64,
    /// Requests refused with a 429.
    pub limited: u64,
    /// The 429s by the name of the limit that refused them, sorted by name
    /// (a handful of names at most: the policy's).
    pub limited_by: Vec<(Arc<str>, u64)>,
}

impl Counts {
    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.input_tokens == 0 && self.output_tokens == 0 && self.limited == 0
    }

    /// Notes `n` refusals by `limit`.
    pub fn add_limited(&mut self, limit: &Arc<str>, n: u64) {
        self.limited += n;
        match self.limited_by.binary_search_by(|(l, _)| l.cmp(limit)) {
            Ok(i) => self.limited_by[i].1 += n,
            Err(i) => self.limited_by.insert(i, (limit.clone(), n)),
        }
    }

    /// Adds `other` to these.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        for (limit, n) in &other.limited_by {
            match self.limited_by.binary_search_by(|(l, _)| l.cmp(limit)) {
                Ok(i) => self.limited_by[i].1 += n,
                Err(i) => self.limited_by.insert(i, (limit.clone(), *n)),
            }
        }
        self.limited += other.limited;
    }

    /// The 429s of the limit named `limit`.
    pub fn limited_by(&self, limit: &str) -> u64 {
        self.limited_by.iter().find(|(l, _)| &**l == limit).map_or(0, |(_, n)| *n)
    }

    /// Tokens, both kinds.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// The bytes the data file keeps: four little-endian `u64`s, then each
    /// limit as a `u16` length, its name and a `u64`.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 + self.limited_by.len() * 24);
        for n in [self.requests, self.input_tokens, self.output_tokens, self.limited] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        for (name, n) in &self.limited_by {
            let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name);
            b.extend_from_slice(&n.to_le_bytes());
        }
        b
    }

    /// Reads [`Counts::encode`]'s bytes (`None` if damaged).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let word = |at: usize| -> Option<u64> {
            b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes)
        };
        let mut c = Counts {
            requests: word(0)?,
            input_tokens: word(8)?,
            output_tokens: word(16)?,
            limited: word(24)?,
            limited_by: Vec::new(),
        };
        let mut at = 32;
        while at < b.len() {
            let len = usize::from(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
            let name = std::str::from_utf8(b.get(at + 2..at + 2 + len)?).ok()?;
            let n = word(at + 2 + len)?;
            if c.limited_by.last().is_some_and(|(last, _)| **last >= *name) {
                return None;
            }
            c.limited_by.push((Arc::from(name), n));
            at += 2 + len + 8;
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_and_survive_encoding() {
        let mut a =
            Counts { requests: 3, input_tokens: 100, output_tokens: 7, ..Counts::default() };
        let (rpm, tpd): (Arc<str>, Arc<str>) = (Arc::from("rpm"), Arc::from("tokens-per-day"));
        a.add_limited(&rpm, 2);
        let mut b = Counts { requests: 1, ..Counts::default() };
        b.add_limited(&rpm, 1);
        b.add_limited(&tpd, 4);
        a.add(&b);
        assert_eq!((a.requests, a.limited), (4, 7));
        assert_eq!((a.limited_by("rpm"), a.limited_by("tokens-per-day")), (3, 4));
        assert_eq!(Counts::decode(&a.encode()), Some(a.clone()));
        assert_eq!(Counts::decode(&a.encode()[..20]), None);
    }
}

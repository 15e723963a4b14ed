//! `[end_users]`: where a request's end user (the person or account inside
//! the tenant a request is made for) is read from, whether it is required,
//! and how long it may be. The raw section, its validation, and the one
//! check the gateway and the decision service both make.
//!
//! ```toml
//! [end_users]
//! header = "x-end-user"   # read it from this header, not the body's `user`
//! required = false        # true: a request without one is a 400
//! max_length = 256        # bytes; longer is a 400
//! ```
//!
//! Limits split by it (`by = ["user"]`) or conditioned on it (`when = {
//! user = [...] }`); requests that name no end user share one budget per
//! tenant (the end user `""`).

use serde::Deserialize;
use sluice_core::EndUser;
use toml::Spanned;

use crate::gateway::Problems;
use crate::raw::RawFile;

/// The longest end user accepted unless `max_length` says otherwise, in
/// bytes.
pub const DEFAULT_MAX_LENGTH: usize = 256;

/// The most `max_length` may be.
const MAX_MAX_LENGTH: usize = 64 * 1024;

/// `[end_users]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndUsers {
    /// The request header that names the end user (instead of the body's
    /// `user`).
    pub header: Option<Spanned<String>>,
    /// Whether a request must name one.
    pub required: Option<bool>,
    /// The longest end user accepted, in bytes.
    pub max_length: Option<Spanned<i64>>,
}

/// `[end_users]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndUsersConfig {
    /// The request header that names the end user, lowercase; `None`: the
    /// body's `user` field.
    pub header: Option<String>,
    /// A request that names no end user is refused (400).
    pub required: bool,
    /// The longest end user accepted, in bytes (longer: 400).
    pub max_length: usize,
}

impl Default for EndUsersConfig {
    fn default() -> Self {
        Self { header: None, required: false, max_length: DEFAULT_MAX_LENGTH }
    }
}

/// Why a request's end user was refused (the client's fault: a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndUserError {
    /// None given (or an empty one), and the policy requires one.
    Missing,
    /// Longer than `max_length` bytes.
    TooLong {
        /// The most allowed, in bytes.
        max: usize,
    },
}

impl EndUserError {
    /// A message for the client; `from` says where the end user is read
    /// (e.g. "`user`", "the `x-end-user` header").
    pub fn message(self, from: &str) -> String {
        match self {
            Self::Missing => format!(
                "This API requires an end user on every request: give {from} (the user of your application the request is made for)."
            ),
            Self::TooLong { max } => {
                format!("The end user is too long: {from} may be at most {max} bytes.")
            }
        }
    }
}

impl EndUsersConfig {
    /// Where the gateway reads the end user, for messages: the header, or
    /// the body's `user`.
    pub fn source(&self) -> String {
        match &self.header {
            Some(h) => format!("the `{h}` header"),
            None => "`user` in the request body".to_owned(),
        }
    }

    /// The end user named `name` (absent or empty: none), if this policy
    /// accepts it. Hashes the name: nothing is kept of it.
    pub fn end_user(&self, name: Option<&[u8]>) -> Result<EndUser, EndUserError> {
        match name {
            Some(n) if n.len() > self.max_length => {
                Err(EndUserError::TooLong { max: self.max_length })
            }
            Some(n) if !n.is_empty() => Ok(EndUser::of_bytes(n)),
            _ if self.required => Err(EndUserError::Missing),
            _ => Ok(EndUser::NONE),
        }
    }

    /// The setting in words, for `check-config`.
    pub fn describe(&self) -> String {
        let from = match &self.header {
            Some(h) => format!("the `{h}` header"),
            None => "the body's `user`".to_owned(),
        };
        let without = if self.required {
            "required (a request without one is a 400)"
        } else {
            "requests that name none share one budget per tenant"
        };
        format!("end users: from {from}; {without}; at most {} bytes", self.max_length)
    }
}

/// A header name as RFC 9110 allows it (a token), lowercase.
fn header_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}

/// Validates `[end_users]`.
pub(crate) fn end_users(raw: &RawFile, problems: &mut Problems) -> EndUsersConfig {
    let mut c = EndUsersConfig::default();
    let Some(section) = &raw.end_users else { return c };
    let r = section.get_ref();
    if let Some(h) = &r.header {
        match header_name(h.get_ref().trim()) {
            Some(name) if matches!(name.as_str(), "authorization" | "proxy-authorization") => {
                problems.push((
                    Some(h.span()),
                    "end_users.header".into(),
                    format!("`{name}` carries credentials, not an end user; name the header your clients or your edge set (e.g. `x-end-user`)"),
                ));
            }
            Some(name) => c.header = Some(name),
            None => problems.push((
                Some(h.span()),
                "end_users.header".into(),
                format!(
                    "`{}` is not a header name (letters, digits, `-`, e.g. `x-end-user`)",
                    h.get_ref()
                ),
            )),
        }
    }
    c.required = r.required.unwrap_or(false);
    if let Some(m) = &r.max_length {
        match usize::try_from(*m.get_ref()) {
            Ok(n) if (1..=MAX_MAX_LENGTH).contains(&n) => c.max_length = n,
            _ => problems.push((
                Some(m.span()),
                "end_users.max_length".into(),
                format!(
                    "must be a whole number of bytes from 1 to {MAX_MAX_LENGTH}, got {}",
                    m.get_ref()
                ),
            )),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(text: &str) -> Result<crate::Config, String> {
        crate::parse(text, "policy.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn by_default_the_body_names_the_end_user_and_none_is_needed() {
        let c = load("[models.m]\n").unwrap();
        let e = &c.gateway.end_users;
        assert_eq!(*e, EndUsersConfig::default());
        assert_eq!(e.end_user(None), Ok(EndUser::NONE));
        assert_eq!(e.end_user(Some(b"")), Ok(EndUser::NONE));
        assert_eq!(e.end_user(Some(b"alice")), Ok(EndUser::of("alice")));
        assert_eq!(e.end_user(Some(&[b'a'; 256])), Ok(EndUser::of_bytes(&[b'a'; 256])));
        assert_eq!(e.end_user(Some(&[b'a'; 257])), Err(EndUserError::TooLong { max: 256 }));
        assert_eq!(e.source(), "`user` in the request body");
    }

    #[test]
    fn the_section_is_read() {
        let c = load(
            "[models.m]\n[end_users]\nheader = \"X-End-User\"\nrequired = true\nmax_length = 64\n",
        )
        .unwrap();
        let e = &c.gateway.end_users;
        assert_eq!(e.header.as_deref(), Some("x-end-user"));
        assert!(e.required && e.max_length == 64);
        assert_eq!(e.end_user(None), Err(EndUserError::Missing));
        assert_eq!(e.end_user(Some(b"")), Err(EndUserError::Missing));
        assert_eq!(e.end_user(Some(&[b'a'; 65])), Err(EndUserError::TooLong { max: 64 }));
        assert_eq!(e.source(), "the `x-end-user` header");
        assert_eq!(
            EndUserError::TooLong { max: 64 }.message(&e.source()),
            "The end user is too long: the `x-end-user` header may be at most 64 bytes."
        );
        assert_eq!(
            e.describe(),
            "end users: from the `x-end-user` header; required (a request without one is a 400); at most 64 bytes"
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let e =
            load("[models.m]\n[end_users]\nheader = \"x end user\"\nmax_length = 0\n").unwrap_err();
        assert!(
            e.contains("policy.toml:3:10: end_users.header: `x end user` is not a header name"),
            "{e}"
        );
        assert!(
            e.contains("policy.toml:4:14: end_users.max_length: must be a whole number"),
            "{e}"
        );
        let e = load("[models.m]\n[end_users]\nheader = \"Authorization\"\n").unwrap_err();
        assert!(e.contains("end_users.header: `authorization` carries credentials"), "{e}");
        let e = load("[models.m]\n[end_users]\nfield = \"user\"\n").unwrap_err();
        assert!(e.contains("unknown field `field`"), "{e}");
    }
}

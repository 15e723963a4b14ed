//! Hop-by-hop headers (RFC 9110 §7.6.1): those that describe one connection,
//! not the message, are not forwarded, in either direction. They are the
//! fixed ones (`connection`, `keep-alive`, `te`, `transfer-encoding`,
//! `upgrade`, the `proxy-*` pair) and every header the `Connection` header
//! nominates (`Connection: close, x-secret` makes `x-secret` hop-by-hop).

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName};

/// Headers that are always hop-by-hop.
#[inline(always)]
pub(crate) fn fixed(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes the headers `doomed` names and, when there is a `Connection`
/// header, every header it nominates: one pass over the names, no lookup
/// when there is none.
pub(crate) fn strip(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let mut connection = false;
    let names: smallvec::SmallVec<[HeaderName; 8]> = headers
        .keys()
        .filter(|n| {
            connection |= *n == CONNECTION;
            doomed(n)
        })
        .cloned()
        .collect();
    if connection {
        remove_nominated(headers);
    }
    for name in &names {
        headers.remove(name);
    }
}

/// Removes the headers every `Connection` header of `headers` nominates
/// (call before `Connection` itself is removed).
pub(crate) fn remove_nominated(headers: &mut HeaderMap) {
    let nominated: smallvec::SmallVec<[HeaderName; 4]> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in &nominated {
        if name != CONNECTION {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use http::HeaderValue;

    use super::*;

    #[test]
    fn nominated_headers_go() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.append(CONNECTION, HeaderValue::from_static(" x-other ,,"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_nominated(&mut h);
        assert!(!h.contains_key("x-secret") && !h.contains_key("x-other"));
        assert!(h.contains_key("x-kept") && h.contains_key(CONNECTION));
        h.insert("x-secret", HeaderValue::from_static("1"));
        strip(&mut h, fixed);
        assert!(!h.contains_key("x-secret") && !h.contains_key(CONNECTION));
        assert!(h.contains_key("x-kept"));
    }
}

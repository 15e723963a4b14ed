//! Dashboard logins: a random session id in an `HttpOnly`, `SameSite=Strict`
//! cookie (and `Secure` unless the page is plain HTTP on a loopback
//! address), mapped here to who logged in, until it expires. The map is
//! keyed by the SHA-256 of the id, so neither a lookup's timing nor a copy
//! of the map gives an id away, and it is bounded: per tenant and in all,
//! the oldest logins go first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header;
use parking_lot::Mutex;
use sluice_served::auth::{KeyHash, hash_secret};

/// The cookie's name.
pub const COOKIE: &str = "sluice_session";

/// Who a session belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The operator (logged in with the admin token).
    Operator,
    /// A tenant (logged in with one of its API keys).
    Tenant {
        /// The tenant's id.
        tenant: String,
        /// The hash of the key it logged in with: the session ends when the
        /// key stops working.
        key: KeyHash,
    },
}

struct Session {
    role: Role,
    created: Instant,
    expires: Instant,
}

/// Live sessions.
pub struct Sessions {
    map: Mutex<HashMap<KeyHash, Session>>,
    ttl: Duration,
    max: usize,
    per_tenant: usize,
}

impl Sessions {
    /// Sessions lasting `ttl`; at most `max` in all and `per_tenant` for one
    /// tenant.
    pub fn new(ttl: Duration, max: usize, per_tenant: usize) -> Self {
        Self { map: Mutex::new(HashMap::new()), ttl, max, per_tenant }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session; returns its id (64 hex digits of the operating
    /// system's randomness), or `None` without randomness.
    pub fn create(&self, role: Role) -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let id = hex::encode(bytes);
        let now = Instant::now();
        let mut map = self.map.lock();
        map.retain(|_, s| s.expires > now);
        if let Role::Tenant { tenant, .. } = &role {
            let mut theirs: Vec<(KeyHash, Instant)> = map
                .iter()
                .filter(|(_, s)| matches!(&s.role, Role::Tenant { tenant: t, .. } if t == tenant))
                .map(|(k, s)| (*k, s.created))
                .collect();
            if theirs.len() >= self.per_tenant {
                theirs.sort_by_key(|(_, created)| *created);
                for (k, _) in &theirs[..=theirs.len() - self.per_tenant] {
                    map.remove(k);
                }
            }
        }
        if map.len() >= self.max
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(hash_secret(&id), Session { role, created: now, expires: now + self.ttl });
        Some(id)
    }

    /// Who the session `id` belongs to, if it is live.
    pub fn get(&self, id: &str) -> Option<Role> {
        let key = hash_secret(id);
        let mut map = self.map.lock();
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.role.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`.
    pub fn end(&self, id: &str) {
        self.map.lock().remove(&hash_secret(id));
    }

    /// Live sessions (for tests).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.map.lock().values().filter(|s| s.expires > now).count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id a request's `Cookie` header carries.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The host a request was sent to (without the port).
fn host(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    Some(match h.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => h.rsplit_once(':').map_or(h, |(name, _)| name),
    })
}

/// Whether a TLS proxy in front says the page was reached over HTTPS
/// (`X-Forwarded-Proto: https`). Anyone can send the header, but it only
/// ever makes the cookie stricter.
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// Whether the page was reached over plain HTTP on this machine: a loopback
/// host, and no TLS proxy saying `X-Forwarded-Proto: https`.
pub fn plain_loopback(headers: &HeaderMap) -> bool {
    let tls = forwarded_https(headers);
    let loopback = host(headers).is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    loopback && !tls
}

/// The `Set-Cookie` value of a new session: `Secure` unless the page is
/// plain HTTP on loopback (where a browser would not send a `Secure`
/// cookie back over HTTP, and nothing crosses a network).
pub fn set_cookie(id: &str, ttl: Duration, headers: &HeaderMap) -> String {
    let secure = if plain_loopback(headers) { "" } else { "; Secure" };
    format!(
        "{COOKIE}={id}; Path=/dashboard; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        ttl.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(headers: &HeaderMap) -> String {
    let secure = if plain_loopback(headers) { "" } else { "; Secure" };
    format!("{COOKIE}=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Whether a POST may change anything: its `Origin` (which browsers send
/// with every form they post) names the host it was sent to. Requests
/// without an `Origin` are not from a browser's form of another site
/// (browsers send one on cross-site POSTs), unless `Sec-Fetch-Site` says
/// otherwise.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let sent_to = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        Some(Ok(origin)) => {
            let hostport = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            sent_to.is_some_and(|h| h.eq_ignore_ascii_case(hostport))
        }
        Some(Err(_)) => false,
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|s| s == "same-origin" || s == "none"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn sessions_expire_and_are_bounded_per_tenant() {
        let s = Sessions::new(Duration::from_secs(60), 100, 3);
        let op = s.create(Role::Operator).unwrap();
        assert_eq!(s.get(&op), Some(Role::Operator));
        let t = |n: &str| Role::Tenant { tenant: n.into(), key: [0; 32] };
        let first = s.create(t("acme")).unwrap();
        for _ in 0..10 {
            s.create(t("acme")).unwrap();
        }
        assert_eq!(s.get(&first), None, "the oldest of acme's logins went");
        assert_eq!(s.len(), 1 + 3);
        assert_eq!(s.get(&op), Some(Role::Operator), "other sessions stay");
        s.end(&op);
        assert_eq!(s.get(&op), None);
        let short = Sessions::new(Duration::ZERO, 100, 3);
        let gone = short.create(Role::Operator).unwrap();
        assert_eq!(short.get(&gone), None, "expired");
    }

    #[test]
    fn sessions_are_bounded_in_all() {
        let s = Sessions::new(Duration::from_secs(60), 50, 50);
        for i in 0..500 {
            s.create(Role::Tenant { tenant: format!("t{i}"), key: [0; 32] }).unwrap();
        }
        assert_eq!(s.len(), 50);
    }

    #[test]
    fn cookies_are_secure_except_on_plain_loopback() {
        let id = "ab".repeat(32);
        let ttl = Duration::from_secs(10);
        let local = set_cookie(&id, ttl, &headers(&[("host", "127.0.0.1:8090")]));
        assert!(local.contains("HttpOnly") && local.contains("SameSite=Strict"));
        assert!(!local.contains("Secure"), "{local}");
        for h in [
            headers(&[("host", "ops.example.com")]),
            headers(&[("host", "localhost:8090"), ("x-forwarded-proto", "https")]),
            headers(&[("host", "10.0.0.5:8090")]),
        ] {
            assert!(set_cookie(&id, ttl, &h).ends_with("; Secure"));
        }
        assert!(plain_loopback(&headers(&[("host", "[::1]:8090")])));
        let h = headers(&[("cookie", &format!("a=b; {COOKIE}={id}"))]);
        assert_eq!(cookie(&h), Some(id.as_str()));
        assert_eq!(cookie(&headers(&[("cookie", "sluice_session=short")])), None);
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8090"),
            ("origin", "http://127.0.0.1:8090")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8090"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8090"), ("origin", "null")])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8090")])), "curl");
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8090"),
            ("sec-fetch-site", "cross-site")
        ])));
    }
}

//! The audit log: one line (target `sluice::audit`, level info) for every
//! write to the admin API, with its method, route, the ids its path names
//! (tenant, key, limit) and the status it got; and a warning, at most once
//! a second with a count, for calls refused for their token. Never a body,
//! a token or a secret: a new key's secret is in the response body only.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};

/// What an audit line says of one write.
pub(crate) struct Audit {
    method: Method,
    route: String,
    tenant: Option<String>,
    key: Option<String>,
    limit: Option<String>,
}

impl Audit {
    /// The audit of `req`, if it is a write.
    pub(crate) fn of(req: &Request) -> Option<Self> {
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "?".to_owned(), |m| m.as_str().to_owned());
        let mut a =
            Self { method: req.method().clone(), route, tenant: None, key: None, limit: None };
        for (pattern, value) in a.route.split('/').zip(req.uri().path().split('/')) {
            let slot = match pattern {
                "{id}" => &mut a.tenant,
                "{key}" => &mut a.key,
                "{limit}" => &mut a.limit,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        Some(a)
    }

    /// Writes the line.
    pub(crate) fn done(self, status: StatusCode) {
        tracing::info!(
            target: "sluice::audit",
            method = %self.method,
            route = %self.route,
            tenant = ?self.tenant,
            key = ?self.key,
            limit = ?self.limit,
            status = status.as_u16(),
            "admin write"
        );
    }
}

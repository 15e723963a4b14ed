//! Upstream inference servers: one pooled HTTP client per upstream, its base
//! URL, its own API key (read from the environment, never from the client),
//! and its timeouts; and the connector that makes them for a runtime.
//!
//! How requests reach an upstream depends on its scheme: cleartext
//! (`http://`) over a pool of HTTP/1.1 connections kept here ([`pool`]),
//! TLS (`https://`) through hyper-util's client ([`tls`]).

mod pool;
mod tls;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use sluice_config::gateway::{Upstream, UpstreamTarget};
use sluice_served::runtime::{Connect, RuntimeError, Upstream as ServedUpstream};

pub use pool::UpstreamBody;
pub use sluice_served::runtime::UpstreamError;

use pool::Pool;
use tls::HttpsClient;

/// Resolves a mock upstream's base URL by name.
pub type MockUrls = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Makes an [`UpstreamClient`] for each upstream of a policy file: at its
/// `base_url`, or at the mock server started for a `mock = true` one.
pub struct Connector {
    mock_urls: MockUrls,
}

impl Connector {
    /// A connector that finds mock upstreams' base URLs with `mock_urls`.
    pub fn new(mock_urls: MockUrls) -> Self {
        Self { mock_urls }
    }
}

impl Connect for Connector {
    fn connect(&self, upstream: &Upstream) -> Result<Arc<dyn ServedUpstream>, RuntimeError> {
        let base = match &upstream.target {
            UpstreamTarget::Url(url) => url.clone(),
            UpstreamTarget::Mock => (self.mock_urls)(&upstream.name)
                .ok_or_else(|| RuntimeError::NoMock(upstream.name.clone()))?,
        };
        Ok(Arc::new(UpstreamClient::new(upstream, &base)?))
    }
}

/// This gateway's client of an upstream a runtime carries (none if another
/// connector made it).
#[inline]
pub fn client(upstream: &dyn ServedUpstream) -> Option<&UpstreamClient> {
    (upstream as &dyn Any).downcast_ref()
}

/// Why a request to an upstream failed before its response started.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No response within the upstream's timeout (504).
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, reset, DNS, TLS… (502).
    #[error("the upstream could not be reached: {0}")]
    Unreachable(String),
}

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most idle connections kept per upstream.
const MAX_IDLE: usize = 1024;

/// How requests reach the upstream.
enum Transport {
    /// `http://`: HTTP/1.1 over a pool of connections kept here.
    Plain(Arc<Pool>),
    /// `https://`: hyper-util's pooled client (HTTP/2 or HTTP/1.1 by ALPN).
    Tls(Box<HttpsClient>),
}

/// A pooled client for one upstream.
pub struct UpstreamClient {
    /// Its name (from the policy file).
    pub name: String,
    base: String,
    /// The base URL's path, without a trailing `/` (origin-form requests).
    base_path: String,
    auth: Option<HeaderValue>,
    /// Time until the response starts.
    pub timeout: Duration,
    transport: Transport,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("UpstreamClient")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("has_key", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// A client for `upstream`, at `base` (its `base_url`, or a mock's).
    pub fn new(upstream: &Upstream, base: &str) -> Result<Self, UpstreamError> {
        let auth = match &upstream.api_key_env {
            None => None,
            Some(var) => {
                let key = std::env::var(var).map_err(|_| UpstreamError::MissingKey {
                    upstream: upstream.name.clone(),
                    var: var.clone(),
                })?;
                let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| UpstreamError::BadKey(upstream.name.clone()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let base = base.trim_end_matches('/').to_owned();
        let bad_url =
            || UpstreamError::BadUrl { upstream: upstream.name.clone(), url: base.clone() };
        let Ok(full) = format!("{base}/chat/completions").parse::<Uri>() else {
            return Err(bad_url());
        };
        let (Some(scheme), Some(authority)) = (full.scheme(), full.authority()) else {
            return Err(bad_url());
        };
        // What follows the authority: the path (and query) requests are
        // appended to.
        let base_path = base
            .find("://")
            .and_then(|i| base.get(i + 3 + authority.as_str().len()..))
            .unwrap_or("")
            .to_owned();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(upstream.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let transport = if *scheme == Scheme::HTTP {
            // The Host header hyper-util's client would set: the port only
            // when it is not the scheme's default.
            let host = match authority.port_u16() {
                Some(80) | None => HeaderValue::from_str(authority.host()),
                Some(port) => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
            }
            .map_err(|_| bad_url())?;
            let dst = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|_| bad_url())?;
            Transport::Plain(Arc::new(Pool::new(http, dst, host)))
        } else {
            Transport::Tls(Box::new(tls::client(http)))
        };
        Ok(Self {
            name: upstream.name.clone(),
            base,
            base_path,
            auth,
            timeout: upstream.timeout,
            transport,
        })
    }

    /// The upstream URI for a client's request path: the part after `/v1`
    /// is appended to the base URL (which ends in `/v1` for OpenAI-style
    /// servers). For a cleartext upstream, in origin form (the path only),
    /// as sent on the wire.
    pub fn uri(&self, path_and_query: &str) -> Option<Uri> {
        let rest = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
        match self.transport {
            Transport::Plain(_) => {
                let mut s = String::with_capacity(self.base_path.len() + rest.len() + 1);
                if !self.base_path.starts_with('/') && !rest.starts_with('/') {
                    s.push('/');
                }
                s.push_str(&self.base_path);
                s.push_str(rest);
                PathAndQuery::from_maybe_shared(Bytes::from(s)).ok().map(Uri::from)
            }
            Transport::Tls(_) => format!("{}{rest}", self.base).parse().ok(),
        }
    }

    /// The `Authorization` value for the upstream, if it has a key.
    pub fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    /// Sends a request (its URI from [`UpstreamClient::uri`]); waits at most
    /// the upstream's timeout for the response to start.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let sent = match &self.transport {
            Transport::Plain(pool) => tokio::time::timeout(self.timeout, pool.send(req)).await,
            Transport::Tls(client) => {
                tokio::time::timeout(self.timeout, tls::send(client, req)).await
            }
        };
        match sent {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(Err(msg)) => Err(SendError::Unreachable(msg)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

impl ServedUpstream for UpstreamClient {
    fn uri(&self, path_and_query: &str) -> Option<Uri> {
        UpstreamClient::uri(self, path_and_query)
    }
}

/// An error and its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests;

//! Upstream inference servers: one pooled HTTP client per upstream, its base
//! URL, its own API key (read from the environment, never from the client),
//! and its timeouts.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_config::gateway::Upstream;

/// Why an upstream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The API key's environment variable is not set.
    #[error(
        "upstream `{upstream}`: the environment variable `{var}` (its `api_key_env`) is not set"
    )]
    MissingKey {
        /// The upstream.
        upstream: String,
        /// The variable.
        var: String,
    },
    /// The key cannot be sent as a header.
    #[error("upstream `{0}`: its API key contains characters that cannot go in a header")]
    BadKey(String),
    /// The base URL cannot be combined with request paths.
    #[error("upstream `{upstream}`: `{url}` is not a usable base URL")]
    BadUrl {
        /// The upstream.
        upstream: String,
        /// The URL.
        url: String,
    },
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

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client for one upstream.
pub struct UpstreamClient {
    /// Its name (from the policy file).
    pub name: String,
    base: String,
    auth: Option<HeaderValue>,
    /// Time until the response starts.
    pub timeout: Duration,
    client: HttpClient,
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
        if format!("{base}/chat/completions").parse::<Uri>().is_err() {
            return Err(UpstreamError::BadUrl { upstream: upstream.name.clone(), url: base });
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(upstream.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(https);
        Ok(Self { name: upstream.name.clone(), base, auth, timeout: upstream.timeout, client })
    }

    /// The upstream URI for a client's request path: the part after `/v1`
    /// is appended to the base URL (which ends in `/v1` for OpenAI-style
    /// servers).
    pub fn uri(&self, path_and_query: &str) -> Option<Uri> {
        let rest = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
        format!("{}{rest}", self.base).parse().ok()
    }

    /// The `Authorization` value for the upstream, if it has a key.
    pub fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    /// Sends a request; waits at most the upstream's timeout for the
    /// response to start.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, SendError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(Err(e)) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                Err(SendError::Unreachable(msg))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

//! TLS (`https://`) upstreams go through hyper-util's pooled client, which
//! negotiates HTTP/2 or HTTP/1.1 by ALPN.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::pool::UpstreamBody;
use super::{IDLE_TIMEOUT, MAX_IDLE, chain};

/// hyper-util's client over rustls.
pub(super) type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client whose connections `http` opens, in TLS (or cleartext, for a
/// redirect's `http://`).
pub(super) fn client(http: HttpConnector) -> HttpsClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE)
        .build(https)
}

/// Sends `req` (its URI absolute); the response, or why it did not come.
pub(super) async fn send(
    client: &HttpsClient,
    req: Request<Full<Bytes>>,
) -> Result<Response<UpstreamBody>, String> {
    client.request(req).await.map(|resp| resp.map(UpstreamBody::unpooled)).map_err(|e| chain(&e))
}

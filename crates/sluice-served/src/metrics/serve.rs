//! The metrics' own listener (`[metrics] listen`): `GET /metrics` behind a
//! bearer token, on the same hardened accept loop as every listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use sluice_core::CounterStore;

use crate::auth::{bearer, hash_secret, same};
use crate::body::{ResponseBody, full};
use crate::edge::{ListenerOptions, RequestBody, Throttle, serve_connections};
use crate::served::Served;

/// Serves `GET /metrics` on `listener` to callers that send `token` as
/// their bearer token, until `shutdown` completes.
pub async fn serve_metrics<S>(
    listener: tokio::net::TcpListener,
    served: Arc<Served<S>>,
    token: &str,
    shutdown: impl Future<Output = ()>,
    opts: ListenerOptions,
) -> std::io::Result<()>
where
    S: CounterStore,
{
    let token = hash_secret(token);
    let refused = Arc::new(Throttle::default());
    let started = std::time::Instant::now();
    let service = service_fn(move |req: Request<RequestBody>| {
        let served = served.clone();
        let refused = refused.clone();
        async move {
            let authorized = bearer(req.headers()).is_some_and(|t| same(&hash_secret(t), &token));
            let resp = if !authorized {
                if let Some(n) = refused.hit(started) {
                    tracing::warn!(target: "sluice::audit", refused = n, "metrics scrapes refused for a missing or wrong token");
                }
                let mut r = plain(
                    StatusCode::UNAUTHORIZED,
                    "the metrics need `Authorization: Bearer <metrics token>`\n",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            } else if req.uri().path() != "/metrics" {
                plain(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n")
            } else if req.method() != Method::GET {
                plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n")
            } else {
                let (text, format) = served.metrics_text(req.headers().get(header::ACCEPT));
                let mut r = Response::new(full(text));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format));
                r
            };
            Ok::<_, Infallible>(resp)
        }
    });
    serve_connections(listener, service, shutdown, opts).await
}

fn plain(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

//! A proxy with Sluice's HTTP stack and nothing else: the same hyper-util
//! server and the same upstream pool as `sluice serve`, forwarding every
//! POST to the upstream as it is — no auth, no parsing, no limits, no
//! headers. `scripts/bench-gateway` can measure it (`--bare`) to separate
//! the cost of the stack from the cost of Sluice's own work.
//!
//! `cargo run --release -p sluice-gateway --example bare_proxy -- LISTEN UPSTREAM_BASE_URL`

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use sluice_config::gateway::{Upstream, UpstreamTarget};
use sluice_gateway::upstream::UpstreamClient;
use sluice_served::edge::RequestBody;

type Body = UnsyncBoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;

async fn forward(up: &UpstreamClient, req: Request<RequestBody>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let Some(uri) = up.uri(parts.uri.path()) else {
        return Response::new(Full::default().map_err(|e| match e {}).boxed_unsync());
    };
    let mut out = Request::new(Full::new(bytes));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = parts.headers;
    out.headers_mut().remove(http::header::HOST);
    match up.send(out).await {
        Ok(resp) => resp.map(|b| b.map_err(|e| Box::new(e) as _).boxed_unsync()),
        Err(_) => {
            let mut r = Response::new(Full::default().map_err(|e| match e {}).boxed_unsync());
            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
            r
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_proxy LISTEN UPSTREAM_BASE_URL");
    };
    let upstream = Upstream {
        name: "up".into(),
        target: UpstreamTarget::Url(base.clone()),
        api_key_env: None,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(60),
    };
    // The runtime `sluice serve` picks for the same CPUs.
    let rt = sluice_gateway::tokio_runtime()?;
    rt.block_on(async move {
        let up = Arc::new(UpstreamClient::new(&upstream, &base)?);
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        println!("bare proxy listening on http://{}", listener.local_addr()?);
        let service = service_fn(move |req| {
            let up = up.clone();
            async move { Ok::<_, Infallible>(forward(&up, req).await) }
        });
        // The same accept loop as `sluice serve`; runs until killed.
        sluice_served::serve_connections(
            listener,
            service,
            std::future::pending(),
            sluice_served::ListenerOptions::standalone("bare"),
        )
        .await?;
        Ok(())
    })
}

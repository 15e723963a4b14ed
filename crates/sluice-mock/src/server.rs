//! The HTTP/1.1 server and its routes.
//!
//! Plain hyper, one task per connection, keep-alive: the least machinery
//! between the socket and the answer, since this server is the "direct"
//! baseline the proxy's overhead is measured against. Like mini-redis, it
//! takes its listener and a shutdown future, so tests bind port 0 and stop it
//! when they like.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::MockConfig;
use crate::body::MockBody;
use crate::controls::Controls;
use crate::request::{self, RequestError};
use crate::response::{self, Completion, Embedding, Usage};
use crate::sse::{SseBody, StreamPlan};
use crate::stats::{InFlight, MockStats, RecordedRequest};

/// Request bodies larger than this get 413.
const MAX_BODY_BYTES: usize = 64 << 20;

/// Pause after an accept error that is not about one connection (such as
/// running out of file descriptors under a load test).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves the mock on `listener` until `shutdown` completes.
///
/// On shutdown the server stops accepting and drops every open connection
/// (a hung request or an unfinished stream ends there; a stream dropped so
/// counts as cancelled). Accept errors never stop the server: one that is
/// about a single connection is skipped, any other (such as too many open
/// files) is retried after a short pause, so the result is `Ok` unless a
/// future version finds an error worth returning.
pub async fn serve(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_stats(listener, config, Arc::new(MockStats::default()), shutdown).await
}

/// [`serve`], counting into the given [`MockStats`].
pub async fn serve_with_stats(
    listener: TcpListener,
    config: MockConfig,
    stats: Arc<MockStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        models_body: Bytes::from(response::models_json(&config.models)),
        config,
        stats,
    });
    let mut http = http1::Builder::new();
    // Idle keep-alive connections stay open: a proxy's pooled connection
    // must not be closed under it in the middle of a test.
    http.timer(TokioTimer::new()).keep_alive(true).header_read_timeout(None);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small SSE events must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    connections.spawn(async move {
                        // A client that goes away is no error of the mock's.
                        let _ = connection.await;
                    });
                }
                Err(e) if is_per_connection(&e) => {}
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Starts a mock on `127.0.0.1` and an ephemeral port, in a task of the
/// current runtime. Dropping the handle (or [`MockServer::shutdown`]) stops it.
pub async fn spawn(config: MockConfig) -> io::Result<MockServer> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(MockStats::default());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_stats(listener, config, Arc::clone(&stats), async move {
        // A dropped sender stops the server too.
        let _ = rx.await;
    }));
    Ok(MockServer { addr, stats, shutdown: Some(tx), task: Some(task) })
}

/// A running mock, from [`spawn`].
#[derive(Debug)]
pub struct MockServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub stats: Arc<MockStats>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl MockServer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL OpenAI clients take.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops the server and waits until every connection is closed.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// What every request handler shares.
struct Shared {
    config: MockConfig,
    stats: Arc<MockStats>,
    models_body: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Feedback,
    Models,
    WrongMethod,
    NotFound,
}

impl Route {
    fn of(method: &Method, path: &str) -> Self {
        let (route, post) = match path {
            "/v1/chat/completions" => (Self::Chat, true),
            "/v1/completions" => (Self::Completions, true),
            "/v1/embeddings" => (Self::Embeddings, true),
            "/v1/feedback" => (Self::Feedback, true),
            "/v1/models" => (Self::Models, false),
            _ => return Self::NotFound,
        };
        let allowed = if post { Method::POST } else { Method::GET };
        if *method == allowed { route } else { Self::WrongMethod }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<MockBody> {
    let stats = &shared.stats;
    let seq = stats.next_request();
    let in_flight = stats.enter();
    let (parts, body) = req.into_parts();
    let route = Route::of(&parts.method, parts.uri.path());
    let invalid_url = matches!(route, Route::NotFound | Route::WrongMethod)
        .then(|| format!("Invalid URL ({} {})", parts.method, parts.uri.path()));
    let controls = if shared.config.controls {
        Controls::from_headers(&parts.headers)
    } else {
        Ok(Controls::default())
    };
    let body = Limited::new(body, MAX_BODY_BYTES).collect().await.map(|c| c.to_bytes());
    stats.record(RecordedRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: body.as_ref().map_or_else(|_| Bytes::new(), Bytes::clone),
    });
    let body = match body {
        Ok(body) => body,
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            let message = format!("The request body is larger than {MAX_BODY_BYTES} bytes.");
            return invalid(StatusCode::PAYLOAD_TOO_LARGE, &message);
        }
        Err(_) => return invalid(StatusCode::BAD_REQUEST, "The request body could not be read."),
    };
    let controls = match controls {
        Ok(c) => c,
        Err(e) => return invalid(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let latency = controls.latency.unwrap_or(shared.config.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if controls.hang {
        // Dropped by hyper when the client goes away.
        std::future::pending::<()>().await;
    }
    if let Some(status) = controls.status {
        return response::status_error(status);
    }
    match route {
        Route::Chat => generate(&shared, seq, &body, &controls, in_flight, true),
        Route::Completions => generate(&shared, seq, &body, &controls, in_flight, false),
        Route::Embeddings => embeddings(&shared, &body, &controls),
        Route::Feedback => {
            let checked = if body.is_empty() { Ok(()) } else { request::any_json(&body) };
            match checked {
                Ok(()) => {
                    response::json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
                }
                Err(e) => bad_request(&e),
            }
        }
        Route::Models => response::json(StatusCode::OK, shared.models_body.clone()),
        Route::WrongMethod => {
            invalid(StatusCode::METHOD_NOT_ALLOWED, invalid_url.as_deref().unwrap_or_default())
        }
        Route::NotFound => {
            invalid(StatusCode::NOT_FOUND, invalid_url.as_deref().unwrap_or_default())
        }
    }
}

/// Chat and completions, JSON or streamed.
fn generate(
    shared: &Shared,
    seq: u64,
    body: &[u8],
    controls: &Controls,
    in_flight: InFlight,
    chat: bool,
) -> Response<MockBody> {
    let parsed = if chat { request::chat(body) } else { request::completion(body) };
    let g = match parsed {
        Ok(g) => g,
        Err(e) => return bad_request(&e),
    };
    if let Some(refusal) = check_model(&shared.config, &g.model) {
        return refusal;
    }
    let per_choice =
        g.tokens_per_choice(shared.config.default_completion_tokens, controls.completion_tokens);
    let reasoning = controls.reasoning_tokens.unwrap_or(0);
    let usage = Usage {
        prompt: controls.prompt_tokens.unwrap_or(g.prompt_tokens),
        completion: per_choice.saturating_mul(g.n).saturating_add(reasoning),
        cached: controls.cached_tokens.unwrap_or(0),
        reasoning,
    };
    let finish_reason = g.finish_reason(per_choice);
    let id = format!("{}{seq}", if chat { "chatcmpl-mock" } else { "cmpl-mock" });
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if !g.stream {
        let body = response::completion_json(&Completion {
            chat,
            id: &id,
            created,
            model: &g.model,
            n: g.n,
            tokens_per_choice: per_choice,
            finish_reason,
            usage,
        });
        return response::json(StatusCode::OK, body);
    }
    let plan = StreamPlan {
        chat,
        id: &id,
        created,
        model: &g.model,
        n: g.n,
        tokens_per_choice: per_choice,
        finish_reason,
        usage: g.include_usage.then_some(usage),
        chunk_delay: controls.chunk_delay.unwrap_or(shared.config.chunk_delay),
        abort_after: controls.abort_after_chunks,
    };
    let mut r = Response::new(MockBody::Sse(SseBody::new(&plan, in_flight)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn embeddings(shared: &Shared, body: &[u8], controls: &Controls) -> Response<MockBody> {
    let e = match request::embeddings(body) {
        Ok(e) => e,
        Err(e) => return bad_request(&e),
    };
    if let Some(refusal) = check_model(&shared.config, &e.model) {
        return refusal;
    }
    let prompt_tokens = controls
        .prompt_tokens
        .unwrap_or_else(|| e.inputs.iter().fold(0u64, |sum, i| sum.saturating_add(i.tokens)));
    let body = response::embeddings_json(
        e.inputs.iter().map(|i| Embedding { seed: i.seed }),
        e.dimensions.unwrap_or(shared.config.embedding_dims),
        e.base64,
        &e.model,
        prompt_tokens,
    );
    response::json(StatusCode::OK, body)
}

/// 404 `model_not_found` for a model the configuration does not list.
fn check_model(config: &MockConfig, model: &str) -> Option<Response<MockBody>> {
    if config.models.is_empty() || config.models.iter().any(|m| m == model) {
        return None;
    }
    let message = format!("The model `{model}` does not exist or you do not have access to it.");
    Some(response::error(
        StatusCode::NOT_FOUND,
        &message,
        "invalid_request_error",
        None,
        Some("model_not_found"),
    ))
}

fn bad_request(e: &RequestError) -> Response<MockBody> {
    response::error(StatusCode::BAD_REQUEST, &e.message, "invalid_request_error", e.param, e.code)
}

fn invalid(status: StatusCode, message: &str) -> Response<MockBody> {
    response::error(status, message, "invalid_request_error", None, None)
}

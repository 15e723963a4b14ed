//! The mock over real loopback HTTP, with a bare hyper client: what a proxy
//! in front of it would see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sluice_mock::{MockConfig, MockServer, headers, spawn};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { sender, task }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response<Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "mock")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body.as_bytes()))).unwrap();
        self.sender.ready().await.unwrap();
        self.sender.send_request(req).await.unwrap()
    }

    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Response<Incoming> {
        self.send("POST", path, headers, &body.to_string()).await
    }

    /// Closes the socket, whatever is in flight.
    fn close(self) {
        self.task.abort();
    }
}

async fn text(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn json_of(resp: Response<Incoming>) -> (StatusCode, Value) {
    let (status, body) = text(resp).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

/// The `data:` values of an SSE body.
fn events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split_terminator("\n\n")
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}")).to_owned())
        .collect()
}

fn chunks(events: &[String]) -> Vec<Value> {
    events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect()
}

async fn mock() -> (MockServer, Conn) {
    let server = spawn(MockConfig { controls: true, ..MockConfig::default() }).await.unwrap();
    let conn = Conn::open(server.addr).await;
    (server, conn)
}

/// 16 + 18 = 34 bytes -> ceil(34 / 4) = 9, plus 3 per message = 15.
fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hello there, mock!"}
        ]
    });
    let Value::Object(extra) = extra else { panic!("{extra}") };
    body.as_object_mut().unwrap().extend(extra);
    body
}

#[tokio::test]
async fn chat_json_usage_follows_the_rules() {
    let (server, mut c) = mock().await;

    let (status, v) =
        json_of(c.post("/v1/chat/completions", &[], &chat_body(json!({"max_tokens": 5}))).await)
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-test");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "tok tok tok tok tok");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    );

    // No limit: the configured default, finish "stop".
    let (_, v) = json_of(c.post("/v1/chat/completions", &[], &chat_body(json!({}))).await).await;
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // max_completion_tokens wins over max_tokens; n multiplies.
    let body = chat_body(json!({"max_tokens": 50, "max_completion_tokens": 2, "n": 3}));
    let (_, v) = json_of(c.post("/v1/chat/completions", &[], &body).await).await;
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["choices"][2]["index"], 2);
    assert_eq!(v["usage"]["completion_tokens"], 6);

    // Every request is recorded, on one keep-alive connection.
    let last = server.stats.last_request().unwrap();
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.header("content-type"), Some("application/json"));
    assert_eq!(last.json().unwrap()["n"], 3);
    assert_eq!(server.stats.requests(), 3);
    assert!(server.stats.wait_until(WAIT, |s| s.in_flight() == 0).await);
}

#[tokio::test]
async fn stream_without_usage_has_no_usage_field() {
    let (server, mut c) = mock().await;
    let body = chat_body(json!({"stream": true, "max_tokens": 4}));
    let resp = c.post("/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-length").is_none());
    let (status, body) = text(resp).await;
    assert_eq!(status, StatusCode::OK);
    let ev = events(&body);
    // role, 4 tokens, finish, [DONE].
    assert_eq!(ev.len(), 7);
    assert_eq!(ev[6], "[DONE]");
    let ch = chunks(&ev);
    assert_eq!(ch[0]["choices"][0]["delta"]["role"], "assistant");
    for c in &ch[1..5] {
        assert_eq!(c["choices"][0]["delta"]["content"], "tok ");
    }
    assert_eq!(ch[5]["choices"][0]["finish_reason"], "length");
    for c in &ch {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c.get("usage").is_none(), "{c}");
    }
    assert!(server.stats.wait_until(WAIT, |s| s.streams_completed() == 1).await);
    assert_eq!(server.stats.streams_cancelled(), 0);
}

#[tokio::test]
async fn stream_with_include_usage_ends_with_a_usage_chunk() {
    let (server, mut c) = mock().await;
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (_, body) = text(c.post("/v1/chat/completions", &[], &body).await).await;
    let ev = events(&body);
    // role, 16 tokens, finish, usage, [DONE].
    assert_eq!(ev.len(), 20);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let ch = chunks(&ev);
    let (usage_chunk, rest) = ch.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 15, "completion_tokens": 16, "total_tokens": 31,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    );
    for c in rest {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
    let content: String =
        rest.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "tok ".repeat(16));

    // Legacy completions stream the same way, with `text`.
    let body = json!({"model": "m", "prompt": ["abcde", "fgh"], "stream": true,
                      "max_tokens": 2, "stream_options": {"include_usage": true}});
    let (_, body) = text(c.post("/v1/completions", &[], &body).await).await;
    let ch = chunks(&events(&body));
    assert_eq!(ch.len(), 2 + 1 + 1);
    assert_eq!(ch[0]["object"], "text_completion");
    assert_eq!(ch[0]["choices"][0]["text"], "tok ");
    assert_eq!(ch[3]["usage"]["prompt_tokens"], 3);
    assert_eq!(ch[3]["usage"]["completion_tokens"], 2);
    assert!(server.stats.wait_until(WAIT, |s| s.streams_completed() == 2).await);
}

#[tokio::test]
async fn token_overrides_replace_the_rules() {
    let (_server, mut c) = mock().await;
    let h = [(headers::COMPLETION_TOKENS, "7"), (headers::PROMPT_TOKENS, "100")];
    let body = chat_body(json!({"max_tokens": 3}));
    let (_, v) = json_of(c.post("/v1/chat/completions", &h, &body).await).await;
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    );
    // Over the limit, as a misbehaving upstream would.
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap().split(' ').count(), 7);

    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let h = [(headers::COMPLETION_TOKENS, "2")];
    let (_, body) = text(c.post("/v1/chat/completions", &h, &body).await).await;
    let ch = chunks(&events(&body));
    let content = ch.iter().filter(|c| c["choices"][0]["delta"]["content"] == "tok ").count();
    assert_eq!(content, 2);
    assert_eq!(ch.last().unwrap()["usage"]["completion_tokens"], 2);

    let body = json!({"model": "m", "prompt": [[1, 2, 3], [4]], "n": 2});
    let (_, v) = json_of(c.post("/v1/completions", &[], &body).await).await;
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][1]["text"].as_str().unwrap().split(' ').count(), 16);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 32, "total_tokens": 36,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
    );
}

#[tokio::test]
async fn cached_and_reasoning_tokens_are_reported_as_openai_does() {
    let (_server, mut c) = mock().await;
    let h = [(headers::CACHED_TOKENS, "12"), (headers::REASONING_TOKENS, "20")];
    let body = chat_body(json!({"max_tokens": 3}));
    let (_, v) = json_of(c.post("/v1/chat/completions", &h, &body).await).await;
    // Reasoning tokens are completion tokens no text stands for.
    assert_eq!(v["choices"][0]["message"]["content"], "tok tok tok");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 15, "completion_tokens": 23, "total_tokens": 38,
               "prompt_tokens_details": {"cached_tokens": 12, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 20, "audio_tokens": 0,
                                             "accepted_prediction_tokens": 0,
                                             "rejected_prediction_tokens": 0}})
    );

    // The stream's usage chunk says the same.
    let body = chat_body(json!({"max_tokens": 3, "stream": true,
                                "stream_options": {"include_usage": true}}));
    let (_, body) = text(c.post("/v1/chat/completions", &h, &body).await).await;
    let ch = chunks(&events(&body));
    let content = ch.iter().filter(|c| c["choices"][0]["delta"]["content"] == "tok ").count();
    assert_eq!(content, 3);
    assert_eq!(ch.last().unwrap()["usage"], v["usage"]);

    // Legacy completions too.
    let body = json!({"model": "m", "prompt": "abcdefgh", "max_tokens": 1});
    let (_, v) = json_of(c.post("/v1/completions", &h, &body).await).await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 21);

    let h = [(headers::CACHED_TOKENS, "many")];
    let (status, v) =
        json_of(c.post("/v1/chat/completions", &h, &chat_body(json!({}))).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn forced_status_returns_an_openai_error() {
    let (server, mut c) = mock().await;
    let h = [(headers::STATUS, "500")];
    let (status, v) =
        json_of(c.post("/v1/chat/completions", &h, &chat_body(json!({}))).await).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("500"));
    assert_eq!(v["error"]["param"], Value::Null);

    let h = [(headers::STATUS, "429")];
    let (status, v) = json_of(c.send("POST", "/v1/embeddings", &h, "not even json").await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let h = [(headers::STATUS, "bogus")];
    let (status, v) =
        json_of(c.post("/v1/chat/completions", &h, &chat_body(json!({}))).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("x-mock-status"));
    assert_eq!(server.stats.requests(), 3);
}

#[tokio::test]
async fn abort_after_chunks_cuts_the_stream() {
    let (server, mut c) = mock().await;
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let h = [(headers::ABORT_AFTER_CHUNKS, "3")];
    let resp = c.post("/v1/chat/completions", &h, &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => received.extend_from_slice(&f.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("the stream ended cleanly"),
        }
    };
    // The chunked body stops without its last chunk: the client sees an EOF.
    assert!(format!("{err:?}").contains("UnexpectedEof"), "{err:?}");
    let ev = events(std::str::from_utf8(&received).unwrap());
    assert_eq!(ev.len(), 1 + 3, "{ev:?}");
    assert!(!ev.iter().any(|e| e == "[DONE]" || e.contains("finish_reason\":\"")));
    assert!(server.stats.wait_until(WAIT, |s| s.streams_aborted() == 1).await);
    assert_eq!(server.stats.streams_cancelled(), 0);
    assert_eq!(server.stats.streams_completed(), 0);
    assert!(server.stats.wait_until(WAIT, |s| s.in_flight() == 0).await);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_counted() {
    let (server, mut c) = mock().await;
    let body = chat_body(json!({"stream": true, "max_tokens": 200}));
    let h = [(headers::CHUNK_DELAY_MS, "10")];
    let mut body = c.post("/v1/chat/completions", &h, &body).await.into_body();
    let mut content = 0;
    while content < 3 {
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        content += std::str::from_utf8(&frame).unwrap().matches("\"tok \"").count();
    }
    assert_eq!(server.stats.in_flight(), 1);
    drop(body);
    c.close();
    assert!(server.stats.wait_until(WAIT, |s| s.streams_cancelled() == 1).await);
    let sent = server.stats.chunks_sent_in_cancelled_streams();
    assert!((3..50).contains(&sent), "{sent}");
    assert_eq!(server.stats.streams_completed(), 0);
    assert!(server.stats.wait_until(WAIT, |s| s.in_flight() == 0).await);
}

#[tokio::test]
async fn embeddings_usage_and_vectors() {
    let (_server, mut c) = mock().await;
    // ceil(11 / 4) + ceil(3 / 4) + ceil(11 / 4) = 3 + 1 + 3.
    let body = json!({"model": "emb", "input": ["hello world", "abc", "hello world"]});
    let (status, v) = json_of(c.post("/v1/embeddings", &[], &body).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb");
    assert_eq!(v["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[1]["object"], "embedding");
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    // Deterministic across requests; `dimensions`; token arrays count their length.
    let body = json!({"model": "emb", "input": "hello world", "dimensions": 8});
    let (_, v2) = json_of(c.post("/v1/embeddings", &[], &body).await).await;
    assert_eq!(v2["data"][0]["embedding"], data[0]["embedding"]);
    let body = json!({"model": "emb", "input": [[1, 2, 3, 4, 5], [6]], "dimensions": 3});
    let (_, v) = json_of(c.post("/v1/embeddings", &[], &body).await).await;
    assert_eq!(v["usage"]["prompt_tokens"], 6);
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 3);
    let body = json!({"model": "emb", "input": "x", "encoding_format": "base64"});
    let (_, v) = json_of(c.post("/v1/embeddings", &[], &body).await).await;
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 44); // 32 bytes
}

#[tokio::test]
async fn errors_models_and_feedback() {
    let config = MockConfig { models: vec!["a".into(), "b".into()], ..MockConfig::default() };
    let server = spawn(config).await.unwrap();
    let mut c = Conn::open(server.addr).await;

    let (status, v) =
        json_of(c.send("POST", "/v1/chat/completions", &[], "{\"model\":").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("parse the JSON"));

    let (status, v) = json_of(c.send("POST", "/v1/nope", &[], "{}").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/nope)");
    let (status, _) = json_of(c.send("GET", "/v1/chat/completions", &[], "").await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (status, v) = json_of(c.send("GET", "/v1/models", &[], "").await).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<_> = v["data"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, [json!("a"), json!("b")]);
    assert_eq!(v["data"][0]["object"], "model");

    let body = json!({"model": "zzz", "messages": []});
    let (status, v) = json_of(c.post("/v1/chat/completions", &[], &body).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
    let body = json!({"model": "b", "messages": []});
    let (status, v) = json_of(c.post("/v1/chat/completions", &[], &body).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["usage"]["prompt_tokens"], 0);

    let (status, v) =
        json_of(c.post("/v1/feedback", &[], &json!({"request_id": "x", "score": 1})).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({"status": "ok"}));
}

#[tokio::test]
async fn latency_and_hang() {
    let (server, mut c) = mock().await;
    let started = Instant::now();
    let h = [(headers::LATENCY_MS, "60")];
    let (status, _) = text(c.post("/v1/chat/completions", &h, &chat_body(json!({}))).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(60));

    // A hung request holds until the client leaves.
    let mut hung = Conn::open(server.addr).await;
    let h = [(headers::HANG, "1")];
    let body = chat_body(json!({})).to_string();
    let pending = tokio::spawn(async move {
        let _ = hung.send("POST", "/v1/chat/completions", &h, &body).await;
    });
    assert!(server.stats.wait_until(WAIT, |s| s.in_flight() == 1).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.stats.in_flight(), 1);
    assert!(!pending.is_finished());
    pending.abort();
    assert!(server.stats.wait_until(WAIT, |s| s.in_flight() == 0).await);
    assert_eq!(server.stats.peak_in_flight(), 1);
}

#[tokio::test]
async fn shutdown_future_stops_the_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice_mock::serve(listener, MockConfig::default(), async move {
        let _ = rx.await;
    }));
    let mut c = Conn::open(addr).await;
    let (status, _) = text(c.send("GET", "/v1/models", &[], "").await).await;
    assert_eq!(status, StatusCode::OK);

    tx.send(()).unwrap();
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap().unwrap();
    // The listener is gone, and so is the open connection.
    assert!(TcpStream::connect(addr).await.is_err());
    c.sender.ready().await.unwrap_err();

    // The handle's shutdown ends a hung request too.
    let server = spawn(MockConfig { controls: true, ..MockConfig::default() }).await.unwrap();
    let addr = server.addr;
    let stats = std::sync::Arc::clone(&server.stats);
    let mut hung = Conn::open(addr).await;
    let pending = tokio::spawn(async move {
        hung.send("POST", "/v1/chat/completions", &[(headers::HANG, "true")], "{}").await
    });
    assert!(stats.wait_until(WAIT, |s| s.in_flight() == 1).await);
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap().unwrap();
    assert_eq!(stats.in_flight(), 0);
    assert!(tokio::time::timeout(WAIT, pending).await.unwrap().is_err());
    assert!(TcpStream::connect(addr).await.is_err());
}

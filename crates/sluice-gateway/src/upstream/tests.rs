//! The cleartext pool against a raw HTTP/1.1 server over loopback that
//! counts its connections and can close them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use http_body_util::BodyExt;
use sluice_config::gateway::UpstreamTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

#[derive(Clone, Copy)]
enum Mode {
    /// Answers every request on a connection, keeps it open.
    KeepAlive,
    /// Answers one request, then closes the connection without saying so
    /// (as an upstream's idle timeout does).
    CloseAfterEach,
    /// Starts a chunked body and never ends it.
    Endless,
    /// Reads the request and never answers.
    Silent,
    /// Answers with 4 MiB, after telling the request body's length in a
    /// header.
    Big,
}

#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    requests: AtomicUsize,
    /// Connections the client closed.
    closed_by_client: AtomicUsize,
    /// The body length of the last request.
    last_request_bytes: AtomicUsize,
}

/// Reads one request (head and `content-length` body); its body's
/// length, or `None` at EOF.
async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..end + 4 + len);
            return Some(len);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn server(mode: Mode) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            s2.accepted.fetch_add(1, Ordering::SeqCst);
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(len) = read_request(&mut s, &mut buf).await {
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    seen.last_request_bytes.store(len, Ordering::SeqCst);
                    match mode {
                        Mode::KeepAlive | Mode::CloseAfterEach => {
                            let body = b"{\"ok\":true}";
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            s.write_all(head.as_bytes()).await.unwrap();
                            s.write_all(body).await.unwrap();
                            if matches!(mode, Mode::CloseAfterEach) {
                                return;
                            }
                        }
                        Mode::Silent => {
                            let mut one = [0u8; 1];
                            let _ = s.read(&mut one).await;
                            seen.closed_by_client.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Mode::Big => {
                            let body = vec![b'x'; 4 << 20];
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-request-bytes: {}\r\n\r\n",
                                body.len(),
                                seen.last_request_bytes.load(Ordering::SeqCst)
                            );
                            s.write_all(head.as_bytes()).await.unwrap();
                            s.write_all(&body).await.unwrap();
                        }
                        Mode::Endless => {
                            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                            s.write_all(head.as_bytes()).await.unwrap();
                            let chunk = "data: {}\n\n";
                            let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                            s.write_all(framed.as_bytes()).await.unwrap();
                            // Until the client goes away.
                            let mut one = [0u8; 1];
                            let _ = s.read(&mut one).await;
                            seen.closed_by_client.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                seen.closed_by_client.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (base, seen)
}

fn client(base: &str) -> UpstreamClient {
    client_with_timeout(base, Duration::from_secs(5))
}

fn client_with_timeout(base: &str, timeout: Duration) -> UpstreamClient {
    let upstream = Upstream {
        name: "test".into(),
        target: UpstreamTarget::Url(base.into()),
        api_key_env: None,
        connect_timeout: Duration::from_secs(2),
        timeout,
    };
    UpstreamClient::new(&upstream, base).unwrap()
}

fn request(c: &UpstreamClient) -> Request<Full<Bytes>> {
    let mut r = Request::new(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")));
    *r.method_mut() = http::Method::POST;
    *r.uri_mut() = c.uri("/v1/chat/completions").unwrap();
    r
}

async fn read_all(c: &UpstreamClient) -> Bytes {
    let resp = c.send(request(c)).await.expect("a response");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Waits up to a second for the upstream to see the client close one
/// connection.
async fn wait_closed_by_client(seen: &Seen) {
    for _ in 0..100 {
        if seen.closed_by_client.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Four requests at once, each read to its end.
async fn four_at_once(c: &Arc<UpstreamClient>) {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { read_all(&c).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], b"{\"ok\":true}");
    }
}

#[tokio::test]
async fn a_connection_is_reused_once_its_response_is_read() {
    let (base, seen) = server(Mode::KeepAlive).await;
    let c = client(&base);
    for _ in 0..5 {
        assert_eq!(&read_all(&c).await[..], b"{\"ok\":true}");
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1, "one connection for five requests");
    // Requests at once each get a connection, and all come back.
    let c = Arc::new(c);
    four_at_once(&c).await;
    let opened = seen.accepted.load(Ordering::SeqCst);
    assert!(opened <= 4);
    // They came back: four more at once open nothing new.
    four_at_once(&c).await;
    assert_eq!(seen.accepted.load(Ordering::SeqCst), opened, "the pooled connections were reused");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 13);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    let (base, seen) = server(Mode::CloseAfterEach).await;
    let c = client(&base);
    for i in 0..4 {
        assert_eq!(&read_all(&c).await[..], b"{\"ok\":true}", "request {i}");
        // Let the close reach the client before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_response_dropped_before_its_end_closes_its_connection() {
    let (base, seen) = server(Mode::Endless).await;
    let c = client(&base);
    let resp = c.send(request(&c)).await.expect("a response");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: {}\n\n");
    drop(body);
    // The upstream sees the connection close (and so stops generating).
    wait_closed_by_client(&seen).await;
    assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 1);
    // The next request does not reuse it.
    let resp = c.send(request(&c)).await.expect("a response");
    drop(resp);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn big_bodies_go_both_ways_and_the_connection_is_reused() {
    let (base, seen) = server(Mode::Big).await;
    let c = client(&base);
    for _ in 0..2 {
        let mut r = Request::new(Full::new(Bytes::from(vec![b'y'; 3 << 20])));
        *r.method_mut() = http::Method::POST;
        *r.uri_mut() = c.uri("/v1/chat/completions").unwrap();
        let resp = c.send(r).await.expect("a response");
        assert_eq!(resp.headers()["x-request-bytes"], (3 << 20).to_string().as_str());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 4 << 20);
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_silent_upstream_times_out_and_its_connection_is_closed() {
    let (base, seen) = server(Mode::Silent).await;
    let c = client_with_timeout(&base, Duration::from_millis(200));
    let started = Instant::now();
    let Err(e) = c.send(request(&c)).await else { panic!("an answer from a silent upstream") };
    assert!(matches!(e, SendError::Timeout(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_closed_by_client(&seen).await;
    assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 1, "the upstream saw it go");
    assert!(c.send(request(&c)).await.is_err());
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2, "not reused");
}

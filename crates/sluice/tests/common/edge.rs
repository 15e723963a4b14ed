//! Helpers of the abuse suite: raw connections, the server's memory and
//! file descriptors, timed requests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `host:port` of `http://host:port...`.
pub fn addr(url: &str) -> SocketAddr {
    let rest = url.trim_start_matches("http://");
    let hostport = rest.split('/').next().unwrap();
    hostport.parse().unwrap_or_else(|_| panic!("{url} has no host:port"))
}

/// The resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

/// Raises this process's own soft open-file limit (the tests open
/// thousands of sockets).
pub fn raise_nofile() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// Whether `s` is closed by the peer within `limit` (reading and dropping
/// whatever comes first).
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One chat completion on a new connection (nothing pooled): how long it
/// took from connecting to the last byte of the response, and its status.
pub async fn fresh_chat(url: &str, key: &str, model: &str) -> (Duration, u16) {
    let started = Instant::now();
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let r = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&super::chat(model, 5))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            (started.elapsed(), status)
        }
        Err(_) => (started.elapsed(), 0),
    }
}

/// Opens `n` connections to `to` and writes `prefix` on each (nothing for
/// an empty one); connections that fail are left out.
pub async fn open_many(to: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(to)).await
        else {
            continue;
        };
        if !prefix.is_empty() && s.write_all(prefix).await.is_err() {
            continue;
        }
        out.push(s);
    }
    out
}

/// How many of `conns` the peer has closed (each looked at for up to
/// `wait`, all together).
pub async fn count_closed(conns: &mut [TcpStream], wait: Duration) -> usize {
    let checks = conns.iter_mut().map(|s| closed_within(s, wait));
    futures_util::future::join_all(checks).await.into_iter().filter(|c| *c).count()
}

//! End-to-end harness: the real `sluice` binary, a real mock upstream, real
//! HTTP over loopback. Each test gets its own processes on free ports.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_mock::{MockConfig, MockServer};

/// A secret and its hash (`sluice keys hash`), computed with the binary's
/// own algorithm: SHA-256.
pub fn key_hash(secret: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(secret.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sluice keys hash");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Reads an example policy.
pub fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A running `sluice serve`.
pub struct Sluice {
    child: Child,
    pub url: String,
    pub dir: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Sluice {
    /// Starts `sluice serve` with this policy text; env vars are set for the
    /// process only.
    pub fn start(policy: &str, env: &[(&str, &str)]) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["serve", "--config"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sluice serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line).unwrap();
        let Some(url) = line.trim().strip_prefix("sluice listening on ") else {
            let _ = child.kill();
            let err = stderr.join().unwrap_or_default();
            panic!("sluice did not start: stdout {line:?}, stderr:\n{err}");
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Self { child, url: url.to_owned(), dir, stderr: Some(stderr) }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().expect("wait");
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        (status, err)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A mock upstream in this process.
pub async fn mock() -> MockServer {
    sluice_mock::spawn(MockConfig::default()).await.expect("mock upstream")
}

/// `[upstreams.up]` pointing at `mock`, with a key read from `UPSTREAM_KEY`.
pub fn upstream_section(mock: &MockServer) -> String {
    format!(
        "\n[upstreams.up]\nbase_url = \"{}\"\napi_key_env = \"UPSTREAM_KEY\"\ntimeout = \"2s\"\n",
        mock.base_url()
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(4).build().unwrap()
}

/// POSTs a JSON body with a bearer key (and extra headers).
pub async fn post(
    c: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = c.post(url).json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request")
}

pub fn chat(model: &str, max_tokens: u64) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": max_tokens,
    })
}

/// A header as an integer.
pub fn num(r: &reqwest::Response, name: &str) -> i64 {
    let v =
        r.headers().get(name).unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers()));
    v.to_str().unwrap().parse().unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
}

pub fn has(r: &reqwest::Response, name: &str) -> bool {
    r.headers().contains_key(name)
}

/// Waits for a condition, up to `timeout`.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

//! End-to-end harness: the real `sluice` binary, a real mock upstream, real
//! HTTP over loopback. Each test gets its own processes on free ports.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sluice_mock::{MockConfig, MockServer};

pub mod edge;

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
/// The first CPU this process may run on.
pub fn first_allowed_cpu() -> u32 {
    let list = allowed_cpus(std::process::id());
    list.split([',', '-']).next().unwrap().parse().unwrap()
}

/// The CPUs process `pid` may run on, as /proc shows them (e.g. "0-1").
pub fn allowed_cpus(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string()
}

pub fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A folder of its own for one `sluice serve` (policy, data file).
fn fresh_dir() -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sluice-e2e-{}-{n}", std::process::id()))
}

/// How `sluice serve` is started.
#[derive(Clone, Copy)]
enum Launch {
    Plain,
    /// On one CPU.
    Cpu(u32),
    /// Under `ulimit -n`.
    Nofile(u32),
}

/// A running `sluice serve`.
pub struct Sluice {
    child: Child,
    pub url: String,
    pub dir: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Keep the folder (policy, data file) when dropped.
    pub keep_dir: bool,
}

impl Sluice {
    /// Starts `sluice serve` with this policy text; env vars are set for the
    /// process only.
    pub fn start(policy: &str, env: &[(&str, &str)]) -> Self {
        Self::start_in(&fresh_dir(), policy, env)
    }

    /// Starts `sluice serve` with its policy (and data file) in `dir`.
    pub fn start_in(dir: &std::path::Path, policy: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(dir, policy, env, &["--listen", "127.0.0.1:0"], "sluice listening on ", None)
    }

    /// Starts `sluice serve` with more arguments (e.g. `--mock-controls`)
    /// and, if `nofile` is given, under `ulimit -n nofile` (soft and hard:
    /// Sluice cannot raise it).
    pub fn start_with(
        policy: &str,
        env: &[(&str, &str)],
        args: &[&str],
        nofile: Option<u32>,
    ) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let launch = nofile.map_or(Launch::Plain, Launch::Nofile);
        Self::launch(&fresh_dir(), policy, env, &all, "sluice listening on ", launch)
    }

    /// [`Sluice::start_with`] in `dir` (a data file left by an earlier run).
    pub fn start_in_with(
        dir: &std::path::Path,
        policy: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::launch(dir, policy, env, &all, "sluice listening on ", Launch::Plain)
    }

    /// Starts `sluice serve` allowed to run on one CPU only (`taskset`), as
    /// a pinned process or a one-CPU container is: it then serves on a
    /// current-thread runtime.
    pub fn start_on_one_cpu(policy: &str, env: &[(&str, &str)]) -> Self {
        let args = ["--listen", "127.0.0.1:0"];
        let cpu = Some(first_allowed_cpu());
        Self::spawn(&fresh_dir(), policy, env, &args, "sluice listening on ", cpu)
    }

    /// Starts `sluice serve` with no `--listen`, and waits for the stdout
    /// line that starts with `ready` (`url` is then that line's rest).
    pub fn start_without_listen(policy: &str, env: &[(&str, &str)], ready: &str) -> Self {
        Self::spawn(&fresh_dir(), policy, env, &[], ready, None)
    }

    fn spawn(
        dir: &std::path::Path,
        policy: &str,
        env: &[(&str, &str)],
        args: &[&str],
        ready: &str,
        cpu: Option<u32>,
    ) -> Self {
        let launch = cpu.map_or(Launch::Plain, Launch::Cpu);
        Self::launch(dir, policy, env, args, ready, launch)
    }

    fn launch(
        dir: &std::path::Path,
        policy: &str,
        env: &[(&str, &str)],
        args: &[&str],
        ready: &str,
        launch: Launch,
    ) -> Self {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        let mut cmd = match launch {
            // util-linux's taskset: on every Debian machine.
            Launch::Cpu(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), env!("CARGO_BIN_EXE_sluice")]);
                c
            }
            // The shell's ulimit, then exec: the same process id.
            Launch::Nofile(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_sluice"),
                ]);
                c
            }
            Launch::Plain => Command::new(env!("CARGO_BIN_EXE_sluice")),
        };
        cmd.args(["serve", "--config"])
            .arg(&path)
            .args(args)
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
        // Stdout lines go through a channel, so that later lines (other
        // listeners) can be waited for, and the pipe never fills.
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Self {
            child,
            url: String::new(),
            dir,
            stderr: Some(stderr),
            lines,
            seen: Vec::new(),
            keep_dir: false,
        };
        match s.line(ready) {
            Some(url) => s.url = url,
            None => {
                let _ = s.child.kill();
                let err = s.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                panic!("sluice did not start; stdout {:?}, stderr:\n{err}", s.seen);
            }
        }
        s
    }

    /// The rest of the first stdout line that starts with `prefix` (waits up
    /// to 10 s for it).
    pub fn line(&mut self, prefix: &str) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Some(l[prefix.len()..].trim().to_owned());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let found = l.starts_with(prefix).then(|| l[prefix.len()..].trim().to_owned());
                    self.seen.push(l);
                    if found.is_some() {
                        return found;
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends SIGTERM and waits for the process to exit; returns its stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().expect("wait");
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        (status, err)
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit;
    /// returns how long it took (`None`: still running, then killed) and
    /// its stderr.
    pub fn terminate_within(
        mut self,
        limit: Duration,
    ) -> (Option<Duration>, Option<std::process::ExitStatus>, String) {
        let started = std::time::Instant::now();
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let mut status = None;
        while started.elapsed() < limit {
            if let Some(s) = self.child.try_wait().expect("wait") {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = status.map(|_| started.elapsed());
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        (took, status, err)
    }

    /// Waits for the process to exit (it was told to stop some other way).
    pub fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
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
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A mock upstream in this process that obeys the `x-mock-*` control
/// headers (as only tests and benchmarks ask for).
pub async fn mock() -> MockServer {
    sluice_mock::spawn(MockConfig { controls: true, ..MockConfig::default() })
        .await
        .expect("mock upstream")
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

/// The admin token the tests configure (`SLUICE_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// The admin API of a running Sluice, called with [`ADMIN_TOKEN`].
pub struct Ops {
    pub http: reqwest::Client,
    /// Where the admin API listens (`http://host:port`).
    pub base: String,
}

impl Ops {
    pub fn of(s: &mut Sluice) -> Self {
        let base = s.line("sluice admin on ").expect("the admin API listens");
        Self { http: client(), base }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn tenant(&self, body: Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, "/tenants", Some(body)).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// A new key of `tenant` (its secret).
    pub async fn key(&self, tenant: &str, body: Value) -> (String, String) {
        let (s, v) =
            self.call(reqwest::Method::POST, &format!("/tenants/{tenant}/keys"), Some(body)).await;
        assert_eq!(s, 201, "{v}");
        (v["key"]["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
    }

    pub async fn patch(&self, tenant: &str, body: Value) -> Value {
        let (s, v) =
            self.call(reqwest::Method::PATCH, &format!("/tenants/{tenant}"), Some(body)).await;
        assert_eq!(s, 200, "{v}");
        v
    }
}

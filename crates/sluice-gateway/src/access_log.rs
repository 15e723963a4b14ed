//! The access log (`[access_log]`): one JSON line per request to the
//! policy's endpoints, written by a thread of its own. The request's path
//! only formats its line and offers it to a bounded queue: when the writer
//! is behind (a slow disk), the line is dropped and counted
//! (`sluice_access_log_dropped_total`), never waited for. Fields:
//! docs/OBSERVABILITY.md#the-access-log. No secret is ever in a line: the
//! key's id, never the key.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// One request, as its line says it.
#[derive(Debug, Default, Serialize)]
pub struct AccessRecord {
    /// When it arrived (RFC 3339, UTC).
    pub time: String,
    /// Its `x-request-id`.
    pub request_id: String,
    /// The tenant, once its key was accepted.
    pub tenant: Option<String>,
    /// The key's id (never its secret).
    pub key_id: Option<String>,
    /// The policy's endpoint.
    pub endpoint: String,
    /// The model, as the policy names it, once known.
    pub model: Option<String>,
    /// The status the client was answered.
    pub status: u16,
    /// The upstream's status, if the request reached it.
    pub upstream_status: Option<u16>,
    /// Input tokens as estimated before the request.
    pub estimated_input_tokens: Option<u64>,
    /// Output tokens reserved (what it may ask for).
    pub estimated_output_tokens: Option<u64>,
    /// Input tokens charged at settlement.
    pub settled_input_tokens: Option<u64>,
    /// Output tokens charged at settlement.
    pub settled_output_tokens: Option<u64>,
    /// Of the input tokens the upstream reported, those read from its
    /// cache (whether charged or not: `[tokens] cached_input`).
    pub cached_tokens: Option<u64>,
    /// Of the output tokens the upstream reported, those spent reasoning
    /// (whether charged or not: `[tokens] reasoning`).
    pub reasoning_tokens: Option<u64>,
    /// The limit that refused it (a 429).
    pub denied_by: Option<String>,
    /// How it ended: `refused` (a limit), `rejected` (before admission:
    /// key, body, model, store), or as its reservation settled:
    /// `complete`, `stream_without_usage`, `upstream_failed`,
    /// `not_forwarded`, `unknown` (a JSON body cut short), `cut` (the
    /// client went away, or shutdown, before it ended).
    pub ending: &'static str,
    /// From arrival to its end (an admitted request: its settlement, when
    /// its response body ended).
    pub duration_ms: f64,
    /// The counter store's admission.
    pub admission_ms: Option<f64>,
    /// From sending it upstream to the response head.
    pub upstream_ms: Option<f64>,
    /// From sending it upstream to the response body's first bytes.
    pub first_byte_ms: Option<f64>,
}

/// Milliseconds, to the microsecond.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

enum Msg {
    Line(Vec<u8>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Where lines go: a bounded queue to the writer thread.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Counter,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl AccessLog {
    /// Lines to standard output.
    pub fn stdout(queue: usize, dropped: Counter) -> std::io::Result<Self> {
        Self::start(Box::new(std::io::stdout()), queue, dropped)
    }

    /// Lines appended to `path`, created readable by its owner only (an
    /// existing file is made so).
    pub fn file(path: &Path, queue: usize, dropped: Counter) -> std::io::Result<Self> {
        let mut open = std::fs::OpenOptions::new();
        open.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            open.mode(0o600);
            let file = open.open(path)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            Self::start(Box::new(file), queue, dropped)
        }
        #[cfg(not(unix))]
        Self::start(Box::new(open.open(path)?), queue, dropped)
    }

    fn start(out: Box<dyn Write + Send>, queue: usize, dropped: Counter) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(queue);
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_lines(&rx, out))?;
        Ok(Self { tx, dropped })
    }

    /// Offers `record`'s line to the writer; dropped (and counted) if the
    /// queue is full.
    pub fn write(&self, record: &AccessRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else { return };
        line.push(b'\n');
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.dropped.inc();
        }
    }

    /// Waits, up to `within`, until every line offered so far is written
    /// (shutdown). Whether they were.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + within;
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).is_ok()
    }
}

/// The writer: lines as they come, flushed whenever the queue is empty.
fn write_lines(rx: &Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    if let Err(e) = out.write_all(&line)
                        && !failing
                    {
                        failing = true;
                        tracing::warn!(error = %e, "writing the access log failed");
                    }
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        match out.flush() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "writing the access log failed");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A writer that blocks until told: the queue (2 lines) fills. It
        // counts the lines it was handed before it blocked.
        struct Stuck(std::sync::mpsc::Receiver<()>, Arc<AtomicUsize>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let lines = buf.iter().filter(|&&b| b == b'\n').count();
                self.1.fetch_add(lines, Ordering::SeqCst);
                let _ = self.0.recv();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (go, wait) = std::sync::mpsc::channel();
        let seen = Arc::new(AtomicUsize::new(0));
        let dropped = Counter::default();
        let log =
            AccessLog::start(Box::new(Stuck(wait, seen.clone())), 2, dropped.clone()).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..100 {
            log.write(&AccessRecord::default());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "writing waited");
        // Every line is accounted for: handed to the writer (which took
        // what was queued until it found the queue empty), still queued
        // (2 at most), or dropped and counted.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (seen, dropped) = (seen.load(Ordering::SeqCst) as u64, dropped.get());
        assert!(seen >= 1, "the writer got nothing");
        assert!(seen + dropped >= 98 && seen + dropped <= 100, "seen {seen}, dropped {dropped}");
        assert!(dropped >= 50, "most lines are dropped, not queued: {dropped}");
        drop(go);
    }

    #[test]
    fn lines_are_json_and_the_file_is_private() {
        let dir = std::env::temp_dir().join(format!("sluice-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.jsonl");
        let log = AccessLog::file(&path, 16, Counter::default()).unwrap();
        let record =
            AccessRecord { status: 429, denied_by: Some("m/rpm".into()), ..Default::default() };
        log.write(&record);
        log.write(&record);
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["denied_by"], "m/rpm");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Every shell block of README.md and docs/ runs as written, or says why
//! not. The line before each ```sh block is a marker (an HTML comment, not
//! shown on a rendered page):
//!
//! - `<!-- docs-test: run SCENARIO -->`: run with bash, in the scenario's
//!   folder, after the scenario's earlier blocks (its exports carry over, as
//!   in a reader's terminal); it must exit 0, and an HTTP status line it
//!   prints must be 2xx.
//! - `<!-- docs-test: serve SCENARIO -->`: the lines before its `sluice
//!   serve` run as above; `sluice serve` then starts in the background and
//!   the scenario's later blocks talk to it.
//! - `<!-- docs-test: file SCENARIO NAME -->` (on a TOML block): written to
//!   NAME in the scenario's folder.
//! - `<!-- docs-test: not run: REASON -->`.
//!
//! What the runner changes, and only that: `sluice` is this build's binary
//! (`cargo run --release -p sluice --` is read as `sluice`), and the fixed
//! addresses of the docs are replaced by free ports (`serve` listens on
//! `127.0.0.1:0`, and the address it was given, `127.0.0.1:8080` by
//! default, and the admin API's `127.0.0.1:8090` become in later blocks the
//! addresses it printed; the admin URL is in `SLUICE_ADMIN_URL`, which the
//! CLI reads).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A fenced block of a document, with the marker before it.
#[derive(Debug)]
struct Block {
    place: String,
    lang: String,
    marker: Option<String>,
    text: String,
}

fn docs() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    for dir in ["docs", "docs/adr"] {
        let mut md: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        md.sort();
        files.extend(md);
    }
    files
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let name = file.strip_prefix(repo()).unwrap().display().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```").filter(|s| !s.is_empty()) else {
            i += 1;
            continue;
        };
        let marker = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- docs-test:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(|m| m.trim().to_owned());
        let start = i;
        i += 1;
        let mut body = String::new();
        while i < lines.len() && !lines[i].starts_with("```") {
            body.push_str(lines[i]);
            body.push('\n');
            i += 1;
        }
        i += 1;
        out.push(Block {
            place: format!("{name}:{}", start + 1),
            lang: info.trim().to_owned(),
            marker,
            text: body,
        });
    }
    out
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell" | "console")
}

fn all_blocks() -> Vec<Block> {
    docs().iter().flat_map(|f| blocks(f)).collect()
}

/// Every shell block is marked; the counts are the ones TESTING.md states.
#[test]
fn every_shell_block_runs_or_says_why_not() {
    let all = all_blocks();
    let shell: Vec<&Block> = all.iter().filter(|b| is_shell(&b.lang)).collect();
    let mut unmarked = Vec::new();
    let mut run = 0;
    for b in &shell {
        match b.marker.as_deref() {
            Some(m) if m.starts_with("run ") || m.starts_with("serve ") => run += 1,
            Some(m) if m.starts_with("not run:") && m.len() > "not run: ".len() + 5 => {}
            _ => unmarked.push(b.place.clone()),
        }
    }
    assert!(
        unmarked.is_empty(),
        "shell blocks without a `<!-- docs-test: run|serve SCENARIO -->` or \
         `<!-- docs-test: not run: REASON -->` line before them:\n{}",
        unmarked.join("\n")
    );
    let testing = std::fs::read_to_string(repo().join("docs/TESTING.md")).unwrap();
    let claim = format!("runs {run} of the {} shell blocks", shell.len());
    assert!(testing.contains(&claim), "docs/TESTING.md should say \"{claim}\"");
}

/// A scenario's blocks, in document order.
fn scenario(name: &str) -> Vec<Block> {
    all_blocks()
        .into_iter()
        .filter(|b| {
            b.marker.as_deref().is_some_and(|m| {
                let mut w = m.split_whitespace();
                matches!(w.next(), Some("run" | "serve" | "file")) && w.next() == Some(name)
            })
        })
        .collect()
}

struct Runner {
    dir: PathBuf,
    env_file: PathBuf,
    subst: BTreeMap<String, String>,
    servers: Vec<Child>,
    ran: usize,
    /// A policy of the scenario has an admin API: wait for it too.
    admin: bool,
}

impl Runner {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-docs-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos()
        ));
        let bin = dir.join(".bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), bin.join("sluice")).unwrap();
        // The repository's examples, as a reader's clone has them.
        let examples = dir.join("examples");
        copy_dir(&repo().join("examples"), &examples);
        let env_file = dir.join(".env");
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        std::fs::write(&env_file, format!("export PATH='{path}'\n")).unwrap();
        Self { dir, env_file, subst: BTreeMap::new(), servers: Vec::new(), ran: 0, admin: false }
    }

    fn rewrite(&self, text: &str) -> String {
        let mut t = text.replace("cargo run --release -p sluice --", "sluice");
        for (from, to) in &self.subst {
            t = t.replace(from, to);
        }
        t
    }

    /// Runs `script` after the scenario's earlier blocks; keeps its exports.
    fn run(&mut self, place: &str, script: &str) -> String {
        let env = self.env_file.display().to_string();
        let full = format!("set -euo pipefail\nsource '{env}'\n{script}\nexport -p > '{env}'\n");
        let out = Command::new("timeout")
            .args(["60", "bash", "-c", &full])
            .current_dir(&self.dir)
            .output()
            .expect("bash");
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "{place}: exit {:?}\n--- block as run:\n{script}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            out.status.code()
        );
        for status in stdout.lines().filter(|l| l.starts_with("HTTP/1.1 ")) {
            assert!(status.starts_with("HTTP/1.1 2"), "{place}: {status}\n{stdout}");
        }
        self.ran += 1;
        stdout.into_owned()
    }

    /// Runs the lines before `sluice serve`, then serves in the background
    /// and learns its addresses.
    fn serve(&mut self, place: &str, script: &str) {
        let lines: Vec<&str> = script.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with("sluice serve"))
            .unwrap_or_else(|| panic!("{place}: a serve block without `sluice serve`"));
        let before = lines[..at].join("\n");
        if !before.trim().is_empty() {
            self.run(place, &before);
        }
        let mut serve = lines[at].to_owned();
        // The address the block names (or the default) becomes a free port.
        let mut named = "127.0.0.1:8080".to_owned();
        if let Some(i) = serve.find("--listen ") {
            let rest = &serve[i + "--listen ".len()..];
            named = rest.split_whitespace().next().unwrap_or_default().to_owned();
            serve = serve.replacen(&format!("--listen {named}"), "--listen 127.0.0.1:0", 1);
        } else {
            serve.push_str(" --listen 127.0.0.1:0");
        }
        let env = self.env_file.display().to_string();
        let mut child = Command::new("bash")
            .args(["-c", &format!("source '{env}'\nexec {serve}")])
            .current_dir(&self.dir)
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut printed = Vec::new();
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                panic!("{place}: `{serve}` never said it was listening:\n{}", printed.join("\n"));
            };
            if let Some(a) = line.strip_prefix("sluice admin on http://") {
                self.subst.insert("127.0.0.1:8090".into(), a.to_owned());
                let url = format!("http://{a}");
                let mut f = std::fs::OpenOptions::new().append(true).open(&self.env_file).unwrap();
                std::io::Write::write_all(
                    &mut f,
                    format!("export SLUICE_ADMIN_URL='{url}'\n").as_bytes(),
                )
                .unwrap();
            }
            if let Some(a) = line.strip_prefix("sluice listening on http://") {
                self.subst.insert(named.clone(), a.to_owned());
            }
            printed.push(line);
            let admin_ready = !self.admin || self.subst.contains_key("127.0.0.1:8090");
            if self.subst.contains_key(&named) && admin_ready {
                break;
            }
        }
        self.servers.push(child);
        self.ran += 1;
    }

    fn play(&mut self, name: &str) {
        let blocks = scenario(name);
        assert!(!blocks.is_empty(), "no blocks marked for scenario `{name}`");
        for b in blocks {
            let marker = b.marker.as_deref().unwrap_or_default();
            let text = self.rewrite(&b.text);
            match marker.split_whitespace().next() {
                Some("file") => {
                    let file = marker.split_whitespace().nth(2).expect("a file name");
                    // The listeners of a file get free ports.
                    let text = text.replace("127.0.0.1:8090", "127.0.0.1:0");
                    self.admin |= text.contains("[admin]");
                    std::fs::write(self.dir.join(file), text).unwrap();
                }
                Some("serve") => self.serve(&b.place, &text),
                _ => {
                    self.run(&b.place, &text);
                }
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.path().extension().is_none_or(|x| x != "redb") {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// README's quickstart: serve the example, call it, read one's own usage.
#[test]
fn the_quickstart_blocks_run() {
    let mut r = Runner::new("quickstart");
    r.play("quickstart");
    assert!(r.ran >= 3, "ran {}", r.ran);
}

/// ADMIN.md: a tenant's life, through the CLI, against a real server.
#[test]
fn the_admin_blocks_run() {
    let mut r = Runner::new("admin");
    r.play("admin");
    assert!(r.ran >= 10, "ran {}", r.ran);
}

/// CONFIG.md: checking a preset.
#[test]
fn the_config_blocks_run() {
    let mut r = Runner::new("config");
    r.play("config");
    assert_eq!(r.ran, 1);
}

/// HEADERS.md: the policy its examples were made with, served and called.
#[test]
fn the_headers_blocks_run() {
    let mut r = Runner::new("headers");
    r.play("headers");
    assert_eq!(r.ran, 2);
}

//! The crate graph docs/ARCHITECTURE.md draws: the admin API, the decision
//! service and the library build on the served state (sluice-served), never
//! on the proxy (sluice-gateway) and its upstream TLS client, so that a
//! deployment that only decides does not build them. Read from `cargo
//! metadata` (offline, for this host), following normal dependencies only
//! (what `cargo tree -e normal` shows); a failure names the chain of crates
//! that brings in what must not be there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Crates that must not reach the proxy.
const DECIDING: [&str; 4] = ["sluice-served", "sluice-admin", "sluice-rls", "sluice-tower"];
/// What they must not reach: the proxy, and its upstream TLS client.
const PROXY_ONLY: [&str; 4] = ["sluice-gateway", "hyper-rustls", "rustls", "tokio-rustls"];

/// The target triple of this host (the packages of other platforms are
/// not needed, and may not be downloaded).
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc -vV runs");
    let text = String::from_utf8(out.stdout).expect("rustc's output");
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// The workspace's resolved graph: each package's name, and its normal
/// dependencies (by package id).
struct Graph {
    names: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
}

impl Graph {
    fn read() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--offline", "--filter-platform"])
            .arg(host())
            .arg("--manifest-path")
            .arg(&manifest)
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
        let names = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (p["id"].as_str().unwrap().to_owned(), p["name"].as_str().unwrap().to_owned()))
            .collect();
        let deps = meta["resolve"]["nodes"]
            .as_array()
            .expect("resolve.nodes")
            .iter()
            .map(|n| {
                let normal = n["deps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| {
                        d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null())
                    })
                    .map(|d| d["pkg"].as_str().unwrap().to_owned())
                    .collect();
                (n["id"].as_str().unwrap().to_owned(), normal)
            })
            .collect();
        Self { names, deps }
    }

    fn id(&self, name: &str) -> &str {
        self.names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id.as_str())
            .unwrap_or_else(|| panic!("no package `{name}` in the workspace's graph"))
    }

    /// For each crate of `targets` that `root` reaches through normal
    /// dependencies, the chain of crates from `root` to it.
    fn chains(&self, root: &str, targets: &[&str]) -> Vec<String> {
        let start = self.id(root).to_owned();
        let mut parent: HashMap<String, String> = HashMap::new();
        let mut queue = VecDeque::from([start.clone()]);
        let mut found = Vec::new();
        while let Some(id) = queue.pop_front() {
            if id != start && targets.contains(&self.names[&id].as_str()) {
                let mut chain = vec![self.names[&id].clone()];
                let mut at = &id;
                while let Some(p) = parent.get(at) {
                    chain.push(self.names[p].clone());
                    at = p;
                }
                chain.reverse();
                found.push(chain.join(" -> "));
            }
            for dep in self.deps.get(&id).into_iter().flatten() {
                if *dep != start && !parent.contains_key(dep) {
                    parent.insert(dep.clone(), id.clone());
                    queue.push_back(dep.clone());
                }
            }
        }
        found.sort();
        found
    }
}

#[test]
fn what_only_decides_does_not_build_the_proxy() {
    let graph = Graph::read();
    let wrong: Vec<String> =
        DECIDING.iter().flat_map(|root| graph.chains(root, &PROXY_ONLY)).collect();
    assert!(
        wrong.is_empty(),
        "these crates must not depend on the proxy or its TLS client (docs/ARCHITECTURE.md): \
         move what they use into sluice-served\n  {}",
        wrong.join("\n  ")
    );
}

/// The check reads the graph it means to: the binary does reach the proxy
/// and its TLS client.
#[test]
fn the_binary_builds_the_proxy() {
    let graph = Graph::read();
    let chains = graph.chains("sluice", &PROXY_ONLY);
    assert!(chains.iter().any(|c| c == "sluice -> sluice-gateway"), "{chains:?}");
    assert!(chains.iter().any(|c| c.ends_with("-> hyper-rustls")), "{chains:?}");
}

//! The body of the `admin` fuzz target (`fuzz/fuzz_targets/`), as a plain
//! function that panics when a property fails: `cargo fuzz` runs it on
//! generated input, and the test below runs every file of
//! `fuzz/seeds/admin/` through it on stable, so that a crash turned into a
//! seed is a regression test of `cargo test`. Compiled for tests and with
//! the feature `fuzzing` (the fuzz crate's), never in a release.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use http::{Method, Request, StatusCode};
use sluice_core::SystemClock;
use sluice_served::{Runtime, Served, Unconnected};
use sluice_store::{FileTenants, MemoryStore, TenantStore};

use crate::{AdminState, Control};

pub(crate) const TOKEN: &str = "fuzz-admin-token-0123456789";

const POLICY: &str = r#"
[models."m"]
[models."other/model"]

[tiers.free]
[tiers.free.models]
"m" = { rpm = 10, tpd = 1000 }

[tiers.pro]
[tiers.pro.models]
"m" = { rpm = 100 }
"other/model" = { rpm = 5 }

[[limits]]
name = "org/rph"
metric = "requests"
amount = 50
window = "1h"

[upstreams.up]
base_url = "http://127.0.0.1:9/v1"

[tenants.file-tenant]
tier = "free"
"#;

/// The admin API's real router over a memory store and a data file in
/// [`dir`], built once per process.
pub(crate) struct World {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) router: Router,
}

/// The directory of this process's policy file and data file.
fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("sluice-fuzz-admin-{}", std::process::id()))
}

pub(crate) fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let dir = dir();
        std::fs::create_dir_all(&dir).expect("a directory");
        let policy_path = dir.join("policy.toml");
        std::fs::write(&policy_path, POLICY).expect("the policy written");
        let config = sluice_config::load(&policy_path).expect("the policy");
        let router = rt.block_on(async {
            let tenants = FileTenants::open(dir.join("data.redb")).expect("a data file");
            let snapshot = tenants.snapshot().await.expect("a snapshot");
            let (runtime, _) =
                Runtime::build(&config, &snapshot, &Unconnected).expect("a served runtime");
            let store = MemoryStore::new(SystemClock);
            let served = Served::new(runtime, store, Arc::new(SystemClock));
            let connect = Arc::new(Unconnected);
            let control =
                Control::new(policy_path, config, served, tenants, connect, snapshot.version);
            crate::router(AdminState::new(control, TOKEN))
        });
        World { rt, router }
    })
}

/// Builds a path from a template and fuzzed segments.
fn path(pick: u8, a: &str, b: &str) -> String {
    match pick % 12 {
        0 => "/admin/v1/tenants".to_owned(),
        1 => format!("/admin/v1/tenants/{a}"),
        2 => format!("/admin/v1/tenants/{a}/overrides/{b}"),
        3 => format!("/admin/v1/tenants/{a}/keys"),
        4 => format!("/admin/v1/tenants/{a}/keys/{b}"),
        5 => format!("/admin/v1/tenants/{a}/keys/{b}/rotate"),
        6 => format!("/admin/v1/tenants/{a}/usage"),
        7 => format!("/admin/v1/tenants/{a}/usage/reset"),
        8 => "/admin/v1/policy".to_owned(),
        9 => "/admin/v1/openapi.json".to_owned(),
        10 => format!("/admin/v1/tenants/{a}/overrides/org%2Frph"),
        _ => format!("/admin/v1/{a}"),
    }
}

fn segment(bytes: &[u8]) -> String {
    // Percent-encoded, so that any bytes make a valid URI.
    let mut s = String::new();
    for &b in bytes.iter().take(40) {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() { "t".to_owned() } else { s }
}

/// `admin`: the admin API's request bodies and paths, through its real
/// router: whatever a caller with the token sends, the answer is a JSON
/// object with a status under 500 (a 5xx is a bug), and a caller without
/// the token changes nothing. Five bytes pick the method, the path, the
/// lengths of its two segments (taken next) and the headers; the rest is
/// the body.
pub fn admin(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let (head, rest) = data.split_at(5);
    let la = usize::from(head[2] % 16).min(rest.len());
    let (a, rest) = rest.split_at(la);
    let lb = usize::from(head[3] % 16).min(rest.len());
    let (b, body) = rest.split_at(lb);
    let method = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
        [usize::from(head[0]) % 5]
        .clone();
    let uri = path(head[1], &segment(a), &segment(b));
    let authorized = head[4] & 1 == 0;
    let w = world();
    let mut req = Request::builder().method(method).uri(&uri);
    if authorized {
        req = req.header("authorization", format!("Bearer {TOKEN}"));
    }
    if head[4] & 2 == 0 {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(axum::body::Body::from(body.to_vec())).expect("a request");
    let (status, bytes) = w.rt.block_on(async {
        let mut router = w.router.clone();
        let resp = tower_service::Service::call(&mut router, req).await.expect("infallible");
        let status = resp.status();
        (status, axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("a body"))
    });
    assert!(status.as_u16() < 500, "{uri}: {status} {}", String::from_utf8_lossy(&bytes));
    if !authorized && !uri.ends_with("openapi.json") {
        // Refused before any handler runs: no token, or no such route or
        // method (routes are public: the OpenAPI document lists them).
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED]
                .contains(&status),
            "{uri} without the token: {status}"
        );
    }
    if status != StatusCode::NO_CONTENT {
        let v: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
        assert!(
            v.is_ok_and(|v| v.is_object()),
            "{uri}: not a JSON object: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn admin_seeds() {
        // Every seed, in name order; the file being run is printed first,
        // so that a failure names it.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/admin");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for file in files {
            eprintln!("replaying {}", file.display());
            super::admin(&std::fs::read(&file).expect("a seed"));
        }
        std::fs::remove_dir_all(super::dir()).expect("the world's directory removed");
    }
}

//! The admin API against its own OpenAPI document: the document is valid
//! OpenAPI, and schemathesis (a schema-driven fuzzer, from PyPI; installed by
//! `./scripts/test` into `.venv`, or set `SLUICE_SCHEMATHESIS`) finds no 5xx
//! in a thousand generated requests, stateful sequences included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const TOKEN: &str = "admin-token-for-tests-0123456789";

fn schemathesis() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::var_os("SLUICE_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/schemathesis"));
    assert!(
        bin.exists(),
        "schemathesis is not installed at {}: run ./scripts/test (it installs it into .venv), or set SLUICE_SCHEMATHESIS",
        bin.display()
    );
    bin
}

fn sluice_admin_openapi() -> &'static str {
    include_str!("../../sluice-admin/src/openapi.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let bin = schemathesis();
    let mock = mock().await;
    let policy = format!(
        "{}{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        example("sambanova-cloud.toml"),
        upstream_section(&mock)
    );
    let mut s = Sluice::start(&policy, &[("UPSTREAM_KEY", "k"), ("SLUICE_ADMIN_TOKEN", TOKEN)]);
    let admin = s.line("sluice admin on ").unwrap();
    // The served document is the one in the repository.
    let served = client().get(format!("{admin}/admin/v1/openapi.json")).send().await.unwrap();
    assert_eq!(served.text().await.unwrap(), sluice_admin_openapi());
    let dir = s.dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .current_dir(&dir)
            .args(["run", &format!("{admin}/admin/v1/openapi.json")])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(["-c", "not_a_server_error", "-n", "40", "--seed", "7"])
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found problems:\n{stdout}\n{stderr}");
    assert!(stdout.contains("passed") && !stdout.contains("Server error"), "{stdout}");
}

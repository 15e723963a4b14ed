//! The official `openai` Python SDK, unmodified, as a client of
//! `sluice serve`: it must raise `RateLimitError` on a day limit without
//! retrying, retry after `retry-after-ms` on a short window and succeed,
//! stream unchanged while being counted, and raise `APIError` (once, with no
//! retry, charged what was generated) on a stream the upstream breaks off. The script is
//! `tests/sdk/test_openai_sdk.py`; `./scripts/test` installs the SDK into
//! `.venv` (or set `SLUICE_PYTHON` to a Python that has `openai`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("SLUICE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let ok =
        Command::new(&python).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with the openai SDK at {}: run ./scripts/test (it creates .venv and installs openai), or set SLUICE_PYTHON",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_behaves() {
    let python = python();
    let mock = mock().await;
    let keys = [
        ("day", "sk-sdk-day"),
        ("short", "sk-sdk-short"),
        ("stream", "sk-sdk-stream"),
        ("abort", "sk-sdk-abort"),
    ];
    let mut policy = format!(
        r#"
[headers]
families = ["requests", "requests-day", "output-tokens-day"]

[models."day-model"]
[models."short-model"]
[models."stream-model"]
[models."abort-model"]

[tiers.default.models]
"day-model" = {{ rpd = 1 }}
"short-model" = {{ rps = 1 }}
"stream-model" = {{ otpd = 1_000_000 }}
"abort-model" = {{ otpd = 1_000_000, rpd = 1_000 }}
{}"#,
        upstream_section(&mock)
    );
    for (name, secret) in keys {
        policy.push_str(&format!(
            "\n[tenants.{name}]\n[[tenants.{name}.keys]]\nhash = \"{}\"\n",
            key_hash(secret)
        ));
    }
    let s = Sluice::start(&policy, &[("UPSTREAM_KEY", "k")]);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/test_openai_sdk.py");
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("SLUICE_URL", url)
            .env("SLUICE_DAY_KEY", keys[0].1)
            .env("SLUICE_SHORT_KEY", keys[1].1)
            .env("SLUICE_STREAM_KEY", keys[2].1)
            .env("SLUICE_ABORT_KEY", keys[3].1)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the SDK tests failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("4 SDK tests passed"), "{stdout}");
}

//! The official `openai` SDKs for Python and Node, unmodified, as clients
//! of `sluice serve`: each must raise its `RateLimitError` on a day limit
//! without retrying, retry after `retry-after-ms` on a short window and
//! succeed, and stream unchanged while being counted; the Python one also
//! raises `APIError` (once, with no retry, charged what was generated) on a
//! stream the upstream breaks off. The scripts are
//! `tests/sdk/test_openai_sdk.py` and `tests/sdk/node/test_openai_sdk.mjs`;
//! `./scripts/test` installs the Python SDK into `.venv` (or set
//! `SLUICE_PYTHON`) and the Node one into `target/sdk-node/node_modules`.
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

/// `node` with the official `openai` package, and the Node script where it
/// resolves it: `./scripts/test` installs the package (pinned by
/// tests/sdk/node/package-lock.json) into target/sdk-node/node_modules, and
/// the script is copied beside it (an ES module finds its imports from its
/// own folder up). `SLUICE_NODE` names another `node`.
fn node() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("target/sdk-node");
    let node = std::env::var_os("SLUICE_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let ok = dir.join("node_modules/openai/package.json").is_file()
        && Command::new(&node)
            .current_dir(&dir)
            .args(["-e", "import('openai').then(() => process.exit(0), () => process.exit(1))"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no node with the openai package in {}: run ./scripts/test (it runs npm ci there), or set SLUICE_NODE",
        dir.display()
    );
    let script = dir.join("test_openai_sdk.mjs");
    std::fs::copy(root.join("tests/sdk/node/test_openai_sdk.mjs"), &script)
        .expect("copy the Node script beside its SDK");
    (node, script)
}

/// Runs one SDK's script against a `sluice serve` with the policy the
/// scripts expect: a day-limited, a per-second-limited, a streaming tenant,
/// and one whose streams the upstream breaks off.
async fn run_sdk_script(program: PathBuf, script: PathBuf) -> String {
    let mock = mock().await;
    let keys = [
        ("day", "sk-sdk-day"),
        ("short", "sk-sdk-short"),
        ("stream", "sk-sdk-stream"),
        ("abort", "sk-sdk-abort"),
        ("budget", "sk-sdk-budget"),
        ("wait", "sk-sdk-wait"),
        ("hard", "sk-sdk-hard"),
    ];
    let mut policy = format!(
        r#"
[policy]
default_price = {{ input = 1.00, output = 1.00 }}

[headers]
families = ["requests", "requests-day", "output-tokens-day", "cost-day"]

[models."budget-model"]
price = {{ input = 0, output = 10_000 }}
[models."hard-model"]
[models."wait-model"]
[models."day-model"]
[models."short-model"]
[models."stream-model"]
[models."abort-model"]

[tiers.default.models]
"day-model" = {{ rpd = 1 }}
"short-model" = {{ rps = 1 }}
"stream-model" = {{ otpd = 1_000_000 }}
"abort-model" = {{ otpd = 1_000_000, rpd = 1_000 }}

[tiers.waiting]
max_wait = "2s"
[tiers.waiting.models]
"wait-model" = {{ rps = 1 }}

[tiers.hardcapped]
[[tiers.hardcapped.limits]]
name = "output-budget"
metric = "output_tokens"
amount = 1_000
window = "1d"
hard = true

[tiers.budgeted]
[[tiers.budgeted.limits]]
name = "daily-budget"
metric = "cost"
amount = 0.10
window = "1d"
{}"#,
        upstream_section(&mock)
    );
    for (name, secret) in keys {
        policy.push_str(&format!(
            "\n[tenants.{name}]\ntier = \"{}\"\n[[tenants.{name}.keys]]\nhash = \"{}\"\n",
            match name {
                "budget" => "budgeted",
                "wait" => "waiting",
                "hard" => "hardcapped",
                _ => "default",
            },
            key_hash(secret)
        ));
    }
    let s = Sluice::start(&policy, &[("UPSTREAM_KEY", "k")]);
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .arg(script)
            .env("SLUICE_URL", url)
            .env("SLUICE_DAY_KEY", keys[0].1)
            .env("SLUICE_SHORT_KEY", keys[1].1)
            .env("SLUICE_STREAM_KEY", keys[2].1)
            .env("SLUICE_ABORT_KEY", keys[3].1)
            .env("SLUICE_BUDGET_KEY", keys[4].1)
            .env("SLUICE_WAIT_KEY", keys[5].1)
            .env("SLUICE_HARD_KEY", keys[6].1)
            .output()
            .expect("run the SDK script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the SDK tests failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_behaves() {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/test_openai_sdk.py");
    let stdout = run_sdk_script(python(), script).await;
    assert!(stdout.contains("7 SDK tests passed"), "{stdout}");
}

/// The Node SDK does not cap `retry-after`: without `x-should-retry: false`
/// on a day limit it would sleep for hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_node_sdk_behaves() {
    let (node, script) = node();
    let stdout = run_sdk_script(node, script).await;
    assert!(stdout.contains("3 SDK tests passed"), "{stdout}");
}

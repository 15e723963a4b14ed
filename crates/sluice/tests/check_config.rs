#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `sluice check-config`, run as the real binary: presets print their tables
//! and exit 0; a broken file prints `file:line:column: field: message` on
//! stderr, nothing on stdout, and exits 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn check_config(path: &Path) -> Output {
    sluice().arg("check-config").arg(path).output().expect("run sluice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// A file under the temp directory with a name no other test (or run) uses;
/// removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "sluice-check-config-{}-{}-{nanos}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `check-config` on a preset and checks it succeeded; returns stdout.
fn preset_output(name: &str) -> String {
    let path = examples_dir().join(name);
    let out = check_config(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{name}: exit status; stderr:\n{stderr}");
    assert!(stderr.is_empty(), "{name}: stderr:\n{stderr}");
    assert!(
        stdout.trim_end().ends_with(&format!("{}: ok", path.display())),
        "{name}: the last line says the file is ok:\n{stdout}"
    );
    stdout
}

/// The block of the report that starts with `heading` (up to the next blank line).
fn block<'a>(stdout: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(heading));
    let first = lines.next().unwrap_or_else(|| panic!("no `{heading}` in:\n{stdout}"));
    std::iter::once(first).chain(lines.take_while(|l| !l.trim().is_empty())).collect()
}

/// Whether a block has a row with exactly these cells (whatever the padding).
fn has_row(block: &[&str], cells: &[&str]) -> bool {
    block.iter().any(|l| l.split_whitespace().eq(cells.iter().copied()))
}

fn assert_row(stdout: &str, heading: &str, cells: &[&str]) {
    let b = block(stdout, heading);
    assert!(has_row(&b, cells), "no row {cells:?} under `{heading}`:\n{}", b.join("\n"));
}

// ---------------------------------------------------------------------------
// Presets.
// ---------------------------------------------------------------------------

#[test]
fn every_preset_checks_ok() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let stdout = preset_output(&name);
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(stdout.starts_with(&format!("policy {stem}\n")), "{name}:\n{stdout}");
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} presets in {}", examples_dir().display());
}

#[test]
fn sambanova_cloud_tables() {
    let out = preset_output("sambanova-cloud.toml");
    assert!(out.contains("\ntier free (default): "), "{out}");
    assert!(out.contains("\ntier developer: "), "{out}");

    let free = "tier free (default)";
    assert_row(&out, free, &["developer", "model", "class", "RPM", "RPD", "TPD"]);
    assert_row(
        &out,
        free,
        &["Meta", "Meta-Llama-3.3-70B-Instruct", "production", "20", "20", "200,000"],
    );
    assert_row(&out, free, &["Google", "gemma-4-31B-it", "preview", "20", "20", "200,000"]);
    // MiniMax is not in the free table.
    assert!(!block(&out, free).iter().any(|l| l.contains("MiniMax")), "{out}");

    let dev = "tier developer";
    assert_row(&out, dev, &["developer", "model", "class", "RPM", "RPD"]);
    assert_row(&out, dev, &["Meta", "Meta-Llama-3.3-70B-Instruct", "production", "240", "48,000"]);
    assert_row(&out, dev, &["MiniMax", "MiniMax-M2.7", "production", "60", "12,000"]);
    assert_row(
        &out,
        dev,
        &["(RPM", "rolling,", "RPD", "calendar;", "each", "model", "counted", "on", "its", "own)"],
    );
    let tpd = block(&out, dev)
        .into_iter()
        .find(|l| l.contains("[tokens-per-day-all-models]"))
        .unwrap_or_else(|| panic!("no developer TPD line:\n{out}"));
    assert!(
        tpd.contains("20,000,000 tokens per day (calendar), across everything the tenant does"),
        "{tpd}"
    );
}

#[test]
fn sambanova_cloud_2025_tables() {
    let out = preset_output("sambanova-cloud-2025.toml");
    for heading in [
        "tier free (default), extends developer",
        "tier developer",
        "tier enterprise, extends developer",
    ] {
        assert!(out.contains(&format!("\n{heading}")), "{heading}:\n{out}");
        // One table for every tier.
        assert_row(
            &out,
            heading,
            &["Meta", "Meta-Llama-3.1-8B-Instruct", "production", "1,440", "288,000"],
        );
        assert_row(&out, heading, &["Qwen", "Qwen3-32B", "preview", "30", "6,000"]);
    }
    assert!(out.contains("headers: x-ratelimit-*-requests, x-ratelimit-*-requests-day; reset as Unix epoch seconds"), "{out}");
}

#[test]
fn llama_api_tables() {
    let out = preset_output("llama-api.toml");
    let heading = "tier preview (default)";
    assert!(out.contains(&format!("\n{heading}: ")), "{out}");
    assert_row(&out, heading, &["developer", "model", "class", "RPM", "TPM"]);
    for model in [
        "Llama-4-Maverick-17B-128E-Instruct-FP8",
        "Llama-4-Scout-17B-16E-Instruct-FP8",
        "Llama-3.3-70B-Instruct",
        "Llama-3.3-8B-Instruct",
    ] {
        // No class: the row goes from the model to its numbers.
        assert_row(&out, heading, &["Meta", model, "10", "250,000"]);
    }
    assert!(out.contains("reset not sent"), "{out}");
}

#[test]
fn salesforce_models_api_report() {
    let out = preset_output("salesforce-models-api.toml");
    assert!(out.contains("500 requests per minute (rolling), per endpoint, when endpoint in [generations, chat-generations]"), "{out}");
    assert!(out.contains("1,000 requests per minute (rolling), per endpoint, when endpoint in [embeddings, feedback], unless environment in [sandbox, demo, trial] and key.channel = apex  [embeddings-feedback-rpm]"), "{out}");
    assert!(out.contains("200 requests per hour (calendar), across everything the tenant does, when environment = sandbox and key.channel = apex  [sandbox-apex-rph]"), "{out}");
    assert!(out.contains("150 requests per hour (calendar), across everything the tenant does, when environment in [demo, trial] and key.channel = apex  [demo-trial-apex-rph]"), "{out}");
    assert!(
        out.contains("\nexemptions\n  agentforce-reasoning-engine-in-sandbox: every limit\n"),
        "{out}"
    );
}

#[test]
fn sambastack_report() {
    let out = preset_output("sambastack.toml");
    assert!(
        out.contains("\ntier default (default): every tenant: no limits of its own\n  no limits\n"),
        "{out}"
    );
    let interns = "group interns";
    assert_row(&out, interns, &["Meta", "Meta-Llama-3.3-70B-Instruct", "10", "500"]);
    assert_row(&out, interns, &["DeepSeek", "DeepSeek-V3.1", "5", "200"]);
    let batch = block(&out, "group batch-jobs");
    assert!(
        batch.iter().any(|l| l.contains("8 requests in flight") && l.ends_with("[in-flight]")),
        "{out}"
    );
}

#[test]
fn quiet_prints_nothing_on_success() {
    let out = sluice()
        .args(["check-config", "--quiet"])
        .arg(examples_dir().join("llama-api.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------
// Broken files.
// ---------------------------------------------------------------------------

/// Runs `check-config` on a broken file; checks exit 2, empty stdout, and the
/// last line of stderr; returns stderr.
fn broken(file: &TempFile, problems: usize) -> String {
    let out = check_config(&file.0);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "exit status; stderr:\n{stderr}");
    assert!(stdout.is_empty(), "stdout should be empty:\n{stdout}");
    let last = stderr.lines().last().unwrap_or("");
    assert_eq!(
        last,
        format!("{}: {problems} problem(s); the policy was not loaded", file.0.display()),
        "{stderr}"
    );
    stderr
}

#[test]
fn a_broken_file_fails_with_file_line_column() {
    let file = TempFile::new(
        "zero.toml",
        concat!(
            "[models.\"m1\"]\n",      // 1
            "[tiers.free.models]\n",  // 2
            "\"m1\" = { rpm = 0 }\n", // 3: 0 at column 16
        ),
    );
    let stderr = broken(&file, 1);
    let want = format!(
        "{}:3:16: tiers.free.models.m1.rpm: must be a positive whole number (at least 1), got 0\n",
        file.0.display()
    );
    assert!(stderr.starts_with(&want), "want {want:?}, got:\n{stderr}");
}

#[test]
fn a_syntax_error_fails_with_file_line_column() {
    let file = TempFile::new(
        "syntax.toml",
        concat!(
            "[policy]\n",     // 1
            "name = \"x\"\n", // 2
            "[tiers.free\n",  // 3: the header never closes
        ),
    );
    let stderr = broken(&file, 1);
    assert!(stderr.starts_with(&format!("{}:3:", file.0.display())), "{stderr}");
}

#[test]
fn several_problems_are_all_printed() {
    let file = TempFile::new(
        "several.toml",
        concat!(
            "[policy]\n",                       // 1
            "default_tier = \"gold\"\n",        // 2: at column 16
            "[models.\"m1\"]\n",                // 3
            "[tiers.free.models]\n",            // 4
            "\"m1\" = { rpm = 60, rpx = 5 }\n", // 5: 5 at column 26
            "[[limits]]\n",                     // 6
            "name = \"tpm\"\n",                 // 7
            "metric = \"tokens\"\n",            // 8
            "amount = 1000\n",                  // 9
            "window = \"1y\"\n",                // 10: at column 10
        ),
    );
    let stderr = broken(&file, 3);
    let p = file.0.display();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{p}:2:16: policy.default_tier: tier `gold` is not defined")),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{p}:5:26: tiers.free.models.m1.rpx: `rpx` is not a table column"
        )),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!("{p}:10:10: limits[0].window: `1y` is not a window")),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_fails_naming_the_file() {
    let path = std::env::temp_dir()
        .join(format!("sluice-check-config-{}-does-not-exist.toml", std::process::id()));
    let out = check_config(&path);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let name = path.display().to_string();
    assert!(stderr.starts_with(&name), "{stderr}");
    assert!(stderr.contains("cannot read the file"), "{stderr}");
    assert!(
        stderr.contains(&format!("{name}: 1 problem(s); the policy was not loaded")),
        "{stderr}"
    );
}

#[test]
fn a_missing_argument_is_a_usage_error() {
    let out = sluice().arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("Usage"), "{}", text(&out.stderr));
}

/// The names `sluice tenants grant` and `usage --reset` take are printed
/// for each tier, as the policy names them.
#[test]
fn limit_names_are_printed_for_each_tier() {
    let out = preset_output("quickstart.toml");
    let names = block(&out, "tier free")
        .into_iter()
        .find_map(|l| l.trim().strip_prefix("limit names: "))
        .unwrap_or_else(|| panic!("no limit names in\n{out}"))
        .to_owned();
    for name in ["demo-model/rpm", "demo-model/tpm", "demo-model/rpd", "demo-model/tpd"] {
        assert!(names.split(", ").any(|n| n == name), "{name} missing from {names}");
    }
}

/// A tenant's line lists its grants and its keys' grants (a budget's in
/// money).
#[test]
fn a_tenants_line_lists_its_keys_grants() {
    let file = TempFile::new(
        "key-grants.toml",
        r#"
[policy]
default_price = { input = 1, output = 1 }

[[limits]]
name = "key-rpm"
metric = "requests"
amount = 3
window = "1m"
by = ["key"]

[[limits]]
name = "key-budget"
metric = "cost"
amount = 100
window = "1mo"
by = ["key"]

[tenants.acme]
overrides = { "key-rpm" = 4 }

[[tenants.acme.keys]]
id = "ci"
hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
overrides = { "key-rpm" = 2000, "key-budget" = { amount = 12.5, until = "2026-12-31" } }
"#,
    );
    let out = check_config(&file.0);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let line = block(&stdout, "tenants")
        .into_iter()
        .find(|l| l.trim_start().starts_with("acme:"))
        .unwrap_or_else(|| panic!("no line for acme in\n{stdout}"));
    assert!(
        line.ends_with(
            "1 key(s), key-rpm raised to 4, key ci granted key-rpm 2,000, key ci granted key-budget $12.50"
        ),
        "{line}"
    );
}

/// The end-user example of docs/CONFIG.md (the first TOML block of its
/// "End users" section), checked by the binary: it loads, and the report
/// says where end users come from, what happens without one, and which
/// limits are each end user's own.
#[test]
fn the_end_user_example_of_the_config_reference_checks() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFIG.md"))
            .unwrap();
    let section = doc.split("### End users: `[end_users]`").nth(1).expect("the End users section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a TOML block in the End users section");
    let file = TempFile::new("end-users.toml", example);
    let out = check_config(&file.0);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        stdout.contains(
            "  end users: from the `x-end-user` header; requests that name none share one budget per tenant; at most 256 bytes\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("20 requests per minute (rolling), per end user, unless user = batch-jobs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("per end user, when user in [trial-1, trial-2]  [trial-users-tpd]"),
        "{stdout}"
    );
}

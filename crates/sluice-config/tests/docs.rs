//! Every TOML example in the docs is a complete policy that loads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

#[test]
fn every_toml_block_in_the_config_reference_loads() {
    assert!(check("CONFIG.md") >= 6);
}

#[test]
fn every_toml_block_in_the_other_docs_loads() {
    for doc in [
        "HEADERS.md",
        "ARCHITECTURE.md",
        "TESTING.md",
        "BENCHMARKS.md",
        "DEPLOYMENT.md",
        "ADMIN.md",
        "OBSERVABILITY.md",
    ] {
        check(doc);
    }
}

/// Loads every ```toml block of docs/<doc>; returns how many there were.
fn check(doc: &str) -> usize {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut blocks = 0;
    let mut in_block = false;
    let mut block = String::new();
    let mut start = 0;
    for (n, line) in text.lines().enumerate() {
        if in_block {
            if line.trim_start().starts_with("```") {
                in_block = false;
                blocks += 1;
                let name = format!("docs/{doc} (block at line {start})");
                if let Err(e) = sluice_config::parse(&block, &name) {
                    panic!("{e}\n--- the block ---\n{block}");
                }
            } else {
                block.push_str(line);
                block.push('\n');
            }
        } else if line.trim() == "```toml" {
            in_block = true;
            block.clear();
            start = n + 1;
        }
    }
    blocks
}

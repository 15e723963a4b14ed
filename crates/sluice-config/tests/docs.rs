//! Every TOML example in docs/CONFIG.md is a complete policy that loads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

#[test]
fn every_toml_block_in_the_config_reference_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFIG.md");
    let text = std::fs::read_to_string(&path).expect("docs/CONFIG.md");
    let mut blocks = 0;
    let mut in_block = false;
    let mut block = String::new();
    let mut start = 0;
    for (n, line) in text.lines().enumerate() {
        if in_block {
            if line.trim_start().starts_with("```") {
                in_block = false;
                blocks += 1;
                let name = format!("docs/CONFIG.md (block at line {start})");
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
    assert!(blocks >= 6, "found only {blocks} toml blocks");
}

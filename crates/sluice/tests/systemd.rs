//! The systemd unit in `examples/systemd/` is one systemd accepts: checked
//! with `systemd-analyze verify` (Debian's `systemd` package), with the
//! binary path and environment file pointed at what this machine has.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_example_unit_verifies() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(root.join("examples/systemd/sluice.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/sluice serve --config /etc/sluice/policy.toml")
    );
    for directive in [
        "User=sluice",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "LimitNOFILE=65536",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    // Installed, the unit runs /usr/local/bin/sluice and reads the root-only
    // environment file; here, the binary under test and no file.
    let local = unit
        .replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"))
        .replace("EnvironmentFile=/etc/sluice/env", "EnvironmentFile=-/etc/sluice/env");
    let dir = std::env::temp_dir().join(format!("sluice-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.service");
    std::fs::write(&path, local).unwrap();
    let out =
        Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap_or_else(|e| {
            panic!("systemd-analyze (Debian's systemd package) is needed to check the unit: {e}")
        });
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
}

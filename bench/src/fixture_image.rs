//! The workload image, made without a registry: the static `fixture` binary
//! (`berth-fixture`, whose `sleep forever` is the benchmark's workload)
//! `docker import`ed as `berth-fixture:<sha256 prefix>`, ENTRYPOINT `/fixture`.
//!
//! The same recipe as `tests/common/mod.rs` (same target dir, tag and lock,
//! so a tag made by either is reused by the other).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub const REPO: &str = "berth-fixture";

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build the fixture binary (static, into `target/fixture` so the main
/// build's artefacts keep their RUSTFLAGS) and import it unless the tag
/// exists. Returns the image reference.
pub fn ensure(workspace: &Path) -> Result<String> {
    let target_dir = workspace.join("target").join("fixture");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(cargo)
            .current_dir(workspace)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target_dir)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "berth-fixture",
                "--target",
                "x86_64-unknown-linux-gnu",
            ]),
        "building the fixture binary",
    )?;
    let binary = target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("fixture");
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let tag = format!("{REPO}:{}", &hex::encode(Sha256::digest(&bytes))[..12]);

    let dir = tempfile::tempdir()?;
    std::fs::copy(&binary, dir.path().join("fixture"))?;
    let lock = std::env::temp_dir().join("berth-fixture-import.lock");
    let script = format!(
        "docker image inspect '{tag}' >/dev/null 2>&1 || \
         tar -C '{}' -c . | docker import -c 'ENTRYPOINT [\"/fixture\"]' - '{tag}' >/dev/null",
        dir.path().display()
    );
    run(
        Command::new("flock").arg(&lock).args(["sh", "-c", &script]),
        &format!("importing {tag}"),
    )?;
    Ok(tag)
}

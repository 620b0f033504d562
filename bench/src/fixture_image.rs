//! The workload image, made without a registry: the static `fixture` binary
//! (`berth-fixture`, whose `sleep forever` is the benchmark's workload)
//! `docker import`ed as `berth-fixture:<sha256 prefix>`, ENTRYPOINT `/fixture`.
//!
//! The one recipe: `tests/common/mod.rs` includes this file too, so the
//! tests and the benchmark share the image (same target dir, tag and lock).

use std::path::{Path, PathBuf};
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
/// build's artefacts keep their RUSTFLAGS) and return its path.
pub fn build(workspace: &Path) -> Result<PathBuf> {
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
    Ok(target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("fixture"))
}

/// `docker import` a folder holding only `binary` as `tag`. With `replace`
/// false the import is skipped when the tag exists, so a tag never moves.
/// Runs under `flock`, so concurrent test processes import once.
pub fn import(binary: &Path, tag: &str, replace: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(binary, dir.path().join("fixture"))?;
    let lock = std::env::temp_dir().join("berth-fixture-import.lock");
    let skip = if replace {
        String::new()
    } else {
        format!("docker image inspect '{tag}' >/dev/null 2>&1 ||")
    };
    let script = format!(
        "{skip} tar -C '{}' -c . | docker import -c 'ENTRYPOINT [\"/fixture\"]' - '{tag}' >/dev/null",
        dir.path().display()
    );
    run(
        Command::new("flock").arg(&lock).args(["sh", "-c", &script]),
        &format!("importing {tag}"),
    )?;
    Ok(())
}

/// Build and import the fixture unless its tag exists; returns the image
/// reference `berth-fixture:<sha256 prefix of the binary>`.
pub fn ensure(workspace: &Path) -> Result<String> {
    let binary = build(workspace)?;
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let tag = format!("{REPO}:{}", &hex::encode(Sha256::digest(&bytes))[..12]);
    import(&binary, &tag, false)?;
    Ok(tag)
}

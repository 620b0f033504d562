//! The deployment files in `deploy/` work as documented: the container image
//! builds without network and runs `berth --version`; the systemd unit
//! passes `systemd-analyze verify` (where that tool exists); the sample agent
//! config is exactly the defaults.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_image_builds_offline_and_runs_berth_version() {
    let tag = "berth:deploy-test";
    let out = Command::new(root().join("deploy/build-image.sh"))
        .arg(tag)
        .current_dir(root())
        // Offline: cargo must not touch the network, and docker import pulls nothing.
        .env("CARGO_NET_OFFLINE", "true")
        // The recipe is what is under test; an unoptimised static build makes
        // the same image in about half the time of a release build.
        .env("BERTH_IMAGE_PROFILE", "dev")
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image.sh failed: {}",
        text(&out)
    );

    // A build that is not a test build carries no test hook: the crash
    // injection's variable name is nowhere in the binary (it is in the one
    // the tests run).
    let hook = b"BERTH_TEST_CRASH_AT";
    let contains = |path: &Path| {
        std::fs::read(path)
            .unwrap()
            .windows(hook.len())
            .any(|w| w == hook)
    };
    let built = root().join("target/static/x86_64-unknown-linux-gnu/debug/berth");
    assert!(contains(Path::new(env!("CARGO_BIN_EXE_berth"))));
    assert!(
        !contains(&built),
        "{} carries the test hook",
        built.display()
    );

    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", tag, "--version"])
        .output()
        .unwrap();
    let _ = Command::new("docker").args(["rmi", tag]).output();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("berth {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = root().join("deploy/berth.service");
    let content = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "Type=notify",
        "Restart=on-failure",
        "After=docker.service",
        "Requires=docker.service",
        "WatchdogSec=",
    ] {
        assert!(content.contains(needle), "berth.service lacks {needle}");
    }
    let has_tool = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tool {
        println!("note: systemd-analyze is not installed; skipping `systemd-analyze verify`");
        return;
    }
    // verify checks that ExecStart exists: point it at the berth under test,
    // in a copy under the unit's own name.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("berth.service");
    let berth = env!("CARGO_BIN_EXE_berth");
    std::fs::write(&copy, content.replace("/usr/bin/berth", berth)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let report = text(&out);
    // Outside a booted systemd (a container), verify may complain about the
    // environment, not the unit; those lines are not the unit's fault.
    let about_unit: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("berth.service"))
        .collect();
    assert!(
        out.status.success() || about_unit.is_empty(),
        "systemd-analyze verify: {report}"
    );
    assert!(about_unit.is_empty(), "systemd-analyze verify: {report}");
}

/// The features cargo turns on for berth, following `edges` (`normal`: what
/// `cargo build` and `cargo build --release` use; `normal,dev`: the tests).
fn berth_features(edges: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "berth",
            "--prefix",
            "none",
            "-i",
            "berth",
            "-e",
        ])
        .arg(format!("features,{edges}"))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree: {}", text(&out));
    text(&out)
}

#[test]
fn release_builds_carry_no_test_hooks() {
    // The crash injection (BERTH_TEST_CRASH_AT) is compiled only with the
    // `test-hooks` feature, which only the tests' dev-dependency turns on.
    assert!(
        berth_features("normal,dev").contains("\"test-hooks\""),
        "the tests must enable test-hooks (else this check proves nothing)"
    );
    let build = berth_features("normal");
    assert!(
        !build.contains("test-hooks"),
        "a plain build enables test-hooks: {build}"
    );
}

/// `systemd-analyze security`'s exposure figure for the unit, or `None`
/// without the tool.
fn unit_exposure() -> Option<f64> {
    let has_tool = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tool {
        return None;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(root().join("deploy/berth.service"))
        .output()
        .unwrap();
    let report = text(&out);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure figure in: {report}"));
    let figure = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the figure in {line:?}"));
    Some(figure)
}

#[test]
fn the_systemd_unit_is_sandboxed_to_an_exposure_of_at_most_5() {
    let unit = std::fs::read_to_string(root().join("deploy/berth.service")).unwrap();
    for needle in [
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "ReadWritePaths=/var/lib/berth /run/berth",
    ] {
        assert!(unit.contains(needle), "berth.service lacks {needle:?}");
    }
    let Some(exposure) = unit_exposure() else {
        println!("note: systemd-analyze is not installed; skipping `systemd-analyze security`");
        return;
    };
    println!("systemd-analyze security: {exposure}");
    assert!(exposure <= 5.0, "exposure {exposure} (target ≤ 5.0)");
}

#[test]
fn the_sample_agent_config_lists_every_default() {
    let path = root().join("deploy/berth.yaml");
    let config = berth::config::AgentConfig::load(Path::new(&path)).unwrap();
    assert_eq!(config, berth::config::AgentConfig::default());
    // Every key is written out (or shown commented, for optional blocks).
    let text = std::fs::read_to_string(&path).unwrap();
    let keys = serde_json::to_value(berth::config::AgentConfig::default()).unwrap();
    for key in keys.as_object().unwrap().keys() {
        assert!(
            text.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{key}:"))),
            "deploy/berth.yaml does not list `{key}`"
        );
    }
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("berth"));
    }
}

/// The README's static build runs without glibc: slow (a full release
/// build), so only with BERTH_SLOW_TESTS=1.
#[test]
fn the_static_build_is_static_and_runs() {
    if std::env::var("BERTH_SLOW_TESTS").as_deref() != Ok("1") {
        println!("SKIPPED: set BERTH_SLOW_TESTS=1 to build the static binary");
        return;
    }
    let target = root().join("target/static-test");
    let out = Command::new("cargo")
        .args(["build", "--release", "-p", "berth", "--bin", "berth"])
        .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
        .arg(&target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let bin = target.join("x86_64-unknown-linux-gnu/release/berth");
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let said = text(&ldd);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "{said}"
    );
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("berth {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `cargo deb` then `dpkg -i`: the unit and config land where the README
/// says. Changes the host, so only with BERTH_SLOW_TESTS=1 (and as root).
#[test]
fn the_deb_installs_the_binary_unit_and_config() {
    if std::env::var("BERTH_SLOW_TESTS").as_deref() != Ok("1") {
        println!("SKIPPED: set BERTH_SLOW_TESTS=1 to build and install the .deb");
        return;
    }
    let out = Command::new("cargo")
        .args(["deb", "-p", "berth"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb (cargo install cargo-deb): {}",
        text(&out)
    );
    let deb = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let out = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for path in [
        "/usr/bin/berth",
        "/lib/systemd/system/berth.service",
        "/etc/berth/berth.yaml",
        "/etc/berth/manifests",
        "/etc/berth/manifests/README",
        "/usr/share/man/man1/berth.1.gz",
        "/usr/share/man/man1/berth-run.1.gz",
        "/usr/share/bash-completion/completions/berth",
    ] {
        assert!(
            Path::new(path).exists(),
            "{path} missing after dpkg -i {deb}"
        );
    }
    let conffiles =
        std::fs::read_to_string("/var/lib/dpkg/info/berth.conffiles").unwrap_or_default();
    // The sample config is the one conffile: dpkg asks before replacing it,
    // and never about the manifest folder's README.
    assert_eq!(
        conffiles.lines().map(str::trim).collect::<Vec<_>>(),
        ["/etc/berth/berth.yaml"],
        "{conffiles}"
    );
}

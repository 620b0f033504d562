//! What berth writes to its log, run as the real binary against the real
//! Docker daemon: no `RUST_LOG` gets a Docker request body (and so a secret)
//! printed; `NO_COLOR` turns colours off on a terminal; under journald
//! (`JOURNAL_STREAM` naming stderr) lines carry no timestamp; a warning that
//! stays the same is logged once, not at every pass.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::process::Berth;
use common::{berth_command, docker, fixture_image, wait_for_sync, write, TestNamespace};

fn secret_task(secret_file: &Path) -> String {
    format!(
        "name: app\nimage: {}\npull: never\nargs: [\"sleep\", \"forever\"]\nstop_timeout: 1s\nenv:\n  MODE: plain\n  TOKEN: {{file: {}, secret: true}}\n",
        fixture_image(),
        secret_file.display()
    )
}

fn run_once(ns: &TestNamespace, manifests: &Path, rust_log: &str) -> Output {
    berth_command()
        .args(["run", "--once", "--manifests"])
        .arg(manifests)
        .args(["--namespace", &ns.ns])
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn no_rust_log_gets_a_docker_body_or_a_secret_into_the_log() {
    let ns = TestNamespace::new("logcap");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    // In the manifest folder: a folder the agent lets manifests read from.
    let secret_file = manifests.join("token");
    write(&manifests, "app.yaml", &secret_task(&secret_file));
    // Each round changes the secret, so each round's create body carries it.
    for (round, rust_log) in [
        "trace",
        "info,[pass]=debug",
        "bollard=trace,hyper=trace,hyper_util=trace,h2=trace,berth=debug",
        "debug,[]=trace",
    ]
    .into_iter()
    .enumerate()
    {
        let secret = format!("hunter{round}-s3cr3t");
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let out = run_once(&ns, &manifests, rust_log);
        let log = common::output_text(&out);
        assert!(out.status.success(), "RUST_LOG={rust_log}: {log}");
        assert!(
            log.contains("DEBUG") || log.contains("TRACE"),
            "RUST_LOG={rust_log} should log below info: {log}"
        );
        assert!(
            !log.contains("s3cr3t"),
            "RUST_LOG={rust_log}: the secret is in the log:\n{log}"
        );
        assert!(
            !log.contains("\"Env\""),
            "RUST_LOG={rust_log}: a create body is in the log:\n{log}"
        );
        // The secret did go through the Docker client: it is in the container.
        let c = docker::inspect(&ns.container_name("app", 0)).expect("the container");
        let env = c["Config"]["Env"].to_string();
        assert!(env.contains(&secret), "round {round}: {env}");
    }
}

/// `berth run --once` on an empty folder under a pseudo-terminal (`script`):
/// what it printed.
fn on_a_terminal(ns: &TestNamespace, no_color: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let berth = common::berth_bin();
    let state = common::test_state_dir();
    let line = format!(
        "{} run --once --manifests {} --namespace {} --allow-empty --state-dir {} --run-dir {}",
        berth.display(),
        dir.path().display(),
        ns.ns,
        state.display(),
        state.join("run").display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null());
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out = cmd.output().unwrap();
    let printed = common::output_text(&out);
    assert!(printed.contains("starting"), "{printed}");
    printed
}

#[test]
fn no_color_turns_colours_off_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("note: `script` (util-linux) is not installed; skipping the terminal test");
        return;
    }
    let ns = TestNamespace::new("nocolor");
    let coloured = on_a_terminal(&ns, false);
    assert!(
        coloured.contains('\x1b'),
        "a terminal gets colours: {coloured:?}"
    );
    let plain = on_a_terminal(&ns, true);
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
}

/// The log lines of a `berth run --once` on an empty folder whose stderr is
/// `log`, with `JOURNAL_STREAM` set to `journal_stream`.
fn log_lines(ns: &TestNamespace, journal_stream: Option<&dyn Fn(&Path) -> String>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = berth_command();
    cmd.args(["run", "--once", "--allow-empty", "--manifests"])
        .arg(dir.path())
        .args(["--namespace", &ns.ns])
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    if let Some(value) = journal_stream {
        cmd.env("JOURNAL_STREAM", value(&log));
    }
    let status = cmd.status().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains("berth"))
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "{text}");
    lines
}

#[test]
fn under_journald_lines_carry_no_timestamp() {
    let ns = TestNamespace::new("journal");
    let starts_with_year = |l: &String| l.starts_with("20") && l.as_bytes().get(4) == Some(&b'-');
    let plain = log_lines(&ns, None);
    assert!(plain.iter().all(starts_with_year), "{plain:#?}");

    let names_the_log = |log: &Path| {
        let m = std::fs::metadata(log).unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let journal = log_lines(&ns, Some(&names_the_log));
    assert!(
        journal.iter().all(|l| !starts_with_year(l)),
        "JOURNAL_STREAM: {journal:#?}"
    );
    assert!(
        journal.iter().any(|l| l.trim_start().starts_with("INFO")),
        "{journal:#?}"
    );

    // Inherited by a process whose stderr is elsewhere: not the journal.
    let elsewhere = |_: &Path| "1:2".to_string();
    let inherited = log_lines(&ns, Some(&elsewhere));
    assert!(inherited.iter().all(starts_with_year), "{inherited:#?}");
}

#[test]
fn a_warning_that_stays_the_same_is_logged_once_not_at_every_pass() {
    let ns = TestNamespace::new("warnonce");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "app.yaml",
        &format!(
            "name: app\nimage: {}\npull: never\nargs: [\"sleep\", \"forever\"]\nstop_timeout: 1s\n",
            fixture_image()
        ),
    );
    write(dir.path(), "bad.yaml", "name: bad\nimage: x\nbogus: 1\n");
    // In our namespace, without task/index labels: berth leaves it alone and says so.
    ns.foreign(
        &format!("{}-stray", ns.ns),
        &[("io.berth.namespace", ns.ns.as_str())],
    );
    let berth = Berth::start(&ns, dir.path(), &["--resync", "1s"]);
    wait_for_sync(Duration::from_secs(60), "six passes", || {
        (berth.passes() >= 6).then_some(())
    });
    let log = berth.log();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("no valid task/index labels"), 1, "{log}");
    assert_eq!(count("unknown key"), 1, "{log}");
}

//! `berth run` as a user runs it: a child process watching a folder and the
//! daemon. Each test starts its own berth on its own namespace and folder,
//! changes the world once (a file, a container, the Docker socket, a signal)
//! and checks what a person would see with the Docker CLI.
//!
//! Run with `cargo test --test live_e2e -- --test-threads=2`. The figures in
//! the closing note come from the `#[ignore]`d `measure_*` test.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::Berth;
use common::{docker, fixture_image, wait_for_sync, DockerProxy, TestNamespace};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Passes woken by the manifest folder (not by finished work or events).
fn folder_passes(berth: &Berth) -> usize {
    berth
        .log()
        .lines()
        .filter(|l| l.contains("pass{trigger=manifests}"))
        .filter(|l| l.contains("pass done") || l.contains("pass: nothing to do"))
        .count()
}

/// A task running the fixture with `command` + `args`, plus extra YAML lines.
fn task(command: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "image: {}\ncommand: {command}\nargs: [{}]\nstop_timeout: 2s\n{extra}",
        fixture_image(),
        args.join(", ")
    )
}

fn sleeper(extra: &str) -> String {
    task("sleep", &["forever"], extra)
}

/// Write through a temporary file and a rename, as editors and deploy tools do.
fn write_atomically(path: &Path, content: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// What a person sees with `docker inspect`.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    running: bool,
    started_at: String,
    env: Vec<String>,
}

fn seen(name: &str) -> Option<Seen> {
    let c = docker::inspect(name)?;
    Some(Seen {
        id: c["Id"].as_str()?.to_string(),
        running: c["State"]["Running"].as_bool()?,
        started_at: c["State"]["StartedAt"].as_str()?.to_string(),
        env: c["Config"]["Env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn running(name: &str) -> Option<Seen> {
    seen(name).filter(|s| s.running)
}

/// Docker's own record of a container's `start`/`die` events since `since`,
/// as (unix nanoseconds, action): a witness independent of berth's logs.
fn lifecycle_events(ns: &str, since: SystemTime) -> Vec<(u128, String)> {
    let since = since.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            &format!("{since:.3}"),
            "--until",
            &format!("{until:.3}"),
            "--filter",
            &format!("label=io.berth.namespace={ns}"),
            "--filter",
            "event=start",
            "--filter",
            "event=die",
            "--format",
            "{{.TimeNano}} {{.Action}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (t, a) = l.split_once(' ')?;
            Some((t.parse().ok()?, a.to_string()))
        })
        .collect()
}

/// Unix milliseconds of a log line's leading `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn log_millis(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) * 1000 + (secs * 1000.0).round() as i64)
}

/// Milliseconds between consecutive log lines matching `a` then `b`
/// (each `a` paired with the next `b`).
fn log_gaps(log: &str, a: impl Fn(&str) -> bool, b: impl Fn(&str) -> bool) -> Vec<i64> {
    let mut gaps = Vec::new();
    let mut from = None;
    for line in log.lines() {
        if a(line) {
            from = log_millis(line);
        } else if b(line) {
            if let (Some(f), Some(t)) = (from.take(), log_millis(line)) {
                gaps.push(t - f);
            }
        }
    }
    gaps
}

const FAST: Duration = Duration::from_secs(2);
/// For a first container in a fresh test (the fixture image may be imported).
const FIRST: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The folder
// ---------------------------------------------------------------------------

#[test]
fn a_manifest_dropped_into_the_folder_runs_within_two_seconds() {
    let ns = TestNamespace::new("drop");
    let dir = tempfile::tempdir().unwrap();
    let _ = fixture_image();
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_for_log(FIRST, "pass");

    let written = Instant::now();
    fs::write(dir.path().join("web.yaml"), sleeper("")).unwrap();
    wait_for_sync(FAST, "web-0 running within 2 s of the drop", || {
        running(&ns.container_name("web", 0))
    });
    eprintln!("drop → running: {:?}", written.elapsed());
}

#[test]
fn an_atomic_rename_over_a_manifest_replaces_its_container() {
    let ns = TestNamespace::new("rename");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    fs::write(&file, sleeper("env: {VERSION: one}\n")).unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running", || running(&name));

    write_atomically(&file, &sleeper("env: {VERSION: two}\n"));
    let after = wait_for_sync(
        Duration::from_secs(5),
        "web-0 replaced with VERSION=two",
        || running(&name).filter(|s| s.env.iter().any(|e| e == "VERSION=two")),
    );
    assert_ne!(after.id, before.id, "an env change replaces the container");
    wait_for_sync(FAST, "the old container removed", || {
        (docker::ids(&ns.ns) == vec![after.id.clone()]).then_some(())
    });
    assert!(berth.log().contains("replace web[0]"));
}

#[test]
fn deleting_a_manifest_removes_its_container() {
    let ns = TestNamespace::new("delete");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    fs::write(&file, sleeper("")).unwrap();
    fs::write(dir.path().join("keep.yaml"), sleeper("")).unwrap();
    // A removal waits for a quiet folder (keep_work_e2e tests the default);
    // here the shortest wait.
    let _berth = Berth::start(&ns, dir.path(), &["--removal-delay", "0s"]);
    let keep = wait_for_sync(FIRST, "keep-0 running", || {
        running(&ns.container_name("keep", 0))
    });
    wait_for_sync(FIRST, "web-0 running", || {
        running(&ns.container_name("web", 0))
    });

    fs::remove_file(&file).unwrap();
    wait_for_sync(FAST, "web-0 removed", || {
        seen(&ns.container_name("web", 0)).is_none().then_some(())
    });
    assert_eq!(
        running(&ns.container_name("keep", 0)).map(|s| s.id),
        Some(keep.id),
        "the other task is untouched"
    );
}

#[test]
fn a_git_sync_style_swap_of_the_data_symlink_applies_the_new_specs() {
    let ns = TestNamespace::new("symlink");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // root/..v1/web.yaml, root/..data -> ..v1, root/web.yaml -> ..data/web.yaml
    fs::create_dir(root.join("..v1")).unwrap();
    fs::write(root.join("..v1/web.yaml"), sleeper("env: {VERSION: one}\n")).unwrap();
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/web.yaml", root.join("web.yaml")).unwrap();
    let _berth = Berth::start(&ns, root, &[]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running VERSION=one", || {
        running(&name).filter(|s| s.env.iter().any(|e| e == "VERSION=one"))
    });

    fs::create_dir(root.join("..v2")).unwrap();
    fs::write(root.join("..v2/web.yaml"), sleeper("env: {VERSION: two}\n")).unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();

    let after = wait_for_sync(Duration::from_secs(5), "web-0 running VERSION=two", || {
        running(&name).filter(|s| s.env.iter().any(|e| e == "VERSION=two"))
    });
    assert_ne!(after.id, before.id);
}

#[test]
fn a_burst_of_fifty_writes_applies_the_final_content_in_a_few_passes() {
    let ns = TestNamespace::new("burst");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    fs::write(&file, sleeper("env: {VERSION: \"start\"}\n")).unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("web", 0);
    wait_for_sync(FIRST, "web-0 running", || running(&name));
    // The start-up pass has finished (its `start` event causes no pass).
    berth.wait_for_log(FAST, "pass done");
    let passes_before = folder_passes(&berth);

    for i in 0..50 {
        fs::write(&file, sleeper(&format!("env: {{VERSION: \"v{i}\"}}\n"))).unwrap();
    }
    wait_for_sync(Duration::from_secs(5), "web-0 running VERSION=v49", || {
        running(&name).filter(|s| s.env.iter().any(|e| e == "VERSION=v49"))
    });
    // Give any straggling trigger its chance to show up before counting.
    std::thread::sleep(Duration::from_millis(1500));
    let passes = folder_passes(&berth) - passes_before;
    eprintln!("passes woken by the folder for a 50-write burst: {passes}");
    assert!(
        (1..=3).contains(&passes),
        "{passes} folder passes for one burst:\n{}",
        berth.log()
    );
    let replaced = berth
        .log()
        .lines()
        .filter(|l| l.contains("replace web[0]"))
        .filter(|l| l.contains("done"))
        .count();
    assert!(replaced <= 2, "{replaced} replacements:\n{}", berth.log());
}

#[test]
fn invalid_yaml_over_a_good_manifest_keeps_the_container_and_fixing_it_applies() {
    let ns = TestNamespace::new("invalid");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    fs::write(&file, sleeper("env: {VERSION: one}\n")).unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running", || running(&name));

    write_atomically(&file, "image: [unclosed\nenv: {\n");
    let line = berth.wait_for_log(FAST, "web.yaml:");
    let located = line.split("web.yaml:").nth(1).and_then(|rest| {
        let mut parts = rest.splitn(3, ':');
        let l = parts.next()?.parse::<u32>().ok()?;
        let c = parts.next()?.parse::<u32>().ok()?;
        Some((l, c))
    });
    assert!(located.is_some(), "error without line:column: {line}");
    assert_eq!(
        running(&name).map(|s| s.id),
        Some(before.id.clone()),
        "still running"
    );

    write_atomically(&file, &sleeper("env: {VERSION: two}\n"));
    let after = wait_for_sync(Duration::from_secs(5), "web-0 running VERSION=two", || {
        running(&name).filter(|s| s.env.iter().any(|e| e == "VERSION=two"))
    });
    assert_ne!(after.id, before.id);
}

#[test]
fn a_file_written_in_slow_chunks_is_applied_once_complete_and_nothing_stops_meanwhile() {
    let ns = TestNamespace::new("chunks");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    fs::write(&file, sleeper("env: {VERSION: one}\n")).unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running", || running(&name));

    let full = sleeper("env: {VERSION: two}\n");
    let cut = full.find("forever").unwrap() + 3; // inside `args: ["for`
    fs::write(&file, &full[..cut]).unwrap();
    berth.wait_for_log(Duration::from_secs(5), "web.yaml:");
    assert_eq!(
        running(&name).map(|s| s.id),
        Some(before.id.clone()),
        "half a file stops nothing"
    );

    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    let after = wait_for_sync(Duration::from_secs(5), "web-0 running VERSION=two", || {
        running(&name).filter(|s| s.env.iter().any(|e| e == "VERSION=two"))
    });
    assert_ne!(after.id, before.id);
}

#[test]
fn a_delete_quickly_followed_by_a_recreate_keeps_the_container() {
    let ns = TestNamespace::new("recreate");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    let content = sleeper("");
    fs::write(&file, &content).unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running", || running(&name));
    let passes = berth.passes();

    fs::remove_file(&file).unwrap();
    fs::write(&file, &content).unwrap();
    wait_for_sync(FAST, "a pass after the change", || {
        (berth.passes() > passes).then_some(())
    });
    assert_eq!(
        running(&name),
        Some(before),
        "same container, never stopped"
    );
}

#[test]
fn editor_probe_and_swap_files_change_nothing() {
    let ns = TestNamespace::new("probe");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("web.yaml"), sleeper("")).unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running", || running(&name));
    berth.wait_for_log(FAST, "pass done");
    let passes = berth.passes();

    // vim's write probe, its swap file, and a backup: none is a manifest.
    fs::write(dir.path().join("4913"), "").unwrap();
    fs::remove_file(dir.path().join("4913")).unwrap();
    fs::write(dir.path().join(".web.yaml.swp"), "garbage: [").unwrap();
    fs::write(dir.path().join("web.yaml~"), "garbage: [").unwrap();
    wait_for_sync(FAST, "a pass after the change", || {
        (berth.passes() > passes).then_some(())
    });
    assert_eq!(running(&name), Some(before));
    let log = berth.log();
    assert!(
        !log.contains("garbage") && !log.contains("WARN"),
        "nothing reported:\n{log}"
    );
    assert_eq!(docker::ids(&ns.ns).len(), 1);
}

// ---------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------

#[test]
fn a_killed_container_runs_again_within_two_seconds() {
    let ns = TestNamespace::new("kill");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("web.yaml"), sleeper("")).unwrap();
    let _berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running", || running(&name));

    let killed = Instant::now();
    docker::cli(&["kill", &name]);
    let after = wait_for_sync(FAST, "web-0 running again within 2 s", || {
        running(&name).filter(|s| s.started_at != before.started_at)
    });
    eprintln!("kill → running: {:?}", killed.elapsed());
    assert_eq!(after.id, before.id, "restarted, not recreated");
}

#[test]
fn a_crash_looping_task_restarts_on_the_doubling_capped_curve() {
    let ns = TestNamespace::new("crashloop");
    let dir = tempfile::tempdir().unwrap();
    let _ = fixture_image();
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_for_log(FIRST, "pass");
    let t0 = SystemTime::now();
    fs::write(
        dir.path().join("crash.yaml"),
        task(
            "exit",
            &["1"],
            "restart: {policy: always, delay: 200ms, max_delay: 2s}\n",
        ),
    )
    .unwrap();

    // Delays are counted from the exit: 0, 200, 400, 800, 1600, 2000, 2000 ms.
    // Witness: berth receiving Docker's `die` → berth asking Docker to start.
    // Docker reports `die` a little after the exit (FinishedAt, which the
    // curve counts from), so a gap may come out up to ~300 ms short; a pass
    // (settle, list, plan) makes it up to a few hundred ms long.
    let expected_ms = [0i64, 200, 400, 800, 1600, 2000, 2000];
    let gaps = wait_for_sync(Duration::from_secs(40), "7 restarts", || {
        let gaps = log_gaps(
            &berth.log(),
            |l| l.contains("docker event action=die"),
            |l| l.contains("start container container="),
        );
        (gaps.len() >= expected_ms.len()).then_some(gaps)
    });
    eprintln!("die → restart gaps (ms): {gaps:?}");
    for (i, (gap, want)) in gaps.iter().zip(expected_ms).enumerate() {
        assert!(
            *gap >= want - 300 && *gap <= want + 800,
            "restart {} after {gap} ms, expected ≈{want} ms; all gaps {gaps:?}\n{}",
            i + 1,
            berth.log()
        );
    }
    // Docker's own record agrees that the loop went on.
    let docker_starts = lifecycle_events(&ns.ns, t0)
        .iter()
        .filter(|(_, a)| a == "start")
        .count();
    assert!(docker_starts >= expected_ms.len(), "{docker_starts} starts");
    assert!(
        berth.log().contains("backing off") && berth.log().contains("retry_in"),
        "the backoff state is logged"
    );
}

fn assert_not_restarted(test: &str, command: &[&str], policy: &str) {
    let ns = TestNamespace::new(test);
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("job.yaml"),
        task(
            command[0],
            &command[1..],
            &format!("restart: {{policy: {policy}, delay: 100ms}}\n"),
        ),
    )
    .unwrap();
    let t0 = SystemTime::now();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("job", 0);
    let exited = wait_for_sync(FIRST, "job-0 exited", || {
        seen(&name).filter(|s| !s.running && s.started_at != "0001-01-01T00:00:00Z")
    });
    // Several passes (the die event's, a manifest touch's) must leave it be.
    fs::write(
        dir.path().join("job.yaml"),
        fs::read_to_string(dir.path().join("job.yaml")).unwrap(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(
            seen(&name),
            Some(exited.clone()),
            "touched:\n{}",
            berth.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let starts = lifecycle_events(&ns.ns, t0)
        .iter()
        .filter(|(_, a)| a == "start")
        .count();
    assert_eq!(starts, 1, "started once only");
    assert_eq!(docker::ids(&ns.ns), vec![exited.id], "not recreated either");
}

#[test]
fn on_failure_does_not_restart_a_clean_exit() {
    assert_not_restarted("onfailure", &["exit", "0"], "on-failure");
}

#[test]
fn never_does_not_restart_a_failed_exit() {
    assert_not_restarted("never", &["exit", "1"], "never");
}

#[test]
fn an_unhealthy_container_is_restarted_by_berth() {
    let ns = TestNamespace::new("unhealthy");
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("sick.yaml"),
        sleeper(
            "healthcheck:\n  test: [\"CMD\", \"/fixture\", \"healthy-file\", \"/tmp/nope\"]\n  interval: 300ms\n  timeout: 1s\n  retries: 1\nrestart: {delay: 200ms, max_delay: 1s}\n",
        ),
    )
    .unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("sick", 0);
    let before = wait_for_sync(FIRST, "sick-0 running", || running(&name));
    let after = wait_for_sync(Duration::from_secs(10), "sick-0 restarted", || {
        running(&name).filter(|s| s.started_at != before.started_at)
    });
    assert_eq!(after.id, before.id, "restarted in place");
    berth.wait_for_log(FAST, "restart-unhealthy");
}

#[test]
fn a_task_whose_image_does_not_exist_backs_off_on_the_restart_curve() {
    let ns = TestNamespace::new("badimage");
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("bad.yaml"),
        "image: berth-no-such-image:never\npull: never\nrestart: {delay: 300ms, max_delay: 1s}\n",
    )
    .unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    // Attempts after 0, 0 (first retry immediate), 300, 600, 1000, 1000 ms.
    let count = wait_for_sync(Duration::from_secs(15), "6 failed creates", || {
        let n = berth
            .log()
            .lines()
            .filter(|l| l.contains("create bad[0]") && l.contains("failed"))
            .count();
        (n >= 6).then_some(n)
    });
    assert!(count >= 6);
    let log = berth.log();
    assert!(log.contains("backing off"), "the wait is logged:\n{log}");
    let failed = |l: &str| l.contains("create bad[0]") && l.contains("failed");
    let attempts: Vec<i64> = log
        .lines()
        .filter(|l| failed(l))
        .filter_map(log_millis)
        .collect();
    let spacing: Vec<i64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("attempt spacing (ms): {spacing:?}");
    for (i, (gap, want)) in spacing.iter().zip([0i64, 300, 600, 1000, 1000]).enumerate() {
        assert!(
            *gap >= want - 20 && *gap <= want + 500,
            "attempt {} came {gap} ms after the previous one, expected ≈{want}; {spacing:?}",
            i + 2
        );
    }
    assert!(docker::ids(&ns.ns).is_empty());
}

#[test]
fn a_task_whose_command_cannot_start_backs_off_on_the_restart_curve() {
    let ns = TestNamespace::new("badcmd");
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("bad.yaml"),
        format!(
            "image: {}\nentrypoint: [\"/no-such-program\"]\nrestart: {{delay: 300ms, max_delay: 1s}}\n",
            fixture_image()
        ),
    )
    .unwrap();
    let berth = Berth::start(&ns, dir.path(), &[]);
    let failed = |l: &str| l.contains("bad[0]") && l.contains("outcome=\"failed\"");
    wait_for_sync(Duration::from_secs(30), "5 failed attempts", || {
        (berth.log().lines().filter(|l| failed(l)).count() >= 5).then_some(())
    });
    let log = berth.log();
    assert!(log.contains("backing off"), "the wait is logged:\n{log}");
    // Each attempt waits its delay after the previous failure, then Docker
    // takes its time to fail the start (up to ~1.5 s on a busy host).
    let attempts: Vec<i64> = log
        .lines()
        .filter(|l| failed(l))
        .filter_map(log_millis)
        .collect();
    let spacing: Vec<i64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("attempt spacing (ms): {spacing:?}");
    for (i, (gap, want)) in spacing.iter().zip([0i64, 300, 600, 1000]).enumerate() {
        assert!(
            *gap >= want && *gap <= want + 2500,
            "attempt {} came {gap} ms after the previous one, expected {want} ms + Docker's start; {spacing:?}\n{log}",
            i + 2
        );
    }
    assert!(running(&ns.container_name("bad", 0)).is_none());
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

#[test]
fn berth_survives_a_docker_outage_and_converges_when_it_is_back() {
    let ns = TestNamespace::new("outage");
    let dir = tempfile::tempdir().unwrap();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("docker.sock");
    fs::write(dir.path().join("web.yaml"), sleeper("")).unwrap();
    let mut proxy = DockerProxy::start(&sock);
    let endpoint = format!("unix://{}", sock.display());
    let mut berth = Berth::start(&ns, dir.path(), &["--docker-endpoint", &endpoint]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running", || running(&name));

    proxy.stop();
    berth.wait_for_log(Duration::from_secs(5), "unreachable");
    // Meanwhile the container stops, and a file changes: berth cannot see it.
    docker::cli(&["stop", "-t", "1", &name]);
    fs::write(dir.path().join("more.yaml"), sleeper("")).unwrap();
    std::thread::sleep(Duration::from_secs(2)); // an outage, not a blip
    assert!(
        berth.exited().is_none(),
        "berth keeps running:\n{}",
        berth.log()
    );

    let _proxy = DockerProxy::start(&sock);
    let back = Instant::now();
    let after = wait_for_sync(Duration::from_secs(8), "web-0 running again", || {
        running(&name).filter(|s| s.started_at != before.started_at)
    });
    wait_for_sync(Duration::from_secs(5), "more-0 running", || {
        running(&ns.container_name("more", 0))
    });
    eprintln!("docker back → converged: {:?}", back.elapsed());
    assert_eq!(after.id, before.id);
    assert!(berth.exited().is_none());
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

#[test]
fn sighup_rereads_the_agent_config_and_applies_it() {
    let ns = TestNamespace::new("sighup");
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = cfg_dir.path().join("berth.yaml");
    fs::write(&config, "meta: {site: berlin}\n").unwrap();
    fs::write(
        dir.path().join("web.yaml"),
        sleeper("env: {SITE: \"${meta.site}\"}\n"),
    )
    .unwrap();
    let berth = Berth::start(&ns, dir.path(), &["--config", config.to_str().unwrap()]);
    let name = ns.container_name("web", 0);
    let before = wait_for_sync(FIRST, "web-0 running SITE=berlin", || {
        running(&name).filter(|s| s.env.iter().any(|e| e == "SITE=berlin"))
    });

    fs::write(&config, "meta: {site: paris}\n").unwrap();
    // Editing the config alone changes nothing: berth reads it on SIGHUP.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(running(&name).map(|s| s.id), Some(before.id.clone()));
    berth.signal("-HUP");
    let after = wait_for_sync(Duration::from_secs(5), "web-0 running SITE=paris", || {
        running(&name).filter(|s| s.env.iter().any(|e| e == "SITE=paris"))
    });
    assert_ne!(after.id, before.id);
    berth.wait_for_log(FAST, "agent config reloaded");
}

#[test]
fn sigterm_stops_berth_promptly_and_leaves_every_container_running() {
    let ns = TestNamespace::new("sigterm");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), sleeper("")).unwrap();
    fs::write(dir.path().join("b.yaml"), sleeper("count: 2\n")).unwrap();
    let mut berth = Berth::start(&ns, dir.path(), &[]);
    let names = [
        ns.container_name("a", 0),
        ns.container_name("b", 0),
        ns.container_name("b", 1),
    ];
    let before: Vec<Seen> = names
        .iter()
        .map(|n| wait_for_sync(FIRST, &format!("{n} running"), || running(n)))
        .collect();

    berth.signal("-TERM");
    let status = wait_for_sync(Duration::from_secs(5), "berth to exit", || berth.exited());
    assert!(status.success(), "exit status {status}:\n{}", berth.log());
    let after: Vec<Option<Seen>> = names.iter().map(|n| running(n)).collect();
    assert_eq!(after, before.into_iter().map(Some).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// Figures for the closing note (not a test of behaviour)
// ---------------------------------------------------------------------------

/// Docker `start` events of a namespace as they happen: (name, when seen).
fn start_events(ns: &str) -> (Child, std::sync::mpsc::Receiver<(String, Instant)>) {
    let mut child = Command::new("docker")
        .args([
            "events",
            "--filter",
            &format!("label=io.berth.namespace={ns}"),
            "--filter",
            "event=start",
            "--format",
            "{{.Actor.Attributes.name}}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line.trim().to_string(), Instant::now())).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn median_and_worst(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}

/// `cargo build --release && cargo test --test live_e2e measure -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: prints figures, asserts nothing about speed"]
fn measure_live_figures() {
    let release = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/berth");
    let bin = if release.exists() {
        release
    } else {
        common::berth_bin()
    };
    eprintln!("binary: {}", bin.display());
    let ns = TestNamespace::new("measure");
    let dir = tempfile::tempdir().unwrap();
    let _ = fixture_image();
    let (mut events, starts) = start_events(&ns.ns);
    let berth = Berth::run(&ns, dir.path()).bin(&bin).start();
    berth.wait_for_log(FIRST, "pass");

    // 1. Manifest write → container started (Docker's start event), 20 drops.
    let mut drops = Vec::new();
    for i in 0..20 {
        let task = format!("t{i}");
        let written = Instant::now();
        fs::write(dir.path().join(format!("{task}.yaml")), sleeper("")).unwrap();
        let want = ns.container_name(&task, 0);
        loop {
            let (name, at) = starts.recv_timeout(Duration::from_secs(20)).unwrap();
            if name == want {
                drops.push(at - written);
                break;
            }
        }
    }
    let (m, w) = median_and_worst(drops);
    eprintln!("FIGURE write→running (20 drops): median {m:?}, worst {w:?}");

    // 2. docker kill → started again, ~10 kills spread over the tasks (each
    //    task killed once, so every restart is a first, immediate one).
    let mut kills = Vec::new();
    for i in 0..10 {
        let want = ns.container_name(&format!("t{i}"), 0);
        let killed = Instant::now();
        docker::cli(&["kill", &want]);
        loop {
            let (name, at) = starts.recv_timeout(Duration::from_secs(20)).unwrap();
            if name == want {
                kills.push(at - killed);
                break;
            }
        }
    }
    let (m, w) = median_and_worst(kills);
    eprintln!("FIGURE docker kill→running (10 kills): median {m:?}, worst {w:?}");

    // 3. Passes for a 50-write burst to one file.
    std::thread::sleep(Duration::from_secs(2));
    let before = berth.passes();
    let file = dir.path().join("t0.yaml");
    for i in 0..50 {
        fs::write(&file, sleeper(&format!("env: {{VERSION: \"v{i}\"}}\n"))).unwrap();
    }
    wait_for_sync(Duration::from_secs(10), "t0 VERSION=v49", || {
        running(&ns.container_name("t0", 0)).filter(|s| s.env.iter().any(|e| e == "VERSION=v49"))
    });
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "FIGURE passes for a 50-write burst: {}",
        berth.passes() - before
    );

    // 4. Idle CPU and RSS with 20 tasks over 60 s.
    std::thread::sleep(Duration::from_secs(3));
    let pid = berth.pid().to_string();
    let cpu = |pid: &str| -> u64 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_comm = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        // utime and stime are fields 14 and 15; after "pid (comm)" they are 11 and 12.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let rss = |pid: &str| -> String {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .unwrap_or_default()
            .to_string()
    };
    let ticks = 100.0; // CLK_TCK on Linux x86_64
    let c0 = cpu(&pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let used = (cpu(&pid) - c0) as f64 / ticks;
    let wall = t0.elapsed().as_secs_f64();
    eprintln!(
        "FIGURE idle with 20 tasks over {wall:.0} s: cpu {used:.2} s ({:.3}% of one core), {}",
        100.0 * used / wall,
        rss(&pid)
    );
    let _ = events.kill();
    let _ = events.wait();
}

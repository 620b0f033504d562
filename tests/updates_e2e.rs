//! Safe updates against the real daemon: a new spec replaces the running
//! container only after it passes its health gate (`update.min_healthy`,
//! healthy if it has a healthcheck, within `update.deadline`); a new spec
//! that exits or turns unhealthy is rolled back to the previous container
//! and held; start-first keeps a container running at every moment; a
//! berth killed in the middle of a gate reaches the same end.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::process::Berth;
use common::{docker, fixture_task, run_berth, wait_for_sync, write, TestNamespace};

const START: Duration = Duration::from_secs(60);

/// A task running the fixture with `command` and `args`, plus extra YAML.
fn task(command: &str, args: &[&str], extra: &str) -> String {
    fixture_task(command, args, &format!("stop_timeout: 1s\n{extra}"))
}

/// (id, running, VERSION env) of a container.
fn seen(name: &str) -> Option<(String, bool, String)> {
    let c = docker::inspect(name)?;
    let version = c["Config"]["Env"]
        .as_array()?
        .iter()
        .filter_map(|e| e.as_str())
        .find_map(|e| e.strip_prefix("VERSION="))
        .unwrap_or_default()
        .to_string();
    Some((
        c["Id"].as_str()?.to_string(),
        c["State"]["Running"].as_bool()?,
        version,
    ))
}

/// Docker's `start` events in the namespace since `since`.
fn starts_since(ns: &str, since: SystemTime) -> Vec<String> {
    docker::events(
        since,
        &[&format!("label=io.berth.namespace={ns}"), "event=start"],
        "{{.ID}}",
    )
}

fn web_status(berth: &Berth) -> Option<serde_json::Value> {
    berth.status()?["instances"]
        .as_array()?
        .iter()
        .find(|i| i["task"] == "web")
        .cloned()
}

const GATE: &str = "update: {min_healthy: 4s, deadline: 20s}\n";

fn v(version: &str, command: &str, args: &[&str]) -> String {
    task(
        command,
        args,
        &format!("{GATE}env: {{VERSION: \"{version}\"}}\n"),
    )
}

#[test]
fn a_new_version_that_exits_is_rolled_back_held_and_a_later_good_one_applies() {
    let ns = TestNamespace::new("rollback");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &v("1", "sleep", &["forever"]));
    // A 2 s resync: the hold below is seen to last over many passes.
    let berth = Berth::start(&ns, dir.path(), &["--resync", "2s"]);
    berth.wait_running(START, &[("web", 0)]);
    let name = ns.container_name("web", 0);
    let (v1_id, _, _) = seen(&name).unwrap();

    // v2 exits 2 s after it starts: it cannot pass a 4 s gate.
    write(
        dir.path(),
        "web.yaml",
        &v("2", "exit", &["1", "--after", "2000"]),
    );
    let written = Instant::now();
    let held = wait_for_sync(Duration::from_secs(25 + 5), "v2 rolled back", || {
        web_status(&berth)?["held"].as_str().map(str::to_string)
    });
    eprintln!("FIGURE rolled back {:?} after the write", written.elapsed());
    assert!(
        held.contains("rolled back: exited with code 1 after 2"),
        "{held}"
    );
    let (id, running, version) = seen(&name).unwrap();
    assert_eq!(
        (id.as_str(), running, version.as_str()),
        (v1_id.as_str(), true, "1")
    );
    let (_, metrics) = berth.get("/metrics").unwrap();
    assert!(
        metrics.contains("berth_rollbacks_total{task=\"web\"} 1"),
        "{metrics}"
    );

    // v2 is held: not started again, pass after pass (a hold has no
    // expiry; only a pass could try v2 again).
    let since = SystemTime::now();
    let passes = berth.passes();
    wait_for_sync(Duration::from_secs(30), "five more passes", || {
        (berth.passes() >= passes + 5).then_some(())
    });
    assert!(starts_since(&ns.ns, since).is_empty(), "v2 was tried again");
    assert_eq!(seen(&name).unwrap().0, v1_id);

    // A later good v3 applies.
    write(dir.path(), "web.yaml", &v("3", "sleep", &["forever"]));
    wait_for_sync(Duration::from_secs(30), "v3 running, v1 gone", || {
        let (id, running, version) = seen(&name)?;
        (running && version == "3" && id != v1_id && docker::ids(&ns.ns).len() == 1).then_some(())
    });
    wait_for_sync(Duration::from_secs(10), "the hold lifted", || {
        web_status(&berth)?["held"].is_null().then_some(())
    });
}

#[test]
fn a_new_version_that_turns_unhealthy_is_rolled_back() {
    let ns = TestNamespace::new("unhealthy");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &v("1", "sleep", &["forever"]));
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("web", 0)]);
    let name = ns.container_name("web", 0);
    let (v1_id, _, _) = seen(&name).unwrap();

    // v2 runs, but its healthcheck always fails.
    let sick = format!(
        "{}healthcheck: {{test: [\"CMD\", \"/fixture\", \"healthy-file\", \"/nonexistent\"], interval: 1s, timeout: 1s, retries: 1}}\n",
        v("2", "sleep", &["forever"])
    );
    write(dir.path(), "web.yaml", &sick);
    let held = wait_for_sync(Duration::from_secs(30), "v2 rolled back", || {
        web_status(&berth)?["held"].as_str().map(str::to_string)
    });
    assert!(held.contains("rolled back: unhealthy"), "{held}");
    let (id, running, version) = seen(&name).unwrap();
    assert_eq!((id, running, version.as_str()), (v1_id, true, "1"));
    assert_eq!(docker::ids(&ns.ns).len(), 1, "no leftover");
}

#[test]
fn berth_killed_in_the_middle_of_a_gate_reaches_the_same_end() {
    let ns = TestNamespace::new("gatekill");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "good.yaml",
        &task(
            "sleep",
            &["forever"],
            &format!("{GATE}env: {{VERSION: \"1\"}}\n"),
        ),
    );
    write(
        dir.path(),
        "bad.yaml",
        &task(
            "sleep",
            &["forever"],
            &format!("{GATE}env: {{VERSION: \"1\"}}\n"),
        ),
    );
    let mut berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("good", 0), ("bad", 0)]);
    let good = ns.container_name("good", 0);
    let bad = ns.container_name("bad", 0);
    let (bad_v1, _, _) = seen(&bad).unwrap();

    // good's v2 passes a 4 s gate; bad's v2 exits after 3 s.
    write(
        dir.path(),
        "good.yaml",
        &task(
            "sleep",
            &["forever"],
            &format!("{GATE}env: {{VERSION: \"2\"}}\n"),
        ),
    );
    write(
        dir.path(),
        "bad.yaml",
        &task(
            "exit",
            &["1", "--after", "3000"],
            &format!("{GATE}env: {{VERSION: \"2\"}}\n"),
        ),
    );
    // Both gates under way: then kill -9.
    wait_for_sync(Duration::from_secs(20), "both gates under way", || {
        let s = berth.status()?;
        let gating = s["instances"]
            .as_array()?
            .iter()
            .filter(|i| i["work"]["step"] == "gating")
            .count();
        (gating == 2).then_some(())
    });
    berth.kill9();
    // A new berth decides the same: good's v2 stays, bad goes back to v1.
    let berth = Berth::start(&ns, dir.path(), &[]);
    wait_for_sync(
        Duration::from_secs(30),
        "good on v2, bad back on v1",
        || {
            let (_, good_running, good_version) = seen(&good)?;
            let (bad_id, bad_running, bad_version) = seen(&bad)?;
            (good_running
                && good_version == "2"
                && bad_running
                && bad_version == "1"
                && bad_id == bad_v1
                && docker::ids(&ns.ns).len() == 2)
                .then_some(())
        },
    );
    wait_for_sync(Duration::from_secs(10), "bad held", || {
        berth.status()?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["task"] == "bad")?["held"]
            .as_str()
            .map(str::to_string)
    });
}

#[test]
fn a_held_update_stays_held_across_a_restart_of_berth() {
    let ns = TestNamespace::new("heldrestart");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &v("1", "sleep", &["forever"]));
    let mut berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("web", 0)]);
    let name = ns.container_name("web", 0);
    let (v1_id, _, _) = seen(&name).unwrap();
    write(
        dir.path(),
        "web.yaml",
        &v("2", "exit", &["1", "--after", "1000"]),
    );
    wait_for_sync(Duration::from_secs(30), "v2 rolled back", || {
        web_status(&berth)?["held"].as_str().map(str::to_string)
    });
    berth.kill9();
    let since = SystemTime::now();
    let berth = Berth::start(&ns, dir.path(), &[]);
    wait_for_sync(
        Duration::from_secs(20),
        "the restarted berth reports the hold",
        || web_status(&berth)?["held"].as_str().map(str::to_string),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        starts_since(&ns.ns, since).is_empty(),
        "v2 was tried again after the restart"
    );
    assert_eq!(seen(&name).unwrap().0, v1_id);
}

#[test]
fn start_first_keeps_a_container_running_at_every_moment() {
    let ns = TestNamespace::new("startfirst");
    let dir = tempfile::tempdir().unwrap();
    let web = |version: &str| {
        task(
            "serve-http",
            &["BERTH_PORT_http"],
            &format!(
                "ports: {{http: {{}}}}\nupdate: {{order: start-first, min_healthy: 2s}}\nenv: {{VERSION: \"{version}\"}}\n"
            ),
        )
    };
    write(dir.path(), "web.yaml", &web("1"));
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("web", 0)]);
    let name = ns.container_name("web", 0);
    let (v1_id, _, _) = seen(&name).unwrap();

    write(dir.path(), "web.yaml", &web("2"));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut samples = 0;
    let mut both = false;
    loop {
        let running: Vec<docker::PsEntry> = docker::ps(&ns.ns)
            .into_iter()
            .filter(|c| c.state == "running")
            .collect();
        assert!(
            !running.is_empty(),
            "no web container ran at sample {samples}"
        );
        both |= running.len() == 2;
        samples += 1;
        let done = seen(&name).is_some_and(|(id, run, version)| {
            id != v1_id && run && version == "2" && docker::ids(&ns.ns).len() == 1
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the update did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("FIGURE start-first: {samples} samples, every one with a running container");
    assert!(both, "the new container never ran beside the old one");
}

#[test]
fn run_once_waits_for_the_gate_and_exits_1_after_a_rollback() {
    let ns = TestNamespace::new("oncegate");
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "--once",
        "--manifests",
        dir.path().to_str().unwrap(),
        "--namespace",
        &ns.ns,
    ];
    write(dir.path(), "web.yaml", &v("1", "sleep", &["forever"]));
    let out = run_berth(&args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    write(
        dir.path(),
        "web.yaml",
        &v("2", "exit", &["1", "--after", "2000"]),
    );
    let out = run_berth(&args, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("web[0]: update held: rolled back: exited with code 1"),
        "{err}"
    );
    assert_eq!(seen(&ns.container_name("web", 0)).unwrap().2, "1");

    // A good v3 passes its 4 s gate before run --once says converged.
    write(dir.path(), "web.yaml", &v("3", "sleep", &["forever"]));
    let started = Instant::now();
    let out = run_berth(&args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "did not wait for the gate"
    );
    assert_eq!(seen(&ns.container_name("web", 0)).unwrap().2, "3");
    assert_eq!(docker::ids(&ns.ns).len(), 1);
}

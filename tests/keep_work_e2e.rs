//! berth keeps running work: nothing a person did not ask for stops a
//! running container. Each test starts a real `berth run`, does to the
//! folder or the host what users' hosts live through (an empty file, a slow
//! writer, an unmounted disk, a second agent, a bad update) and asserts the
//! running container's id and start time did not change.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::process::Berth;
use common::{docker, fixture_image, fixture_task, run_berth, wait_for_sync, write, TestNamespace};

const START: Duration = Duration::from_secs(60);

fn sleeper(extra: &str) -> String {
    fixture_task("sleep", &["forever"], &format!("stop_timeout: 1s\n{extra}"))
}

/// (id, StartedAt, running) of a container.
fn identity(name: &str) -> Option<(String, String, bool)> {
    let c = docker::inspect(name)?;
    Some((
        c["Id"].as_str()?.to_string(),
        c["State"]["StartedAt"].as_str()?.to_string(),
        c["State"]["Running"].as_bool()?,
    ))
}

/// Docker's `die` events of `name` since `since`.
fn deaths(name: &str, since: SystemTime) -> usize {
    docker::events(
        since,
        &[&format!("container={name}"), "event=die"],
        "{{.ID}}",
    )
    .len()
}

/// Wait until berth has looked at the folder as it is now: a pass that
/// started after this call and finished. The tests run berth with a 1 s
/// resync, so a pass comes whatever triggers there are.
fn wait_for_a_pass_after(berth: &Berth, passes_before: usize) {
    wait_for_sync(Duration::from_secs(20), "a later pass", || {
        (berth.passes() > passes_before + 1).then_some(())
    });
}

#[test]
fn an_empty_or_comment_only_file_keeps_its_running_container() {
    let ns = TestNamespace::new("emptyfile");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &sleeper(""));
    let berth = Berth::start(
        &ns,
        dir.path(),
        &["--removal-delay", "1s", "--resync", "1s"],
    );
    berth.wait_running(START, &[("web", 0)]);
    let name = ns.container_name("web", 0);
    let before = identity(&name).unwrap();

    for empty in ["", "# the editor crashed\n", "---\n"] {
        // `: > web.yaml`: what a crashed editor or a full disk leaves.
        write(dir.path(), "web.yaml", empty);
        berth.wait_for_log(Duration::from_secs(10), "defines no task");
        // Longer than the removal delay, with passes in between.
        let passes = berth.passes();
        std::thread::sleep(Duration::from_millis(1500));
        wait_for_a_pass_after(&berth, passes);
        assert_eq!(identity(&name), Some(before.clone()), "after {empty:?}");
    }
    let s = berth.status().unwrap();
    assert!(
        s["manifest_errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("web.yaml:") && e.contains("defines no task")),
        "{s}"
    );
}

#[test]
fn a_file_rewritten_slowly_in_place_removes_and_restarts_nothing() {
    let ns = TestNamespace::new("slowwrite");
    let dir = tempfile::tempdir().unwrap();
    let doc = |name: &str| format!("name: {name}\n{}", sleeper(""));
    let both = format!("{}---\n{}", doc("a"), doc("b"));
    write(dir.path(), "two.yaml", &both);
    let berth = Berth::start(
        &ns,
        dir.path(),
        &["--removal-delay", "5s", "--resync", "1s"],
    );
    berth.wait_running(START, &[("a", 0), ("b", 0)]);
    let b = ns.container_name("b", 0);
    let before = identity(&b).unwrap();
    let since = SystemTime::now();

    // A slow writer: the first document, a pause, then the second.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.path().join("two.yaml")).unwrap();
        f.write_all(doc("a").as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        f.write_all(format!("---\n{}", doc("b")).as_bytes())
            .unwrap();
    }
    // Past the removal delay since the half-written moment.
    std::thread::sleep(Duration::from_secs(4));
    let passes = berth.passes();
    wait_for_a_pass_after(&berth, passes);
    assert_eq!(identity(&b), Some(before), "b[0] was touched");
    assert_eq!(deaths(&b, since), 0);
}

#[test]
fn an_emptied_folder_holds_every_removal_until_the_manifests_are_back() {
    let ns = TestNamespace::new("emptied");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &sleeper(""));
    write(dir.path(), "api.yaml", &sleeper(""));
    let berth = Berth::start(
        &ns,
        dir.path(),
        &["--removal-delay", "1s", "--resync", "1s"],
    );
    berth.wait_running(START, &[("web", 0), ("api", 0)]);
    let web = identity(&ns.container_name("web", 0)).unwrap();
    let api = identity(&ns.container_name("api", 0)).unwrap();

    // What an unmounted disk leaves at its mount point: an empty folder.
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("api.yaml")).unwrap();
    let held = wait_for_sync(Duration::from_secs(10), "removals held in status", || {
        berth.status()?["removals_held"]
            .as_str()
            .map(str::to_string)
    });
    assert!(held.contains("has no manifest"), "{held}");
    let passes = berth.passes();
    std::thread::sleep(Duration::from_secs(2));
    wait_for_a_pass_after(&berth, passes);
    assert_eq!(identity(&ns.container_name("web", 0)), Some(web.clone()));
    assert_eq!(identity(&ns.container_name("api", 0)), Some(api.clone()));
    let (_, metrics) = berth.get("/metrics").unwrap();
    assert!(metrics.contains("berth_removals_held 1"), "{metrics}");

    // The disk comes back: nothing restarts.
    write(dir.path(), "web.yaml", &sleeper(""));
    write(dir.path(), "api.yaml", &sleeper(""));
    wait_for_sync(Duration::from_secs(10), "the hold lifted", || {
        berth.status()?["removals_held"].is_null().then_some(())
    });
    assert_eq!(identity(&ns.container_name("web", 0)), Some(web));
    assert_eq!(identity(&ns.container_name("api", 0)), Some(api));
}

#[test]
fn allow_empty_lets_an_emptied_folder_empty_the_host() {
    let ns = TestNamespace::new("allowempty");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &sleeper(""));
    let berth = Berth::start(&ns, dir.path(), &["--removal-delay", "1s", "--allow-empty"]);
    berth.wait_running(START, &[("web", 0)]);
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    wait_for_sync(Duration::from_secs(20), "web-0 removed", || {
        identity(&ns.container_name("web", 0))
            .is_none()
            .then_some(())
    });
}

#[test]
fn a_removal_waits_for_the_removal_delay_and_plan_shows_it_pending() {
    let ns = TestNamespace::new("delay");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &sleeper("count: 2\n"));
    let berth = Berth::start(&ns, dir.path(), &["--removal-delay", "4s"]);
    berth.wait_running(START, &[("web", 0), ("web", 1)]);
    let web1 = ns.container_name("web", 1);

    write(dir.path(), "web.yaml", &sleeper("count: 1\n"));
    let lowered = Instant::now();
    let plan = run_berth(
        &[
            "plan",
            "--manifests",
            dir.path().to_str().unwrap(),
            "--namespace",
            &ns.ns,
            "--removal-delay",
            "4s",
        ],
        Duration::from_secs(30),
    );
    let shown = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("remove web[1]") && shown.contains("once the folder has been quiet"),
        "{shown}"
    );
    let due = wait_for_sync(Duration::from_secs(5), "a due time in status", || {
        berth.status()?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["index"] == 1)?["removal_due"]
            .as_u64()
    });
    assert!(due > 0);
    wait_for_sync(Duration::from_secs(30), "web-1 removed", || {
        identity(&web1).is_none().then_some(())
    });
    let took = lowered.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "removed after {took:?}, before the delay"
    );
    assert!(identity(&ns.container_name("web", 0)).is_some_and(|i| i.2));
}

#[test]
fn a_second_agent_on_the_same_namespace_refuses_to_start() {
    let ns = TestNamespace::new("twoagents");
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "web.yaml", &sleeper(""));
    write(b.path(), "api.yaml", &sleeper(""));
    let first = Berth::start(&ns, a.path(), &[]);
    first.wait_running(START, &[("web", 0)]);
    let web = identity(&ns.container_name("web", 0)).unwrap();

    let out = run_berth(
        &[
            "run",
            "--manifests",
            b.path().to_str().unwrap(),
            "--namespace",
            &ns.ns,
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already managed by another berth"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(err.contains(a.path().to_str().unwrap()), "{err}");
    assert!(identity(&ns.container_name("api", 0)).is_none());
    assert_eq!(identity(&ns.container_name("web", 0)), Some(web));
}

#[test]
fn an_update_docker_refuses_never_stops_the_running_container() {
    let ns = TestNamespace::new("refused");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "side.yaml", &sleeper(""));
    write(dir.path(), "web.yaml", &sleeper(""));
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("web", 0), ("side", 0)]);
    let name = ns.container_name("web", 0);
    let before = identity(&name).unwrap();
    let since = SystemTime::now();

    // Passes validate; Docker answers 400 "conflicting options".
    write(
        dir.path(),
        "web.yaml",
        &sleeper(&format!(
            "hostname: web1\nnetwork_mode: \"container:{}\"\n",
            ns.container_name("side", 0)
        )),
    );
    let held = wait_for_sync(Duration::from_secs(20), "the update held", || {
        berth.status()?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["task"] == "web")?["held"]
            .as_str()
            .map(str::to_string)
    });
    assert!(held.contains("conflicting options"), "{held}");
    assert_eq!(identity(&name), Some(before));
    assert_eq!(deaths(&name, since), 0, "the old container was stopped");
    assert!(
        docker::ps(&ns.ns).iter().all(|c| !c.name.contains("-new-")),
        "a staged container was left behind"
    );
}

#[test]
fn a_failed_update_is_rolled_back_once_and_held_until_retry_and_its_old_container_restarted() {
    let ns = TestNamespace::new("held");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "web.yaml",
        &sleeper("restart: {delay: 200ms, max_delay: 1s}\n"),
    );
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("web", 0)]);
    let name = ns.container_name("web", 0);
    let (old_id, _, _) = identity(&name).unwrap();
    let since = SystemTime::now();

    // The new spec cannot start.
    write(
        dir.path(),
        "web.yaml",
        &format!(
            "image: {}\npull: never\nentrypoint: [\"/no-such-program\"]\nstop_timeout: 1s\nrestart: {{delay: 200ms, max_delay: 1s}}\n",
            fixture_image()
        ),
    );
    wait_for_sync(Duration::from_secs(20), "the update held", || {
        berth.status()?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["task"] == "web")?["held"]
            .as_str()
            .map(str::to_string)
    });
    let after_rollback = identity(&name).unwrap();
    assert_eq!(after_rollback.0, old_id, "the old container is back");
    assert!(after_rollback.2, "and running");
    // Its backoff would have retried (and stopped the old one) several
    // times by now: it is held instead.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(deaths(&name, since), 1, "stopped once for the one attempt");
    assert_eq!(identity(&name), Some(after_rollback));

    // `berth retry web` tries once more, and holds again.
    let retried_at = SystemTime::now();
    let out = run_berth(
        &["retry", "web", "--listen", &berth.addr.to_string()],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_sync(Duration::from_secs(20), "one more attempt", || {
        (deaths(&name, retried_at) == 1).then_some(())
    });
    wait_for_sync(Duration::from_secs(20), "held again, old running", || {
        let s = berth.status()?;
        let web = s["instances"]
            .as_array()?
            .iter()
            .find(|i| i["task"] == "web")?
            .clone();
        (web["held"].is_string() && identity(&name)?.2).then_some(())
    });
    let (id, started, _) = identity(&name).unwrap();
    assert_eq!(id, old_id);

    // The old container, kept by the hold, crashes: it is restarted like
    // any other, and the update stays held.
    docker::cli(&["kill", &name]);
    wait_for_sync(
        Duration::from_secs(20),
        "the old container restarted",
        || {
            let (id, again, running) = identity(&name)?;
            (id == old_id && running && again != started).then_some(())
        },
    );
    let s = berth.status().unwrap();
    let web = s["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["task"] == "web"))
        .cloned()
        .unwrap_or_default();
    assert!(web["held"].is_string(), "{s}");
}

#[test]
fn more_instances_than_max_instances_is_a_validation_error_naming_the_file() {
    let ns = TestNamespace::new("maxinst");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "many.yaml", &sleeper("count: 8\n"));
    write(dir.path(), "few.yaml", &sleeper("count: 1\n"));
    let args = [
        "--manifests",
        dir.path().to_str().unwrap(),
        "--namespace",
        &ns.ns,
        "--max-instances",
        "5",
    ];
    let out = run_berth(
        &[&["validate"][..], &args].concat(),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("many.yaml:1:1: asks for 8 instances"),
        "{text}"
    );
    assert!(text.contains("max_instances: 5"), "{text}");
    let out = run_berth(
        &[&["run", "--once"][..], &args].concat(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(identity(&ns.container_name("many", 0)).is_none());
    assert!(identity(&ns.container_name("few", 0)).is_some_and(|i| i.2));
}

/// berth killed -9 while it stops a slow container for an update, and the
/// file broken before berth comes back: the new spec is unknown now, so the
/// replacement cannot be finished. The old container, the same one, runs
/// again once the daemon's stop ends (it ignores SIGTERM and takes its whole
/// grace), and the replacement's never-started container is gone.
#[test]
fn an_update_cut_short_by_kill_9_mid_stop_then_a_broken_file_runs_the_old_container_again() {
    let ns = TestNamespace::new("midstop");
    let dir = tempfile::tempdir().unwrap();
    let slow = |v: &str| {
        fixture_task(
            "sleep",
            &["forever"],
            &format!("stop_timeout: 4s\nenv: {{FIXTURE_ON_TERM: ignore, V: \"{v}\"}}\n"),
        )
    };
    write(dir.path(), "web.yaml", &slow("1"));
    let mut berth = Berth::start(&ns, dir.path(), &["--resync", "1s"]);
    berth.wait_running(START, &[("web", 0)]);
    let name = ns.container_name("web", 0);
    let (old_id, old_started, _) = identity(&name).unwrap();

    write(dir.path(), "web.yaml", &slow("2"));
    wait_for_sync(
        Duration::from_secs(20),
        "the old container stopping",
        || {
            let s = berth.status()?;
            let work = &s["instances"].as_array()?.first()?["work"];
            (work["action"] == "replace" && work["step"] == "stopping").then_some(())
        },
    );
    berth.kill9();
    let (id, _, running) = identity(&name).unwrap();
    assert_eq!(id, old_id);
    assert!(running, "killed mid-stop: the daemon is still stopping it");
    write(dir.path(), "web.yaml", "image: [unclosed\n");

    let berth = Berth::start(&ns, dir.path(), &["--resync", "1s"]);
    berth.wait_for_log(Duration::from_secs(20), "web.yaml");
    // The daemon's stop ends within the 4 s grace; then berth starts it.
    let (id, started, _) = wait_for_sync(Duration::from_secs(30), "web-0 running again", || {
        identity(&name).filter(|(_, started, running)| *running && *started != old_started)
    });
    assert_eq!(id, old_id, "the old container itself runs again");
    wait_for_sync(
        Duration::from_secs(20),
        "the staged container removed",
        || {
            let left: Vec<String> = docker::ps(&ns.ns).into_iter().map(|c| c.name).collect();
            (left == [name.clone()]).then_some(())
        },
    );
    // And it is left running.
    let passes = berth.passes();
    wait_for_a_pass_after(&berth, passes);
    assert_eq!(identity(&name), Some((old_id, started, true)));
}

//! Dependencies and jobs against the real daemon: a web task that depends
//! on a healthy database starts only after the database's healthcheck
//! passes, and `down` stops it first; a job runs once, succeeds, is never
//! restarted and runs again after a spec change; a failing job is tried
//! `max_attempts` times, then `failed`, and `run --once` exits 1; a
//! scheduled job runs at its slots and skips a slot while a run goes on;
//! a dependency cycle fails `validate` naming both files.

mod common;

use std::time::{Duration, SystemTime};

use common::process::Berth;
use common::{docker, fixture_task, run_berth, run_once, wait_for_sync, write, TestNamespace};

const START: Duration = Duration::from_secs(60);

/// Docker's events for the namespace since `since`, as
/// `(unix nanos, action, container name)`, oldest first.
fn events(ns: &str, since: SystemTime) -> Vec<(u128, String, String)> {
    docker::events(
        since,
        &[&format!("label=io.berth.namespace={ns}")],
        "{{.TimeNano}}|{{.Action}}|{{.Actor.Attributes.name}}",
    )
    .into_iter()
    .filter_map(|line| {
        let mut parts = line.splitn(3, '|');
        Some((
            parts.next()?.parse().ok()?,
            parts.next()?.to_string(),
            parts.next()?.to_string(),
        ))
    })
    .collect()
}

/// When `name` first had `action` (e.g. `create`, `start`,
/// `health_status: healthy`), in unix nanos.
fn first(events: &[(u128, String, String)], action: &str, name: &str) -> Option<u128> {
    events
        .iter()
        .find(|(_, a, n)| a == action && n == name)
        .map(|(t, _, _)| *t)
}

fn count(events: &[(u128, String, String)], action: &str, name: &str) -> usize {
    events
        .iter()
        .filter(|(_, a, n)| a == action && n == name)
        .count()
}

fn instance(berth: &Berth, task: &str) -> Option<serde_json::Value> {
    berth.status()?["instances"]
        .as_array()?
        .iter()
        .find(|i| i["task"] == task)
        .cloned()
}

#[test]
fn a_web_task_waits_for_its_database_to_be_healthy_and_down_stops_it_first() {
    let ns = TestNamespace::new("deps");
    let dir = tempfile::tempdir().unwrap();
    let since = SystemTime::now();
    // db is healthy once /ready exists; the test puts it there with
    // `docker cp` (the fixture image has no shell). Until then its health
    // is `starting` (many retries), never unhealthy.
    write(
        dir.path(),
        "db.yaml",
        &fixture_task(
            "sleep",
            &["forever"],
            "stop_timeout: 1s\nhealthcheck:\n  test: [\"CMD\", \"/fixture\", \"healthy-file\", \"/ready\"]\n  interval: 500ms\n  retries: 1000\n",
        ),
    );
    write(
        dir.path(),
        "web.yaml",
        &fixture_task(
            "sleep",
            &["forever"],
            "stop_timeout: 1s\ndepends_on:\n  db: healthy\n",
        ),
    );
    let berth = Berth::start(&ns, dir.path(), &[]);
    let db = ns.container_name("db", 0);
    let web = ns.container_name("web", 0);
    wait_for_sync(START, "db to run", || {
        docker::inspect(&db)?["State"]["Running"]
            .as_bool()
            .filter(|r| *r)
    });
    let waiting = wait_for_sync(START, "web to report its wait", || {
        instance(&berth, "web")?["waiting"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(waiting, "waiting for db (healthy)");
    assert!(
        docker::inspect(&web).is_none(),
        "web exists before db is healthy"
    );

    let ready = dir.path().join("ready");
    std::fs::write(&ready, "").unwrap();
    docker::cli(&["cp", ready.to_str().unwrap(), &format!("{db}:/ready")]);
    berth.wait_running(START, &[("db", 0), ("web", 0)]);

    let seen = events(&ns.ns, since);
    let healthy = first(&seen, "health_status: healthy", &db).expect("db turned healthy");
    let created = first(&seen, "create", &web).expect("web was created");
    assert!(
        created > healthy,
        "web was created {} ms before db was healthy",
        (healthy - created) / 1_000_000
    );
    drop(berth);

    // Down: web (which depends on db) stops before db does.
    let down_since = SystemTime::now();
    let out = run_berth(
        &[
            "down",
            "--namespace",
            &ns.ns,
            "--manifests",
            dir.path().to_str().unwrap(),
        ],
        START,
    );
    assert!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = events(&ns.ns, down_since);
    let web_died = first(&seen, "die", &web).expect("web stopped");
    let db_killed = first(&seen, "kill", &db).expect("db stopped");
    assert!(
        web_died < db_killed,
        "db was stopped before web had stopped"
    );
}

#[test]
fn a_job_runs_once_is_not_restarted_and_runs_again_after_a_spec_change() {
    let ns = TestNamespace::new("job");
    let dir = tempfile::tempdir().unwrap();
    let since = SystemTime::now();
    let job = |version: &str| {
        fixture_task(
            "exit",
            &["0", "--after", "500"],
            &format!("kind: job\nenv: {{VERSION: \"{version}\"}}\n"),
        )
    };
    write(dir.path(), "migrate.yaml", &job("1"));
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("migrate", 0);
    let succeeded = |berth: &Berth| {
        let i = instance(berth, "migrate")?;
        (i["state"] == "succeeded").then_some(i)
    };
    let done = wait_for_sync(START, "the job to succeed", || succeeded(&berth));
    assert!(
        done["job"]
            .as_str()
            .unwrap_or_default()
            .starts_with("succeeded"),
        "{done}"
    );
    let first_id = docker::inspect(&name).unwrap()["Id"].clone();
    // Kept, exited 0, and not started again across several passes (each
    // SIGHUP is one).
    for _ in 0..3 {
        let passes = berth.passes();
        berth.signal("-HUP");
        wait_for_sync(START, "a pass after SIGHUP", || {
            (berth.passes() > passes).then_some(())
        });
    }
    let c = docker::inspect(&name).unwrap();
    assert_eq!(c["State"]["Status"], "exited");
    assert_eq!(c["State"]["ExitCode"], 0);
    assert_eq!(count(&events(&ns.ns, since), "start", &name), 1);

    // A new spec runs it again, in a new container.
    write(dir.path(), "migrate.yaml", &job("2"));
    wait_for_sync(START, "the new spec to run and succeed", || {
        let c = docker::inspect(&name)?;
        (c["Id"] != first_id && c["State"]["Status"] == "exited").then_some(())
    });
    wait_for_sync(START, "status to say succeeded", || succeeded(&berth));
    assert_eq!(count(&events(&ns.ns, since), "start", &name), 2);
}

#[test]
fn a_failing_job_is_tried_max_attempts_times_then_failed_and_run_once_exits_1() {
    let ns = TestNamespace::new("jobfail");
    let dir = tempfile::tempdir().unwrap();
    let since = SystemTime::now();
    write(
        dir.path(),
        "flaky.yaml",
        &fixture_task(
            "exit",
            &["1"],
            "kind: job\nmax_attempts: 3\nrestart: {delay: 200ms, max_delay: 1s}\n",
        ),
    );
    let out = run_once(dir.path(), &ns.ns, START);
    let all = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("failed after 3 attempts: exit 1"), "{all}");
    let name = ns.container_name("flaky", 0);
    assert_eq!(count(&events(&ns.ns, since), "start", &name), 3, "{all}");
    let c = docker::inspect(&name).expect("the failed job's container is kept");
    assert_eq!(c["State"]["ExitCode"], 1);
}

#[test]
fn a_scheduled_job_runs_at_its_slots_and_skips_one_while_a_run_goes_on() {
    let ns = TestNamespace::new("sched");
    let dir = tempfile::tempdir().unwrap();
    let since = SystemTime::now();
    // Every 10 s (the 6-field form, seconds first); each run takes 15 s,
    // so every other slot comes while a run goes on and is skipped.
    write(
        dir.path(),
        "tick.yaml",
        &fixture_task(
            "sleep",
            &["15"],
            "kind: job\nschedule: \"*/10 * * * * *\"\nstop_timeout: 1s\n",
        ),
    );
    // Start clear of a slot: one due within the first moments would run
    // the job before its first status could show it waiting.
    let into_period = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 10_000;
    if !(500..6_000).contains(&into_period) {
        // Until 0.5 s into the next period: a clock position, not a guess.
        let wait = (10_500 - into_period) % 10_000;
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let berth = Berth::start(&ns, dir.path(), &[]);
    let name = ns.container_name("tick", 0);
    let scheduled = wait_for_sync(START, "the job to wait for its slot", || {
        let i = instance(&berth, "tick")?;
        i["next_run"].as_u64().map(|_| i)
    });
    assert_eq!(scheduled["state"], "scheduled", "{scheduled}");
    wait_for_sync(Duration::from_secs(90), "two runs", || {
        (count(&events(&ns.ns, since), "start", &name) >= 2).then_some(())
    });
    let seen = events(&ns.ns, since);
    let starts: Vec<u128> = seen
        .iter()
        .filter(|(_, a, n)| a == "start" && n == &name)
        .map(|(t, _, _)| *t)
        .collect();
    let died = first(&seen, "die", &name).expect("the first run ended");
    assert!(
        died < starts[1],
        "the second run started before the first ended"
    );
    let gap = Duration::from_nanos((starts[1] - starts[0]) as u64);
    assert!(
        gap >= Duration::from_secs(19),
        "the slot during the first run was not skipped: runs {gap:?} apart"
    );
    berth.wait_for_log(START, "scheduled run skipped");
    let status = berth.status().unwrap();
    assert!(status["time_zone"].as_str().is_some(), "{status}");
}

#[test]
fn a_dependency_cycle_fails_validate_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "web.yaml",
        "image: web:1\ndepends_on:\n  db: healthy\n",
    );
    write(
        dir.path(),
        "db.yaml",
        "image: db:1\ndepends_on:\n  web: started\n",
    );
    let out = run_berth(&["validate", dir.path().to_str().unwrap()], START);
    let err = common::output_text(&out);
    assert!(!out.status.success(), "{err}");
    let web_line = err
        .lines()
        .find(|l| l.contains("web.yaml:3:3"))
        .unwrap_or_else(|| panic!("no error at web's entry: {err}"));
    assert!(
        web_line.contains("dependency cycle") && web_line.contains("db.yaml:1"),
        "{web_line}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("db.yaml:3:3") && l.contains("web.yaml:1")),
        "{err}"
    );
}

//! The engine against the real daemon: nothing one instance does delays
//! another. Slow stops (a process that ignores SIGTERM), a pull that hangs,
//! many new tasks queued for their creates and starts, and `run --once`
//! telling the truth about crash loops and errors that waiting cannot fix;
//! removals and `down` honour each task's stop grace.
//!
//! Each test starts its own berth on its own namespace and folder.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::process::Berth;
use common::{
    docker, fixture_image, fixture_task, run_berth, run_once, wait_for_sync, write, TestNamespace,
};

/// A task running the fixture forever, with extra YAML lines.
fn sleeper(extra: &str) -> String {
    fixture_task("sleep", &["forever"], extra)
}

/// (id, running, StartedAt) of a container, from `docker inspect`.
fn state(name: &str) -> Option<(String, bool, String)> {
    let c = docker::inspect(name)?;
    Some((
        c["Id"].as_str()?.to_string(),
        c["State"]["Running"].as_bool()?,
        c["State"]["StartedAt"].as_str()?.to_string(),
    ))
}

/// Kill `name` and measure until it runs again (a new start time).
fn kill_and_time_restart(name: &str) -> Duration {
    let (_, _, started) = state(name).expect("container exists");
    let killed = Instant::now();
    docker::cli(&["kill", name]);
    wait_for_sync(
        Duration::from_secs(20),
        "the killed container to run again",
        || state(name).filter(|(_, running, s)| *running && *s != started),
    );
    killed.elapsed()
}

/// Docker's own record of `die` events of a namespace since `since`, as
/// (container name, exit code).
fn deaths(ns: &str, since: SystemTime) -> Vec<(String, String)> {
    docker::events(
        since,
        &[&format!("label=io.berth.namespace={ns}"), "event=die"],
        "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
    )
    .into_iter()
    .filter_map(|l| {
        l.split_once(' ')
            .map(|(n, c)| (n.to_string(), c.to_string()))
    })
    .collect()
}

/// A registry that accepts connections and never answers: a pull from it
/// hangs until Docker gives up (about 25 s here).
struct HangingRegistry {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl HangingRegistry {
    fn start() -> HangingRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HangingRegistry { port, stop }
    }
}

impl Drop for HangingRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const START: Duration = Duration::from_secs(60);

#[test]
fn a_killed_task_runs_again_within_two_seconds_while_a_30s_grace_replacement_is_in_flight() {
    let ns = TestNamespace::new("slowstop");
    let dir = tempfile::tempdir().unwrap();
    let slow = "stop_timeout: 30s\nenv: {FIXTURE_ON_TERM: ignore, V: \"1\"}\n";
    write(dir.path(), "slow.yaml", &sleeper(slow));
    write(dir.path(), "victim.yaml", &sleeper("stop_timeout: 1s\n"));
    let berth = Berth::start(&ns, dir.path(), &[]);
    let slow_name = ns.container_name("slow", 0);
    let victim = ns.container_name("victim", 0);
    berth.wait_running(START, &[("slow", 0), ("victim", 0)]);
    let (old_id, _, _) = state(&slow_name).unwrap();

    // The env change makes berth stop the old container: it ignores SIGTERM,
    // so the stop takes the whole 30 s grace.
    write(
        dir.path(),
        "slow.yaml",
        &sleeper("stop_timeout: 30s\nenv: {FIXTURE_ON_TERM: ignore, V: \"2\"}\n"),
    );
    berth.wait_for_log(Duration::from_secs(10), "dispatched");
    std::thread::sleep(Duration::from_millis(1500));
    let took = kill_and_time_restart(&victim);
    eprintln!("FIGURE kill → running during a 30 s stop: {took:?}");
    assert!(
        took <= Duration::from_secs(2),
        "the victim waited {took:?} behind the slow stop"
    );
    // The slow replacement really was in flight all along.
    let (id, running, _) = state(&slow_name).expect("slow's old container");
    assert_eq!(id, old_id, "the replacement finished early");
    assert!(running, "still stopping: SIGTERM is ignored");
}

#[test]
fn a_killed_task_runs_again_within_two_seconds_while_many_new_tasks_are_being_created() {
    let ns = TestNamespace::new("coldkill");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "victim.yaml", &sleeper("stop_timeout: 1s\n"));
    // One create or start at a time: 30 new tasks take several seconds.
    let berth = Berth::start(&ns, dir.path(), &["--parallelism", "1"]);
    berth.wait_running(START, &[("victim", 0)]);
    let victim = ns.container_name("victim", 0);

    let new: Vec<String> = (0..30).map(|i| format!("n{i:02}")).collect();
    for task in &new {
        write(
            dir.path(),
            &format!("{task}.yaml"),
            &sleeper("stop_timeout: 1s\n"),
        );
    }
    // New tasks' containers running (the victim is not one of them).
    let running = || {
        docker::ps(&ns.ns)
            .iter()
            .filter(|c| c.state == "running" && c.name != victim)
            .count()
    };
    wait_for_sync(START, "the first new task running", || {
        (running() > 0).then_some(())
    });
    let waiting = new.len() - running();
    let took = kill_and_time_restart(&victim);
    eprintln!("FIGURE kill → running while {waiting} of 30 new tasks waited: {took:?}");
    assert!(
        took <= Duration::from_secs(2),
        "the restart waited {took:?} behind the new tasks' creates and starts"
    );
    assert!(
        waiting >= 10,
        "only {waiting} new tasks were in flight at the kill"
    );
    berth.wait_running(
        START,
        &new.iter().map(|t| (t.as_str(), 0)).collect::<Vec<_>>(),
    );
}

#[test]
fn a_hanging_pull_delays_neither_a_restart_nor_a_new_manifest() {
    let ns = TestNamespace::new("hangpull");
    let dir = tempfile::tempdir().unwrap();
    let registry = HangingRegistry::start();
    write(dir.path(), "app.yaml", &sleeper("stop_timeout: 1s\n"));
    write(dir.path(), "victim.yaml", &sleeper("stop_timeout: 1s\n"));
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("app", 0), ("victim", 0)]);
    let app = ns.container_name("app", 0);
    let (app_id, _, _) = state(&app).unwrap();

    // app's new image must be pulled from a registry that never answers.
    write(
        dir.path(),
        "app.yaml",
        &format!(
            "image: 127.0.0.1:{}/hang:1\ncommand: sleep\nargs: [\"forever\"]\nstop_timeout: 1s\n",
            registry.port
        ),
    );
    wait_for_sync(Duration::from_secs(10), "status to show the pull", || {
        let s = berth.status()?;
        let work = s["instances"]
            .as_array()?
            .iter()
            .find(|i| i["task"] == "app")?["work"]
            .clone();
        (work["step"] == "pulling").then_some(())
    });

    let took = kill_and_time_restart(&ns.container_name("victim", 0));
    let dropped = Instant::now();
    write(dir.path(), "fresh.yaml", &sleeper("stop_timeout: 1s\n"));
    wait_for_sync(
        Duration::from_secs(10),
        "the new manifest's container",
        || state(&ns.container_name("fresh", 0)).filter(|s| s.1),
    );
    let fresh = dropped.elapsed();
    eprintln!(
        "FIGURE during a hanging pull: kill → running {took:?}, new manifest → running {fresh:?}"
    );
    assert!(took <= Duration::from_secs(3), "restart took {took:?}");
    assert!(
        fresh <= Duration::from_secs(3),
        "new manifest took {fresh:?}"
    );
    // The old app keeps running until its new image is present.
    let (id, running, _) = state(&app).unwrap();
    assert_eq!(id, app_id);
    assert!(running);
}

#[test]
fn healthz_stays_200_while_a_stop_takes_its_60s_grace() {
    let ns = TestNamespace::new("healthstop");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "slow.yaml",
        &sleeper("stop_timeout: 60s\nenv: {FIXTURE_ON_TERM: ignore, V: \"1\"}\n"),
    );
    // A short resync: the old loop, blocked in the stop, went 503 after 3 of them.
    let berth = Berth::start(&ns, dir.path(), &["--resync", "2s"]);
    berth.wait_running(START, &[("slow", 0)]);
    write(
        dir.path(),
        "slow.yaml",
        &sleeper("stop_timeout: 60s\nenv: {FIXTURE_ON_TERM: ignore, V: \"2\"}\n"),
    );
    wait_for_sync(Duration::from_secs(10), "status to show the stop", || {
        let s = berth.status()?;
        let work = &s["instances"].as_array()?.first()?["work"];
        (work["action"] == "replace" && work["step"] == "stopping").then_some(())
    });
    let watched = Instant::now();
    let mut answers = 0;
    while watched.elapsed() < Duration::from_secs(20) {
        let asked = Instant::now();
        let (code, body) = berth.get("/healthz").expect("/healthz answers");
        assert_eq!(code, 200, "during the stop: {body}");
        assert!(asked.elapsed() < Duration::from_secs(1), "slow answer");
        answers += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(answers >= 30);
    let s = berth.status().unwrap();
    assert_eq!(
        s["instances"][0]["work"]["step"], "stopping",
        "the stop was in flight all along"
    );
}

#[test]
fn run_once_exits_1_naming_a_crash_loop() {
    let ns = TestNamespace::new("onceloop");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "api.yaml",
        &format!(
            "image: {}\npull: never\ncommand: exit\nargs: [\"1\", \"--after\", \"300\"]\nrestart: {{delay: 200ms, max_delay: 1s}}\n",
            fixture_image()
        ),
    );
    write(dir.path(), "ok.yaml", &sleeper("stop_timeout: 1s\n"));
    let out = run_once(dir.path(), &ns.ns, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("api[0]: exited with code 1, 3 times"),
        "{stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("ok[0]")),
        "the good task converged: {stderr}"
    );
}

#[test]
fn run_once_exits_1_within_10s_on_errors_waiting_cannot_fix() {
    let ns = TestNamespace::new("oncefatal");
    let dir = tempfile::tempdir().unwrap();
    // A missing image that may not be pulled.
    write(
        dir.path(),
        "ghost.yaml",
        "image: berth-no-such-image:1\npull: never\n",
    );
    // A name held by a container berth does not own.
    ns.foreign(&ns.container_name("taken", 0), &[]);
    write(dir.path(), "taken.yaml", &sleeper(""));
    // Options Docker refuses (400): a hostname with a sidecar's network.
    write(
        dir.path(),
        "refused.yaml",
        &sleeper(&format!(
            "hostname: h1\nnetwork_mode: \"container:{}\"\n",
            ns.container_name("ok", 0)
        )),
    );
    write(dir.path(), "ok.yaml", &sleeper("stop_timeout: 1s\n"));
    let started = Instant::now();
    let out = run_once(dir.path(), &ns.ns, Duration::from_secs(60));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("FIGURE run --once with permanent errors: {took:?}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("ghost[0]") && stderr.contains("pull: never"),
        "{stderr}"
    );
    assert!(
        stderr.contains("taken[0]") && stderr.contains("berth does not own"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refused[0]") && stderr.contains("refused by the container engine"),
        "{stderr}"
    );
    assert!(state(&ns.container_name("ok", 0)).is_some_and(|s| s.1));
}

#[test]
fn scale_down_and_task_removal_honour_the_tasks_stop_timeout() {
    let ns = TestNamespace::new("grace");
    let dir = tempfile::tempdir().unwrap();
    // Exits cleanly 12 s after SIGTERM: longer than Docker's default 10 s,
    // shorter than the task's grace.
    let lingering = "stop_timeout: 20s\nenv: {FIXTURE_ON_TERM: \"exit-after=12000\"}\n";
    write(
        dir.path(),
        "web.yaml",
        &sleeper(&format!("count: 2\n{lingering}")),
    );
    write(dir.path(), "gone.yaml", &sleeper(lingering));
    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(START, &[("web", 0), ("web", 1), ("gone", 0)]);
    let since = SystemTime::now();

    write(
        dir.path(),
        "web.yaml",
        &sleeper(&format!("count: 1\n{lingering}")),
    );
    std::fs::remove_file(dir.path().join("gone.yaml")).unwrap();
    wait_for_sync(Duration::from_secs(40), "both removals done", || {
        (state(&ns.container_name("web", 1)).is_none()
            && state(&ns.container_name("gone", 0)).is_none())
        .then_some(())
    });
    let died = deaths(&ns.ns, since);
    for name in [ns.container_name("web", 1), ns.container_name("gone", 0)] {
        let code = died
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.as_str());
        assert_eq!(
            code,
            Some("0"),
            "{name} was killed, not given its grace: {died:?}"
        );
    }
    assert!(state(&ns.container_name("web", 0)).is_some_and(|s| s.1));
}

#[test]
fn down_stops_every_container_at_once_each_with_its_grace() {
    let ns = TestNamespace::new("down");
    let dir = tempfile::tempdir().unwrap();
    let lingering = "stop_timeout: 20s\nenv: {FIXTURE_ON_TERM: \"exit-after=12000\"}\n";
    write(
        dir.path(),
        "a.yaml",
        &sleeper(&format!("count: 3\n{lingering}")),
    );
    let out = run_once(dir.path(), &ns.ns, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bystander = ns.foreign(&format!("{}-bystander", ns.ns), &[]);

    // --dry-run shows and changes nothing.
    let dry = run_berth(
        &["down", "--namespace", &ns.ns, "--dry-run"],
        Duration::from_secs(30),
    );
    let shown = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success());
    assert_eq!(shown.matches("remove a[").count(), 3, "{shown}");
    assert_eq!(docker::ids(&ns.ns).len(), 3);

    let since = SystemTime::now();
    let started = Instant::now();
    let out = run_berth(&["down", "--namespace", &ns.ns], Duration::from_secs(60));
    let took = started.elapsed();
    eprintln!("FIGURE down of 3 containers lingering 12 s after SIGTERM: {took:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(docker::ids(&ns.ns).is_empty());
    assert!(
        took < Duration::from_secs(20),
        "one after another would take 36 s: {took:?}"
    );
    let died = deaths(&ns.ns, since);
    assert_eq!(died.len(), 3, "{died:?}");
    assert!(
        died.iter().all(|(_, code)| code == "0"),
        "killed before its grace: {died:?}"
    );
    assert!(
        docker::inspect(&bystander).is_some(),
        "a foreign container was touched"
    );
}

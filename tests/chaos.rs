//! Chaos, two runs against the real daemon. Each prints its seed, its steps
//! and its kills; `BERTH_CHAOS_SEED=<n>` replays one.
//!
//! 1. For a while (45 s by default, `BERTH_CHAOS_SECS=<n>`), at random, edit,
//!    delete, re-add and corrupt manifests; `docker kill` and `docker rm -f`
//!    berth's containers; kill -9 berth and start it again; start foreign
//!    look-alike containers. Then stop, let berth converge, and check that
//!    exactly the final folder runs: one container per (task, index), the
//!    right spec, no leftovers, and no foreign container touched.
//!    Throughout, no two containers of one identity may run at once.
//! 2. Keeping running work (`BERTH_CHAOS_STEPS=<n>` steps, 30 by default):
//!    slow replacements (the fixture ignores SIGTERM or takes 2 s to stop,
//!    `stop_timeout: 3s`) with berth killed -9 at random moments and at every
//!    crash point of a replacement; empty, broken and half-written files; the
//!    folder emptied and restored; a second agent on the namespace. A watcher
//!    samples `docker ps` all along and fails when an instance whose manifest
//!    stayed valid has no running container for longer than [`GAP_ALLOWED`],
//!    or when two run at once; at the end the host must match the folder
//!    exactly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::Berth;
use common::{
    berth_command, docker, fixture_image, fixture_task, run_berth, wait_for_sync, TestNamespace,
};

const TASKS: usize = 20;

/// xorshift64*: small, seedable, good enough to pick actions.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The berth under test: a 2 s resync, info logs appended to one file
/// across restarts.
fn chaos_berth(ns: &TestNamespace, manifests: &Path, log: &Path) -> Berth {
    Berth::run(ns, manifests)
        .args(&["--resync", "2s"])
        .rust_log("berth=info")
        .log_to(log)
        .start()
}

fn manifest(image: &str, generation: u64, count: u64) -> String {
    format!(
        "image: {image}\nargs: [\"sleep\", \"forever\"]\ncount: {count}\nstop_timeout: 1s\nenv:\n  GEN: \"{generation}\"\n"
    )
}

/// Write through a temporary file and a rename, as editors and git do.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write tmp");
    fs::rename(&tmp, path).expect("rename");
}

#[derive(Clone)]
enum FileState {
    Good { generation: u64, count: u64 },
    Corrupt { last_good: Option<(u64, u64)> },
    Deleted,
}

/// No two running containers may claim one (task, index) at any moment.
fn assert_one_running_per_identity(ns: &str, seed: u64) {
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for c in docker::ps(ns).into_iter().filter(|c| c.state == "running") {
        let key = (
            c.labels.get("io.berth.task").cloned().unwrap_or_default(),
            c.labels.get("io.berth.index").cloned().unwrap_or_default(),
        );
        if let Some(other) = seen.insert(key.clone(), c.name.clone()) {
            panic!("seed {seed}: {other} and {} both run {key:?}", c.name);
        }
    }
}

/// `BERTH_CHAOS_SEED`, else one from the clock; never 0 (xorshift would
/// stay 0).
fn chaos_seed() -> u64 {
    std::env::var("BERTH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        })
        .max(1)
}

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn berth_converges_to_the_final_folder_after_a_minute_of_chaos() {
    let seed = chaos_seed();
    let secs = env_number("BERTH_CHAOS_SECS", 45);
    eprintln!("chaos: seed {seed} ({secs} s); replay with BERTH_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let image = fixture_image();
    let ns = TestNamespace::new("chaos");
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests: PathBuf = dir.path().join("m");
    fs::create_dir(&manifests).expect("mkdir");
    let log = dir.path().join("berth.log");

    let mut files: Vec<FileState> = Vec::new();
    for i in 0..TASKS {
        let count = 1 + (i as u64 % 2);
        fs::write(
            manifests.join(format!("t{i:02}.yaml")),
            manifest(&image, 0, count),
        )
        .expect("write");
        files.push(FileState::Good {
            generation: 0,
            count,
        });
    }

    let mut berth = chaos_berth(&ns, &manifests, &log);
    let mut foreign: BTreeMap<String, String> = BTreeMap::new();
    let mut actions: BTreeMap<&str, u32> = BTreeMap::new();

    let until = Instant::now() + Duration::from_secs(secs);
    let mut step: u64 = 0;
    while Instant::now() < until {
        step += 1;
        let i = rng.below(TASKS as u64) as usize;
        let path = manifests.join(format!("t{i:02}.yaml"));
        let last_good = match &files[i] {
            FileState::Good { generation, count } => Some((*generation, *count)),
            FileState::Corrupt { last_good } => *last_good,
            FileState::Deleted => None,
        };
        let action = match rng.below(100) {
            0..=24 => {
                let generation = step;
                let count = 1 + rng.below(2);
                write_atomic(&path, &manifest(&image, generation, count));
                files[i] = FileState::Good { generation, count };
                "edit"
            }
            25..=34 => {
                let _ = fs::remove_file(&path);
                files[i] = FileState::Deleted;
                "delete"
            }
            35..=44 => {
                let count = 1 + rng.below(2);
                write_atomic(&path, &manifest(&image, step, count));
                files[i] = FileState::Good {
                    generation: step,
                    count,
                };
                "re-add"
            }
            45..=54 => {
                // Half-written or broken: berth must keep the last good spec.
                fs::write(&path, "image: [unterminated\nargs: {").expect("corrupt");
                files[i] = FileState::Corrupt { last_good };
                "corrupt"
            }
            55..=69 => {
                if let Some(c) = pick(&mut rng, &docker::ps(&ns.ns)) {
                    let _ = Command::new("docker").args(["kill", &c]).output();
                }
                "docker kill"
            }
            70..=81 => {
                if let Some(c) = pick(&mut rng, &docker::ps(&ns.ns)) {
                    let _ = Command::new("docker").args(["rm", "-f", &c]).output();
                }
                "docker rm -f"
            }
            82..=89 => {
                drop(berth);
                berth = chaos_berth(&ns, &manifests, &log);
                "kill -9 berth"
            }
            _ => {
                // Look-alike names, and labels of another namespace.
                let k = foreign.len();
                let name = format!("{}-t{i:02}-0-lookalike{k}", ns.ns);
                let other_ns = format!("{}x", ns.ns);
                let index = "0".to_string();
                let task = format!("t{i:02}");
                let id = ns.foreign(
                    &name,
                    &[
                        ("io.berth.namespace", other_ns.as_str()),
                        ("io.berth.task", task.as_str()),
                        ("io.berth.index", index.as_str()),
                    ],
                );
                foreign.insert(id, name);
                "foreign look-alike"
            }
        };
        *actions.entry(action).or_default() += 1;
        assert_one_running_per_identity(&ns.ns, seed);
        std::thread::sleep(Duration::from_millis(100 + rng.below(200)));
    }
    eprintln!("chaos: {step} actions: {actions:?}");

    // Stop the chaos: repair broken files to their last good content (or
    // delete them if they never had one), and let a fresh berth converge.
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for (i, state) in files.iter().enumerate() {
        let path = manifests.join(format!("t{i:02}.yaml"));
        let good = match state {
            FileState::Good { generation, count } => Some((*generation, *count)),
            FileState::Corrupt { last_good } => *last_good,
            FileState::Deleted => None,
        };
        match good {
            Some((generation, count)) => {
                write_atomic(&path, &manifest(&image, generation, count));
                for index in 0..count {
                    expected.insert(format!("{}-t{i:02}-{index}", ns.ns));
                }
            }
            None => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    drop(berth);
    let _berth = chaos_berth(&ns, &manifests, &log);

    let manifests_arg = manifests.to_string_lossy().to_string();
    wait_for_sync(
        Duration::from_secs(90),
        "the final folder to be running, and nothing else",
        || {
            let ps = docker::ps(&ns.ns);
            let names: BTreeSet<String> = ps.iter().map(|c| c.name.clone()).collect();
            let all_running = ps.iter().all(|c| c.state == "running");
            if names != expected || !all_running {
                return None;
            }
            // Every container has the spec the folder asks for: plan has nothing to do.
            let plan = berth_command()
                .args(["plan", "--manifests", &manifests_arg, "--namespace", &ns.ns])
                .output()
                .ok()?;
            (plan.status.code() == Some(0)).then_some(())
        },
    );

    let ps = docker::ps(&ns.ns);
    assert!(
        ps.iter().all(|c| !c.name.contains("-old-")),
        "leftovers: {ps:?}"
    );
    assert_one_running_per_identity(&ns.ns, seed);
    for (id, name) in &foreign {
        let c = docker::inspect(id)
            .unwrap_or_else(|| panic!("seed {seed}: foreign {name} was removed"));
        assert_eq!(
            c["State"]["Running"], true,
            "seed {seed}: foreign {name} was stopped"
        );
        assert_eq!(
            c["Name"].as_str(),
            Some(format!("/{name}").as_str()),
            "renamed"
        );
    }
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "berth panicked:\n{text}");
}

fn pick(rng: &mut Rng, ps: &[docker::PsEntry]) -> Option<String> {
    if ps.is_empty() {
        return None;
    }
    Some(ps[rng.below(ps.len() as u64) as usize].id.clone())
}

// ---------------------------------------------------------------------------
// 2. Keeping running work.

/// The longest stop: every task's fixture ignores SIGTERM (killed after
/// `stop_timeout: 3s`) or exits 2 s after it.
const SLOW_STOP: Duration = Duration::from_secs(3);

/// The longest an instance whose manifest stayed valid may go without a
/// running container: one slow stop ([`SLOW_STOP`]) plus a 5 s margin. The
/// old container runs during its stop, so a replacement's own gap is only
/// the swap after it (two renames, a start: up to ~2 s here under load);
/// the allowance covers, besides, a berth killed -9 after the stop and its
/// successor starting (process, lock, folder, one list: up to ~1 s) and
/// finishing or undoing the replacement, on this shared 2-core machine.
const GAP_ALLOWED: Duration = Duration::from_secs(8);

/// Removals wait this long for a quiet folder; a half-written file pauses
/// less than this.
const REMOVAL_DELAY: &str = "4s";

/// Where a replacement can be cut short (`test-hooks`).
const CRASH_POINTS: [&str; 5] = [
    "replace:after-create",
    "replace:after-stop",
    "replace:after-rename",
    "replace:after-swap",
    "replace:after-start",
];

/// One manifest file of the folder, as the test last wrote it in full.
#[derive(Clone, Debug)]
struct SlowFile {
    file: String,
    /// One task named after the file, or two named documents.
    tasks: Vec<String>,
    generation: u64,
    count: u32,
    present: bool,
    /// On disk now: empty, comments only, broken or half-written.
    broken: bool,
}

impl SlowFile {
    fn documents(&self) -> Vec<String> {
        let named = self.tasks.len() > 1;
        self.tasks
            .iter()
            .enumerate()
            .map(|(i, task)| {
                // Half of the tasks ignore SIGTERM, half take 2 s to stop.
                let on_term = if (task.len() + i) % 2 == 0 {
                    "ignore"
                } else {
                    "exit-after=2000"
                };
                let name = if named {
                    format!("name: {task}\n")
                } else {
                    String::new()
                };
                format!(
                    "{name}{}",
                    fixture_task(
                        "sleep",
                        &["forever"],
                        &format!(
                            "count: {}\nstop_timeout: 3s\nenv:\n  FIXTURE_ON_TERM: \"{on_term}\"\n  GEN: \"{}\"\n",
                            self.count, self.generation
                        ),
                    )
                )
            })
            .collect()
    }

    fn text(&self) -> String {
        self.documents().join("---\n")
    }

    fn instances(&self) -> Vec<(String, u32)> {
        self.tasks
            .iter()
            .flat_map(|t| (0..self.count).map(move |i| (t.clone(), i)))
            .collect()
    }
}

/// What the watcher holds an instance to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Guard {
    /// New (created, re-added, scaled up): kept once first seen running.
    Waiting,
    /// Its manifest stayed valid: must keep a running container.
    Kept,
    /// Its removal was asked for.
    Free,
}

#[derive(Default)]
struct WatchState {
    guards: BTreeMap<(String, u32), Guard>,
    /// Since when a kept instance has had no running container, and what
    /// the test was doing then.
    down_since: BTreeMap<(String, u32), (Instant, String)>,
    violations: Vec<String>,
    /// The worst completed gap of a kept instance, whose, and what the
    /// test was doing when it began.
    worst: (Duration, String, String),
    gaps: u64,
    samples: u64,
    /// What the test is doing, for messages.
    doing: String,
}

impl WatchState {
    fn set(&mut self, key: (String, u32), guard: Guard) {
        self.down_since.remove(&key);
        self.guards.insert(key, guard);
    }
}

/// Samples `docker ps` (running containers only) every ~50 ms on a thread of
/// its own until dropped.
struct Watcher {
    state: Arc<Mutex<WatchState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(ns: &str) -> Watcher {
        let state = Arc::new(Mutex::new(WatchState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, ns) = (state.clone(), stop.clone(), ns.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    if let Some(running) = running_instances(&ns) {
                        sample(&mut state.lock().unwrap(), &running, at);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Watcher {
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut WatchState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn assert_clean(&self, seed: u64, ns: &str, since: SystemTime) {
        let violations = self.with(|s| s.violations.clone());
        if !violations.is_empty() {
            // What Docker saw, to tell what happened.
            let events = docker::events(
                since,
                &[&format!("label=io.berth.namespace={ns}"), "type=container"],
                "{{.TimeNano}} {{.Action}} {{.Actor.Attributes.name}} {{printf \"%.12s\" .ID}}",
            );
            eprintln!("--- docker events ---\n{}", events.join("\n"));
        }
        assert!(
            violations.is_empty(),
            "seed {seed}: running work was lost:\n{}",
            violations.join("\n")
        );
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// (task, index) → names of its running containers; `None` when docker ps
/// failed.
fn running_instances(ns: &str) -> Option<BTreeMap<(String, u32), Vec<String>>> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=io.berth.namespace={ns}"),
            "--format",
            "{{.Label \"io.berth.task\"}} {{.Label \"io.berth.index\"}} {{.Names}}",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut running: BTreeMap<(String, u32), Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.split_whitespace();
        let (Some(task), Some(index), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(index) = index.parse() else { continue };
        running
            .entry((task.to_string(), index))
            .or_default()
            .push(name.to_string());
    }
    Some(running)
}

/// One look at what runs, taken at `at`.
fn sample(s: &mut WatchState, running: &BTreeMap<(String, u32), Vec<String>>, at: Instant) {
    s.samples += 1;
    for (key, names) in running {
        if names.len() > 1 {
            let v = format!("{key:?}: {names:?} run at once (while {})", s.doing);
            if !s.violations.contains(&v) {
                s.violations.push(v);
            }
        }
    }
    let keys: Vec<(String, u32)> = s.guards.keys().cloned().collect();
    for key in keys {
        let up = running.contains_key(&key);
        match (s.guards[&key], up) {
            (Guard::Waiting, true) => {
                s.guards.insert(key, Guard::Kept);
            }
            (Guard::Kept, true) => {
                if let Some((since, doing)) = s.down_since.remove(&key) {
                    let gap = at.duration_since(since);
                    s.gaps += 1;
                    if gap > s.worst.0 {
                        s.worst = (gap, format!("{}[{}]", key.0, key.1), doing);
                    }
                }
            }
            (Guard::Kept, false) => {
                let doing = s.doing.clone();
                let (since, began) = s
                    .down_since
                    .entry(key.clone())
                    .or_insert((at, doing))
                    .clone();
                if at.duration_since(since) > GAP_ALLOWED {
                    let who = format!("{}[{}] has had no running container", key.0, key.1);
                    let v = format!(
                        "{who} for more than {GAP_ALLOWED:?} (since {began}; now {})",
                        s.doing
                    );
                    if !s.violations.iter().any(|o| o.starts_with(&who)) {
                        s.violations.push(v);
                    }
                }
            }
            (Guard::Waiting | Guard::Free, _) => {}
        }
    }
}

/// The berth of the keep-running-work chaos, restarted at will.
struct SlowBerth<'a> {
    ns: &'a TestNamespace,
    manifests: &'a Path,
    log: &'a Path,
    berth: Berth,
    /// Armed with a crash point it has not reached yet.
    armed: bool,
    kills: u64,
    aborts: u64,
}

impl<'a> SlowBerth<'a> {
    fn spawn(&self, crash_at: Option<&str>) -> Berth {
        Self::spawn_in(self.ns, self.manifests, self.log, crash_at)
    }

    fn spawn_in(ns: &TestNamespace, manifests: &Path, log: &Path, crash_at: Option<&str>) -> Berth {
        let mut b = Berth::run(ns, manifests)
            .args(&["--resync", "2s", "--removal-delay", REMOVAL_DELAY])
            .rust_log(&std::env::var("BERTH_CHAOS_LOG").unwrap_or_else(|_| "berth=info".into()))
            .log_to(log);
        if let Some(point) = crash_at {
            b = b.env("BERTH_TEST_CRASH_AT", point);
        }
        b.start()
    }

    fn start(ns: &'a TestNamespace, manifests: &'a Path, log: &'a Path) -> SlowBerth<'a> {
        SlowBerth {
            berth: Self::spawn_in(ns, manifests, log, None),
            ns,
            manifests,
            log,
            armed: false,
            kills: 0,
            aborts: 0,
        }
    }

    /// kill -9, and start the next one at once (armed with `crash_at`).
    fn kill9_and_restart(&mut self, crash_at: Option<&str>) {
        self.berth.kill9();
        self.kills += 1;
        self.berth = self.spawn(crash_at);
        self.armed = crash_at.is_some();
    }

    /// A berth that aborted at its crash point is started again at once.
    fn keep_alive(&mut self) {
        if self.berth.exited().is_some() {
            assert!(self.armed, "berth exited without being asked to");
            self.aborts += 1;
            self.berth = self.spawn(None);
            self.armed = false;
        }
    }

    /// Sleep `d`, restarting an aborted berth meanwhile.
    fn pause(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.keep_alive();
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }

    /// Wait until berth answers on HTTP: it holds the namespace lock.
    fn wait_up(&mut self) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            self.keep_alive();
            if self.berth.get("/healthz").is_some() {
                return;
            }
            assert!(Instant::now() < end, "berth did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Write `text` to `path` in two parts with a pause in between, truncating
/// first, as a slow writer does in place.
fn write_slowly(path: &Path, first: &str, rest: &str, pause: Duration, berth: &mut SlowBerth) {
    let mut f = fs::File::create(path).expect("create");
    f.write_all(first.as_bytes()).expect("write");
    f.flush().expect("flush");
    berth.pause(pause);
    f.write_all(rest.as_bytes()).expect("write");
}

#[test]
fn running_work_survives_kills_during_slow_replacements_broken_files_an_emptied_folder_and_a_second_agent(
) {
    let seed = chaos_seed();
    let steps = env_number("BERTH_CHAOS_STEPS", 30);
    eprintln!(
        "keep-work chaos: seed {seed}, {steps} steps; replay with BERTH_CHAOS_SEED={seed} BERTH_CHAOS_STEPS={steps}"
    );
    let mut rng = Rng(seed);
    let _ = fixture_image();
    let ns = TestNamespace::new("keepchaos");
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("m");
    let away = dir.path().join("away");
    fs::create_dir(&manifests).expect("mkdir");
    fs::create_dir(&away).expect("mkdir");
    let log = dir.path().join("berth.log");

    let mut files: Vec<SlowFile> = (0..6)
        .map(|i| SlowFile {
            file: format!("s{i}.yaml"),
            tasks: vec![format!("s{i}")],
            generation: 0,
            count: 1 + (i % 2),
            present: true,
            broken: false,
        })
        .collect();
    files.push(SlowFile {
        file: "pair.yaml".into(),
        tasks: vec!["pa".into(), "pb".into()],
        generation: 0,
        count: 1,
        present: true,
        broken: false,
    });
    for f in &files {
        fs::write(manifests.join(&f.file), f.text()).expect("write");
    }

    let began = SystemTime::now();
    let watcher = Watcher::start(&ns.ns);
    watcher.with(|s| {
        for f in &files {
            for key in f.instances() {
                s.set(key, Guard::Waiting);
            }
        }
        s.doing = "starting".into();
    });
    let mut berth = SlowBerth::start(&ns, &manifests, &log);
    wait_for_sync(Duration::from_secs(60), "every instance running", || {
        watcher
            .with(|s| s.guards.values().all(|g| *g == Guard::Kept))
            .then_some(())
    });

    let mut done: BTreeMap<&str, u32> = BTreeMap::new();
    let mut refusals = 0;
    for step in 1..=steps {
        let generation = step;
        let singles: Vec<usize> = (0..files.len())
            .filter(|&i| files[i].tasks.len() == 1)
            .collect();
        let present: Vec<usize> = singles
            .iter()
            .copied()
            .filter(|&i| files[i].present)
            .collect();
        let absent: Vec<usize> = singles
            .iter()
            .copied()
            .filter(|&i| !files[i].present)
            .collect();
        let pair = files.len() - 1;
        let all_present: Vec<usize> = (0..files.len()).filter(|&i| files[i].present).collect();
        let any_present = |rng: &mut Rng| all_present[rng.below(all_present.len() as u64) as usize];
        let roll = rng.below(100);
        let (kind, what): (&str, String) = match roll {
            // A slow replacement.
            0..=19 => {
                let i = any_present(&mut rng);
                files[i].generation = generation;
                files[i].broken = false;
                write_atomic(&manifests.join(&files[i].file), &files[i].text());
                ("edit", format!("edit {}", files[i].file))
            }
            // kill -9 at a random moment of slow replacements.
            20..=39 => {
                let mut edited = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    let i = any_present(&mut rng);
                    files[i].generation = generation;
                    files[i].broken = false;
                    write_atomic(&manifests.join(&files[i].file), &files[i].text());
                    edited.push(files[i].file.clone());
                }
                let after = Duration::from_millis(rng.below(4000));
                watcher.with(|s| {
                    s.doing = format!("step {step}: edit {edited:?}, kill -9 after {after:?}")
                });
                berth.pause(after);
                berth.kill9_and_restart(None);
                (
                    "kill -9 mid-replacement",
                    format!("edit {edited:?}, kill -9 berth after {after:?}"),
                )
            }
            // kill -9 at a named point of a replacement.
            40..=49 => {
                let point = CRASH_POINTS[rng.below(CRASH_POINTS.len() as u64) as usize];
                berth.kill9_and_restart(Some(point));
                let i = any_present(&mut rng);
                files[i].generation = generation;
                files[i].broken = false;
                write_atomic(&manifests.join(&files[i].file), &files[i].text());
                (
                    "kill at a crash point",
                    format!("edit {} with berth to crash at {point}", files[i].file),
                )
            }
            // What a crashed editor or a full disk leaves.
            50..=57 => {
                let i = any_present(&mut rng);
                let empty =
                    ["", "\n  \n", "# saved by a crashed editor\n", "---\n"][rng.below(4) as usize];
                fs::write(manifests.join(&files[i].file), empty).expect("write");
                files[i].broken = true;
                ("empty file", format!("empty {} ({empty:?})", files[i].file))
            }
            58..=62 => {
                let i = any_present(&mut rng);
                fs::write(
                    manifests.join(&files[i].file),
                    "image: [unterminated\nargs: {",
                )
                .expect("write");
                files[i].broken = true;
                ("broken file", format!("break {}", files[i].file))
            }
            // A slow writer: the first document, a pause, the rest.
            63..=72 => {
                files[pair].generation = generation;
                files[pair].broken = false;
                let docs = files[pair].documents();
                let pause = Duration::from_millis(500 + rng.below(2000));
                watcher.with(|s| {
                    s.doing = format!("step {step}: half-written pair.yaml for {pause:?}")
                });
                write_slowly(
                    &manifests.join("pair.yaml"),
                    &docs[0],
                    &format!("---\n{}", docs[1]),
                    pause,
                    &mut berth,
                );
                (
                    "half-written file",
                    format!("write pair.yaml slowly ({pause:?} between its documents)"),
                )
            }
            73..=77 if present.len() > 2 => {
                let i = present[rng.below(present.len() as u64) as usize];
                watcher.with(|s| {
                    for key in files[i].instances() {
                        s.set(key, Guard::Free);
                    }
                });
                fs::remove_file(manifests.join(&files[i].file)).expect("rm");
                files[i].present = false;
                ("delete", format!("delete {}", files[i].file))
            }
            78..=82 if !absent.is_empty() => {
                let i = absent[rng.below(absent.len() as u64) as usize];
                files[i].generation = generation;
                files[i].count = 1 + rng.below(2) as u32;
                files[i].present = true;
                files[i].broken = false;
                write_atomic(&manifests.join(&files[i].file), &files[i].text());
                watcher.with(|s| {
                    for key in files[i].instances() {
                        s.set(key, Guard::Waiting);
                    }
                });
                (
                    "re-add",
                    format!("re-add {} (count {})", files[i].file, files[i].count),
                )
            }
            73..=87 if !present.is_empty() => {
                // Scale between 1 and 2; the spec stays.
                let i = present[rng.below(present.len() as u64) as usize];
                let task = files[i].tasks[0].clone();
                let lower = files[i].count == 2;
                if lower {
                    watcher.with(|s| s.set((task.clone(), 1), Guard::Free));
                }
                files[i].count = if lower { 1 } else { 2 };
                files[i].broken = false;
                write_atomic(&manifests.join(&files[i].file), &files[i].text());
                if !lower {
                    watcher.with(|s| s.set((task.clone(), 1), Guard::Waiting));
                }
                ("scale", format!("scale {task} to {}", files[i].count))
            }
            // An unmounted disk: every file moved out, then back.
            73..=93 => {
                let moved: Vec<String> = fs::read_dir(&manifests)
                    .expect("ls")
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect();
                for f in &moved {
                    fs::rename(manifests.join(f), away.join(f)).expect("move out");
                }
                let pause = Duration::from_millis(1000 + rng.below(5000));
                watcher.with(|s| s.doing = format!("step {step}: folder emptied for {pause:?}"));
                berth.pause(pause);
                for f in &moved {
                    fs::rename(away.join(f), manifests.join(f)).expect("move back");
                }
                (
                    "folder emptied",
                    format!("empty the folder for {pause:?}, then restore it"),
                )
            }
            // A second agent on the same namespace must refuse and touch nothing.
            _ => {
                berth.wait_up();
                let other = tempfile::tempdir().expect("tempdir");
                fs::write(
                    other.path().join("intruder.yaml"),
                    fixture_task("sleep", &["forever"], ""),
                )
                .expect("write");
                fs::write(
                    other.path().join("s0.yaml"),
                    fixture_task("sleep", &["forever"], "env:\n  GEN: intruder\n"),
                )
                .expect("write");
                let out = run_berth(
                    &[
                        "run",
                        "--manifests",
                        other.path().to_str().unwrap(),
                        "--namespace",
                        &ns.ns,
                        "--listen",
                        "127.0.0.1:0",
                    ],
                    Duration::from_secs(30),
                );
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "seed {seed}: second agent: {err}"
                );
                assert!(
                    err.contains("already managed by another berth"),
                    "seed {seed}: {err}"
                );
                let touched: Vec<_> = docker::ps(&ns.ns)
                    .into_iter()
                    .filter(|c| {
                        c.labels.get("io.berth.task").map(String::as_str) == Some("intruder")
                    })
                    .collect();
                assert!(
                    touched.is_empty(),
                    "seed {seed}: the second agent created {touched:?}"
                );
                refusals += 1;
                ("second agent", "start a second agent (refused)".to_string())
            }
        };
        eprintln!("keep-work chaos: step {step}: {what}");
        *done.entry(kind).or_default() += 1;
        watcher.with(|s| s.doing = format!("after step {step}: {what}"));
        watcher.assert_clean(seed, &ns.ns, began);
        let pause = Duration::from_millis(200 + rng.below(1300));
        berth.pause(pause);
        watcher.assert_clean(seed, &ns.ns, began);
    }

    // The end: broken files get their last good content back (same spec,
    // nothing to replace), a berth that may still be armed is replaced,
    // and the host must match the folder exactly.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for f in &files {
        if !f.present {
            continue;
        }
        if f.broken {
            write_atomic(&manifests.join(&f.file), &f.text());
        }
        for (task, index) in f.instances() {
            expected.insert(format!("{}-{task}-{index}", ns.ns), f.generation);
        }
    }
    for f in files.iter_mut() {
        f.broken = false;
    }
    if berth.armed {
        berth.kill9_and_restart(None);
    }
    watcher.with(|s| s.doing = "converging at the end".into());
    let manifests_arg = manifests.to_string_lossy().to_string();
    let converged = Instant::now();
    let last_seen = wait_for_sync(
        Duration::from_secs(60),
        "the folder to be running exactly",
        || {
            berth.keep_alive();
            let all = docker::inspect_all(&ns.ns);
            let seen: BTreeMap<String, (bool, Option<u64>)> = all
                .iter()
                .map(|c| {
                    let name = c["Name"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches('/');
                    let gen = c["Config"]["Env"].as_array().and_then(|env| {
                        env.iter()
                            .filter_map(|e| e.as_str()?.strip_prefix("GEN="))
                            .find_map(|g| g.parse().ok())
                    });
                    (name.to_string(), (c["State"]["Running"] == true, gen))
                })
                .collect();
            let exact = seen.len() == all.len()
                && seen.len() == expected.len()
                && expected
                    .iter()
                    .all(|(name, gen)| seen.get(name) == Some(&(true, Some(*gen))));
            if !exact {
                return None;
            }
            let plan = berth_command()
                .args(["plan", "--manifests", &manifests_arg, "--namespace", &ns.ns])
                .output()
                .ok()?;
            (plan.status.code() == Some(0)).then_some(seen)
        },
    );
    let took = converged.elapsed();
    assert!(
        last_seen
            .keys()
            .all(|n| !n.contains("-new-") && !n.contains("-old-")),
        "leftovers: {last_seen:?}"
    );
    watcher.assert_clean(seed, &ns.ns, began);
    let (worst, gaps, samples) = watcher.with(|s| (s.worst.clone(), s.gaps, s.samples));
    drop(watcher);
    eprintln!(
        "keep-work chaos: seed {seed}, {steps} steps {done:?}; kill -9: {} ({} at a crash point); second agents refused: {refusals}; \
         {gaps} gaps of kept instances over {samples} samples, worst {:?} ({}, from {}), allowed {GAP_ALLOWED:?} \
         (stop {SLOW_STOP:?} + margin); converged {took:?} after the last step",
        berth.kills + berth.aborts,
        berth.aborts,
        worst.0,
        worst.1,
        worst.2,
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "berth panicked:\n{text}");
}

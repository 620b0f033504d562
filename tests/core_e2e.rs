//! The core promise, end to end: the real `berth` binary (`run --once`,
//! `validate`, `plan`, `down`) on a temporary manifest folder against the real
//! Docker daemon. Each test owns a namespace whose guard removes what it made,
//! even when the test fails, and most also start two bystanders berth must
//! never touch: a container without berth labels and one labelled with
//! another namespace (ownership, ARCHITECTURE.md).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{docker, fixture_image, run_berth_env, TestNamespace};

/// Longest any single berth command may take before the test fails.
const BERTH_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// The world as Docker's CLI sees it: an independent witness of what berth did.

/// One container as `docker inspect` shows it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    name: String,
    status: String,
    running: bool,
    started_at: String,
    labels: BTreeMap<String, String>,
}

impl Seen {
    fn from_json(c: &serde_json::Value) -> Seen {
        Seen {
            id: c["Id"].as_str().unwrap_or_default().to_string(),
            name: c["Name"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            status: c["State"]["Status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            running: c["State"]["Running"].as_bool().unwrap_or(false),
            started_at: c["State"]["StartedAt"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            labels: docker::labels_of(c),
        }
    }

    fn hash(&self) -> &str {
        self.labels
            .get("io.berth.spec-hash")
            .map_or("", String::as_str)
    }

    fn task(&self) -> &str {
        self.labels.get("io.berth.task").map_or("", String::as_str)
    }
}

/// Every container of the namespace, by name.
fn world(ns: &str) -> BTreeMap<String, Seen> {
    docker::inspect_all(ns)
        .iter()
        .map(Seen::from_json)
        .map(|s| (s.name.clone(), s))
        .collect()
}

/// The namespace's containers of one task.
fn of_task(ns: &str, task: &str) -> Vec<Seen> {
    world(ns)
        .into_values()
        .filter(|s| s.task() == task)
        .collect()
}

/// One container by name or id, `None` when it does not exist.
fn seen(name_or_id: &str) -> Option<Seen> {
    docker::inspect(name_or_id).map(|c| Seen::from_json(&c))
}

fn names(world: &BTreeMap<String, Seen>) -> Vec<&str> {
    world.keys().map(String::as_str).collect()
}

/// Container events (create, start, stop, rename, destroy, ...) of the
/// namespace between two moments: empty means berth made no mutating call.
fn events_between(ns: &str, since: SystemTime, until: SystemTime) -> Vec<String> {
    let ts = |t: SystemTime| {
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    };
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            &ts(since),
            "--until",
            &ts(until),
            "--filter",
            "type=container",
            "--filter",
            &format!("label=io.berth.namespace={ns}"),
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}} {{.ID}}",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker events failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// Bystanders: containers berth must never touch.

struct Bystanders {
    before: Vec<Seen>,
}

impl Bystanders {
    /// A running container without berth labels and a running one labelled
    /// exactly like a berth container, but of another namespace.
    fn start(guard: &TestNamespace) -> Bystanders {
        let other_ns = format!("{}-other", guard.ns);
        let zeros = "0".repeat(64);
        let ids = [
            guard.foreign(&format!("{}-plain", guard.ns), &[("owner", "someone-else")]),
            guard.foreign(
                &format!("{}-otherns-web-0", guard.ns),
                &[
                    ("io.berth.namespace", other_ns.as_str()),
                    ("io.berth.task", "web"),
                    ("io.berth.index", "0"),
                    ("io.berth.spec-hash", zeros.as_str()),
                    ("io.berth.manifest", "web.yaml"),
                ],
            ),
        ];
        let before: Vec<Seen> = ids
            .iter()
            .map(|id| seen(id).expect("bystander exists"))
            .collect();
        for b in &before {
            assert!(b.running, "bystander {} should be running", b.name);
        }
        Bystanders { before }
    }

    /// Same id, same name, same labels, still running, never restarted.
    fn assert_untouched(&self) {
        for b in &self.before {
            let now = seen(&b.id).unwrap_or_else(|| panic!("bystander {} was removed", b.name));
            assert_eq!(now, *b, "bystander {} was touched", b.name);
        }
    }
}

// ---------------------------------------------------------------------------
// A manifest folder and the berth binary pointed at it.

struct Folder {
    dir: tempfile::TempDir,
    ns: String,
}

/// One task's manifest: the fixture sleeping, quick to stop.
fn task(name: &str, count: u32, env: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "name: {name}\nimage: {}\nargs: [\"sleep\", \"forever\"]\ncount: {count}\nstop_timeout: 1s\n",
        fixture_image()
    );
    if !env.is_empty() {
        yaml.push_str("env:\n");
        for (k, v) in env {
            yaml.push_str(&format!("  {k}: \"{v}\"\n"));
        }
    }
    yaml
}

impl Folder {
    fn new(guard: &TestNamespace) -> Folder {
        Folder {
            dir: tempfile::tempdir().unwrap(),
            ns: guard.ns.clone(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, file: &str, content: &str) -> &Self {
        std::fs::write(self.path().join(file), content).unwrap();
        self
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.path().join(file)).unwrap();
    }

    /// `berth <sub> --manifests DIR --namespace NS <extra...>`.
    fn berth(&self, sub: &str, extra: &[&str]) -> Output {
        self.berth_env(sub, extra, &[])
    }

    fn berth_env(&self, sub: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let dir = self.path().to_str().unwrap();
        let mut args = vec![sub, "--manifests", dir, "--namespace", &self.ns];
        args.extend_from_slice(extra);
        run_berth_env(&args, env, BERTH_TIMEOUT)
    }

    /// `run --once`, which must succeed.
    fn converge(&self) -> Output {
        let out = self.berth("run", &["--once"]);
        assert_success(&out, "berth run --once");
        out
    }

    /// `plan --json`: exit code and the parsed view.
    fn plan_json(&self) -> (Option<i32>, serde_json::Value) {
        let out = self.berth("plan", &["--json"]);
        let view = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "plan --json printed no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), view)
    }
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} exited {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The folder every scenario starts from: three tasks, four containers.
fn three_tasks(folder: &Folder) {
    folder
        .write("web.yaml", &task("web", 2, &[("MODE", "one")]))
        .write("api.yaml", &task("api", 1, &[("MODE", "one")]))
        .write("worker.yaml", &task("worker", 1, &[("MODE", "one")]));
}

/// Everything about `before` except `except` is exactly as it was.
fn assert_unchanged_except(
    before: &BTreeMap<String, Seen>,
    after: &BTreeMap<String, Seen>,
    except: &[&str],
) {
    for (name, b) in before {
        if except.contains(&name.as_str()) {
            continue;
        }
        assert_eq!(after.get(name), Some(b), "{name} should be untouched");
    }
}

// ---------------------------------------------------------------------------
// 1. Creation, labels, idempotence.

#[test]
fn a_fresh_folder_converges_to_named_labelled_running_containers_and_a_second_pass_changes_nothing()
{
    let guard = TestNamespace::new("fresh");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    fixture_image();

    let since = SystemTime::now();
    let t = Instant::now();
    folder.converge();
    let cold = t.elapsed();
    // The witness used below sees berth's calls: here, 4 creates and 4 starts.
    let made = events_between(ns, since, SystemTime::now());
    for action in ["create", "start"] {
        let n = made
            .iter()
            .filter(|e| e.starts_with(&format!("{action} ")))
            .count();
        assert_eq!(n, 4, "{action} events: {made:?}");
    }

    let first = world(ns);
    let expected: Vec<String> = [("api", 0), ("web", 0), ("web", 1), ("worker", 0)]
        .iter()
        .map(|(t, i)| guard.container_name(t, *i))
        .collect();
    assert_eq!(names(&first), expected);
    for (task, index, file) in [
        ("api", 0, "api.yaml"),
        ("web", 0, "web.yaml"),
        ("web", 1, "web.yaml"),
        ("worker", 0, "worker.yaml"),
    ] {
        let c = &first[&guard.container_name(task, index)];
        assert!(c.running, "{} should be running: {}", c.name, c.status);
        assert_eq!(c.labels["io.berth.namespace"], ns);
        assert_eq!(c.labels["io.berth.task"], task);
        assert_eq!(c.labels["io.berth.index"], index.to_string());
        assert_eq!(c.labels["io.berth.manifest"], file);
        assert!(is_hex64(c.hash()), "spec-hash {:?}", c.hash());
    }

    let since = SystemTime::now();
    let t = Instant::now();
    folder.converge();
    let noop = t.elapsed();
    let until = SystemTime::now();

    assert_eq!(world(ns), first, "a pass over a converged host changed it");
    assert_eq!(events_between(ns, since, until), Vec::<String>::new());
    let plan = folder.berth("plan", &[]);
    assert_eq!(plan.status.code(), Some(0), "{}", stdout(&plan));
    assert!(stdout(&plan).contains("nothing to do"), "{}", stdout(&plan));
    bystanders.assert_untouched();

    eprintln!(
        "figures: run --once, 3 tasks / 4 containers, cold: {cold:?}; no-op run --once: {noop:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. Updates replace only what changed.

#[test]
fn changing_one_tasks_env_replaces_only_that_tasks_container() {
    let guard = TestNamespace::new("envchange");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);

    folder.write("api.yaml", &task("api", 1, &[("MODE", "two")]));
    let since = SystemTime::now();
    folder.converge();
    let events = events_between(ns, since, SystemTime::now());

    let after = world(ns);
    assert_eq!(names(&after), names(&before));
    let api = guard.container_name("api", 0);
    let (old, new) = (&before[&api], &after[&api]);
    assert_ne!(new.id, old.id, "api should be a new container");
    assert_ne!(new.hash(), old.hash(), "api's spec hash should change");
    assert!(is_hex64(new.hash()));
    assert!(new.running);
    // Never two at once: the old one died before the new one started.
    let at = |action: &str, id: &str| {
        events
            .iter()
            .position(|e| e.starts_with(&format!("{action} ")) && e.ends_with(id))
            .unwrap_or_else(|| panic!("no {action} event for {id}: {events:#?}"))
    };
    assert!(at("die", &old.id) < at("start", &new.id), "{events:#?}");
    assert_unchanged_except(&before, &after, &[&api]);
    bystanders.assert_untouched();
}

// ---------------------------------------------------------------------------
// 3. Scaling down.

#[test]
fn lowering_count_removes_the_highest_index_and_keeps_index_zero() {
    let guard = TestNamespace::new("scaledown");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);

    folder.write("web.yaml", &task("web", 1, &[("MODE", "one")]));
    folder.converge();

    let after = world(ns);
    let web1 = guard.container_name("web", 1);
    assert!(!after.contains_key(&web1), "{web1} should be removed");
    assert!(seen(&before[&web1].id).is_none(), "{web1} should be gone");
    assert_eq!(after.len(), before.len() - 1);
    // web-0, api-0, worker-0: same ids, never restarted.
    assert_unchanged_except(&before, &after, &[&web1]);
    bystanders.assert_untouched();
}

// ---------------------------------------------------------------------------
// 4. Deleting a manifest.

#[test]
fn deleting_a_manifest_removes_its_containers_and_nothing_else() {
    let guard = TestNamespace::new("delete");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);

    folder.remove("web.yaml");
    folder.converge();

    let after = world(ns);
    for i in 0..2 {
        let web = guard.container_name("web", i);
        assert!(!after.contains_key(&web), "{web} should be removed");
        assert!(seen(&before[&web].id).is_none());
    }
    assert_eq!(after.len(), 2);
    let (web0, web1) = (
        guard.container_name("web", 0),
        guard.container_name("web", 1),
    );
    assert_unchanged_except(&before, &after, &[&web0, &web1]);
    bystanders.assert_untouched();
}

#[test]
fn with_container_cleanup_off_deleting_a_manifest_stops_and_keeps_its_containers() {
    let guard = TestNamespace::new("keep");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("berth.yaml");
    std::fs::write(&config, "docker:\n  cleanup:\n    container: false\n").unwrap();
    let config_arg = config.to_str().unwrap();
    assert_success(
        &folder.berth("run", &["--once", "--config", config_arg]),
        "first run --once",
    );
    let before = world(ns);

    folder.remove("web.yaml");
    assert_success(
        &folder.berth("run", &["--once", "--config", config_arg]),
        "run --once after deleting web.yaml",
    );

    let after = world(ns);
    for i in 0..2 {
        let web = guard.container_name("web", i);
        let kept = after
            .get(&web)
            .unwrap_or_else(|| panic!("{web} should be kept"));
        assert_eq!(kept.id, before[&web].id);
        assert!(!kept.running, "{web} should be stopped, is {}", kept.status);
    }
    let api = guard.container_name("api", 0);
    let worker = guard.container_name("worker", 0);
    assert_eq!(after[&api], before[&api]);
    assert_eq!(after[&worker], before[&worker]);

    // Kept containers stay stopped: the next pass has nothing to do.
    let settled = world(ns);
    assert_success(
        &folder.berth("run", &["--once", "--config", config_arg]),
        "a third run --once",
    );
    assert_eq!(world(ns), settled);
    bystanders.assert_untouched();
}

// ---------------------------------------------------------------------------
// 5. Ownership: a name held by someone else.

#[test]
fn a_foreign_container_holding_the_canonical_name_is_left_alone_and_reported() {
    let guard = TestNamespace::new("conflict");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let web0 = guard.container_name("web", 0);
    let holder_id = guard.foreign(&web0, &[]);
    let holder = seen(&holder_id).unwrap();
    let folder = Folder::new(&guard);
    three_tasks(&folder);

    let out = folder.berth("run", &["--once", "--once-timeout", "3s"]);

    assert!(
        !out.status.success(),
        "run --once must fail while {web0} is held by a foreign container"
    );
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.contains(&web0) && l.contains("does not own")),
        "stderr should name the conflict on {web0}:\n{err}"
    );
    assert_eq!(
        seen(&holder_id),
        Some(holder),
        "the name holder was touched"
    );
    let after = world(ns);
    let expected: Vec<String> = [("api", 0), ("web", 1), ("worker", 0)]
        .iter()
        .map(|(t, i)| guard.container_name(t, *i))
        .collect();
    assert_eq!(names(&after), expected, "other tasks should converge");
    assert!(after.values().all(|c| c.running));
    bystanders.assert_untouched();
}

// ---------------------------------------------------------------------------
// 6. Bad input never costs running work.

#[test]
fn validate_reports_a_syntax_error_and_an_unknown_key_with_file_line_and_column() {
    let guard = TestNamespace::new("validate");
    let folder = Folder::new(&guard);
    folder
        .write("good.yaml", &task("good", 1, &[]))
        .write("broken.yaml", "name: broken\nimage: x\nargs: [sleep\n")
        .write("typo.yaml", "name: typo\nimgae: x\n");

    let out = run_berth_env(
        &["validate", folder.path().to_str().unwrap()],
        &[],
        BERTH_TIMEOUT,
    );

    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    let located = |file: &str, line: u32| {
        text.lines().any(|l| {
            let Some(rest) = l.split(&format!("{file}:{line}:")).nth(1) else {
                return false;
            };
            let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !col.is_empty() && rest[col.len()..].starts_with(": ")
        })
    };
    assert!(located("broken.yaml", 3), "no broken.yaml:3:C: in\n{text}");
    assert!(located("typo.yaml", 2), "no typo.yaml:2:C: in\n{text}");
    // An unknown key is named by its position and the closest known key,
    // never by its own text.
    assert!(text.contains("did you mean `image`"), "{text}");
    assert!(!text.contains("imgae"), "{text}");
    assert!(!text.contains("good.yaml"), "{text}");
}

#[test]
fn a_broken_manifest_keeps_its_running_container_while_other_tasks_converge() {
    let guard = TestNamespace::new("badinput");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);

    // web.yaml stops parsing, api.yaml gets a typo, and a new task arrives.
    folder
        .write("web.yaml", "name: web\nimage: [unclosed\n")
        .write(
            "api.yaml",
            &task("api", 1, &[("MODE", "two")]).replace("image:", "imgae:"),
        )
        .write("extra.yaml", &task("extra", 1, &[]));
    let out = folder.berth("run", &["--once"]);

    assert!(
        !out.status.success(),
        "run --once reports the broken files with a non-zero exit"
    );
    let err = stderr(&out);
    assert!(err.contains("web.yaml:"), "{err}");
    assert!(err.contains("api.yaml:"), "{err}");
    let after = world(ns);
    assert_unchanged_except(&before, &after, &[]);
    let extra = &after[&guard.container_name("extra", 0)];
    assert!(extra.running, "the new good task should run");
    assert_eq!(after.len(), before.len() + 1);
    bystanders.assert_untouched();
}

#[test]
fn a_missing_manifest_folder_is_an_error_that_removes_nothing() {
    let guard = TestNamespace::new("nofolder");
    let ns = guard.ns.as_str();
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);

    // The folder vanishes, as with an unmounted disk.
    let away = tempfile::tempdir().unwrap();
    let moved = away.path().join("manifests");
    std::fs::rename(folder.path(), &moved).unwrap();
    let out = folder.berth("run", &["--once"]);
    std::fs::rename(&moved, folder.path()).unwrap();

    assert!(!out.status.success(), "a missing folder must fail the pass");
    let err = stderr(&out);
    assert!(
        err.contains(folder.path().to_str().unwrap()),
        "stderr should name the folder:\n{err}"
    );
    assert_eq!(
        world(ns),
        before,
        "a missing folder removed or touched containers"
    );
}

#[test]
fn renaming_a_manifest_file_without_changing_its_tasks_restarts_nothing() {
    let guard = TestNamespace::new("rename");
    let ns = guard.ns.as_str();
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);

    std::fs::rename(
        folder.path().join("web.yaml"),
        folder.path().join("frontend.yml"),
    )
    .unwrap();
    folder.converge();

    let after = world(ns);
    assert_eq!(names(&after), names(&before));
    for (name, b) in &before {
        let a = &after[name];
        assert_eq!((&a.id, &a.started_at), (&b.id, &b.started_at), "{name}");
        assert!(a.running, "{name}");
    }
}

#[test]
fn a_renamed_manifest_that_breaks_before_berth_restarts_keeps_its_containers() {
    let guard = TestNamespace::new("renbroken");
    let ns = guard.ns.as_str();
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    std::fs::rename(
        folder.path().join("web.yaml"),
        folder.path().join("frontend.yaml"),
    )
    .unwrap();
    folder.converge();
    let before = world(ns);
    // The containers still say web.yaml: the rename restarted nothing.
    assert_eq!(
        before[&guard.container_name("web", 0)].labels["io.berth.manifest"],
        "web.yaml"
    );

    // Each run --once is a new berth: the broken file has no last good version.
    folder.write("frontend.yaml", "name: web\nimage: [unclosed\n");
    let out = folder.berth("run", &["--once"]);

    assert!(!out.status.success());
    assert!(stderr(&out).contains("frontend.yaml:"), "{}", stderr(&out));
    assert_eq!(world(ns), before, "a broken file cost running work");
}

#[test]
fn a_deleted_manifests_containers_wait_for_a_broken_file_to_be_fixed_then_go() {
    let guard = TestNamespace::new("delbroken");
    let ns = guard.ns.as_str();
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);

    // The broken file could define `worker` (moved there): nothing is removed yet.
    folder.remove("worker.yaml");
    folder.write("new.yaml", "name: new\nimage: [unclosed\n");
    let out = folder.berth("run", &["--once"]);
    assert!(!out.status.success());
    assert_eq!(world(ns), before);

    folder.write("new.yaml", &task("new", 1, &[]));
    folder.converge();

    let after = world(ns);
    let worker = guard.container_name("worker", 0);
    assert!(
        !after.contains_key(&worker),
        "{worker} should be removed now"
    );
    assert!(after[&guard.container_name("new", 0)].running);
    assert_unchanged_except(&before, &after, &[&worker]);
}

// ---------------------------------------------------------------------------
// 7. Crash safety of a replacement.

/// `web` and `api` converged, then `web`'s env changed in its file: the
/// folder, and `api`'s and `web`'s containers as they ran.
fn web_and_api_then_web_changed(guard: &TestNamespace) -> (Folder, Seen, Seen) {
    let folder = Folder::new(guard);
    folder
        .write("web.yaml", &task("web", 1, &[("MODE", "one")]))
        .write("api.yaml", &task("api", 1, &[]));
    folder.converge();
    let api = seen(&guard.container_name("api", 0)).unwrap();
    let old = seen(&guard.container_name("web", 0)).unwrap();
    folder.write("web.yaml", &task("web", 1, &[("MODE", "two")]));
    (folder, api, old)
}

/// Converge `web`, change its env, run a pass that aborts at `point`, check
/// the state left behind is that point's, then run a normal pass: exactly one
/// canonical container with the new spec, running, and no leftover.
fn a_replacement_interrupted_at(point: &str, check_crashed: impl Fn(&TestNamespace, &str)) {
    let guard = TestNamespace::new(&format!("crash-{point}"));
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let (folder, api, old) = web_and_api_then_web_changed(&guard);
    let (code, view) = folder.plan_json();
    assert_eq!(code, Some(2));
    let new_hash = view["actions"][0]["spec_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(view["actions"][0]["action"], "replace");
    assert_ne!(new_hash, old.hash());

    let crashed = folder.berth_env("run", &["--once"], &[("BERTH_TEST_CRASH_AT", point)]);
    assert!(!crashed.status.success(), "the crash run should abort");
    assert!(
        stderr(&crashed).contains(&format!("BERTH_TEST_CRASH_AT={point}")),
        "berth did not reach {point}:\n{}",
        stderr(&crashed)
    );
    let web = of_task(ns, "web");
    assert!(
        web.iter().filter(|c| c.running).count() <= 1,
        "two web-0 containers run at once: {web:#?}"
    );
    check_crashed(&guard, &new_hash);

    folder.converge();

    let web = of_task(ns, "web");
    assert_eq!(web.len(), 1, "one container for web-0: {web:#?}");
    assert_eq!(web[0].name, guard.container_name("web", 0));
    assert!(web[0].running, "web-0 is {}", web[0].status);
    assert_eq!(web[0].hash(), new_hash);
    let world = world(ns);
    assert!(
        world.keys().all(|n| !n.contains("-old-")),
        "leftover: {:?}",
        names(&world)
    );
    assert_eq!(world.len(), 2);
    assert_eq!(seen(&api.id), Some(api), "api was touched");
    bystanders.assert_untouched();
}

/// The old container, moved aside and stopped, if any.
fn aside(guard: &TestNamespace) -> Option<Seen> {
    let prefix = format!("{}-old-", guard.container_name("web", 0));
    let asides: Vec<Seen> = of_task(&guard.ns, "web")
        .into_iter()
        .filter(|c| c.name.starts_with(&prefix))
        .collect();
    assert!(asides.len() <= 1, "{asides:#?}");
    asides.into_iter().next()
}

/// The new container staged for the replacement, if any.
fn staged(guard: &TestNamespace) -> Option<Seen> {
    let prefix = format!("{}-new-", guard.container_name("web", 0));
    let staged: Vec<Seen> = of_task(&guard.ns, "web")
        .into_iter()
        .filter(|c| c.name.starts_with(&prefix))
        .collect();
    assert!(staged.len() <= 1, "{staged:#?}");
    staged.into_iter().next()
}

#[test]
fn a_crash_after_staging_the_new_container_leaves_the_old_one_running_and_recovers() {
    a_replacement_interrupted_at("replace:after-create", |guard, new_hash| {
        let web0 = seen(&guard.container_name("web", 0)).unwrap();
        assert!(web0.running, "the old container was not touched");
        assert_ne!(web0.hash(), new_hash);
        let new = staged(guard).expect("the new container, staged");
        assert_eq!(new.status, "created");
        assert_eq!(new.hash(), new_hash);
    });
}

#[test]
fn a_crash_after_stopping_the_old_container_recovers_to_the_new_spec() {
    a_replacement_interrupted_at("replace:after-stop", |guard, new_hash| {
        let web0 = seen(&guard.container_name("web", 0)).unwrap();
        assert!(!web0.running);
        assert_ne!(web0.hash(), new_hash);
        assert!(aside(guard).is_none());
        assert!(staged(guard).is_some());
    });
}

#[test]
fn a_crash_after_renaming_the_old_container_aside_recovers_to_the_new_spec() {
    a_replacement_interrupted_at("replace:after-rename", |guard, _| {
        assert!(seen(&guard.container_name("web", 0)).is_none());
        let old = aside(guard).expect("the old container renamed aside");
        assert!(!old.running);
        assert!(
            old.name.ends_with("-running"),
            "{}: records that it ran",
            old.name
        );
        assert!(staged(guard).is_some());
    });
}

#[test]
fn a_crash_after_the_new_container_took_the_name_recovers_to_the_new_spec() {
    a_replacement_interrupted_at("replace:after-swap", |guard, new_hash| {
        let new = seen(&guard.container_name("web", 0)).unwrap();
        assert_eq!(new.status, "created");
        assert_eq!(new.hash(), new_hash);
        assert!(!aside(guard).expect("the old container aside").running);
    });
}

#[test]
fn a_crash_after_starting_the_new_container_recovers_to_the_new_spec() {
    a_replacement_interrupted_at("replace:after-start", |guard, new_hash| {
        let new = seen(&guard.container_name("web", 0)).unwrap();
        assert!(new.running);
        assert_eq!(new.hash(), new_hash);
        assert!(!aside(guard).expect("the old container aside").running);
    });
}

/// A replacement cut short at `point`, and its manifest broken before berth
/// runs again: the new spec is unknown, so berth cannot finish it. The old
/// container is put back, the same one, running; what the replacement made
/// and never started is gone; `api` is not touched.
fn an_interrupted_replacement_with_its_file_broken_at(point: &str) {
    let guard = TestNamespace::new(&format!("broken-{point}"));
    let ns = guard.ns.as_str();
    let (folder, api, old) = web_and_api_then_web_changed(&guard);
    let crashed = folder.berth_env("run", &["--once"], &[("BERTH_TEST_CRASH_AT", point)]);
    assert!(
        stderr(&crashed).contains(&format!("BERTH_TEST_CRASH_AT={point}")),
        "berth did not reach {point}:\n{}",
        stderr(&crashed)
    );
    assert!(
        !seen(&old.id).unwrap().running,
        "{point}: the old one is stopped"
    );

    folder.write("web.yaml", "name: web\nimage: [unclosed\n");
    let out = folder.berth("run", &["--once"]);
    assert!(!out.status.success(), "a broken file fails --once");
    assert!(stderr(&out).contains("web.yaml"), "{}", stderr(&out));

    let web = of_task(ns, "web");
    assert_eq!(
        web.len(),
        1,
        "{point}: one container, no leftover: {web:#?}"
    );
    assert_eq!(web[0].id, old.id, "{point}: the old container is back");
    assert_eq!(web[0].name, guard.container_name("web", 0));
    assert!(web[0].running, "{point}: and running again");
    assert_eq!(seen(&api.id), Some(api), "api was touched");
}

#[test]
fn a_crash_after_the_stop_then_a_broken_file_starts_the_old_container_again() {
    an_interrupted_replacement_with_its_file_broken_at("replace:after-stop");
}

#[test]
fn a_crash_after_the_rename_aside_then_a_broken_file_puts_the_old_container_back() {
    an_interrupted_replacement_with_its_file_broken_at("replace:after-rename");
}

#[test]
fn a_crash_after_the_swap_then_a_broken_file_puts_the_old_container_back() {
    an_interrupted_replacement_with_its_file_broken_at("replace:after-swap");
}

/// When the old container is put back after a crash, it runs again: a
/// restore never leaves an instance stopped that was running.
#[test]
fn a_restore_after_a_crash_starts_the_old_container_again() {
    let guard = TestNamespace::new("restore-runs");
    let folder = Folder::new(&guard);
    folder.write("web.yaml", &task("web", 1, &[("MODE", "one")]));
    folder.converge();
    let old = seen(&guard.container_name("web", 0)).unwrap();
    // The new spec cannot start: after the crash, the next pass restores the
    // old container; the retried replacement then fails and rolls back.
    folder.write(
        "web.yaml",
        &format!(
            "name: web\nimage: {}\npull: never\nentrypoint: [\"/no-such-program\"]\nstop_timeout: 1s\n",
            fixture_image()
        ),
    );
    let crashed = folder.berth_env(
        "run",
        &["--once"],
        &[("BERTH_TEST_CRASH_AT", "replace:after-rename")],
    );
    assert!(!crashed.status.success());
    assert!(
        seen(&guard.container_name("web", 0)).is_none(),
        "moved aside"
    );
    let out = folder.berth("run", &["--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("update held"), "{}", stderr(&out));
    let web = of_task(&guard.ns, "web");
    assert_eq!(web.len(), 1, "one container, no leftover: {web:#?}");
    assert_eq!(web[0].id, old.id, "the old container is back");
    assert!(web[0].running, "and running again");
}

// ---------------------------------------------------------------------------
// 8. Drift made by hand is repaired.

#[test]
fn a_container_removed_by_hand_is_recreated_and_one_stopped_by_hand_is_started() {
    let guard = TestNamespace::new("drift");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    let before = world(ns);
    let api = guard.container_name("api", 0);
    let worker = guard.container_name("worker", 0);

    docker::cli(&["rm", "-f", &api]);
    docker::cli(&["stop", "-t", "1", &worker]);
    assert!(!seen(&worker).unwrap().running);
    folder.converge();

    let after = world(ns);
    assert_eq!(names(&after), names(&before));
    let recreated = &after[&api];
    assert_ne!(
        recreated.id, before[&api].id,
        "api should be a new container"
    );
    assert_eq!(recreated.hash(), before[&api].hash());
    assert!(recreated.running);
    let restarted = &after[&worker];
    assert_eq!(
        restarted.id, before[&worker].id,
        "worker keeps its container"
    );
    assert!(restarted.running, "worker should be started again");
    assert_ne!(restarted.started_at, before[&worker].started_at);
    assert_unchanged_except(&before, &after, &[&api, &worker]);
    bystanders.assert_untouched();
}

// ---------------------------------------------------------------------------
// 9. down.

#[test]
fn down_removes_every_container_of_the_namespace_and_nothing_else() {
    let guard = TestNamespace::new("down");
    let ns = guard.ns.as_str();
    let bystanders = Bystanders::start(&guard);
    let folder = Folder::new(&guard);
    three_tasks(&folder);
    folder.converge();
    // A stopped container of ours is removed too.
    docker::cli(&["stop", "-t", "1", &guard.container_name("api", 0)]);
    assert_eq!(world(ns).len(), 4);

    let out = run_berth_env(&["down", "--namespace", ns], &[], BERTH_TIMEOUT);

    assert_success(&out, "berth down");
    assert_eq!(names(&world(ns)), Vec::<&str>::new());
    bystanders.assert_untouched();
}

// ---------------------------------------------------------------------------
// 10. plan --json.

#[test]
fn plan_json_exits_2_naming_pending_actions_and_0_once_converged() {
    let guard = TestNamespace::new("planjson");
    let ns = guard.ns.as_str();
    let folder = Folder::new(&guard);
    three_tasks(&folder);

    let (code, view) = folder.plan_json();
    assert_eq!(code, Some(2), "{view:#}");
    assert_eq!(view["changes"], true);
    let mut pending: Vec<(String, String, u64)> = view["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["task"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
                a["index"].as_u64().unwrap(),
            )
        })
        .collect();
    pending.sort();
    let create = |t: &str, i| (t.to_string(), "create".to_string(), i);
    assert_eq!(
        pending,
        vec![
            create("api", 0),
            create("web", 0),
            create("web", 1),
            create("worker", 0)
        ]
    );
    assert!(world(ns).is_empty(), "plan must not create anything");

    folder.converge();
    let (code, view) = folder.plan_json();
    assert_eq!(code, Some(0), "{view:#}");
    assert_eq!(view["changes"], false);
    assert_eq!(view["actions"].as_array().map(Vec::len), Some(0));

    folder.write("worker.yaml", &task("worker", 1, &[("MODE", "two")]));
    let before = world(ns);
    let (code, view) = folder.plan_json();
    assert_eq!(code, Some(2), "{view:#}");
    let actions = view["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{view:#}");
    assert_eq!(actions[0]["task"], "worker");
    assert_eq!(actions[0]["action"], "replace");
    let worker_id = &before[&guard.container_name("worker", 0)].id;
    assert_eq!(actions[0]["container_id"], worker_id[..12]);
    assert_eq!(world(ns), before, "plan must not change anything");
}

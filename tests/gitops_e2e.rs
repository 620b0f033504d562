//! GitOps end to end: the real `berth` binary fetching manifests from a
//! real repository (a bare one over `file://`, and `git daemon` on
//! 127.0.0.1), applying them to the real Docker daemon. Commits are signed
//! with keys `ssh-keygen` makes in the test. Each test proves one promise a
//! person running berth from git relies on: a push is applied and every
//! container names its commit; a commit that is not trusted, a remote that
//! is gone or a ref that vanished touch nothing; a broken file keeps its
//! last good tasks; `POST /v1/sync` and SIGHUP fetch at once.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::git::{git_daemon, Remote};
use common::process::Berth;
use common::{docker, fixture_task, wait_for_sync, TestNamespace};

const DEADLINE: Duration = Duration::from_secs(60);

fn task(extra: &str) -> String {
    fixture_task("sleep", &["forever"], &format!("stop_timeout: 1s\n{extra}"))
}

/// An agent config for `url`, polling every `interval`.
fn config(dir: &Path, url: &str, interval: &str, verify: Option<&Path>) -> PathBuf {
    let mut text = format!(
        "source:\n  git:\n    url: {url}\n    ref: main\n    path: hosts\n    interval: {interval}\n    timeout: 5s\n"
    );
    if let Some(signers) = verify {
        text.push_str(&format!(
            "    verify:\n      allowed_signers: {}\n",
            signers.display()
        ));
    }
    let path = dir.join("berth.yaml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// `berth run` with `config` and its own state directory.
fn start(ns: &TestNamespace, remote: &Remote, config: &Path) -> Berth {
    let state = remote.state();
    Berth::start(
        ns,
        remote.root(),
        &[
            "--config",
            &config.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
        ],
    )
}

/// A container as a person would check it was left alone.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    started_at: String,
    commit: Option<String>,
}

fn seen(ns: &TestNamespace, task: &str) -> Option<Seen> {
    let c = docker::inspect(&ns.container_name(task, 0))?;
    let labels = docker::labels_of(&c);
    Some(Seen {
        id: c["Id"].as_str().unwrap_or_default().to_string(),
        started_at: c["State"]["StartedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        commit: labels.get("io.berth.source-commit").cloned(),
    })
    .filter(|_| c["State"]["Running"] == true)
}

/// Wait until `task`'s container runs and carries `commit`.
fn wait_for_commit(ns: &TestNamespace, task: &str, commit: &str) -> Seen {
    wait_for_sync(
        DEADLINE,
        &format!("{task} running from commit {commit}"),
        || seen(ns, task).filter(|s| s.commit.as_deref() == Some(commit)),
    )
}

fn source_status(berth: &Berth) -> serde_json::Value {
    berth
        .status()
        .map(|s| s["source"].clone())
        .unwrap_or_default()
}

/// Wait until the source status satisfies `ok`; returns it.
fn wait_for_source(
    berth: &Berth,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_sync(DEADLINE, what, || {
        let s = source_status(berth);
        ok(&s).then_some(s)
    })
}

#[test]
fn a_push_is_applied_within_the_interval_and_every_container_names_its_commit() {
    let ns = TestNamespace::new("gitops-push");
    let remote = Remote::new();
    let first = remote.commit(&[("hosts/web.yaml", Some(&task("")))], None, "main");
    let cfg = config(remote.root(), &remote.url(), "1s", None);
    let berth = start(&ns, &remote, &cfg);
    let web = wait_for_commit(&ns, "web", &first);

    // A new task in a new commit: created within the interval and a pass,
    // labelled with the new commit; web's spec did not change, so web is
    // left alone and its label still names the commit it was created from.
    let pushed = Instant::now();
    let second = remote.commit(&[("hosts/db.yaml", Some(&task("")))], None, "main");
    wait_for_commit(&ns, "db", &second);
    let took = pushed.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "a push took {took:?} to run (interval 1 s)"
    );
    assert_eq!(seen(&ns, "web"), Some(web), "web was left alone");

    // A change to web's spec replaces it, from the commit that changed it.
    let third = remote.commit(
        &[("hosts/web.yaml", Some(&task("env: {V: \"2\"}\n")))],
        None,
        "main",
    );
    wait_for_commit(&ns, "web", &third);

    let source = wait_for_source(&berth, "the status to show the third commit", |s| {
        s["commit"] == third.as_str()
    });
    assert_eq!(source["ref"], "main");
    assert_eq!(source["path"], "hosts");
    assert!(source["last_error"].is_null(), "{source}");
    assert!(source["last_success"].as_u64().is_some(), "{source}");
    let (_, metrics) = berth
        .get("/metrics")
        .unwrap_or_else(|| panic!("no /metrics"));
    assert!(
        metrics.contains(&format!("berth_source_info{{commit=\"{third}\"}} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_source_fetch_failures_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_source_last_fetch_timestamp_seconds "),
        "{metrics}"
    );
}

#[test]
fn unsigned_and_unknown_key_commits_are_not_applied_while_a_later_signed_one_is() {
    let ns = TestNamespace::new("gitops-verify");
    let remote = Remote::new();
    let trusted = remote.key("trusted");
    let stranger = remote.key("stranger");
    let signers = remote.allowed_signers(&[&trusted]);
    let signed = remote.commit(
        &[("hosts/web.yaml", Some(&task("")))],
        Some(&trusted),
        "main",
    );
    let cfg = config(remote.root(), &remote.url(), "1s", Some(&signers));
    let berth = start(&ns, &remote, &cfg);
    let web = wait_for_commit(&ns, "web", &signed);

    for (what, key) in [
        ("unsigned", None),
        ("unknown key", Some(stranger.as_path())),
    ] {
        let refused = remote.commit(
            &[(
                "hosts/web.yaml",
                Some(&task(&format!("env: {{V: \"{what}\"}}\n"))),
            )],
            key,
            "main",
        );
        let source = wait_for_source(&berth, &format!("the {what} commit to be seen"), |s| {
            s["remote_commit"] == refused.as_str()
        });
        assert_eq!(source["commit"], signed.as_str(), "{what}: {source}");
        let error = source["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("commit {} not applied", &refused[..7]))
                && error.contains("no valid signature"),
            "{what}: {error}"
        );
        assert_eq!(seen(&ns, "web"), Some(web.clone()), "{what}: web untouched");
    }

    let later = remote.commit(
        &[("hosts/web.yaml", Some(&task("env: {V: \"signed\"}\n")))],
        Some(&trusted),
        "main",
    );
    let replaced = wait_for_commit(&ns, "web", &later);
    assert_ne!(replaced.id, web.id);
    let source = source_status(&berth);
    assert!(source["last_error"].is_null(), "{source}");
}

#[test]
fn a_deleted_ref_touches_nothing_and_a_broken_file_keeps_its_last_good_tasks() {
    let ns = TestNamespace::new("gitops-keep");
    let remote = Remote::new();
    let first = remote.commit(
        &[
            ("hosts/web.yaml", Some(&task(""))),
            ("hosts/db.yaml", Some(&task(""))),
        ],
        None,
        "main",
    );
    let cfg = config(remote.root(), &remote.url(), "1s", None);
    let berth = start(&ns, &remote, &cfg);
    let web = wait_for_commit(&ns, "web", &first);
    let db = wait_for_commit(&ns, "db", &first);

    // (A bare repository refuses to delete the branch its HEAD names.)
    common::git::run(remote.git(None).arg("--git-dir").arg(remote.bare()).args([
        "symbolic-ref",
        "HEAD",
        "refs/heads/elsewhere",
    ]));
    remote.delete_branch("main");
    let source = wait_for_source(&berth, "the deleted ref to be reported", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist"))
    });
    assert_eq!(source["commit"], first.as_str());
    // Two more polls: still nothing touched.
    let failures = source["fetch_failures"].as_u64().unwrap_or_default();
    wait_for_source(&berth, "two more failed polls", |s| {
        s["fetch_failures"].as_u64() >= Some(failures + 2)
    });
    assert_eq!(seen(&ns, "web"), Some(web.clone()));
    assert_eq!(seen(&ns, "db"), Some(db.clone()));

    // The ref is back with a commit that breaks web.yaml and changes db.
    remote.push(&first, "main", true);
    let broken = remote.commit(
        &[
            ("hosts/web.yaml", Some("image: [unclosed\n")),
            ("hosts/db.yaml", Some(&task("env: {V: \"2\"}\n"))),
        ],
        None,
        "main",
    );
    wait_for_commit(&ns, "db", &broken);
    let status = wait_for_sync(DEADLINE, "the broken file to be reported", || {
        let s = berth.status()?;
        let errors = s["manifest_errors"].as_array()?.clone();
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("web.yaml:1:")))
            .then_some(s)
    });
    assert_eq!(status["source"]["commit"], broken.as_str());
    assert_eq!(
        seen(&ns, "web"),
        Some(web),
        "web keeps its last good spec (and the commit it came from)"
    );
}

#[test]
fn over_git_daemon_post_sync_and_sighup_fetch_at_once_and_a_dead_remote_touches_nothing() {
    let ns = TestNamespace::new("gitops-daemon");
    let remote = Remote::new();
    let first = remote.commit(&[("hosts/web.yaml", Some(&task("")))], None, "main");
    let (daemon, port) = git_daemon(remote.root());
    let url = format!("git://127.0.0.1:{port}/remote.git");
    // An hour between polls: only the first fetch, POST /v1/sync and
    // SIGHUP can bring anything in.
    let cfg = config(remote.root(), &url, "1h", None);
    let berth = start(&ns, &remote, &cfg);
    let web = wait_for_commit(&ns, "web", &first);

    let second = remote.commit(&[("hosts/db.yaml", Some(&task("")))], None, "main");
    let (code, body) = berth
        .post("/v1/sync")
        .unwrap_or_else(|| panic!("POST /v1/sync: no answer"));
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(answer["commit"], second.as_str(), "{body}");
    wait_for_commit(&ns, "db", &second);

    let third = remote.commit(
        &[("hosts/db.yaml", Some(&task("env: {V: \"3\"}\n")))],
        None,
        "main",
    );
    berth.signal("-HUP");
    let db = wait_for_commit(&ns, "db", &third);

    // The remote goes away: a sync fails, says why, and touches nothing.
    drop(daemon);
    let (code, body) = berth
        .post("/v1/sync")
        .unwrap_or_else(|| panic!("POST /v1/sync: no answer"));
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(answer["commit"], third.as_str(), "{body}");
    assert!(answer["last_error"].as_str().is_some(), "{body}");
    assert_eq!(answer["fetch_failures"], 1, "{body}");
    let (_, metrics) = berth
        .get("/metrics")
        .unwrap_or_else(|| panic!("no /metrics"));
    assert!(
        metrics.contains("berth_source_fetch_failures_total 1"),
        "{metrics}"
    );
    assert_eq!(seen(&ns, "web"), Some(web));
    assert_eq!(seen(&ns, "db"), Some(db));
}

#[test]
fn plan_ref_shows_what_an_unmerged_branch_would_change_and_changes_nothing() {
    let ns = TestNamespace::new("gitops-plan");
    let remote = Remote::new();
    let main = remote.commit(&[("hosts/web.yaml", Some(&task("")))], None, "main");
    let cfg = config(remote.root(), &remote.url(), "1s", None);
    let berth = start(&ns, &remote, &cfg);
    let web = wait_for_commit(&ns, "web", &main);

    // A pull request's branch: web changes, api is new. Not merged.
    let feature = remote.commit(
        &[
            ("hosts/web.yaml", Some(&task("env: {V: \"2\"}\n"))),
            ("hosts/api.yaml", Some(&task(""))),
        ],
        None,
        "feature",
    );
    let state = remote.state().display().to_string();
    let cfg = cfg.display().to_string();
    let plan = |git_ref: &str| {
        common::run_berth(
            &[
                "plan",
                "--config",
                &cfg,
                "--state-dir",
                &state,
                "--namespace",
                &ns.ns,
                "--ref",
                git_ref,
            ],
            DEADLINE,
        )
    };
    let out = plan("feature");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains(&feature), "{stderr}");
    assert!(stdout.contains("api"), "{stdout}");
    assert!(stdout.contains("web") && stdout.contains("V"), "{stdout}");

    let out = plan("main");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = plan("no-such-branch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-branch"), "{stderr}");

    // Planning touched neither the agent's commit nor its containers.
    let source = source_status(&berth);
    assert_eq!(source["commit"], main.as_str(), "{source}");
    assert_eq!(seen(&ns, "web"), Some(web));
    assert!(seen(&ns, "api").is_none());
}

#[test]
fn run_once_applies_the_fetched_commit_and_removal_safety_holds_across_commits() {
    let ns = TestNamespace::new("gitops-safety");
    let remote = Remote::new();
    let first = remote.commit(
        &[
            ("hosts/web.yaml", Some(&task(""))),
            ("hosts/db.yaml", Some(&task(""))),
            ("hosts/README.md", Some("manifests for the edge hosts\n")),
        ],
        None,
        "main",
    );
    let cfg = config(remote.root(), &remote.url(), "1s", None);
    let state = remote.state().display().to_string();
    let cfg_arg = cfg.display().to_string();
    let out = common::run_berth(
        &[
            "run",
            "--once",
            "--config",
            &cfg_arg,
            "--state-dir",
            &state,
            "--namespace",
            &ns.ns,
        ],
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let web = seen(&ns, "web").unwrap_or_else(|| panic!("run --once did not start web"));
    assert_eq!(web.commit.as_deref(), Some(first.as_str()));

    // The agent adopts what run --once made, from the same commit.
    let berth = start(&ns, &remote, &cfg);
    wait_for_source(&berth, "the first commit to be applied", |s| {
        s["commit"] == first.as_str()
    });

    // A commit deleting db: removed after the removal delay, like a file
    // deleted from a folder; switching checkouts holds nothing.
    let second = remote.commit(&[("hosts/db.yaml", None)], None, "main");
    wait_for_sync(DEADLINE, "db to be removed", || {
        seen(&ns, "db").is_none().then_some(())
    });
    let status = berth.status().unwrap_or_default();
    assert_eq!(status["source"]["commit"], second.as_str());
    assert!(status["removals_held"].is_null(), "{status}");
    assert_eq!(seen(&ns, "web"), Some(web.clone()));

    // A commit with no manifest left holds every removal.
    let third = remote.commit(&[("hosts/web.yaml", None)], None, "main");
    let status = wait_for_sync(DEADLINE, "every removal to be held", || {
        let s = berth.status()?;
        (s["source"]["commit"] == third.as_str() && s["removals_held"].is_string()).then_some(s)
    });
    assert!(
        status["removals_held"]
            .as_str()
            .is_some_and(|r| r.contains("has no manifest")),
        "{status}"
    );
    // A commit without the manifest folder is not applied at all.
    let fourth = remote.commit(&[("hosts/README.md", None)], None, "main");
    let source = wait_for_source(&berth, "the commit without hosts/ to be refused", |s| {
        s["remote_commit"] == fourth.as_str()
    });
    assert_eq!(source["commit"], third.as_str(), "{source}");
    assert!(
        source["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("is not a folder")),
        "{source}"
    );
    // Past the removal delay, web still runs as it was.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(seen(&ns, "web"), Some(web));
}

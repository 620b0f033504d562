//! The git source against real repositories made in temporary folders and
//! served on this machine (`file://`, `git daemon`, and sshd when it is
//! installed), with commits signed by keys `ssh-keygen` makes in the test.
//! No Docker: this is the source alone; the engine wiring is tested apart.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::config::{GitSourceConfig, VerifyConfig};
use berth::manifest::duration::Duration as BerthDuration;
use berth::source::{checkout_ref, Change, GitSource, SourceError};

mod common;

use common::git::{free_port, git_daemon, run, wait_for_port, Remote, Server};

const WEB_V1: &str = "image: busybox:1.36\n";
const WEB_V2: &str = "image: busybox:1.37\n";

async fn open(state: &Path, config: &GitSourceConfig) -> GitSource {
    GitSource::open(state, config)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"))
}

async fn sync_ok(source: &mut GitSource) -> Change {
    source.sync().await.unwrap_or_else(|e| panic!("sync: {e}"))
}

fn applied(source: &GitSource) -> String {
    source
        .current()
        .map(|r| r.commit.clone())
        .unwrap_or_else(|| panic!("no commit applied"))
}

/// The content of `file` in the applied manifest folder.
fn applied_file(source: &GitSource, file: &str) -> String {
    let dir = &source
        .current()
        .unwrap_or_else(|| panic!("no commit applied"))
        .manifests;
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Where `<state>/git/<hash>/current` points, as a commit id.
fn current_link(state: &Path) -> String {
    let git = state.join("git");
    let base = std::fs::read_dir(&git)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("no source folder"))
        .path();
    let target = std::fs::read_link(base.join("current")).unwrap_or_else(|e| panic!("{e}"));
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn checkouts(state: &Path) -> Vec<String> {
    let git = state.join("git");
    let base = std::fs::read_dir(&git)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("no source folder"))
        .path();
    let mut names: Vec<String> = std::fs::read_dir(base.join("checkouts"))
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_push_is_picked_up_by_the_next_sync_and_current_switches() {
    let remote = Remote::new();
    let first = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let mut source = open(&remote.state(), &remote.config(&remote.url(), "main")).await;
    assert!(source.current().is_none(), "nothing applied before a sync");

    let change = sync_ok(&mut source).await;
    assert_eq!(
        change,
        Change::Switched {
            from: None,
            to: first.clone(),
            rewind: false
        }
    );
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V1);
    assert_eq!(current_link(&remote.state()), first);
    assert_eq!(sync_ok(&mut source).await, Change::Unchanged);

    let second = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "main");
    let change = sync_ok(&mut source).await;
    assert_eq!(
        change,
        Change::Switched {
            from: Some(first.clone()),
            to: second.clone(),
            rewind: false
        }
    );
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V2);
    assert_eq!(current_link(&remote.state()), second);

    // A third commit: the first checkout is pruned, current and previous stay.
    let third = remote.commit(&[("hosts/db.yaml", Some(WEB_V1))], None, "main");
    sync_ok(&mut source).await;
    let mut expected = vec![second.clone(), third.clone()];
    expected.sort();
    assert_eq!(checkouts(&remote.state()), expected);

    let status = source.status();
    assert_eq!(status.commit.as_deref(), Some(third.as_str()));
    assert_eq!(status.remote_commit.as_deref(), Some(third.as_str()));
    assert!(status
        .commit_subject
        .as_deref()
        .is_some_and(|s| s.contains("db.yaml")));
    assert!(status.commit_time.is_some_and(|t| t > 1_600_000_000));
    assert!(status.last_success.is_some() && status.last_error.is_none());
    assert_eq!((status.fetch_failures, status.rewinds), (0, 0));
}

#[tokio::test]
async fn a_tag_and_a_full_ref_are_followed_and_a_name_that_is_both_is_refused() {
    let remote = Remote::new();
    let first = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    run(remote
        .git(Some(&remote.work()))
        .args(["tag", "-a", "-m", "release", "v1", &first]));
    run(remote
        .git(Some(&remote.work()))
        .args(["push", "-q"])
        .arg(remote.bare())
        .arg("refs/tags/v1"));
    let second = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "main");

    let mut source = open(&remote.state(), &remote.config(&remote.url(), "v1")).await;
    sync_ok(&mut source).await;
    assert_eq!(
        applied(&source),
        first,
        "an annotated tag is peeled to its commit"
    );
    drop(source);

    let state = remote.root().join("state-full-ref");
    let mut source = open(&state, &remote.config(&remote.url(), "refs/heads/main")).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), second);
    drop(source);

    // A branch named like the tag makes `v1` ambiguous: refused, not guessed.
    remote.push(&second, "v1", false);
    let state = remote.root().join("state-ambiguous");
    let mut source = open(&state, &remote.config(&remote.url(), "v1")).await;
    let err = source.sync().await.expect_err("ambiguous ref");
    assert!(matches!(err, SourceError::AmbiguousRef(_)), "{err}");
    assert!(
        err.to_string().contains("refs/heads/v1 or refs/tags/v1"),
        "{err}"
    );
    assert!(source.current().is_none());
}

#[tokio::test]
async fn unsigned_and_unknown_key_commits_are_not_applied_while_a_later_signed_one_is() {
    let remote = Remote::new();
    let trusted = remote.key("trusted");
    let stranger = remote.key("stranger");
    let signers = remote.allowed_signers(&[&trusted]);
    let mut config = remote.config(&remote.url(), "main");
    config.verify = Some(VerifyConfig {
        allowed_signers: signers,
    });

    let good = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], Some(&trusted), "main");
    let mut source = open(&remote.state(), &config).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), good);

    let unsigned = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "main");
    let err = source.sync().await.expect_err("an unsigned commit");
    assert_eq!(
        err.to_string(),
        format!("commit {} not applied: no valid signature", &unsigned[..7])
    );
    assert_eq!(applied(&source), good);
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V1);
    assert_eq!(current_link(&remote.state()), good);
    let status = source.status();
    assert_eq!(status.last_error.as_deref(), Some(err.to_string().as_str()));
    assert_eq!(status.remote_commit.as_deref(), Some(unsigned.as_str()));
    assert_eq!(status.commit.as_deref(), Some(good.as_str()));
    assert_eq!(status.fetch_failures, 0, "the fetch itself worked");

    let unknown = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], Some(&stranger), "main");
    let err = source.sync().await.expect_err("a commit by an unknown key");
    assert!(err
        .to_string()
        .starts_with(&format!("commit {} not applied", &unknown[..7])));
    assert_eq!(applied(&source), good);

    let later = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], Some(&trusted), "main");
    let change = sync_ok(&mut source).await;
    assert_eq!(
        change,
        Change::Switched {
            from: Some(good),
            to: later,
            rewind: false
        }
    );
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V2);
    assert!(source.status().last_error.is_none());
}

#[tokio::test]
async fn a_missing_allowed_signers_file_refuses_every_commit_and_says_why() {
    let remote = Remote::new();
    let trusted = remote.key("trusted");
    remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], Some(&trusted), "main");
    let mut config = remote.config(&remote.url(), "main");
    config.verify = Some(VerifyConfig {
        allowed_signers: remote.root().join("nope"),
    });
    let mut source = open(&remote.state(), &config).await;
    let err = source.sync().await.expect_err("no signers file");
    assert!(err.to_string().contains("no valid signature"), "{err}");
    assert!(err.to_string().contains("cannot be read"), "{err}");
    assert!(source.current().is_none());
}

#[tokio::test]
async fn a_deleted_ref_keeps_the_last_good_commit() {
    let remote = Remote::new();
    remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let edge = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "edge");
    let mut source = open(&remote.state(), &remote.config(&remote.url(), "edge")).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), edge);

    remote.delete_branch("edge");
    let err = source.sync().await.expect_err("the ref is gone");
    assert!(matches!(err, SourceError::RefNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("ref `edge` does not exist"),
        "{err}"
    );
    assert_eq!(applied(&source), edge);
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V2);
    assert_eq!(current_link(&remote.state()), edge);
    assert_eq!(source.status().fetch_failures, 1);
}

#[tokio::test]
async fn a_commit_without_the_manifest_folder_is_not_applied() {
    let remote = Remote::new();
    let good = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let mut source = open(&remote.state(), &remote.config(&remote.url(), "main")).await;
    sync_ok(&mut source).await;

    let moved = remote.commit(
        &[("hosts/web.yaml", None), ("sites/web.yaml", Some(WEB_V1))],
        None,
        "main",
    );
    let err = source.sync().await.expect_err("hosts/ is gone");
    assert_eq!(
        err.to_string(),
        format!(
            "commit {} not applied: `hosts` is not a folder in it",
            &moved[..7]
        )
    );
    assert_eq!(applied(&source), good);

    // A symlink that leads the folder out of the checkout is refused too.
    let escaping = {
        let work = remote.work();
        std::fs::remove_dir_all(work.join("sites")).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(work.join("hosts"));
        std::os::unix::fs::symlink("/etc", work.join("hosts")).unwrap_or_else(|e| panic!("{e}"));
        remote.commit(&[], None, "main")
    };
    let err = source.sync().await.expect_err("hosts -> /etc");
    assert!(err.to_string().contains(&escaping[..7]), "{err}");
    assert_eq!(applied(&source), good);
}

#[tokio::test]
async fn a_force_push_to_an_older_commit_is_applied_and_counted_as_a_rewind() {
    let remote = Remote::new();
    let old = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let new = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "main");
    let mut source = open(&remote.state(), &remote.config(&remote.url(), "main")).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), new);

    remote.push(&old, "main", true);
    let change = sync_ok(&mut source).await;
    assert_eq!(
        change,
        Change::Switched {
            from: Some(new.clone()),
            to: old.clone(),
            rewind: true
        }
    );
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V1);
    assert_eq!(current_link(&remote.state()), old);
    assert_eq!(source.status().rewinds, 1);

    // Moving forward again is not a rewind.
    remote.push(&new, "main", true);
    let change = sync_ok(&mut source).await;
    assert!(
        matches!(change, Change::Switched { rewind: false, .. }),
        "{change:?}"
    );
    assert_eq!(source.status().rewinds, 1);
}

#[tokio::test]
async fn a_pinned_commit_is_applied_and_needs_no_remote_afterwards() {
    let remote = Remote::new();
    let pinned = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "main");
    let mut source = open(&remote.state(), &remote.config(&remote.url(), &pinned)).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), pinned);
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V1);

    std::fs::remove_dir_all(remote.bare()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sync_ok(&mut source).await, Change::Unchanged);
    assert_eq!(source.status().fetch_failures, 0);
}

#[tokio::test]
async fn after_a_restart_the_last_checkout_is_used_before_any_fetch() {
    let remote = Remote::new();
    let good = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let config = remote.config(&remote.url(), "main");
    let mut source = open(&remote.state(), &config).await;
    sync_ok(&mut source).await;
    drop(source);

    // The host reboots with the remote gone.
    std::fs::remove_dir_all(remote.bare()).unwrap_or_else(|e| panic!("{e}"));
    let mut source = open(&remote.state(), &config).await;
    assert_eq!(applied(&source), good);
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V1);
    assert_eq!(source.status().commit.as_deref(), Some(good.as_str()));
    let err = source.sync().await.expect_err("the remote is gone");
    assert!(err.is_fetch_failure(), "{err}");
    assert_eq!(applied(&source), good);
    assert_eq!(source.status().fetch_failures, 1);
}

#[tokio::test]
async fn two_agents_cannot_share_a_state_directory() {
    let remote = Remote::new();
    remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let config = remote.config(&remote.url(), "main");
    let _first = open(&remote.state(), &config).await;
    let err = GitSource::open(&remote.state(), &config)
        .await
        .err()
        .unwrap_or_else(|| panic!("a second open must fail"));
    assert!(matches!(err, SourceError::Locked { .. }), "{err}");
}

#[tokio::test]
async fn over_git_daemon_a_push_is_applied_and_a_stopped_daemon_keeps_the_last_good_commit() {
    let remote = Remote::new();
    let first = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let (daemon, port) = git_daemon(remote.root());
    let url = format!("git://127.0.0.1:{port}/remote.git");
    let mut config = remote.config(&url, "main");
    config.timeout = BerthDuration::from_secs(5);
    let mut source = open(&remote.state(), &config).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), first);

    let second = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "main");
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), second);
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V2);

    drop(daemon);
    remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let started = Instant::now();
    let err = source.sync().await.expect_err("the daemon is stopped");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_fetch_failure(), "{err}");
    assert_eq!(applied(&source), second);
    assert_eq!(applied_file(&source, "web.yaml"), WEB_V2);
    let status = source.status();
    assert_eq!(status.fetch_failures, 1);
    assert_eq!(status.last_error.as_deref(), Some(err.to_string().as_str()));
    assert!(status.last_fetch >= status.last_success);
}

/// Accepts connections and never says a word.
fn silent_listener() -> (std::thread::JoinHandle<()>, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let handle = std::thread::spawn(move || {
        // Every connection is kept open, unanswered, until the process ends.
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    (handle, port)
}

/// Processes whose command line mentions `needle` (our git and its children).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let mut text = String::new();
        if std::fs::File::open(entry.path().join("cmdline"))
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_ok()
            && text.contains(needle)
            && (text.starts_with("git") || text.starts_with("ssh") || text.contains("/git"))
        {
            found.push(text.replace('\0', " "));
        }
    }
    found
}

#[tokio::test]
async fn a_remote_that_accepts_and_never_answers_cannot_hang_sync() {
    let remote = Remote::new();
    let (_listener, port) = silent_listener();
    let key = remote.key("deploy");
    for url in [
        format!("git://127.0.0.1:{port}/x.git"),
        format!("ssh://git@127.0.0.1:{port}/x.git"),
        format!("https://127.0.0.1:{port}/x.git"),
    ] {
        let mut config = remote.config(&url, "main");
        config.timeout = BerthDuration::from_secs(2);
        if url.starts_with("ssh") {
            config.ssh_key_file = Some(key.clone());
        }
        let state = remote.root().join(format!("state-{}", &url[..3]));
        let mut source = open(&state, &config).await;
        let started = Instant::now();
        let err = source.sync().await.expect_err("nothing answers");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(4), "{url}: sync took {took:?}");
        assert!(err.is_fetch_failure(), "{url}: {err}");
        assert!(source.current().is_none());
        // The whole process group went: no git, ssh or remote helper is left.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = processes_mentioning(&format!("127.0.0.1:{port}"));
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: still running: {left:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn hooks_in_the_clone_or_the_remote_never_run() {
    let remote = Remote::new();
    let marker = remote.root().join("hook-ran");
    let hook = format!("#!/bin/sh\necho \"$PWD $0\" >> '{}'\n", marker.display());
    let plant = |dir: &Path| {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        for name in [
            "post-checkout",
            "post-merge",
            "post-index-change",
            "reference-transaction",
            "pre-auto-gc",
            "post-rewrite",
        ] {
            let path = dir.join(name);
            std::fs::write(&path, &hook).unwrap_or_else(|e| panic!("{e}"));
            run(Command::new("chmod").arg("+x").arg(&path));
        }
    };
    // Every push first: the test's own pushes would run the remote's hooks.
    let first = remote.commit(
        &[
            ("hosts/web.yaml", Some(WEB_V1)),
            (".githooks/post-checkout", Some(hook.as_str())),
        ],
        None,
        "main",
    );
    remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "second");
    let third = remote.commit(&[("hosts/db.yaml", Some(WEB_V2))], None, "third");
    plant(&remote.bare().join("hooks"));

    let config = remote.config(&remote.url(), "main");
    let mut source = open(&remote.state(), &config).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), first);
    // Hooks planted in berth's own clone (by anyone) do not run either.
    let base = std::fs::read_dir(remote.state().join("git"))
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("no source folder"))
        .path();
    plant(&base.join("repo").join("hooks"));
    let plan = checkout_ref(&remote.state(), &config, "second")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(plan);
    // Move main without running the remote's hooks: write the ref file.
    std::fs::write(remote.bare().join("refs/heads/main"), format!("{third}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), third);

    assert!(
        !marker.exists(),
        "a hook ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    // The planted hooks are real: git runs them when it is allowed to.
    run(Command::new("git")
        .arg(format!("--git-dir={}", base.join("repo").display()))
        .args(["update-ref", "refs/test/x", "refs/berth/applied"]));
    assert!(
        marker.exists(),
        "the planted reference-transaction hook is not runnable"
    );
}

#[tokio::test]
async fn credentials_never_appear_in_errors_or_status() {
    let remote = Remote::new();
    let token = "tok-DO-NOT-SHOW-4242";
    let token_file = remote.root().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let mut config = remote.config(&format!("https://deployer@127.0.0.1:{port}/x.git"), "main");
    config.token_file = Some(token_file);
    config.timeout = BerthDuration::from_secs(5);
    let mut source = open(&remote.state(), &config).await;
    let err = source.sync().await.expect_err("nothing listens");
    let status = serde_json::to_string(source.status()).unwrap_or_default();
    for shown in [err.to_string(), status.clone(), format!("{err:?}")] {
        assert!(!shown.contains(token), "{shown}");
        assert!(!shown.contains("deployer"), "{shown}");
    }
    assert!(
        status.contains(&format!("https://127.0.0.1:{port}/x.git")),
        "{status}"
    );

    // An ssh key: its content never shows, even when ssh refuses the host.
    let key = remote.key("deploy");
    let key_text = std::fs::read_to_string(&key).unwrap_or_default();
    let key_body: String = key_text.lines().nth(1).unwrap_or_default().to_string();
    let mut config = remote.config(&format!("ssh://git@127.0.0.1:{port}/x.git"), "main");
    config.ssh_key_file = Some(key);
    config.timeout = BerthDuration::from_secs(5);
    let mut source = open(&remote.root().join("state-ssh"), &config).await;
    let err = source.sync().await.expect_err("nothing listens");
    let status = serde_json::to_string(source.status()).unwrap_or_default();
    assert!(!key_body.is_empty());
    for shown in [err.to_string(), status] {
        assert!(!shown.contains(&key_body), "{shown}");
    }
}

#[tokio::test]
async fn plan_checks_out_an_unmerged_branch_apart_and_removes_it_when_done() {
    let remote = Remote::new();
    let trusted = remote.key("trusted");
    let main = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], Some(&trusted), "main");
    let mut config = remote.config(&remote.url(), "main");
    config.verify = Some(VerifyConfig {
        allowed_signers: remote.allowed_signers(&[&trusted]),
    });
    let mut source = open(&remote.state(), &config).await;
    sync_ok(&mut source).await;

    let feature = remote.commit(
        &[("hosts/web.yaml", Some(WEB_V2))],
        Some(&trusted),
        "feature",
    );
    let plan = checkout_ref(&remote.state(), &config, "feature")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.commit(), feature);
    let dir = plan.manifests().to_path_buf();
    assert_eq!(
        std::fs::read_to_string(dir.join("web.yaml")).unwrap_or_default(),
        WEB_V2
    );
    // The agent's applied commit is untouched by a plan beside it.
    assert_eq!(applied(&source), main);
    assert_eq!(current_link(&remote.state()), main);
    drop(plan);
    assert!(!dir.exists(), "the plan checkout is removed on drop");

    let unsigned = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "unsigned");
    let err = checkout_ref(&remote.state(), &config, "unsigned")
        .await
        .expect_err("verified like the agent");
    assert!(err.to_string().contains(&unsigned[..7]), "{err}");
    let err = checkout_ref(&remote.state(), &config, "nope")
        .await
        .expect_err("no such ref");
    assert!(matches!(err, SourceError::RefNotFound { .. }), "{err}");
}

/// sshd on 127.0.0.1 with its own host key and one authorised key.
struct Sshd {
    _server: Server,
    port: u16,
    known_hosts: PathBuf,
    client_key: PathBuf,
}

fn sshd(remote: &Remote) -> Option<Sshd> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        return None;
    }
    let dir = remote.root().join("sshd");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    // sshd insists on its privilege separation folder.
    let _ = std::fs::create_dir_all("/run/sshd");
    let host_key = dir.join("host_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key));
    let client_key = remote.key("client");
    let authorized = dir.join("authorized_keys");
    std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\n",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("sshd: {e}"));
    let server = Server(child);
    wait_for_port(port, "sshd");
    let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap_or_default();
    let known_hosts = dir.join("known_hosts");
    let mut fields = public.split_whitespace();
    let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    Some(Sshd {
        _server: server,
        port,
        known_hosts,
        client_key,
    })
}

#[tokio::test]
async fn over_ssh_a_pinned_host_key_and_deploy_key_fetch_and_a_wrong_host_key_is_refused() {
    let remote = Remote::new();
    let Some(sshd) = sshd(&remote) else {
        eprintln!("SKIPPED: /usr/sbin/sshd is not installed (apt-get install openssh-server)");
        return;
    };
    let whoami = run(Command::new("id").arg("-un"));
    let first = remote.commit(&[("hosts/web.yaml", Some(WEB_V1))], None, "main");
    let url = format!(
        "ssh://{whoami}@127.0.0.1:{}{}",
        sshd.port,
        remote.bare().display()
    );
    let mut config = remote.config(&url, "main");
    config.ssh_key_file = Some(sshd.client_key.clone());
    config.known_hosts_file = Some(sshd.known_hosts.clone());
    let mut source = open(&remote.state(), &config).await;
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), first);
    let second = remote.commit(&[("hosts/web.yaml", Some(WEB_V2))], None, "main");
    sync_ok(&mut source).await;
    assert_eq!(applied(&source), second);
    drop(source);

    // The same server with a host key berth was not told about: refused.
    let other = remote.root().join("other_known_hosts");
    let stranger = remote.key("stranger-host");
    let public = std::fs::read_to_string(stranger.with_extension("pub")).unwrap_or_default();
    let mut fields = public.split_whitespace();
    std::fs::write(
        &other,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            fields.next().unwrap_or(""),
            fields.next().unwrap_or("")
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    config.known_hosts_file = Some(other);
    let mut source = open(&remote.root().join("state-other"), &config).await;
    let err = source.sync().await.expect_err("unknown host key");
    assert!(err.is_fetch_failure(), "{err}");
    assert!(source.current().is_none());
}

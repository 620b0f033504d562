//! A manifest can do only what the host's owner allows: `berth validate`
//! and `berth run` refuse each escape at the manifest's file:line:column
//! (creating no container for it, while the folder's other tasks converge),
//! never show the content of a file they refused to read, and keep a secret
//! (even one interpolated into `args`) out of `plan`, labels, logs and
//! `/v1/status`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::Berth;
use common::{docker, fixture_task, run_berth, run_once_with, wait_for_sync, write, TestNamespace};

fn validate(dir: &std::path::Path) -> (bool, String) {
    let out = run_berth(
        &["validate", dir.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let text = common::output_text(&out);
    (out.status.success(), text)
}

#[test]
fn files_outside_the_allowed_folders_are_refused_at_their_line_without_their_content() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("pw"), "hunter2\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw = outside.path().join("pw");
    std::fs::write(
        dir.path().join("app.yaml"),
        format!(
            "image: busybox:1\nenv:\n  DB: {{file: {}}}\nauth:\n  password_file: ../../../../../../..{}\n",
            pw.display(),
            pw.display()
        ),
    )
    .unwrap();
    let (ok, text) = validate(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("app.yaml:3:14: env.DB:"), "{text}");
    assert!(
        text.contains("app.yaml:5:18: auth.password_file:"),
        "{text}"
    );
    assert!(text.contains("files.allowed_dirs"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn host_network_foreign_containers_and_foreign_volumes_need_the_owners_consent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.yaml"),
        "image: busybox:1\nnetwork_mode: host\npid_mode: container:postgres\nvolumes: [\"pgdata:/data\", \"berth-data:/own\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("berth.yaml"),
        "docker: {volumes: {enabled: false}}\n",
    )
    .unwrap();
    let out = run_berth(
        &[
            "validate",
            "--config",
            dir.path().join("berth.yaml").to_str().unwrap(),
            dir.path().join("app.yaml").to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("app.yaml:2:1: `network_mode: host` is refused"),
        "{text}"
    );
    assert!(text.contains("app.yaml:3:11: `pid_mode: container:<name>` may only name a container of this namespace"), "{text}");
    assert!(
        text.contains("app.yaml:4:11: volume `pgdata:/data` is refused"),
        "{text}"
    );
    assert!(!text.contains("berth-data:/own` is refused"), "{text}");
}

/// `berth plan` on `dir` in `ns`: (exit code, stdout + stderr).
fn plan(ns: &TestNamespace, dir: &Path) -> (Option<i32>, String) {
    let args = [
        "plan",
        "--manifests",
        dir.to_str().unwrap(),
        "--namespace",
        &ns.ns,
    ];
    let out = run_berth(&args, Duration::from_secs(30));
    let text = common::output_text(&out);
    (out.status.code(), text)
}

/// Removes the named Docker volumes a test made, even when it fails.
struct Volumes(Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

fn volume_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["volume", "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// Wait until berth has logged every needle (each on some line).
fn wait_logged(berth: &Berth, needles: &[&str]) -> String {
    wait_for_sync(
        Duration::from_secs(20),
        &format!("berth to log {needles:?}"),
        || {
            let log = berth.log();
            needles.iter().all(|n| log.contains(n)).then_some(log)
        },
    )
}

#[test]
fn a_secret_interpolated_into_args_reaches_the_container_and_nothing_else() {
    let ns = TestNamespace::new("secret-args");
    let dir = tempfile::tempdir().unwrap();
    let manifest = |pw: &str| {
        fixture_task(
            "sleep",
            &["forever", "--password=${DB_PASS}"],
            &format!("env:\n  DB_PASS: {{value: {pw}, secret: true}}\n"),
        )
    };
    write(dir.path(), "app.yaml", &manifest("hunter2"));

    let (code, text) = plan(&ns, dir.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("create app[0]"), "{text}");
    assert!(!text.contains("hunter2"), "plan shows the secret: {text}");

    let berth = Berth::start(&ns, dir.path(), &[]);
    let status = berth.wait_running(Duration::from_secs(30), &[("app", 0)]);
    let c = docker::inspect(&ns.container_name("app", 0)).expect("container app-0");
    let args: Vec<String> = c["Args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        args.iter().any(|a| a == "--password=hunter2"),
        "the program does not get the value: {args:?}"
    );
    let labels = docker::labels_of(&c);
    assert!(!labels.is_empty());
    for (k, v) in &labels {
        assert!(!v.contains("hunter2"), "label {k} shows the secret: {v}");
    }
    // The secret's digests are keyed with the host's key (made by the agent
    // in its state_dir): no label holds an unkeyed digest of it.
    let key = berth::desired::digest_key::DigestKey::load(&common::test_state_dir())
        .unwrap()
        .expect("the agent made its digest key");
    let applied: serde_json::Value = serde_json::from_str(&labels["io.berth.applied"]).unwrap();
    assert_eq!(applied["v"], 2, "{applied}");
    for field in ["env.DB_PASS", "command"] {
        let value = if field == "command" {
            r#"["sleep","forever","--password=hunter2"]"#
        } else {
            "hunter2"
        };
        assert_eq!(
            applied["s"][field].as_str(),
            Some(&key.digest("applied", field, value)[..16]),
            "{applied}"
        );
    }
    use sha2::Digest;
    let unkeyed = hex::encode(sha2::Sha256::digest(b"hunter2"));
    for (k, v) in &labels {
        assert!(
            !v.contains(&unkeyed[..16]),
            "label {k} holds sha256 of the secret: {v}"
        );
    }
    assert!(!status.to_string().contains("hunter2"), "{status}");
    let (code, body) = berth.get("/v1/status").unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains("hunter2"), "{body}");
    let log = berth.log();
    assert!(log.contains("app"), "{log}");
    assert!(
        !log.contains("hunter2"),
        "berth's log shows the secret: {log}"
    );
    drop(berth);

    write(dir.path(), "app.yaml", &manifest("hunter3"));
    let (code, text) = plan(&ns, dir.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("(secret changed)"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("hunter3"),
        "plan shows the secret: {text}"
    );
}

#[test]
fn an_env_file_that_is_a_fifo_is_refused_without_blocking_the_rest() {
    let ns = TestNamespace::new("fifo-env");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    write(
        dir.path(),
        "bad.yaml",
        &fixture_task("sleep", &["forever"], "env:\n  X: {file: pipe}\n"),
    );
    write(
        dir.path(),
        "app.yaml",
        &fixture_task("sleep", &["forever"], ""),
    );

    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(Duration::from_secs(10), &[("app", 0)]);
    wait_logged(&berth, &["bad.yaml:6:13"]);
    for _ in 0..3 {
        let (code, _) = berth.get("/healthz").expect("berth keeps answering");
        assert_eq!(code, 200);
        assert!(berth.status().is_some(), "berth keeps answering /v1/status");
    }
    assert!(docker::inspect(&ns.container_name("bad", 0)).is_none());
}

#[test]
fn container_modes_may_name_only_this_namespace() {
    let ns = TestNamespace::new("container-mode");
    let foreign = format!("fgn-{}", ns.ns);
    ns.foreign(&foreign, &[]);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "app.yaml",
        &fixture_task(
            "sleep",
            &["forever"],
            &format!("pid_mode: container:{foreign}\n"),
        ),
    );
    write(
        dir.path(),
        "main.yaml",
        &fixture_task("sleep", &["forever"], ""),
    );
    write(
        dir.path(),
        "side.yaml",
        &fixture_task(
            "sleep",
            &["forever"],
            &format!("network_mode: container:{}\n", ns.container_name("main", 0)),
        ),
    );

    let out = run_berth(
        &[
            "validate",
            "--namespace",
            &ns.ns,
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("app.yaml:5:11: `pid_mode: container:<name>` may only name a container of this namespace"),
        "{text}"
    );
    assert!(!text.contains("side.yaml"), "{text}");

    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(Duration::from_secs(30), &[("main", 0), ("side", 0)]);
    wait_logged(&berth, &["app.yaml:5:11"]);
    assert!(docker::inspect(&ns.container_name("app", 0)).is_none());
    let side = docker::inspect(&ns.container_name("side", 0)).unwrap();
    let main = docker::inspect(&ns.container_name("main", 0)).unwrap();
    let mode = side["HostConfig"]["NetworkMode"]
        .as_str()
        .unwrap()
        .to_string();
    let target = mode.strip_prefix("container:").unwrap_or_default();
    assert!(
        target == main["Id"].as_str().unwrap() || target == ns.container_name("main", 0),
        "{mode}"
    );
}

#[test]
fn foreign_volumes_and_host_network_are_refused_by_run() {
    let ns = TestNamespace::new("volumes");
    let foreign = format!("pgdata-{}", ns.ns);
    let own = format!("{}-data", ns.ns);
    let _volumes = Volumes(vec![foreign.clone(), own.clone()]);
    let conf = tempfile::tempdir().unwrap();
    let config = conf.path().join("berth.yaml");
    std::fs::write(&config, "docker: {volumes: {enabled: false}}\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vol = |v: &str| {
        fixture_task(
            "sleep",
            &["forever"],
            &format!("volumes: [\"{v}:/data\"]\n"),
        )
    };
    write(dir.path(), "bad.yaml", &vol(&foreign));
    write(dir.path(), "good.yaml", &vol(&own));
    write(
        dir.path(),
        "host.yaml",
        &fixture_task("sleep", &["forever"], "network_mode: host\n"),
    );

    let berth = Berth::start(&ns, dir.path(), &["--config", config.to_str().unwrap()]);
    berth.wait_running(Duration::from_secs(30), &[("good", 0)]);
    let log = wait_logged(
        &berth,
        &[
            &format!("bad.yaml:5:11: volume `{foreign}:/data` is refused"),
            "host.yaml:5:1: `network_mode: host` is refused",
        ],
    );
    assert!(!log.contains(&format!("`{own}:/data` is refused")), "{log}");
    assert!(docker::inspect(&ns.container_name("bad", 0)).is_none());
    assert!(docker::inspect(&ns.container_name("host", 0)).is_none());
    assert!(!volume_exists(&foreign), "a refused volume was created");
    let good = docker::inspect(&ns.container_name("good", 0)).unwrap();
    let mounts = good["Mounts"].to_string();
    assert!(mounts.contains(&own), "{mounts}");
}

#[test]
fn an_env_file_outside_the_allowed_folders_is_not_read_by_run() {
    let ns = TestNamespace::new("env-outside");
    let outside = tempfile::tempdir().unwrap();
    let pw = outside.path().join("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.yaml",
        &fixture_task(
            "sleep",
            &["forever"],
            &format!("env:\n  DB: {{file: {}}}\n", pw.display()),
        ),
    );
    write(
        dir.path(),
        "app.yaml",
        &fixture_task("sleep", &["forever"], ""),
    );

    let berth = Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(Duration::from_secs(30), &[("app", 0)]);
    let log = wait_logged(&berth, &["bad.yaml:6:14: env.DB:", "files.allowed_dirs"]);
    assert!(!log.contains("hunter2"), "{log}");
    let (_, body) = berth.get("/v1/status").unwrap();
    assert!(!body.contains("hunter2"), "{body}");
    assert!(docker::inspect(&ns.container_name("bad", 0)).is_none());
}

#[test]
fn a_labelled_container_beyond_the_gates_is_not_adopted_nor_touched() {
    let ns = TestNamespace::new("adopt-gate");
    let host_dir = tempfile::tempdir().unwrap();
    let volume = format!("{}:/host", host_dir.path().display());
    let (name, id) = hand_made(&ns, &["run", "-d"], &["--network", "host", "-v", &volume]);
    let conf = tempfile::tempdir().unwrap();
    let config = conf.path().join("berth.yaml");
    std::fs::write(&config, "docker: {volumes: {enabled: false}}\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "app.yaml",
        &fixture_task("sleep", &["forever"], ""),
    );
    write(
        dir.path(),
        "other.yaml",
        &fixture_task("sleep", &["forever"], ""),
    );

    let berth = Berth::start(
        &ns,
        dir.path(),
        &["--config", config.to_str().unwrap(), "--resync", "2s"],
    );
    berth.wait_running(Duration::from_secs(30), &[("other", 0)]);
    let needle = format!("container {name} (task app, index 0) is not adopted");
    let log = wait_logged(&berth, &[&needle, "the host's network namespace"]);
    assert!(
        log.contains(&host_dir.path().display().to_string()),
        "{log}"
    );
    let status = wait_for_sync(Duration::from_secs(10), "the refusal in /v1/status", || {
        berth.status().filter(|s| s.to_string().contains(&needle))
    });
    assert!(status.to_string().contains("app"), "{status}");
    // A second pass changes nothing: still there, still running, still the only one.
    let before = berth.passes();
    wait_for_sync(Duration::from_secs(20), "another pass", || {
        (berth.passes() > before).then_some(())
    });
    let c = docker::inspect(&name).expect("the container is left alone");
    assert_eq!(c["Id"].as_str().unwrap(), id);
    assert_eq!(c["State"]["Running"], true, "{c}");
    one_app_and_plan_says(&ns, dir.path(), berth, &needle);
}

/// `ns` has exactly one `app` container; once `berth` is stopped, `plan`
/// exits 1 and names `needle`.
fn one_app_and_plan_says(ns: &TestNamespace, dir: &Path, berth: Berth, needle: &str) {
    let app: Vec<_> = docker::ps(&ns.ns)
        .into_iter()
        .filter(|p| p.name.contains("-app-"))
        .collect();
    assert_eq!(app.len(), 1, "{app:?}");
    drop(berth);

    let (code, text) = plan(ns, dir);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(needle), "{text}");
}

/// A container made by hand (`make` is `run -d` or `create`, plus
/// `docker_flags`) wearing berth's labels for `app[0]` in `ns`, under
/// berth's name for it: (name, id).
fn hand_made(ns: &TestNamespace, make: &[&str], docker_flags: &[&str]) -> (String, String) {
    let name = ns.container_name("app", 0);
    let made = Command::new("docker")
        .args(make)
        .args(["--name", &name])
        .args(docker_flags)
        .args(["--label", &format!("io.berth.namespace={}", ns.ns)])
        .args([
            "--label",
            "io.berth.task=app",
            "--label",
            "io.berth.index=0",
        ])
        .args([common::fixture_image().as_str(), "sleep", "forever"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let id = String::from_utf8_lossy(&made.stdout).trim().to_string();
    (name, id)
}

/// What Docker's container list does not show (`--privileged`, `--pid
/// host`) the gate still sees: a hand-made labelled container with it is left
/// alone (same id, in the same state), reported in the log, `/v1/status`
/// and `plan`, and its task gets no second container. `make` is `run -d`,
/// or `create` where the host cannot start such a container (a daemon in a
/// container may not grant `--privileged` its capabilities): berth adopting
/// it would start or replace it.
fn a_hand_made_container_is_left_alone(
    ns: &str,
    make: &[&str],
    docker_flags: &[&str],
    phrase: &str,
) {
    let ns = TestNamespace::new(ns);
    let (name, id) = hand_made(&ns, make, docker_flags);
    let dir = tempfile::tempdir().unwrap();
    for task in ["app", "other"] {
        write(
            dir.path(),
            &format!("{task}.yaml"),
            &fixture_task("sleep", &["forever"], ""),
        );
    }
    let berth = Berth::start(&ns, dir.path(), &["--resync", "2s"]);
    berth.wait_running(Duration::from_secs(30), &[("other", 0)]);
    let needle = format!("container {name} (task app, index 0) is not adopted");
    wait_logged(&berth, &[&needle, phrase]);
    wait_for_sync(Duration::from_secs(10), "the refusal in /v1/status", || {
        berth.status().filter(|s| s.to_string().contains(&needle))
    });
    let before = berth.passes();
    wait_for_sync(Duration::from_secs(20), "another pass", || {
        (berth.passes() > before).then_some(())
    });
    let c = docker::inspect(&name).expect("the container is left alone");
    assert_eq!(c["Id"].as_str().unwrap(), id);
    let state = if make[0] == "create" {
        "created"
    } else {
        "running"
    };
    assert_eq!(c["State"]["Status"], state, "{c}");
    one_app_and_plan_says(&ns, dir.path(), berth, &needle);
}

#[test]
fn a_hand_made_privileged_container_is_not_adopted() {
    a_hand_made_container_is_left_alone(
        "adopt-priv",
        &["create"],
        &["--privileged"],
        "privileged (needs",
    );
}

#[test]
fn a_hand_made_container_in_the_hosts_pid_namespace_is_not_adopted() {
    a_hand_made_container_is_left_alone(
        "adopt-pid",
        &["run", "-d"],
        &["--pid", "host"],
        "the host's pid namespace",
    );
}

/// A user-defined Docker network a test made: `net-<namespace>`, named with
/// the test's namespace (so no other test or host network is ever touched)
/// but not of it (`<namespace>-*` networks need no listing). Dropping it
/// removes the containers still on it, then the network, even when the test
/// fails.
struct Network(String);

impl Network {
    fn create(ns: &TestNamespace) -> Network {
        let network = Network(format!("net-{}", ns.ns));
        let made = Command::new("docker")
            .args(["network", "create", &network.0])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        network
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let on = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("network={}", self.0)])
            .output();
        let ids: Vec<String> = on
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// `berth run --once` on `dir` in `ns` with the agent config `config`.
fn run_once_config(ns: &TestNamespace, dir: &Path, config: &Path) -> std::process::Output {
    run_once_with(
        dir,
        &ns.ns,
        &["--config", config.to_str().unwrap()],
        Duration::from_secs(120),
    )
}

/// `network_mode: <network>` joins only the networks the owner lists in
/// `docker.networks.allowed`. With the key, the task runs on its network.
/// Without it (an upgrade: the container from before still runs) `validate`
/// and `run` refuse the manifest at its line, saying what to add, while the
/// running container is neither stopped nor adopted and the other tasks
/// run. With the key back, it is adopted as it is.
#[test]
fn a_network_not_listed_in_the_agent_config_is_refused_and_stops_nothing() {
    let ns = TestNamespace::new("networks");
    let network = Network::create(&ns);
    let net = network.0.as_str();
    let conf = tempfile::tempdir().unwrap();
    let listed = conf.path().join("listed.yaml");
    std::fs::write(
        &listed,
        format!("docker: {{networks: {{allowed: [{net}]}}}}\n"),
    )
    .unwrap();
    let unlisted = conf.path().join("unlisted.yaml");
    std::fs::write(&unlisted, "docker: {privileged: {enabled: true}}\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "app.yaml",
        &fixture_task("sleep", &["forever"], &format!("network_mode: {net}\n")),
    );
    write(
        dir.path(),
        "other.yaml",
        &fixture_task("sleep", &["forever"], ""),
    );
    let app_name = ns.container_name("app", 0);

    let out = run_once_config(&ns, dir.path(), &listed);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let app = docker::inspect(&app_name).expect("app-0 runs");
    assert_eq!(app["State"]["Running"], true, "{app}");
    assert!(
        app["NetworkSettings"]["Networks"].get(net).is_some(),
        "{}",
        app["NetworkSettings"]["Networks"]
    );
    let id = app["Id"].as_str().unwrap().to_string();

    // Privilege does not stand in for the list.
    let out = run_berth(
        &[
            "validate",
            "--namespace",
            &ns.ns,
            "--config",
            unlisted.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    let refused = format!("app.yaml:5:1: `network_mode: {net}` is refused");
    assert!(text.contains(&refused), "{text}");
    let fix = format!("add it in the agent config: `docker: {{networks: {{allowed: [{net}]}}}}`");
    assert!(text.contains(&fix), "{text}");
    assert!(!text.contains("other.yaml"), "{text}");

    let berth = Berth::start(
        &ns,
        dir.path(),
        &["--config", unlisted.to_str().unwrap(), "--resync", "2s"],
    );
    berth.wait_running(Duration::from_secs(60), &[("other", 0)]);
    let not_adopted = format!("container {app_name} (task app, index 0) is not adopted: network `{net}` not of this namespace (not in docker.networks.allowed)");
    wait_logged(&berth, &[&refused, &fix, &not_adopted]);
    let before = berth.passes();
    wait_for_sync(Duration::from_secs(60), "two more passes", || {
        (berth.passes() >= before + 2).then_some(())
    });
    let app = docker::inspect(&app_name).expect("the running container is left alone");
    assert_eq!(app["Id"].as_str().unwrap(), id);
    assert_eq!(app["State"]["Running"], true, "{app}");
    drop(berth);

    let out = run_once_config(&ns, dir.path(), &listed);
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("not adopted"), "{text}");
    let app = docker::inspect(&app_name).expect("app-0 runs");
    assert_eq!(app["Id"].as_str().unwrap(), id, "adopted, not replaced");
}

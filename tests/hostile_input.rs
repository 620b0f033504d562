//! Hostile and malformed manifests: the loader must never panic, must answer
//! within bounded time and memory, and crafted names or labels must never
//! let a manifest reach a container berth does not own.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth::desired::folder::load_folder;
use berth::desired::spec::ContainerSpec;
use berth::manifest::parse::parse_manifest_file;
use berth::manifest::validate::{check_file, ValidationContext};
use berth::names::{labels, InstanceKey};
use proptest::prelude::*;

fn ctx() -> ValidationContext {
    ValidationContext::default()
}

/// Fragments that make near-valid YAML when glued together at random.
fn fragment() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "name: web\n",
        "image: busybox:1\n",
        "count: 3\n",
        "count: -1\n",
        "args: [\"a\", \"b\"]\n",
        "env:\n  A: 1\n",
        "env: {B: {file: /x, secret: true}}\n",
        "ports: {http: {}}\n",
        "port_map: {http: 80}\n",
        "---\n",
        "&a [*a]\n",
        "key: &x\n  - *x\n",
        "  - \n",
        ": :\n",
        "{{{{\n",
        "]]]\n",
        "restart: {delay: 1x}\n",
        "imgae: x\n",
        "\t\n",
        "\"unterminated\n",
        "labels: {io.berth.namespace: evil}\n",
        "name: ../../etc\n",
        "!!binary aGVsbG8=\n",
        "? complex\n: key\n",
        "%YAML 1.2\n",
        "args: [\"${nope}\"]\n",
        "hostname: \"$${x}\"\n",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = check_file("junk.yaml", &text, &ctx());
    }

    #[test]
    fn near_valid_yaml_never_panics_and_errors_carry_the_file(parts in prop::collection::vec(fragment(), 0..12)) {
        let text: String = parts.concat();
        match check_file("near.yaml", &text, &ctx()) {
            Ok(tasks) => {
                for t in tasks {
                    prop_assert!(berth::manifest::is_valid_name(&t.name), "accepted bad name {:?}", t.name);
                    prop_assert!(t.manifest.labels.keys().all(|k| !k.starts_with(labels::PREFIX)));
                }
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    prop_assert!(e.to_string().starts_with("near.yaml:"), "{e}");
                }
            }
        }
    }
}

#[test]
fn an_alias_bomb_is_rejected_quickly() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("image: *a11\n");
    let started = Instant::now();
    let result = parse_manifest_file("bomb.yaml", &text);
    assert!(result.is_err(), "an alias bomb must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn deep_nesting_is_rejected_with_a_clear_error() {
    let depth = 10_000;
    let text = format!(
        "image: busybox\nlabels: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let started = Instant::now();
    let errors = parse_manifest_file("deep.yaml", &text).expect_err("must be refused");
    assert!(
        errors[0].to_string().starts_with("deep.yaml:"),
        "{}",
        errors[0]
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_100_mb_file_is_refused_without_reading_it_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.yaml");
    let file = std::fs::File::create(&big).expect("create");
    // A sparse file: 100 MB on paper, no disk or memory spent.
    file.set_len(100 * 1024 * 1024).expect("set_len");
    std::fs::write(dir.path().join("ok.yaml"), "image: busybox:1\n").expect("write");
    let started = Instant::now();
    let loaded = load_folder(dir.path(), &ctx()).expect("folder loads");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(loaded.failed_files.contains("big.yaml"));
    assert!(
        loaded.tasks.contains_key("ok"),
        "the good file next to it still loads"
    );
    let message = loaded
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(message.contains("big.yaml"), "{message}");
}

#[test]
fn binary_junk_and_non_utf8_names_are_errors_not_crashes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("junk.yaml"),
        [0xff, 0xfe, 0x00, 0x9f, 0x92, 0x96],
    )
    .expect("write");
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.yaml");
    std::fs::write(dir.path().join(odd), "image: busybox:1\n").expect("write");
    let loaded = load_folder(dir.path(), &ctx()).expect("folder loads");
    assert!(loaded.tasks.is_empty());
    assert!(loaded.failed_files.contains("junk.yaml"));
    assert!(loaded.errors.len() >= 2, "{:?}", loaded.errors);
}

#[test]
fn names_crafted_to_escape_are_refused() {
    for name in [
        "../etc",
        "a/b",
        "web-0/../x",
        "Web",
        "-web",
        "web-",
        "a b",
        "other-ns-web",
    ] {
        let text = format!("name: \"{name}\"\nimage: busybox:1\n");
        let result = check_file("crafted.yaml", &text, &ctx());
        // Only the last is a valid name: it becomes <ns>-other-ns-web-0 in our
        // namespace, and ownership is by label, not by name.
        assert_eq!(result.is_ok(), name == "other-ns-web", "{name}: {result:?}");
    }
}

#[test]
fn labels_trying_to_set_berth_labels_are_refused_and_could_not_win_anyway() {
    let text = "name: web\nimage: busybox:1\nlabels:\n  io.berth.namespace: other\n";
    let errors = check_file("evil.yaml", text, &ctx()).expect_err("refused");
    assert!(errors[0].to_string().contains("io.berth"), "{}", errors[0]);

    // Even a spec built by hand cannot override berth's own labels.
    let mut spec = ContainerSpec::for_image("busybox:1");
    spec.labels = BTreeMap::from([
        (labels::NAMESPACE.to_string(), "other".to_string()),
        (labels::SPEC_HASH.to_string(), "0".repeat(64)),
    ]);
    let l = spec.container_labels("berth", &InstanceKey::new("web", 0), "web.yaml");
    assert_eq!(l[labels::NAMESPACE], "berth");
    assert_eq!(l[labels::SPEC_HASH], spec.hash());
}

fn fifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

fn all_errors(loaded: &berth::desired::folder::LoadedFolder) -> String {
    loaded
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A folder whose `web.yaml` is a symlink to a shadow-like password file
/// (kept in the first temporary folder).
fn folder_with_a_manifest_linked_to_a_password_file() -> (tempfile::TempDir, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("tempdir");
    let shadow = secrets.path().join("shadow");
    std::fs::write(
        &shadow,
        "root:$6$Zk3+Qx/secret=hash:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n",
    )
    .expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(&shadow, dir.path().join("web.yaml")).expect("symlink");
    (secrets, dir)
}

#[test]
fn a_manifest_symlinked_to_a_secret_file_is_an_error_that_shows_none_of_it() {
    let (_secrets, dir) = folder_with_a_manifest_linked_to_a_password_file();
    let loaded = load_folder(dir.path(), &ctx()).expect("folder loads");
    assert!(loaded.failed_files.contains("web.yaml"));
    let message = all_errors(&loaded);
    assert!(message.contains("web.yaml:1:"), "{message}");
    for leaked in ["root", "$6$", "Zk3", "secret", "19000", "bin"] {
        assert!(!message.contains(leaked), "{leaked} in {message}");
    }
}

/// The same through the real binary: `berth validate`'s output, the
/// agent's log and `/v1/status` name the file and position of a manifest
/// that is a symlink to a password file, and nothing of its content.
#[test]
fn a_manifest_symlinked_to_a_password_file_shows_none_of_it_in_validate_log_or_status() {
    let ns = common::TestNamespace::new("hostile-link");
    let (_secrets, dir) = folder_with_a_manifest_linked_to_a_password_file();
    common::write(
        dir.path(),
        "ok.yaml",
        &common::fixture_task("sleep", &["forever"], ""),
    );
    let leaks = ["$6$", "Zk3", "Qx/secret", "secret=hash", "19000", "99999"];
    let out = common::run_berth(
        &["validate", dir.path().to_str().unwrap()],
        Duration::from_secs(20),
    );
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("web.yaml:1:"), "{text}");
    for leaked in leaks {
        assert!(!text.contains(leaked), "validate shows {leaked}: {text}");
    }

    let berth = common::process::Berth::start(&ns, dir.path(), &[]);
    berth.wait_running(Duration::from_secs(30), &[("ok", 0)]);
    let body = common::wait_for_sync(
        Duration::from_secs(20),
        "the broken file in /v1/status",
        || {
            berth
                .get("/v1/status")
                .map(|(_, body)| body)
                .filter(|b| b.contains("web.yaml:1:"))
        },
    );
    let log = berth.log();
    assert!(log.contains("web.yaml:1:"), "{log}");
    for leaked in leaks {
        assert!(!body.contains(leaked), "/v1/status shows {leaked}: {body}");
        assert!(!log.contains(leaked), "the log shows {leaked}: {log}");
    }
}

#[test]
fn fifos_as_manifests_or_env_files_are_errors_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    fifo(&dir.path().join("pipe.yaml"));
    fifo(&dir.path().join("token"));
    std::fs::write(
        dir.path().join("app.yaml"),
        "image: busybox:1\nenv:\n  TOKEN: {file: token}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("ok.yaml"), "image: busybox:1\n").expect("write");
    let started = Instant::now();
    let loaded = load_folder(dir.path(), &ctx()).expect("folder loads");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(loaded.tasks.contains_key("ok"));
    let message = all_errors(&loaded);
    assert!(message.contains("pipe.yaml:0:0: is a FIFO"), "{message}");
    assert!(
        message.contains(
            "app.yaml:3:17: env.TOKEN: `token` is a FIFO (named pipe), not a regular file"
        ),
        "{message}"
    );
}

#[test]
fn a_huge_env_file_is_refused_by_its_size_without_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = std::fs::File::create(dir.path().join("big.env")).expect("create");
    big.set_len(300 * 1024 * 1024).expect("set_len");
    std::fs::write(
        dir.path().join("app.yaml"),
        "image: busybox:1\nenv:\n  BIG: {file: big.env}\n",
    )
    .expect("write");
    let started = Instant::now();
    let loaded = load_folder(dir.path(), &ctx()).expect("folder loads");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "took {took:?}");
    let message = all_errors(&loaded);
    assert!(
        message.contains("app.yaml:3:15: env.BIG: `big.env` is larger than the agent's limit of 1048576 bytes (files.max_size)"),
        "{message}"
    );
}

#[test]
fn traversal_paths_out_of_the_allowed_folders_are_refused_without_reading() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("pw"), "hunter2\n").expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = dir.path().join("m");
    std::fs::create_dir(&inner).expect("mkdir");
    // A symlink inside the folder that leads out of it counts as outside.
    std::os::unix::fs::symlink(outside.path().join("pw"), inner.join("link")).expect("symlink");
    let up = "../".repeat(12);
    for (i, path) in [
        format!("{up}etc/shadow"),
        format!("{up}{}", outside.path().join("pw").display()),
        "link".to_string(),
        "/etc/passwd".to_string(),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(
            inner.join("app.yaml"),
            format!("image: busybox:1\nauth:\n  password_file: \"{path}\"\n"),
        )
        .expect("write");
        let loaded = load_folder(&inner, &ctx()).expect("folder loads");
        assert!(loaded.tasks.is_empty(), "case {i}");
        let message = all_errors(&loaded);
        assert!(
            message.contains("app.yaml:3:18: auth.password_file:")
                && message.contains("outside the folders the agent allows"),
            "case {i}: {message}"
        );
        assert!(
            !message.contains("hunter2") && !message.contains("root:"),
            "{message}"
        );
    }
}

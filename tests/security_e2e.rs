//! A manifest can do only what the host's owner allows: `berth validate`
//! refuses each escape at the manifest's file:line:column, and never shows
//! the content of a file it refused to read.

mod common;

use std::time::Duration;

use common::run_berth;

fn validate(dir: &std::path::Path) -> (bool, String) {
    let out = run_berth(
        &["validate", dir.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

//! Fleet selectors end to end with the real `berth` binary and Docker: one
//! folder, two agents that differ only in `meta`; a task with `select:` runs
//! on the matching one, and leaves a host whose agent stops matching exactly
//! as a deleted task would, touching nothing else.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{docker, fixture_image, run_berth, TestNamespace};

const BERTH_TIMEOUT: Duration = Duration::from_secs(90);

fn write_config(dir: &Path, name: &str, manifests: &Path, ns: &str, role: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "manifests: {}\nnamespace: {ns}\nmeta: {{role: {role}}}\n",
            manifests.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

/// Container name → id, for the namespace.
fn containers(ns: &str) -> std::collections::BTreeMap<String, String> {
    docker::ps(ns)
        .into_iter()
        .map(|entry| (entry.name, entry.id))
        .collect()
}

fn run_once(config: &str) {
    let out = run_berth(&["run", "--once", "--config", config], BERTH_TIMEOUT);
    assert!(
        out.status.success(),
        "berth run --once --config {config}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_selected_task_runs_only_on_a_matching_agent_and_leaves_when_it_stops_matching() {
    let guard = TestNamespace::new("select");
    let ns = guard.ns.as_str();
    let image = fixture_image();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap_or_else(|e| panic!("{e}"));
    let task = |select: &str| {
        format!("image: {image}\nargs: [\"sleep\", \"forever\"]\nstop_timeout: 1s\n{select}")
    };
    std::fs::write(
        manifests.join("gw.yaml"),
        task("select:\n  meta.role: gateway\n  node.hostname: \"*\"\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(manifests.join("all.yaml"), task("")).unwrap_or_else(|e| panic!("{e}"));
    let worker = write_config(tmp.path(), "worker.yaml", &manifests, ns, "worker");
    let gateway = write_config(tmp.path(), "gateway.yaml", &manifests, ns, "gateway");
    let (gw, all) = (
        guard.container_name("gw", 0),
        guard.container_name("all", 0),
    );

    run_once(&worker);
    let on_worker = containers(ns);
    assert_eq!(
        on_worker.keys().collect::<Vec<_>>(),
        vec![&all],
        "a worker runs only the task without select:"
    );
    // Not selected is not an error: validate passes for the worker.
    let out = run_berth(&["validate", "--config", &worker], BERTH_TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    run_once(&gateway);
    let on_gateway = containers(ns);
    assert!(on_gateway.contains_key(&gw), "{on_gateway:?}");
    assert_eq!(on_gateway[&all], on_worker[&all], "all-0 was left alone");

    // The agent's meta changes back: gw is removed, all-0 is untouched.
    run_once(&worker);
    let after = containers(ns);
    assert!(!after.contains_key(&gw), "{after:?}");
    assert_eq!(after[&all], on_worker[&all]);
}

//! berth in operation, against the real Docker daemon: the HTTP endpoints
//! (`/healthz`, `/metrics`, `/v1/status`), `berth status`, and `berth plan`'s
//! field-by-field diffs. Each test runs `berth run` as a child process in its
//! own namespace, on a free port.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{free_addr, Berth};
use common::{
    docker, fixture_image, fixture_image_tag, run_berth, wait_for_sync, DockerProxy, TestNamespace,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn sleeper(name: &str, image: &str, count: u32) -> String {
    format!(
        "name: {name}\nimage: {image}\npull: never\ncount: {count}\ncommand: sleep\nargs: [\"forever\"]\nstop_timeout: 1s\n"
    )
}

/// Checks the Prometheus/OpenMetrics text format line by line: comments,
/// or `name{label="value",...} number`. Returns the samples.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "unterminated labels in {line:?}");
            let inner = &labels[1..labels.len() - 1];
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line:?}"
                );
                assert!(v.starts_with('"'), "unquoted label value in {line:?}");
            }
        }
        samples.push((series.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[test]
fn healthz_is_200_while_converged_and_503_once_docker_has_been_away_for_the_limit() {
    let ns = TestNamespace::new("healthz");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "app.yaml", &sleeper("app", &fixture_image(), 1));
    let mut proxy = DockerProxy::start(&dir.path().join("docker.sock"));
    let endpoint = format!("unix://{}", proxy.path.display());
    let berth = Berth::start(
        &ns,
        &manifests,
        &[
            "--resync",
            "2s",
            "--docker-endpoint",
            &endpoint,
            "--docker-down-limit",
            "3s",
        ],
    );

    berth.wait_running(DEADLINE, &[("app", 0)]);
    wait_for_sync(DEADLINE, "/healthz 200", || {
        berth.get("/healthz").filter(|(c, _)| *c == 200)
    });

    proxy.stop();
    let lost = std::time::Instant::now();
    // One resync (2 s) to notice, the limit (3 s), and slack for a loaded host.
    let (_, reason) = wait_for_sync(Duration::from_secs(15), "/healthz 503", || {
        berth.get("/healthz").filter(|(c, _)| *c == 503)
    });
    assert!(
        lost.elapsed() >= Duration::from_secs(3),
        "503 came before the 3 s limit: {:?}",
        lost.elapsed()
    );
    assert!(reason.contains("Docker has been unreachable"), "{reason}");
    assert_eq!(
        reason.trim().lines().count(),
        1,
        "one-line reason: {reason}"
    );
    // And the container kept running: berth losing Docker stops nothing.
    assert_eq!(docker::ps(&ns.ns)[0].state, "running");
}

#[test]
fn healthz_is_503_from_the_start_when_docker_is_unreachable() {
    let ns = TestNamespace::new("healthz-dead");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    let endpoint = format!("unix://{}/nonexistent.sock", dir.path().display());
    let berth = Berth::start(
        &ns,
        &manifests,
        &["--docker-endpoint", &endpoint, "--docker-down-limit", "1s"],
    );
    // Until the loop first beats, /healthz is 503 for that reason: wait past it.
    let (_, reason) = wait_for_sync(DEADLINE, "/healthz answering 503", || {
        berth
            .get("/healthz")
            .filter(|(c, body)| *c == 503 && !body.contains("the loop has not started yet"))
    });
    assert!(reason.contains("Docker has been unreachable"), "{reason}");
    let (code, metrics) = berth.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        sample(&parse_metrics(&metrics), "berth_docker_up"),
        Some(0.0)
    );
}

#[test]
fn metrics_parse_as_prometheus_text_and_restarts_move_when_a_task_restarts() {
    let ns = TestNamespace::new("metrics");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "app.yaml", &sleeper("app", &fixture_image(), 1));
    // A short resync: this test is about the counter, not about how fast a
    // Docker event leads to the restart.
    let berth = Berth::start(&ns, &manifests, &["--resync", "3s"]);
    berth.wait_running(DEADLINE, &[("app", 0)]);

    let (code, text) = berth.get("/metrics").unwrap();
    assert_eq!(code, 200);
    let samples = parse_metrics(&text);
    for name in [
        "berth_passes_total{result=\"ok\"}",
        "berth_pass_duration_seconds_count",
        "berth_tasks{state=\"running\"}",
        "berth_manifest_errors",
        "berth_docker_up",
        "berth_backoff_seconds{task=\"app\"}",
    ] {
        assert!(
            sample(&samples, name).is_some(),
            "{name} missing in\n{text}"
        );
    }
    assert_eq!(sample(&samples, "berth_docker_up"), Some(1.0));
    assert!(
        samples
            .iter()
            .any(|(s, _)| s.starts_with("berth_docker_info{version=")),
        "{text}"
    );
    let restarts = "berth_restarts_total{task=\"app\"}";
    let before = sample(&samples, restarts).unwrap_or(0.0);

    let name = ns.container_name("app", 0);
    let out = Command::new("docker")
        .args(["kill", &name])
        .output()
        .unwrap();
    assert!(out.status.success());

    wait_for_sync(DEADLINE, "berth_restarts_total to move", || {
        let (_, text) = berth.get("/metrics")?;
        let after = sample(&parse_metrics(&text), restarts)?;
        (after > before).then_some(())
    });
    assert_eq!(docker::ps(&ns.ns)[0].state, "running");
}

#[test]
fn status_over_http_and_the_cli_list_every_instance_and_an_invalid_manifests_error() {
    let ns = TestNamespace::new("status");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "app.yaml", &sleeper("app", &fixture_image(), 2));
    write(&manifests, "one.yaml", &sleeper("one", &fixture_image(), 1));
    write(
        &manifests,
        "broken.yaml",
        "name: broken\nimage: [unclosed\n",
    );
    let berth = Berth::start(&ns, &manifests, &[]);
    let status = berth.wait_running(DEADLINE, &[("app", 0), ("app", 1), ("one", 0)]);

    let errors = status["manifest_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("broken.yaml:")),
        "{errors:?}"
    );
    assert!(status["docker_version"].is_string(), "{status}");
    assert_eq!(status["berth_version"], env!("CARGO_PKG_VERSION"));
    assert!(status["last_pass"].is_u64(), "{status}");
    for i in status["instances"].as_array().unwrap() {
        assert!(
            i["container_id"].is_string() && i["desired_hash"].is_string(),
            "{i}"
        );
        assert!(i["uptime_secs"].is_u64(), "{i}");
    }

    let listen = berth.addr.to_string();
    let out = run_berth(&["status", "--json", "--listen", &listen], DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["instances"].as_array().unwrap().len(), 3, "{cli}");
    assert!(
        cli["manifest_errors"].to_string().contains("broken.yaml:"),
        "{cli}"
    );

    let out = run_berth(&["status", "--listen", &listen], DEADLINE);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("TASK"), "{table}");
    for header in [
        "INDEX",
        "STATE",
        "CONTAINER",
        "UPTIME",
        "RESTARTS",
        "NEXT RETRY",
        "LAST ERROR",
    ] {
        assert!(table.lines().next().unwrap().contains(header), "{table}");
    }
    assert!(
        table.contains("MANIFEST ERRORS") && table.contains("broken.yaml:"),
        "{table}"
    );

    // No berth on the port: said so, and the labels' view is shown.
    let nobody = free_addr().to_string();
    let out = run_berth(
        &[
            "status",
            "--json",
            "--listen",
            &nobody,
            "--namespace",
            &ns.ns,
        ],
        DEADLINE,
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("no berth answering on {nobody}")),
        "{stderr}"
    );
    let labels: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(labels["instances"].as_array().unwrap().len(), 3, "{labels}");
}

#[test]
fn plan_names_changed_fields_and_never_shows_a_secret() {
    let ns = TestNamespace::new("plan-diff");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    let image_a = fixture_image_tag("berth-fixture:ops-plan-a");
    let image_b = fixture_image_tag("berth-fixture:ops-plan-b");
    ns.track_image(&image_a);
    ns.track_image(&image_b);
    let secret_file = manifests.join("db-password");
    std::fs::write(&secret_file, "s3cr3t-one\n").unwrap();
    let manifest = |image: &str| {
        format!(
            "{}env:\n  MODE: dev\n  DB_PASSWORD: {{file: {}, secret: true}}\n",
            sleeper("app", image, 1),
            secret_file.display()
        )
    };
    write(&manifests, "app.yaml", &manifest(&image_a));
    let m = manifests.display().to_string();
    let out = run_berth(
        &["run", "--once", "--manifests", &m, "--namespace", &ns.ns],
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An image change: the field with old and new value, human and JSON.
    write(&manifests, "app.yaml", &manifest(&image_b));
    let out = run_berth(
        &["plan", "--manifests", &m, "--namespace", &ns.ns],
        DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("image: {image_a} → {image_b}")),
        "{text}"
    );
    assert!(!text.contains("DB_PASSWORD"), "only changed fields: {text}");
    let out = run_berth(
        &["plan", "--json", "--manifests", &m, "--namespace", &ns.ns],
        DEADLINE,
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = &view["actions"][0]["changes"];
    assert_eq!(changes[0]["field"], "image", "{view}");
    assert_eq!(changes[0]["old"], image_a.as_str());
    assert_eq!(changes[0]["new"], image_b.as_str());

    // A secret change (image back as it was): named, never shown.
    write(&manifests, "app.yaml", &manifest(&image_a));
    std::fs::write(&secret_file, "s3cr3t-two\n").unwrap();
    let human = run_berth(
        &["plan", "--manifests", &m, "--namespace", &ns.ns],
        DEADLINE,
    );
    let json = run_berth(
        &["plan", "--json", "--manifests", &m, "--namespace", &ns.ns],
        DEADLINE,
    );
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("env.DB_PASSWORD: (secret changed)"), "{text}");
    let view: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(view["actions"][0]["changes"][0]["field"], "env.DB_PASSWORD");
    assert_eq!(view["actions"][0]["changes"][0]["secret"], true);
    for out in [&human, &json] {
        let all = common::output_text(out);
        assert!(!all.contains("s3cr3t"), "secret leaked: {all}");
    }
    let inspect = docker::inspect(&ns.container_name("app", 0)).unwrap();
    let labels = inspect["Config"]["Labels"].to_string();
    assert!(labels.contains("io.berth.applied"), "{labels}");
    assert!(!labels.contains("s3cr3t"), "secret in labels: {labels}");
}

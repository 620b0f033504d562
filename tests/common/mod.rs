//! Shared by the integration tests: the fixture image (built and imported
//! without a registry), a namespace guard that removes whatever a test made
//! even when it panics, and helpers to run berth and to wait with deadlines.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub mod git;
pub mod process;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use process::{berth_command, run_berth, run_berth_env, run_once, run_once_with};

/// How the fixture image is made: shared with the benchmark.
#[path = "../../bench/src/fixture_image.rs"]
mod fixture_image_recipe;

pub const FIXTURE_REPO: &str = fixture_image_recipe::REPO;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command to completion, panicking with its stderr when it fails.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fixture image `berth-fixture:<sha256 prefix of the binary>`, built
/// and imported on first use.
///
/// The binary is built static (`+crt-static`) into `target/fixture` so the
/// main build's artefacts are not invalidated by the different RUSTFLAGS.
/// Safe to call from many threads (one build per process via `OnceLock`) and
/// many test processes (cargo locks its target dir; the import runs under
/// `flock`, and is skipped when the tag exists, so the tag never moves).
pub fn fixture_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(build_and_import_fixture).clone()
}

fn build_and_import_fixture() -> String {
    fixture_image_recipe::ensure(&workspace_root()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `docker import` the fixture binary as `tag` (see the recipe).
fn import_binary(binary: &Path, tag: &str, replace: bool) {
    fixture_image_recipe::import(binary, tag, replace).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Another tag for the fixture image (same image id), e.g. for tests that
/// change a task's image reference.
pub fn fixture_image_tag(tag: &str) -> String {
    let image = fixture_image();
    run(
        Command::new("docker").args(["tag", &image, tag]),
        &format!("docker tag {image} {tag}"),
    );
    tag.to_string()
}

/// A fresh image with its own id (a second `docker import` of the fixture
/// binary), for tests that remove images. Register it with
/// [`TestNamespace::track_image`] so it is removed afterwards.
pub fn fixture_image_copy(tag: &str) -> String {
    let image = fixture_image();
    let hash = image.rsplit(':').next().unwrap_or_default().to_string();
    let binary = workspace_root().join("target/fixture/x86_64-unknown-linux-gnu/release/fixture");
    assert!(!hash.is_empty() && binary.exists());
    import_binary(&binary, tag, true);
    tag.to_string()
}

/// One namespace per test; dropping it removes every container labelled
/// with it, plus the foreign containers and images the test registered.
pub struct TestNamespace {
    pub ns: String,
    foreign: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl TestNamespace {
    /// `t-<short test name>-<random>`, at most 20 characters and valid as a
    /// berth namespace.
    pub fn new(test: &str) -> TestNamespace {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut short: String = test
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(10)
            .collect();
        while short.ends_with('-') {
            short.pop();
        }
        let seed = format!(
            "{}-{}-{}-{test}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let random = &hex::encode(Sha256::digest(seed.as_bytes()))[..6];
        let ns = if short.is_empty() {
            format!("t-{random}")
        } else {
            format!("t-{short}-{random}")
        };
        assert!(
            berth::manifest::is_valid_name(&ns) && ns.len() <= 20,
            "{ns}"
        );
        TestNamespace {
            ns,
            foreign: Mutex::new(Vec::new()),
            images: Mutex::new(Vec::new()),
        }
    }

    /// The container name berth gives (task, index) in this namespace.
    pub fn container_name(&self, task: &str, index: u32) -> String {
        format!("{}-{task}-{index}", self.ns)
    }

    /// Start a container berth does not own (`docker run -d`, the fixture
    /// sleeping) with the given labels; the guard removes it too.
    pub fn foreign(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let image = fixture_image();
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", name]);
        for (k, v) in labels {
            cmd.args(["--label", &format!("{k}={v}")]);
        }
        cmd.args([image.as_str(), "sleep", "forever"]);
        let id = run(&mut cmd, &format!("docker run {name}"))
            .trim()
            .to_string();
        self.foreign.lock().unwrap().push(id.clone());
        id
    }

    /// Remove `image` when the test ends.
    pub fn track_image(&self, image: &str) {
        self.images.lock().unwrap().push(image.to_string());
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let mut ids = docker::ids(&self.ns);
        ids.extend(self.foreign.lock().map(|f| f.clone()).unwrap_or_default());
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let images = self.images.lock().map(|i| i.clone()).unwrap_or_default();
        if !images.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&images)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Path of the berth binary under test.
pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// Where berths under test keep state and their namespace locks: inside the
/// build directory, never in the host's /var/lib/berth or /run/berth.
pub fn test_state_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("berth-state")
}

/// Poll `f` until it yields `Some`, panicking after `deadline` with `what`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The blocking twin of [`wait_for`], for tests without a runtime.
pub fn wait_for_sync<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A task running the fixture program (`command` + `args`), never pulled,
/// plus extra YAML lines.
pub fn fixture_task(command: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "image: {}\npull: never\ncommand: {command}\nargs: [{}]\n{extra}",
        fixture_image(),
        args.join(", ")
    )
}

/// Write `text` to `dir/file`.
pub fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

/// What a finished command printed, stdout then stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Looking at Docker through its CLI: an independent witness of what berth did.
pub mod docker {
    use super::*;

    /// Docker's recorded events from `since` until now, filtered by
    /// `filters` (`label=…`, `event=die`, `container=…`), one line each as
    /// `format` (a Go template) renders it.
    pub fn events(since: SystemTime, filters: &[&str], format: &str) -> Vec<String> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let mut cmd = Command::new("docker");
        cmd.args([
            "events",
            "--since",
            &format!("{:.3}", secs(since)),
            "--until",
            &format!("{:.3}", secs(SystemTime::now())),
        ]);
        for f in filters {
            cmd.args(["--filter", f]);
        }
        let out = cmd.args(["--format", format]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[derive(Debug, Clone, PartialEq)]
    pub struct PsEntry {
        pub name: String,
        pub id: String,
        pub state: String,
        pub labels: BTreeMap<String, String>,
    }

    /// Ids of every container (running or not) of a namespace.
    pub fn ids(ns: &str) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("label=io.berth.namespace={ns}"),
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `docker <args>`, which must succeed.
    pub fn cli(args: &[&str]) {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `docker inspect` of every container of a namespace.
    pub fn inspect_all(ns: &str) -> Vec<serde_json::Value> {
        let ids = ids(ns);
        if ids.is_empty() {
            return Vec::new();
        }
        let out = Command::new("docker")
            .arg("inspect")
            .args(&ids)
            .output()
            .unwrap();
        // A container removed between ps and inspect makes inspect exit 1
        // but still print the others.
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Every container of a namespace, sorted by name.
    pub fn ps(ns: &str) -> Vec<PsEntry> {
        let all = inspect_all(ns);
        let mut entries: Vec<PsEntry> = all
            .iter()
            .map(|c| PsEntry {
                name: c["Name"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                id: c["Id"].as_str().unwrap_or_default().to_string(),
                state: c["State"]["Status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                labels: labels_of(c),
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries
    }

    /// The labels of a container from `docker inspect` JSON.
    pub fn labels_of(c: &serde_json::Value) -> BTreeMap<String, String> {
        c["Config"]["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `docker inspect <name>` as JSON, `None` when there is no such container.
    pub fn inspect(name: &str) -> Option<serde_json::Value> {
        let out = Command::new("docker")
            .args(["inspect", "--type", "container", name])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let mut all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        all.pop()
    }
}

/// A Unix-socket proxy in front of Docker's socket that a test can cut, so
/// Docker becomes unreachable for one berth alone (the machine's daemon is
/// never restarted).
pub struct DockerProxy {
    pub path: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
}

impl DockerProxy {
    pub fn start(path: &Path) -> DockerProxy {
        let _ = std::fs::remove_file(path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(path).unwrap()
        };
        rt.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        DockerProxy {
            path: path.to_path_buf(),
            rt: Some(rt),
        }
    }

    /// Cut Docker off: the listener and every forwarded connection go.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Chaos: for a while (60 s by default), at random, edit, delete, re-add and
//! corrupt manifests; `docker kill` and `docker rm -f` berth's containers;
//! kill -9 berth and start it again; start foreign look-alike containers.
//! Then stop, let berth converge, and check that exactly the final folder
//! runs: one container per (task, index), the right spec, no leftovers, and
//! no foreign container touched. Throughout, no two containers of one
//! identity may run at once.
//!
//! `BERTH_CHAOS_SEED=<n>` replays a run; `BERTH_CHAOS_SECS=<n>` sets its length.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::Berth;
use common::{berth_command, docker, fixture_image, wait_for_sync, TestNamespace};

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

#[test]
fn berth_converges_to_the_final_folder_after_a_minute_of_chaos() {
    let seed = std::env::var("BERTH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let secs: u64 = std::env::var("BERTH_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
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

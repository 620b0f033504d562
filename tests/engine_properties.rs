//! Properties of the engine (plan → dispatch → plan) over the in-memory
//! runtime with random per-call latencies, under tokio's paused clock (no
//! Docker here, no real waiting):
//!
//! - it converges: every desired instance ends with one running container
//!   of its spec, and nothing else of ours is left;
//! - never two chains for one instance at once: no two mutating calls on
//!   containers of the same instance are ever in progress together;
//! - a crashed instance's restart is dispatched by the first pass after its
//!   exit, whatever else (slow stops, slow pulls) is in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::clock::Clock;
use berth::config::AgentConfig;
use berth::desired::registry::RegistryCredentials;
use berth::engine::controller::Controller;
use berth::engine::plan::Action;
use berth::engine::pulls::LogPulls;
use berth::engine::trigger::Trigger;
use berth::names::InstanceKey;
use berth::runtime::fake::FakeRuntime;
use berth::runtime::{
    ContainerRuntime, ContainerState, CreateRequest, ObservedContainer, ProgressFn, Result,
};
use proptest::prelude::*;

const NS: &str = "prop";

/// Wraps the fake and checks, at every mutating call, that no other
/// mutating call on a container of the same instance is in progress.
struct Exclusive {
    inner: FakeRuntime,
    in_progress: Mutex<BTreeMap<InstanceKey, u32>>,
    violations: AtomicU64,
}

struct Busy<'a> {
    rt: &'a Exclusive,
    key: Option<InstanceKey>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            if let Ok(mut m) = self.rt.in_progress.lock() {
                if let Some(n) = m.get_mut(key) {
                    *n -= 1;
                }
            }
        }
    }
}

impl Exclusive {
    fn key_of(&self, id_or_name: &str) -> Option<InstanceKey> {
        self.inner
            .all()
            .into_iter()
            .find(|c| c.id == id_or_name || c.name == id_or_name)
            .and_then(|c| c.key())
    }

    fn enter(&self, key: Option<InstanceKey>) -> Busy<'_> {
        if let Some(k) = &key {
            let mut m = self.in_progress.lock().unwrap();
            let n = m.entry(k.clone()).or_default();
            *n += 1;
            if *n > 1 {
                self.violations.fetch_add(1, Ordering::SeqCst);
            }
        }
        Busy { rt: self, key }
    }
}

impl ContainerRuntime for Exclusive {
    async fn list(&self, namespace: &str) -> Result<Vec<ObservedContainer>> {
        self.inner.list(namespace).await
    }
    async fn inspect(&self, name_or_id: &str) -> Result<ObservedContainer> {
        self.inner.inspect(name_or_id).await
    }
    async fn create(&self, req: CreateRequest<'_>) -> Result<String> {
        let key = req.labels.get("io.berth.task").and_then(|t| {
            let i = req.labels.get("io.berth.index")?.parse().ok()?;
            Some(InstanceKey::new(t.clone(), i))
        });
        let _b = self.enter(key);
        self.inner.create(req).await
    }
    async fn start(&self, id: &str) -> Result<()> {
        let _b = self.enter(self.key_of(id));
        self.inner.start(id).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let _b = self.enter(self.key_of(id));
        self.inner.stop(id, grace).await
    }
    async fn remove(&self, id: &str) -> Result<()> {
        let _b = self.enter(self.key_of(id));
        self.inner.remove(id).await
    }
    async fn rename(&self, id: &str, new_name: &str) -> Result<()> {
        let _b = self.enter(self.key_of(id));
        self.inner.rename(id, new_name).await
    }
    async fn image_present(&self, image: &str) -> Result<bool> {
        self.inner.image_present(image).await
    }
    async fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
        progress: ProgressFn<'_>,
    ) -> Result<()> {
        self.inner.pull(image, credentials, progress).await
    }
    async fn remove_image(&self, image: &str) -> Result<()> {
        self.inner.remove_image(image).await
    }
    async fn version(&self) -> Result<String> {
        self.inner.version().await
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// task → (count, image version) before and after an edit.
    before: BTreeMap<String, (u32, u8)>,
    after: BTreeMap<String, (u32, u8)>,
    /// Latency seed and scale (ms) per call.
    seed: u64,
    max_latency_ms: u64,
}

fn tasks() -> impl Strategy<Value = BTreeMap<String, (u32, u8)>> {
    let task =
        prop::sample::select(vec!["web", "api", "db", "cache", "queue"]).prop_map(String::from);
    prop::collection::btree_map(task, (0u32..3, 0u8..3), 0..5)
}

fn case() -> impl Strategy<Value = Case> {
    (tasks(), tasks(), any::<u64>(), 0u64..3000).prop_map(|(before, after, seed, max)| Case {
        before,
        after,
        seed,
        max_latency_ms: max,
    })
}

fn write_folder(dir: &std::path::Path, tasks: &BTreeMap<String, (u32, u8)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (task, (count, version)) in tasks {
        std::fs::write(
            dir.join(format!("{task}.yaml")),
            format!("image: img:{version}\ncount: {count}\nstop_timeout: 30s\n"),
        )
        .unwrap();
    }
}

/// A deterministic pseudo-random latency per call.
fn latency(seed: u64, max_ms: u64) -> impl Fn(&'static str) -> Duration + Send + Sync {
    let n = AtomicU64::new(seed | 1);
    move |kind| {
        if kind == "list" || max_ms == 0 {
            return Duration::ZERO;
        }
        // xorshift
        let mut x = n.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        n.store(x, Ordering::Relaxed);
        Duration::from_millis(x % max_ms)
    }
}

fn controller(dir: &std::path::Path, rt: Arc<Exclusive>, clock: Clock) -> Controller<Exclusive> {
    let config = AgentConfig {
        manifests: dir.to_path_buf(),
        namespace: NS.into(),
        parallelism: 2,
        // The case may empty the folder on purpose.
        allow_empty: true,
        removal_delay: berth::manifest::duration::Duration::from_secs(0),
        ..AgentConfig::default()
    };
    Controller::with_parts(rt, config, clock, Arc::new(LogPulls))
}

/// Pass, complete work and wait for timers until the controller reports
/// convergence; returns the number of passes, or None after `limit`.
async fn settle(c: &mut Controller<Exclusive>, limit: usize) -> Option<usize> {
    let mut trigger = Trigger::Startup;
    for n in 0..limit {
        let report = c.pass(&trigger).await.expect("the fake lists");
        if report.converged() {
            return Some(n);
        }
        let wait = report
            .plan
            .next_due()
            .and_then(|t| t.duration_since(c.clock().now()).ok())
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            done = c.next_done() => {
                let key = done.key.clone();
                c.complete(done);
                trigger = Trigger::WorkDone { key };
            }
            () = tokio::time::sleep(wait) => trigger = Trigger::BackoffDue,
        }
    }
    None
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_converges_with_random_latencies_and_never_runs_two_chains_for_one_instance(c in case()) {
        paused().block_on(async {
            let clock = Clock::tokio();
            let fake = FakeRuntime::new().with_clock(clock);
            for v in 0..3 {
                fake.add_image(&format!("img:{v}"));
            }
            fake.set_latency_fn(latency(c.seed, c.max_latency_ms));
            let rt = Arc::new(Exclusive { inner: fake, in_progress: Mutex::default(), violations: AtomicU64::new(0) });
            let dir = tempfile::tempdir().unwrap();
            write_folder(dir.path(), &c.before);
            let mut ctl = controller(dir.path(), rt.clone(), clock);
            prop_assert!(settle(&mut ctl, 200).await.is_some(), "no convergence before the edit");

            // Edit the folder while nothing is in flight, then converge again.
            write_folder(dir.path(), &c.after);
            prop_assert!(settle(&mut ctl, 200).await.is_some(), "no convergence after the edit");

            prop_assert_eq!(rt.violations.load(Ordering::SeqCst), 0, "two chains for one instance");
            let ours: Vec<_> = rt.inner.list(NS).await.unwrap();
            let want: BTreeSet<(String, u32)> = c.after.iter()
                .flat_map(|(t, (n, _))| (0..*n).map(move |i| (t.clone(), i)))
                .collect();
            let have: BTreeSet<(String, u32)> = ours.iter()
                .filter_map(|c| c.key()).map(|k| (k.task, k.index)).collect();
            prop_assert_eq!(&have, &want);
            for container in &ours {
                let key = container.key().unwrap();
                prop_assert_eq!(container.state, ContainerState::Running);
                prop_assert_eq!(&container.name, &key.container_name(NS));
                let version = c.after[&key.task].1;
                prop_assert_eq!(&container.image, &format!("img:{version}"));
            }
            Ok(())
        })?;
    }

    #[test]
    fn a_crash_is_restarted_by_the_first_pass_after_it_whatever_is_in_flight(
        seed in any::<u64>(),
        slow_stop_secs in 5u64..3600,
        slow_pull_secs in 5u64..3600,
    ) {
        paused().block_on(async {
            let clock = Clock::tokio();
            let fake = FakeRuntime::new().with_clock(clock);
            fake.add_image("img:0");
            let rt = Arc::new(Exclusive { inner: fake, in_progress: Mutex::default(), violations: AtomicU64::new(0) });
            let dir = tempfile::tempdir().unwrap();
            let tasks = BTreeMap::from([
                ("slowstop".to_string(), (1, 0)),
                ("slowpull".to_string(), (1, 0)),
                ("victim".to_string(), (1, 0)),
            ]);
            write_folder(dir.path(), &tasks);
            let mut ctl = controller(dir.path(), rt.clone(), clock);
            prop_assert!(settle(&mut ctl, 50).await.is_some());

            // Stops take `slow_stop_secs`, pulls `slow_pull_secs`, the rest a
            // random few ms.
            let quick = latency(seed, 50);
            rt.inner.set_latency_fn(move |kind| match kind {
                "stop" => Duration::from_secs(slow_stop_secs),
                "pull" => Duration::from_secs(slow_pull_secs),
                other => quick(other),
            });
            // slowstop gets a new env (a replacement that stops for long);
            // slowpull a new image that must be pulled.
            std::fs::write(dir.path().join("slowstop.yaml"), "image: img:0\nenv: {V: '2'}\nstop_timeout: 1h\n").unwrap();
            std::fs::write(dir.path().join("slowpull.yaml"), "image: img:new\n").unwrap();
            let report = ctl.pass(&Trigger::ManifestsChanged).await.unwrap();
            prop_assert_eq!(report.dispatched, 2);
            tokio::time::sleep(Duration::from_secs(2)).await;
            prop_assert_eq!(ctl.busy().len(), 2, "both are still in flight");

            // The victim dies; the next pass restarts it at once.
            let victim = rt.inner.inspect(&format!("{NS}-victim-0")).await.unwrap();
            rt.inner.exit(&victim.id, 137, clock.now());
            let report = ctl.pass(&Trigger::DockerEvent { task: Some("victim".into()) }).await.unwrap();
            let restarted = report.plan.actions.iter().any(|a| matches!(a,
                Action::Start { restart: true, desired, .. } if desired.key.task == "victim"));
            prop_assert!(restarted, "the victim's restart was not dispatched: {}", report.plan);
            let done = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    let d = ctl.next_done().await;
                    let is_victim = d.key.task == "victim";
                    ctl.complete(d);
                    if is_victim { break; }
                }
            }).await;
            prop_assert!(done.is_ok(), "the victim's restart waited behind other work");
            let victim = rt.inner.inspect(&format!("{NS}-victim-0")).await.unwrap();
            prop_assert!(victim.is_running());
            prop_assert_eq!(ctl.busy().len(), 2, "the slow work is still in flight");
            prop_assert_eq!(rt.violations.load(Ordering::SeqCst), 0);
            Ok(())
        })?;
    }
}

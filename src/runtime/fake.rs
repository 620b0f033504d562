//! An in-memory container engine for unit and property tests of the planner
//! and apply. It keeps Docker's rules that berth relies on (unique names, 409
//! on a taken name, 404 for a missing container, 304 for a no-op start/stop)
//! and counts mutating calls so tests can prove a pass was idempotent.
//!
//! Warning: never use it to test Docker behaviour itself; integration tests
//! talk to the real daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{
    ContainerRuntime, ContainerState, CreateRequest, Health, ObservedContainer, ProgressFn,
    PullProgress, RegistryCredentials, Result, RuntimeError,
};
use crate::clock::Clock;
use crate::names::labels;

/// How long a call of a given kind (`"list"`, `"stop"`, `"pull"`, ...) takes.
type LatencyFn = Box<dyn Fn(&'static str) -> Duration + Send + Sync>;

#[derive(Default)]
struct World {
    containers: BTreeMap<String, ObservedContainer>,
    images: BTreeSet<String>,
    /// Images that fail to pull, to test pull failures.
    unpullable: BTreeSet<String>,
    /// Mutating calls by kind, e.g. `create`, `start`.
    calls: BTreeMap<&'static str, u64>,
    /// Reading calls (`list`, `inspect`) by kind.
    reads: BTreeMap<&'static str, u64>,
    /// Containers (by id or name) whose inspect fails.
    uninspectable: BTreeSet<String>,
    /// When set, every call fails as if Docker were down.
    down: bool,
}

/// The in-memory runtime. Cheap to create; one per test.
#[derive(Default)]
pub struct FakeRuntime {
    world: Mutex<World>,
    next_id: AtomicU64,
    clock: Clock,
    latency: Mutex<Option<Arc<LatencyFn>>>,
    /// Calls in progress by kind, and the most ever at once.
    in_progress: Mutex<BTreeMap<&'static str, (u64, u64)>>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Timestamps (starts, exits) from `clock`, e.g. [`Clock::tokio`] under
    /// paused time.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Every call takes `latency` (on tokio's clock) before it acts.
    pub fn set_latency(&self, latency: Duration) {
        self.set_latency_fn(move |_| latency);
    }

    /// Each call takes what `f` says for its kind before it acts.
    pub fn set_latency_fn(&self, f: impl Fn(&'static str) -> Duration + Send + Sync + 'static) {
        if let Ok(mut l) = self.latency.lock() {
            *l = Some(Arc::new(Box::new(f)));
        }
    }

    /// The most calls of `kind` that were ever in progress at once.
    pub fn max_concurrent(&self, kind: &str) -> u64 {
        self.in_progress
            .lock()
            .map(|m| m.get(kind).map_or(0, |v| v.1))
            .unwrap_or(0)
    }

    async fn delay(&self, kind: &'static str) -> InProgress<'_> {
        if let Ok(mut m) = self.in_progress.lock() {
            let entry = m.entry(kind).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(entry.0);
        }
        let guard = InProgress { fake: self, kind };
        let latency = self.latency.lock().ok().and_then(|l| l.clone());
        if let Some(f) = latency {
            let d = f(kind);
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
        guard
    }

    fn with<T>(&self, f: impl FnOnce(&mut World) -> Result<T>) -> Result<T> {
        let mut world = self
            .world
            .lock()
            .map_err(|_| RuntimeError::Other("fake runtime poisoned".into()))?;
        if world.down {
            return Err(RuntimeError::Unavailable("fake daemon is down".into()));
        }
        f(&mut world)
    }

    fn count(world: &mut World, call: &'static str) {
        *world.calls.entry(call).or_default() += 1;
    }

    fn count_read(world: &mut World, call: &'static str) {
        *world.reads.entry(call).or_default() += 1;
    }

    /// Reading calls of one kind (`list`, `inspect`) so far.
    pub fn reads(&self, kind: &str) -> u64 {
        self.world
            .lock()
            .map(|w| w.reads.get(kind).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Make every inspect of `id_or_name` fail (or succeed again).
    pub fn set_uninspectable(&self, id_or_name: &str, failing: bool) {
        if let Ok(mut w) = self.world.lock() {
            if failing {
                w.uninspectable.insert(id_or_name.to_string());
            } else {
                w.uninspectable.remove(id_or_name);
            }
        }
    }

    /// Total mutating calls so far (create, start, stop, remove, rename, pull, remove_image).
    pub fn mutations(&self) -> u64 {
        self.world
            .lock()
            .map(|w| w.calls.values().sum())
            .unwrap_or(0)
    }

    /// Mutating calls of one kind.
    pub fn calls(&self, kind: &str) -> u64 {
        self.world
            .lock()
            .map(|w| w.calls.get(kind).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn add_image(&self, image: &str) {
        if let Ok(mut w) = self.world.lock() {
            w.images.insert(image.to_string());
        }
    }

    pub fn make_unpullable(&self, image: &str) {
        if let Ok(mut w) = self.world.lock() {
            w.unpullable.insert(image.to_string());
        }
    }

    pub fn set_down(&self, down: bool) {
        if let Ok(mut w) = self.world.lock() {
            w.down = down;
        }
    }

    /// Put a container into the world directly (a foreign one, or a leftover).
    pub fn insert(&self, container: ObservedContainer) {
        if let Ok(mut w) = self.world.lock() {
            w.containers.insert(container.id.clone(), container);
        }
    }

    /// Simulate the process of a container exiting on its own.
    pub fn exit(&self, id_or_name: &str, code: i64, at: SystemTime) {
        if let Ok(mut w) = self.world.lock() {
            if let Some(c) = find_mut(&mut w, id_or_name) {
                c.state = ContainerState::Exited;
                c.exit_code = Some(code);
                c.finished_at = Some(at);
            }
        }
    }

    /// Simulate Docker's healthcheck verdict.
    pub fn set_health(&self, id_or_name: &str, health: Health) {
        if let Ok(mut w) = self.world.lock() {
            if let Some(c) = find_mut(&mut w, id_or_name) {
                c.health = health;
            }
        }
    }

    /// Every container, owned or not, sorted by name.
    pub fn all(&self) -> Vec<ObservedContainer> {
        let mut all: Vec<_> = self
            .world
            .lock()
            .map(|w| w.containers.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// Counts a call as in progress until dropped.
struct InProgress<'a> {
    fake: &'a FakeRuntime,
    kind: &'static str,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.fake.in_progress.lock() {
            if let Some(entry) = m.get_mut(self.kind) {
                entry.0 = entry.0.saturating_sub(1);
            }
        }
    }
}

/// Ids that look like Docker's: 64 hex digits whose prefixes differ.
pub fn fake_id(n: u64) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(n.to_le_bytes()))
}

fn find_mut<'a>(world: &'a mut World, id_or_name: &str) -> Option<&'a mut ObservedContainer> {
    world
        .containers
        .values_mut()
        .find(|c| c.id == id_or_name || c.name == id_or_name)
}

fn find(world: &World, id_or_name: &str) -> Result<ObservedContainer> {
    world
        .containers
        .values()
        .find(|c| c.id == id_or_name || c.name == id_or_name)
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound(format!("no such container: {id_or_name}")))
}

impl ContainerRuntime for FakeRuntime {
    async fn list(&self, namespace: &str) -> Result<Vec<ObservedContainer>> {
        let _busy = self.delay("list").await;
        self.with(|w| {
            Self::count_read(w, "list");
            // As Docker's list: of what a container reaches, only the
            // network mode and the mounts; the rest takes an inspect.
            Ok(w.containers
                .values()
                .filter(|c| c.labels.get(labels::NAMESPACE).map(String::as_str) == Some(namespace))
                .map(|c| ObservedContainer {
                    host: c.host.as_listed(),
                    ..c.clone()
                })
                .collect())
        })
    }

    async fn inspect(&self, name_or_id: &str) -> Result<ObservedContainer> {
        let _busy = self.delay("inspect").await;
        self.with(|w| {
            Self::count_read(w, "inspect");
            if w.uninspectable.contains(name_or_id) {
                return Err(RuntimeError::Other(format!(
                    "inspect of {name_or_id} failed"
                )));
            }
            find(w, name_or_id)
        })
    }

    async fn create(&self, req: CreateRequest<'_>) -> Result<String> {
        let _busy = self.delay("create").await;
        let id = fake_id(self.next_id.fetch_add(1, Ordering::SeqCst));
        self.with(|w| {
            if let Some(holder) = w.containers.values().find(|c| c.name == req.name) {
                return Err(RuntimeError::Conflict(format!(
                    "The container name \"/{}\" is already in use by container \"{}\"",
                    req.name, holder.id
                )));
            }
            if !w.images.contains(&req.spec.image) {
                return Err(RuntimeError::NotFound(format!(
                    "No such image: {}",
                    req.spec.image
                )));
            }
            Self::count(w, "create");
            w.containers.insert(
                id.clone(),
                ObservedContainer {
                    id: id.clone(),
                    name: req.name.to_string(),
                    image: req.spec.image.clone(),
                    labels: req.labels.clone(),
                    state: ContainerState::Created,
                    health: Health::None,
                    exit_code: None,
                    started_at: None,
                    finished_at: None,
                    host: super::HostAccess::of_spec(req.spec),
                },
            );
            Ok(id)
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        let _busy = self.delay("start").await;
        self.with(|w| {
            let c = find_mut(w, id)
                .ok_or_else(|| RuntimeError::NotFound(format!("no such container: {id}")))?;
            if c.state == ContainerState::Running {
                return Err(RuntimeError::NotModified);
            }
            c.state = ContainerState::Running;
            c.health = Health::None;
            c.exit_code = None;
            c.started_at = Some(self.clock.now());
            c.finished_at = None;
            Self::count(w, "start");
            Ok(())
        })
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<()> {
        let _busy = self.delay("stop").await;
        self.with(|w| {
            let c = find_mut(w, id)
                .ok_or_else(|| RuntimeError::NotFound(format!("no such container: {id}")))?;
            if c.state != ContainerState::Running {
                return Err(RuntimeError::NotModified);
            }
            c.state = ContainerState::Exited;
            c.exit_code = Some(0);
            c.finished_at = Some(self.clock.now());
            Self::count(w, "stop");
            Ok(())
        })
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let _busy = self.delay("remove").await;
        self.with(|w| {
            let c = find(w, id)?;
            w.containers.remove(&c.id);
            Self::count(w, "remove");
            Ok(())
        })
    }

    async fn rename(&self, id: &str, new_name: &str) -> Result<()> {
        let _busy = self.delay("rename").await;
        self.with(|w| {
            if w.containers
                .values()
                .any(|c| c.name == new_name && c.id != id)
            {
                return Err(RuntimeError::Conflict(format!(
                    "name {new_name} is already in use"
                )));
            }
            let c = find_mut(w, id)
                .ok_or_else(|| RuntimeError::NotFound(format!("no such container: {id}")))?;
            c.name = new_name.to_string();
            Self::count(w, "rename");
            Ok(())
        })
    }

    async fn image_present(&self, image: &str) -> Result<bool> {
        let _busy = self.delay("image_present").await;
        self.with(|w| {
            Self::count_read(w, "image_present");
            Ok(w.images.contains(image))
        })
    }

    async fn pull(
        &self,
        image: &str,
        _credentials: Option<&RegistryCredentials>,
        progress: ProgressFn<'_>,
    ) -> Result<()> {
        progress(&PullProgress {
            layers: 1,
            ..PullProgress::default()
        });
        let _busy = self.delay("pull").await;
        self.with(|w| {
            Self::count(w, "pull");
            if w.unpullable.contains(image) {
                return Err(RuntimeError::Other(format!(
                    "pull access denied for {image}"
                )));
            }
            w.images.insert(image.to_string());
            Ok(())
        })
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let _busy = self.delay("remove_image").await;
        self.with(|w| {
            if w.containers.values().any(|c| c.image == image) {
                return Err(RuntimeError::Conflict(format!("image {image} is in use")));
            }
            if !w.images.remove(image) {
                return Err(RuntimeError::NotFound(format!("No such image: {image}")));
            }
            Self::count(w, "remove_image");
            Ok(())
        })
    }

    async fn version(&self) -> Result<String> {
        let _busy = self.delay("version").await;
        self.with(|_| Ok("fake".into()))
    }
}

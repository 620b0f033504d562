//! The narrow interface between berth and a container engine.
//!
//! Everything berth needs from Docker fits in [`ContainerRuntime`]; it speaks
//! berth's own types and error kinds so that bollard stays inside `docker.rs`
//! and the planner can be tested against the in-memory [`fake::FakeRuntime`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::desired::registry::RegistryCredentials;
use crate::desired::spec::ContainerSpec;
use crate::names::{labels, InstanceKey};

pub mod docker;
pub mod fake;

/// Errors every runtime maps its own failures into. The kinds drive apply's
/// decisions (404 = already gone, 409 = inspect the holder, 304 = already in
/// that state), so they must be precise; the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("already in the requested state")]
    NotModified,
    #[error("container engine unavailable: {0}")]
    Unavailable(String),
    /// The engine refused the request as invalid (HTTP 400: conflicting
    /// options, an invalid reference). Waiting cannot fix it.
    #[error("refused by the container engine: {0}")]
    Invalid(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Docker's container states, as far as berth distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl ContainerState {
    pub fn parse(s: &str) -> Self {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "dead" => ContainerState::Dead,
            _ => ContainerState::Exited,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No healthcheck, or Docker has not judged yet.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// A container as the engine reports it. Built from one list call; for
/// containers that exited (or are dead), the runtime also fills the exit details
/// (exit code, start and finish times) that restart decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    pub health: Health,
    pub exit_code: Option<i64>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// What it reaches on the host, for the adoption gate.
    pub host: HostAccess,
}

/// What a container reaches on the host, for the adoption gate. Docker's
/// container list shows the network mode and the mounts; only an inspect
/// shows the rest (`privileged` and the pid, ipc and uts modes), so a
/// [`ContainerRuntime::list`] answer leaves those at their defaults and
/// [`ContainerRuntime::inspect`] fills everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostAccess {
    /// `HostConfig.NetworkMode`: `bridge`, `host`, `container:<id>`, ...
    pub network_mode: String,
    /// The names of the networks it is joined to
    /// (`NetworkSettings.Networks`): its mode's, and any it was connected
    /// to since (`docker network connect`). None for a `container:` mode.
    pub networks: Vec<String>,
    /// Host paths bind-mounted into it.
    pub binds: Vec<String>,
    /// Named volumes mounted into it (anonymous ones left out).
    pub volumes: Vec<String>,
    /// `HostConfig.Privileged` (inspect only).
    pub privileged: bool,
    /// `HostConfig.PidMode`, `IpcMode`, `UTSMode`: `host`,
    /// `container:<name or id>`, or empty/private (inspect only).
    pub pid_mode: String,
    pub ipc_mode: String,
    pub uts_mode: String,
}

impl HostAccess {
    /// What a container created from `spec` reaches: berth's own request,
    /// known without asking Docker.
    pub fn of_spec(spec: &ContainerSpec) -> HostAccess {
        let joined = match spec.network_mode.as_str() {
            "" | "default" => Some("bridge"),
            mode if mode.starts_with("container:") => None,
            mode => Some(mode),
        };
        let mut host = HostAccess {
            network_mode: spec.network_mode.clone(),
            networks: joined.into_iter().map(str::to_string).collect(),
            privileged: spec.privileged,
            pid_mode: spec.pid_mode.clone().unwrap_or_default(),
            ipc_mode: spec.ipc_mode.clone().unwrap_or_default(),
            uts_mode: spec.uts_mode.clone().unwrap_or_default(),
            ..HostAccess::default()
        };
        for volume in &spec.volumes {
            let source = volume.split(':').next().unwrap_or_default();
            if source.starts_with('/') {
                host.binds.push(source.to_string());
            } else if !source.is_empty() {
                host.volumes.push(source.to_string());
            }
        }
        host
    }

    /// Only what Docker's container list shows: the network mode, the
    /// networks and the mounts.
    pub fn as_listed(&self) -> HostAccess {
        HostAccess {
            network_mode: self.network_mode.clone(),
            networks: self.networks.clone(),
            binds: self.binds.clone(),
            volumes: self.volumes.clone(),
            ..HostAccess::default()
        }
    }
}

impl ObservedContainer {
    pub fn namespace(&self) -> Option<&str> {
        self.labels.get(labels::NAMESPACE).map(String::as_str)
    }

    /// The (task, index) this container claims to be, when its labels parse.
    pub fn key(&self) -> Option<InstanceKey> {
        let task = self.labels.get(labels::TASK)?;
        let index = self.labels.get(labels::INDEX)?.parse().ok()?;
        Some(InstanceKey::new(task.clone(), index))
    }

    pub fn spec_hash(&self) -> Option<&str> {
        self.labels.get(labels::SPEC_HASH).map(String::as_str)
    }

    pub fn manifest(&self) -> Option<&str> {
        self.labels.get(labels::MANIFEST).map(String::as_str)
    }

    /// Host port recorded for a port label (`io.berth.port.<label>`).
    pub fn port(&self, label: &str) -> Option<u16> {
        self.labels
            .get(&format!("{}{label}", labels::PORT_PREFIX))?
            .parse()
            .ok()
    }

    /// The grace period recorded when berth created the container
    /// (`io.berth.stop-timeout`, seconds), so a container whose manifest is
    /// gone still stops as its task asked.
    pub fn stop_grace(&self) -> Option<Duration> {
        self.labels
            .get(labels::STOP_TIMEOUT)?
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    }

    pub fn is_running(&self) -> bool {
        matches!(
            self.state,
            ContainerState::Running | ContainerState::Restarting | ContainerState::Paused
        )
    }
}

/// How far a pull has come, summed over its layers. Reported by the runtime
/// while it pulls; drawn by whoever watches (status, a terminal bar).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullProgress {
    pub layers_done: usize,
    pub layers: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl PullProgress {
    /// Whole percent done: by bytes when the sizes are known, else by layers.
    pub fn percent(&self) -> u8 {
        let by_bytes = (self.bytes_done.min(self.bytes_total) * 100).checked_div(self.bytes_total);
        let by_layers =
            (self.layers_done.min(self.layers) as u64 * 100).checked_div(self.layers as u64);
        by_bytes.or(by_layers).unwrap_or(0).min(100) as u8
    }
}

/// Called by [`ContainerRuntime::pull`] as progress arrives.
pub type ProgressFn<'a> = &'a (dyn Fn(&PullProgress) + Send + Sync);

/// What to create: a name, the resolved spec and the full label set.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    pub name: &'a str,
    pub spec: &'a ContainerSpec,
    pub labels: &'a BTreeMap<String, String>,
}

/// The container engine, narrowed to what berth uses.
///
/// Futures are `Send` so passes can run operations on a multi-threaded runtime.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Every container (running or not) labelled `io.berth.namespace=<namespace>`:
    /// one list call, plus an inspect per exited or dead container for exit details.
    fn list(&self, namespace: &str) -> impl Future<Output = Result<Vec<ObservedContainer>>> + Send;

    /// Look up any container by name or id, owned or not (404 → `NotFound`),
    /// with everything it reaches on the host ([`HostAccess`] in full).
    fn inspect(&self, name_or_id: &str) -> impl Future<Output = Result<ObservedContainer>> + Send;

    /// Create a container; returns its id. A taken name → `Conflict`.
    fn create(&self, req: CreateRequest<'_>) -> impl Future<Output = Result<String>> + Send;

    /// Start a container; already running → `NotModified`.
    fn start(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Stop with a grace period before SIGKILL; already stopped → `NotModified`.
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Remove a container (and its anonymous volumes), killing it if it runs.
    fn remove(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    fn rename(&self, id: &str, new_name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Whether an image is present locally.
    fn image_present(&self, image: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Pull an image, with credentials when given, reporting progress.
    fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
        progress: ProgressFn<'_>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Remove an image unless a container uses it (never forced): in use →
    /// `Conflict`.
    fn remove_image(&self, image: &str) -> impl Future<Output = Result<()>> + Send;

    /// The engine's version, e.g. `20.10.24`.
    fn version(&self) -> impl Future<Output = Result<String>> + Send;
}

//! The loop: triggers say "look again", a pass re-derives everything.
//!
//! A pass loads the folder, lists the containers berth owns (one call),
//! resolves every instance, plans, applies, and feeds the outcomes into the
//! backoff table and the status. Nothing is carried over from an earlier pass
//! except what cannot be observed: the last good version of a broken file,
//! backoff counts, and dynamic port allocations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::apply::{apply, ApplyOptions, ImageLocks, Outcome};
use crate::backoff::BackoffTable;
use crate::config::AgentConfig;
use crate::desired::{load_folder, DesiredTracker, TaskDef};
use crate::manifest::validate::ValidationContext;
use crate::plan::{observe_failures, plan, DesiredState, Plan, PlanOptions};
use crate::ports::{host_port_is_free, PortAllocator, PortRequest};
use crate::resolve::{resolve_instance, NodeInfo, ResolveContext};
use crate::runtime::{ContainerRuntime, ObservedContainer, RuntimeError};
use crate::spec::InstanceKey;

/// What woke the loop. Carries no state: every pass looks at everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerKind {
    Startup,
    Manifests,
    DockerEvent,
    Resync,
    Backoff,
    Reload,
}

impl std::fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TriggerKind::Startup => "startup",
            TriggerKind::Manifests => "manifests",
            TriggerKind::DockerEvent => "docker-event",
            TriggerKind::Resync => "resync",
            TriggerKind::Backoff => "backoff",
            TriggerKind::Reload => "reload",
        })
    }
}

/// An error that is not about one task, e.g. Docker being unreachable.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("cannot list containers: {0}")]
    Docker(#[from] RuntimeError),
}

/// Everything known before planning: the desired state and the world.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub desired: DesiredState,
    pub observed: Vec<ObservedContainer>,
    /// Manifest, folder, port and resolution errors, as `file:line:column: message`.
    pub errors: Vec<String>,
}

/// What a pass did.
#[derive(Debug, Clone)]
pub struct PassReport {
    pub plan: Plan,
    pub outcomes: Vec<Outcome>,
    pub errors: Vec<String>,
    pub observed: Vec<ObservedContainer>,
    pub desired_instances: BTreeSet<InstanceKey>,
    /// The earliest moment an action that failed in this pass may be tried
    /// again. The plan's waits only cover failures seen *before* the pass;
    /// without this, a failed create or start would wait for the resync.
    pub retry_at: Option<SystemTime>,
}

impl PassReport {
    /// Nothing left to do, nothing failed, nothing waiting.
    pub fn converged(&self) -> bool {
        self.plan.actions.is_empty() && self.plan.waiting.is_empty()
    }
    pub fn failed_actions(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_err()).count()
    }
}

/// One instance, as status reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceStatus {
    pub task: String,
    pub index: u32,
    pub desired_hash: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub state: String,
    pub restarts: u64,
    pub backoff_until: Option<u64>,
    pub last_error: Option<String>,
}

/// What `/v1/status` and `berth status` show. Never holds a secret.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub berth_version: String,
    pub namespace: String,
    pub docker_version: Option<String>,
    pub docker_error: Option<String>,
    /// Unix seconds of the last completed pass.
    pub last_pass: Option<u64>,
    pub passes: u64,
    pub instances: Vec<InstanceStatus>,
    pub manifest_errors: Vec<String>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// Retry delay for actions that failed because Docker was unreachable.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);
/// Retry delay for failed removals and stops (not on any task's curve).
pub const CLEANUP_RETRY: Duration = Duration::from_secs(5);

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The reconciler's state between passes.
pub struct Controller<R: ContainerRuntime> {
    runtime: Arc<R>,
    config: AgentConfig,
    tracker: DesiredTracker,
    /// The last desired task set, reused (without removals) when the folder
    /// cannot be read.
    last_tasks: Option<BTreeMap<String, TaskDef>>,
    backoff: BackoffTable,
    ports: PortAllocator,
    images: ImageLocks,
    node: NodeInfo,
    status: SharedStatus,
    /// Last apply error per instance, for status (failed removals included).
    last_errors: BTreeMap<InstanceKey, String>,
}

impl<R: ContainerRuntime> Controller<R> {
    pub fn new(runtime: Arc<R>, config: AgentConfig) -> Self {
        let status = Status {
            berth_version: env!("CARGO_PKG_VERSION").into(),
            namespace: config.namespace.clone(),
            ..Status::default()
        };
        Controller {
            runtime,
            config,
            tracker: DesiredTracker::default(),
            last_tasks: None,
            backoff: BackoffTable::new(),
            ports: PortAllocator::new(),
            images: ImageLocks::default(),
            node: NodeInfo::detect(),
            status: Arc::new(Mutex::new(status)),
            last_errors: BTreeMap::new(),
        }
    }

    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn runtime(&self) -> &Arc<R> {
        &self.runtime
    }

    /// Swap in a re-read agent config (SIGHUP). The namespace and listen
    /// address need a restart to change; everything else applies now.
    pub fn reload(&mut self, mut config: AgentConfig) {
        if config.namespace != self.config.namespace {
            warn!(
                old = %self.config.namespace,
                new = %config.namespace,
                "the namespace cannot change while berth runs; keeping the old one until restart"
            );
            config.namespace = self.config.namespace.clone();
        }
        self.config = config;
    }

    pub fn validation_context(&self) -> ValidationContext {
        ValidationContext {
            allow_privileged: self.config.docker.privileged.enabled,
            allow_host_volumes: self.config.docker.volumes.enabled,
            meta: self.config.meta.clone(),
        }
    }

    /// Load the folder, list the containers, allocate ports and resolve
    /// every instance. Fails only when Docker cannot be listed.
    pub async fn prepare(&mut self) -> Result<Prepared, PassError> {
        let mut errors = Vec::new();
        let mut desired = DesiredState::default();
        let tasks = match load_folder(&self.config.manifests, &self.validation_context()) {
            Ok(loaded) => {
                let set = self.tracker.update(loaded);
                errors.extend(set.errors.iter().map(ToString::to_string));
                desired.protected_files = set.protected_files.clone();
                if !set.protected_files.is_empty() {
                    errors.push(format!(
                        "removals of deleted tasks are held until these files parse again: {}",
                        set.protected_files
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                self.last_tasks = Some(set.tasks.clone());
                set.tasks
            }
            Err(e) => {
                // Never an empty set: keep what we had, and remove nothing.
                errors.push(e.to_string());
                desired.hold_removals = true;
                self.last_tasks.clone().unwrap_or_default()
            }
        };

        let observed = self.runtime.list(&self.config.namespace).await?;

        let requests: Vec<PortRequest> = tasks
            .values()
            .flat_map(|def| {
                (0..def.manifest.count).flat_map(move |index| {
                    def.manifest
                        .ports
                        .iter()
                        .map(move |(label, spec)| PortRequest {
                            key: (def.name.clone(), index, label.clone()),
                            file: def.file.clone(),
                            fixed: spec.r#static,
                        })
                })
            })
            .collect();
        let (host_ports, port_errors) =
            self.ports
                .allocate(&requests, &observed, self.config.ports, host_port_is_free);
        for e in port_errors {
            errors.push(format!("{}: task {}: {}", e.file, e.task, e.message));
            desired.held_tasks.insert(e.task);
        }

        let ctx = ResolveContext {
            namespace: &self.config.namespace,
            meta: &self.config.meta,
            node: &self.node,
            manifest_dir: &self.config.manifests,
        };
        // Read at each pass, like env files: a rotated password is used at once.
        let agent_auth = match &self.config.docker.auth_config {
            Some(path) => match crate::registry::AuthConfig::load(path) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(e.to_string());
                    None
                }
            },
            None => None,
        };
        for def in tasks.values() {
            desired.tasks.insert(def.name.clone());
            desired.images.insert(def.manifest.image.clone());
            if desired.held_tasks.contains(&def.name) {
                continue;
            }
            let resolved: Result<Vec<_>, _> = (0..def.manifest.count)
                .map(|index| resolve_instance(def, index, &host_ports, &ctx))
                .collect();
            match resolved {
                Ok(instances) => {
                    for mut instance in instances {
                        instance.credentials = crate::registry::choose_credentials(
                            &instance.spec.image,
                            instance.credentials.take(),
                            agent_auth.as_ref(),
                        );
                        desired.insert(instance);
                    }
                }
                Err(e) => {
                    errors.push(e.to_string());
                    desired.held_tasks.insert(def.name.clone());
                }
            }
        }
        Ok(Prepared {
            desired,
            observed,
            errors,
        })
    }

    /// The plan for the current world, without applying it.
    pub fn plan(&mut self, prepared: &Prepared, now: SystemTime) -> Plan {
        observe_failures(
            &mut self.backoff,
            &prepared.desired,
            &prepared.observed,
            &self.config.namespace,
            now,
        );
        plan(
            &prepared.desired,
            &prepared.observed,
            &self.backoff,
            now,
            &PlanOptions {
                namespace: self.config.namespace.clone(),
                cleanup_containers: self.config.docker.cleanup.container,
            },
        )
    }

    /// One full pass: prepare, plan, apply, record.
    pub async fn pass(&mut self, trigger: TriggerKind) -> Result<PassReport, PassError> {
        let started = Instant::now();
        let span = info_span!("pass", %trigger);
        let result = async {
            let prepared = match self.prepare().await {
                Ok(p) => p,
                Err(e) => {
                    self.record_docker_error(&e);
                    return Err(e);
                }
            };
            for e in &prepared.errors {
                warn!("{e}");
            }
            let now = SystemTime::now();
            let plan = self.plan(&prepared, now);
            for name in &plan.unrecognised {
                warn!(container = %name, "container carries our namespace label but no valid task/index labels; leaving it alone");
            }
            for w in &plan.waiting {
                let secs = w.until.duration_since(now).unwrap_or_default().as_secs_f64();
                let state = self.backoff.get(&w.key);
                info!(
                    task = %w.key.task,
                    index = w.key.index,
                    failures = state.map_or(0, |b| b.failures),
                    retry_in = format!("{secs:.1}s"),
                    retry_at_unix_ms = unix_millis(w.until),
                    last_error = state.and_then(|b| b.last_error.as_deref()).unwrap_or(""),
                    "backing off"
                );
            }
            let outcomes = apply(
                self.runtime.as_ref(),
                plan.actions.clone(),
                &ApplyOptions {
                    namespace: self.config.namespace.clone(),
                    parallelism: self.config.parallelism,
                },
                &self.images,
            )
            .await;
            self.record_outcomes(&outcomes);
            if self.config.docker.cleanup.image {
                crate::cleanup::remove_unused_images(
                    self.runtime.as_ref(),
                    &plan.actions,
                    &outcomes,
                    &prepared.observed,
                    &prepared.desired,
                )
                .await;
            }
            let retry_at = self.retry_at(&outcomes, &prepared.desired);
            let report = PassReport {
                plan,
                outcomes,
                errors: prepared.errors,
                observed: prepared.observed,
                desired_instances: prepared.desired.instances.keys().cloned().collect(),
                retry_at,
            };
            self.backoff
                .retain(|k| report.desired_instances.contains(k));
            self.last_errors
                .retain(|k, _| report.desired_instances.contains(k));
            self.publish_status(&prepared.desired, &report);
            Ok(report)
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        match &result {
            Ok(r) if r.plan.actions.is_empty() => {
                debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "pass: nothing to do"
                )
            }
            Ok(r) => info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                actions = r.plan.actions.len(),
                failed = r.failed_actions(),
                "pass done"
            ),
            Err(e) => error!("pass failed: {e}"),
        }
        result
    }

    fn record_outcomes(&mut self, outcomes: &[Outcome]) {
        let now = SystemTime::now();
        for o in outcomes {
            match &o.result {
                Ok(()) => {
                    self.last_errors.remove(&o.key);
                    if matches!(o.verb, "restart" | "restart-unhealthy") {
                        self.backoff.record_restart(&o.key, now);
                    }
                }
                Err(e) => {
                    self.last_errors.insert(o.key.clone(), e.to_string());
                    // Docker being away is not the task's failure.
                    if o.counts_as_attempt && !e.is_unavailable() {
                        self.backoff.record_failure(&o.key, now, e.to_string());
                    }
                }
            }
        }
    }

    /// When the actions that failed in this pass are due again: on the task's
    /// backoff curve for its own failures, after [`UNAVAILABLE_RETRY`] when
    /// Docker was away, after [`CLEANUP_RETRY`] for failed removals.
    fn retry_at(&self, outcomes: &[Outcome], desired: &DesiredState) -> Option<SystemTime> {
        let now = SystemTime::now();
        outcomes
            .iter()
            .filter_map(|o| {
                let e = o.result.as_ref().err()?;
                if e.is_unavailable() {
                    return Some(now + UNAVAILABLE_RETRY);
                }
                if !o.counts_as_attempt {
                    return Some(now + CLEANUP_RETRY);
                }
                let due = desired
                    .instances
                    .get(&o.key)
                    .and_then(|w| self.backoff.due(&o.key, &w.restart))
                    .unwrap_or(now);
                let state = self.backoff.get(&o.key);
                let secs = due.duration_since(now).unwrap_or_default().as_secs_f64();
                info!(
                    task = %o.key.task,
                    index = o.key.index,
                    failures = state.map_or(0, |b| b.failures),
                    retry_in = format!("{secs:.1}s"),
                    retry_at_unix_ms = unix_millis(due),
                    last_error = %e,
                    "backing off"
                );
                Some(due)
            })
            .min()
    }

    fn record_docker_error(&self, e: &PassError) {
        if let Ok(mut s) = self.status.lock() {
            s.docker_error = Some(e.to_string());
        }
    }

    /// Ask Docker for its version and remember it for status and logs.
    pub async fn refresh_docker_version(&self) -> Result<String, RuntimeError> {
        let version = self.runtime.version().await;
        if let Ok(mut s) = self.status.lock() {
            match &version {
                Ok(v) => {
                    s.docker_version = Some(v.clone());
                    s.docker_error = None;
                }
                Err(e) => s.docker_error = Some(e.to_string()),
            }
        }
        version
    }

    fn publish_status(&self, desired: &DesiredState, report: &PassReport) {
        let ns = &self.config.namespace;
        let mut keys: BTreeSet<InstanceKey> = desired.instances.keys().cloned().collect();
        for c in &report.observed {
            if let Some(k) = c.key() {
                if c.name == k.container_name(ns) {
                    keys.insert(k);
                }
            }
        }
        let instances =
            keys.into_iter()
                .map(|key| {
                    let container = report.observed.iter().find(|c| {
                        c.key().as_ref() == Some(&key) && c.name == key.container_name(ns)
                    });
                    let backoff = self.backoff.get(&key);
                    let want = desired.instances.get(&key);
                    let backoff_until = want
                        .and_then(|w| self.backoff.due(&key, &w.restart))
                        .filter(|t| *t > SystemTime::now())
                        .map(unix_secs);
                    InstanceStatus {
                        task: key.task.clone(),
                        index: key.index,
                        desired_hash: want.map(|w| w.hash.clone()),
                        container: container.map(|c| c.name.clone()),
                        container_id: container.map(|c| c.id.chars().take(12).collect()),
                        state: match (container, want) {
                            (Some(c), _) => format!("{:?}", c.state).to_lowercase(),
                            (None, Some(_)) => "missing".into(),
                            (None, None) => "unknown".into(),
                        },
                        restarts: backoff.map_or(0, |b| b.restarts),
                        backoff_until,
                        last_error: self
                            .last_errors
                            .get(&key)
                            .cloned()
                            .or_else(|| backoff.and_then(|b| b.last_error.clone())),
                    }
                })
                .collect();
        if let Ok(mut s) = self.status.lock() {
            s.instances = instances;
            s.manifest_errors = report.errors.clone();
            s.last_pass = Some(unix_secs(SystemTime::now()));
            s.passes += 1;
            s.docker_error = None;
        }
    }
}

/// How long `run --once` keeps trying before it gives up.
pub const ONCE_DEADLINE: Duration = Duration::from_secs(120);

/// `run --once`: pass until converged (a replacement may take a restore and
/// a replace; a backoff may need waiting), or until the deadline. Returns the
/// last report.
pub async fn run_once<R: ContainerRuntime>(
    controller: &mut Controller<R>,
    deadline: Duration,
) -> Result<PassReport, PassError> {
    let until = Instant::now() + deadline;
    let mut trigger = TriggerKind::Startup;
    loop {
        let report = controller.pass(trigger).await?;
        // Converged means a pass found nothing to do: the previous pass's
        // starts were checked by this pass's list.
        if report.converged() || Instant::now() >= until {
            return Ok(report);
        }
        if report.plan.actions.is_empty() {
            if let Some(due) = report.plan.next_due() {
                let wait = due
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(until.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
        }
        trigger = TriggerKind::Backoff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    fn controller(dir: &std::path::Path, manifest: &str) -> Controller<FakeRuntime> {
        std::fs::write(dir.join("bad.yaml"), manifest).unwrap();
        let config = AgentConfig {
            manifests: dir.to_path_buf(),
            namespace: "t".into(),
            ..AgentConfig::default()
        };
        Controller::new(Arc::new(FakeRuntime::new()), config)
    }

    #[tokio::test]
    async fn a_failed_create_is_retried_at_once_then_after_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(
            dir.path(),
            "image: nope:1\nrestart: {delay: 5s, max_delay: 1m}\n",
        );
        c.runtime().make_unpullable("nope:1");

        let before = SystemTime::now();
        let first = c.pass(TriggerKind::Startup).await.unwrap();
        assert_eq!(first.failed_actions(), 1);
        let retry = first.retry_at.expect("a failed create schedules a retry");
        assert!(
            retry < before + Duration::from_secs(1),
            "the first retry is immediate"
        );

        let second = c.pass(TriggerKind::Backoff).await.unwrap();
        assert_eq!(second.failed_actions(), 1);
        let retry = second.retry_at.expect("still scheduled");
        let wait = retry.duration_since(SystemTime::now()).unwrap_or_default();
        assert!(
            wait > Duration::from_secs(4) && wait <= Duration::from_secs(5),
            "then the delay: {wait:?}"
        );

        let third = c.pass(TriggerKind::Resync).await.unwrap();
        assert!(
            third.plan.actions.is_empty(),
            "not retried before it is due"
        );
        assert_eq!(third.plan.next_due(), Some(retry));
    }

    #[tokio::test]
    async fn an_action_cut_short_by_a_docker_outage_is_retried_soon_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(dir.path(), "image: img:1\n");
        c.runtime().add_image("img:1");
        let prepared = c.prepare().await.unwrap();
        let plan = c.plan(&prepared, SystemTime::now());
        c.runtime().set_down(true);
        let outcomes = apply(
            c.runtime().as_ref(),
            plan.actions.clone(),
            &ApplyOptions {
                namespace: "t".into(),
                parallelism: 1,
            },
            &c.images,
        )
        .await;
        c.record_outcomes(&outcomes);
        let retry = c.retry_at(&outcomes, &prepared.desired);
        let wait = retry
            .expect("retried")
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(wait <= UNAVAILABLE_RETRY, "{wait:?}");
        assert!(
            c.backoff.get(&InstanceKey::new("bad", 0)).is_none(),
            "Docker being away is not the task's failure"
        );
    }
}

//! The reconciler: a pass re-derives everything and hands work to workers.
//!
//! A pass loads the folder, lists the containers berth owns (one call),
//! plans, and gives each instance's chain of actions to a worker of its own,
//! without waiting for it (after kube-runtime's runner and the kubelet's pod
//! workers). An instance with a chain in flight is busy: the planner gives
//! it no second chain. When a chain ends, [`Controller::complete`] records
//! its outcomes and the loop looks again. Nothing is carried over between
//! passes except what cannot be observed: the last good version of a broken
//! file, backoff counts, dynamic port allocations and the work in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::clock::Clock;
use crate::config::AgentConfig;
use crate::desired::digest_key::DigestKey;
use crate::desired::folder::{load_folder_cached, DesiredTracker, ParseCache, TaskDef};
use crate::desired::ports::{host_port_is_free, recorded_ports, PortAllocator, PortRequest};
use crate::desired::resolve::{resolve_instance, ResolveContext};
use crate::desired::state::DesiredState;
use crate::engine::apply::{group_chains, CreatedHosts, Executor, Outcome, StepCell};
use crate::engine::backoff::BackoffTable;
use crate::engine::error::ApplyError;
use crate::engine::holds::HoldStore;
use crate::engine::jobs::{JobState, JobStore, JobTable};
use crate::engine::plan::{observe_failures, plan, Action, HeldSpec, Memory, Plan, PlanOptions};
use crate::engine::pulls::{LogPulls, PullObserver, Pulls};
use crate::engine::retry::{classify, error_policy, FailureKind, ONCE_MAX_FAILURES};
use crate::engine::status::{
    unix_millis, unix_secs, InstanceStatus, LiveWork, SharedStatus, Status, StatusBoard,
};
use crate::engine::trigger::Trigger;
use crate::manifest::validate::{host_path_allowed, network_allowed, ValidationContext};
use crate::manifest::UpdateOrder;
use crate::names::InstanceKey;
use crate::node::NodeInfo;
use crate::runtime::{ContainerRuntime, HostAccess, ObservedContainer, RuntimeError};
use crate::source::Revision;

/// An error that is not about one task, e.g. Docker being unreachable.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The cause is in the message, so it is not also the error's source:
    /// a chain (`{:#}`) says it once.
    #[error("cannot list containers: {0}")]
    Docker(RuntimeError),
}

impl From<RuntimeError> for PassError {
    fn from(e: RuntimeError) -> Self {
        PassError::Docker(e)
    }
}

/// The longest a pass waits for Docker's container list. A daemon that
/// accepts the call and never answers counts as unreachable, and the loop
/// stays responsive.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest the adoption gate waits for one container's inspect. A
/// container without an answer is not acted on this pass.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many of those inspects run at once: a host full of containers berth
/// has not seen (its first pass) costs a few round trips, not one per
/// container in a row.
const INSPECT_CONCURRENCY: usize = 8;

/// Everything known before planning: the desired state and the world.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub desired: DesiredState,
    pub observed: Vec<ObservedContainer>,
    /// Manifest, folder, port and resolution errors, as `file:line:column: message`.
    pub errors: Vec<String>,
    /// What the plan could not tell, e.g. secrets not compared because the
    /// digest key is not readable; not errors.
    pub notes: Vec<String>,
}

/// What a pass decided. Its work runs on after it returns.
#[derive(Debug, Clone)]
pub struct PassReport {
    pub plan: Plan,
    pub errors: Vec<String>,
    pub observed: Vec<ObservedContainer>,
    pub desired_instances: BTreeSet<InstanceKey>,
    /// Chains handed to workers by this pass.
    pub dispatched: usize,
    /// Instances with work in flight after this pass.
    pub busy: BTreeSet<InstanceKey>,
}

impl PassReport {
    /// Nothing to do, nothing in flight, nothing waiting, settling or
    /// pending removal.
    pub fn converged(&self) -> bool {
        self.plan.actions.is_empty()
            && self.plan.waiting.is_empty()
            && self.plan.settling.is_empty()
            && self.plan.pending_removals.is_empty()
            && self.plan.blocked.is_empty()
            && self.busy.is_empty()
    }
}

/// A chain that ended, with its outcomes in order.
#[derive(Debug)]
pub struct ChainDone {
    pub key: InstanceKey,
    pub outcomes: Vec<Outcome>,
    /// Images of the containers the chain's removals and replacements
    /// targeted, by container id: candidates for image cleanup.
    images: BTreeMap<String, String>,
    actions: Vec<Action>,
}

impl ChainDone {
    /// Every action of the chain succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
    }
}

/// Sees what the engine does, e.g. for `/metrics`.
pub trait EngineObserver: Send + Sync {
    fn pass(&self, _elapsed: Duration, _result: &Result<PassReport, PassError>) {}
    fn outcomes(&self, _outcomes: &[Outcome]) {}
    /// A job run ended (`succeeded`, `failed`) or a scheduled slot was
    /// `skipped` because the previous run still went on.
    fn job_run(&self, _task: &str, _result: &str) {}
}

/// A chain in flight.
struct Worker {
    live: LiveWork,
    /// The spec hash the chain works towards (creates and replacements).
    target: Option<String>,
    cancel: watch::Sender<bool>,
}

/// Sends the chain's end even when the worker's task panics or is dropped,
/// so an instance can never stay busy forever.
struct DoneGuard {
    tx: mpsc::UnboundedSender<ChainDone>,
    done: Option<ChainDone>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = self.tx.send(done);
        }
    }
}

/// A start-first update runs the new container beside the old one, so
/// a dynamic port cannot stay the same across it: when an instance is
/// about to be updated, its new spec gets a fresh host port (or the one
/// an update cut short already gave its staged container). Static ports
/// cannot do this; validation refuses start-first with them.
fn start_first_ports(
    ports: &mut PortAllocator,
    range: crate::config::PortRange,
    ns: &str,
    def: &TaskDef,
    host_ports: &mut BTreeMap<crate::desired::ports::PortKey, u16>,
    observed: &[ObservedContainer],
    ctx: &ResolveContext<'_>,
) {
    for index in 0..def.manifest.count {
        let key = InstanceKey::new(def.name.clone(), index);
        let canonical = key.container_name(ns);
        let Some(old) = observed.iter().find(|c| c.name == canonical) else {
            continue;
        };
        let Ok(want) = resolve_instance(def, index, host_ports, ctx) else {
            continue;
        };
        if old.spec_hash() == Some(want.hash.as_str()) {
            continue;
        }
        let staged = observed.iter().find(|c| {
            crate::names::name_role(&c.name, &canonical) == crate::names::NameRole::Staging
        });
        for (label, spec) in &def.manifest.ports {
            if spec.r#static.is_some() {
                continue;
            }
            let port_key = (def.name.clone(), index, label.clone());
            let Some(old_port) = old.port(label) else {
                continue;
            };
            if host_ports.get(&port_key) != Some(&old_port) {
                continue;
            }
            let mut taken: BTreeSet<u16> = host_ports.values().copied().collect();
            taken.extend(
                recorded_ports(observed.iter().map(|c| &c.labels))
                    .values()
                    .copied(),
            );
            let fresh = staged
                .and_then(|s| s.port(label))
                .filter(|p| *p != old_port)
                .or_else(|| PortAllocator::fresh_port(range, &taken, host_port_is_free));
            if let Some(port) = fresh {
                host_ports.insert(port_key.clone(), port);
                ports.reassign(port_key, port);
            }
        }
    }
}

/// The id of the file system holding `dir`, when it can be read.
fn folder_device(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.dev())
}

/// How `run --once` judges one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnceVerdict {
    /// Every instance converged.
    Converged,
    /// Something is still on its way.
    Pending,
    /// Nothing more will happen by waiting: these problems remain.
    Failed(Vec<String>),
}

/// The reconciler's state between passes.
pub struct Controller<R: ContainerRuntime> {
    runtime: Arc<R>,
    config: AgentConfig,
    clock: Clock,
    tracker: DesiredTracker,
    /// The last desired task set, reused (without removals) when the folder
    /// cannot be read.
    last_tasks: Option<BTreeMap<String, TaskDef>>,
    /// The last pass's resolved instances, for the restart timings and
    /// stop graces of outcomes that arrive later.
    last_desired: DesiredState,
    backoff: BackoffTable,
    ports: PortAllocator,
    node: NodeInfo,
    pulls: Arc<Pulls>,
    executor: Arc<Executor<R>>,
    workers: BTreeMap<InstanceKey, Worker>,
    done_tx: mpsc::UnboundedSender<ChainDone>,
    done_rx: mpsc::UnboundedReceiver<ChainDone>,
    /// When berth itself last started each instance's container.
    started: BTreeMap<InstanceKey, SystemTime>,
    /// Images whose containers were removed; checked for use at the next pass.
    cleanup_candidates: BTreeSet<String>,
    /// Image removals running in the background.
    cleanups: Vec<tokio::task::JoinHandle<()>>,
    /// Specs that failed to replace a container: not tried again until the
    /// manifest changes or `berth retry`; kept across restarts.
    held: BTreeMap<InstanceKey, HeldSpec>,
    hold_store: HoldStore,
    /// Jobs' attempts and since when each spec is known; kept across
    /// restarts.
    jobs: JobTable,
    job_store: JobStore,
    /// The last skipped slot per job, so each skip is logged and counted once.
    skipped: BTreeMap<InstanceKey, SystemTime>,
    /// Job records changed since they were last saved.
    jobs_dirty: bool,
    /// Job runs seen ending, not yet logged and counted.
    runs_ended: Vec<crate::engine::jobs::RunEnded>,
    /// The time zone job schedules are evaluated in.
    zone: jiff::tz::TimeZone,
    /// When each pending removal (by container id) was first planned.
    removals_seen: BTreeMap<String, SystemTime>,
    /// The folder's contents as last read, and since when they are unchanged.
    folder_fingerprint: Option<String>,
    folder_quiet_since: SystemTime,
    /// Each manifest's last parse, reused while its bytes are unchanged.
    parses: ParseCache,
    /// The manifest folder's file system when first read: another one later
    /// means a mount went away (or came).
    folder_device: Option<u64>,
    /// Why every removal is held this pass, if it is.
    removals_held: Option<String>,
    /// The applied commit of a git source, when the manifests come from one
    /// (see [`Controller::set_source`]).
    source: Option<watch::Receiver<Option<Revision>>>,
    /// Problems already logged, so each is logged when it appears, not at
    /// every pass.
    logged_errors: BTreeSet<String>,
    /// Foreign-looking containers of our namespace already warned about.
    logged_unrecognised: BTreeSet<String>,
    status: SharedStatus,
    /// Last apply error per instance, for status (failed removals included).
    last_errors: BTreeMap<InstanceKey, String>,
    observer: Option<Arc<dyn EngineObserver>>,
    /// What each listed container reaches on the host in full, by id, from
    /// one inspect (or from berth's own create): the adoption gate's input.
    known_hosts: BTreeMap<String, HostAccess>,
    /// Filled by the executor as it creates containers.
    created_hosts: CreatedHosts,
    /// The host's digest key; `None` when it could not be read (a command
    /// that only looks, run by a user who cannot read `state_dir`).
    digest_key: Option<Arc<DigestKey>>,
}

impl<R: ContainerRuntime> Controller<R> {
    pub fn new(runtime: Arc<R>, config: AgentConfig) -> Self {
        Self::with_parts(runtime, config, Clock::System, Arc::new(LogPulls))
    }

    /// With an explicit clock (tests under paused time) and pull observer
    /// (a terminal progress bar).
    pub fn with_parts(
        runtime: Arc<R>,
        config: AgentConfig,
        clock: Clock,
        pull_observer: Arc<dyn PullObserver>,
    ) -> Self {
        let status = StatusBoard::new(Status {
            berth_version: env!("CARGO_PKG_VERSION").into(),
            namespace: config.namespace.clone(),
            ..Status::default()
        });
        let pulls = Pulls::new(config.parallelism, pull_observer);
        status.set_pulls(pulls.clone());
        let created_hosts = CreatedHosts::default();
        // Read only: the agent creates the key before it starts
        // (`set_digest_key`); `berth plan` never writes it.
        let digest_key = match DigestKey::load(&config.state_dir) {
            Ok(key) => key.map(Arc::new),
            Err(e) => {
                debug!(error = %e, "the digest key is not readable");
                None
            }
        };
        let executor = Arc::new(
            Executor::new(
                runtime.clone(),
                config.namespace.clone(),
                config.parallelism,
                pulls.clone(),
                clock,
            )
            .recording_creates(created_hosts.clone()),
        );
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let hold_store = HoldStore::new(&config.state_dir, &config.namespace);
        let held = hold_store.load();
        let job_store = JobStore::new(&config.state_dir, &config.namespace);
        let jobs = job_store.load();
        let node = NodeInfo::detect_with(config.node.ip);
        Controller {
            runtime,
            config,
            clock,
            tracker: DesiredTracker::default(),
            last_tasks: None,
            last_desired: DesiredState::default(),
            backoff: BackoffTable::new(),
            ports: PortAllocator::new(),
            node,
            pulls,
            executor,
            workers: BTreeMap::new(),
            done_tx,
            done_rx,
            started: BTreeMap::new(),
            cleanup_candidates: BTreeSet::new(),
            cleanups: Vec::new(),
            held,
            hold_store,
            jobs,
            job_store,
            skipped: BTreeMap::new(),
            jobs_dirty: false,
            runs_ended: Vec::new(),
            zone: crate::manifest::cron::host_zone(),
            removals_seen: BTreeMap::new(),
            folder_fingerprint: None,
            parses: ParseCache::default(),
            folder_quiet_since: clock.now(),
            folder_device: None,
            removals_held: None,
            source: None,
            logged_errors: BTreeSet::new(),
            logged_unrecognised: BTreeSet::new(),
            status,
            last_errors: BTreeMap::new(),
            observer: None,
            known_hosts: BTreeMap::new(),
            created_hosts,
            digest_key,
        }
    }

    /// The host's digest key, which the agent loads or creates at start.
    pub fn set_digest_key(&mut self, key: Arc<DigestKey>) {
        self.digest_key = Some(key);
    }

    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    /// Load the manifests from a git source's applied commit instead of the
    /// `manifests` folder. Each pass reads the commit's own checkout folder
    /// (a fixed path per commit), so one pass never mixes two commits, and
    /// its containers are labelled with that commit. `None` in the channel
    /// (nothing applied yet) is treated like an unreadable folder: nothing
    /// is removed.
    pub fn set_source(&mut self, applied: watch::Receiver<Option<Revision>>) {
        self.source = Some(applied);
    }

    /// The folder this pass loads, and the commit it holds (git source).
    fn manifest_folder(&self) -> Result<(std::path::PathBuf, Option<String>), String> {
        let Some(source) = &self.source else {
            return Ok((self.config.manifests.clone(), None));
        };
        match source.borrow().as_ref() {
            Some(rev) => Ok((rev.manifests.clone(), Some(rev.commit.clone()))),
            None => Err(
                "source: no commit applied yet (waiting for the first good fetch); nothing is removed meanwhile"
                    .to_string(),
            ),
        }
    }

    /// Observe passes and outcomes (e.g. for `/metrics`).
    pub fn set_observer(&mut self, observer: Arc<dyn EngineObserver>) {
        self.observer = Some(observer);
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn runtime(&self) -> &Arc<R> {
        &self.runtime
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The executor chains run on, e.g. for `down`.
    pub fn executor(&self) -> &Arc<Executor<R>> {
        &self.executor
    }

    pub fn backoff(&self) -> &BackoffTable {
        &self.backoff
    }

    /// Instances with work in flight.
    pub fn busy(&self) -> BTreeSet<InstanceKey> {
        self.workers.keys().cloned().collect()
    }

    /// How many instances have work in flight.
    pub fn busy_count(&self) -> usize {
        self.workers.len()
    }

    /// Swap in a re-read agent config (SIGHUP). The namespace and listen
    /// address need a restart to change; everything else applies now (work
    /// in flight finishes under the old settings).
    pub fn reload(&mut self, mut config: AgentConfig) {
        if config.namespace != self.config.namespace {
            warn!(
                old = %self.config.namespace,
                new = %config.namespace,
                "the namespace cannot change while berth runs; keeping the old one until restart"
            );
            config.namespace = self.config.namespace.clone();
        }
        if config.source != self.config.source || config.state_dir != self.config.state_dir {
            warn!("the git source and state_dir cannot change while berth runs; keeping the old ones until restart");
            config.source = self.config.source.clone();
            config.state_dir = self.config.state_dir.clone();
            config.manifests = self.config.manifests.clone();
        }
        if config.parallelism != self.config.parallelism {
            self.executor = Arc::new(
                Executor::new(
                    self.runtime.clone(),
                    config.namespace.clone(),
                    config.parallelism,
                    self.pulls.clone(),
                    self.clock,
                )
                .recording_creates(self.created_hosts.clone()),
            );
        }
        self.config = config;
    }

    pub fn validation_context(&self) -> ValidationContext {
        self.config.validation_context()
    }

    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            cleanup_containers: self.config.docker.cleanup.container,
            removal_gate: Some(self.config.removal_delay.get()),
            zone: self.zone.clone(),
            ..PlanOptions::new(self.config.namespace.clone())
        }
    }

    /// `berth retry TASK`: forget the held specs and the backoff of the
    /// task's instances, so the next pass tries its update again. Returns
    /// how many instances were held.
    pub fn retry(&mut self, task: &str) -> usize {
        let held = self.held.keys().filter(|k| k.task == task).count();
        self.held.retain(|k, _| k.task != task);
        self.hold_store.save(&self.held);
        let keys: Vec<InstanceKey> = self
            .backoff
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.task == task)
            .collect();
        for k in keys {
            self.backoff.forget(&k);
        }
        let jobs = self.jobs.rearm(task);
        if jobs > 0 {
            self.job_store.save(&self.jobs);
        }
        info!(
            task,
            held,
            jobs,
            "retry asked for: the task's held updates, failed job attempts and backoff are forgotten"
        );
        held + jobs
    }

    /// Load the folder, list the containers, allocate ports and resolve
    /// every instance. Fails only when Docker cannot be listed.
    pub async fn prepare(&mut self) -> Result<Prepared, PassError> {
        let mut errors = Vec::new();
        let mut notes = Vec::new();
        let mut desired = DesiredState::default();
        let mut no_manifest = false;
        let folder = self.manifest_folder();
        let manifest_dir = match &folder {
            Ok((dir, _)) => dir.clone(),
            Err(_) => self.config.manifests.clone(),
        };
        // Reading the folder and the files its manifests name is blocking
        // file I/O: it runs off the loop (and opens nothing that can block).
        let validation = self.validation_context();
        let loaded = match folder {
            Ok((dir, commit)) => {
                let mut parses = std::mem::take(&mut self.parses);
                let read = tokio::task::spawn_blocking(move || {
                    let loaded = load_folder_cached(
                        &dir,
                        &validation,
                        &crate::node::this_hostname(),
                        &mut parses,
                    );
                    (loaded, parses)
                })
                .await;
                match read {
                    Ok((loaded, parses)) => {
                        self.parses = parses;
                        loaded.map_err(|e| e.to_string()).map(|mut loaded| {
                            for def in loaded.tasks.values_mut() {
                                def.source_commit.clone_from(&commit);
                            }
                            loaded
                        })
                    }
                    Err(e) => Err(format!("the folder reader failed: {e}")),
                }
            }
            Err(e) => Err(e),
        };
        let tasks = match loaded {
            Ok(loaded) => {
                if self.folder_fingerprint.as_ref() != Some(&loaded.fingerprint) {
                    self.folder_fingerprint = Some(loaded.fingerprint.clone());
                    self.folder_quiet_since = self.clock.now();
                }
                no_manifest = loaded.files.is_empty();
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
                errors.push(e);
                desired.hold_removals = true;
                self.last_tasks.clone().unwrap_or_default()
            }
        };

        let listed =
            match tokio::time::timeout(LIST_TIMEOUT, self.runtime.list(&self.config.namespace))
                .await
            {
                Ok(list) => list?,
                Err(_) => {
                    return Err(PassError::Docker(RuntimeError::Unavailable(format!(
                        "Docker did not answer the container list within {}s",
                        LIST_TIMEOUT.as_secs()
                    ))))
                }
            };
        let (observed, uninspected) = self.full_host_access(listed).await;
        self.removals_held = self.hold_everything(&manifest_dir, no_manifest, &observed);
        if let Some(why) = &self.removals_held {
            desired.hold_removals = true;
            errors.push(why.clone());
        }
        // The adoption gate: a container wearing this namespace's labels but
        // reaching further into the host than the agent allows is someone's
        // work, not berth's to adopt. Left alone (never stopped or removed),
        // reported, and its task held: its name is taken, so no second one.
        // One whose inspect failed is not judged: its task waits this pass.
        for (c, why) in &uninspected {
            let Some(key) = c.key() else { continue };
            errors.push(format!(
                "container {} (task {}, index {}) could not be inspected ({why}); berth does not act on its task this pass and tries again at the next",
                c.name, key.task, key.index
            ));
            desired.held_tasks.insert(key.task);
        }
        let gates = self.validation_context();
        for c in &observed {
            let Some(key) = c.key() else { continue };
            if uninspected.iter().any(|(u, _)| u.id == c.id) {
                continue;
            }
            let beyond = beyond_gates(c, &gates, &observed);
            if beyond.is_empty() {
                continue;
            }
            errors.push(format!(
                "container {} (task {}, index {}) is not adopted: {}; berth leaves it alone and creates no other for this task. Remove it (`docker rm -f {}`) or allow this in the agent config",
                c.name,
                key.task,
                key.index,
                beyond.join(", "),
                c.name
            ));
            desired.held_tasks.insert(key.task);
        }

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
        let (mut host_ports, port_errors) = self.ports.allocate(
            &requests,
            &recorded_ports(observed.iter().map(|c| &c.labels)),
            self.config.ports,
            host_port_is_free,
        );
        for e in port_errors {
            errors.push(format!("{}: task {}: {}", e.file, e.task, e.message));
            desired.held_tasks.insert(e.task);
        }

        let ctx = ResolveContext {
            namespace: &self.config.namespace,
            meta: &self.config.meta,
            node: &self.node,
            manifest_dir: &manifest_dir,
        };
        // Read at each pass, like env files: a rotated password is used at once.
        let agent_auth = match &self.config.docker.auth_config {
            Some(path) => match crate::desired::registry::AuthConfig::load(path) {
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
            if def.manifest.update.order == UpdateOrder::StartFirst {
                start_first_ports(
                    &mut self.ports,
                    self.config.ports,
                    &self.config.namespace,
                    def,
                    &mut host_ports,
                    &observed,
                    &ctx,
                );
            }
            let resolved: Result<Vec<_>, _> = (0..def.manifest.count)
                .map(|index| resolve_instance(def, index, &host_ports, &ctx))
                .collect();
            match resolved {
                Ok(instances) => {
                    for instance in instances {
                        let mut instance = match &self.digest_key {
                            Some(key) => instance.with_digest_key(key),
                            None => instance,
                        };
                        if self.digest_key.is_none() && instance.spec.has_secrets() {
                            notes.push(secrets_not_compared(
                                &mut instance,
                                &observed,
                                &self.config.namespace,
                                &self.config.state_dir,
                            ));
                        }
                        instance.credentials = crate::desired::registry::choose_credentials(
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
            notes,
        })
    }

    /// The listed containers with what each reaches on the host in full
    /// (Docker's list leaves out `privileged` and the pid, ipc and uts
    /// modes), and those whose inspect failed, with why. One inspect per
    /// labelled container berth has not seen before, [`INSPECT_CONCURRENCY`]
    /// at once, each within [`INSPECT_TIMEOUT`]; never again for a known id,
    /// and none for a container this process created (its access is berth's
    /// own request). A pass over known containers makes no inspect.
    async fn full_host_access(
        &mut self,
        mut listed: Vec<ObservedContainer>,
    ) -> (Vec<ObservedContainer>, Vec<(ObservedContainer, String)>) {
        let ids: BTreeSet<String> = listed.iter().map(|c| c.id.clone()).collect();
        self.known_hosts.retain(|id, _| ids.contains(id));
        if let Ok(mut created) = self.created_hosts.lock() {
            // Created since the list was taken: kept for the next pass.
            self.known_hosts.append(&mut created);
        }
        let unknown: Vec<String> = listed
            .iter()
            .filter(|c| c.key().is_some() && !self.known_hosts.contains_key(&c.id))
            .map(|c| c.id.clone())
            .collect();
        let runtime = self.runtime.clone();
        let answers: Vec<(String, Result<ObservedContainer, RuntimeError>)> =
            futures_util::stream::iter(unknown)
                .map(|id| {
                    let runtime = runtime.clone();
                    async move {
                        let answer =
                            match tokio::time::timeout(INSPECT_TIMEOUT, runtime.inspect(&id)).await
                            {
                                Ok(Ok(c)) if c.id == id => Ok(c),
                                Ok(Ok(c)) => Err(RuntimeError::Other(format!(
                                    "Docker answered for another container, {}",
                                    c.id
                                ))),
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(RuntimeError::Unavailable(format!(
                                    "no answer within {}s",
                                    INSPECT_TIMEOUT.as_secs()
                                ))),
                            };
                        (id, answer)
                    }
                })
                .buffer_unordered(INSPECT_CONCURRENCY)
                .collect()
                .await;
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        let mut gone: BTreeSet<String> = BTreeSet::new();
        for (id, answer) in answers {
            match answer {
                Ok(c) => {
                    self.known_hosts.insert(id, c.host);
                }
                // Removed between list and inspect: it is simply gone.
                Err(RuntimeError::NotFound(_)) => {
                    gone.insert(id);
                }
                Err(why) => {
                    failed.insert(id, why.to_string());
                }
            }
        }
        listed.retain(|c| !gone.contains(&c.id));
        let mut uninspected = Vec::new();
        for c in &mut listed {
            if let Some(host) = self.known_hosts.get(&c.id) {
                c.host = host.clone();
            } else if let Some(why) = failed.remove(&c.id) {
                uninspected.push((c.clone(), why));
            }
        }
        (listed, uninspected)
    }

    /// Never remove everything by accident. A folder with no manifest at all
    /// (what an unmounted disk leaves at its mount point) or a folder now on
    /// another file system than at start holds every removal, unless the
    /// agent says `allow_empty: true`; `berth down` empties a host on purpose.
    ///
    /// With a git source, `dir` is the applied commit's checkout: every
    /// checkout lies in `state_dir` on one file system, so switching commits
    /// never looks like a mount going away; a commit with no manifest at all
    /// holds every removal like an empty folder does.
    fn hold_everything(
        &mut self,
        dir: &std::path::Path,
        no_manifest: bool,
        observed: &[ObservedContainer],
    ) -> Option<String> {
        let device = folder_device(dir);
        if self.folder_device.is_none() {
            self.folder_device = device;
        }
        let first = self.folder_device.unwrap_or_default();
        if let Some(now) = device.filter(|d| self.folder_device.is_some() && *d != first) {
            return Some(format!(
                "every removal is held: the manifest folder {} is on another file system than when berth started (device {first} then, {now} now; did a mount go away?). Restart berth once the folder is right",
                dir.display()
            ));
        }
        let ours = observed
            .iter()
            .filter(|c| c.namespace() == Some(self.config.namespace.as_str()) && c.key().is_some())
            .count();
        if no_manifest && ours > 0 && !self.config.allow_empty {
            return Some(format!(
                "every removal is held: the manifest folder {} has no manifest, and removing all {ours} containers of the namespace is never done by accident. Put the manifests back, run `berth down` to empty the host, or set allow_empty: true",
                dir.display()
            ));
        }
        None
    }

    /// The plan for the current world, without dispatching it. Instances
    /// with work in flight are left out.
    pub fn plan(&mut self, prepared: &Prepared, now: SystemTime) -> Plan {
        let busy = self.busy();
        // A busy instance's container is in transition: a stop berth itself
        // makes is not a crash.
        let settled: Vec<ObservedContainer> = prepared
            .observed
            .iter()
            .filter(|c| c.key().is_none_or(|k| !busy.contains(&k)))
            .cloned()
            .collect();
        observe_failures(
            &mut self.backoff,
            &prepared.desired,
            &settled,
            &self.held,
            &self.config.namespace,
            now,
        );
        // Counted in memory here (so `berth plan` shows the truth); a pass
        // saves, logs and counts them (`record_jobs`), `plan` never writes.
        let (jobs_changed, runs) =
            self.jobs
                .observe(&prepared.desired, &settled, &self.config.namespace, now);
        self.jobs_dirty |= jobs_changed;
        self.runs_ended.extend(runs);
        let plan = plan(
            &prepared.desired,
            &prepared.observed,
            Memory {
                backoff: &self.backoff,
                busy: &busy,
                started: &self.started,
                held: &self.held,
                removals_seen: &self.removals_seen,
                folder_quiet_since: self.folder_quiet_since,
                jobs: &self.jobs,
            },
            now,
            &self.plan_options(),
        );

        // A removal planned now is remembered from its first sighting; one
        // no longer planned (the task came back) is forgotten.
        let planned: BTreeSet<&str> = plan
            .pending_removals
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        self.removals_seen
            .retain(|id, _| planned.contains(id.as_str()));
        for id in planned {
            self.removals_seen.entry(id.to_string()).or_insert(now);
        }
        plan
    }

    /// What a pass's plan means for jobs, once it is dispatched: runs that
    /// ended are logged and counted, scheduled runs start their attempts
    /// from zero, skipped slots are logged once, and the records are saved.
    fn record_jobs(&mut self, plan: &Plan) {
        for run in std::mem::take(&mut self.runs_ended) {
            info!(task = %run.key.task, index = run.key.index, result = run.result, "job run ended: {}", run.result);
            if let Some(observer) = &self.observer {
                observer.job_run(&run.key.task, run.result);
            }
        }
        for key in &plan.runs {
            self.jobs_dirty |= self.jobs.start_run(key);
            info!(task = %key.task, index = key.index, "scheduled job run");
        }
        for view in &plan.jobs {
            let Some(slot) = view.skipped else { continue };
            if self.skipped.insert(view.key.clone(), slot) != Some(slot) {
                info!(task = %view.key.task, index = view.key.index, "scheduled run skipped: the previous run still goes on");
                if let Some(observer) = &self.observer {
                    observer.job_run(&view.key.task, "skipped");
                }
            }
        }
        if std::mem::take(&mut self.jobs_dirty) {
            self.job_store.save(&self.jobs);
        }
    }

    /// One pass: prepare, plan, dispatch. Returns without waiting for the
    /// dispatched work.
    pub async fn pass(&mut self, trigger: &Trigger) -> Result<PassReport, PassError> {
        let started = Instant::now();
        let span = info_span!("pass", trigger = %trigger);
        let result = self.pass_inner().instrument(span.clone()).await;
        let _enter = span.enter();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(r) if r.dispatched == 0 => debug!(elapsed_ms, "pass: nothing to do"),
            Ok(r) => info!(
                elapsed_ms,
                dispatched = r.dispatched,
                busy = r.busy.len(),
                "pass done"
            ),
            Err(e) => error!("pass failed: {e}"),
        }
        if let Some(observer) = &self.observer {
            observer.pass(started.elapsed(), &result);
        }
        result
    }

    async fn pass_inner(&mut self) -> Result<PassReport, PassError> {
        let prepared = match self.prepare().await {
            Ok(p) => p,
            Err(e) => {
                let now = self.clock.now();
                self.status.update(|s| {
                    s.docker_error = Some(e.to_string());
                    s.docker_down_since.get_or_insert(unix_secs(now));
                });
                return Err(e);
            }
        };
        self.log_errors_once(&prepared.errors);
        // A held spec is forgotten once the manifest asks for another one
        // (or the folder could not be read: then nothing is decided).
        if !prepared.desired.hold_removals {
            let before = self.held.len();
            self.held.retain(|k, h| {
                prepared
                    .desired
                    .instances
                    .get(k)
                    .is_some_and(|d| d.hash == h.hash)
            });
            if self.held.len() != before {
                self.hold_store.save(&self.held);
            }
            // The failures counted so far were another spec's: a spec the
            // manifest now asks for gets its first try at once, not after
            // the backoff its predecessor earned (as the kubelet keys its
            // backoff by the container's spec).
            for (k, d) in &prepared.desired.instances {
                if self
                    .last_desired
                    .instances
                    .get(k)
                    .is_some_and(|before| before.hash != d.hash)
                {
                    self.backoff.new_spec(k);
                }
            }
            let jobs_wanted = |k: &InstanceKey| {
                prepared
                    .desired
                    .instances
                    .get(k)
                    .is_some_and(|d| d.kind == crate::manifest::TaskKind::Job)
            };
            self.jobs_dirty |= self.jobs.retain(jobs_wanted);
            self.skipped.retain(|k, _| jobs_wanted(k));
        }
        let now = self.clock.now();
        let plan = self.plan(&prepared, now);
        self.record_jobs(&plan);
        let (new, gone) = seen_changes(&mut self.logged_unrecognised, &plan.unrecognised);
        for name in new {
            warn!(container = %name, "container carries our namespace label but no valid task/index labels; leaving it alone");
        }
        for name in gone {
            info!(container = %name, "resolved: the container without valid task/index labels is gone or fixed");
        }
        for w in &plan.waiting {
            self.log_backoff(&w.key, w.until, now);
        }
        self.call_off_stale_work(&prepared.desired);
        let dispatched = self.dispatch(plan.actions.clone(), &prepared.observed);
        if self.config.docker.cleanup.image {
            self.clean_images(&prepared);
        }
        let desired_instances: BTreeSet<InstanceKey> =
            prepared.desired.instances.keys().cloned().collect();
        let busy = self.busy();
        self.backoff
            .retain(|k| desired_instances.contains(k) || busy.contains(k));
        self.last_errors
            .retain(|k, _| desired_instances.contains(k) || busy.contains(k));
        self.started.retain(|k, _| desired_instances.contains(k));
        let report = PassReport {
            plan,
            errors: prepared.errors,
            observed: prepared.observed,
            desired_instances,
            dispatched,
            busy,
        };
        self.last_desired = prepared.desired;
        self.publish_status(&report);
        Ok(report)
    }

    /// Log each problem when it first appears and say when it is gone; a
    /// broken file must not fill the journal at every pass.
    fn log_errors_once(&mut self, errors: &[String]) {
        let (new, gone) = seen_changes(&mut self.logged_errors, errors);
        for e in new {
            warn!("{e}");
        }
        for e in gone {
            info!("resolved: {e}");
        }
    }

    fn log_backoff(&self, key: &InstanceKey, until: SystemTime, now: SystemTime) {
        let secs = until.duration_since(now).unwrap_or_default().as_secs_f64();
        let state = self.backoff.get(key);
        info!(
            task = %key.task,
            index = key.index,
            failures = state.map_or(0, |b| b.failures),
            retry_in = format!("{secs:.1}s"),
            retry_at_unix_ms = unix_millis(until),
            last_error = state.and_then(|b| b.last_error.as_deref()).unwrap_or(""),
            "backing off"
        );
    }

    /// A chain still waiting for a pull works towards a spec the folder no
    /// longer asks for: call it off, so the new spec applies at once.
    fn call_off_stale_work(&self, desired: &DesiredState) {
        for (key, worker) in &self.workers {
            let Some(target) = &worker.target else {
                continue;
            };
            let wanted = desired.instances.get(key).map(|d| d.hash.as_str());
            // Waiting for a pull changed nothing yet; a gate is undone by
            // putting the old container back.
            let waiting = worker
                .live
                .step
                .get()
                .is_some_and(|s| matches!(s.doing, "pulling" | "gating"));
            if waiting && wanted != Some(target.as_str()) && !*worker.cancel.borrow() {
                info!(task = %key.task, index = key.index, "the manifest changed while its image was pulling; calling the old update off");
                let _ = worker.cancel.send(true);
            }
        }
    }

    /// Hand each instance's chain to a worker of its own.
    fn dispatch(&mut self, actions: Vec<Action>, observed: &[ObservedContainer]) -> usize {
        let chains = group_chains(actions);
        let dispatched = chains.len();
        for (key, chain) in chains {
            let actions: Vec<Action> = chain.into_iter().map(|(_, a)| a).collect();
            let images = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Remove { id, .. }
                    | Action::Replace { old_id: id, .. }
                    | Action::Resume { old_id: id, .. }
                    | Action::ResumeStartFirst { old_id: id, .. } => {
                        let image = observed.iter().find(|c| &c.id == id)?.image.clone();
                        Some((id.clone(), image))
                    }
                    _ => None,
                })
                .collect();
            let target = actions.iter().find_map(|a| match a {
                Action::Create { desired }
                | Action::Replace { desired, .. }
                | Action::Resume { desired, .. }
                | Action::ResumeStartFirst { desired, .. } => Some(desired.hash.clone()),
                _ => None,
            });
            let step = StepCell::new();
            let (cancel, cancel_rx) = watch::channel(false);
            let live = LiveWork {
                action: actions.first().map_or("work", Action::verb),
                since: self.clock.now(),
                step: step.clone(),
            };
            let mut guard = DoneGuard {
                tx: self.done_tx.clone(),
                done: Some(ChainDone {
                    key: key.clone(),
                    outcomes: Vec::new(),
                    images,
                    actions: actions.clone(),
                }),
            };
            let executor = self.executor.clone();
            tokio::spawn(async move {
                let outcomes = executor.run_chain(actions, &step, cancel_rx).await;
                if let Some(done) = guard.done.as_mut() {
                    done.outcomes = outcomes;
                }
                drop(guard);
            });
            self.workers.insert(
                key,
                Worker {
                    live,
                    target,
                    cancel,
                },
            );
        }
        self.publish_work();
        dispatched
    }

    fn publish_work(&self) {
        self.status.set_work(
            self.workers
                .iter()
                .map(|(k, w)| (k.clone(), w.live.clone()))
                .collect(),
        );
    }

    /// Wait for the next chain to end. Never resolves while none is in flight.
    pub async fn next_done(&mut self) -> ChainDone {
        match self.done_rx.recv().await {
            Some(done) => done,
            // The controller holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// A chain that already ended, without waiting.
    pub fn try_next_done(&mut self) -> Option<ChainDone> {
        self.done_rx.try_recv().ok()
    }

    /// Record a chain's end: outcomes feed backoff (through the retry
    /// policy), status and image cleanup; the instance is no longer busy.
    pub fn complete(&mut self, done: ChainDone) {
        self.workers.remove(&done.key);
        self.publish_work();
        if let Some(observer) = &self.observer {
            observer.outcomes(&done.outcomes);
        }
        let now = self.clock.now();
        let restart = self
            .last_desired
            .instances
            .get(&done.key)
            .map(|d| d.restart.clone())
            .unwrap_or_default();
        for (action, o) in done.actions.iter().zip(&done.outcomes) {
            match &o.result {
                Ok(()) => {
                    self.last_errors.remove(&o.key);
                    self.backoff.record_success(&o.key);
                    if matches!(o.verb, "restart" | "restart-unhealthy") {
                        self.backoff.record_restart(&o.key, now);
                    }
                    if let Some(at) = o.started_at {
                        self.started.insert(o.key.clone(), at);
                    }
                    if let Action::Remove { id, .. }
                    | Action::Replace { old_id: id, .. }
                    | Action::Resume { old_id: id, .. }
                    | Action::ResumeStartFirst { old_id: id, .. } = action
                    {
                        if let Some(image) = done.images.get(id) {
                            self.cleanup_candidates.insert(image.clone());
                        }
                    }
                }
                Err(ApplyError::Cancelled) => {}
                Err(e) => {
                    if let Action::Replace { desired, .. } | Action::Resume { desired, .. } = action
                    {
                        let put_back = matches!(e, ApplyError::RolledBack { .. });
                        if put_back || classify(e) == FailureKind::Permanent {
                            warn!(task = %o.key.task, index = o.key.index, error = %e, "update held: the previous container keeps running; change the manifest or run `berth retry {}`", o.key.task);
                            self.held.insert(
                                o.key.clone(),
                                HeldSpec {
                                    hash: desired.hash.clone(),
                                    reason: format!("update held: {e}"),
                                },
                            );
                            self.hold_store.save(&self.held);
                        }
                    }
                    let failures = self.backoff.get(&o.key).map_or(0, |b| b.failures);
                    let requeue = error_policy(e, o.counts_as_attempt, failures, &restart);
                    self.backoff
                        .record_requeue(&o.key, now, e.to_string(), &requeue);
                    self.last_errors.insert(o.key.clone(), e.to_string());
                    if requeue.counted {
                        let due = self.backoff.due(&o.key, &restart).unwrap_or(now);
                        self.log_backoff(&o.key, due, now);
                    }
                }
            }
        }
    }

    /// Wait up to `grace` for work in flight to end (on shutdown): finishing
    /// is tidier, abandoning is safe (the next berth picks up the pieces).
    pub async fn drain(&mut self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, self.next_done()).await {
                Ok(done) => self.complete(done),
                Err(_) => break,
            }
        }
        self.workers.len()
    }

    /// Remove the images of removed containers that nothing uses any more,
    /// in the background.
    fn clean_images(&mut self, prepared: &Prepared) {
        if self.cleanup_candidates.is_empty() {
            return;
        }
        let candidates = std::mem::take(&mut self.cleanup_candidates);
        let unused = crate::engine::cleanup::unused_images(
            &candidates,
            &prepared.observed,
            &prepared.desired,
        );
        if unused.is_empty() {
            return;
        }
        let runtime = self.runtime.clone();
        self.cleanups.retain(|h| !h.is_finished());
        self.cleanups.push(tokio::spawn(async move {
            crate::engine::cleanup::remove_images(runtime.as_ref(), &unused).await;
        }));
    }

    /// Wait (up to `limit`) for background image removals, so a one-shot run
    /// does not exit in the middle of one.
    pub async fn finish_background(&mut self, limit: Duration) {
        let all = futures_util::future::join_all(self.cleanups.drain(..));
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Ask Docker for its version and remember it for status and logs.
    pub async fn refresh_docker_version(&self) -> Result<String, RuntimeError> {
        let version = self.runtime.version().await;
        let now = self.clock.now();
        self.status.update(|s| match &version {
            Ok(v) => {
                s.docker_version = Some(v.clone());
                s.docker_error = None;
                s.docker_down_since = None;
            }
            Err(e) => {
                s.docker_error = Some(e.to_string());
                s.docker_down_since.get_or_insert(unix_secs(now));
            }
        });
        version
    }

    /// How `run --once` judges the world after `report`'s pass.
    pub fn once_verdict(&self, report: &PassReport) -> OnceVerdict {
        let mut problems = Vec::new();
        let mut pending = false;
        let is_job = |key: &InstanceKey| {
            self.last_desired
                .instances
                .get(key)
                .is_some_and(|d| d.kind == crate::manifest::TaskKind::Job)
        };
        let given_up = |key: &InstanceKey| -> Option<String> {
            let b = self.backoff.get(key)?;
            if is_job(key) && !b.permanent {
                // A job's failed runs are judged by its max_attempts: it is
                // held (a problem below) once they are used up.
                return None;
            }
            let why = b.last_error.clone().unwrap_or_else(|| "failed".into());
            if b.permanent {
                Some(format!("{key}: {why}"))
            } else if b.failures >= ONCE_MAX_FAILURES {
                Some(format!("{key}: {why}, {} times", b.failures))
            } else {
                None
            }
        };
        let mut seen = BTreeSet::new();
        let planned = report.plan.actions.iter().map(Action::key);
        let waiting = report
            .plan
            .waiting
            .iter()
            .chain(&report.plan.settling)
            .map(|w| &w.key)
            .chain(report.plan.pending_removals.iter().map(|r| &r.key));
        for key in report.busy.iter().chain(planned).chain(waiting) {
            if !seen.insert(key.clone()) {
                continue;
            }
            match given_up(key) {
                Some(problem) => problems.push(problem),
                None => pending = true,
            }
        }
        for h in &report.plan.held {
            problems.push(format!("{}: {}", h.key, h.reason));
        }
        for b in &report.plan.blocked {
            if b.held {
                problems.push(b.to_string());
            } else {
                pending = true;
            }
        }
        // A job without a schedule is waited for until it ends; a scheduled
        // one only until its container exists (its runs are the schedule's).
        for j in &report.plan.jobs {
            let scheduled = self
                .last_desired
                .instances
                .get(&j.key)
                .is_some_and(|d| d.schedule.is_some());
            if !scheduled && matches!(j.state, JobState::Running { .. }) {
                pending = true;
            }
        }
        for f in &report.plan.finished {
            if !f.succeeded() {
                let code = f
                    .exit_code
                    .map_or("exited".to_string(), |c| format!("exited with code {c}"));
                problems.push(format!(
                    "{}: {code} and its restart policy does not restart it",
                    f.key
                ));
            }
        }
        if pending {
            OnceVerdict::Pending
        } else if problems.is_empty() && report.errors.is_empty() {
            OnceVerdict::Converged
        } else {
            OnceVerdict::Failed(problems)
        }
    }

    /// Whether any failure in flight is permanent (for tests and status).
    pub fn is_permanent(&self, key: &InstanceKey) -> bool {
        self.backoff.get(key).is_some_and(|b| b.permanent)
    }

    fn publish_status(&self, report: &PassReport) {
        let ns = &self.config.namespace;
        let now = self.clock.now();
        let observed = &report.observed;
        let desired = &self.last_desired;
        let mut keys: BTreeSet<InstanceKey> = report.desired_instances.clone();
        keys.extend(report.busy.iter().cloned());
        // Each instance's container under its own name, found once: a
        // search of the list per instance made this pass quadratic.
        let mut canonical: BTreeMap<InstanceKey, &ObservedContainer> = BTreeMap::new();
        for c in observed {
            if let Some(k) = c.key() {
                if c.name == k.container_name(ns) {
                    keys.insert(k.clone());
                    canonical.entry(k).or_insert(c);
                }
            }
        }
        let settling: BTreeSet<&InstanceKey> =
            report.plan.settling.iter().map(|w| &w.key).collect();
        let held: BTreeMap<&InstanceKey, &str> = report
            .plan
            .held
            .iter()
            .map(|h| (&h.key, h.reason.as_str()))
            .collect();
        let removal_due: BTreeMap<&InstanceKey, u64> = report
            .plan
            .pending_removals
            .iter()
            .map(|r| (&r.key, unix_secs(r.due)))
            .collect();
        let blocked: BTreeMap<&InstanceKey, &str> = report
            .plan
            .blocked
            .iter()
            .map(|b| (&b.key, b.reason.as_str()))
            .collect();
        let jobs: BTreeMap<&InstanceKey, &crate::engine::jobs::JobView> =
            report.plan.jobs.iter().map(|j| (&j.key, j)).collect();
        let finished: BTreeMap<&InstanceKey, bool> = report
            .plan
            .finished
            .iter()
            .map(|f| (&f.key, f.succeeded()))
            .collect();
        let instances = keys
            .into_iter()
            .map(|key| {
                let container = canonical.get(&key).copied();
                let backoff = self.backoff.get(&key);
                let want = desired.instances.get(&key);
                let backoff_until = want
                    .and_then(|w| self.backoff.due(&key, &w.restart))
                    .filter(|t| *t > now)
                    .map(unix_secs);
                let job = jobs.get(&key);
                let state = match (container, want) {
                    _ if job.is_some() => job.map_or_else(String::new, |j| j.state_name().into()),
                    _ if finished.get(&key) == Some(&true) => "succeeded".into(),
                    _ if finished.get(&key) == Some(&false) => "failed".into(),
                    (Some(_), _) if settling.contains(&key) => "starting".into(),
                    (Some(c), _) => format!("{:?}", c.state).to_lowercase(),
                    (None, Some(_)) => "missing".into(),
                    (None, None) => "unknown".into(),
                };
                let started_at = container
                    .filter(|c| c.is_running())
                    .and_then(|c| c.started_at)
                    .map(unix_secs);
                InstanceStatus {
                    task: key.task.clone(),
                    index: key.index,
                    desired_hash: want.map(|w| w.hash.clone()),
                    container: container.map(|c| c.name.clone()),
                    container_id: container.map(|c| c.id.chars().take(12).collect()),
                    state,
                    started_at,
                    uptime_secs: started_at.map(|t| unix_secs(now).saturating_sub(t)),
                    restarts: backoff.map_or(0, |b| b.restarts),
                    backoff_until,
                    last_error: self
                        .last_errors
                        .get(&key)
                        .cloned()
                        .or_else(|| backoff.and_then(|b| b.last_error.clone())),
                    work: None,
                    held: held.get(&key).map(|r| r.to_string()),
                    removal_due: removal_due.get(&key).copied(),
                    job: job.map(|j| j.describe(now)),
                    next_run: job.and_then(|j| j.next_run).map(unix_secs),
                    waiting: blocked.get(&key).map(|r| r.to_string()),
                }
            })
            .collect();
        let removals_held = self.removals_held.clone();
        let zone = crate::manifest::cron::zone_name(&self.zone);
        self.status.update(|s| {
            s.instances = instances;
            s.removals_held = removals_held;
            s.time_zone = Some(zone);
            s.manifest_errors = report.errors.clone();
            s.last_pass = Some(unix_secs(now));
            s.passes += 1;
            s.docker_error = None;
            s.docker_down_since = None;
        });
    }
}

/// Without the digest key, a spec with secrets cannot be hashed as the agent
/// labelled it. Rather than claim a change: when the running container's
/// record shows no change outside the secrets, the instance takes that
/// container's hash (whether a secret changed is unknown, and said so);
/// otherwise its hash matches nothing and the plan shows the other changes,
/// each secret as `unknown`. Returns the note to show.
fn secrets_not_compared(
    instance: &mut crate::desired::state::DesiredInstance,
    observed: &[ObservedContainer],
    namespace: &str,
    state_dir: &std::path::Path,
) -> String {
    let name = instance.key.container_name(namespace);
    let running = observed
        .iter()
        .find(|c| c.name == name && c.key().as_ref() == Some(&instance.key));
    let unchanged_but_secrets = running.and_then(|c| {
        let old = crate::desired::applied::AppliedSpec::parse(
            c.labels.get(crate::names::labels::APPLIED)?,
        )?;
        let same = old
            .diff(&instance.record)
            .iter()
            .all(|change| change.unknown)
            && old.s.keys().eq(instance.record.s.keys());
        same.then(|| c.spec_hash().map(str::to_string))?
    });
    instance.hash = unchanged_but_secrets.unwrap_or_else(|| "(secrets not compared)".into());
    format!(
        "{}[{}]: whether a secret changed is unknown: the digest key {} is not readable by this user (run as the agent's user to compare secrets)",
        instance.key.task,
        instance.key.index,
        state_dir.join(crate::desired::digest_key::KEY_FILE).display()
    )
}

/// The log-once memory: which of `now` were not in `seen` (to log as new)
/// and which of `seen` are no longer in `now` (to log as resolved); `seen`
/// becomes `now`. A message that stays the same is logged once, not at
/// every pass; one that changes is a new message. Pure.
pub fn seen_changes(seen: &mut BTreeSet<String>, now: &[String]) -> (Vec<String>, Vec<String>) {
    let mut new: Vec<String> = Vec::new();
    for m in now {
        if !seen.contains(m) && !new.contains(m) {
            new.push(m.clone());
        }
    }
    let current: BTreeSet<&String> = now.iter().collect();
    let gone: Vec<String> = seen
        .iter()
        .filter(|m| !current.contains(m))
        .cloned()
        .collect();
    *seen = now.iter().cloned().collect();
    (new, gone)
}

/// What `c` reaches on the host beyond what the agent allows (the gates
/// `berth validate` applies to manifests), one phrase each; empty when it
/// stays within them. `observed` is the namespace's containers: joining one
/// of them (`container:<id or name>`) is allowed. `c.host` must be complete
/// (from an inspect or berth's own create), not the list's part.
fn beyond_gates(
    c: &ObservedContainer,
    gates: &ValidationContext,
    observed: &[ObservedContainer],
) -> Vec<String> {
    const PRIVILEGED: &str = "needs docker.privileged.enabled";
    let mut beyond = Vec::new();
    if !gates.allow_privileged {
        if c.host.privileged {
            beyond.push(format!("privileged ({PRIVILEGED})"));
        }
        let modes = [
            ("network", &c.host.network_mode),
            ("pid", &c.host.pid_mode),
            ("ipc", &c.host.ipc_mode),
            ("uts", &c.host.uts_mode),
        ];
        for (what, mode) in modes {
            if mode == "host" {
                beyond.push(format!("the host's {what} namespace ({PRIVILEGED})"));
            } else if let Some(target) = mode.strip_prefix("container:") {
                let own = observed.iter().any(|o| {
                    o.id == target
                        || (o.name == target
                            && crate::names::parse_container_name(target, &gates.namespace)
                                .is_some())
                });
                if !own {
                    beyond.push(format!(
                        "the {what} namespace of a container not of this namespace (`{mode}`; {PRIVILEGED})"
                    ));
                }
            }
        }
    }
    // The networks it joins: its mode's, when that names one, and any it
    // was connected to since. `host` is the privileged gate's, above.
    let mode = c.host.network_mode.as_str();
    let mut networks: BTreeSet<&str> = c.host.networks.iter().map(String::as_str).collect();
    if !mode.is_empty() && !mode.starts_with("container:") {
        networks.insert(mode);
    }
    for network in networks {
        if network == "host" {
            if !gates.allow_privileged && mode != "host" {
                beyond.push(format!("the host's network namespace ({PRIVILEGED})"));
            }
        } else if !network_allowed(network, gates) {
            beyond.push(format!(
                "network `{network}` not of this namespace (not in docker.networks.allowed)"
            ));
        }
    }
    let own = format!("{}-", gates.namespace);
    let allowed = gates.allowed_volumes.as_deref();
    for source in &c.host.binds {
        if !gates.allow_host_volumes {
            beyond.push(format!(
                "host path `{source}` mounted (needs docker.volumes.enabled)"
            ));
        } else if allowed.is_some_and(|a| !host_path_allowed(source, a)) {
            beyond.push(format!(
                "host path `{source}` mounted (not under docker.volumes.allowed)"
            ));
        }
    }
    for volume in c.host.volumes.iter().filter(|v| !v.starts_with(&own)) {
        if !gates.allow_host_volumes {
            beyond.push(format!(
                "volume `{volume}` not of this namespace (needs docker.volumes.enabled)"
            ));
        } else if allowed.is_some_and(|a| !a.iter().any(|name| name == volume)) {
            beyond.push(format!(
                "volume `{volume}` not of this namespace (not in docker.volumes.allowed)"
            ));
        }
    }
    beyond
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, name: &str, host: crate::runtime::HostAccess) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            name: name.into(),
            image: "busybox:1".into(),
            labels: BTreeMap::new(),
            state: crate::runtime::ContainerState::Running,
            health: crate::runtime::Health::None,
            exit_code: None,
            started_at: None,
            finished_at: None,
            host,
        }
    }

    /// For every pair of a manifest fragment and what a container made
    /// from it reaches, under every combination of gates: the adoption gate
    /// refuses the container exactly when `berth validate` refuses the
    /// manifest.
    #[test]
    fn the_adoption_gate_refuses_what_validate_refuses_and_nothing_else() {
        use crate::runtime::HostAccess;
        let tmp = tempfile::tempdir().unwrap();
        let www = tmp.path().join("www");
        std::fs::create_dir(&www).unwrap();
        let www = www.display().to_string();
        let main = container("abc", "berth-main-0", HostAccess::default());
        let host = |f: &dyn Fn(&mut HostAccess)| {
            let mut h = HostAccess {
                network_mode: "bridge".into(),
                networks: vec!["bridge".into()],
                ..HostAccess::default()
            };
            f(&mut h);
            h
        };
        let cases: Vec<(String, HostAccess)> = vec![
            (String::new(), host(&|_| {})),
            ("privileged: true".into(), host(&|h| h.privileged = true)),
            (
                "network_mode: host".into(),
                host(&|h| {
                    h.network_mode = "host".into();
                    h.networks = vec!["host".into()];
                }),
            ),
            (
                "network_mode: none".into(),
                host(&|h| {
                    h.network_mode = "none".into();
                    h.networks = vec!["none".into()];
                }),
            ),
            (
                "network_mode: default".into(),
                host(&|h| h.network_mode = "default".into()),
            ),
            (
                "network_mode: berth-internal".into(),
                host(&|h| {
                    h.network_mode = "berth-internal".into();
                    h.networks = vec!["berth-internal".into()];
                }),
            ),
            (
                "network_mode: frontend".into(),
                host(&|h| {
                    h.network_mode = "frontend".into();
                    h.networks = vec!["frontend".into()];
                }),
            ),
            (
                "network_mode: backend".into(),
                host(&|h| {
                    h.network_mode = "backend".into();
                    h.networks = vec!["backend".into()];
                }),
            ),
            (
                "network_mode: edge-internal".into(),
                host(&|h| {
                    h.network_mode = "edge-internal".into();
                    h.networks = vec!["edge-internal".into()];
                }),
            ),
            (
                "pid_mode: host".into(),
                host(&|h| h.pid_mode = "host".into()),
            ),
            (
                "ipc_mode: host".into(),
                host(&|h| h.ipc_mode = "host".into()),
            ),
            (
                "uts_mode: host".into(),
                host(&|h| h.uts_mode = "host".into()),
            ),
            (
                "ipc_mode: shareable".into(),
                host(&|h| h.ipc_mode = "shareable".into()),
            ),
            (
                "network_mode: container:berth-main-0".into(),
                host(&|h| {
                    h.network_mode = "container:berth-main-0".into();
                    h.networks = Vec::new();
                }),
            ),
            (
                "pid_mode: container:berth-main-0".into(),
                host(&|h| h.pid_mode = "container:abc".into()),
            ),
            (
                "ipc_mode: container:berth-main-0".into(),
                host(&|h| h.ipc_mode = "container:berth-main-0".into()),
            ),
            (
                "network_mode: container:postgres".into(),
                host(&|h| {
                    h.network_mode = "container:postgres".into();
                    h.networks = Vec::new();
                }),
            ),
            (
                "pid_mode: container:postgres".into(),
                host(&|h| h.pid_mode = "container:postgres".into()),
            ),
            (
                "ipc_mode: container:postgres".into(),
                host(&|h| h.ipc_mode = "container:postgres".into()),
            ),
            (
                "volumes: [\"berth-data:/data\"]".into(),
                host(&|h| h.volumes = vec!["berth-data".into()]),
            ),
            (
                "volumes: [\"pgdata:/data\"]".into(),
                host(&|h| h.volumes = vec!["pgdata".into()]),
            ),
            (
                "volumes: [\"cache:/data\"]".into(),
                host(&|h| h.volumes = vec!["cache".into()]),
            ),
            (
                "volumes: [\"/etc:/x\"]".into(),
                host(&|h| h.binds = vec!["/etc".into()]),
            ),
            (
                format!("volumes: [\"{www}/site:/x\"]"),
                host(&|h| h.binds = vec![format!("{www}/site")]),
            ),
        ];
        let mut contexts = Vec::new();
        for allow_privileged in [false, true] {
            for allow_host_volumes in [false, true] {
                for allowed_volumes in [None, Some(vec![www.clone(), "cache".to_string()])] {
                    for networks in [&[][..], &["frontend", "edge-internal"]] {
                        contexts.push(ValidationContext {
                            namespace: "berth".into(),
                            allow_privileged,
                            allow_host_volumes,
                            allowed_volumes: allowed_volumes.clone(),
                            allowed_networks: Some(
                                networks.iter().map(|n| n.to_string()).collect(),
                            ),
                            ..ValidationContext::default()
                        });
                    }
                }
            }
        }
        let mut refused = 0;
        for gates in &contexts {
            for (fragment, access) in &cases {
                let manifest = format!("image: x\n{fragment}\n");
                let validate_refuses =
                    crate::manifest::validate::check_file("side.yaml", &manifest, gates).is_err();
                let c = container("def", "berth-side-0", access.clone());
                let beyond = beyond_gates(&c, gates, &[main.clone(), c.clone()]);
                assert_eq!(
                    !beyond.is_empty(),
                    validate_refuses,
                    "{fragment:?} under {gates:?}: gate says {beyond:?}"
                );
                refused += usize::from(validate_refuses);
            }
        }
        assert!(refused > 20, "the table exercises refusals: {refused}");
        let bind = host(&|h| h.binds = vec!["/etc".into()]);
        let c = container("def", "berth-side-0", bind);
        assert!(beyond_gates(&c, &contexts[0], std::slice::from_ref(&c))[0].contains("`/etc`"));
        // A network joined after the container was made (`docker network
        // connect`) counts as much as its mode's: no manifest asks for it,
        // so only the gate can see it.
        let connected = host(&|h| h.networks = vec!["bridge".into(), "backend".into()]);
        let c = container("def", "berth-side-0", connected);
        for gates in &contexts {
            let beyond = beyond_gates(&c, gates, std::slice::from_ref(&c));
            assert_eq!(
                beyond,
                ["network `backend` not of this namespace (not in docker.networks.allowed)"],
                "{gates:?}"
            );
        }
        let own = host(&|h| h.networks = vec!["bridge".into(), "berth-db".into()]);
        let c = container("def", "berth-side-0", own);
        assert!(beyond_gates(&c, &contexts[0], std::slice::from_ref(&c)).is_empty());
    }

    /// The gate asks Docker once per container it has not seen, never for
    /// one this process created, and a pass over known containers is one
    /// list call and nothing else.
    #[tokio::test(start_paused = true)]
    async fn the_gate_inspects_each_unknown_container_once_and_a_converged_pass_lists_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller_with(dir.path(), &[("web.yaml", "image: web:1\n")]);
        pass_and_finish(&mut c).await;
        tokio::time::advance(Duration::from_secs(3)).await;
        let rt = c.runtime().clone();
        let (lists, inspects) = (rt.reads("list"), rt.reads("inspect"));
        let quiet = pass_and_finish(&mut c).await;
        assert!(quiet.converged(), "{:?}", quiet.plan);
        assert_eq!(rt.reads("list"), lists + 1, "one list");
        assert_eq!(
            rt.reads("inspect"),
            inspects,
            "its own container needs no inspect"
        );

        // A new berth over the same host: one inspect per container, once.
        let mut c =
            Controller::with_parts(rt.clone(), c.config.clone(), c.clock, Arc::new(LogPulls));
        let before = rt.reads("inspect");
        let first = pass_and_finish(&mut c).await;
        assert!(first.converged() && first.errors.is_empty(), "{first:?}");
        assert_eq!(rt.reads("inspect"), before + 1);
        let lists = rt.reads("list");
        for _ in 0..3 {
            let again = pass_and_finish(&mut c).await;
            assert!(again.converged());
        }
        assert_eq!(rt.reads("list"), lists + 3);
        assert_eq!(
            rt.reads("inspect"),
            before + 1,
            "never again for a known id"
        );
        assert_eq!(rt.mutations(), 2, "one create and one start in all");
    }

    /// A labelled container made by hand with what the list does not show
    /// (privileged, the host's pid namespace) is left alone and its task gets
    /// no second container; one whose inspect fails is not acted on until
    /// an inspect answers.
    #[tokio::test(start_paused = true)]
    async fn a_hand_made_privileged_container_is_not_adopted_and_an_uninspectable_one_waits() {
        for setting in ["privileged", "pid"] {
            let dir = tempfile::tempdir().unwrap();
            let files = [("web.yaml", "image: web:1\n")];
            let mut c = controller_with(dir.path(), &files);
            pass_and_finish(&mut c).await;
            let rt = c.runtime().clone();
            // The same container, as if made by hand with `docker run
            // --privileged` (or `--pid host`) and berth's labels.
            let mut made = rt.all().into_iter().find(|x| x.name == "t-web-0").unwrap();
            match setting {
                "privileged" => made.host.privileged = true,
                _ => made.host.pid_mode = "host".into(),
            }
            rt.insert(made.clone());
            let mutations = rt.mutations();
            let mut c =
                Controller::with_parts(rt.clone(), c.config.clone(), c.clock, Arc::new(LogPulls));
            for _ in 0..2 {
                let report = pass_and_finish(&mut c).await;
                let refusal = report
                    .errors
                    .iter()
                    .find(|e| e.contains("t-web-0") && e.contains("is not adopted"))
                    .unwrap_or_else(|| panic!("{setting}: {:?}", report.errors));
                assert!(refusal.contains("docker.privileged.enabled"), "{refusal}");
                assert_eq!(
                    rt.mutations(),
                    mutations,
                    "{setting}: left alone, no second one"
                );
            }
            let status = c.status().view(SystemTime::now());
            assert!(
                status
                    .manifest_errors
                    .iter()
                    .any(|e| e.contains("is not adopted")),
                "{:?}",
                status.manifest_errors
            );
        }

        // A container whose inspect fails: its task waits, even for a change.
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller_with(dir.path(), &[("web.yaml", "image: web:1\n")]);
        pass_and_finish(&mut c).await;
        let rt = c.runtime().clone();
        rt.add_image("web:2");
        std::fs::write(c.config.manifests.join("web.yaml"), "image: web:2\n").unwrap();
        let id = rt.all()[0].id.clone();
        rt.set_uninspectable(&id, true);
        let mutations = rt.mutations();
        let mut c =
            Controller::with_parts(rt.clone(), c.config.clone(), c.clock, Arc::new(LogPulls));
        let waiting = pass_and_finish(&mut c).await;
        assert!(
            waiting
                .errors
                .iter()
                .any(|e| e.contains("could not be inspected")),
            "{:?}",
            waiting.errors
        );
        assert_eq!(rt.mutations(), mutations, "neither adopted nor replaced");
        rt.set_uninspectable(&id, false);
        // Tried again: it answers, and the task is acted on.
        let acted = pass_and_finish(&mut c).await;
        assert!(acted.errors.is_empty(), "{:?}", acted.errors);
        assert_eq!(acted.dispatched, 1, "then replaced");
        assert!(rt.all().iter().any(|x| x.image == "web:2"));
    }
    use crate::manifest::RestartSpec;

    #[test]
    fn a_repeated_message_is_new_once_and_resolved_once() {
        let mut seen = BTreeSet::new();
        let now = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (new, gone) = seen_changes(&mut seen, &now(&["a", "b", "a"]));
        assert_eq!((new, gone), (now(&["a", "b"]), now(&[])));
        for _ in 0..3 {
            let (new, gone) = seen_changes(&mut seen, &now(&["b", "a"]));
            assert!(new.is_empty() && gone.is_empty(), "the same messages again");
        }
        let (new, gone) = seen_changes(&mut seen, &now(&["a", "c"]));
        assert_eq!((new, gone), (now(&["c"]), now(&["b"])), "b changed to c");
    }
    use crate::runtime::fake::FakeRuntime;

    fn controller(dir: &std::path::Path, manifest: &str) -> Controller<FakeRuntime> {
        std::fs::write(dir.join("bad.yaml"), manifest).unwrap();
        let config = AgentConfig {
            manifests: dir.to_path_buf(),
            namespace: "t".into(),
            ..AgentConfig::default()
        };
        let clock = Clock::tokio();
        Controller::with_parts(
            Arc::new(FakeRuntime::new().with_clock(clock)),
            config,
            clock,
            Arc::new(LogPulls),
        )
    }

    async fn pass_and_finish(c: &mut Controller<FakeRuntime>) -> PassReport {
        let report = c.pass(&Trigger::BackoffDue).await.unwrap();
        while !c.workers.is_empty() {
            let done = c.next_done().await;
            c.complete(done);
        }
        report
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_create_is_retried_at_once_then_after_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(
            dir.path(),
            "image: nope:1\nrestart: {delay: 5s, max_delay: 1m}\n",
        );
        c.runtime().make_unpullable("nope:1");
        let key = InstanceKey::new("bad", 0);

        let first = pass_and_finish(&mut c).await;
        assert_eq!(first.dispatched, 1);
        assert_eq!(c.backoff.get(&key).unwrap().failures, 1);
        assert!(
            c.backoff.due(&key, &RestartSpec::default()).is_none(),
            "the first retry is immediate"
        );

        let second = pass_and_finish(&mut c).await;
        assert_eq!(second.dispatched, 1);
        let restart = c.last_desired.instances[&key].restart.clone();
        let due = c.backoff.due(&key, &restart).expect("then the delay");
        let wait = due.duration_since(c.clock.now()).unwrap_or_default();
        assert!(
            wait > Duration::from_secs(4) && wait <= Duration::from_secs(5),
            "{wait:?}"
        );

        let third = c.pass(&Trigger::Resync).await.unwrap();
        assert_eq!(third.dispatched, 0, "not retried before it is due");
        assert_eq!(third.plan.next_due(), Some(due));
    }

    /// The backoff a failing spec earned does not delay the spec that
    /// replaces it; the same spec written again still waits.
    #[tokio::test(start_paused = true)]
    async fn a_new_spec_is_tried_at_once_whatever_its_predecessor_failed() {
        let dir = tempfile::tempdir().unwrap();
        let failing = "image: nope:1\nrestart: {delay: 30s, max_delay: 5m}\n";
        let mut c = controller(dir.path(), failing);
        c.runtime().make_unpullable("nope:1");
        c.runtime().add_image("ok:1");
        let key = InstanceKey::new("bad", 0);
        pass_and_finish(&mut c).await;
        pass_and_finish(&mut c).await;
        assert_eq!(c.backoff.get(&key).unwrap().failures, 2);

        // Written again unchanged: still backing off.
        std::fs::write(dir.path().join("bad.yaml"), failing).unwrap();
        let same = c.pass(&Trigger::Resync).await.unwrap();
        assert_eq!(same.dispatched, 0, "the same spec waits out its backoff");

        std::fs::write(
            dir.path().join("bad.yaml"),
            "image: ok:1\nrestart: {delay: 30s, max_delay: 5m}\n",
        )
        .unwrap();
        let fixed = pass_and_finish(&mut c).await;
        assert_eq!(fixed.dispatched, 1, "the fixed spec is tried at once");
        let entry = c.backoff.get(&key).unwrap();
        assert_eq!(entry.failures, 0);
        assert!(!entry.permanent);
        assert!(c.runtime().all().iter().any(|k| k.is_running()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_cut_short_by_a_docker_outage_is_retried_soon_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(dir.path(), "image: img:1\n");
        c.runtime().add_image("img:1");
        c.runtime().set_latency(Duration::from_millis(50));
        let report = c.pass(&Trigger::Startup).await.unwrap();
        assert_eq!(report.dispatched, 1);
        c.runtime().set_down(true);
        let done = c.next_done().await;
        c.complete(done);
        let key = InstanceKey::new("bad", 0);
        let entry = c.backoff.get(&key).expect("held");
        assert_eq!(
            entry.failures, 0,
            "Docker being away is not the task's failure"
        );
        let due = c.backoff.due(&key, &RestartSpec::default()).unwrap();
        let wait = due.duration_since(c.clock.now()).unwrap_or_default();
        assert!(wait <= crate::engine::retry::UNAVAILABLE_RETRY, "{wait:?}");
    }

    /// A controller over `files` in a fresh folder, with its own state dir.
    fn controller_with(dir: &std::path::Path, files: &[(&str, &str)]) -> Controller<FakeRuntime> {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        for (name, text) in files {
            std::fs::write(manifests.join(name), text).unwrap();
        }
        let config = AgentConfig {
            manifests,
            namespace: "t".into(),
            state_dir: dir.join("state"),
            ..AgentConfig::default()
        };
        let clock = Clock::tokio();
        let runtime = FakeRuntime::new().with_clock(clock);
        for image in ["db:1", "web:1", "job:1", "job:2"] {
            runtime.add_image(image);
        }
        Controller::with_parts(Arc::new(runtime), config, clock, Arc::new(LogPulls))
    }

    fn state_of(c: &Controller<FakeRuntime>, name: &str) -> Option<crate::runtime::ContainerState> {
        c.runtime()
            .all()
            .into_iter()
            .find(|x| x.name == name)
            .map(|x| x.state)
    }

    /// The agent labels a secret with the host's key; a plan without the
    /// key does not claim the secret changed, says it cannot tell, and still
    /// shows a change outside the secrets.
    #[tokio::test(start_paused = true)]
    async fn secrets_are_labelled_by_key_and_a_plan_without_the_key_claims_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = "image: web:1\nenv:\n  PW: {value: hunter2, secret: true}\n";
        let key = DigestKey::load_or_create(&dir.path().join("state")).unwrap();
        let mut c = controller_with(dir.path(), &[("web.yaml", manifest)]);
        assert!(c.digest_key.is_some(), "read from state_dir");
        pass_and_finish(&mut c).await;
        let rt = c.runtime().clone();
        let made = rt.all().into_iter().find(|x| x.name == "t-web-0").unwrap();
        let want = c.last_desired.instances[&InstanceKey::new("web", 0)].clone();
        assert_eq!(made.spec_hash(), Some(want.spec.keyed_hash(&key).as_str()));
        assert_ne!(made.spec_hash(), Some(want.spec.hash().as_str()));
        let applied = &made.labels[crate::names::labels::APPLIED];
        assert!(!applied.contains("hunter2"), "{applied}");
        let quiet = pass_and_finish(&mut c).await;
        assert!(quiet.plan.actions.is_empty(), "{:?}", quiet.plan);

        // `berth plan` by a user who cannot read the key.
        let mut config = c.config.clone();
        config.state_dir = dir.path().join("elsewhere");
        let mut looker = Controller::with_parts(rt.clone(), config, c.clock, Arc::new(LogPulls));
        assert!(looker.digest_key.is_none());
        let prepared = looker.prepare().await.unwrap();
        let plan = looker.plan(&prepared, c.clock.now());
        assert!(plan.actions.is_empty(), "no change claimed: {plan:?}");
        assert!(
            prepared.notes[0].contains("whether a secret changed is unknown"),
            "{:?}",
            prepared.notes
        );
        rt.add_image("web:2");
        let manifests = looker.config.manifests.clone();
        std::fs::write(
            manifests.join("web.yaml"),
            manifest.replace("web:1", "web:2"),
        )
        .unwrap();
        let prepared = looker.prepare().await.unwrap();
        let plan = looker.plan(&prepared, c.clock.now());
        let Action::Replace { desired, .. } = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        let old = crate::desired::applied::AppliedSpec::parse(applied).unwrap();
        let shown: Vec<String> = old
            .diff(&desired.record)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "env.PW: secret changed: unknown (key not readable)",
                "image: web:1 → web:2"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependent_starts_only_once_its_dependency_is_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller_with(
            dir.path(),
            &[
                ("db.yaml", "image: db:1\n"),
                ("web.yaml", "image: web:1\ndepends_on: {db: healthy}\n"),
            ],
        );
        let first = pass_and_finish(&mut c).await;
        assert_eq!(first.dispatched, 1, "db only");
        assert!(state_of(&c, "t-web-0").is_none());
        c.runtime()
            .set_health("t-db-0", crate::runtime::Health::Starting);
        let waiting = pass_and_finish(&mut c).await;
        assert_eq!(waiting.dispatched, 0);
        assert_eq!(c.once_verdict(&waiting), OnceVerdict::Pending);
        let web = c
            .status()
            .view(SystemTime::now())
            .instances
            .into_iter()
            .find(|i| i.task == "web")
            .unwrap();
        assert_eq!(web.waiting.as_deref(), Some("waiting for db (healthy)"));
        c.runtime()
            .set_health("t-db-0", crate::runtime::Health::Healthy);
        let go = pass_and_finish(&mut c).await;
        assert_eq!(go.dispatched, 1);
        assert_eq!(
            state_of(&c, "t-web-0"),
            Some(crate::runtime::ContainerState::Running)
        );
        // The created container records what it depends on, for removals.
        let web = c
            .runtime()
            .all()
            .into_iter()
            .find(|x| x.name == "t-web-0")
            .unwrap();
        assert_eq!(
            web.labels
                .get(crate::names::labels::DEPENDS_ON)
                .map(String::as_str),
            Some("db")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_runs_to_completion_is_not_restarted_and_its_attempts_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let files = [("job.yaml", "image: job:1\nkind: job\nmax_attempts: 2\n")];
        let mut c = controller_with(dir.path(), &files);
        pass_and_finish(&mut c).await;
        assert_eq!(
            state_of(&c, "t-job-0"),
            Some(crate::runtime::ContainerState::Running)
        );
        let running = pass_and_finish(&mut c).await;
        assert_eq!(
            c.once_verdict(&running),
            OnceVerdict::Pending,
            "a job is waited for"
        );
        c.runtime().exit("t-job-0", 1, c.clock.now());
        let retried = pass_and_finish(&mut c).await;
        assert_eq!(retried.dispatched, 1, "attempt 2");
        assert_eq!(
            state_of(&c, "t-job-0"),
            Some(crate::runtime::ContainerState::Running)
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        c.runtime().exit("t-job-0", 1, c.clock.now());

        // A new berth over the same state dir: the attempts are remembered.
        let runtime = c.runtime().clone();
        let mut c = Controller::with_parts(runtime, c.config.clone(), c.clock, Arc::new(LogPulls));
        let failed = pass_and_finish(&mut c).await;
        assert_eq!(failed.dispatched, 0);
        match c.once_verdict(&failed) {
            OnceVerdict::Failed(problems) => {
                assert!(
                    problems[0].starts_with("job[0]: failed after 2 attempts: exit 1"),
                    "{problems:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.retry("job"), 1);
        let rearmed = pass_and_finish(&mut c).await;
        assert_eq!(rearmed.dispatched, 1);
        c.runtime().exit("t-job-0", 0, c.clock.now());
        let done = pass_and_finish(&mut c).await;
        assert_eq!(c.once_verdict(&done), OnceVerdict::Converged);
        let again = pass_and_finish(&mut c).await;
        assert_eq!(again.dispatched, 0, "a success is never restarted");
        let job = c
            .status()
            .view(SystemTime::now())
            .instances
            .into_iter()
            .find(|i| i.task == "job")
            .unwrap();
        assert_eq!(job.state, "succeeded");
        assert!(
            job.job
                .as_deref()
                .is_some_and(|j| j.starts_with("succeeded")),
            "{job:?}"
        );
        assert_eq!(
            state_of(&c, "t-job-0"),
            Some(crate::runtime::ContainerState::Exited)
        );
    }
}

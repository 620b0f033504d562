//! The pure diff between what the folder asks for and what Docker has.
//!
//! `plan(desired, observed, memory, now)` returns the actions that converge
//! the host, in a deterministic order, and does no I/O. It is where berth's
//! rules live, so most unit and property tests point here. `memory` is what
//! berth knows beyond the world: restart history and the instances that have
//! work in flight ("busy"), which get no second chain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::desired::state::{DesiredInstance, DesiredState};
use crate::engine::backoff::BackoffTable;
use crate::engine::deps::{self, Blocked, Readiness};
pub use crate::engine::holds::HeldSpec;
use crate::engine::jobs::{self, JobStep, JobTable, JobView};
use crate::engine::trigger::Trigger;
use crate::manifest::{RestartPolicy, TaskKind, UpdateOrder};
use crate::names::{aside_was_running, labels, name_role, InstanceKey, NameRole};
use crate::runtime::{ContainerState, Health, ObservedContainer};

/// Why a container is removed (or, with `cleanup.container: false`, stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoveReason {
    /// Its task is no longer in the folder.
    TaskRemoved,
    /// Its index is at or above the task's `count`.
    ScaledDown,
    /// A leftover of an interrupted replacement.
    Leftover,
    /// Docker marked it dead; it cannot be started again.
    Dead,
    /// A job's spec changed: its old run makes way for a new one.
    JobChanged,
}

impl fmt::Display for RemoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RemoveReason::TaskRemoved => "task removed",
            RemoveReason::ScaledDown => "scaled down",
            RemoveReason::Leftover => "leftover of an interrupted replacement",
            RemoveReason::Dead => "container is dead",
            RemoveReason::JobChanged => "the job's spec changed: it runs again",
        })
    }
}

/// One step towards convergence. At most one chain of actions per instance,
/// and apply runs a chain in order, never two chains for one instance at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create and start a new container.
    Create { desired: Arc<DesiredInstance> },
    /// Start an existing container of the right spec that is not running.
    Start {
        id: String,
        desired: Arc<DesiredInstance>,
        /// True when this restarts an exited container (counted as a restart).
        restart: bool,
    },
    /// Stop and start a running container Docker judged unhealthy.
    Restart {
        id: String,
        desired: Arc<DesiredInstance>,
    },
    /// The spec changed: swap the old container for a new one, crash-safely.
    Replace {
        old_id: String,
        old_hash: Option<String>,
        /// Whether the old container was running (a rollback starts it again).
        old_running: bool,
        desired: Arc<DesiredInstance>,
    },
    /// Put back the old container of an interrupted replacement: rename it
    /// back from aside (`rename`), and start it when it ran before.
    Restore {
        key: InstanceKey,
        id: String,
        canonical_name: String,
        rename: bool,
        start: bool,
    },
    /// Finish a start-first replacement cut short while its staged
    /// container runs: gate it, then stop the old one and swap the names.
    ResumeStartFirst {
        staged_id: String,
        old_id: String,
        old_running: bool,
        desired: Arc<DesiredInstance>,
    },
    /// Finish a replacement cut short after the new container took the
    /// canonical name: start it (or keep it running), let it pass its gate,
    /// remove the old one; or put the old one back.
    Resume {
        new_id: String,
        old_id: String,
        old_running: bool,
        desired: Arc<DesiredInstance>,
    },
    Remove {
        key: InstanceKey,
        id: String,
        name: String,
        reason: RemoveReason,
        grace: Duration,
    },
    /// Stop and keep (`cleanup.container: false`).
    Stop {
        key: InstanceKey,
        id: String,
        name: String,
        reason: RemoveReason,
        grace: Duration,
    },
}

impl Action {
    pub fn key(&self) -> &InstanceKey {
        match self {
            Action::Create { desired }
            | Action::Start { desired, .. }
            | Action::Restart { desired, .. }
            | Action::Replace { desired, .. }
            | Action::Resume { desired, .. }
            | Action::ResumeStartFirst { desired, .. } => &desired.key,
            Action::Restore { key, .. } | Action::Remove { key, .. } | Action::Stop { key, .. } => {
                key
            }
        }
    }

    /// A short verb for logs and metrics.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Start { restart: false, .. } => "start",
            Action::Start { restart: true, .. } => "restart",
            Action::Restart { .. } => "restart-unhealthy",
            Action::Replace { .. } => "replace",
            Action::Resume { .. } | Action::ResumeStartFirst { .. } => "resume",
            Action::Restore { .. } => "restore",
            Action::Remove { .. } => "remove",
            Action::Stop { .. } => "stop",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |id: &str| id.chars().take(12).collect::<String>();
        match self {
            Action::Create { desired } => {
                write!(f, "create {} ({})", desired.key, desired.spec.image)
            }
            Action::Start {
                id,
                desired,
                restart,
            } => write!(
                f,
                "{} {} (container {})",
                if *restart { "restart" } else { "start" },
                desired.key,
                short(id)
            ),
            Action::Restart { id, desired } => {
                write!(
                    f,
                    "restart {} (container {} is unhealthy)",
                    desired.key,
                    short(id)
                )
            }
            Action::Replace {
                old_id, desired, ..
            } => write!(
                f,
                "replace {} (container {} has an outdated spec)",
                desired.key,
                short(old_id)
            ),
            Action::Restore {
                key,
                id,
                canonical_name,
                rename: true,
                start,
            } => {
                write!(
                    f,
                    "restore {key} (rename {} back to {canonical_name}{})",
                    short(id),
                    if *start { " and start it" } else { "" }
                )
            }
            Action::Restore { key, id, .. } => write!(
                f,
                "restore {key} (start {} again: an interrupted replacement stopped it)",
                short(id)
            ),
            Action::Resume {
                new_id,
                old_id,
                desired,
                ..
            } => write!(
                f,
                "resume {} (let {} pass its gate, then remove the old {})",
                desired.key,
                short(new_id),
                short(old_id)
            ),
            Action::ResumeStartFirst {
                staged_id,
                old_id,
                desired,
                ..
            } => write!(
                f,
                "resume {} (let the staged {} pass its gate, then stop and remove the old {})",
                desired.key,
                short(staged_id),
                short(old_id)
            ),
            Action::Remove {
                key, name, reason, ..
            } => write!(f, "remove {key} ({name}: {reason})"),
            Action::Stop {
                key, name, reason, ..
            } => {
                write!(
                    f,
                    "stop {key} ({name}: {reason}; kept, cleanup.container is false)"
                )
            }
        }
    }
}

/// An instance that needs a restart or retry but is backing off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub key: InstanceKey,
    pub until: SystemTime,
}

/// An update held back: its spec failed to replace the running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldUpdate {
    pub key: InstanceKey,
    pub reason: String,
}

/// A removal waiting for the folder to be quiet and the removal to be seen
/// again on a fresh read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRemoval {
    pub key: InstanceKey,
    pub id: String,
    pub name: String,
    pub reason: RemoveReason,
    pub due: SystemTime,
}

impl fmt::Display for PendingRemoval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self
            .due
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        write!(
            f,
            "remove {} ({}: {}) once the folder has been quiet, due at unix {secs}",
            self.key, self.name, self.reason
        )
    }
}

/// An instance whose container exited and, by its restart policy, stays so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub key: InstanceKey,
    pub exit_code: Option<i64>,
}

impl Finished {
    /// Exit code 0: the work is done. Anything else: it failed for good.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// The outcome of planning: actions in apply order, and instances waiting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Instances that need a restart or retry but are backing off.
    pub waiting: Vec<Waiting>,
    /// Instances whose container runs the right spec but has not yet stayed
    /// up for the settle time (or is not yet healthy): not converged yet.
    pub settling: Vec<Waiting>,
    /// Instances whose container exited and is not restarted by policy.
    pub finished: Vec<Finished>,
    /// Updates not applied because this spec already failed to replace the
    /// running container.
    pub held: Vec<HeldUpdate>,
    /// Removals that wait for the folder to be quiet (and to be seen again).
    pub pending_removals: Vec<PendingRemoval>,
    /// Containers labelled with our namespace whose task/index labels do not
    /// parse: never touched, only reported.
    pub unrecognised: Vec<String>,
    /// Work that waits for a dependency (or is held by a failed one), and
    /// removals that wait for their dependents to stop first.
    pub blocked: Vec<Blocked>,
    /// Every job instance with a container of its current spec: its state
    /// and next scheduled run.
    pub jobs: Vec<JobView>,
    /// Scheduled job runs this plan starts (their attempts count from zero).
    pub runs: Vec<InstanceKey>,
    /// When a waiting dependency or a running job is worth another look
    /// (no Docker event may tell, e.g. under `run --once`).
    pub recheck: Option<SystemTime>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The earliest moment a backing-off or settling instance is worth
    /// another look.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.next_trigger().map(|(t, _)| t)
    }

    /// The earliest moment worth another look, and the trigger to name it
    /// by: a scheduled job run, or a backoff, settle, recheck or removal.
    pub fn next_trigger(&self) -> Option<(SystemTime, Trigger)> {
        let timers = self
            .waiting
            .iter()
            .chain(&self.settling)
            .map(|w| w.until)
            .chain(self.pending_removals.iter().map(|r| r.due))
            .chain(self.recheck)
            .min()
            .map(|t| (t, Trigger::BackoffDue));
        let scheduled = self
            .jobs
            .iter()
            .filter_map(|j| Some((j.next_run?, j.key.task.clone())))
            .min()
            .map(|(t, task)| (t, Trigger::Scheduled { task }));
        match (timers, scheduled) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for action in &self.actions {
            writeln!(f, "{action}")?;
        }
        for w in &self.waiting {
            writeln!(f, "wait {} (backing off)", w.key)?;
        }
        for w in &self.settling {
            writeln!(f, "settle {} (started, not yet settled)", w.key)?;
        }
        for h in &self.held {
            writeln!(f, "hold {} ({})", h.key, h.reason)?;
        }
        for b in &self.blocked {
            let verb = if b.held { "hold" } else { "wait" };
            writeln!(f, "{verb} {b}")?;
        }
        for j in &self.jobs {
            write!(f, "job {}: {}", j.key, j.describe(SystemTime::now()))?;
            if let Some(next) = j.next_run {
                let secs = next
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                write!(f, ", next run at unix {secs}")?;
            }
            writeln!(f)?;
        }
        for r in &self.pending_removals {
            writeln!(f, "pending {r}")?;
        }
        Ok(())
    }
}

/// Settings that shape decisions but are not part of any task.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub namespace: String,
    /// `docker.cleanup.container`: false keeps (stopped) containers of removed tasks.
    pub cleanup_containers: bool,
    /// A started container counts as converged once it has run this long
    /// (and, with a healthcheck, once healthy).
    pub settle: Duration,
    /// Removing a task or an index waits until the folder has been quiet
    /// this long and the removal is seen again on a fresh read. `None`:
    /// remove at once (`down`, tests of the pure planner).
    pub removal_gate: Option<Duration>,
    /// The time zone job schedules are evaluated in: the host's.
    pub zone: jiff::tz::TimeZone,
}

/// How long a container must stay up before it counts as converged: long
/// enough to catch a process that dies right after it starts.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// How soon an instance in transition (health starting, Docker restarting
/// or removing it) is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

impl PlanOptions {
    pub fn new(namespace: impl Into<String>) -> Self {
        PlanOptions {
            namespace: namespace.into(),
            cleanup_containers: true,
            settle: DEFAULT_SETTLE,
            removal_gate: None,
            zone: crate::manifest::cron::host_zone(),
        }
    }
}

/// How soon a running job, or work waiting for a dependency, is looked at
/// again when no event comes first.
const JOB_RECHECK: Duration = Duration::from_secs(2);

/// What berth knows about instances beyond what Docker shows.
#[derive(Debug, Clone, Copy)]
pub struct Memory<'a> {
    pub backoff: &'a BackoffTable,
    /// Instances with a chain in flight: in transition, planned no further.
    pub busy: &'a BTreeSet<InstanceKey>,
    /// When berth itself last started each instance's container: more
    /// precise than the list's "Up N seconds".
    pub started: &'a BTreeMap<InstanceKey, SystemTime>,
    /// Specs that failed to replace a container, held until the manifest
    /// changes or `berth retry`.
    pub held: &'a BTreeMap<InstanceKey, HeldSpec>,
    /// When each pending removal (by container id) was first planned.
    pub removals_seen: &'a BTreeMap<String, SystemTime>,
    /// Since when the folder's contents have not changed.
    pub folder_quiet_since: SystemTime,
    /// Jobs' attempts and since when each spec is known.
    pub jobs: &'a JobTable,
}

impl<'a> Memory<'a> {
    /// Only restart history; nothing in flight.
    pub fn of(backoff: &'a BackoffTable) -> Memory<'a> {
        static NONE: BTreeSet<InstanceKey> = BTreeSet::new();
        static NO_STARTS: BTreeMap<InstanceKey, SystemTime> = BTreeMap::new();
        static NO_HOLDS: BTreeMap<InstanceKey, HeldSpec> = BTreeMap::new();
        static NO_REMOVALS: BTreeMap<String, SystemTime> = BTreeMap::new();
        static NO_JOBS: JobTable = JobTable::new();
        Memory {
            backoff,
            busy: &NONE,
            started: &NO_STARTS,
            held: &NO_HOLDS,
            removals_seen: &NO_REMOVALS,
            folder_quiet_since: SystemTime::UNIX_EPOCH,
            jobs: &NO_JOBS,
        }
    }
}

/// Count failures the engine reports (exits, unhealthy verdicts) into the
/// backoff table before planning. Pure; idempotent across passes. The
/// container of an instance whose update is `held` counts too: it is the
/// one berth keeps running until the manifest changes.
pub fn observe_failures(
    backoff: &mut BackoffTable,
    desired: &DesiredState,
    observed: &[ObservedContainer],
    held: &BTreeMap<InstanceKey, HeldSpec>,
    namespace: &str,
    now: SystemTime,
) {
    for c in observed {
        let Some(key) = c.key() else { continue };
        let Some(want) = desired.instances.get(&key) else {
            continue;
        };
        let is_held = held.get(&key).is_some_and(|h| h.hash == want.hash);
        if c.name != key.container_name(namespace)
            || (c.spec_hash() != Some(want.hash.as_str()) && !is_held)
        {
            continue;
        }
        // A job that exited 0 is done, not failed.
        let job_done = want.kind == TaskKind::Job && c.exit_code == Some(0);
        if matches!(c.state, ContainerState::Exited | ContainerState::Dead) && !job_done {
            if let Some(finished) = c.finished_at {
                let message = match c.exit_code {
                    Some(code) => format!("exited with code {code}"),
                    None => "exited".to_string(),
                };
                backoff.observe_exit(&key, c.started_at, finished, &want.restart, message);
            }
        }
        if c.state == ContainerState::Running && c.health == Health::Unhealthy {
            backoff.observe_unhealthy(&key, &c.id, now);
        }
    }
}

/// Decide what to do. Pure: same inputs, same plan.
pub fn plan(
    desired: &DesiredState,
    observed: &[ObservedContainer],
    memory: Memory<'_>,
    now: SystemTime,
    options: &PlanOptions,
) -> Plan {
    let ns = options.namespace.as_str();
    let mut out = Plan::default();

    // Only our namespace, ever: the list is label-filtered, and this is the
    // second lock on the door (ownership: ARCHITECTURE.md). Grouped by borrowed identity:
    // a pass over ten thousand containers should not allocate per container.
    let mut by_key: BTreeMap<(&str, u32), Vec<&ObservedContainer>> = BTreeMap::new();
    for c in observed.iter().filter(|c| c.namespace() == Some(ns)) {
        let task = c.labels.get(labels::TASK).map(String::as_str);
        let index = c
            .labels
            .get(labels::INDEX)
            .and_then(|i| i.parse::<u32>().ok());
        match (task, index) {
            (Some(task), Some(index)) => by_key.entry((task, index)).or_default().push(c),
            _ => out.unrecognised.push(c.name.clone()),
        }
    }
    for list in by_key.values_mut() {
        if list.len() > 1 {
            list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        }
    }

    let ready = deps::readiness(
        desired,
        observed,
        deps::History {
            backoff: memory.backoff,
            held: memory.held,
            jobs: memory.jobs,
        },
        ns,
        &options.zone,
        now,
    );
    let leaving = deps::leaving_dependents(desired, observed, ns);

    // Both maps are sorted by (task, index): walk them side by side.
    let mut wanted = desired.instances.iter().peekable();
    let mut seen = by_key.into_iter().peekable();
    loop {
        let next_wanted = wanted.peek().map(|(k, _)| (k.task.as_str(), k.index));
        let next_seen = seen.peek().map(|(k, _)| *k);
        match (next_wanted, next_seen) {
            (None, None) => break,
            (Some(w), s) if s.is_none_or(|s| w <= s) => {
                let containers = if s == Some(w) {
                    seen.next().map(|(_, v)| v).unwrap_or_default()
                } else {
                    Vec::new()
                };
                if let Some((key, want)) = wanted.next() {
                    // Work in flight: its containers are in transition.
                    if !memory.busy.contains(key) {
                        plan_desired(want, &containers, &ready, memory, now, options, &mut out);
                    }
                }
            }
            _ => {
                if let Some(((task, index), containers)) = seen.next() {
                    let key = InstanceKey::new(task, index);
                    if !memory.busy.contains(&key) {
                        plan_undesired(
                            &key,
                            &containers,
                            desired,
                            &leaving,
                            memory,
                            now,
                            options,
                            &mut out,
                        );
                    }
                }
            }
        }
    }
    let running_job = out
        .jobs
        .iter()
        .any(|j| matches!(j.state, jobs::JobState::Running { .. }));
    if running_job || out.blocked.iter().any(|b| !b.held) {
        out.recheck = Some(now + JOB_RECHECK);
    }
    out
}

/// Whether `name` is `<ns>-<task>-<index>`, without building the string.
fn is_canonical(name: &str, ns: &str, key: &InstanceKey) -> bool {
    let Some(rest) = name
        .strip_prefix(ns)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_prefix(key.task.as_str()))
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let digits_only = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    let no_leading_zero = rest == "0" || !rest.starts_with('0');
    digits_only && no_leading_zero && rest.parse::<u32>().ok() == Some(key.index)
}

fn plan_desired(
    want: &Arc<DesiredInstance>,
    containers: &[&ObservedContainer],
    ready: &BTreeMap<String, Readiness>,
    memory: Memory<'_>,
    now: SystemTime,
    options: &PlanOptions,
    out: &mut Plan,
) {
    let ns = options.namespace.as_str();
    let backoff = memory.backoff;
    let leftover =
        |c: &ObservedContainer| remove(&want.key, c, RemoveReason::Leftover, want.stop_grace);

    // Work waits for the task's dependencies; a retry that is not due yet
    // becomes a wait instead of an action.
    let blocked = if want.depends_on.is_empty() {
        None
    } else {
        deps::unmet(want, ready)
    };
    let due = backoff.due(&want.key, &want.restart);
    let gated = |action: Action, out: &mut Plan| match (&blocked, due) {
        (Some(b), _) => out.blocked.push(b.clone()),
        (None, Some(until)) if until > now => out.waiting.push(Waiting {
            key: want.key.clone(),
            until,
        }),
        _ => out.actions.push(action),
    };

    // The usual case, one container under the canonical name, needs no
    // name built; anything else is sorted by what its name says it is.
    let (current, asides, staged, others) = match containers {
        [only] if is_canonical(&only.name, ns, &want.key) => (Some(*only), vec![], vec![], vec![]),
        _ => {
            let canonical_name = want.key.container_name(ns);
            let role = |c: &&&ObservedContainer| name_role(&c.name, &canonical_name);
            let of = |r: NameRole| -> Vec<&ObservedContainer> {
                containers
                    .iter()
                    .filter(|c| role(c) == r)
                    .copied()
                    .collect()
            };
            (
                of(NameRole::Canonical).into_iter().next(),
                of(NameRole::Aside),
                of(NameRole::Staging),
                of(NameRole::Other),
            )
        }
    };
    // Renamed by hand, or a second canonical-looking container: not ours to keep.
    for c in &others {
        out.actions.push(leftover(c));
    }

    let Some(current) = current else {
        // No container under the canonical name: a replacement was cut short
        // after the old container went aside. Put the old one back (running
        // again if it ran); the next pass replaces it properly.
        match asides.split_first() {
            Some((aside, extra)) => {
                for c in extra.iter().chain(&staged) {
                    out.actions.push(leftover(c));
                }
                out.actions.push(Action::Restore {
                    key: want.key.clone(),
                    id: aside.id.clone(),
                    canonical_name: want.key.container_name(ns),
                    rename: true,
                    start: aside_was_running(&aside.name),
                });
            }
            None => {
                for c in &staged {
                    out.actions.push(leftover(c));
                }
                gated(
                    Action::Create {
                        desired: want.clone(),
                    },
                    out,
                );
            }
        }
        return;
    };

    if current.spec_hash() != Some(want.hash.as_str()) && want.kind == TaskKind::Job {
        // A job is not updated in place: its old run (finished or not)
        // makes way and the new spec runs, once nothing holds it back.
        for c in asides.iter().chain(&staged) {
            out.actions.push(leftover(c));
        }
        if let Some(b) = &blocked {
            out.blocked.push(b.clone());
        } else if let Some(until) = due.filter(|t| *t > now) {
            out.waiting.push(Waiting {
                key: want.key.clone(),
                until,
            });
        } else {
            out.actions.push(remove(
                &want.key,
                current,
                RemoveReason::JobChanged,
                want.stop_grace,
            ));
            out.actions.push(Action::Create {
                desired: want.clone(),
            });
        }
        return;
    }

    if current.spec_hash() != Some(want.hash.as_str()) {
        // Whether the instance ran before an interrupted replacement: its
        // current container runs, or the replacement's staged container
        // says the old one ran before it was stopped, or an aside container
        // did run (a replacement cut short after its swap leaves the new
        // container under the canonical name, not yet started, and the old
        // one aside). Whatever replaces it then runs too, and a rollback
        // starts the current one again.
        let staged_says_running = staged.iter().any(|t| replaced_running(t, current));
        let was_running = current.is_running()
            || staged_says_running
            || asides.iter().any(|a| aside_was_running(&a.name));
        // A start-first update cut short while its new container runs:
        // carry on from there rather than stop it.
        let running_stage = staged.iter().find(|t| {
            want.update.order == UpdateOrder::StartFirst
                && t.is_running()
                && t.spec_hash() == Some(want.hash.as_str())
        });
        if let Some(stage) = running_stage {
            for c in asides.iter().chain(&staged).filter(|c| c.id != stage.id) {
                out.actions.push(leftover(c));
            }
            out.actions.push(Action::ResumeStartFirst {
                staged_id: stage.id.clone(),
                old_id: current.id.clone(),
                old_running: was_running,
                desired: want.clone(),
            });
            return;
        }
        for c in asides.iter().chain(&staged) {
            out.actions.push(leftover(c));
        }
        if let Some(held) = memory.held.get(&want.key).filter(|h| h.hash == want.hash) {
            // This spec failed to replace the running one: leave the old
            // alone until the manifest changes or `berth retry`. The old one
            // is still the instance's: when it exits it is restarted as any
            // container is (its exits count in the backoff), and one an
            // interrupted replacement left not started is started again.
            out.held.push(HeldUpdate {
                key: want.key.clone(),
                reason: held.reason.clone(),
            });
            let start = match current.state {
                ContainerState::Exited => restart_after_exit(want, current),
                ContainerState::Created => was_running,
                _ => false,
            };
            if start {
                gated(
                    Action::Start {
                        id: current.id.clone(),
                        desired: want.clone(),
                        restart: current.state == ContainerState::Exited,
                    },
                    out,
                );
            }
            return;
        }
        gated(
            Action::Replace {
                old_id: current.id.clone(),
                old_hash: current.spec_hash().map(str::to_string),
                old_running: was_running,
                desired: want.clone(),
            },
            out,
        );
        return;
    }

    for c in &staged {
        out.actions.push(leftover(c));
    }
    if let Some(aside) = asides.first() {
        // A replacement was cut short after the new container took the name
        // (berth killed, host rebooted, or its gate still running): finish
        // it with the same decision: start the new one if needed, let it
        // pass its gate, then remove the old one; or put the old one back.
        for c in &asides[1..] {
            out.actions.push(leftover(c));
        }
        out.actions.push(Action::Resume {
            new_id: current.id.clone(),
            old_id: aside.id.clone(),
            old_running: aside_was_running(&aside.name),
            desired: want.clone(),
        });
        return;
    }

    if want.kind == TaskKind::Job
        && !matches!(
            current.state,
            ContainerState::Dead | ContainerState::Removing
        )
    {
        let (step, view) = jobs::decide(
            want,
            current,
            memory.jobs,
            &options.zone,
            memory.started.get(&want.key).copied(),
            now,
        );
        match step {
            JobStep::Idle => {}
            JobStep::Start { retry } => {
                if !retry && blocked.is_none() && due.is_none_or(|t| t <= now) {
                    out.runs.push(want.key.clone());
                }
                gated(
                    Action::Start {
                        id: current.id.clone(),
                        desired: want.clone(),
                        restart: retry,
                    },
                    out,
                );
            }
            JobStep::Failed(reason) => out.held.push(HeldUpdate {
                key: want.key.clone(),
                reason,
            }),
        }
        if view.next_run.is_none() && matches!(view.state, jobs::JobState::Succeeded { .. }) {
            out.finished.push(Finished {
                key: want.key.clone(),
                exit_code: current.exit_code,
            });
        }
        out.jobs.push(view);
        return;
    }

    let settling = |until: SystemTime, out: &mut Plan| {
        out.settling.push(Waiting {
            key: want.key.clone(),
            until,
        })
    };
    match current.state {
        ContainerState::Running if current.health == Health::Unhealthy => gated(
            Action::Restart {
                id: current.id.clone(),
                desired: want.clone(),
            },
            out,
        ),
        ContainerState::Running if current.health == Health::Starting => {
            settling(now + RECHECK, out)
        }
        ContainerState::Running => {
            // The later of the two: the list's start time is rounded down to
            // whole seconds of "Up N seconds".
            let started = match (current.started_at, memory.started.get(&want.key)) {
                (Some(a), Some(b)) => Some(a.max(*b)),
                (a, b) => a.or(b.copied()),
            };
            let healthy = current.health == Health::Healthy;
            if let Some(until) = started.map(|s| s + options.settle) {
                if until > now && !healthy {
                    settling(until, out);
                }
            }
        }
        ContainerState::Restarting | ContainerState::Removing => settling(now + RECHECK, out),
        // Paused by a person: left as it is.
        ContainerState::Paused => {}
        ContainerState::Created => gated(
            Action::Start {
                id: current.id.clone(),
                desired: want.clone(),
                restart: false,
            },
            out,
        ),
        ContainerState::Dead => {
            out.actions.push(remove(
                &want.key,
                current,
                RemoveReason::Dead,
                want.stop_grace,
            ));
            gated(
                Action::Create {
                    desired: want.clone(),
                },
                out,
            );
        }
        ContainerState::Exited => {
            if restart_after_exit(want, current) {
                gated(
                    Action::Start {
                        id: current.id.clone(),
                        desired: want.clone(),
                        restart: true,
                    },
                    out,
                );
            } else {
                out.finished.push(Finished {
                    key: want.key.clone(),
                    exit_code: current.exit_code,
                });
            }
        }
    }
}

/// Whether the task's restart policy restarts this exited container.
fn restart_after_exit(want: &DesiredInstance, current: &ObservedContainer) -> bool {
    match want.restart.policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => current.exit_code.is_none_or(|code| code != 0),
        RestartPolicy::Never => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_undesired(
    key: &InstanceKey,
    containers: &[&ObservedContainer],
    desired: &DesiredState,
    leaving: &BTreeMap<&str, BTreeSet<&str>>,
    memory: Memory<'_>,
    now: SystemTime,
    options: &PlanOptions,
    out: &mut Plan,
) {
    let reason = if desired.tasks.contains(&key.task) {
        RemoveReason::ScaledDown
    } else {
        RemoveReason::TaskRemoved
    };
    // A file broken since startup may define any task: a file can be renamed
    // or a task moved into it, and the container's `io.berth.manifest` label
    // still names the old file. While one exists, no task counts as removed.
    if desired.hold_removals
        || desired.held_tasks.contains(&key.task)
        || (reason == RemoveReason::TaskRemoved && !desired.protected_files.is_empty())
    {
        put_back(key, containers, &options.namespace, out);
        return;
    }
    for c in containers {
        // The task's own grace, recorded on the container: its manifest may
        // be gone.
        let grace = c.stop_grace().unwrap_or(crate::names::DEFAULT_GRACE);
        let acts = options.cleanup_containers || c.is_running();
        // A removal waits for a quiet folder, and for a second look: a file
        // caught half-written or a folder being swapped must not cost a
        // running container.
        if let (Some(delay), true) = (options.removal_gate, acts) {
            let first_seen = memory.removals_seen.get(&c.id).copied();
            let due = first_seen.unwrap_or(now).max(memory.folder_quiet_since) + delay;
            if first_seen.is_none() || now < due {
                out.pending_removals.push(PendingRemoval {
                    key: key.clone(),
                    id: c.id.clone(),
                    name: c.name.clone(),
                    reason,
                    due,
                });
                continue;
            }
        }
        // Dependents stop first: a database outlives the web server that
        // uses it, on the way down as on the way up.
        let dependents: Vec<&str> = leaving
            .get(key.task.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|t| *t != key.task)
            .collect();
        if c.is_running() && !dependents.is_empty() {
            out.blocked.push(Blocked {
                key: key.clone(),
                reason: format!("stops after its dependents: {}", dependents.join(", ")),
                held: false,
            });
            continue;
        }
        if options.cleanup_containers {
            out.actions.push(remove(key, c, reason, grace));
        } else if c.is_running() {
            out.actions.push(Action::Stop {
                key: key.clone(),
                id: c.id.clone(),
                name: c.name.clone(),
                reason,
                grace,
            });
        }
    }
}

/// Whether `stage`, a replacement's staged container, records that it
/// replaces `old` and that `old` was running when the replacement began
/// (its `io.berth.replacing` label, set at its create, before the stop).
fn replaced_running(stage: &ObservedContainer, old: &ObservedContainer) -> bool {
    stage
        .labels
        .get(labels::REPLACING)
        .and_then(|v| v.split_once(':'))
        .is_some_and(|(id, state)| !id.is_empty() && old.id.starts_with(id) && state == "running")
}

/// A held instance (its manifest unreadable, its folder gone) whose
/// replacement was cut short: berth killed or the host rebooted between
/// stopping the old container and starting the new one. The new spec is not
/// known now, so the replacement cannot be finished; the old container is
/// put back as it was, running again if it ran, so a bad file never costs
/// running work. What the replacement made and never started goes (a
/// created container holds no work); anything that runs is left alone.
fn put_back(key: &InstanceKey, containers: &[&ObservedContainer], ns: &str, out: &mut Plan) {
    // Something of the instance runs: the new container (a start-first
    // update cut short between its renames runs under its staging name), or
    // the old one still stopping. Putting the old one back would run two.
    if containers.iter().any(|c| c.is_running()) {
        return;
    }
    let canonical_name = key.container_name(ns);
    let canonical = canonical_name.as_str();
    let of = |role: NameRole| {
        containers
            .iter()
            .copied()
            .filter(move |c| name_role(&c.name, canonical) == role)
    };
    let never_ran = |c: &ObservedContainer| c.state == ContainerState::Created;
    let leftover = |c: &ObservedContainer| {
        let grace = c.stop_grace().unwrap_or(crate::names::DEFAULT_GRACE);
        remove(key, c, RemoveReason::Leftover, grace)
    };
    let current = of(NameRole::Canonical).next();
    if let Some(aside) = of(NameRole::Aside).next() {
        // Cut short after the old container went aside, and perhaps after
        // the new one took the name: unless the new one ran, the old one
        // comes back.
        match current {
            Some(c) if !never_ran(c) => return,
            Some(c) => out.actions.push(leftover(c)),
            None => {}
        }
        out.actions.push(Action::Restore {
            key: key.clone(),
            id: aside.id.clone(),
            canonical_name: canonical_name.clone(),
            rename: true,
            start: aside_was_running(&aside.name),
        });
        for t in of(NameRole::Staging).filter(|t| never_ran(t)) {
            out.actions.push(leftover(t));
        }
        return;
    }
    // Cut short after the stop, under its own name: the staged container
    // says the old one ran when the replacement began. Started before the
    // staged one goes, so a crash in between costs no work.
    let Some(old) = current.filter(|c| c.state == ContainerState::Exited) else {
        return;
    };
    let stages: Vec<&ObservedContainer> = of(NameRole::Staging)
        .filter(|t| never_ran(t) && replaced_running(t, old))
        .collect();
    if stages.is_empty() {
        return;
    }
    out.actions.push(Action::Restore {
        key: key.clone(),
        id: old.id.clone(),
        canonical_name: canonical_name.clone(),
        rename: false,
        start: true,
    });
    for t in stages {
        out.actions.push(leftover(t));
    }
}

fn remove(
    key: &InstanceKey,
    c: &ObservedContainer,
    reason: RemoveReason,
    grace: Duration,
) -> Action {
    Action::Remove {
        key: key.clone(),
        id: c.id.clone(),
        name: c.name.clone(),
        reason,
        grace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::spec::ContainerSpec;
    use crate::names::{aside_name, labels};

    const NS: &str = "berth";

    fn opts() -> PlanOptions {
        PlanOptions::new(NS)
    }

    fn want(task: &str, index: u32, image: &str) -> DesiredInstance {
        DesiredInstance::new(
            InstanceKey::new(task, index),
            ContainerSpec::for_image(image),
            format!("{task}.yaml"),
        )
    }

    fn desired(list: Vec<DesiredInstance>) -> DesiredState {
        let mut d = DesiredState::default();
        for i in list {
            d.insert(i);
        }
        d
    }

    fn container(
        name: &str,
        ns: &str,
        key: &InstanceKey,
        hash: &str,
        state: ContainerState,
    ) -> ObservedContainer {
        let mut l = BTreeMap::new();
        l.insert(labels::NAMESPACE.to_string(), ns.to_string());
        l.insert(labels::TASK.to_string(), key.task.clone());
        l.insert(labels::INDEX.to_string(), key.index.to_string());
        l.insert(labels::SPEC_HASH.to_string(), hash.to_string());
        l.insert(labels::MANIFEST.to_string(), format!("{}.yaml", key.task));
        ObservedContainer {
            id: format!("id-{name}"),
            name: name.to_string(),
            image: "img".into(),
            labels: l,
            state,
            health: Health::None,
            exit_code: None,
            started_at: None,
            finished_at: None,
            host: Default::default(),
        }
    }

    fn running(d: &DesiredInstance) -> ObservedContainer {
        container(
            &d.key.container_name(NS),
            NS,
            &d.key,
            &d.hash,
            ContainerState::Running,
        )
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// Plan with no backoff history, now, in the default options.
    fn plan_now(d: &DesiredState, observed: &[ObservedContainer]) -> Plan {
        plan(
            d,
            observed,
            Memory::of(&BackoffTable::new()),
            now(),
            &opts(),
        )
    }

    fn render(p: &Plan) -> String {
        p.to_string()
    }

    #[test]
    fn an_empty_host_gets_one_create_per_instance_in_name_order() {
        let d = desired(vec![
            want("web", 1, "nginx"),
            want("api", 0, "api"),
            want("web", 0, "nginx"),
        ]);
        let p = plan_now(&d, &[]);
        assert_eq!(
            render(&p),
            "create api[0] (api)\ncreate web[0] (nginx)\ncreate web[1] (nginx)\n"
        );
    }

    #[test]
    fn a_converged_host_plans_nothing() {
        let w = want("web", 0, "nginx");
        let observed = vec![running(&w)];
        let p = plan_now(&desired(vec![w]), &observed);
        assert!(p.is_empty(), "{p}");
        assert!(p.waiting.is_empty());
    }

    #[test]
    fn a_changed_spec_replaces_only_that_instance() {
        let web = want("web", 0, "nginx:1.26");
        let api = want("api", 0, "api");
        let observed = vec![running(&web), running(&api)];
        let web_new = want("web", 0, "nginx:1.27");
        let p = plan(
            &desired(vec![web_new, api]),
            &observed,
            Memory::of(&BackoffTable::new()),
            now(),
            &opts(),
        );
        assert_eq!(
            render(&p),
            "replace web[0] (container id-berth-web has an outdated spec)\n"
        );
        match &p.actions[0] {
            Action::Replace { old_running, .. } => assert!(old_running),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lowering_count_removes_the_indexes_above_it() {
        let w0 = want("web", 0, "nginx");
        let w1 = want("web", 1, "nginx");
        let observed = vec![running(&w0), running(&w1)];
        let p = plan_now(&desired(vec![w0]), &observed);
        assert_eq!(render(&p), "remove web[1] (berth-web-1: scaled down)\n");
    }

    #[test]
    fn a_deleted_task_is_removed_or_with_cleanup_off_only_stopped() {
        let w = want("web", 0, "nginx");
        let observed = vec![running(&w)];
        let p = plan_now(&DesiredState::default(), &observed);
        assert_eq!(render(&p), "remove web[0] (berth-web-0: task removed)\n");

        let keep = PlanOptions {
            cleanup_containers: false,
            ..opts()
        };
        let p = plan(
            &DesiredState::default(),
            &observed,
            Memory::of(&BackoffTable::new()),
            now(),
            &keep,
        );
        assert_eq!(
            render(&p),
            "stop web[0] (berth-web-0: task removed; kept, cleanup.container is false)\n"
        );
        let mut stopped = observed.clone();
        stopped[0].state = ContainerState::Exited;
        let p = plan(
            &DesiredState::default(),
            &stopped,
            Memory::of(&BackoffTable::new()),
            now(),
            &keep,
        );
        assert!(p.is_empty(), "a kept, stopped container is left alone: {p}");
    }

    #[test]
    fn containers_of_other_namespaces_or_unlabelled_never_appear() {
        let key = InstanceKey::new("web", 0);
        let foreign = container("berth-web-0", "other", &key, "x", ContainerState::Running);
        let mut unlabelled = foreign.clone();
        unlabelled.labels.clear();
        unlabelled.id = "plain".into();
        let p = plan_now(&DesiredState::default(), &[foreign, unlabelled]);
        assert!(p.is_empty(), "{p}");
    }

    #[test]
    fn a_container_with_our_namespace_but_no_identity_is_reported_not_touched() {
        let key = InstanceKey::new("web", 0);
        let mut odd = container("berth-odd", NS, &key, "x", ContainerState::Running);
        odd.labels.remove(labels::INDEX);
        let p = plan_now(&DesiredState::default(), &[odd]);
        assert!(p.is_empty());
        assert_eq!(p.unrecognised, vec!["berth-odd".to_string()]);
    }

    #[test]
    fn a_broken_file_or_unreadable_folder_removes_nothing() {
        let w = want("web", 0, "nginx");
        let observed = vec![running(&w)];
        let mut d = DesiredState::default();
        d.protected_files.insert("renamed.yaml".into());
        assert!(plan_now(&d, &observed).is_empty());

        // The task may have moved into the broken file (a rename, say).
        let mut d = DesiredState::default();
        d.protected_files.insert("renamed.yaml".into());
        assert!(plan_now(&d, &observed).is_empty());

        let mut d = DesiredState::default();
        d.held_tasks.insert("web".into());
        assert!(plan_now(&d, &observed).is_empty());

        let d = DesiredState {
            hold_removals: true,
            ..DesiredState::default()
        };
        assert!(plan_now(&d, &observed).is_empty());
    }

    #[test]
    fn an_exited_container_restarts_according_to_policy() {
        let cases = [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 3, true),
            (RestartPolicy::Never, 1, false),
        ];
        for (policy, code, restarts) in cases {
            let mut w = want("job", 0, "img");
            w.restart.policy = policy;
            let mut c = running(&w);
            c.state = ContainerState::Exited;
            c.exit_code = Some(code);
            let p = plan_now(&desired(vec![w]), &[c]);
            assert_eq!(!p.is_empty(), restarts, "{policy:?} exit {code}: {p}");
        }
    }

    #[test]
    fn a_restart_that_is_not_due_waits_instead() {
        let w = want("job", 0, "img");
        let mut c = running(&w);
        c.state = ContainerState::Exited;
        c.exit_code = Some(1);
        let mut backoff = BackoffTable::new();
        backoff.record_failure(&w.key, now(), "x".into());
        backoff.record_failure(&w.key, now(), "x".into());
        let d = desired(vec![w.clone()]);
        let p = plan(&d, &[c.clone()], Memory::of(&backoff), now(), &opts());
        assert!(p.is_empty());
        assert_eq!(p.next_due(), Some(now() + Duration::from_secs(1)));
        let later = plan(
            &d,
            &[c],
            Memory::of(&backoff),
            now() + Duration::from_secs(1),
            &opts(),
        );
        assert_eq!(render(&later), "restart job[0] (container id-berth-job)\n");
    }

    #[test]
    fn an_unhealthy_container_is_restarted_and_a_created_one_started() {
        let w = want("web", 0, "img");
        let mut c = running(&w);
        c.health = Health::Unhealthy;
        let p = plan_now(&desired(vec![w.clone()]), &[c.clone()]);
        assert_eq!(p.actions[0].verb(), "restart-unhealthy");
        c.health = Health::None;
        c.state = ContainerState::Created;
        let p = plan_now(&desired(vec![w]), &[c]);
        assert_eq!(p.actions[0].verb(), "start");
    }

    /// What a replacement of web[0] from `old` to `new` leaves behind.
    struct Replacement {
        old: DesiredInstance,
        new: DesiredInstance,
    }

    impl Replacement {
        fn of_web() -> Replacement {
            Replacement {
                old: want("web", 0, "nginx:1.26"),
                new: want("web", 0, "nginx:1.27"),
            }
        }

        /// The new container under its staging name, never started; its
        /// label says whether the old one `ran` ("running" or "stopped").
        fn staged(&self, ran: &str) -> ObservedContainer {
            let new = &self.new;
            let mut c = container(
                &crate::names::staging_name("berth-web-0", &new.hash),
                NS,
                &new.key,
                &new.hash,
                ContainerState::Created,
            );
            c.labels
                .insert(labels::REPLACING.into(), format!("id-berth-web:{ran}"));
            c
        }

        /// The old container under the canonical name.
        fn old(&self, state: ContainerState) -> ObservedContainer {
            container("berth-web-0", NS, &self.old.key, &self.old.hash, state)
        }

        /// The old container moved aside after it ran, stopped.
        fn aside(&self) -> ObservedContainer {
            container(
                &aside_name("berth-web-0", "id-old", true),
                NS,
                &self.old.key,
                &self.old.hash,
                ContainerState::Exited,
            )
        }
    }

    /// The world a replacement of web[0] (old spec → new spec) leaves
    /// behind at each point it can be cut short, and what the next pass does.
    #[test]
    fn every_point_of_an_interrupted_replacement_ends_with_one_running_container() {
        let r = Replacement::of_web();
        let new = r.new.clone();
        let d = desired(vec![new.clone()]);
        let staged = r.staged("running");
        let old_canonical = |state| r.old(state);
        let aside = r.aside();
        let verbs = |p: &Plan| p.actions.iter().map(Action::verb).collect::<Vec<_>>();

        // After the staged create: the old one still runs. Clear and redo.
        let p = plan_now(
            &d,
            &[old_canonical(ContainerState::Running), staged.clone()],
        );
        assert_eq!(verbs(&p), ["remove", "replace"], "{p}");

        // After the old one stopped: the staged container says it ran, so a
        // rollback of the redo starts it again.
        let p = plan_now(&d, &[old_canonical(ContainerState::Exited), staged.clone()]);
        assert_eq!(verbs(&p), ["remove", "replace"], "{p}");
        assert!(matches!(
            p.actions[1],
            Action::Replace {
                old_running: true,
                ..
            }
        ));

        // After the old one went aside: put it back and start it.
        let p = plan_now(&d, &[aside.clone(), staged.clone()]);
        assert_eq!(verbs(&p), ["remove", "restore"], "{p}");
        assert!(matches!(p.actions[1], Action::Restore { start: true, .. }));

        // After the new one took the name, before it was seen running:
        // finish (start, confirm, remove the old) or roll back.
        let mut swapped = running(&new);
        swapped.state = ContainerState::Created;
        let p = plan_now(&d, &[aside.clone(), swapped]);
        assert_eq!(verbs(&p), ["resume"], "{p}");

        // After the new one started (its gate may be under way): resume
        // the same decision; the old one goes once the new one passes.
        let p = plan_now(&d, &[aside, running(&new)]);
        assert_eq!(verbs(&p), ["resume"], "{p}");

        // A start-first update cut short while its new container runs:
        // carried on, not stopped.
        let start_first = {
            let mut w = new.clone();
            w.update.order = crate::manifest::UpdateOrder::StartFirst;
            w
        };
        let mut staged_running = staged.clone();
        staged_running.state = ContainerState::Running;
        let p = plan_now(
            &desired(vec![start_first]),
            &[old_canonical(ContainerState::Running), staged_running],
        );
        assert_eq!(verbs(&p), ["resume"], "{p}");
        assert!(matches!(p.actions[0], Action::ResumeStartFirst { .. }));
    }

    /// The same points, when berth comes back to a manifest it cannot read
    /// (or a folder that went away): the new spec is unknown, so the old
    /// container is put back, running again, and nothing that runs is touched.
    #[test]
    fn an_interrupted_replacement_of_a_held_task_puts_the_old_container_back_running() {
        let r = Replacement::of_web();
        let new = &r.new;
        let broken = {
            let mut d = DesiredState::default();
            d.protected_files.insert("web.yaml".into());
            d
        };
        let folder_gone = DesiredState {
            hold_removals: true,
            ..DesiredState::default()
        };
        let staged = |ran: &str| r.staged(ran);
        let old_canonical = |state| r.old(state);
        let aside = r.aside();
        let swapped = |state| container("berth-web-0", NS, &new.key, &new.hash, state);
        for d in [&broken, &folder_gone] {
            let p = |observed: &[ObservedContainer]| plan_now(d, observed);
            let verbs = |p: &Plan| p.actions.iter().map(Action::verb).collect::<Vec<_>>();

            // After the staged create, or during the stop: the old one runs.
            let world = [old_canonical(ContainerState::Running), staged("running")];
            assert!(p(&world).is_empty(), "{}", p(&world));

            // After the stop: started again under its name, then the
            // never-started staged container goes.
            let world = [old_canonical(ContainerState::Exited), staged("running")];
            let plan = p(&world);
            assert_eq!(verbs(&plan), ["restore", "remove"], "{plan}");
            assert!(matches!(
                &plan.actions[0],
                Action::Restore { id, rename: false, start: true, .. } if *id == world[0].id
            ));
            assert!(matches!(&plan.actions[1], Action::Remove { id, .. } if *id == world[1].id));
            // ... but not one that had stopped before the replacement began.
            let world = [old_canonical(ContainerState::Exited), staged("stopped")];
            assert!(p(&world).is_empty(), "{}", p(&world));
            // ... nor one that exited on its own, with no replacement.
            assert!(p(&[old_canonical(ContainerState::Exited)]).is_empty());

            // After it went aside: renamed back and started; the staged
            // container goes.
            let plan = p(&[aside.clone(), staged("running")]);
            assert_eq!(verbs(&plan), ["restore", "remove"], "{plan}");
            assert!(matches!(
                &plan.actions[0],
                Action::Restore { id, rename: true, start: true, .. } if *id == aside.id
            ));

            // After the new one took the name, never started: it goes first.
            let plan = p(&[aside.clone(), swapped(ContainerState::Created)]);
            assert_eq!(verbs(&plan), ["remove", "restore"], "{plan}");

            // After the new one started: it is the running work; left alone.
            let world = [aside.clone(), swapped(ContainerState::Running)];
            assert!(p(&world).is_empty(), "{}", p(&world));
            // A start-first update cut short between its two renames: the
            // new one runs under its staging name; the old one stays aside.
            let mut staged_running = staged("running");
            staged_running.state = ContainerState::Running;
            let world = [aside.clone(), staged_running];
            assert!(p(&world).is_empty(), "{}", p(&world));
        }
    }

    #[test]
    fn a_replacement_cut_short_after_its_swap_and_edited_again_keeps_the_instance_running() {
        // v1 ran; a replacement to v2 swapped the names and berth was killed
        // before it started v2; meanwhile the manifest moved on to v3.
        let v1 = want("web", 0, "nginx:1.26");
        let v2 = want("web", 0, "nginx:1.27");
        let v3 = want("web", 0, "nginx:1.28");
        let aside = container(
            &aside_name("berth-web-0", "id-old", true),
            NS,
            &v1.key,
            &v1.hash,
            ContainerState::Exited,
        );
        let mut swapped = running(&v2);
        swapped.state = ContainerState::Created;
        let p = plan_now(&desired(vec![v3]), &[aside, swapped]);
        let verbs: Vec<_> = p.actions.iter().map(Action::verb).collect();
        assert_eq!(verbs, ["remove", "replace"], "{p}");
        // The instance was running: the replacement stops v2 whatever the
        // list said (a start sent by the killed berth may land late) and a
        // rollback starts it again, rather than leaving it not running.
        assert!(
            matches!(
                p.actions[1],
                Action::Replace {
                    old_running: true,
                    ..
                }
            ),
            "{:?}",
            p.actions[1]
        );
    }

    #[test]
    fn a_held_update_leaves_the_running_container_alone() {
        let old = want("web", 0, "nginx:1.26");
        let new = want("web", 0, "nginx:1.27");
        let held = BTreeMap::from([(
            new.key.clone(),
            HeldSpec {
                hash: new.hash.clone(),
                reason: "update held: exited".into(),
            },
        )]);
        let backoff = BackoffTable::new();
        let memory = Memory {
            held: &held,
            ..Memory::of(&backoff)
        };
        let world = [running(&old)];
        let p = plan(&desired(vec![new.clone()]), &world, memory, now(), &opts());
        assert!(p.actions.is_empty(), "{p}");
        assert_eq!(p.held.len(), 1);
        // Another spec is a new attempt.
        let newer = want("web", 0, "nginx:1.28");
        let p = plan(&desired(vec![newer]), &world, memory, now(), &opts());
        assert_eq!(p.actions[0].verb(), "replace");
    }

    #[test]
    fn a_held_updates_old_container_is_restarted_when_it_exits_and_its_exits_count() {
        let old = want("web", 0, "nginx:1.26");
        let new = want("web", 0, "nginx:1.27");
        let d = desired(vec![new.clone()]);
        let held = BTreeMap::from([(
            new.key.clone(),
            HeldSpec {
                hash: new.hash.clone(),
                reason: "update held: exited".into(),
            },
        )]);
        // The old container, kept by the hold, crashes.
        let mut crashed = running(&old);
        crashed.state = ContainerState::Exited;
        crashed.exit_code = Some(1);
        crashed.started_at = Some(now() - Duration::from_secs(60));
        crashed.finished_at = Some(now());
        let mut backoff = BackoffTable::new();
        observe_failures(&mut backoff, &d, &[crashed.clone()], &held, NS, now());
        assert_eq!(backoff.get(&new.key).map(|e| e.failures), Some(1));
        let memory = Memory {
            held: &held,
            ..Memory::of(&backoff)
        };
        let p = plan(&d, &[crashed], memory, now(), &opts());
        assert_eq!(p.held.len(), 1, "{p}");
        assert_eq!(
            render(&p).lines().next(),
            Some("restart web[0] (container id-berth-web)"),
            "{p}"
        );
    }

    #[test]
    fn a_removal_waits_for_a_quiet_folder_and_a_second_look() {
        let w = want("web", 1, "img");
        let world = [running(&w)];
        let gate = PlanOptions {
            removal_gate: Some(Duration::from_secs(5)),
            ..opts()
        };
        let backoff = BackoffTable::new();
        let mut seen = BTreeMap::new();
        // First sight: pending, due 5 s after the folder went quiet.
        let m = Memory {
            removals_seen: &seen,
            folder_quiet_since: now(),
            ..Memory::of(&backoff)
        };
        let p = plan(&DesiredState::default(), &world, m, now(), &gate);
        assert!(p.actions.is_empty());
        assert_eq!(p.pending_removals[0].due, now() + Duration::from_secs(5));
        seen.insert(world[0].id.clone(), now());
        // Seen again, but the folder changed 2 s ago: still pending.
        let later = now() + Duration::from_secs(6);
        let m = Memory {
            removals_seen: &seen,
            folder_quiet_since: later - Duration::from_secs(2),
            ..Memory::of(&backoff)
        };
        let p = plan(&DesiredState::default(), &world, m, later, &gate);
        assert!(p.actions.is_empty(), "{p}");
        // Seen again and quiet for the delay: removed.
        let m = Memory {
            removals_seen: &seen,
            folder_quiet_since: now(),
            ..Memory::of(&backoff)
        };
        let p = plan(&DesiredState::default(), &world, m, later, &gate);
        assert_eq!(p.actions[0].verb(), "remove");
    }

    #[test]
    fn observing_the_same_exit_twice_counts_one_failure() {
        let w = want("job", 0, "img");
        let mut c = running(&w);
        c.state = ContainerState::Exited;
        c.exit_code = Some(1);
        c.finished_at = Some(now());
        let d = desired(vec![w.clone()]);
        let mut backoff = BackoffTable::new();
        observe_failures(&mut backoff, &d, &[c.clone()], &BTreeMap::new(), NS, now());
        observe_failures(&mut backoff, &d, &[c], &BTreeMap::new(), NS, now());
        let entry = backoff.get(&w.key).unwrap();
        assert_eq!(entry.failures, 1);
        assert_eq!(entry.last_error.as_deref(), Some("exited with code 1"));
    }
}

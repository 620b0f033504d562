//! Carrying out one instance's chain of actions against a runtime.
//!
//! A chain never trusts the observation it was planned from: the world may
//! have moved in between. 404 on a stop or remove means "already gone", 304
//! means "already in that state", and 409 on create means "look at who holds
//! the name": adopt it when it is ours with the right spec, report a name
//! conflict when it is not ours (and never touch it).
//!
//! The [`Executor`] is shared by every worker. `parallelism` bounds the work
//! that loads the daemon (creates and starts here, pulls in
//! [`crate::engine::pulls`]); stops and renames are not bounded by it, so a
//! restart never waits behind another instance's slow stop. A new
//! container also holds one of `parallelism` slots from its create to its
//! start, so a cold start of hundreds finishes each container before it
//! creates many more (as a plain create-then-start loop does) and the
//! queue for the load bound stays short: a crashed instance's restart
//! waits behind a few creates, not hundreds.
//!
//! Removals (a task or instance removed, `down`) are bounded too, by
//! [`REMOVALS_AT_ONCE`], never by the load bound: Docker 20.10 was seen
//! here to deadlock in its network code (every later stop, remove and list
//! hanging until the daemon was restarted) when `down` stopped 200
//! containers on the bridge network at once; their exits are handled
//! concurrently and take the network's locks in opposite orders.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::stream::{self, StreamExt};
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::desired::state::DesiredInstance;
use crate::engine::error::ApplyError;
use crate::engine::plan::Action;
use crate::engine::pulls::Pulls;
use crate::manifest::{PullPolicy, TaskKind, UpdateOrder};
use crate::names::{aside_name, labels, name_role, staging_name, InstanceKey, NameRole};
use crate::runtime::{
    ContainerRuntime, ContainerState, CreateRequest, Health, HostAccess, ObservedContainer,
    RuntimeError,
};

/// The result of one action.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub key: InstanceKey,
    pub verb: &'static str,
    /// The action counts as a failure of the task when it fails (creates,
    /// starts, restarts, replacements), as opposed to removals.
    pub counts_as_attempt: bool,
    pub result: Result<(), ApplyError>,
    /// When this action started a container, the moment it did.
    pub started_at: Option<SystemTime>,
}

/// What a chain is doing right now, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `pulling`, `creating`, `starting`, `gating`, `queued to stop`,
    /// `stopping`, `renaming`, `removing`, `rolling back`.
    pub doing: &'static str,
    /// The image, while pulling.
    pub image: Option<String>,
    /// How far the step is, e.g. a gate's `4.0s/10.0s healthy`.
    pub detail: Option<String>,
    pub since: SystemTime,
}

/// A chain's current step, shared with status.
#[derive(Debug, Clone)]
pub struct StepCell(Arc<Mutex<Option<Step>>>);

impl StepCell {
    pub fn new() -> StepCell {
        StepCell(Arc::new(Mutex::new(None)))
    }
    pub fn get(&self) -> Option<Step> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
    fn set(&self, doing: &'static str, image: Option<&str>, clock: &Clock) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(Step {
                doing,
                image: image.map(str::to_string),
                detail: None,
                since: clock.now(),
            });
        }
    }

    /// The same step, further along: keeps `since` when the step goes on.
    fn set_detail(&self, doing: &'static str, detail: String, clock: &Clock) {
        if let Ok(mut s) = self.0.lock() {
            let since = match s.as_ref() {
                Some(step) if step.doing == doing => step.since,
                _ => clock.now(),
            };
            *s = Some(Step {
                doing,
                image: None,
                detail: Some(detail),
                since,
            });
        }
    }
}

impl Default for StepCell {
    fn default() -> Self {
        Self::new()
    }
}

/// Stops for removals in flight at once; the stops of replacements and
/// restarts are not counted. High enough that `down` of a few dozen
/// containers stops them all at once, low enough that hundreds never exit
/// together (see the module's note).
pub const REMOVALS_AT_ONCE: usize = 32;

/// Runs chains; one per agent, shared by every worker.
pub struct Executor<R: ContainerRuntime> {
    runtime: Arc<R>,
    namespace: String,
    /// Bounds creates and starts across all chains.
    load: Semaphore,
    /// Bounds new containers between their create and their start.
    fresh: Semaphore,
    /// Bounds removals ([`REMOVALS_AT_ONCE`]).
    removals: Semaphore,
    pulls: Arc<Pulls>,
    clock: Clock,
    created: CreatedHosts,
}

/// What each container this process created reaches on the host, by id:
/// berth's own request, so the adoption gate needs no inspect for it.
pub type CreatedHosts = Arc<Mutex<BTreeMap<String, HostAccess>>>;

/// What one chain may look at besides its actions.
struct ChainCtx<'a> {
    step: &'a StepCell,
    cancel: watch::Receiver<bool>,
}

impl<R: ContainerRuntime> Executor<R> {
    pub fn new(
        runtime: Arc<R>,
        namespace: impl Into<String>,
        parallelism: usize,
        pulls: Arc<Pulls>,
        clock: Clock,
    ) -> Executor<R> {
        Executor {
            runtime,
            namespace: namespace.into(),
            load: Semaphore::new(parallelism.max(1)),
            fresh: Semaphore::new(parallelism.max(1)),
            removals: Semaphore::new(REMOVALS_AT_ONCE),
            pulls,
            clock,
            created: CreatedHosts::default(),
        }
    }

    /// Record the containers this executor creates in `created`.
    pub fn recording_creates(mut self, created: CreatedHosts) -> Executor<R> {
        self.created = created;
        self
    }

    pub fn runtime(&self) -> &Arc<R> {
        &self.runtime
    }

    pub fn pulls(&self) -> &Arc<Pulls> {
        &self.pulls
    }

    /// Apply a whole plan and wait for it: every instance's chain at once
    /// (the bound on load applies inside). For `down` and tests; the agent
    /// dispatches chains to workers instead. Outcomes come back in plan order.
    pub async fn apply(&self, actions: Vec<Action>) -> Vec<Outcome> {
        let chains = group_chains(actions);
        let (_tx, rx) = watch::channel(false);
        let results: Vec<Vec<(usize, Outcome)>> = stream::iter(chains)
            .map(|(_, chain)| {
                let rx = rx.clone();
                async move {
                    let (order, actions): (Vec<usize>, Vec<Action>) = chain.into_iter().unzip();
                    let outcomes = self.run_chain(actions, &StepCell::new(), rx).await;
                    order.into_iter().zip(outcomes).collect::<Vec<_>>()
                }
            })
            .buffer_unordered(usize::MAX)
            .collect()
            .await;
        let mut outcomes: Vec<(usize, Outcome)> = results.into_iter().flatten().collect();
        outcomes.sort_by_key(|(i, _)| *i);
        outcomes.into_iter().map(|(_, o)| o).collect()
    }

    /// Run one instance's actions in order, stopping at the first failure:
    /// later steps assume the earlier ones happened. `cancel` turning true
    /// calls the chain off while it waits for a pull (nothing changed yet).
    pub async fn run_chain(
        &self,
        chain: Vec<Action>,
        step: &StepCell,
        cancel: watch::Receiver<bool>,
    ) -> Vec<Outcome> {
        let ctx = ChainCtx { step, cancel };
        let mut out = Vec::with_capacity(chain.len());
        for action in chain {
            let key = action.key().clone();
            let verb = action.verb();
            let counts_as_attempt = !matches!(
                action,
                Action::Remove { .. } | Action::Stop { .. } | Action::Restore { .. }
            );
            let result = self.run_action(&action, &ctx).await;
            let container = key.container_name(&self.namespace);
            match &result {
                Ok(_) => {
                    info!(task = %key.task, index = key.index, %container, action = verb, outcome = "done", "{action}: done")
                }
                Err(ApplyError::Cancelled) => {
                    info!(task = %key.task, index = key.index, %container, action = verb, outcome = "cancelled", "{action}: called off, the manifest changed again")
                }
                Err(e) => {
                    warn!(task = %key.task, index = key.index, %container, action = verb, outcome = "failed", error = %e, "{action}: failed")
                }
            }
            let failed = result.is_err();
            out.push(Outcome {
                key,
                verb,
                counts_as_attempt,
                started_at: result.as_ref().ok().copied().flatten(),
                result: result.map(|_| ()),
            });
            if failed {
                break;
            }
        }
        out
    }

    /// One action. `Ok(Some(t))` when it started a container at `t`.
    async fn run_action(
        &self,
        action: &Action,
        ctx: &ChainCtx<'_>,
    ) -> Result<Option<SystemTime>, ApplyError> {
        let rt = self.runtime.as_ref();
        let ns = self.namespace.as_str();
        match action {
            Action::Create { desired } => {
                self.ensure_image(desired, ctx).await?;
                if desired.kind == TaskKind::Job && desired.schedule.is_some() {
                    // A scheduled job's container waits, created, for its
                    // first slot.
                    let name = desired.key.container_name(&self.namespace);
                    self.create_named(desired, &name, None, ctx).await?;
                    return Ok(None);
                }
                self.create_and_start(desired, ctx).await.map(Some)
            }
            Action::Start { id, .. } => self.start(id, ctx).await.map(Some),
            Action::Restart { id, desired } => {
                ctx.step.set("stopping", None, &self.clock);
                tolerate(rt.stop(id, desired.stop_grace).await, &[not_modified])?;
                self.start(id, ctx).await.map(Some)
            }
            Action::Replace {
                old_id,
                old_running,
                desired,
                ..
            } => match desired.update.order {
                UpdateOrder::StopFirst => self.replace(old_id, *old_running, desired, ctx).await,
                UpdateOrder::StartFirst => {
                    self.replace_start_first(old_id, *old_running, desired, ctx)
                        .await
                }
            }
            .map(Some),
            Action::Resume {
                new_id,
                old_id,
                old_running,
                desired,
            } => self
                .resume(new_id, old_id, *old_running, desired, ctx)
                .await
                .map(Some),
            Action::ResumeStartFirst {
                staged_id,
                old_id,
                old_running,
                desired,
            } => self
                .finish_start_first(staged_id, old_id, *old_running, desired, ctx)
                .await
                .map(Some),
            Action::Restore {
                id, rename: false, ..
            } => self.start(id, ctx).await.map(Some),
            Action::Restore {
                id,
                canonical_name,
                start,
                ..
            } => {
                ctx.step.set("renaming", None, &self.clock);
                match rt.rename(id, canonical_name).await {
                    Err(RuntimeError::Conflict(_)) => {
                        // Someone took the canonical name meanwhile. If it is
                        // ours, the next pass sees both and removes the leftover.
                        let holder = rt.inspect(canonical_name).await?;
                        if holder.namespace() != Some(ns) {
                            return Err(ApplyError::NameConflict {
                                name: canonical_name.clone(),
                                holder: short(&holder.id),
                            });
                        }
                        return Ok(None);
                    }
                    Err(RuntimeError::NotFound(_)) => return Ok(None),
                    other => other?,
                }
                if *start {
                    self.start(id, ctx).await.map(Some)
                } else {
                    Ok(None)
                }
            }
            Action::Remove { id, grace, .. } => {
                let _removal = self.removal_slot(ctx).await;
                tolerate(rt.stop(id, *grace).await, &[not_modified, not_found])?;
                ctx.step.set("removing", None, &self.clock);
                tolerate(rt.remove(id).await, &[not_found])?;
                Ok(None)
            }
            Action::Stop { id, grace, .. } => {
                let _removal = self.removal_slot(ctx).await;
                tolerate(rt.stop(id, *grace).await, &[not_modified, not_found])?;
                Ok(None)
            }
        }
    }

    /// One of the [`REMOVALS_AT_ONCE`] slots, then the step is `stopping`;
    /// while every slot is taken the step says `queued to stop`, so status
    /// does not show as stopping a container nothing has asked to stop yet.
    async fn removal_slot(&self, ctx: &ChainCtx<'_>) -> Option<SemaphorePermit<'_>> {
        let permit = match self.removals.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                ctx.step.set("queued to stop", None, &self.clock);
                // Never closed: an error would only mean no bound.
                self.removals.acquire().await.ok()
            }
        };
        ctx.step.set("stopping", None, &self.clock);
        permit
    }

    /// Start a container under the load bound; returns when it started.
    async fn start(&self, id: &str, ctx: &ChainCtx<'_>) -> Result<SystemTime, ApplyError> {
        ctx.step.set("starting", None, &self.clock);
        let _permit = self.load.acquire().await;
        tolerate(self.runtime.start(id).await, &[not_modified])?;
        Ok(self.clock.now())
    }

    /// Make sure the image is present according to the pull policy, joining
    /// (or starting) the background pull. Called off by `cancel` meanwhile.
    async fn ensure_image(
        &self,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<(), ApplyError> {
        let image = desired.spec.image.as_str();
        let pull_error = |cause: RuntimeError| match cause {
            // Docker being away stays `Unavailable`: not held against the task.
            RuntimeError::Unavailable(_) => ApplyError::Runtime(cause),
            cause => ApplyError::Pull {
                image: image.to_string(),
                cause,
            },
        };
        let present = || async {
            self.pulls
                .present(&self.runtime, image)
                .await
                .map_err(&pull_error)
        };
        match desired.pull {
            PullPolicy::Never if !present().await? => {
                return Err(ApplyError::ImageNotPresent {
                    image: image.to_string(),
                })
            }
            PullPolicy::Never => return Ok(()),
            PullPolicy::Missing if self.pulls.state(image).is_none() && present().await? => {
                return Ok(())
            }
            PullPolicy::Missing | PullPolicy::Always => {}
        }
        ctx.step.set("pulling", Some(image), &self.clock);
        let mut cancel = ctx.cancel.clone();
        let pull = self
            .pulls
            .pull(&self.runtime, image, desired.credentials.as_ref());
        tokio::select! {
            result = pull => result.map_err(pull_error),
            () = called_off(&mut cancel) => Err(ApplyError::Cancelled),
        }
    }

    /// Create the canonical container and start it.
    async fn create_and_start(
        &self,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<SystemTime, ApplyError> {
        let name = desired.key.container_name(&self.namespace);
        // Held to the start (see the module's note); always taken before a
        // `load` permit, never while holding one.
        ctx.step.set("creating", None, &self.clock);
        let _fresh = self.fresh.acquire().await;
        let id = self.create_named(desired, &name, None, ctx).await?;
        crash_point("after-create");
        self.start(&id, ctx).await
    }

    /// Create a container of `desired`'s spec under `name` (not started). A
    /// taken name is resolved by looking at the holder: adopted when it is
    /// ours with this spec; a stale staging container of ours is removed and
    /// the create tried once more; anything else is reported, never touched.
    async fn create_named(
        &self,
        desired: &DesiredInstance,
        name: &str,
        replacing: Option<String>,
        ctx: &ChainCtx<'_>,
    ) -> Result<String, ApplyError> {
        let rt = self.runtime.as_ref();
        let ns = self.namespace.as_str();
        let mut labels = desired.container_labels(ns);
        if let Some(replacing) = replacing {
            labels.insert(labels::REPLACING.to_string(), replacing);
        }
        if let Some(deps) = crate::engine::deps::dependencies_label(desired) {
            labels.insert(labels::DEPENDS_ON.to_string(), deps);
        }
        if let Some(commit) = &desired.source_commit {
            labels.insert(labels::SOURCE_COMMIT.to_string(), commit.clone());
        }
        let request = CreateRequest {
            name,
            spec: &desired.spec,
            labels: &labels,
        };
        ctx.step.set("creating", None, &self.clock);
        let mut retried = false;
        loop {
            let created = {
                let _permit = self.load.acquire().await;
                rt.create(request.clone()).await
            };
            let message = match created {
                Ok(id) => {
                    if let Ok(mut hosts) = self.created.lock() {
                        hosts.insert(id.clone(), HostAccess::of_spec(&desired.spec));
                    }
                    return Ok(id);
                }
                Err(RuntimeError::Conflict(message)) => message,
                Err(e) => return Err(e.into()),
            };
            let holder = match rt.inspect(name).await {
                Ok(holder) => holder,
                // Gone between create and inspect: the next pass creates it.
                Err(RuntimeError::NotFound(_)) => {
                    return Err(RuntimeError::Conflict(message).into())
                }
                Err(e) => return Err(e.into()),
            };
            if holder.namespace() != Some(ns) || holder.key().as_ref() != Some(&desired.key) {
                return Err(ApplyError::NameConflict {
                    name: name.to_string(),
                    holder: short(&holder.id),
                });
            }
            if holder.spec_hash() == Some(desired.hash.as_str()) {
                debug!(container = %name, "adopting a container of ours that already has this spec");
                return Ok(holder.id);
            }
            let staging = name_role(name, &desired.key.container_name(ns)) == NameRole::Staging;
            if !staging || retried {
                // Ours but outdated (created since we listed): the next pass replaces it.
                return Err(RuntimeError::Conflict(message).into());
            }
            // A staging container left by an older interrupted replacement.
            tolerate(rt.remove(&holder.id).await, &[not_found])?;
            retried = true;
        }
    }

    /// The first step of every replacement: pull (a registry outage must
    /// cost no running work), then create the new container under its
    /// staging name, recording which container it replaces and whether that
    /// one ran. Nothing running has been touched yet.
    async fn stage(
        &self,
        old_id: &str,
        old_running: bool,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<String, ApplyError> {
        self.ensure_image(desired, ctx).await?;
        let canonical = desired.key.container_name(&self.namespace);
        let staging = staging_name(&canonical, &desired.hash);
        let replacing = format!(
            "{}:{}",
            short(old_id),
            if old_running { "running" } else { "stopped" }
        );
        self.create_named(desired, &staging, Some(replacing), ctx)
            .await
    }

    /// Swap `old_id` for a container of the new spec so that the instance is
    /// never left without a container that can run, and a crash at any step
    /// leaves something the next pass recognises:
    ///
    /// 1. create the new container under a staging name (a spec Docker
    ///    refuses costs nothing: the old one was not touched);
    /// 2. stop the old one, even when the plan saw it stopped; rename it
    ///    aside (its name records whether it ran);
    /// 3. give the new one the canonical name; start it; confirm it runs;
    /// 4. remove the old one.
    ///
    /// If the new container cannot start, it is removed and the old one is
    /// put back, running again if it ran.
    async fn replace(
        &self,
        old_id: &str,
        old_running: bool,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<SystemTime, ApplyError> {
        let rt = self.runtime.as_ref();
        let ns = self.namespace.as_str();
        let canonical = desired.key.container_name(ns);
        let new_id = self.stage(old_id, old_running, desired, ctx).await?;
        crash_point("replace:after-create");

        // Undo what was done so far, leaving the old container as it was.
        let new_ref = new_id.as_str();
        let give_up = |cause: ApplyError| async move {
            let _ = rt.remove(new_ref).await;
            Err::<SystemTime, _>(cause)
        };
        // The plan's "not running" may be stale: a start sent by a berth
        // killed a moment ago can land after this one listed. Look again,
        // and stop the old container whatever the plan saw (a no-op when it
        // is stopped), so it never runs beside the new one or aside.
        let old_running =
            old_running || matches!(rt.inspect(old_id).await, Ok(old) if old.is_running());
        let mut old_exists = true;
        ctx.step.set("stopping", None, &self.clock);
        match rt.stop(old_id, desired.stop_grace).await {
            Ok(()) | Err(RuntimeError::NotModified) => {}
            Err(RuntimeError::NotFound(_)) => old_exists = false,
            Err(e) => return give_up(e.into()).await,
        }
        crash_point("replace:after-stop");
        let aside = aside_name(&canonical, old_id, old_running);
        if old_exists {
            ctx.step.set("renaming", None, &self.clock);
            match rt.rename(old_id, &aside).await {
                Ok(()) => {}
                Err(RuntimeError::NotFound(_)) => old_exists = false,
                Err(e) => {
                    if old_running {
                        let _ = rt.start(old_id).await;
                    }
                    return give_up(e.into()).await;
                }
            }
        }
        crash_point("replace:after-rename");
        if let Err(e) = rt.rename(&new_id, &canonical).await {
            // Someone took the canonical name meanwhile: put the old one back.
            let _ = rt.remove(&new_id).await;
            if old_exists {
                let _ = rt.rename(old_id, &canonical).await;
                if old_running {
                    let _ = rt.start(old_id).await;
                }
            }
            return Err(e.into());
        }
        crash_point("replace:after-swap");
        if !old_exists {
            return self.start(&new_id, ctx).await;
        }
        self.finish_swap(&new_id, old_id, old_running, desired, ctx)
            .await
    }

    /// The end of a stop-first replacement: the new container holds the
    /// canonical name and the old one is aside, stopped. Start the new one
    /// and let it pass its gate (`update.min_healthy`, healthy when it has a
    /// healthcheck, within `update.deadline`); then remove the old one. If
    /// it does not pass, remove it and put the old one back, running again
    /// if it ran (with `auto_revert: false`, keep the new one instead).
    async fn finish_swap(
        &self,
        new_id: &str,
        old_id: &str,
        old_running: bool,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<SystemTime, ApplyError> {
        let canonical = desired.key.container_name(&self.namespace);
        let started = match self.start(new_id, ctx).await {
            Ok(started) => started,
            Err(cause) => {
                return self
                    .roll_back(new_id, old_id, old_running, &canonical, cause, ctx)
                    .await
            }
        };
        crash_point("replace:after-start");
        match self.gate(new_id, desired, ctx).await {
            GateVerdict::Passed => {}
            GateVerdict::Failed(reason) if desired.update.auto_revert => {
                let cause = ApplyError::GateFailed { reason };
                return self
                    .roll_back(new_id, old_id, old_running, &canonical, cause, ctx)
                    .await;
            }
            GateVerdict::Failed(reason) => {
                self.remove_old(old_id, ctx).await;
                return Err(ApplyError::UpdateFailed { reason });
            }
            GateVerdict::Cancelled => {
                // The manifest changed again mid-gate: go back to the last
                // spec that was healthy; the next pass updates from there.
                return match self
                    .roll_back(
                        new_id,
                        old_id,
                        old_running,
                        &canonical,
                        ApplyError::Cancelled,
                        ctx,
                    )
                    .await
                {
                    Err(ApplyError::RolledBack { .. }) => Err(ApplyError::Cancelled),
                    other => other,
                };
            }
            GateVerdict::Unknown(e) => return Err(e),
        }
        // The new one passed: only now does the old one go.
        self.remove_old(old_id, ctx).await;
        Ok(started)
    }

    /// A stop-first replacement found cut short after the new container took
    /// the canonical name (berth was killed, or the host rebooted): finish
    /// it with the same decision it would have made.
    async fn resume(
        &self,
        new_id: &str,
        old_id: &str,
        old_running: bool,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<SystemTime, ApplyError> {
        let canonical = desired.key.container_name(&self.namespace);
        let new = self.runtime.inspect(new_id).await?;
        // It exited on its own (not stopped by a reboot): the gate failed.
        if matches!(new.state, ContainerState::Exited | ContainerState::Dead)
            && !crate::node::stopped_by_reboot(new.finished_at)
        {
            let reason = exit_reason(&new, self.clock.now());
            if desired.update.auto_revert {
                let cause = ApplyError::GateFailed { reason };
                return self
                    .roll_back(new_id, old_id, old_running, &canonical, cause, ctx)
                    .await;
            }
        }
        self.finish_swap(new_id, old_id, old_running, desired, ctx)
            .await
    }

    /// Remove the new container and put the old one back under the
    /// canonical name, running again if it ran. Returns `RolledBack`.
    async fn roll_back(
        &self,
        new_id: &str,
        old_id: &str,
        old_running: bool,
        canonical: &str,
        cause: ApplyError,
        ctx: &ChainCtx<'_>,
    ) -> Result<SystemTime, ApplyError> {
        let rt = self.runtime.as_ref();
        warn!(container = %canonical, error = %cause, "the new container failed; putting the previous one back");
        ctx.step.set("rolling back", None, &self.clock);
        tolerate(rt.remove(new_id).await, &[not_found])?;
        rt.rename(old_id, canonical).await?;
        if old_running {
            tolerate(rt.start(old_id).await, &[not_modified])?;
        }
        Err(ApplyError::RolledBack {
            cause: Box::new(cause),
        })
    }

    /// Remove a replaced container; failing only leaves a leftover the next
    /// pass removes.
    async fn remove_old(&self, old_id: &str, ctx: &ChainCtx<'_>) {
        ctx.step.set("removing", None, &self.clock);
        if let Err(e) = tolerate(self.runtime.remove(old_id).await, &[not_found]) {
            warn!(container = %short(old_id), error = %e, "could not remove the replaced container; the next pass will");
        }
    }

    /// Start-first: the new container starts (under its staging name) and
    /// passes its gate while the old one still runs; only then is the old one
    /// stopped, the names swapped and the old one removed. At no moment does
    /// the instance have no running container. A new container that fails
    /// its gate is removed; the old one was never touched.
    async fn replace_start_first(
        &self,
        old_id: &str,
        old_running: bool,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<SystemTime, ApplyError> {
        let staged = self.stage(old_id, old_running, desired, ctx).await?;
        crash_point("start-first:after-create");
        if let Err(cause) = self.start(&staged, ctx).await {
            let _ = self.runtime.remove(&staged).await;
            return Err(ApplyError::RolledBack {
                cause: Box::new(cause),
            });
        }
        self.finish_start_first(&staged, old_id, old_running, desired, ctx)
            .await
    }

    /// The rest of a start-first replacement once the staged container was
    /// started: gate it, then stop the old one and swap the names.
    async fn finish_start_first(
        &self,
        staged: &str,
        old_id: &str,
        old_running: bool,
        desired: &DesiredInstance,
        ctx: &ChainCtx<'_>,
    ) -> Result<SystemTime, ApplyError> {
        let rt = self.runtime.as_ref();
        let canonical = desired.key.container_name(&self.namespace);
        let started = match self.gate(staged, desired, ctx).await {
            GateVerdict::Passed => self.clock.now(),
            GateVerdict::Failed(reason) if desired.update.auto_revert => {
                // The old one never stopped: just take the new one away.
                tolerate(rt.remove(staged).await, &[not_found])?;
                return Err(ApplyError::RolledBack {
                    cause: Box::new(ApplyError::GateFailed { reason }),
                });
            }
            GateVerdict::Failed(_) => self.clock.now(),
            GateVerdict::Cancelled => {
                tolerate(rt.remove(staged).await, &[not_found])?;
                return Err(ApplyError::Cancelled);
            }
            GateVerdict::Unknown(e) => return Err(e),
        };
        crash_point("start-first:after-gate");
        ctx.step.set("stopping", None, &self.clock);
        match rt.stop(old_id, desired.stop_grace).await {
            Ok(()) | Err(RuntimeError::NotModified) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        ctx.step.set("renaming", None, &self.clock);
        let aside = aside_name(&canonical, old_id, old_running);
        tolerate(rt.rename(old_id, &aside).await, &[not_found])?;
        rt.rename(staged, &canonical).await?;
        crash_point("start-first:after-swap");
        self.remove_old(old_id, ctx).await;
        Ok(started)
    }

    /// Watch a just-started container until it has run for `min_healthy`
    /// (and is healthy, when Docker reports a health status) or fails: it
    /// exits, turns unhealthy, or the deadline passes. Measured from the
    /// container's own start time, so a resumed gate keeps its clock.
    async fn gate(&self, id: &str, desired: &DesiredInstance, ctx: &ChainCtx<'_>) -> GateVerdict {
        let min_healthy = desired
            .update
            .min_healthy
            .map(|d| d.get())
            .unwrap_or_default();
        let deadline = desired.update.deadline.get();
        let mut cancel = ctx.cancel.clone();
        let since = self.clock.now();
        loop {
            let c = match self.runtime.inspect(id).await {
                Ok(c) => c,
                Err(RuntimeError::NotFound(_)) => {
                    return GateVerdict::Failed("the new container disappeared".into())
                }
                Err(e) => return GateVerdict::Unknown(e.into()),
            };
            let now = self.clock.now();
            let started = c.started_at.unwrap_or(since);
            let up = now.duration_since(started).unwrap_or_default();
            if !c.is_running() {
                return GateVerdict::Failed(exit_reason(&c, now));
            }
            if c.health == Health::Unhealthy {
                return GateVerdict::Failed(format!("unhealthy after {}", seconds(up)));
            }
            let healthy = matches!(c.health, Health::None | Health::Healthy);
            if up >= min_healthy && healthy {
                return GateVerdict::Passed;
            }
            if up >= deadline {
                return GateVerdict::Failed(if healthy {
                    format!(
                        "did not stay up {} within the deadline",
                        seconds(min_healthy)
                    )
                } else {
                    format!("not healthy within the {} deadline", seconds(deadline))
                });
            }
            let detail = if c.health == Health::Starting {
                format!(
                    "{}/{} up, waiting for healthy",
                    seconds(up),
                    seconds(min_healthy)
                )
            } else {
                format!("{}/{} healthy", seconds(up), seconds(min_healthy))
            };
            ctx.step.set_detail("gating", detail, &self.clock);
            tokio::select! {
                () = tokio::time::sleep(GATE_POLL) => {}
                () = called_off(&mut cancel) => return GateVerdict::Cancelled,
            }
        }
    }
}

/// How often a gate looks at the new container.
const GATE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What a health gate decided.
enum GateVerdict {
    Passed,
    /// It failed, and why (for the held spec and status).
    Failed(String),
    /// The manifest changed again meanwhile.
    Cancelled,
    /// Docker could not tell (unreachable): decide later.
    Unknown(ApplyError),
}

/// `exited with code 1 after 3s`.
fn exit_reason(c: &ObservedContainer, now: SystemTime) -> String {
    let ran = match (c.started_at, c.finished_at) {
        (Some(s), Some(f)) => f.duration_since(s).ok(),
        (Some(s), None) => now.duration_since(s).ok(),
        _ => None,
    };
    let code = c.exit_code.map_or("exited".to_string(), |code| {
        format!("exited with code {code}")
    });
    match ran {
        Some(ran) => format!("{code} after {}", seconds(ran)),
        None => code,
    }
}

fn seconds(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Group a plan into per-instance chains, keeping the plan's order within
/// each and remembering each action's place in the plan.
pub fn group_chains(actions: Vec<Action>) -> Vec<(InstanceKey, Vec<(usize, Action)>)> {
    let mut chains: std::collections::BTreeMap<InstanceKey, Vec<(usize, Action)>> =
        std::collections::BTreeMap::new();
    for (i, action) in actions.into_iter().enumerate() {
        chains
            .entry(action.key().clone())
            .or_default()
            .push((i, action));
    }
    chains.into_iter().collect()
}

/// Resolves once `cancel` turns true; never when its sender is gone.
async fn called_off(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Treat "already in that state" and "already gone" as success.
fn tolerate(
    result: Result<(), RuntimeError>,
    tolerated: &[fn(&RuntimeError) -> bool],
) -> Result<(), RuntimeError> {
    match result {
        Err(e) if tolerated.iter().any(|t| t(&e)) => Ok(()),
        other => other,
    }
}

fn not_modified(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::NotModified)
}
fn not_found(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::NotFound(_))
}

/// Test hook, compiled only with the `test-hooks` feature (which the test
/// suite turns on, and a release build never has):
/// `BERTH_TEST_CRASH_AT=<point>` aborts the process at that point, exactly
/// like `kill -9`, so tests can prove a replacement is crash-safe. Points:
/// `replace:after-stop`, `replace:after-rename`, `after-create` (any create,
/// before its start), `replace:after-start`.
#[cfg(feature = "test-hooks")]
fn crash_point(point: &str) {
    if std::env::var("BERTH_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("berth: BERTH_TEST_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
fn crash_point(_point: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::registry::RegistryCredentials;
    use crate::desired::spec::ContainerSpec;
    use crate::engine::pulls::LogPulls;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ProgressFn, Result};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// The fake, counting every start of a container while another
    /// container of the same instance runs.
    #[derive(Default)]
    struct OneRunning {
        inner: FakeRuntime,
        both_running: AtomicU64,
    }

    impl ContainerRuntime for OneRunning {
        async fn list(&self, namespace: &str) -> Result<Vec<ObservedContainer>> {
            self.inner.list(namespace).await
        }
        async fn inspect(&self, name_or_id: &str) -> Result<ObservedContainer> {
            self.inner.inspect(name_or_id).await
        }
        async fn create(&self, req: CreateRequest<'_>) -> Result<String> {
            self.inner.create(req).await
        }
        async fn start(&self, id: &str) -> Result<()> {
            let all = self.inner.all();
            let key = all.iter().find(|c| c.id == id).and_then(|c| c.key());
            if all
                .iter()
                .any(|c| c.id != id && c.is_running() && c.key() == key)
            {
                self.both_running.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.start(id).await
        }
        async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
            self.inner.stop(id, grace).await
        }
        async fn remove(&self, id: &str) -> Result<()> {
            self.inner.remove(id).await
        }
        async fn rename(&self, id: &str, new_name: &str) -> Result<()> {
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

    fn web(image: &str) -> Arc<DesiredInstance> {
        Arc::new(DesiredInstance::new(
            InstanceKey::new("web", 0),
            ContainerSpec::for_image(image),
            "web.yaml",
        ))
    }

    #[tokio::test]
    async fn a_replacement_planned_while_the_old_container_looked_stopped_still_stops_it_first() {
        let rt = Arc::new(OneRunning::default());
        rt.inner.add_image("img:1");
        rt.inner.add_image("img:2");
        let executor = Executor::new(
            rt.clone(),
            "berth",
            2,
            Pulls::new(2, Arc::new(LogPulls)),
            Clock::System,
        );
        let created = executor
            .apply(vec![Action::Create {
                desired: web("img:1"),
            }])
            .await;
        assert!(created[0].result.is_ok(), "{created:?}");
        let old = rt.inner.all().remove(0);
        assert!(old.is_running());

        // The list this plan came from showed the old container not yet
        // running: a start sent by a berth killed a moment ago landed since.
        let new = web("img:2");
        let outcomes = executor
            .apply(vec![Action::Replace {
                old_id: old.id.clone(),
                old_hash: old.spec_hash().map(str::to_string),
                old_running: false,
                desired: new.clone(),
            }])
            .await;
        assert!(outcomes[0].result.is_ok(), "{outcomes:?}");
        assert_eq!(
            rt.both_running.load(Ordering::SeqCst),
            0,
            "the new container started while the old one still ran"
        );
        let all = rt.inner.all();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].name, "berth-web-0");
        assert_eq!(all[0].spec_hash(), Some(new.hash.as_str()));
        assert!(all[0].is_running());
    }

    fn cold_start(n: usize) -> Vec<Action> {
        (0..n)
            .map(|i| Action::Create {
                desired: Arc::new(DesiredInstance::new(
                    InstanceKey::new(format!("t{i}"), 0),
                    ContainerSpec::for_image("img:1"),
                    "t.yaml",
                )),
            })
            .collect()
    }

    fn fake_executor(parallelism: usize) -> (Arc<FakeRuntime>, Arc<Executor<FakeRuntime>>) {
        let rt = Arc::new(FakeRuntime::new());
        rt.add_image("img:1");
        let executor = Arc::new(Executor::new(
            rt.clone(),
            "berth",
            parallelism,
            Pulls::new(2, Arc::new(LogPulls)),
            Clock::System,
        ));
        (rt, executor)
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_start_starts_each_new_container_before_creating_many_more() {
        let parallelism = 2;
        let (rt, executor) = fake_executor(parallelism);
        rt.set_latency(Duration::from_millis(10));
        let e = executor.clone();
        let all = tokio::spawn(async move { e.apply(cold_start(20)).await });
        // Every call takes 10 ms and two run at once: 20 creates and 20
        // starts take about 200 ms. Look every 5 ms: no more than
        // `parallelism` containers are ever created and not yet started.
        for step in 1..=60u32 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let waiting = rt.all().iter().filter(|c| !c.is_running()).count();
            assert!(
                waiting <= parallelism,
                "{waiting} containers created and not started at {} ms",
                5 * step
            );
        }
        let outcomes = all.await.expect("the chains ran");
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        assert_eq!(rt.all().iter().filter(|c| c.is_running()).count(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_container_restarts_soon_during_a_cold_start_of_many() {
        let (rt, executor) = fake_executor(4);
        let crashed = executor
            .apply(vec![Action::Create {
                desired: web("img:1"),
            }])
            .await;
        assert!(crashed[0].result.is_ok(), "{crashed:?}");
        let id = rt.all().remove(0).id;
        rt.exit(&id, 1, SystemTime::now());
        rt.set_latency(Duration::from_millis(10));
        let e = executor.clone();
        let cold = tokio::spawn(async move { e.apply(cold_start(200)).await });
        // 200 creates and starts, four at a time, take about a second.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let began = tokio::time::Instant::now();
        let restarted = executor
            .apply(vec![Action::Start {
                id,
                desired: web("img:1"),
                restart: true,
            }])
            .await;
        let took = began.elapsed();
        assert!(restarted[0].result.is_ok(), "{restarted:?}");
        // The cold start was still going: the restart really was asked for
        // in the middle of it.
        let running = rt.all().iter().filter(|c| c.is_running()).count();
        assert!(!cold.is_finished(), "the cold start had already ended");
        assert!(running < 150, "{running} of 201 already ran");
        // Behind at most the four new containers in their create-to-start
        // slots (each create and start 10 ms): not behind the hundreds
        // still waiting to be created.
        assert!(
            took <= Duration::from_millis(60),
            "the restart took {took:?}"
        );
        let outcomes = cold.await.expect("the chains ran");
        assert!(outcomes.iter().all(|o| o.result.is_ok()));
    }

    #[tokio::test(start_paused = true)]
    async fn hundreds_of_removals_never_stop_more_than_the_bound_at_once() {
        let (rt, executor) = fake_executor(4);
        let created = executor.apply(cold_start(100)).await;
        assert!(created.iter().all(|o| o.result.is_ok()));
        rt.set_latency(Duration::from_millis(10));
        let removals = rt
            .all()
            .into_iter()
            .map(|c| Action::Remove {
                key: c.key().expect("a berth container"),
                id: c.id.clone(),
                name: c.name.clone(),
                reason: crate::engine::plan::RemoveReason::TaskRemoved,
                grace: Duration::from_secs(2),
            })
            .collect();
        let outcomes = executor.apply(removals).await;
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        assert!(rt.all().is_empty());
        assert_eq!(rt.max_concurrent("stop"), REMOVALS_AT_ONCE as u64);
    }

    /// The bound is written in the docs and the flag's help: they say the
    /// constant's value.
    #[test]
    fn the_documented_removal_bound_is_the_constant() {
        let n = REMOVALS_AT_ONCE;
        for (file, text, phrase) in [
            (
                "README.md",
                include_str!("../../README.md"),
                format!("run at most {n} at once"),
            ),
            (
                "README.md",
                include_str!("../../README.md"),
                format!("while {n} other removals"),
            ),
            (
                "deploy/berth.yaml",
                include_str!("../../deploy/berth.yaml"),
                format!("a fixed bound of {n}"),
            ),
            (
                "ARCHITECTURE.md",
                include_str!("../../ARCHITECTURE.md"),
                format!("(`apply::REMOVALS_AT_ONCE`, {n})"),
            ),
            (
                "src/cli/flags.rs",
                include_str!("../cli/flags.rs"),
                format!("their own bound of {n})"),
            ),
        ] {
            assert!(text.contains(&phrase), "{file} does not say `{phrase}`");
        }
    }

    /// A removal waiting for a slot says so; it is not shown as stopping.
    #[tokio::test(start_paused = true)]
    async fn a_removal_waiting_for_a_slot_is_queued_not_stopping() {
        let n = REMOVALS_AT_ONCE + 3;
        let (rt, executor) = fake_executor(4);
        let created = executor.apply(cold_start(n)).await;
        assert!(created.iter().all(|o| o.result.is_ok()));
        rt.set_latency(Duration::from_secs(10));
        let cells: Vec<StepCell> = (0..n).map(|_| StepCell::new()).collect();
        let executor = Arc::new(executor);
        let chains: Vec<_> = rt
            .all()
            .into_iter()
            .zip(cells.iter().cloned())
            .map(|(c, cell)| {
                let executor = Arc::clone(&executor);
                let remove = Action::Remove {
                    key: c.key().expect("a berth container"),
                    id: c.id.clone(),
                    name: c.name.clone(),
                    reason: crate::engine::plan::RemoveReason::TaskRemoved,
                    grace: Duration::from_secs(2),
                };
                tokio::spawn(async move {
                    let (_tx, rx) = watch::channel(false);
                    executor.run_chain(vec![remove], &cell, rx).await
                })
            })
            .collect();
        // Paused time: this returns once every chain waits (in a 10 s stop
        // or for a slot), 1 s into the stops; no chain can have finished.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let doing = |what: &str| {
            cells
                .iter()
                .filter(|c| c.get().is_some_and(|s| s.doing == what))
                .count()
        };
        assert_eq!(
            (doing("stopping"), doing("queued to stop")),
            (REMOVALS_AT_ONCE, 3)
        );
        for chain in chains {
            let outcomes = chain.await.expect("the chain ran");
            assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        }
        assert!(rt.all().is_empty());
    }
}

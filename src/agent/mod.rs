//! `berth run`'s loop around the [`Controller`], and `run --once`.
//!
//! - [`watch`]: the manifest folder's activity → triggers.
//! - [`events`]: Docker's events → triggers, reconnecting.
//! - [`lock`]: one agent per namespace on a host.
//! - [`notify`]: systemd's sd_notify (READY, WATCHDOG, STATUS).
//! - [`once`]: `run --once`, converging and judging honestly.
//! - [`source`]: the git source's task: polls, `POST /v1/sync`, SIGHUP.
//!
//! Triggers (folder changes, Docker events, timers, SIGHUP, finished work)
//! only say "look again"; bursts coalesce into one pass. A pass returns as
//! soon as it has dispatched its work, so the loop always answers: it beats
//! a heartbeat (for `/healthz` and systemd's watchdog) whatever a slow stop
//! or a hanging pull is doing. Shutdown arrives as a future; it leaves every
//! container running.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub mod events;
pub mod lock;
pub mod notify;
pub mod once;
pub mod source;
pub mod watch;

pub use once::{run_once, OnceReport, ONCE_DEADLINE};

use crate::config::AgentConfig;
use crate::engine::controller::{Controller, PassReport};
use crate::engine::retry::outage_delay;
use crate::engine::trigger::Trigger;
use crate::runtime::ContainerRuntime;

/// How long work in flight may go on after a shutdown signal before it is
/// abandoned. Abandoning is safe (a replacement cut short is restored by the
/// next berth), finishing is tidier.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the loop beats when nothing else wakes it.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// After a chain ended well while other chains are still in flight, the
/// pass it asks for waits until at least this long after the previous pass
/// began (longer when that pass was slow or many chains run:
/// [`work_done_gap`]);
/// so does a pass for a timer that became due (a settle check, a backoff).
/// Such a pass finds nothing new for the other instances (their chains are
/// already dispatched), and at a cold start of hundreds of tasks one pass
/// per finished chain, each listing every container, costs the daemon more
/// than the work itself. A failed chain, the last chain, an event or a file
/// change still gets its pass at once.
pub const WORK_DONE_GAP: Duration = Duration::from_millis(500);

/// The longest [`work_done_gap`]: a settle check or a finished chain is
/// looked at within this, however slowly Docker answers.
pub const WORK_DONE_GAP_MAX: Duration = Duration::from_secs(3);

/// The work-done gap per instance weighed (see [`work_done_gap`]): 200 (a
/// cold start of 200 tasks) stretch the gap to [`WORK_DONE_GAP_MAX`], 30 or
/// fewer leave it at [`WORK_DONE_GAP`].
pub const WORK_DONE_GAP_PER_INSTANCE: Duration = Duration::from_millis(15);

/// The work-done gap after `pass`: [`WORK_DONE_GAP`], or longer (up to
/// [`WORK_DONE_GAP_MAX`]) when a pass costs more:
/// - ten times the pass: a pass is slow when the daemon is loaded, and
///   listing it less often leaves it to the work;
/// - [`WORK_DONE_GAP_PER_INSTANCE`] per instance with work in flight;
/// - while more chains are in flight than `parallelism` lets Docker work
///   on at once (the daemon is busy with them), per instance the pass
///   looks at instead (desired or listed, whichever are more) when that is
///   more: a pass costs berth every manifest and the list, and the daemon a
///   list of every container, yet finds nothing new for the chains already
///   dispatched. At a cold start of 200 tasks the gap so stays long until
///   the last few chains run, rather than shrinking as chains end. One
///   chain in flight on a large host (a slow stop) leaves the gap short, so
///   a backoff or settle check elsewhere is not held up by it;
/// - except while an instance waits on a dependency: a chain that ends may
///   be what it waits for, so only the instances in flight count.
///
/// At a cold start of 200 tasks the busy term (with the folder's parse
/// cache) took berth from about 45 passes to about 20; counting every
/// instance looked at took it from 21 lists to 12–14 (18 to 9–11 before
/// the last start; the rest are the settle checks after it).
pub fn work_done_gap(pass: GapInputs) -> Duration {
    let weigh_all = pass.busy > pass.parallelism && !pass.waiting_on_dependency;
    let weight = if weigh_all {
        pass.busy.max(pass.size)
    } else {
        pass.busy
    };
    let per = WORK_DONE_GAP_PER_INSTANCE.saturating_mul(u32::try_from(weight).unwrap_or(u32::MAX));
    (pass.took * 10)
        .max(per)
        .clamp(WORK_DONE_GAP, WORK_DONE_GAP_MAX)
}

/// What [`work_done_gap`] weighs: the pass just made.
#[derive(Debug, Clone, Copy)]
pub struct GapInputs {
    /// How long the pass took.
    pub took: Duration,
    /// Instances with work in flight after it.
    pub busy: usize,
    /// How many instances it looked at: the more of the instances desired
    /// and the containers listed.
    pub size: usize,
    /// Whether an instance waits on a dependency.
    pub waiting_on_dependency: bool,
    /// The agent's `parallelism`: how many creates and starts Docker is
    /// given at once.
    pub parallelism: usize,
}

impl GapInputs {
    /// The inputs of a pass that began at `began` and reported `report`
    /// (`None`: it failed, and listed nothing), under `parallelism`.
    pub fn of(
        began: tokio::time::Instant,
        report: Option<&PassReport>,
        parallelism: usize,
    ) -> GapInputs {
        GapInputs {
            took: began.elapsed(),
            busy: report.map_or(0, |r| r.busy.len()),
            size: report.map_or(0, |r| r.observed.len().max(r.desired_instances.len())),
            waiting_on_dependency: report.is_some_and(|r| r.plan.blocked.iter().any(|b| !b.held)),
            parallelism,
        }
    }
}

/// Whether a finished chain's pass may wait out the [`work_done_gap`].
fn can_wait<R: ContainerRuntime>(
    controller: &Controller<R>,
    succeeded: bool,
    gap_end: tokio::time::Instant,
) -> bool {
    succeeded && controller.busy_count() > 0 && tokio::time::Instant::now() < gap_end
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM: stopping; containers keep running"),
                    _ = int.recv() => info!("SIGINT: stopping; containers keep running"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Forward SIGHUP as a reload trigger.
pub fn forward_sighup(tx: mpsc::Sender<Trigger>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP; reload by restarting berth");
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(Trigger::Reload).await.is_err() {
                return;
            }
        }
    });
}

/// Hooks the loop calls; `main` wires them to systemd and the config file.
pub trait LoopHooks: Send {
    /// After each pass (successful or not).
    fn after_pass(&mut self, _ok: bool) {}
    /// The loop is alive (at least every [`HEARTBEAT_EVERY`]).
    fn heartbeat(&mut self) {}
    /// Re-read the agent config for SIGHUP; `None` keeps the current one.
    fn reload_config(&mut self) -> Option<AgentConfig> {
        None
    }
}

/// No hooks.
pub struct NoHooks;
impl LoopHooks for NoHooks {}

/// Run passes until `shutdown` resolves. Returns when the loop has stopped.
pub async fn run_loop<R: ContainerRuntime>(
    controller: &mut Controller<R>,
    mut triggers: mpsc::Receiver<Trigger>,
    hooks: &mut dyn LoopHooks,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut trigger = Trigger::Startup;
    let mut docker_failures: u32 = 0;
    let mut triggers_open = true;
    let mut reload = false;
    let mut retries: Vec<String> = Vec::new();
    loop {
        beat(controller, hooks);
        if reload {
            reload = false;
            if let Some(config) = hooks.reload_config() {
                info!("agent config reloaded");
                controller.reload(config);
            }
        }
        for task in retries.drain(..) {
            controller.retry(&task);
        }
        let began = tokio::time::Instant::now();
        let result = tokio::select! {
            r = controller.pass(&trigger) => r,
            () = &mut shutdown => break,
        };
        let gap_end = began
            + work_done_gap(GapInputs::of(
                began,
                result.as_ref().ok(),
                controller.config().parallelism,
            ));
        let next_due = match &result {
            Ok(report) => {
                if docker_failures > 0 {
                    info!("Docker is reachable again");
                    docker_failures = 0;
                }
                report.plan.next_trigger()
            }
            Err(e) => {
                let delay = outage_delay(docker_failures);
                docker_failures = docker_failures.saturating_add(1);
                error!(retry_in = ?delay, "{e}");
                Some((controller.clock().now() + delay, Trigger::BackoffDue))
            }
        };
        hooks.after_pass(result.is_ok());
        if result.is_ok() && needs_version(controller) {
            if let Ok(v) = controller.refresh_docker_version().await {
                info!(driver.docker.version = %v, "connected to Docker");
            }
        }

        // Wait for the next reason to look again, beating meanwhile.
        let resync = controller.config().resync.get();
        let wait = next_due
            .as_ref()
            .map(|(t, _)| {
                let t = *t;
                t.duration_since(controller.clock().now())
                    .unwrap_or_default()
            })
            .unwrap_or(resync)
            .min(resync);
        // A timer (a backoff, a settle check) is not worth a pass sooner
        // than the work-done gap either: many instances started together
        // become due together.
        let wake_at = tokio::time::Instant::now() + wait;
        let wake_at = if next_due.is_some() {
            wake_at.max(gap_end)
        } else {
            wake_at
        };
        let sleep = tokio::time::sleep_until(wake_at);
        tokio::pin!(sleep);
        let mut waiting_done = None;
        trigger = loop {
            tokio::select! {
                done = controller.next_done() => {
                    let key = done.key.clone();
                    let succeeded = done.succeeded();
                    controller.complete(done);
                    if can_wait(controller, succeeded, gap_end) {
                        waiting_done = Some(key);
                        continue;
                    }
                    break Trigger::WorkDone { key };
                }
                () = tokio::time::sleep_until(gap_end), if waiting_done.is_some() => {
                    if let Some(key) = waiting_done.take() {
                        break Trigger::WorkDone { key };
                    }
                }
                t = triggers.recv(), if triggers_open => match t {
                    Some(t) => break t,
                    // Every sender is gone: only timers wake the loop from now on.
                    None => triggers_open = false,
                },
                () = &mut sleep => {
                    break match &next_due {
                        // Whichever timer was due names the pass; the
                        // resync caps every wait.
                        Some((t, why)) if *t <= controller.clock().now() => why.clone(),
                        Some(_) => Trigger::BackoffDue,
                        None => Trigger::Resync,
                    };
                }
                _ = heartbeat.tick() => beat(controller, hooks),
                () = &mut shutdown => {
                    finish(controller).await;
                    return;
                }
            }
        };
        // Coalesce: everything already queued is answered by the same pass,
        // but a reload must not be lost, and finished work is recorded.
        let mut note = |t: &Trigger| match t {
            Trigger::Reload => reload = true,
            Trigger::Retry { task } => retries.push(task.clone()),
            _ => {}
        };
        note(&trigger);
        while let Ok(t) = triggers.try_recv() {
            note(&t);
        }
        while let Some(done) = controller.try_next_done() {
            controller.complete(done);
        }
    }
    finish(controller).await;
}

fn beat<R: ContainerRuntime>(controller: &Controller<R>, hooks: &mut dyn LoopHooks) {
    controller.status().beat(SystemTime::now());
    hooks.heartbeat();
}

fn needs_version<R: ContainerRuntime>(controller: &Controller<R>) -> bool {
    controller
        .status()
        .view(SystemTime::now())
        .docker_version
        .is_none()
}

async fn finish<R: ContainerRuntime>(controller: &mut Controller<R>) {
    if controller.busy_count() == 0 {
        return;
    }
    match controller.drain(SHUTDOWN_GRACE).await {
        0 => info!("finished the work in flight"),
        n => warn!(
            in_flight = n,
            "abandoned work in flight; the next start picks up where it stopped"
        ),
    }
}

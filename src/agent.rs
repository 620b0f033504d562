//! `berth run`: the long-running loop around [`Controller`].
//!
//! Triggers (folder changes, Docker events, the resync timer, a due backoff,
//! SIGHUP) only say "look again"; bursts coalesce into one pass. SIGTERM and
//! SIGINT end the loop and leave every container running (invariant 4).

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::controller::{Controller, TriggerKind};
use crate::runtime::ContainerRuntime;
use crate::watch::Trigger;

/// How long a pass may go on after a shutdown signal before it is abandoned.
/// Abandoning is safe (a replacement cut short is restored by the next
/// berth), finishing is tidier.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Retry delays while Docker is unreachable: 1 s doubling up to 30 s.
fn docker_retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
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

/// Hooks the loop calls; `main` wires them to the HTTP server, systemd, ...
pub trait LoopHooks: Send {
    /// After each pass (successful or not).
    fn after_pass(&mut self, _ok: bool) {}
    /// Re-read the agent config for SIGHUP; `None` keeps the current one.
    fn reload_config(&mut self) -> Option<AgentConfig> {
        None
    }
}

/// No hooks.
pub struct NoHooks;
impl LoopHooks for NoHooks {}

fn kind(t: &Trigger) -> TriggerKind {
    match t {
        Trigger::ManifestsChanged => TriggerKind::Manifests,
        Trigger::DockerEvent { .. } => TriggerKind::DockerEvent,
        Trigger::Resync | Trigger::Shutdown => TriggerKind::Resync,
        Trigger::BackoffDue => TriggerKind::Backoff,
        Trigger::Reload => TriggerKind::Reload,
    }
}

/// Run passes until a shutdown signal. Returns when the loop has stopped.
pub async fn run_loop<R: ContainerRuntime>(
    controller: &mut Controller<R>,
    mut triggers: mpsc::Receiver<Trigger>,
    hooks: &mut dyn LoopHooks,
) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let mut trigger = TriggerKind::Startup;
    let mut docker_failures: u32 = 0;
    let mut triggers_open = true;
    loop {
        if trigger == TriggerKind::Reload {
            if let Some(config) = hooks.reload_config() {
                info!("agent config reloaded");
                controller.reload(config);
            }
        }
        // Run the pass, but let a shutdown signal cut it short after a grace.
        let mut next_due: Option<SystemTime> = None;
        let ok;
        {
            let pass = controller.pass(trigger);
            tokio::pin!(pass);
            let result = tokio::select! {
                r = &mut pass => Some(r),
                _ = &mut shutdown => {
                    match tokio::time::timeout(SHUTDOWN_GRACE, &mut pass).await {
                        Ok(_) => info!("finished the current pass"),
                        Err(_) => warn!("abandoned the current pass; the next start picks up where it stopped"),
                    }
                    return;
                }
            };
            match result {
                Some(Ok(report)) => {
                    ok = true;
                    next_due = match (report.plan.next_due(), report.retry_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if docker_failures > 0 {
                        info!("Docker is reachable again");
                        docker_failures = 0;
                    }
                }
                Some(Err(e)) => {
                    ok = false;
                    let delay = docker_retry_delay(docker_failures);
                    docker_failures = docker_failures.saturating_add(1);
                    error!(retry_in = ?delay, "{e}");
                    next_due = Some(SystemTime::now() + delay);
                }
                None => ok = false,
            }
        }
        hooks.after_pass(ok);
        if ok
            && docker_failures == 0
            && controller
                .status()
                .lock()
                .is_ok_and(|s| s.docker_version.is_none())
        {
            if let Ok(v) = controller.refresh_docker_version().await {
                info!(driver.docker.version = %v, "connected to Docker");
            }
        }

        // Wait for the next reason to look again.
        let resync = controller.config().resync.get();
        let wait_due = next_due
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(resync)
            .min(resync);
        tokio::select! {
            t = triggers.recv(), if triggers_open => match t {
                Some(Trigger::Shutdown) => return,
                Some(t) => trigger = kind(&t),
                // Every sender is gone: only timers wake the loop from now on.
                None => {
                    triggers_open = false;
                    trigger = TriggerKind::Resync;
                    continue;
                }
            },
            _ = tokio::time::sleep(wait_due) => {
                trigger = if next_due.is_some() { TriggerKind::Backoff } else { TriggerKind::Resync };
            }
            _ = &mut shutdown => return,
        }
        // Coalesce: everything already queued is answered by the same pass,
        // but a reload must not be lost.
        while let Ok(t) = triggers.try_recv() {
            match t {
                Trigger::Reload => trigger = TriggerKind::Reload,
                Trigger::Shutdown => return,
                _ => {}
            }
        }
    }
}

//! Docker events → triggers. Events are hints: a `die`, `oom`, `destroy` or
//! an unhealthy verdict only makes the loop look again sooner than the
//! resync would. When the stream breaks (the daemon restarted, the socket
//! went away) it is re-opened with capped backoff, and a full resync is
//! requested, because events may have been missed meanwhile.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::engine::retry::reconnect_delay;
use crate::engine::trigger::Trigger;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::ContainerRuntime;

/// Whether an event action means "a container may need attention".
pub fn is_interesting(action: &str) -> bool {
    matches!(action, "die" | "oom" | "destroy" | "kill" | "stop")
        || action.starts_with("health_status: unhealthy")
        || action == "health_status:unhealthy"
}

/// Wait until Docker has finished recording what the event announces.
///
/// Warning: Docker (20.10 at least) emits `die` while it still holds the
/// container's lock, before its container list is updated: a pass that lists
/// right after the event still sees the container running and does nothing.
/// Inspecting the container takes that lock, so once it answers, the list
/// agrees with the event. Errors (the container is gone, Docker is away)
/// only mean there is nothing to wait for.
async fn settle(runtime: &DockerRuntime, id: &str) {
    let inspect = runtime.inspect(id);
    if tokio::time::timeout(SETTLE_LIMIT, inspect).await.is_err() {
        debug!(
            container = id,
            "Docker is slow to settle an event; triggering anyway"
        );
    }
}

/// The longest an event's trigger is held back by [`settle`]. Docker can
/// hold the lock for seconds on a busy host (network and mount teardown).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Follow the namespace's container events until `tx` is closed.
pub fn follow(
    runtime: DockerRuntime,
    namespace: String,
    tx: mpsc::Sender<Trigger>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        let mut since = SystemTime::now();
        loop {
            let mut stream = Box::pin(runtime.events_since(&namespace, Some(since)));
            let mut healthy = false;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        if !healthy && failures > 0 {
                            info!("Docker event stream is back");
                            // Events may have been lost while it was away.
                            if tx.try_send(Trigger::Resync).is_err() && tx.is_closed() {
                                return;
                            }
                        }
                        healthy = true;
                        failures = 0;
                        since = SystemTime::now();
                        debug!(action = %event.action, task = ?event.task, "docker event");
                        if is_interesting(&event.action) {
                            if tx.is_closed() {
                                return;
                            }
                            // Settling may take a while on a busy daemon; it
                            // must not hold up other containers' events.
                            let (runtime, tx) = (runtime.clone(), tx.clone());
                            tokio::spawn(async move {
                                settle(&runtime, &event.id).await;
                                // A full channel already holds a pending trigger.
                                let _ = tx.try_send(Trigger::DockerEvent { task: event.task });
                            });
                        }
                    }
                    Err(e) => {
                        if failures == 0 {
                            warn!("Docker event stream failed: {e}; reconnecting");
                        } else {
                            debug!("Docker event stream still failing: {e}");
                        }
                        break;
                    }
                }
            }
            // Wait until the daemon answers before subscribing again: an
            // event stream that is open gives no sign of life until an event
            // comes, so the ping is what tells "Docker is back" promptly.
            let mut reported = false;
            loop {
                if tx.is_closed() {
                    return;
                }
                let delay = reconnect_delay(failures);
                failures = failures.saturating_add(1);
                tokio::time::sleep(delay).await;
                match runtime.version().await {
                    Ok(_) => break,
                    Err(e) if !reported => {
                        reported = true;
                        warn!(retry_in = ?reconnect_delay(failures), "Docker is unreachable: {e}; berth keeps running and retries");
                    }
                    Err(e) => {
                        debug!(retry_in = ?reconnect_delay(failures), "Docker still unreachable: {e}")
                    }
                }
            }
            if reported {
                info!("Docker answers again; re-subscribing to events");
            }
            // Ask for a relist: the daemon may have restarted without us
            // seeing a single event (containers not restarted by Docker).
            if tx.try_send(Trigger::Resync).is_err() && tx.is_closed() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_and_unhealthy_verdicts_are_interesting_starts_are_not() {
        for a in ["die", "oom", "destroy", "health_status: unhealthy"] {
            assert!(is_interesting(a), "{a}");
        }
        for a in [
            "start",
            "create",
            "health_status: healthy",
            "exec_start: sh",
        ] {
            assert!(!is_interesting(a), "{a}");
        }
    }

    /// Docker sends only the actions the stream asks for: each one that
    /// triggers a pass must be among them (`health_status` by prefix).
    #[test]
    fn the_stream_asks_docker_for_every_interesting_action() {
        use crate::runtime::docker::EVENT_ACTIONS as ACTIONS;
        for a in [
            "die",
            "oom",
            "destroy",
            "kill",
            "stop",
            "health_status: unhealthy",
            "health_status:unhealthy",
        ] {
            assert!(is_interesting(a), "{a}");
            assert!(
                ACTIONS.iter().any(|asked| a.starts_with(asked)),
                "{a} is not asked for"
            );
        }
    }
}

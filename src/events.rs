//! Docker events → triggers. Events are hints: a `die`, `oom`, `destroy` or
//! an unhealthy verdict only makes the loop look again sooner than the
//! resync would. When the stream breaks (the daemon restarted, the socket
//! went away) it is re-opened with capped backoff, and a full resync is
//! requested, because events may have been missed meanwhile.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::runtime::docker::DockerRuntime;
use crate::watch::Trigger;

/// Whether an event action means "a container may need attention".
pub fn is_interesting(action: &str) -> bool {
    matches!(action, "die" | "oom" | "destroy" | "kill" | "stop")
        || action.starts_with("health_status: unhealthy")
        || action == "health_status:unhealthy"
}

/// Reconnect delays: 250 ms doubling up to 10 s.
fn reconnect_delay(failures: u32) -> Duration {
    Duration::from_millis(250u64 << failures.min(6)).min(Duration::from_secs(10))
}

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
                            // A full channel already holds a pending trigger.
                            if tx
                                .try_send(Trigger::DockerEvent { task: event.task })
                                .is_err()
                                && tx.is_closed()
                            {
                                return;
                            }
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
            if tx.is_closed() {
                return;
            }
            let delay = reconnect_delay(failures);
            failures = failures.saturating_add(1);
            tokio::time::sleep(delay).await;
            // Ask for a relist: the daemon may have restarted without us
            // seeing a single event (containers not restarted by Docker).
            let _ = tx.try_send(Trigger::Resync);
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

    #[test]
    fn reconnect_delays_grow_and_are_capped() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(250));
        assert_eq!(reconnect_delay(2), Duration::from_secs(1));
        assert_eq!(reconnect_delay(40), Duration::from_secs(10));
    }
}

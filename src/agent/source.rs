//! The git source's background task: it syncs at start, every `interval`,
//! on `POST /v1/sync` and on SIGHUP, publishes the applied commit for the
//! controller and the source's status, and triggers a pass when a sync
//! switched to a new checkout.
//!
//! A sync never blocks the loop (git runs here, under its own deadline),
//! and a failed one changes nothing: the applied commit stays what it was,
//! the reason goes to the log, `/v1/status` and `/metrics`.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::engine::status::SharedStatus;
use crate::engine::trigger::Trigger;
use crate::source::{Change, GitSource, Revision, SourceStatus};

/// Ask the source task to fetch now; the reply is the status after that
/// fetch.
pub type SyncRequest = oneshot::Sender<SourceStatus>;

/// The running source task: where to ask for a sync, and the applied commit.
#[derive(Clone)]
pub struct SourceHandle {
    requests: mpsc::Sender<SyncRequest>,
    applied: watch::Receiver<Option<Revision>>,
}

impl SourceHandle {
    /// The applied commit, for [`crate::engine::controller::Controller::set_source`].
    pub fn applied(&self) -> watch::Receiver<Option<Revision>> {
        self.applied.clone()
    }

    /// Where `POST /v1/sync` sends its requests.
    pub fn requests(&self) -> mpsc::Sender<SyncRequest> {
        self.requests.clone()
    }

    /// Fetch now and wait for the result (`None`: the task is gone).
    pub async fn sync_now(&self) -> Option<SourceStatus> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.ok()?;
        rx.await.ok()
    }
}

/// Publish what the source holds: the applied commit for the controller,
/// its status for `/v1/status` and `/metrics`.
fn publish(source: &GitSource, applied: &watch::Sender<Option<Revision>>, status: &SharedStatus) {
    applied.send_if_modified(|now| {
        let next = source.current().cloned();
        let changed = *now != next;
        *now = next;
        changed
    });
    let view = source.status().clone();
    status.update(|s| s.source = Some(view));
}

/// Start the task. The first sync runs at once; the commit a previous run
/// left applied is published before it, so a host that starts offline runs
/// its last good commit. The task ends when every [`SourceHandle`] and the
/// trigger channel are gone.
pub fn spawn(
    mut source: GitSource,
    interval: Duration,
    status: SharedStatus,
    triggers: mpsc::Sender<Trigger>,
) -> SourceHandle {
    let (applied_tx, applied_rx) = watch::channel(source.current().cloned());
    let (requests_tx, mut requests) = mpsc::channel::<SyncRequest>(16);
    publish(&source, &applied_tx, &status);
    let handle = SourceHandle {
        requests: requests_tx,
        applied: applied_rx,
    };
    tokio::spawn(async move {
        let mut hup = sighup();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut waiting: Vec<SyncRequest> = Vec::new();
            tokio::select! {
                _ = tick.tick() => {}
                request = requests.recv() => match request {
                    Some(reply) => waiting.push(reply),
                    None => return,
                },
                Some(()) = recv_hup(&mut hup) => info!("SIGHUP: fetching the git source now"),
                () = triggers.closed() => return,
            }
            // Everyone who asked meanwhile is answered by this one fetch.
            while let Ok(reply) = requests.try_recv() {
                waiting.push(reply);
            }
            let result = source.sync().await;
            publish(&source, &applied_tx, &status);
            if let Ok(Change::Switched { to, .. }) = &result {
                if triggers
                    .send(Trigger::SourceChanged { commit: to.clone() })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            for reply in waiting {
                let _ = reply.send(source.status().clone());
            }
            // The next poll is a full interval after this fetch.
            tick.reset();
        }
    });
    handle
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn sighup() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot listen for SIGHUP ({e}); the git source fetches on its interval and POST /v1/sync");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// The next SIGHUP; never resolves without a listener.
async fn recv_hup(hup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(s) = hup {
        return s.recv().await;
    }
    let _ = hup;
    std::future::pending().await
}

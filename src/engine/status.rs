//! What `/v1/status`, `/metrics`, `berth status` and systemd see.
//!
//! The controller publishes a snapshot after each pass; work in flight
//! (which step a chain is at, how far a pull has come) is read live at
//! request time, so a 20-minute pull shows its progress between passes.
//! Nothing here ever holds a secret.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::engine::apply::StepCell;
use crate::engine::pulls::{PullState, Pulls};
use crate::names::InstanceKey;

/// One instance, as status reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceStatus {
    pub task: String,
    pub index: u32,
    pub desired_hash: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    /// `running`, `starting` (up, not yet settled or healthy), `exited`,
    /// `created`, `missing`, `succeeded`, `failed`, ...
    pub state: String,
    /// Unix seconds the container last started, when it runs.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Seconds since `started_at`, as of the last pass or status request.
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    pub restarts: u64,
    pub backoff_until: Option<u64>,
    pub last_error: Option<String>,
    /// The work in flight for this instance, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<WorkStatus>,
    /// Why an update of this instance is held (it failed to replace the
    /// running container), until the manifest changes or `berth retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Unix seconds when a pending removal of this instance is due (the
    /// folder must stay quiet until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal_due: Option<u64>,
    /// A job's state in words: `succeeded 2m ago`, `failed after 3
    /// attempts: exit 1`, `running (attempt 2/3)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Unix seconds of a scheduled job's next run (in the host's time zone,
    /// [`Status::time_zone`], for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<u64>,
    /// Why this instance's work waits: `waiting for db (healthy)`, `held:
    /// db failed: ...`, `stops after its dependents: web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// A chain in flight, for status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkStatus {
    /// The chain's first action: `create`, `replace`, `remove`, ...
    pub action: String,
    /// The step it is at: `pulling`, `stopping`, `creating`, ...
    pub step: Option<String>,
    /// The image being pulled, while pulling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whole percent of the pull, while pulling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_percent: Option<u8>,
    /// How far the step is, e.g. a health gate's `4.0s/10.0s healthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Unix seconds the chain started.
    pub since: u64,
}

impl WorkStatus {
    /// `replace: pulling 45%`, `remove: stopping`, `updating 4.0s/10.0s healthy`.
    pub fn describe(&self) -> String {
        if self.step.as_deref() == Some("gating") {
            return format!("updating {}", self.detail.as_deref().unwrap_or(""))
                .trim_end()
                .to_string();
        }
        let mut out = self.action.clone();
        if let Some(step) = &self.step {
            out.push_str(": ");
            out.push_str(step);
            if let Some(pct) = self.pull_percent {
                out.push_str(&format!(" {pct}%"));
            }
        }
        out
    }
}

/// What `/v1/status` and `berth status` show.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub berth_version: String,
    pub namespace: String,
    pub docker_version: Option<String>,
    pub docker_error: Option<String>,
    /// Unix seconds since Docker has been unreachable, while it is.
    #[serde(default)]
    pub docker_down_since: Option<u64>,
    /// Unix seconds of the last completed pass.
    pub last_pass: Option<u64>,
    /// Unix milliseconds of the loop's last heartbeat.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    pub passes: u64,
    pub instances: Vec<InstanceStatus>,
    pub manifest_errors: Vec<String>,
    /// Why every removal is held, when it is (no manifest at all, or the
    /// folder moved to another file system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removals_held: Option<String>,
    /// The time zone job schedules are evaluated in (the host's), e.g.
    /// `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The git source, when the manifests come from one: the commit that
    /// runs, when it was fetched, the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::source::SourceStatus>,
}

/// Work in flight that status reads live.
#[derive(Debug, Clone)]
pub struct LiveWork {
    pub action: &'static str,
    pub since: SystemTime,
    pub step: StepCell,
}

/// The shared status: the last pass's snapshot plus live work.
#[derive(Default)]
pub struct StatusBoard {
    snapshot: Mutex<Status>,
    work: Mutex<BTreeMap<InstanceKey, LiveWork>>,
    pulls: Mutex<Option<Arc<Pulls>>>,
}

pub type SharedStatus = Arc<StatusBoard>;

impl StatusBoard {
    pub fn new(status: Status) -> SharedStatus {
        Arc::new(StatusBoard {
            snapshot: Mutex::new(status),
            ..StatusBoard::default()
        })
    }

    /// Change the snapshot.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.snapshot.lock() {
            f(&mut s);
        }
    }

    /// The loop is alive at `now`.
    pub fn beat(&self, now: SystemTime) {
        self.update(|s| s.heartbeat_ms = Some(unix_millis(now)));
    }

    pub(crate) fn set_work(&self, work: BTreeMap<InstanceKey, LiveWork>) {
        if let Ok(mut w) = self.work.lock() {
            *w = work;
        }
    }

    pub(crate) fn set_pulls(&self, pulls: Arc<Pulls>) {
        if let Ok(mut p) = self.pulls.lock() {
            *p = Some(pulls);
        }
    }

    /// The snapshot as of `now`: uptimes recomputed, live work filled in.
    pub fn view(&self, now: SystemTime) -> Status {
        let mut status = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        let now_secs = unix_secs(now);
        let work = self.work.lock().map(|w| w.clone()).unwrap_or_default();
        let pulls = self.pulls.lock().ok().and_then(|p| p.clone());
        for i in &mut status.instances {
            i.uptime_secs = i.started_at.map(|t| now_secs.saturating_sub(t));
            let key = InstanceKey::new(i.task.clone(), i.index);
            i.work = work.get(&key).map(|w| {
                let step = w.step.get();
                let image = step.as_ref().and_then(|s| s.image.clone());
                let pull_percent = image
                    .as_deref()
                    .and_then(|img| pulls.as_ref()?.state(img))
                    .map(|state| match state {
                        PullState::Running(p) => p.percent(),
                        PullState::Queued => 0,
                        PullState::Done(_) => 100,
                    });
                WorkStatus {
                    action: w.action.to_string(),
                    detail: step.as_ref().and_then(|s| s.detail.clone()),
                    step: step.map(|s| s.doing.to_string()),
                    image,
                    pull_percent,
                    since: unix_secs(w.since),
                }
            });
        }
        status
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

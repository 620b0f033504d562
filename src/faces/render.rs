//! Status tables and plans, as people and machines read them. Pure: each
//! function turns berth's own types into text or a serialisable view, so the
//! CLI only prints.

use std::time::SystemTime;

use serde::Serialize;

use crate::desired::applied::{AppliedSpec, FieldChange};
use crate::engine::plan::{Action, Plan};
use crate::engine::status::{unix_secs, Status};
use crate::names::labels;
use crate::runtime::ObservedContainer;

/// For each action of `plan`, in order: the fields a replacement changes,
/// read from the old container's `io.berth.applied` label. `None` for other
/// actions, and for a replacement whose old container has no readable record
/// (created by a berth without field diffs).
pub fn replace_changes(
    plan: &Plan,
    observed: &[ObservedContainer],
) -> Vec<Option<Vec<FieldChange>>> {
    plan.actions
        .iter()
        .map(|a| match a {
            Action::Replace {
                old_id, desired, ..
            } => observed
                .iter()
                .find(|c| &c.id == old_id)
                .and_then(|c| c.labels.get(labels::APPLIED))
                .and_then(|l| AppliedSpec::parse(l))
                .map(|old| old.diff(&desired.record)),
            _ => None,
        })
        .collect()
}

/// `berth plan --json`: the plan as machines read it. Holds no secret: only
/// names, images, hashes and the human description.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub changes: bool,
    pub actions: Vec<ActionView>,
    pub waiting: Vec<WaitingView>,
    /// Removals waiting for a quiet folder; `until` is when they are due.
    pub pending_removals: Vec<WaitingView>,
    /// Updates held because their spec failed to replace the running container.
    pub held: Vec<HeldView>,
    /// Work waiting for a dependency (`held: true`: a dependency failed),
    /// and removals waiting for their dependents to stop.
    pub blocked: Vec<BlockedView>,
    /// Every job instance: its state and next scheduled run.
    pub jobs: Vec<JobPlanView>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockedView {
    pub task: String,
    pub index: u32,
    pub reason: String,
    pub held: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobPlanView {
    pub task: String,
    pub index: u32,
    /// `scheduled`, `running`, `succeeded`, `retrying`, `failed`.
    pub state: &'static str,
    /// `succeeded 2m ago`, `failed after 3 attempts: exit 1`, ...
    pub description: String,
    /// Unix seconds of the next scheduled run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeldView {
    pub task: String,
    pub index: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionView {
    pub action: &'static str,
    pub task: String,
    pub index: u32,
    /// The container acted upon, when one exists.
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub spec_hash: Option<String>,
    pub description: String,
    /// For a replacement: the fields that differ (see [`replace_changes`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<FieldChange>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitingView {
    pub task: String,
    pub index: u32,
    /// Unix seconds.
    pub until: u64,
}

impl PlanView {
    pub fn new(plan: &Plan, errors: &[String]) -> Self {
        let actions = plan
            .actions
            .iter()
            .map(|a| {
                let (container_id, desired) = match a {
                    Action::Create { desired } => (None, Some(desired)),
                    Action::Start { id, desired, .. }
                    | Action::Restart { id, desired }
                    | Action::Resume {
                        new_id: id,
                        desired,
                        ..
                    }
                    | Action::ResumeStartFirst {
                        staged_id: id,
                        desired,
                        ..
                    }
                    | Action::Replace {
                        old_id: id,
                        desired,
                        ..
                    } => (Some(id.clone()), Some(desired)),
                    Action::Restore { id, .. }
                    | Action::Remove { id, .. }
                    | Action::Stop { id, .. } => (Some(id.clone()), None),
                };
                ActionView {
                    action: a.verb(),
                    task: a.key().task.clone(),
                    index: a.key().index,
                    container_id: container_id.map(|id| id.chars().take(12).collect()),
                    image: desired.map(|d| d.spec.image.clone()),
                    spec_hash: desired.map(|d| d.hash.clone()),
                    description: a.to_string(),
                    changes: None,
                }
            })
            .collect();
        PlanView {
            changes: has_changes(plan),
            actions,
            pending_removals: plan
                .pending_removals
                .iter()
                .map(|r| WaitingView {
                    task: r.key.task.clone(),
                    index: r.key.index,
                    until: unix_secs(r.due),
                })
                .collect(),
            held: plan
                .held
                .iter()
                .map(|h| HeldView {
                    task: h.key.task.clone(),
                    index: h.key.index,
                    reason: h.reason.clone(),
                })
                .collect(),
            waiting: plan
                .waiting
                .iter()
                .map(|w| WaitingView {
                    task: w.key.task.clone(),
                    index: w.key.index,
                    until: w
                        .until
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                })
                .collect(),
            blocked: plan
                .blocked
                .iter()
                .map(|b| BlockedView {
                    task: b.key.task.clone(),
                    index: b.key.index,
                    reason: b.reason.clone(),
                    held: b.held,
                })
                .collect(),
            jobs: plan
                .jobs
                .iter()
                .map(|j| JobPlanView {
                    task: j.key.task.clone(),
                    index: j.key.index,
                    state: j.state_name(),
                    description: j.describe(SystemTime::now()),
                    next_run: j.next_run.map(unix_secs),
                })
                .collect(),
            errors: errors.to_vec(),
        }
    }
}

impl PlanView {
    /// The view with each replacement's field changes filled in.
    pub fn with_changes(plan: &Plan, errors: &[String], observed: &[ObservedContainer]) -> Self {
        let mut view = PlanView::new(plan, errors);
        for (action, changes) in view.actions.iter_mut().zip(replace_changes(plan, observed)) {
            action.changes = changes;
        }
        view
    }
}

/// Whether a plan changes anything: actions now, or removals once the
/// folder is quiet, or updates held back. `berth plan` exits 2 then.
pub fn has_changes(plan: &Plan) -> bool {
    !plan.actions.is_empty()
        || !plan.pending_removals.is_empty()
        || !plan.held.is_empty()
        || !plan.blocked.is_empty()
}

/// `next run 12:15:00 (Europe/Berlin)`, in the host's time zone.
pub fn next_run_text(at: SystemTime, now: SystemTime) -> String {
    let zone = crate::manifest::cron::host_zone();
    format!(
        "next run {} ({})",
        crate::manifest::cron::local_time(at, now, &zone),
        crate::manifest::cron::zone_name(&zone)
    )
}

/// `berth plan` as text: errors, then each action with the fields a
/// replacement changes, then what waits.
pub fn plan_text(plan: &Plan, errors: &[String], observed: &[ObservedContainer]) -> String {
    let mut out = String::new();
    for e in errors {
        out.push_str(&format!("error: {e}\n"));
    }
    let now = SystemTime::now();
    let jobs = |out: &mut String| {
        for j in &plan.jobs {
            out.push_str(&format!("job {}: {}", j.key, j.describe(now)));
            if let Some(next) = j.next_run {
                out.push_str(&format!(", {}", next_run_text(next, now)));
            }
            out.push('\n');
        }
    };
    if !has_changes(plan) {
        out.push_str("nothing to do\n");
        jobs(&mut out);
        return out;
    }
    for (action, changes) in plan.actions.iter().zip(replace_changes(plan, observed)) {
        out.push_str(&format!("{action}\n"));
        match changes {
            Some(fields) => {
                for field in fields {
                    out.push_str(&format!("    {field}\n"));
                }
            }
            None if matches!(action, Action::Replace { .. }) => out.push_str(
                "    (the old container has no record of its applied spec; fields unknown)\n",
            ),
            None => {}
        }
    }
    for w in &plan.waiting {
        out.push_str(&format!("wait {} (backing off)\n", w.key));
    }
    for w in &plan.settling {
        out.push_str(&format!("settle {} (started, not yet settled)\n", w.key));
    }
    for r in &plan.pending_removals {
        let wait = r.due.duration_since(now).unwrap_or_default().as_secs();
        out.push_str(&format!(
            "remove {} ({}: {}) once the folder has been quiet, in {}\n",
            r.key,
            r.name,
            r.reason,
            human_duration(wait)
        ));
    }
    for h in &plan.held {
        out.push_str(&format!("hold {} ({})\n", h.key, h.reason));
    }
    for b in &plan.blocked {
        let verb = if b.held { "hold" } else { "wait" };
        out.push_str(&format!("{verb} {b}\n"));
    }
    jobs(&mut out);
    out
}

/// `5s`, `3m2s`, `4h10m`, `2d3h`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// `berth status` as a table, then manifest errors and Docker's state.
pub fn status_table(status: &Status, at: SystemTime) -> String {
    let now = unix_secs(at);
    let mut out = format!(
        "{:<20} {:<5} {:<22} {:<12} {:<8} {:<8} {:<10} LAST ERROR\n",
        "TASK", "INDEX", "STATE", "CONTAINER", "UPTIME", "RESTARTS", "NEXT RETRY"
    );
    for i in &status.instances {
        // Work in flight first, then what the instance waits for, then a
        // job's own words, then the container's state.
        let mut state = match (&i.work, &i.waiting, &i.job) {
            (Some(w), _, _) => w.describe(),
            (None, Some(waiting), _) => waiting.clone(),
            (None, None, Some(job)) => job.clone(),
            (None, None, None) => i.state.clone(),
        };
        if let Some(next) = i.next_run {
            let next = std::time::UNIX_EPOCH + std::time::Duration::from_secs(next);
            let zone = status.time_zone.as_deref().unwrap_or("UTC");
            let local = jiff::tz::TimeZone::get(zone)
                .map(|z| crate::manifest::cron::local_time(next, at, &z))
                .unwrap_or_else(|_| "?".into());
            state.push_str(&format!(", next run {local} ({zone})"));
        }
        out.push_str(&format!(
            "{:<20} {:<5} {:<22} {:<12} {:<8} {:<8} {:<10} {}\n",
            i.task,
            i.index,
            state,
            i.container_id.as_deref().unwrap_or("-"),
            i.uptime_secs.map_or_else(|| "-".into(), human_duration),
            i.restarts,
            i.backoff_until.map_or_else(
                || "-".into(),
                |t| format!("in {}", human_duration(t.saturating_sub(now)))
            ),
            i.last_error.as_deref().unwrap_or("-"),
        ));
    }
    if !status.manifest_errors.is_empty() {
        out.push_str("\nMANIFEST ERRORS\n");
        for e in &status.manifest_errors {
            out.push_str(&format!("{e}\n"));
        }
    }
    if let Some(e) = &status.docker_error {
        out.push_str(&format!("\ndocker: {e}\n"));
    }
    if let Some(source) = &status.source {
        out.push_str(&source_lines(source, now));
    }
    out
}

/// The git source under the status table: the commit that runs, when the
/// remote was last reached, the last error.
fn source_lines(source: &crate::source::SourceStatus, now: u64) -> String {
    let short = |c: &str| c.chars().take(7).collect::<String>();
    let mut out = format!("\nsource: {} {}", source.url, source.git_ref);
    if !source.path.is_empty() {
        out.push_str(&format!(" ({})", source.path));
    }
    out.push('\n');
    match &source.commit {
        Some(c) => {
            out.push_str(&format!("  commit: {}", short(c)));
            if let Some(subject) = &source.commit_subject {
                out.push_str(&format!(" {subject}"));
            }
            out.push('\n');
        }
        None => out.push_str("  commit: none applied yet\n"),
    }
    if let Some(remote) = source
        .remote_commit
        .as_ref()
        .filter(|r| source.commit.as_ref() != Some(*r))
    {
        out.push_str(&format!("  remote: {} (not applied)\n", short(remote)));
    }
    let ago = |t: Option<u64>| {
        t.map_or_else(
            || "never".to_string(),
            |t| format!("{} ago", human_duration(now.saturating_sub(t))),
        )
    };
    out.push_str(&format!("  fetched: {}", ago(source.last_success)));
    if source.last_fetch != source.last_success {
        out.push_str(&format!(" (last try {})", ago(source.last_fetch)));
    }
    out.push('\n');
    if let Some(e) = &source.last_error {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::status::{InstanceStatus, WorkStatus};

    #[test]
    fn the_status_shows_the_commit_that_runs_and_why_a_newer_one_does_not() {
        let status = Status {
            source: Some(crate::source::SourceStatus {
                url: "file:///srv/ops.git".into(),
                git_ref: "main".into(),
                path: "hosts".into(),
                commit: Some(format!("1a2b3c4{}", "0".repeat(33))),
                commit_subject: Some("web: 1.2".into()),
                remote_commit: Some(format!("9f8e7d6{}", "0".repeat(33))),
                last_fetch: Some(990),
                last_success: Some(990),
                last_error: Some("commit 9f8e7d6 not applied: no valid signature".into()),
                ..Default::default()
            }),
            ..Status::default()
        };
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let text = status_table(&status, now);
        assert!(
            text.contains("source: file:///srv/ops.git main (hosts)"),
            "{text}"
        );
        assert!(text.contains("commit: 1a2b3c4 web: 1.2"), "{text}");
        assert!(text.contains("remote: 9f8e7d6 (not applied)"), "{text}");
        assert!(text.contains("fetched: 10s ago\n"), "{text}");
        assert!(text.contains("error: commit 9f8e7d6 not applied"), "{text}");
    }

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(182), "3m2s");
        assert_eq!(human_duration(4 * 3600 + 600), "4h10m");
        assert_eq!(human_duration(2 * 86400 + 3 * 3600), "2d3h");
    }

    #[test]
    fn the_status_table_shows_work_in_flight_instead_of_the_state() {
        let status = Status {
            instances: vec![InstanceStatus {
                task: "web".into(),
                index: 0,
                desired_hash: None,
                container: Some("berth-web-0".into()),
                container_id: Some("abc".into()),
                state: "running".into(),
                started_at: None,
                uptime_secs: Some(65),
                restarts: 2,
                backoff_until: None,
                last_error: None,
                work: Some(WorkStatus {
                    action: "replace".into(),
                    step: Some("pulling".into()),
                    image: Some("app:2".into()),
                    pull_percent: Some(45),
                    detail: None,
                    since: 0,
                }),
                held: None,
                removal_due: None,
                job: None,
                next_run: None,
                waiting: None,
            }],
            ..Status::default()
        };
        let table = status_table(&status, SystemTime::UNIX_EPOCH);
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains("replace: pulling 45%"), "{row}");
        assert!(row.contains("1m5s"), "{row}");
    }
}

//! `run --once`: converge, then say honestly whether it worked. An instance
//! counts only once its container stayed up for the settle time; a crash
//! loop or an error waiting cannot fix ends the run with exit 1 and the
//! reason, without waiting out the deadline.

use std::time::{Duration, SystemTime};

use crate::engine::controller::{Controller, OnceVerdict, PassError, PassReport};
use crate::engine::trigger::Trigger;
use crate::names::InstanceKey;
use crate::runtime::ContainerRuntime;

/// How long `run --once` keeps trying before it gives up.
pub const ONCE_DEADLINE: Duration = Duration::from_secs(120);

/// What `run --once` found.
#[derive(Debug, Clone)]
pub struct OnceReport {
    pub converged: bool,
    /// Per-instance reasons it did not converge, e.g.
    /// `api[0]: exited with code 1, 3 times`.
    pub problems: Vec<String>,
    /// Manifest and folder errors.
    pub errors: Vec<String>,
    pub last: PassReport,
}

/// `run --once`: pass until every instance converged (its container stayed
/// up for the settle time), until nothing can change by waiting (permanent
/// errors, crash loops), or until `deadline`.
pub async fn run_once<R: ContainerRuntime>(
    controller: &mut Controller<R>,
    deadline: Duration,
) -> Result<OnceReport, PassError> {
    let until = tokio::time::Instant::now() + deadline;
    let mut trigger = Trigger::Startup;
    loop {
        let report = controller.pass(&trigger).await?;
        let verdict = controller.once_verdict(&report);
        let out_of_time = tokio::time::Instant::now() >= until;
        let problems = match verdict {
            OnceVerdict::Converged => Vec::new(),
            OnceVerdict::Failed(problems) => problems,
            OnceVerdict::Pending if out_of_time => pending_reasons(controller, &report),
            OnceVerdict::Pending => {
                trigger = wait_for_change(controller, &report, until).await;
                continue;
            }
        };
        let converged = problems.is_empty() && report.errors.is_empty();
        controller.finish_background(Duration::from_secs(30)).await;
        return Ok(OnceReport {
            converged,
            problems,
            errors: report.errors.clone(),
            last: report,
        });
    }
}

/// Wait until work ends or something becomes due, whichever is first.
async fn wait_for_change<R: ContainerRuntime>(
    controller: &mut Controller<R>,
    report: &PassReport,
    until: tokio::time::Instant,
) -> Trigger {
    let due = report.plan.next_due().map(|t| {
        let wait = t
            .duration_since(controller.clock().now())
            .unwrap_or_default();
        tokio::time::Instant::now() + wait
    });
    let wake = due.map_or(until, |d| d.min(until));
    tokio::select! {
        done = controller.next_done() => {
            let key = done.key.clone();
            controller.complete(done);
            while let Some(more) = controller.try_next_done() {
                controller.complete(more);
            }
            Trigger::WorkDone { key }
        }
        () = tokio::time::sleep_until(wake) => Trigger::BackoffDue,
    }
}

/// Why instances are still not converged when time runs out.
fn pending_reasons<R: ContainerRuntime>(
    controller: &Controller<R>,
    report: &PassReport,
) -> Vec<String> {
    let mut out = Vec::new();
    let status = controller.status().view(SystemTime::now());
    for i in &status.instances {
        let key = InstanceKey::new(i.task.clone(), i.index);
        let last_error = controller
            .backoff()
            .get(&key)
            .and_then(|b| b.last_error.clone());
        let doing = if report.busy.contains(&key) {
            i.work
                .as_ref()
                .map_or_else(|| "work in flight".into(), |w| w.describe())
        } else if report.plan.waiting.iter().any(|w| w.key == key) {
            "backing off".into()
        } else if report.plan.settling.iter().any(|w| w.key == key) {
            "started, not yet settled".into()
        } else {
            continue;
        };
        match last_error {
            Some(e) => out.push(format!("{key}: {doing} (last error: {e})")),
            None => out.push(format!("{key}: {doing}")),
        }
    }
    out
}

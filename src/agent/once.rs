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
        let began = tokio::time::Instant::now();
        let report = controller.pass(&trigger).await?;
        let parallelism = controller.config().parallelism;
        let gap_end =
            began + super::work_done_gap(super::GapInputs::of(began, Some(&report), parallelism));
        let verdict = controller.once_verdict(&report);
        let out_of_time = tokio::time::Instant::now() >= until;
        let problems = match verdict {
            OnceVerdict::Converged => Vec::new(),
            OnceVerdict::Failed(problems) => problems,
            OnceVerdict::Pending if out_of_time => pending_reasons(controller, &report),
            OnceVerdict::Pending => {
                trigger = wait_for_change(controller, &report, until, gap_end).await;
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

/// Wait until work ends or something becomes due, whichever is first. A
/// timer, or a chain that ended well while others run, waits for `gap_end`
/// (see [`super::work_done_gap`]).
async fn wait_for_change<R: ContainerRuntime>(
    controller: &mut Controller<R>,
    report: &PassReport,
    until: tokio::time::Instant,
    gap_end: tokio::time::Instant,
) -> Trigger {
    let due = report.plan.next_due().map(|t| {
        let wait = t
            .duration_since(controller.clock().now())
            .unwrap_or_default();
        tokio::time::Instant::now() + wait
    });
    let wake = due.map_or(until, |d| d.max(gap_end).min(until));
    let mut waiting_done = None;
    loop {
        tokio::select! {
            done = controller.next_done() => {
                let key = done.key.clone();
                let mut succeeded = done.succeeded();
                controller.complete(done);
                while let Some(more) = controller.try_next_done() {
                    succeeded &= more.succeeded();
                    controller.complete(more);
                }
                if super::can_wait(controller, succeeded, gap_end) {
                    waiting_done = Some(key);
                    continue;
                }
                return Trigger::WorkDone { key };
            }
            () = tokio::time::sleep_until(gap_end), if waiting_done.is_some() => {
                if let Some(key) = waiting_done.take() {
                    return Trigger::WorkDone { key };
                }
            }
            () = tokio::time::sleep_until(wake) => return Trigger::BackoffDue,
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::Clock;
    use crate::config::AgentConfig;
    use crate::engine::pulls::LogPulls;
    use crate::runtime::fake::FakeRuntime;

    /// `run --once` over 40 cold tasks, 4 at a time, each create and start
    /// taking `step_ms` plus up to 60 ms (uneven, so that chains end one at
    /// a time as they do on a real daemon, not in batches of four), each
    /// list taking `list`. Returns how many times the daemon was listed.
    async fn cold_start_lists(step_ms: u64, list: Duration) -> u64 {
        cold_start_lists_of(40, step_ms, list).await
    }

    /// [`cold_start_lists`] over `tasks` tasks.
    async fn cold_start_lists_of(tasks: usize, step_ms: u64, list: Duration) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        for i in 0..tasks {
            std::fs::write(manifests.join(format!("t{i:03}.yaml")), "image: app:1\n").unwrap();
        }
        let config = AgentConfig {
            manifests,
            namespace: "t".into(),
            state_dir: dir.path().join("state"),
            ..AgentConfig::default()
        };
        assert_eq!(config.parallelism, 4);
        let clock = Clock::tokio();
        let runtime = FakeRuntime::new().with_clock(clock);
        runtime.add_image("app:1");
        let n = std::sync::atomic::AtomicU64::new(0);
        runtime.set_latency_fn(move |kind| match kind {
            "create" | "start" => {
                let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Duration::from_millis(step_ms + (k * 37) % 61)
            }
            "list" => list,
            _ => Duration::ZERO,
        });
        let mut c = Controller::with_parts(Arc::new(runtime), config, clock, Arc::new(LogPulls));

        let report = run_once(&mut c, Duration::from_secs(120)).await.unwrap();
        assert!(report.converged, "{:?}", report.problems);
        assert_eq!(c.runtime().calls("start"), tasks as u64);
        c.runtime().reads("list")
    }

    /// 40 chains end one after another over about 2 s. One pass per
    /// finished chain would list 40 times; the work-done gap lets the
    /// passes of chains that ended well while others run wait, so the
    /// daemon is listed a handful of times and the run still converges.
    #[tokio::test(start_paused = true)]
    async fn a_cold_start_lists_far_fewer_times_than_chains_end() {
        let lists = cold_start_lists(70, Duration::ZERO).await;
        // 2 s of chains ending: about 2 s / WORK_DONE_GAP passes, plus the
        // first one and the settle checks.
        eprintln!("{lists} list calls for 40 chains");
        assert!(lists <= 12, "{lists} list calls for 40 chains");
    }

    /// The gap after a pass that took `took_ms`, left `busy` in flight and
    /// looked at `size` instances, nothing waiting on a dependency, with the
    /// default parallelism (4).
    fn gap(took_ms: u64, busy: usize, size: usize) -> Duration {
        super::super::work_done_gap(super::super::GapInputs {
            took: Duration::from_millis(took_ms),
            busy,
            size,
            waiting_on_dependency: false,
            parallelism: 4,
        })
    }

    /// A daemon busy enough that a list takes 200 ms is listed about every
    /// 2 s (ten times the pass) rather than every 500 ms: over 7 s of chains
    /// ending that is a handful of lists, not one per half second.
    #[tokio::test(start_paused = true)]
    async fn a_slow_daemon_is_listed_less_often() {
        assert_eq!(gap(0, 1, 1), super::super::WORK_DONE_GAP);
        assert_eq!(gap(200, 1, 1), Duration::from_secs(2));
        assert_eq!(gap(60_000, 1, 1), super::super::WORK_DONE_GAP_MAX);
        let lists = cold_start_lists(300, Duration::from_millis(200)).await;
        eprintln!("{lists} list calls for 40 chains over a slow daemon");
        assert!(
            lists <= 8,
            "{lists} list calls for 40 chains over a slow daemon"
        );
    }

    /// While hundreds of tasks are desired and chains are in flight, a
    /// finished one's pass waits the longest gap: 200 tasks whose chains
    /// end one after another over about 12 s are listed about once per 3 s
    /// until the last chain ends (9 lists, the settle checks after it
    /// included), not more often as fewer chains are left in flight (14
    /// when only the busy instances counted).
    #[tokio::test(start_paused = true)]
    async fn a_cold_start_of_hundreds_waits_longer_between_passes() {
        use super::super::{WORK_DONE_GAP, WORK_DONE_GAP_MAX};
        let started = tokio::time::Instant::now();
        let lists = cold_start_lists_of(200, 70, Duration::ZERO).await;
        let took = started.elapsed();
        eprintln!("{lists} list calls for 200 chains over {took:?}");
        assert!(took > Duration::from_secs(8), "{took:?}");
        assert!(
            lists <= 10,
            "{lists} list calls for 200 chains over {took:?}"
        );

        // Nothing in flight, or no more than Docker is given at once: the
        // work in flight alone, whatever is listed (a slow stop on a host
        // of 200 does not hold up a backoff elsewhere).
        assert_eq!(gap(0, 0, 200), WORK_DONE_GAP);
        assert_eq!(gap(0, 1, 200), WORK_DONE_GAP);
        assert_eq!(gap(0, 4, 200), WORK_DONE_GAP);
        assert_eq!(gap(0, 30, 30), WORK_DONE_GAP);
        assert_eq!(gap(0, 100, 0), Duration::from_millis(1500));
        // Late in a cold start of 200, chains still queued: 200 desired.
        assert_eq!(gap(0, 5, 200), WORK_DONE_GAP_MAX);
        assert_eq!(gap(0, 200, 0), WORK_DONE_GAP_MAX);
        assert_eq!(gap(0, usize::MAX, 0), WORK_DONE_GAP_MAX);
    }

    /// While an instance waits on a dependency, the chain that ends may be
    /// the one it waits for: only the instances in flight count, so a
    /// dependent on a host of 200 is looked at again within 500 ms once
    /// 30 or fewer chains run.
    #[test]
    fn a_dependent_waiting_keeps_the_gap_of_the_work_in_flight() {
        let waiting = |busy, size| {
            super::super::work_done_gap(super::super::GapInputs {
                took: Duration::ZERO,
                busy,
                size,
                waiting_on_dependency: true,
                parallelism: 4,
            })
        };
        assert_eq!(waiting(10, 200), super::super::WORK_DONE_GAP);
        assert_eq!(waiting(100, 200), Duration::from_millis(1500));
        assert_eq!(gap(0, 10, 200), super::super::WORK_DONE_GAP_MAX);

        // Read off a pass: ten chains in flight on a host of 200, and web
        // waiting for db; a dependent held by a failed dependency waits
        // on nothing a chain can end.
        let key = |i: usize| InstanceKey::new(format!("t{i:03}"), 0);
        let mut report = PassReport {
            plan: crate::engine::plan::Plan::default(),
            errors: Vec::new(),
            observed: Vec::new(),
            desired_instances: (0..200).map(key).collect(),
            dispatched: 0,
            busy: (0..10).map(key).collect(),
        };
        let blocked = |held| crate::engine::deps::Blocked {
            key: InstanceKey::new("web", 0),
            reason: "waiting for db (started)".into(),
            held,
        };
        let of = |report: &PassReport| {
            super::super::work_done_gap(super::super::GapInputs::of(
                tokio::time::Instant::now(),
                Some(report),
                4,
            ))
        };
        assert_eq!(of(&report), super::super::WORK_DONE_GAP_MAX);
        report.plan.blocked.push(blocked(true));
        assert_eq!(of(&report), super::super::WORK_DONE_GAP_MAX);
        report.plan.blocked.push(blocked(false));
        assert_eq!(of(&report), super::super::WORK_DONE_GAP);
    }
}

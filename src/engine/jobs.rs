//! Jobs: tasks that run to completion (`kind: job`).
//!
//! Exit 0 is `succeeded`: the container is kept, exited, and never started
//! again, so status can say when it ran. A failed run is started again on
//! the restart curve until `max_attempts` runs in all have failed; then the
//! job is `failed` and held until the manifest changes or `berth retry`. A
//! changed spec runs the job again (a new container). With `schedule:` the
//! container is created at once and started at each cron slot; a slot that
//! comes while a run still goes on is skipped, never overlapped.
//!
//! What Docker shows (state, exit code, start and finish times of the kept
//! container) is most of a job's state. The rest, how many runs of this spec
//! failed and since when berth knows the spec, is the [`JobTable`], kept in
//! the state directory like held updates (see `holds.rs`), so an agent
//! restart neither forgets attempts nor runs a failed job once more.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::desired::state::{DesiredInstance, DesiredState};
use crate::manifest::cron::Schedule;
use crate::manifest::TaskKind;
use crate::names::InstanceKey;
use crate::runtime::{ContainerState, ObservedContainer};

/// Attempts in all when a job sets no `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What berth remembers of one job instance's current spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The spec the record is about; another spec starts a fresh record.
    pub hash: String,
    /// Unix milliseconds since when berth knows this spec: a scheduled job's
    /// first run is the first slot after it.
    pub since_ms: u64,
    /// Failed runs of the current run (reset by a success and by each
    /// scheduled run).
    pub failures: u32,
    /// Unix milliseconds of the last exit counted, so one exit seen by
    /// many passes counts once.
    #[serde(default)]
    pub seen_exit_ms: Option<u64>,
}

/// Every job instance's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobTable {
    records: BTreeMap<InstanceKey, JobRecord>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl JobTable {
    pub const fn new() -> JobTable {
        JobTable {
            records: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &InstanceKey) -> Option<&JobRecord> {
        self.records.get(key)
    }

    /// The record of `want`'s current spec, if berth has one.
    fn current(&self, want: &DesiredInstance) -> Option<&JobRecord> {
        self.records.get(&want.key).filter(|r| r.hash == want.hash)
    }

    /// Count what the containers show into the records: a new spec gets a
    /// fresh record, each exit of the current spec is counted once.
    /// Returns whether a record changed (the caller then saves) and the
    /// runs that ended since the last look. Pure.
    pub fn observe(
        &mut self,
        desired: &DesiredState,
        observed: &[ObservedContainer],
        namespace: &str,
        now: SystemTime,
    ) -> (bool, Vec<RunEnded>) {
        let mut ended = Vec::new();
        let mut changed = false;
        for want in desired
            .instances
            .values()
            .filter(|w| w.kind == TaskKind::Job)
        {
            let record = self.records.entry(want.key.clone()).or_insert_with(|| {
                changed = true;
                JobRecord {
                    hash: want.hash.clone(),
                    since_ms: millis(now),
                    failures: 0,
                    seen_exit_ms: None,
                }
            });
            if record.hash != want.hash {
                *record = JobRecord {
                    hash: want.hash.clone(),
                    since_ms: millis(now),
                    failures: 0,
                    seen_exit_ms: None,
                };
                changed = true;
            }
            let canonical = want.key.container_name(namespace);
            let Some(c) = observed
                .iter()
                .find(|c| c.name == canonical && c.spec_hash() == Some(want.hash.as_str()))
            else {
                continue;
            };
            if c.state != ContainerState::Exited {
                continue;
            }
            let Some(finished) = c.finished_at.map(millis) else {
                continue;
            };
            if record.seen_exit_ms == Some(finished) {
                continue;
            }
            record.seen_exit_ms = Some(finished);
            let result = if c.exit_code == Some(0) {
                record.failures = 0;
                "succeeded"
            } else {
                record.failures = record.failures.saturating_add(1);
                "failed"
            };
            ended.push(RunEnded {
                key: want.key.clone(),
                result,
            });
        }
        // A new record alone is worth keeping too: it dates the spec.
        (changed || !ended.is_empty(), ended)
    }

    /// A scheduled run begins: its attempts start from zero.
    pub fn start_run(&mut self, key: &InstanceKey) -> bool {
        match self.records.get_mut(key) {
            Some(r) if r.failures != 0 => {
                r.failures = 0;
                true
            }
            _ => false,
        }
    }

    /// `berth retry TASK`: the task's failed jobs get their attempts back.
    pub fn rearm(&mut self, task: &str) -> usize {
        let mut n = 0;
        for (_, r) in self.records.iter_mut().filter(|(k, _)| k.task == task) {
            if r.failures > 0 {
                r.failures = 0;
                n += 1;
            }
        }
        n
    }

    /// Forget instances that are no longer desired jobs.
    pub fn retain(&mut self, keep: impl Fn(&InstanceKey) -> bool) -> bool {
        let before = self.records.len();
        self.records.retain(|k, _| keep(k));
        before != self.records.len()
    }
}

/// A job run that ended, for logs and `berth_job_runs_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnded {
    pub key: InstanceKey,
    /// `succeeded` or `failed`.
    pub result: &'static str,
}

/// Where a job instance is, as status and plan show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum JobState {
    /// Created, waiting for its scheduled slot.
    Scheduled,
    /// A run goes on.
    Running { attempt: u32, of: u32 },
    /// The last run exited 0.
    Succeeded { at: Option<u64> },
    /// A run failed and is tried again on the restart curve.
    Retrying {
        attempt: u32,
        of: u32,
        exit_code: Option<i64>,
    },
    /// Every attempt failed: held until the manifest changes or `berth retry`
    /// (a scheduled job runs again at its next slot).
    Failed {
        attempts: u32,
        exit_code: Option<i64>,
        at: Option<u64>,
    },
}

/// One job instance's view for status and plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub key: InstanceKey,
    pub state: JobState,
    /// The next scheduled run, for scheduled jobs.
    pub next_run: Option<SystemTime>,
    /// A slot that came while the previous run still went on: skipped.
    pub skipped: Option<SystemTime>,
}

impl JobView {
    /// The state's one word: `scheduled`, `running`, `succeeded`,
    /// `retrying`, `failed`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            JobState::Scheduled => "scheduled",
            JobState::Running { .. } => "running",
            JobState::Succeeded { .. } => "succeeded",
            JobState::Retrying { .. } => "retrying",
            JobState::Failed { .. } => "failed",
        }
    }

    /// `succeeded 2m ago`, `failed after 3 attempts: exit 1`, `running (attempt 2/3)`.
    pub fn describe(&self, now: SystemTime) -> String {
        let ago = |at: Option<u64>| {
            at.map(|s| {
                let secs = (millis(now) / 1000).saturating_sub(s);
                format!(" {} ago", short_duration(secs))
            })
            .unwrap_or_default()
        };
        let exit = |code: Option<i64>| code.map_or("exited".to_string(), |c| format!("exit {c}"));
        match &self.state {
            JobState::Scheduled => "scheduled".into(),
            JobState::Running { attempt, of } if *attempt > 1 => {
                format!("running (attempt {attempt}/{of})")
            }
            JobState::Running { .. } => "running".into(),
            JobState::Succeeded { at } => format!("succeeded{}", ago(*at)),
            JobState::Retrying {
                attempt,
                of,
                exit_code,
            } => format!(
                "attempt {attempt}/{of} failed ({}); retrying",
                exit(*exit_code)
            ),
            JobState::Failed {
                attempts,
                exit_code,
                at,
            } => format!(
                "failed after {attempts} attempt{}: {}{}",
                if *attempts == 1 { "" } else { "s" },
                exit(*exit_code),
                ago(*at)
            ),
        }
    }
}

/// `42s`, `5m`, `3h`, `2d`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// What the planner does with a job instance whose container has the
/// current spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStep {
    /// Nothing to do now.
    Idle,
    /// Start the kept container: a retry (`retry: true`, on the restart
    /// curve) or a scheduled run.
    Start { retry: bool },
    /// Every attempt failed: report and hold.
    Failed(String),
}

/// The attempts a job has in all.
pub fn max_attempts(want: &DesiredInstance) -> u32 {
    want.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1)
}

/// A job's parsed schedule; `None` for a job without one (validation
/// refused a bad one; a manifest older than that rule runs once).
pub fn schedule_of(want: &DesiredInstance) -> Option<Schedule> {
    want.schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s).ok())
}

/// Decide one job instance. Pure. `started_here` is when berth itself last
/// started the container, if it did in this process: more precise than a
/// running container's start time from Docker's list (whole seconds, rounded
/// down), which must not make the run's own slot look skipped.
pub fn decide(
    want: &Arc<DesiredInstance>,
    current: &ObservedContainer,
    table: &JobTable,
    zone: &jiff::tz::TimeZone,
    started_here: Option<SystemTime>,
    now: SystemTime,
) -> (JobStep, JobView) {
    let record = table.current(want);
    let failures = record.map_or(0, |r| r.failures);
    let of = max_attempts(want);
    let schedule = schedule_of(want);
    let secs = |t: Option<SystemTime>| t.map(|t| millis(t) / 1000);
    // The next slot after the later of: when berth first knew this spec,
    // the last start, the last finish. A slot passed while a run went on
    // is therefore skipped, and a host that was down runs one catch-up.
    let started = match (current.state, started_here) {
        (ContainerState::Exited, _) => current.started_at,
        (_, Some(here)) => Some(here),
        // The list's "Up N seconds" is up to a second early.
        (_, None) => current.started_at.map(|t| t + Duration::from_secs(1)),
    };
    let base = [
        record.map(|r| from_millis(r.since_ms)),
        started,
        current.finished_at,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(now);
    let next = schedule.as_ref().and_then(|s| s.next_after(base, zone));
    let due = next.is_some_and(|t| t <= now);
    let view = |state: JobState, next_run: Option<SystemTime>| JobView {
        key: want.key.clone(),
        state,
        next_run,
        skipped: None,
    };
    match current.state {
        ContainerState::Running | ContainerState::Restarting | ContainerState::Paused => {
            let mut v = view(
                JobState::Running {
                    attempt: failures + 1,
                    of,
                },
                next.filter(|_| !due),
            );
            if due {
                // The slot came while this run goes on: skip it; the next
                // one counts from the run's end.
                v.skipped = next;
            }
            (JobStep::Idle, v)
        }
        ContainerState::Created => match schedule {
            Some(_) if due => (
                JobStep::Start { retry: false },
                view(JobState::Scheduled, None),
            ),
            Some(_) => (JobStep::Idle, view(JobState::Scheduled, next)),
            // Created and not started: a run cut short before its start.
            None => (
                JobStep::Start { retry: false },
                view(JobState::Running { attempt: 1, of }, None),
            ),
        },
        ContainerState::Exited => {
            let code = current.exit_code;
            let at = secs(current.finished_at);
            if code == Some(0) {
                let step = if due {
                    JobStep::Start { retry: false }
                } else {
                    JobStep::Idle
                };
                return (step, view(JobState::Succeeded { at }, next));
            }
            // An exit not counted yet (first pass after it) is one failure.
            let failed = failures.max(1);
            if failed < of {
                return (
                    JobStep::Start { retry: true },
                    view(
                        JobState::Retrying {
                            attempt: failed,
                            of,
                            exit_code: code,
                        },
                        next,
                    ),
                );
            }
            let v = view(
                JobState::Failed {
                    attempts: failed,
                    exit_code: code,
                    at,
                },
                next,
            );
            if due {
                return (JobStep::Start { retry: false }, v);
            }
            (JobStep::Failed(v.describe(now)), v)
        }
        // Dead and Removing are handled by the planner's common paths.
        ContainerState::Dead | ContainerState::Removing => (
            JobStep::Idle,
            view(JobState::Running { attempt: 1, of }, None),
        ),
    }
}

impl fmt::Display for JobView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe(SystemTime::now()))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    task: String,
    index: u32,
    #[serde(flatten)]
    record: JobRecord,
}

/// Where a namespace's job records are kept: `jobs-<namespace>.json` in
/// the state directory, written atomically.
///
/// Warning: when the state directory cannot be written, the records live
/// in memory only (logged once); a restarted berth then counts a failed
/// job's attempts from the exit it sees, so it may run it once more.
#[derive(Debug, Clone)]
pub struct JobStore {
    path: PathBuf,
    warned: bool,
}

impl JobStore {
    pub fn new(state_dir: &Path, namespace: &str) -> JobStore {
        JobStore {
            path: state_dir.join(format!("jobs-{namespace}.json")),
            warned: false,
        }
    }

    pub fn load(&self) -> JobTable {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return JobTable::new(),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the job records; starting without");
                return JobTable::new();
            }
        };
        match serde_json::from_str::<Vec<Stored>>(&text) {
            Ok(stored) => JobTable {
                records: stored
                    .into_iter()
                    .map(|s| (InstanceKey::new(s.task, s.index), s.record))
                    .collect(),
            },
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "the job records file is damaged; starting without");
                JobTable::new()
            }
        }
    }

    pub fn save(&mut self, table: &JobTable) {
        if let Err(e) = self.write(table) {
            if !self.warned {
                warn!(path = %self.path.display(), error = %e, "cannot keep job records across restarts; they are kept in memory only");
                self.warned = true;
            }
        }
    }

    fn write(&self, table: &JobTable) -> std::io::Result<()> {
        if table.records.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let stored: Vec<Stored> = table
            .records
            .iter()
            .map(|(k, r)| Stored {
                task: k.task.clone(),
                index: k.index,
                record: r.clone(),
            })
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&stored)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::spec::ContainerSpec;
    use crate::engine::backoff::BackoffTable;
    use crate::engine::plan::{plan, Memory, Plan, PlanOptions};
    use crate::names::labels;

    const NS: &str = "t";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn job(image: &str, schedule: Option<&str>) -> DesiredInstance {
        let mut d = DesiredInstance::new(
            InstanceKey::new("backup", 0),
            ContainerSpec::for_image(image),
            "backup.yaml",
        );
        d.kind = TaskKind::Job;
        d.schedule = schedule.map(str::to_string);
        d
    }

    fn desired(d: &DesiredInstance) -> DesiredState {
        let mut s = DesiredState::default();
        s.insert(d.clone());
        s
    }

    fn container(d: &DesiredInstance, state: ContainerState) -> ObservedContainer {
        ObservedContainer {
            id: "id-backup".into(),
            name: d.key.container_name(NS),
            image: d.spec.image.clone(),
            labels: BTreeMap::from([
                (labels::NAMESPACE.to_string(), NS.to_string()),
                (labels::TASK.to_string(), d.key.task.clone()),
                (labels::INDEX.to_string(), "0".to_string()),
                (labels::SPEC_HASH.to_string(), d.hash.clone()),
            ]),
            state,
            health: crate::runtime::Health::None,
            exit_code: None,
            started_at: None,
            finished_at: None,
            host: Default::default(),
        }
    }

    fn ran(d: &DesiredInstance, start: u64, end: u64, code: i64) -> ObservedContainer {
        ObservedContainer {
            exit_code: Some(code),
            started_at: Some(at(start)),
            finished_at: Some(at(end)),
            host: Default::default(),
            ..container(d, ContainerState::Exited)
        }
    }

    fn plan_at(d: &DesiredState, world: &[ObservedContainer], jobs: &JobTable, now: u64) -> Plan {
        let backoff = BackoffTable::new();
        let options = PlanOptions {
            zone: jiff::tz::TimeZone::UTC,
            ..PlanOptions::new(NS)
        };
        plan(
            d,
            world,
            Memory {
                jobs,
                ..Memory::of(&backoff)
            },
            at(now),
            &options,
        )
    }

    fn verbs(p: &Plan) -> Vec<&'static str> {
        p.actions.iter().map(|a| a.verb()).collect()
    }

    #[test]
    fn a_job_runs_once_and_a_success_is_never_restarted() {
        let want = job("backup:1", None);
        let d = desired(&want);
        let jobs = JobTable::new();
        assert_eq!(verbs(&plan_at(&d, &[], &jobs, 1000)), ["create"]);

        let running = plan_at(
            &d,
            &[container(&want, ContainerState::Running)],
            &jobs,
            1000,
        );
        assert!(
            running.actions.is_empty() && running.settling.is_empty(),
            "{running}"
        );
        assert_eq!(running.jobs[0].state_name(), "running");
        assert!(
            running.recheck.is_some(),
            "a running job is looked at again"
        );

        // Exit 0, restart policy `always` (the default) notwithstanding.
        let done = plan_at(&d, &[ran(&want, 1000, 1030, 0)], &jobs, 1150);
        assert!(done.actions.is_empty(), "{done}");
        assert_eq!(done.jobs[0].describe(at(1150)), "succeeded 2m ago");
        assert!(done.finished[0].succeeded());
        assert_eq!(done.next_due(), None);
    }

    #[test]
    fn a_failing_job_is_retried_up_to_max_attempts_then_failed_until_rearmed() {
        let mut want = job("backup:1", None);
        want.max_attempts = Some(2);
        let d = desired(&want);
        let mut jobs = JobTable::new();
        let first = ran(&want, 1000, 1001, 3);
        let (changed, ended) = jobs.observe(&d, std::slice::from_ref(&first), NS, at(1002));
        assert!(changed);
        assert_eq!(ended[0].result, "failed");
        // Seen again: not counted again.
        assert!(jobs
            .observe(&d, std::slice::from_ref(&first), NS, at(1003))
            .1
            .is_empty());
        let retry = plan_at(&d, &[first], &jobs, 1003);
        assert_eq!(verbs(&retry), ["restart"]);
        assert_eq!(
            retry.jobs[0].describe(at(1003)),
            "attempt 1/2 failed (exit 3); retrying"
        );

        let second = ran(&want, 1004, 1005, 3);
        jobs.observe(&d, std::slice::from_ref(&second), NS, at(1006));
        let failed = plan_at(&d, std::slice::from_ref(&second), &jobs, 1006);
        assert!(failed.actions.is_empty(), "{failed}");
        assert_eq!(
            failed.held[0].reason,
            "failed after 2 attempts: exit 3 1s ago"
        );
        assert_eq!(failed.jobs[0].state_name(), "failed");

        assert_eq!(jobs.rearm("backup"), 1);
        assert_eq!(verbs(&plan_at(&d, &[second], &jobs, 1007)), ["restart"]);
    }

    #[test]
    fn a_changed_spec_runs_the_job_again() {
        let old = job("backup:1", None);
        let new = job("backup:2", None);
        let p = plan_at(
            &desired(&new),
            &[ran(&old, 1000, 1001, 0)],
            &JobTable::new(),
            2000,
        );
        assert_eq!(verbs(&p), ["remove", "create"]);
        assert!(p.to_string().contains("the job's spec changed"), "{p}");
    }

    #[test]
    fn a_scheduled_job_waits_created_for_its_slot_and_skips_a_slot_while_running() {
        let want = job("backup:1", Some("* * * * *"));
        let d = desired(&want);
        let mut jobs = JobTable::new();
        // Known since 1_000_010 s: the next minute slot is 1_000_020 (a multiple of 60).
        jobs.observe(&d, &[], NS, at(1_000_010));
        let created = container(&want, ContainerState::Created);
        let early = plan_at(&d, std::slice::from_ref(&created), &jobs, 1_000_015);
        assert!(early.actions.is_empty(), "{early}");
        assert_eq!(early.jobs[0].next_run, Some(at(1_000_020)));
        assert_eq!(
            early.next_trigger().map(|(t, why)| (t, why.name())),
            Some((at(1_000_020), "schedule"))
        );

        let due = plan_at(&d, &[created], &jobs, 1_000_020);
        assert_eq!(verbs(&due), ["start"]);
        assert_eq!(due.runs, std::slice::from_ref(&want.key));

        // Still running at the next slot: skipped, not overlapped.
        let long = ObservedContainer {
            started_at: Some(at(1_000_020)),
            ..container(&want, ContainerState::Running)
        };
        let busy = plan_at(&d, &[long], &jobs, 1_000_085);
        assert!(busy.actions.is_empty(), "{busy}");
        assert_eq!(busy.jobs[0].skipped, Some(at(1_000_080)));

        // Ended at 1_000_090: the next run is the first slot after that.
        let after = plan_at(&d, &[ran(&want, 1_000_020, 1_000_090, 0)], &jobs, 1_000_095);
        assert!(after.actions.is_empty(), "{after}");
        assert_eq!(after.jobs[0].next_run, Some(at(1_000_140)));
        assert!(
            after.finished.is_empty(),
            "a scheduled job is never finished"
        );
        let next = plan_at(&d, &[ran(&want, 1_000_020, 1_000_090, 0)], &jobs, 1_000_140);
        assert_eq!(verbs(&next), ["start"]);
    }

    #[test]
    fn a_new_spec_starts_a_fresh_record_and_records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = job("backup:1", None);
        let mut jobs = JobTable::new();
        jobs.observe(&desired(&v1), &[ran(&v1, 1, 2, 1)], NS, at(3));
        assert_eq!(jobs.get(&v1.key).map(|r| r.failures), Some(1));
        let mut store = JobStore::new(dir.path(), "t");
        store.save(&jobs);
        assert_eq!(JobStore::new(dir.path(), "t").load(), jobs);

        let v2 = job("backup:2", None);
        jobs.observe(&desired(&v2), &[ran(&v1, 1, 2, 1)], NS, at(4));
        let r = jobs.get(&v2.key).unwrap();
        assert_eq!((r.hash.as_str(), r.failures), (v2.hash.as_str(), 0));
        jobs.retain(|_| false);
        store.save(&jobs);
        assert!(!dir.path().join("jobs-t.json").exists());
    }
}

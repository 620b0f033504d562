//! Dependencies between tasks (`depends_on`), decided from what Docker
//! shows. Pure, used by the planner.
//!
//! Going up: a task's instances are created, started or updated only when
//! every dependency is `started` (each instance runs), `healthy` (each runs
//! and passes its healthcheck; without one, runs) or `completed` (a job
//! whose container exited 0). A dependency that failed (an update held, a
//! job out of attempts, a crash loop) holds its dependents with that reason.
//! Going down: a container is stopped for removal only after the running
//! containers that depend on its task (recorded in the `io.berth.depends-on`
//! label, so `berth down` knows without the manifests) are gone.
//!
//! Work already done is not undone: a running dependent is left alone when
//! its dependency stops being ready; only its next create, start or update
//! waits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::desired::state::{DesiredInstance, DesiredState};
use crate::engine::backoff::BackoffTable;
use crate::engine::holds::HeldSpec;
use crate::engine::jobs::{self, JobStep, JobTable};
use crate::engine::retry::ONCE_MAX_FAILURES;
use crate::manifest::{DependencyCondition, TaskKind};
use crate::names::{labels, InstanceKey};
use crate::runtime::{ContainerState, Health, ObservedContainer};

/// How far one task has come, for its dependents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Every instance's container runs.
    pub started: bool,
    /// ...and none is unhealthy or still starting its healthcheck.
    pub healthy: bool,
    /// A job whose every instance exited 0 with its current spec.
    pub completed: bool,
    /// Why it failed for good, when it did.
    pub failed: Option<String>,
    /// Why it is not there at all (not selected, not resolvable).
    pub absent: Option<String>,
}

/// An instance whose work waits for a dependency, or is held by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub key: InstanceKey,
    /// `waiting for db (healthy)`, `held: db failed: ...`,
    /// `stops after its dependents: web`.
    pub reason: String,
    /// True when waiting cannot help (a dependency failed).
    pub held: bool,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.key, self.reason)
    }
}

/// What berth remembers that tells a failure: restart history, held
/// updates, jobs' attempts.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    pub backoff: &'a BackoffTable,
    pub held: &'a BTreeMap<InstanceKey, HeldSpec>,
    pub jobs: &'a JobTable,
}

/// Every task's readiness, from the desired set and the containers.
pub fn readiness(
    desired: &DesiredState,
    observed: &[ObservedContainer],
    history: History<'_>,
    namespace: &str,
    zone: &jiff::tz::TimeZone,
    now: std::time::SystemTime,
) -> BTreeMap<String, Readiness> {
    // Only tasks something depends on are worth working out.
    let wanted: BTreeSet<&str> = desired
        .instances
        .values()
        .flat_map(|w| w.depends_on.keys().map(String::as_str))
        .collect();
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return out;
    }
    let canonical: BTreeMap<&str, &ObservedContainer> = observed
        .iter()
        .filter(|c| c.namespace() == Some(namespace))
        .map(|c| (c.name.as_str(), c))
        .collect();
    for task in wanted {
        let mut r = Readiness {
            started: true,
            healthy: true,
            completed: true,
            ..Readiness::default()
        };
        if !desired.tasks.contains(task) {
            r = Readiness {
                absent: Some(format!("{task} is not defined for this agent")),
                ..Readiness::default()
            };
            out.insert(task.to_string(), r);
            continue;
        }
        if desired.held_tasks.contains(task) {
            r = Readiness {
                absent: Some(format!("{task} cannot be resolved now")),
                ..Readiness::default()
            };
            out.insert(task.to_string(), r);
            continue;
        }
        let instances = desired
            .instances
            .range(InstanceKey::new(task, 0)..=InstanceKey::new(task, u32::MAX));
        for (key, want) in instances {
            let c = canonical.get(key.container_name(namespace).as_str());
            let running = c.is_some_and(|c| c.state == ContainerState::Running);
            let healthy =
                running && c.is_some_and(|c| matches!(c.health, Health::Healthy | Health::None));
            let completed = want.kind == TaskKind::Job
                && c.is_some_and(|c| {
                    c.state == ContainerState::Exited
                        && c.exit_code == Some(0)
                        && c.spec_hash() == Some(want.hash.as_str())
                });
            // A job that already succeeded has started, and was healthy.
            r.started &= running || completed;
            r.healthy &= healthy || completed;
            r.completed &= completed;
            if r.failed.is_none() {
                r.failed = failure(want, c.copied(), history, zone, now);
            }
        }
        if r.started || r.completed {
            // Ready is ready: a past failure that no longer shows does not hold.
            r.failed = None;
        }
        out.insert(task.to_string(), r);
    }
    out
}

/// Why an instance failed for good, if it did.
fn failure(
    want: &std::sync::Arc<DesiredInstance>,
    c: Option<&ObservedContainer>,
    history: History<'_>,
    zone: &jiff::tz::TimeZone,
    now: std::time::SystemTime,
) -> Option<String> {
    if let Some(h) = history.held.get(&want.key).filter(|h| h.hash == want.hash) {
        return Some(h.reason.clone());
    }
    if want.kind == TaskKind::Job {
        let c = c.filter(|c| c.spec_hash() == Some(want.hash.as_str()))?;
        return match jobs::decide(want, c, history.jobs, zone, None, now).0 {
            JobStep::Failed(why) => Some(format!("job {why}")),
            _ => None,
        };
    }
    let b = history.backoff.get(&want.key)?;
    let crash_looping = b.failures >= ONCE_MAX_FAILURES || b.permanent;
    let up = c.is_some_and(|c| c.state == ContainerState::Running);
    (crash_looping && !up).then(|| {
        let why = b.last_error.clone().unwrap_or_else(|| "failed".into());
        if b.permanent {
            why
        } else {
            format!("{why}, {} times", b.failures)
        }
    })
}

/// The first dependency of `want` that is not ready, as a [`Blocked`].
pub fn unmet(want: &DesiredInstance, ready: &BTreeMap<String, Readiness>) -> Option<Blocked> {
    for (dep, condition) in &want.depends_on {
        let Some(r) = ready.get(dep) else { continue };
        let met = match condition {
            DependencyCondition::Started => r.started,
            DependencyCondition::Healthy => r.healthy,
            DependencyCondition::Completed => r.completed,
        };
        if met {
            continue;
        }
        let condition = match condition {
            DependencyCondition::Started => "started",
            DependencyCondition::Healthy => "healthy",
            DependencyCondition::Completed => "completed",
        };
        if let Some(why) = &r.failed {
            return Some(Blocked {
                key: want.key.clone(),
                reason: format!("held: {dep} failed: {why}"),
                held: true,
            });
        }
        let reason = match &r.absent {
            Some(why) => format!("waiting for {dep} ({condition}): {why}"),
            None => format!("waiting for {dep} ({condition})"),
        };
        return Some(Blocked {
            key: want.key.clone(),
            reason,
            held: false,
        });
    }
    None
}

/// The tasks a container said it depends on when berth created it.
pub fn recorded_dependencies(c: &ObservedContainer) -> impl Iterator<Item = &str> {
    c.labels
        .get(labels::DEPENDS_ON)
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
}

/// The label value recording `want`'s dependencies (`db,cache`), if any.
pub fn dependencies_label(want: &DesiredInstance) -> Option<String> {
    (!want.depends_on.is_empty()).then(|| {
        want.depends_on
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// For each task, the tasks of running containers that depend on it and
/// are themselves on their way out (not desired): a removal of the task's
/// containers waits for them. A dependent that stays desired does not hold
/// a removal (it would hold it for ever).
pub fn leaving_dependents<'a>(
    desired: &DesiredState,
    observed: &'a [ObservedContainer],
    namespace: &str,
) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in observed
        .iter()
        .filter(|c| c.namespace() == Some(namespace) && c.is_running())
    {
        let Some(task) = c.labels.get(labels::TASK) else {
            continue;
        };
        let desired_here = c.key().is_some_and(|k| desired.instances.contains_key(&k));
        if desired_here {
            continue;
        }
        for dep in recorded_dependencies(c) {
            if dep != task {
                out.entry(dep).or_default().insert(task.as_str());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::desired::spec::ContainerSpec;
    use crate::engine::plan::{plan, Memory, Plan, PlanOptions};

    const NS: &str = "t";

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn task(name: &str, deps: &[(&str, DependencyCondition)]) -> DesiredInstance {
        let mut d = DesiredInstance::new(
            InstanceKey::new(name, 0),
            ContainerSpec::for_image(format!("{name}:1")),
            format!("{name}.yaml"),
        );
        d.depends_on = deps.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        d
    }

    fn job(name: &str) -> DesiredInstance {
        let mut d = task(name, &[]);
        d.kind = TaskKind::Job;
        d
    }

    fn world(list: &[&DesiredInstance]) -> DesiredState {
        let mut d = DesiredState::default();
        for i in list {
            d.insert((*i).clone());
        }
        d
    }

    fn container(d: &DesiredInstance, state: ContainerState, health: Health) -> ObservedContainer {
        let mut labels = BTreeMap::from([
            (labels::NAMESPACE.to_string(), NS.to_string()),
            (labels::TASK.to_string(), d.key.task.clone()),
            (labels::INDEX.to_string(), d.key.index.to_string()),
            (labels::SPEC_HASH.to_string(), d.hash.clone()),
        ]);
        if let Some(deps) = dependencies_label(d) {
            labels.insert(labels::DEPENDS_ON.to_string(), deps);
        }
        ObservedContainer {
            id: format!("id-{}", d.key),
            name: d.key.container_name(NS),
            image: d.spec.image.clone(),
            labels,
            state,
            health,
            exit_code: None,
            started_at: Some(now() - Duration::from_secs(60)),
            finished_at: None,
            host: Default::default(),
        }
    }

    fn exited(d: &DesiredInstance, code: i64) -> ObservedContainer {
        ObservedContainer {
            exit_code: Some(code),
            finished_at: Some(now() - Duration::from_secs(10)),
            host: Default::default(),
            ..container(d, ContainerState::Exited, Health::None)
        }
    }

    fn plan_with(
        desired: &DesiredState,
        observed: &[ObservedContainer],
        memory: Memory<'_>,
    ) -> Plan {
        let options = PlanOptions {
            zone: jiff::tz::TimeZone::UTC,
            ..PlanOptions::new(NS)
        };
        plan(desired, observed, memory, now(), &options)
    }

    fn plan_now(desired: &DesiredState, observed: &[ObservedContainer]) -> Plan {
        plan_with(desired, observed, Memory::of(&BackoffTable::new()))
    }

    fn verbs(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .map(|a| format!("{} {}", a.verb(), a.key()))
            .collect()
    }

    #[test]
    fn a_dependent_is_created_only_once_its_dependency_is_healthy() {
        let db = task("db", &[]);
        let web = task("web", &[("db", DependencyCondition::Healthy)]);
        let d = world(&[&db, &web]);

        let empty = plan_now(&d, &[]);
        assert_eq!(verbs(&empty), ["create db[0]"]);
        assert_eq!(empty.blocked.len(), 1);
        assert_eq!(empty.blocked[0].reason, "waiting for db (healthy)");
        assert!(!empty.blocked[0].held);
        assert!(
            empty.next_due().is_some(),
            "looked at again without an event"
        );

        let starting = plan_now(
            &d,
            &[container(&db, ContainerState::Running, Health::Starting)],
        );
        assert!(starting.actions.is_empty(), "{starting}");
        assert_eq!(starting.blocked[0].reason, "waiting for db (healthy)");

        let healthy = plan_now(
            &d,
            &[container(&db, ContainerState::Running, Health::Healthy)],
        );
        assert_eq!(verbs(&healthy), ["create web[0]"]);
        assert!(healthy.blocked.is_empty());

        // Without a healthcheck, running is healthy.
        let plain = plan_now(&d, &[container(&db, ContainerState::Running, Health::None)]);
        assert_eq!(verbs(&plain), ["create web[0]"]);
    }

    #[test]
    fn started_needs_every_instance_running_and_completed_a_job_that_exited_zero() {
        let db0 = task("db", &[]);
        let mut db1 = task("db", &[]);
        db1.key = InstanceKey::new("db", 1);
        let web = task("web", &[("db", DependencyCondition::Started)]);
        let d = world(&[&db0, &db1, &web]);
        let one = plan_now(
            &d,
            &[container(&db0, ContainerState::Running, Health::Starting)],
        );
        assert_eq!(verbs(&one), ["create db[1]"], "{one}");
        let both = plan_now(
            &d,
            &[
                container(&db0, ContainerState::Running, Health::Starting),
                container(&db1, ContainerState::Running, Health::Starting),
            ],
        );
        assert!(
            verbs(&both).contains(&"create web[0]".to_string()),
            "{both}"
        );

        let migrate = job("migrate");
        let app = task("app", &[("migrate", DependencyCondition::Completed)]);
        let d = world(&[&migrate, &app]);
        let running = plan_now(
            &d,
            &[container(&migrate, ContainerState::Running, Health::None)],
        );
        assert!(running.actions.is_empty(), "{running}");
        assert_eq!(running.blocked[0].reason, "waiting for migrate (completed)");
        let done = plan_now(&d, &[exited(&migrate, 0)]);
        assert_eq!(verbs(&done), ["create app[0]"]);
    }

    #[test]
    fn a_failed_dependency_holds_its_dependents_with_its_reason() {
        let migrate = job("migrate");
        let app = task("app", &[("migrate", DependencyCondition::Completed)]);
        let d = world(&[&migrate, &app]);
        let mut jobs = JobTable::new();
        let world_now = [exited(&migrate, 1)];
        for _ in 0..3 {
            // Three distinct exits: three failed attempts.
            let mut c = world_now[0].clone();
            c.finished_at = c.finished_at.map(|t| {
                t + Duration::from_secs(u64::from(jobs.get(&migrate.key).map_or(0, |r| r.failures)))
            });
            jobs.observe(&d, &[c], NS, now());
        }
        let backoff = BackoffTable::new();
        let p = plan_with(
            &d,
            &world_now,
            Memory {
                jobs: &jobs,
                ..Memory::of(&backoff)
            },
        );
        assert!(p.actions.is_empty(), "{p}");
        let held = p
            .blocked
            .iter()
            .find(|b| b.key.task == "app")
            .expect("app held");
        assert!(held.held);
        assert_eq!(
            held.reason,
            "held: migrate failed: job failed after 3 attempts: exit 1 10s ago"
        );

        // A held update of a service holds its dependents too.
        let db = task("db", &[]);
        let web = task("web", &[("db", DependencyCondition::Started)]);
        let d = world(&[&db, &web]);
        let held_specs = BTreeMap::from([(
            db.key.clone(),
            HeldSpec {
                hash: db.hash.clone(),
                reason: "update held: rolled back: exited with code 1 after 2.0s".into(),
            },
        )]);
        let mut old_db = container(&db, ContainerState::Exited, Health::None);
        old_db.labels.insert(labels::SPEC_HASH.into(), "old".into());
        let p = plan_with(
            &d,
            &[old_db],
            Memory {
                held: &held_specs,
                ..Memory::of(&backoff)
            },
        );
        let web_held = p
            .blocked
            .iter()
            .find(|b| b.key.task == "web")
            .expect("web held");
        assert!(
            web_held
                .reason
                .starts_with("held: db failed: update held: rolled back"),
            "{web_held}"
        );
    }

    #[test]
    fn a_running_dependent_is_left_alone_when_its_dependency_goes_away() {
        let db = task("db", &[]);
        let web = task("web", &[("db", DependencyCondition::Healthy)]);
        let d = world(&[&db, &web]);
        let p = plan_now(
            &d,
            &[
                container(&web, ContainerState::Running, Health::None),
                container(&db, ContainerState::Running, Health::Unhealthy),
            ],
        );
        assert_eq!(verbs(&p), ["restart-unhealthy db[0]"], "{p}");
        assert!(p.blocked.is_empty());
    }

    #[test]
    fn removals_stop_dependents_first() {
        let db = task("db", &[]);
        let cache = task("cache", &[]);
        let web = task(
            "web",
            &[
                ("db", DependencyCondition::Healthy),
                ("cache", DependencyCondition::Started),
            ],
        );
        let all = [
            container(&db, ContainerState::Running, Health::None),
            container(&cache, ContainerState::Running, Health::None),
            container(&web, ContainerState::Running, Health::None),
        ];
        let down = plan_now(&DesiredState::default(), &all);
        assert_eq!(verbs(&down), ["remove web[0]"], "{down}");
        let waits: Vec<String> = down.blocked.iter().map(ToString::to_string).collect();
        assert_eq!(
            waits,
            [
                "cache[0] (stops after its dependents: web)",
                "db[0] (stops after its dependents: web)"
            ]
        );
        // Once web is gone (or merely stopped), the rest goes.
        let stopped_web = container(&web, ContainerState::Exited, Health::None);
        let next = plan_now(
            &DesiredState::default(),
            &[all[0].clone(), all[1].clone(), stopped_web],
        );
        assert_eq!(
            verbs(&next),
            ["remove cache[0]", "remove db[0]", "remove web[0]"]
        );
        // A dependent that stays desired does not hold a removal for ever.
        let keep_web = plan_now(&world(&[&web]), &all);
        assert_eq!(
            verbs(&keep_web),
            ["remove cache[0]", "remove db[0]"],
            "{keep_web}"
        );
    }

    #[test]
    fn a_dependency_not_defined_here_is_named_in_the_wait() {
        let web = task("web", &[("db", DependencyCondition::Started)]);
        let p = plan_now(&world(&[&web]), &[]);
        assert_eq!(
            p.blocked[0].reason,
            "waiting for db (started): db is not defined for this agent"
        );
    }
}

//! Properties of `depends_on` and jobs over the in-memory runtime (no Docker
//! here): for any acyclic set of tasks, services and jobs, with random
//! conditions and random health verdicts,
//!
//! - going up, no instance is ever created or started while a dependency of
//!   its task is not ready in the world the plan was made from;
//! - the host converges: every service runs, every job exited 0, and a
//!   succeeded job is never started again;
//! - going down (a plan over an empty desired set, as `berth down`), no
//!   container is stopped while a running container still depends on its
//!   task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth::clock::Clock;
use berth::desired::spec::ContainerSpec;
use berth::desired::state::{DesiredInstance, DesiredState};
use berth::engine::apply::Executor;
use berth::engine::backoff::BackoffTable;
use berth::engine::jobs::JobTable;
use berth::engine::plan::{plan, Action, Memory, PlanOptions};
use berth::engine::pulls::{LogPulls, Pulls};
use berth::manifest::{DependencyCondition, TaskKind};
use berth::names::labels;
use berth::runtime::fake::FakeRuntime;
use berth::runtime::{ContainerRuntime, ContainerState, Health, ObservedContainer};
use proptest::prelude::*;

const NS: &str = "deps";

/// Task i: (is a job, count 1..=2 for services, deps on lower-numbered
/// tasks as (task, condition 0..3)).
#[derive(Debug, Clone)]
struct TaskCase {
    job: bool,
    count: u32,
    deps: Vec<(usize, u8)>,
}

fn cases() -> impl Strategy<Value = Vec<TaskCase>> {
    prop::collection::vec(
        (
            any::<bool>(),
            1u32..=2,
            prop::collection::vec((0usize..8, 0u8..3), 0..3),
        ),
        1..7,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (job, count, deps))| TaskCase {
                job,
                count: if job { 1 } else { count },
                // Only lower-numbered tasks: acyclic by construction.
                deps: deps
                    .into_iter()
                    .filter(|(d, _)| *d < i)
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect(),
            })
            .collect()
    })
}

fn name(i: usize) -> String {
    format!("t{i}")
}

fn desired(cases: &[TaskCase]) -> DesiredState {
    let mut d = DesiredState::default();
    for (i, case) in cases.iter().enumerate() {
        for index in 0..case.count {
            let spec = ContainerSpec::for_image("img:1");
            let mut w = DesiredInstance::new(
                berth::names::InstanceKey::new(name(i), index),
                spec,
                format!("{}.yaml", name(i)),
            );
            w.kind = if case.job {
                TaskKind::Job
            } else {
                TaskKind::Service
            };
            for (dep, condition) in &case.deps {
                // `completed` only names jobs, as validation demands.
                let condition = match (condition, cases[*dep].job) {
                    (2, true) => DependencyCondition::Completed,
                    (1, _) => DependencyCondition::Healthy,
                    _ => DependencyCondition::Started,
                };
                w.depends_on.insert(name(*dep), condition);
            }
            d.insert(w);
        }
    }
    d
}

/// Whether `task`'s every instance meets `condition` in `observed`.
fn ready(
    d: &DesiredState,
    observed: &[ObservedContainer],
    task: &str,
    condition: DependencyCondition,
) -> bool {
    d.instances
        .values()
        .filter(|w| w.key.task == task)
        .all(|w| {
            let c = observed.iter().find(|c| c.name == w.key.container_name(NS));
            let running = c.is_some_and(|c| c.state == ContainerState::Running);
            let healthy = running
                && c.is_some_and(|c| c.health != Health::Starting && c.health != Health::Unhealthy);
            // A job that succeeded has started and was healthy.
            let completed = w.kind == TaskKind::Job
                && c.is_some_and(|c| c.state == ContainerState::Exited && c.exit_code == Some(0));
            match condition {
                DependencyCondition::Started => running || completed,
                DependencyCondition::Healthy => healthy || completed,
                DependencyCondition::Completed => completed,
            }
        })
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

async fn apply(rt: &Arc<FakeRuntime>, actions: Vec<Action>) {
    let pulls = Pulls::new(3, Arc::new(LogPulls));
    let outcomes = Executor::new(rt.clone(), NS, 3, pulls, Clock::System)
        .apply(actions)
        .await;
    for o in outcomes {
        assert!(o.result.is_ok(), "{} {}: {:?}", o.verb, o.key, o.result);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dependencies_are_ready_before_dependents_start_and_stop_after_them(
        cases in cases(),
        health_seed in any::<u64>(),
    ) {
        let rt_inner = FakeRuntime::new();
        rt_inner.add_image("img:1");
        let rt = Arc::new(rt_inner);
        let d = desired(&cases);
        let options = PlanOptions { zone: jiff::tz::TimeZone::UTC, ..PlanOptions::new(NS) };
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let backoff = BackoffTable::new();
        let mut jobs = JobTable::new();
        let mut starts: BTreeMap<String, u32> = BTreeMap::new();
        let mut converged = false;
        for round in 0..40u64 {
            let observed = tokio.block_on(rt.list(NS)).unwrap();
            jobs.observe(&d, &observed, NS, now());
            let p = plan(&d, &observed, Memory { jobs: &jobs, ..Memory::of(&backoff) }, now(), &options);
            for action in &p.actions {
                let (Action::Create { desired: w } | Action::Start { desired: w, .. }) = action else {
                    continue;
                };
                for (dep, condition) in &w.depends_on {
                    prop_assert!(
                        ready(&d, &observed, dep, *condition),
                        "{} acted on while {dep} is not {condition:?}", action
                    );
                }
                *starts.entry(w.key.to_string()).or_default() += 1;
            }
            if p.actions.is_empty() && p.blocked.is_empty() && p.settling.is_empty() {
                converged = true;
                break;
            }
            tokio.block_on(apply(&rt, p.actions));
            // The world moves on: jobs finish, and healthchecks give their
            // verdict (some only a round later).
            for c in rt.all() {
                let task = c.labels.get(labels::TASK).cloned().unwrap_or_default();
                let i: usize = task.trim_start_matches('t').parse().unwrap_or(0);
                if c.state != ContainerState::Running {
                    continue;
                }
                if cases[i].job {
                    rt.exit(&c.id, 0, now());
                } else if c.health == Health::None && (health_seed >> ((i as u64 + round) % 64)) & 1 == 1 {
                    rt.set_health(&c.id, Health::Starting);
                } else {
                    rt.set_health(&c.id, Health::Healthy);
                }
            }
        }
        prop_assert!(converged, "did not converge: {cases:?}");
        for (i, case) in cases.iter().enumerate() {
            for index in 0..case.count {
                let c = rt.all().into_iter().find(|c| c.name == format!("{NS}-{}-{index}", name(i)));
                let c = c.expect("every instance has a container");
                if case.job {
                    prop_assert_eq!(c.state, ContainerState::Exited);
                    prop_assert_eq!(starts.get(&format!("{}[{index}]", name(i))).copied(), Some(1), "a job ran once");
                } else {
                    prop_assert_eq!(c.state, ContainerState::Running);
                }
            }
        }

        // Down: a plan over nothing, round after round.
        for _ in 0..20 {
            let observed = tokio.block_on(rt.list(NS)).unwrap();
            let p = plan(&DesiredState::default(), &observed, Memory::of(&backoff), now(), &options);
            if p.actions.is_empty() {
                prop_assert!(p.blocked.is_empty(), "{p}");
                break;
            }
            let running_dependents: BTreeSet<String> = observed
                .iter()
                .filter(|c| c.state == ContainerState::Running)
                .flat_map(|c| {
                    c.labels
                        .get(labels::DEPENDS_ON)
                        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .collect();
            for action in &p.actions {
                if let Action::Remove { key, id, .. } = action {
                    let running = observed.iter().any(|c| &c.id == id && c.state == ContainerState::Running);
                    prop_assert!(
                        !(running && running_dependents.contains(&key.task)),
                        "{key} stopped while a running container depends on it"
                    );
                }
            }
            tokio.block_on(apply(&rt, p.actions));
        }
        prop_assert!(tokio.block_on(rt.list(NS)).unwrap().is_empty());
    }
}

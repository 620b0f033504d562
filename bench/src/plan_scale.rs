//! Hand-built worlds for timing the pure planner, with no Docker: `n` desired
//! tasks and an observed state that is either converged (every container
//! running with the right spec hash) or fully diverged (every container
//! running with a stale hash, so every task needs a replacement).
//!
//! Shared by `berth-bench` and the criterion bench `benches/plan.rs` (which
//! includes this file by path), so both time exactly the same inputs.

use std::collections::BTreeMap;
use std::time::SystemTime;

use berth::desired::spec::{ContainerSpec, EnvEntry};
use berth::desired::state::{DesiredInstance, DesiredState};
use berth::engine::backoff::BackoffTable;
use berth::engine::plan::{Memory, PlanOptions};
use berth::names::InstanceKey;
use berth::runtime::{ContainerState, Health, ObservedContainer};

pub const NAMESPACE: &str = "berth";

/// How the observed containers relate to the desired tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// Every task runs with its current spec: the plan is empty.
    Converged,
    /// Every task runs with an outdated spec: the plan replaces all of them.
    Diverged,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Converged => "converged",
            World::Diverged => "diverged",
        }
    }
}

/// Everything `plan()` takes, for `n` single-instance tasks.
pub struct PlanInput {
    pub desired: DesiredState,
    pub observed: Vec<ObservedContainer>,
    pub backoff: BackoffTable,
    pub now: SystemTime,
    pub options: PlanOptions,
}

fn spec_for(task: &str, version: &str) -> ContainerSpec {
    let mut spec = ContainerSpec::for_image("berth-fixture:bench");
    spec.cmd = Some(vec!["sleep".into(), "forever".into()]);
    let env = |v: &str| EnvEntry {
        value: v.to_string(),
        secret: false,
    };
    spec.env.insert("BERTH_TASK".into(), env(task));
    spec.env.insert("BERTH_INDEX".into(), env("0"));
    spec.env.insert("BERTH_NAMESPACE".into(), env(NAMESPACE));
    spec.env.insert("VERSION".into(), env(version));
    spec.labels.insert("group".into(), "bench".into());
    spec
}

/// `n` tasks named `task-00000` ..., one instance each, and their containers.
pub fn build(n: usize, world: World) -> PlanInput {
    let mut desired = DesiredState::default();
    let mut observed = Vec::with_capacity(n);
    for i in 0..n {
        let task = format!("task-{i:05}");
        let key = InstanceKey::new(task.clone(), 0);
        let manifest = format!("{task}.yaml");
        let want = DesiredInstance::new(key.clone(), spec_for(&task, "1"), manifest.clone());
        let running_spec = match world {
            World::Converged => want.spec.clone(),
            World::Diverged => spec_for(&task, "0"),
        };
        let labels: BTreeMap<String, String> =
            running_spec.container_labels(NAMESPACE, &key, &manifest);
        observed.push(ObservedContainer {
            id: format!("{:064x}", i + 1),
            name: key.container_name(NAMESPACE),
            image: running_spec.image.clone(),
            labels,
            state: ContainerState::Running,
            health: Health::None,
            exit_code: None,
            started_at: Some(SystemTime::UNIX_EPOCH),
            finished_at: None,
            host: Default::default(),
        });
        desired.insert(want);
    }
    PlanInput {
        desired,
        observed,
        backoff: BackoffTable::new(),
        now: SystemTime::now(),
        options: PlanOptions::new(NAMESPACE),
    }
}

impl PlanInput {
    /// Run the planner once; returns the number of actions (so the work
    /// cannot be optimised away).
    pub fn plan(&self) -> usize {
        berth::engine::plan::plan(
            &self.desired,
            &self.observed,
            Memory::of(&self.backoff),
            self.now,
            &self.options,
        )
        .actions
        .len()
    }
}

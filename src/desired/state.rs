//! Everything the folder asks for in one pass, fully resolved: the planner's
//! "desired" side. Built by the controller from the folder, ports,
//! credentials and resolution; read by the planner and image cleanup.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::desired::applied::AppliedSpec;
use crate::desired::digest_key::DigestKey;
use crate::desired::registry::RegistryCredentials;
use crate::desired::spec::ContainerSpec;
use crate::manifest::{DependencyCondition, PullPolicy, RestartSpec, TaskKind, UpdateSpec};
use crate::names::InstanceKey;

/// One instance berth wants to run, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredInstance {
    pub key: InstanceKey,
    pub spec: ContainerSpec,
    /// The spec hash, computed once: [`ContainerSpec::hash`], or with the
    /// host's key ([`DesiredInstance::with_digest_key`]) its keyed form.
    pub hash: String,
    /// The secret-free record of the spec, for the `io.berth.applied` label
    /// and plan's field diffs; its secret digests are keyed like `hash`.
    pub record: AppliedSpec,
    /// The manifest file, relative to the manifest folder (a label, not hashed).
    pub manifest: String,
    pub restart: RestartSpec,
    pub pull: PullPolicy,
    pub credentials: Option<RegistryCredentials>,
    /// Grace period between SIGTERM and SIGKILL when stopping.
    pub stop_grace: Duration,
    /// How a changed spec replaces the running container (not hashed).
    pub update: UpdateSpec,
    /// Tasks this one waits for, and for what.
    pub depends_on: BTreeMap<String, DependencyCondition>,
    /// Service or job, with a job's schedule and attempts (not hashed).
    pub kind: TaskKind,
    pub schedule: Option<String>,
    pub max_attempts: Option<u32>,
    /// The git commit the task's manifest was read from (a label, not
    /// hashed: a new commit that leaves the spec alone replaces nothing).
    pub source_commit: Option<String>,
}

impl DesiredInstance {
    /// Hash and record the spec with the host's digest key, as the agent
    /// labels containers.
    pub fn with_digest_key(mut self, key: &DigestKey) -> Self {
        self.hash = self.spec.keyed_hash(key);
        self.record = AppliedSpec::of(&self.spec, Some(key));
        self
    }

    pub fn new(key: InstanceKey, spec: ContainerSpec, manifest: impl Into<String>) -> Self {
        let hash = spec.hash();
        let record = AppliedSpec::of(&spec, None);
        DesiredInstance {
            key,
            record,
            stop_grace: spec.stop_grace(),
            spec,
            hash,
            manifest: manifest.into(),
            restart: RestartSpec::default(),
            pull: PullPolicy::default(),
            credentials: None,
            update: UpdateSpec::default(),
            depends_on: BTreeMap::new(),
            kind: TaskKind::default(),
            schedule: None,
            max_attempts: None,
            source_commit: None,
        }
    }
}

/// Everything the folder asks for in this pass.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub instances: BTreeMap<InstanceKey, Arc<DesiredInstance>>,
    /// Every task the folder defines, including those with `count: 0`.
    pub tasks: BTreeSet<String>,
    /// Tasks whose spec could not be resolved this pass (say, an env file is
    /// unreadable): their containers are left exactly as they are.
    pub held_tasks: BTreeSet<String>,
    /// Manifest files that fail and have no last good version. While there
    /// is one, no container is removed as "task deleted": berth cannot know
    /// which tasks the broken file defines.
    pub protected_files: BTreeSet<String>,
    /// The folder itself could not be read: nothing is removed at all.
    pub hold_removals: bool,
    /// The image of every task the folder defines, held tasks included, so
    /// image cleanup never removes what a task on hold will need again.
    pub images: BTreeSet<String>,
}

impl DesiredState {
    pub fn insert(&mut self, instance: DesiredInstance) {
        self.tasks.insert(instance.key.task.clone());
        self.images.insert(instance.spec.image.clone());
        self.instances
            .insert(instance.key.clone(), Arc::new(instance));
    }
}

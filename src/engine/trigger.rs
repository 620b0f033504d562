//! Why the loop looks again. One type for every source (folder, Docker
//! events, timers, signals, finished work), carried into the pass's span.
//! A trigger carries no state the pass depends on: every pass looks at
//! everything, and many triggers coalesce into one pass.

use std::fmt;

use crate::names::InstanceKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The first pass after start.
    Startup,
    /// Something changed in the manifest folder.
    ManifestsChanged,
    /// The git source switched to a new commit.
    SourceChanged { commit: String },
    /// Docker reported an event for one of berth's containers (a hint).
    DockerEvent { task: Option<String> },
    /// The periodic resync, or Docker's event stream came back.
    Resync,
    /// A backoff or settle time is over.
    BackoffDue,
    /// A job's scheduled run is due.
    Scheduled { task: String },
    /// SIGHUP: re-read the agent config, then look again.
    Reload,
    /// An instance's chain of actions ended.
    WorkDone { key: InstanceKey },
    /// `berth retry TASK`: try the task's held updates again.
    Retry { task: String },
}

impl Trigger {
    /// A short name for logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::ManifestsChanged => "manifests",
            Trigger::SourceChanged { .. } => "source",
            Trigger::DockerEvent { .. } => "docker-event",
            Trigger::Resync => "resync",
            Trigger::BackoffDue => "backoff",
            Trigger::Scheduled { .. } => "schedule",
            Trigger::Reload => "reload",
            Trigger::WorkDone { .. } => "work-done",
            Trigger::Retry { .. } => "retry",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::DockerEvent { task: Some(task) } => write!(f, "docker-event({task})"),
            Trigger::WorkDone { key } => write!(f, "work-done({key})"),
            Trigger::Retry { task } => write!(f, "retry({task})"),
            Trigger::Scheduled { task } => write!(f, "schedule({task})"),
            Trigger::SourceChanged { commit } => {
                write!(f, "source({})", commit.chars().take(7).collect::<String>())
            }
            other => f.write_str(other.name()),
        }
    }
}

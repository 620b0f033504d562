//! The vocabulary every layer shares: an instance's identity, the names of
//! its containers, the labels berth owns, and the default stop grace. It
//! depends on nothing else in berth, so nothing forms a cycle through it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Labels berth sets on every container it owns.
pub mod labels {
    pub const PREFIX: &str = "io.berth.";
    pub const NAMESPACE: &str = "io.berth.namespace";
    pub const TASK: &str = "io.berth.task";
    pub const INDEX: &str = "io.berth.index";
    pub const SPEC_HASH: &str = "io.berth.spec-hash";
    pub const MANIFEST: &str = "io.berth.manifest";
    /// The applied spec without secrets (see `desired::applied`), for field diffs.
    pub const APPLIED: &str = "io.berth.applied";
    /// `io.berth.port.<label>` holds the host port allocated to a port label.
    pub const PORT_PREFIX: &str = "io.berth.port.";
    /// The task's stop grace in seconds, so removals honour it after the
    /// manifest is gone.
    pub const STOP_TIMEOUT: &str = "io.berth.stop-timeout";
}

/// How long a stop waits before SIGKILL when nothing better is known:
/// Docker's own default. Every stop berth makes goes through
/// `ContainerSpec::stop_grace` or a container's recorded grace, so this is
/// the one place the number is written.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Identity of one instance of a task: (task, index). With the namespace it
/// gives the container's name, which makes creation idempotent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    pub task: String,
    pub index: u32,
}

impl InstanceKey {
    pub fn new(task: impl Into<String>, index: u32) -> Self {
        InstanceKey {
            task: task.into(),
            index,
        }
    }

    /// The canonical container name, `<namespace>-<task>-<index>`.
    pub fn container_name(&self, namespace: &str) -> String {
        format!("{namespace}-{}-{}", self.task, self.index)
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.task, self.index)
    }
}

/// The name a replacement gives the old container while the new one starts.
/// It embeds the id so two interrupted replacements can never collide.
pub fn aside_name(canonical: &str, id: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("{canonical}-old-{short}")
}

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
    /// The git commit a container's manifest came from (git source only).
    /// Set when the container is created; a later commit that leaves the
    /// spec unchanged leaves the container, and this label, alone.
    pub const SOURCE_COMMIT: &str = "io.berth.source-commit";
    /// The applied spec without secrets (see `desired::applied`), for field diffs.
    pub const APPLIED: &str = "io.berth.applied";
    /// `io.berth.port.<label>` holds the host port allocated to a port label.
    pub const PORT_PREFIX: &str = "io.berth.port.";
    /// The task's stop grace in seconds, so removals honour it after the
    /// manifest is gone.
    pub const STOP_TIMEOUT: &str = "io.berth.stop-timeout";
    /// On a staged new container: `<old id>:running|stopped`, the container
    /// it replaces and whether that one ran, for a restore after a crash.
    pub const REPLACING: &str = "io.berth.replacing";
    /// The tasks this container's task depends on (`db,cache`), so removal
    /// and `berth down` stop dependents first without the manifests.
    pub const DEPENDS_ON: &str = "io.berth.depends-on";
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

/// The instance a canonical container name `<namespace>-<task>-<index>`
/// stands for, if `name` is one in `namespace`. Task names follow the
/// manifest's rule (lowercase letters, digits, `-`).
pub fn parse_container_name(name: &str, namespace: &str) -> Option<InstanceKey> {
    let rest = name.strip_prefix(namespace)?.strip_prefix('-')?;
    let (task, index) = rest.rsplit_once('-')?;
    let valid_task = !task.is_empty()
        && task.len() <= 48
        && task
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !task.starts_with('-')
        && !task.ends_with('-');
    let digits = !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit());
    (valid_task && digits)
        .then(|| index.parse().ok())
        .flatten()
        .map(|index| InstanceKey::new(task, index))
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.task, self.index)
    }
}

/// Where a replacement moves the old container while the new one takes
/// over: `<canonical>-old-<id12>`, with `-running` appended when it ran, so a
/// restore after a crash at any step starts it again (a container's labels
/// cannot change; its name can). The id keeps two interrupted replacements
/// apart.
pub fn aside_name(canonical: &str, id: &str, was_running: bool) -> String {
    let short: String = id.chars().take(12).collect();
    let suffix = if was_running { "-running" } else { "" };
    format!("{canonical}-old-{short}{suffix}")
}

/// Whether an aside name says the container ran before it was moved aside.
pub fn aside_was_running(name: &str) -> bool {
    name.ends_with("-running")
}

/// The new container's name until it takes over: `<canonical>-new-<hash12>`.
/// Created before anything is stopped, so a spec Docker refuses costs
/// nothing.
pub fn staging_name(canonical: &str, spec_hash: &str) -> String {
    let short: String = spec_hash.chars().take(12).collect();
    format!("{canonical}-new-{short}")
}

/// What a container of an instance is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRole {
    /// `<ns>-<task>-<index>`: the instance's container.
    Canonical,
    /// An old container moved aside by a replacement.
    Aside,
    /// A new container staged by a replacement, not yet switched in.
    Staging,
    /// Anything else carrying the instance's labels (renamed by hand).
    Other,
}

/// The role of `name` for the instance whose canonical name is `canonical`.
pub fn name_role(name: &str, canonical: &str) -> NameRole {
    match name.strip_prefix(canonical) {
        Some("") => NameRole::Canonical,
        Some(rest) if rest.starts_with("-old-") => NameRole::Aside,
        Some(rest) if rest.starts_with("-new-") => NameRole::Staging,
        _ => NameRole::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_of_a_namespace_are_recognised_and_no_other() {
        assert_eq!(
            parse_container_name("edge-web-api-2", "edge"),
            Some(InstanceKey::new("web-api", 2))
        );
        for other in [
            "edge-web",
            "edgeweb-0",
            "other-web-0",
            "edge--0",
            "edge-web-x",
            "edge-Web-0",
            "edge-web-0-old-0123456789ab",
            "edge-web-+1",
        ] {
            assert_eq!(parse_container_name(other, "edge"), None, "{other}");
        }
    }

    #[test]
    fn replacement_names_say_what_a_container_is() {
        let c = "berth-web-0";
        let aside = aside_name(c, "0123456789abcdef", true);
        assert_eq!(aside, "berth-web-0-old-0123456789ab-running");
        assert!(aside_was_running(&aside));
        assert!(!aside_was_running(&aside_name(
            c,
            "0123456789abcdef",
            false
        )));
        assert_eq!(name_role(&aside, c), NameRole::Aside);
        assert_eq!(name_role(&staging_name(c, "ffee"), c), NameRole::Staging);
        assert_eq!(name_role(c, c), NameRole::Canonical);
        assert_eq!(name_role("berth-web-0-copy", c), NameRole::Other);
        // berth-web-01 is another instance's name, never this one's.
        assert_eq!(name_role("berth-web-01", c), NameRole::Other);
    }
}

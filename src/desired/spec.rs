//! The resolved container spec: exactly what berth asks Docker for, after
//! defaults and interpolation. Its canonical hash is the `io.berth.spec-hash`
//! label, and a hash mismatch is what "update" means.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Labels berth sets on every container it owns.
pub mod labels {
    pub const PREFIX: &str = "io.berth.";
    pub const NAMESPACE: &str = "io.berth.namespace";
    pub const TASK: &str = "io.berth.task";
    pub const INDEX: &str = "io.berth.index";
    pub const SPEC_HASH: &str = "io.berth.spec-hash";
    pub const MANIFEST: &str = "io.berth.manifest";
    /// The applied spec without secrets (see [`crate::applied`]), for field diffs.
    pub const APPLIED: &str = "io.berth.applied";
    /// `io.berth.port.<label>` holds the host port allocated to a port label.
    pub const PORT_PREFIX: &str = "io.berth.port.";
    /// The task's stop grace in seconds, so removals honour it after the
    /// manifest is gone.
    pub const STOP_TIMEOUT: &str = "io.berth.stop-timeout";
}

/// How long a stop waits before SIGKILL when nothing better is known:
/// Docker's own default. Every stop berth makes goes through
/// [`ContainerSpec::stop_grace`] or a container's recorded grace, so this is
/// the one place the number is written.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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

/// An environment value in the resolved spec. Its `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvEntry {
    pub value: String,
    pub secret: bool,
}

impl fmt::Debug for EnvEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("(secret)")
        } else {
            fmt::Debug::fmt(&self.value, f)
        }
    }
}

/// A published port: `host_port` on the host (tcp and udp) to `container_port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    pub label: String,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckSpec {
    pub test: Vec<String>,
    pub interval_ns: Option<u64>,
    pub timeout_ns: Option<u64>,
    pub retries: Option<u32>,
    pub start_period_ns: Option<u64>,
}

/// Everything that shapes a container. Restart timings are deliberately absent:
/// changing them must not replace a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    /// Docker `Cmd`: the manifest's `command` followed by its `args`.
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// The full environment, berth's `BERTH_*` variables included.
    pub env: BTreeMap<String, EnvEntry>,
    /// The manifest's own labels; berth's `io.berth.*` labels are added on create.
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortBinding>,
    pub network_mode: String,
    pub hostname: Option<String>,
    pub dns_servers: Vec<String>,
    pub dns_search_domains: Vec<String>,
    pub privileged: bool,
    pub ipc_mode: Option<String>,
    pub pid_mode: Option<String>,
    pub uts_mode: Option<String>,
    pub volumes: Vec<String>,
    pub cpu_shares: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub healthcheck: Option<HealthcheckSpec>,
    pub stop_timeout_secs: Option<i64>,
}

impl ContainerSpec {
    /// A spec with Docker's defaults for everything but the image.
    pub fn for_image(image: impl Into<String>) -> Self {
        ContainerSpec {
            image: image.into(),
            cmd: None,
            entrypoint: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            network_mode: "bridge".into(),
            hostname: None,
            dns_servers: Vec::new(),
            dns_search_domains: Vec::new(),
            privileged: false,
            ipc_mode: None,
            pid_mode: None,
            uts_mode: None,
            volumes: Vec::new(),
            cpu_shares: None,
            memory_bytes: None,
            healthcheck: None,
            stop_timeout_secs: None,
        }
    }

    /// sha256 (hex) of the canonical JSON form of the spec.
    ///
    /// Secrets are part of the hash input (a changed secret must replace the
    /// container) but the hash is the only thing derived from them that leaves
    /// the process. The `v1` prefix lets a future canonical form change
    /// deliberately rather than by accident.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"berth-spec-v1\n");
        // Serialising plain structs and BTreeMaps cannot fail; an empty
        // fallback would still hash deterministically.
        hasher.update(serde_json::to_vec(self).unwrap_or_default());
        hex::encode(hasher.finalize())
    }

    /// Grace between SIGTERM and SIGKILL: `stop_timeout`, else [`DEFAULT_GRACE`].
    pub fn stop_grace(&self) -> std::time::Duration {
        match self.stop_timeout_secs {
            Some(secs) => std::time::Duration::from_secs(secs.max(0) as u64),
            None => DEFAULT_GRACE,
        }
    }

    /// The labels to put on the container: the manifest's own, then berth's,
    /// which always win (a manifest cannot forge `io.berth.*`).
    pub fn container_labels(
        &self,
        namespace: &str,
        key: &InstanceKey,
        manifest: &str,
    ) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with(labels::PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.insert(labels::NAMESPACE.into(), namespace.into());
        out.insert(labels::TASK.into(), key.task.clone());
        out.insert(labels::INDEX.into(), key.index.to_string());
        out.insert(labels::SPEC_HASH.into(), self.hash());
        out.insert(labels::MANIFEST.into(), manifest.into());
        out.insert(
            labels::STOP_TIMEOUT.into(),
            self.stop_grace().as_secs().to_string(),
        );
        if let Some(applied) = crate::applied::AppliedSpec::label_for(self) {
            out.insert(labels::APPLIED.into(), applied);
        }
        for port in &self.ports {
            out.insert(
                format!("{}{}", labels::PORT_PREFIX, port.label),
                port.host_port.to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_changes_with_any_field() {
        let a = ContainerSpec::for_image("busybox:1");
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(a.hash().len(), 64);
        let mut b = a.clone();
        b.env.insert(
            "MODE".into(),
            EnvEntry {
                value: "prod".into(),
                secret: false,
            },
        );
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn secrets_change_the_hash_but_never_appear_in_debug_or_labels() {
        let mut a = ContainerSpec::for_image("busybox:1");
        a.env.insert(
            "DB_PASSWORD".into(),
            EnvEntry {
                value: "hunter2".into(),
                secret: true,
            },
        );
        let mut b = a.clone();
        b.env.get_mut("DB_PASSWORD").unwrap().value = "hunter3".into();
        assert_ne!(a.hash(), b.hash());
        assert!(!format!("{a:?}").contains("hunter2"));
        let labels = a.container_labels("berth", &InstanceKey::new("web", 0), "web.yaml");
        assert!(labels.values().all(|v| !v.contains("hunter2")));
    }

    #[test]
    fn manifest_labels_cannot_override_berth_labels() {
        let mut spec = ContainerSpec::for_image("busybox:1");
        spec.labels.insert(labels::NAMESPACE.into(), "other".into());
        spec.labels.insert("io.berth.extra".into(), "x".into());
        spec.labels.insert("group".into(), "cache".into());
        let labels = spec.container_labels("berth", &InstanceKey::new("web", 1), "web.yaml");
        assert_eq!(labels[labels::NAMESPACE], "berth");
        assert_eq!(labels[labels::INDEX], "1");
        assert_eq!(labels["group"], "cache");
        assert!(!labels.contains_key("io.berth.extra"));
    }
}

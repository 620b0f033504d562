//! The labels a container gets: the manifest's own, then berth's, which
//! always win (a manifest cannot forge `io.berth.*`). Kept apart from the
//! spec so the spec depends on nothing that records it.

use std::collections::BTreeMap;

use crate::desired::applied::AppliedSpec;
use crate::desired::spec::ContainerSpec;
use crate::desired::state::DesiredInstance;
use crate::names::{labels, InstanceKey};

impl DesiredInstance {
    /// The labels berth creates this instance's container with: its hash and
    /// record as resolved (keyed with the host's digest key by the agent).
    pub fn container_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.spec.labels_with(
            namespace,
            &self.key,
            &self.manifest,
            &self.hash,
            self.record.label(),
        )
    }
}

impl ContainerSpec {
    /// The labels of a container of this spec made without the host's
    /// digest key (tests and benchmarks; a secret's digest is then
    /// [`crate::desired::applied::UNKNOWN_DIGEST`]). berth itself labels
    /// through [`DesiredInstance::container_labels`].
    pub fn container_labels(
        &self,
        namespace: &str,
        key: &InstanceKey,
        manifest: &str,
    ) -> BTreeMap<String, String> {
        self.labels_with(
            namespace,
            key,
            manifest,
            &self.hash(),
            AppliedSpec::label_for(self, None),
        )
    }

    /// The labels to put on the container: the manifest's own, then berth's,
    /// which always win (a manifest cannot forge `io.berth.*`).
    fn labels_with(
        &self,
        namespace: &str,
        key: &InstanceKey,
        manifest: &str,
        hash: &str,
        applied: Option<String>,
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
        out.insert(labels::SPEC_HASH.into(), hash.to_string());
        out.insert(labels::MANIFEST.into(), manifest.into());
        out.insert(
            labels::STOP_TIMEOUT.into(),
            self.stop_grace().as_secs().to_string(),
        );
        if let Some(applied) = applied {
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
    use crate::desired::spec::EnvEntry;

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

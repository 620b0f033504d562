//! The resolved container spec: exactly what berth asks Docker for, after
//! defaults and interpolation. Its canonical hash is the `io.berth.spec-hash`
//! label, and a hash mismatch is what "update" means.

use std::collections::BTreeMap;
use std::fmt;

use crate::names::DEFAULT_GRACE;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// Fields that interpolate a secret (`command`, `entrypoint`,
    /// `hostname`, `labels.<key>`): recorded and planned only as digests.
    /// Left out of the hash's input when empty, so specs without one hash
    /// as before.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub secret_fields: std::collections::BTreeSet<String>,
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
            secret_fields: std::collections::BTreeSet::new(),
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
}

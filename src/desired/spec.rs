//! The resolved container spec: exactly what berth asks Docker for, after
//! defaults and interpolation. Its canonical hash is the `io.berth.spec-hash`
//! label, and a hash mismatch is what "update" means.

use std::collections::BTreeMap;
use std::fmt;

use crate::desired::digest_key::DigestKey;
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

    /// sha256 (hex) of the canonical JSON form of the spec, without the
    /// host's key: the label of a spec without secrets, and tests. A spec
    /// with secrets is labelled with [`ContainerSpec::keyed_hash`], never
    /// this (an unkeyed digest of a short secret can be guessed). The `v1`
    /// prefix lets a future canonical form change deliberately rather than
    /// by accident.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"berth-spec-v1\n");
        // Serialising plain structs and BTreeMaps cannot fail; an empty
        // fallback would still hash deterministically.
        hasher.update(serde_json::to_vec(self).unwrap_or_default());
        hex::encode(hasher.finalize())
    }

    /// Whether any value in the spec is secret (a secret env value, or a
    /// field that interpolates one).
    pub fn has_secrets(&self) -> bool {
        self.env.values().any(|e| e.secret) || !self.secret_fields.is_empty()
    }

    /// The spec hash as the agent labels it: every secret value replaced by
    /// its HMAC under the host's digest key before hashing, so the label
    /// cannot be used to guess a secret offline. A spec without secrets
    /// hashes exactly as [`ContainerSpec::hash`] (upgrading berth restarts
    /// none of its containers); one with secrets hashes differently from
    /// what a berth without keys labelled it with, so it is replaced once.
    pub fn keyed_hash(&self, key: &DigestKey) -> String {
        if !self.has_secrets() {
            return self.hash();
        }
        let mut keyed = self.clone();
        let digest = |field: &str, value: &str| key.digest("spec", field, value);
        for (name, e) in keyed.env.iter_mut().filter(|(_, e)| e.secret) {
            e.value = digest(&format!("env.{name}"), &e.value);
        }
        let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
        for field in &self.secret_fields {
            match field.as_str() {
                "command" => keyed.cmd = self.cmd.as_ref().map(|c| vec![digest(field, &json(c))]),
                "entrypoint" => {
                    keyed.entrypoint = self
                        .entrypoint
                        .as_ref()
                        .map(|c| vec![digest(field, &json(c))])
                }
                "hostname" => keyed.hostname = self.hostname.as_ref().map(|h| digest(field, h)),
                other => {
                    let label = other.strip_prefix("labels.").unwrap_or(other);
                    if let Some(v) = keyed.labels.get_mut(label) {
                        *v = digest(field, v);
                    }
                }
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(b"berth-spec-v1-keyed\n");
        hasher.update(serde_json::to_vec(&keyed).unwrap_or_default());
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

    #[test]
    fn the_keyed_hash_covers_secrets_by_key_and_leaves_specs_without_them_alone() {
        let key = DigestKey::from_bytes([7; 32]);
        let other = DigestKey::from_bytes([8; 32]);
        let plain = ContainerSpec::for_image("busybox:1");
        assert_eq!(
            plain.keyed_hash(&key),
            plain.hash(),
            "no restart on upgrade"
        );
        let mut secret = plain.clone();
        secret.env.insert(
            "PW".into(),
            EnvEntry {
                value: "hunter2".into(),
                secret: true,
            },
        );
        let h = secret.keyed_hash(&key);
        assert_ne!(h, secret.hash(), "not the unkeyed hash");
        assert_ne!(h, secret.keyed_hash(&other), "depends on the key");
        let mut changed = secret.clone();
        changed.env.get_mut("PW").unwrap().value = "hunter3".into();
        assert_ne!(h, changed.keyed_hash(&key), "a changed secret replaces");
        let mut tainted = plain.clone();
        tainted.cmd = Some(vec!["--pw=hunter2".into()]);
        tainted.secret_fields.insert("command".into());
        let mut tainted2 = tainted.clone();
        tainted2.cmd = Some(vec!["--pw=hunter3".into()]);
        assert_ne!(tainted.keyed_hash(&key), tainted2.keyed_hash(&key));
        assert_ne!(tainted.keyed_hash(&key), tainted.hash());
    }
}

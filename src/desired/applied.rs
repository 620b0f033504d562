//! The applied spec, kept on the container in the `io.berth.applied` label so
//! that `berth plan` can say which fields a replacement changes without any
//! state of its own.
//!
//! The record is a flat map `field → value` (`image`, `env.MODE`,
//! `ports.http`, ...) in compact JSON. Secret env values never enter it: a
//! secret is recorded as a 16-hex digest, salted with the spec hash, so a
//! change is detectable but the value is not in the label. (The spec hash is
//! itself a digest over the same secret, so the record reveals nothing the
//! hash did not.) The label is derived from the spec and is not part of it,
//! so it never changes the spec hash.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::spec::ContainerSpec;

/// Above this size the label is left off (Docker keeps labels in the
/// container config; keep it small). The diff then says it has no record.
pub const MAX_LABEL_BYTES: usize = 16 * 1024;

/// The secret-free record of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSpec {
    /// Format version.
    pub v: u8,
    /// Salt of the secret digests (a prefix of the spec hash).
    pub salt: String,
    /// Non-secret fields, flattened.
    pub f: BTreeMap<String, String>,
    /// Secret env values: field → salted digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub s: BTreeMap<String, String>,
}

fn secret_digest(salt: &str, field: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"berth-secret-v1\0");
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(field.as_bytes());
    h.update(b"\0");
    h.update(value.as_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl AppliedSpec {
    /// Flatten `spec`, digesting secrets with `salt`.
    pub fn of(spec: &ContainerSpec, salt: &str) -> AppliedSpec {
        let mut f = BTreeMap::new();
        let mut s = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                f.insert(k.to_string(), v);
            }
        };
        put("image", Some(spec.image.clone()));
        put("command", spec.cmd.as_ref().map(json));
        put("entrypoint", spec.entrypoint.as_ref().map(json));
        put("network_mode", Some(spec.network_mode.clone()));
        put("hostname", spec.hostname.clone());
        put(
            "dns_servers",
            (!spec.dns_servers.is_empty()).then(|| json(&spec.dns_servers)),
        );
        put(
            "dns_search_domains",
            (!spec.dns_search_domains.is_empty()).then(|| json(&spec.dns_search_domains)),
        );
        put("privileged", spec.privileged.then(|| "true".into()));
        put("ipc_mode", spec.ipc_mode.clone());
        put("pid_mode", spec.pid_mode.clone());
        put("uts_mode", spec.uts_mode.clone());
        put(
            "volumes",
            (!spec.volumes.is_empty()).then(|| json(&spec.volumes)),
        );
        put("resources.cpu", spec.cpu_shares.map(|v| v.to_string()));
        put("resources.memory", spec.memory_bytes.map(mebibytes));
        put("healthcheck", spec.healthcheck.as_ref().map(json));
        put(
            "stop_timeout",
            spec.stop_timeout_secs.map(|v| format!("{v}s")),
        );
        for p in &spec.ports {
            put(
                &format!("ports.{}", p.label),
                Some(format!("{}:{}", p.host_port, p.container_port)),
            );
        }
        for (k, v) in &spec.labels {
            put(&format!("labels.{k}"), Some(v.clone()));
        }
        // Fields that interpolate a secret are recorded like secrets.
        for field in &spec.secret_fields {
            if let Some(value) = f.remove(field) {
                s.insert(field.clone(), secret_digest(salt, field, &value));
            }
        }
        for (k, e) in &spec.env {
            let field = format!("env.{k}");
            if e.secret {
                s.insert(field.clone(), secret_digest(salt, &field, &e.value));
            } else {
                f.insert(field, e.value.clone());
            }
        }
        AppliedSpec {
            v: 1,
            salt: salt.to_string(),
            f,
            s,
        }
    }

    /// The label value for `spec`, or `None` when it would be too large.
    pub fn label_for(spec: &ContainerSpec) -> Option<String> {
        let hash = spec.hash();
        let text = json(&AppliedSpec::of(spec, &hash[..16]));
        (text.len() <= MAX_LABEL_BYTES).then_some(text)
    }

    /// Read a label value back; `None` when it is not a record berth understands.
    pub fn parse(label: &str) -> Option<AppliedSpec> {
        serde_json::from_str::<AppliedSpec>(label)
            .ok()
            .filter(|a| a.v == 1)
    }

    /// The fields in which `new` differs from this record, sorted by field.
    pub fn diff(&self, new: &ContainerSpec) -> Vec<FieldChange> {
        let new = AppliedSpec::of(new, &self.salt);
        let mut fields: Vec<&String> = self
            .f
            .keys()
            .chain(self.s.keys())
            .chain(new.f.keys())
            .chain(new.s.keys())
            .collect();
        fields.sort();
        fields.dedup();
        let mut out = Vec::new();
        for field in fields {
            let secret = self.s.contains_key(field) || new.s.contains_key(field);
            if secret {
                let old = self.s.get(field).or(self.f.get(field));
                let now = new.s.get(field).or(new.f.get(field));
                if old != now {
                    out.push(FieldChange {
                        field: field.clone(),
                        secret: true,
                        old: None,
                        new: None,
                    });
                }
                continue;
            }
            let (old, now) = (self.f.get(field), new.f.get(field));
            if old != now {
                out.push(FieldChange {
                    field: field.clone(),
                    secret: false,
                    old: old.cloned(),
                    new: now.cloned(),
                });
            }
        }
        out
    }
}

/// One field a replacement changes. A secret's values are never held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub secret: bool,
    /// `None`: unset (or a secret).
    pub old: Option<String>,
    pub new: Option<String>,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            return write!(f, "{}: (secret changed)", self.field);
        }
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        write!(
            f,
            "{}: {} → {}",
            self.field,
            show(&self.old),
            show(&self.new)
        )
    }
}

/// Memory as people write it in a manifest: `64 MiB`, not `67108864`.
fn mebibytes(bytes: i64) -> String {
    const MIB: i64 = 1024 * 1024;
    if bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_that_interpolate_a_secret_are_recorded_and_planned_as_digests() {
        let mut old = ContainerSpec::for_image("busybox:1");
        old.cmd = Some(vec!["app".into(), "--password=hunter2".into()]);
        old.labels.insert("dsn".into(), "db://u:hunter2@db".into());
        old.secret_fields = ["command".to_string(), "labels.dsn".to_string()].into();
        let label = AppliedSpec::label_for(&old).unwrap();
        assert!(!label.contains("hunter2"), "{label}");
        let mut new = old.clone();
        new.cmd = Some(vec!["app".into(), "--password=hunter3".into()]);
        let changes = AppliedSpec::parse(&label).unwrap().diff(&new);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["command: (secret changed)"]);
    }
    use crate::desired::spec::EnvEntry;

    fn env(spec: &mut ContainerSpec, k: &str, v: &str, secret: bool) {
        spec.env.insert(
            k.into(),
            EnvEntry {
                value: v.into(),
                secret,
            },
        );
    }

    fn applied(spec: &ContainerSpec) -> AppliedSpec {
        AppliedSpec::parse(&AppliedSpec::label_for(spec).unwrap()).unwrap()
    }

    #[test]
    fn an_image_and_env_change_are_named_with_old_and_new_values() {
        let mut old = ContainerSpec::for_image("nginx:1.26");
        env(&mut old, "MODE", "dev", false);
        let mut new = old.clone();
        new.image = "nginx:1.27".into();
        env(&mut new, "MODE", "prod", false);
        env(&mut new, "EXTRA", "1", false);
        let lines: Vec<String> = applied(&old)
            .diff(&new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "env.EXTRA: (unset) → 1",
                "env.MODE: dev → prod",
                "image: nginx:1.26 → nginx:1.27"
            ]
        );
    }

    #[test]
    fn a_secret_change_is_detected_but_its_value_is_nowhere() {
        let mut old = ContainerSpec::for_image("busybox:1");
        env(&mut old, "DB_PASSWORD", "hunter2", true);
        let mut new = old.clone();
        env(&mut new, "DB_PASSWORD", "hunter3", true);
        let label = AppliedSpec::label_for(&old).unwrap();
        assert!(!label.contains("hunter2"), "{label}");
        let changes = applied(&old).diff(&new);
        assert_eq!(changes.len(), 1);
        let text = changes[0].to_string();
        assert_eq!(text, "env.DB_PASSWORD: (secret changed)");
        assert!(!serde_json::to_string(&changes).unwrap().contains("hunter"));
        // Unchanged secret: no change reported.
        assert!(applied(&old).diff(&old).is_empty());
    }

    #[test]
    fn memory_is_shown_in_mebibytes() {
        let mut old = ContainerSpec::for_image("busybox:1");
        old.memory_bytes = Some(64 * 1024 * 1024);
        let mut new = old.clone();
        new.memory_bytes = Some(128 * 1024 * 1024);
        let lines: Vec<String> = applied(&old)
            .diff(&new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("64 MiB") && lines[0].contains("128 MiB"),
            "{lines:?}"
        );
        assert_eq!(mebibytes(1536 * 1024), "1.5 MiB");
    }

    #[test]
    fn the_record_does_not_change_the_spec_hash_and_stays_compact() {
        let spec = ContainerSpec::for_image("busybox:1");
        let before = spec.hash();
        let label = AppliedSpec::label_for(&spec).unwrap();
        assert_eq!(spec.hash(), before);
        assert!(label.len() < 200, "{label}");
    }
}

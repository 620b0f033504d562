//! The applied spec, kept on the container in the `io.berth.applied` label so
//! that `berth plan` can say which fields a replacement changes without any
//! state of its own.
//!
//! The record is a flat map `field → value` (`image`, `env.MODE`,
//! `ports.http`, ...) in compact JSON. Secret values never enter it: a
//! secret is recorded as a 16-hex HMAC under the host's digest key
//! ([`DigestKey`]), so a change is detectable but the value is not in the
//! label, nor guessable from it without the key. The label is derived from
//! the spec and is not part of it, so it never changes the spec hash.
//!
//! Version 1 records (written before digests were keyed) salted a plain
//! sha256 with the spec hash; they are still read, and every secret in one
//! shows as changed (the container is replaced once, as its hash changes).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::desired::digest_key::DigestKey;
use crate::desired::spec::ContainerSpec;

/// Above this size the label is left off (Docker keeps labels in the
/// container config; keep it small). The diff then says it has no record.
pub const MAX_LABEL_BYTES: usize = 16 * 1024;

/// The record's format: 2 since secret digests are keyed.
pub const VERSION: u8 = 2;

/// What a secret's digest is recorded as when the key could not be read
/// (`berth plan` run by a user who cannot read `state_dir`).
pub const UNKNOWN_DIGEST: &str = "?";

/// The secret-free record of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSpec {
    /// Format version.
    pub v: u8,
    /// Version 1 only: the salt of its unkeyed digests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// Non-secret fields, flattened.
    pub f: BTreeMap<String, String>,
    /// Secret values: field → keyed digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub s: BTreeMap<String, String>,
}

fn secret_digest(key: Option<&DigestKey>, field: &str, value: &str) -> String {
    match key {
        Some(key) => key.digest("applied", field, value)[..16].to_string(),
        None => UNKNOWN_DIGEST.to_string(),
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl AppliedSpec {
    /// Flatten `spec`, digesting secrets with `key` (without one, each
    /// secret is recorded as [`UNKNOWN_DIGEST`], whatever its value).
    pub fn of(spec: &ContainerSpec, key: Option<&DigestKey>) -> AppliedSpec {
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
                s.insert(field.clone(), secret_digest(key, field, &value));
            }
        }
        for (k, e) in &spec.env {
            let field = format!("env.{k}");
            if e.secret {
                s.insert(field.clone(), secret_digest(key, &field, &e.value));
            } else {
                f.insert(field, e.value.clone());
            }
        }
        AppliedSpec {
            v: VERSION,
            salt: String::new(),
            f,
            s,
        }
    }

    /// The label value of this record, or `None` when it would be too large.
    pub fn label(&self) -> Option<String> {
        let text = json(self);
        (text.len() <= MAX_LABEL_BYTES).then_some(text)
    }

    /// The label value for `spec` under `key`, or `None` when too large.
    pub fn label_for(spec: &ContainerSpec, key: Option<&DigestKey>) -> Option<String> {
        AppliedSpec::of(spec, key).label()
    }

    /// Read a label value back; `None` when it is not a record berth understands.
    pub fn parse(label: &str) -> Option<AppliedSpec> {
        serde_json::from_str::<AppliedSpec>(label)
            .ok()
            .filter(|a| a.v == 1 || a.v == VERSION)
    }

    /// The fields in which `new` (a record of the new spec, under the same
    /// key) differs from this record, sorted by field.
    pub fn diff(&self, new: &AppliedSpec) -> Vec<FieldChange> {
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
                let unknown = now.is_some_and(|d| d == UNKNOWN_DIGEST) && old.is_some();
                if old != now {
                    out.push(FieldChange {
                        field: field.clone(),
                        secret: true,
                        unknown,
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
                    unknown: false,
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
    /// A secret that could not be compared: the digest key was not
    /// readable.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
    /// `None`: unset (or a secret).
    pub old: Option<String>,
    pub new: Option<String>,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unknown {
            return write!(
                f,
                "{}: secret changed: unknown (key not readable)",
                self.field
            );
        }
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

    static KEY: std::sync::LazyLock<DigestKey> =
        std::sync::LazyLock::new(|| DigestKey::from_bytes([3; 32]));

    /// A spec whose env `PW` is the secret `hunter2`.
    fn spec_with_secret() -> ContainerSpec {
        let mut spec = ContainerSpec::for_image("busybox:1");
        spec.env.insert(
            "PW".into(),
            crate::desired::spec::EnvEntry {
                value: "hunter2".into(),
                secret: true,
            },
        );
        spec
    }

    #[test]
    fn secret_digests_are_keyed_and_unknown_without_the_key() {
        use sha2::{Digest, Sha256};
        let spec = spec_with_secret();
        let label = AppliedSpec::label_for(&spec, Some(&KEY)).unwrap();
        let record = AppliedSpec::parse(&label).unwrap();
        assert_eq!(record.v, VERSION);
        let digest = &record.s["env.PW"];
        assert_eq!(digest.len(), 16);
        // Neither the old salted digest nor a plain sha256 of the value.
        for unkeyed in [
            hex::encode(Sha256::digest(b"hunter2")),
            hex::encode(Sha256::digest(
                [
                    b"berth-secret-v1\0".as_slice(),
                    &spec.hash().as_bytes()[..16],
                    b"\0env.PW\0hunter2",
                ]
                .concat(),
            )),
        ] {
            assert!(!label.contains(&unkeyed[..16]), "{label}");
        }
        let other = DigestKey::from_bytes([4; 32]);
        assert_ne!(&AppliedSpec::of(&spec, Some(&other)).s["env.PW"], digest);
        // Without the key: the secret is neither compared nor guessed at.
        let unknown = record.diff(&AppliedSpec::of(&spec, None));
        let shown: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["env.PW: secret changed: unknown (key not readable)"]
        );
    }

    #[test]
    fn a_version_1_record_is_read_and_its_secrets_show_as_changed() {
        let spec = spec_with_secret();
        let fields = serde_json::to_string(&AppliedSpec::of(&spec, Some(&KEY)).f).unwrap();
        let v1 = format!(
            r#"{{"v":1,"salt":"0123456789abcdef","f":{fields},"s":{{"env.PW":"0011223344556677"}}}}"#
        );
        let old = AppliedSpec::parse(&v1).unwrap();
        let changes = old.diff(&AppliedSpec::of(&spec, Some(&KEY)));
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["env.PW: (secret changed)"]);
    }

    #[test]
    fn fields_that_interpolate_a_secret_are_recorded_and_planned_as_digests() {
        let mut old = ContainerSpec::for_image("busybox:1");
        old.cmd = Some(vec!["app".into(), "--password=hunter2".into()]);
        old.labels.insert("dsn".into(), "db://u:hunter2@db".into());
        old.secret_fields = ["command".to_string(), "labels.dsn".to_string()].into();
        let label = AppliedSpec::label_for(&old, Some(&KEY)).unwrap();
        assert!(!label.contains("hunter2"), "{label}");
        let mut new = old.clone();
        new.cmd = Some(vec!["app".into(), "--password=hunter3".into()]);
        let changes = AppliedSpec::parse(&label)
            .unwrap()
            .diff(&AppliedSpec::of(&new, Some(&KEY)));
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
        AppliedSpec::parse(&AppliedSpec::label_for(spec, Some(&KEY)).unwrap()).unwrap()
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
            .diff(&AppliedSpec::of(&new, Some(&KEY)))
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
        let label = AppliedSpec::label_for(&old, Some(&KEY)).unwrap();
        assert!(!label.contains("hunter2"), "{label}");
        let changes = applied(&old).diff(&AppliedSpec::of(&new, Some(&KEY)));
        assert_eq!(changes.len(), 1);
        let text = changes[0].to_string();
        assert_eq!(text, "env.DB_PASSWORD: (secret changed)");
        assert!(!serde_json::to_string(&changes).unwrap().contains("hunter"));
        // Unchanged secret: no change reported.
        assert!(applied(&old)
            .diff(&AppliedSpec::of(&old, Some(&KEY)))
            .is_empty());
    }

    #[test]
    fn memory_is_shown_in_mebibytes() {
        let mut old = ContainerSpec::for_image("busybox:1");
        old.memory_bytes = Some(64 * 1024 * 1024);
        let mut new = old.clone();
        new.memory_bytes = Some(128 * 1024 * 1024);
        let lines: Vec<String> = applied(&old)
            .diff(&AppliedSpec::of(&new, Some(&KEY)))
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
        let label = AppliedSpec::label_for(&spec, Some(&KEY)).unwrap();
        assert_eq!(spec.hash(), before);
        assert!(label.len() < 200, "{label}");
    }
}

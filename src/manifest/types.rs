//! The manifest as a person writes it: one YAML document per task.
//!
//! These types are the manifest format of the README's reference, field for field. They are
//! plain data: parsing lives in `parse.rs`, rules in `validate.rs`, and the
//! step from a manifest to what Docker is asked for lives in `crate::desired::resolve`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// One task as written in a manifest document.
///
/// Unknown keys are rejected (`deny_unknown_fields`) so that a typo such as
/// `imgae:` is an error naming the key instead of a silently ignored field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskManifest {
    /// Task name: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 48 characters.
    /// Optional in a file with a single document: defaults to the file stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Image reference: a tag or a digest, any registry host.
    pub image: String,
    /// The container's command. With `args`, it becomes Docker's `Cmd`.
    #[serde(default)]
    pub command: Option<String>,
    /// Arguments. With `command`, Docker's `Cmd` is command + args; without
    /// one, `args` alone are the `Cmd`, passed to the image's ENTRYPOINT (in
    /// place of the image's CMD), as `docker run IMAGE ARGS...` does.
    #[serde(default)]
    pub args: Vec<String>,
    /// Overrides the image's ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Number of instances, `<ns>-<task>-0` .. `<ns>-<task>-(count-1)`. Default 1.
    #[serde(default = "default_count")]
    pub count: u32,
    /// Environment variables; a value may be read from a file and marked secret.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Labels set on every container of the task (never `io.berth.*`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Port labels; each gets a host port published for tcp and udp.
    #[serde(default)]
    pub ports: BTreeMap<String, PortSpec>,
    /// Container side of a port label; without an entry it equals the host port.
    #[serde(default)]
    pub port_map: BTreeMap<String, u16>,
    #[serde(default)]
    pub resources: Option<Resources>,
    /// `bridge` (default), `host`, `none`, `container:<name>` or a network name.
    /// `host` needs the agent's privileged permission; without it,
    /// `container:<name>` must name a container of this namespace. A network
    /// name other than `bridge`, `none`, `default` and `<namespace>-*` must be
    /// listed in the agent's `docker.networks.allowed`.
    #[serde(default)]
    pub network_mode: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
    #[serde(default)]
    pub dns_search_domains: Vec<String>,
    /// Refused unless the agent allows privileged containers.
    #[serde(default)]
    pub privileged: bool,
    /// `host` needs the agent's privileged permission; `container:<name>`
    /// as for `network_mode`.
    #[serde(default)]
    pub ipc_mode: Option<String>,
    #[serde(default)]
    pub pid_mode: Option<String>,
    #[serde(default)]
    pub uts_mode: Option<String>,
    /// Docker bind/volume strings, `SRC:DST[:OPTS]`. Host paths and named
    /// volumes not called `<namespace>-...` need the agent's volumes permission.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Private registry credentials for this image.
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
    #[serde(default)]
    pub pull: PullPolicy,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    /// Grace period between SIGTERM and SIGKILL.
    #[serde(default)]
    pub stop_timeout: Option<Duration>,
    /// How a changed spec replaces the running container: order, health
    /// gate, automatic rollback. None of it shapes the container.
    #[serde(default)]
    pub update: UpdateSpec,
    /// Tasks this one waits for before it is created, started or updated:
    /// `{db: healthy}`; `started`, `healthy` or `completed` (a job that
    /// exited 0).
    #[serde(default)]
    pub depends_on: BTreeMap<String, DependencyCondition>,
    /// `service` (default: keeps running) or `job` (runs to completion).
    #[serde(default)]
    pub kind: TaskKind,
    /// Jobs only: cron schedule for periodic runs, in the host's time zone:
    /// 5 fields (`*/15 * * * *`) or 6 with seconds first. A run is skipped
    /// while the previous one still runs.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Jobs only: failed runs are retried on the restart curve up to this
    /// many attempts in all (default 3), then the job is `failed` until the
    /// manifest changes or `berth retry`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Fleet selector: the task runs only on agents that match every entry.
    /// `meta.<key>`: exact value of the agent's meta key; `node.hostname`: a
    /// glob (`*`, `?`). Elsewhere the task is "not selected" (not an error).
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": "^(meta\\..+|node\\.hostname)$"}))]
    pub select: BTreeMap<String, String>,
}

fn default_count() -> u32 {
    1
}

/// An environment value: a plain string, or a value read from a file.
///
/// `Deserialize` is written by hand (see below): `untagged` would refuse
/// `PORT: 8080` and turn every mistake into "did not match any variant".
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    From(EnvSource),
}

/// The schema matches the hand-written `Deserialize`: integers and booleans
/// are accepted (and kept as text), so editors do not flag `PORT: 8080`.
impl JsonSchema for EnvValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvValue".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let source = generator.subschema_for::<EnvSource>();
        schemars::json_schema!({
            "description": "A value (string, integer or boolean), or {file: ...} / {value: ...}.",
            "anyOf": [{"type": ["string", "integer", "boolean"]}, source]
        })
    }
}

/// Accepts a string, a YAML integer or boolean (kept as written: `8080`,
/// `true`), or a `{file|value, secret}` mapping. Floats are refused: `1.10`
/// would silently become `1.1`, which is how version strings get corrupted.
impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        use std::fmt;

        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a string, a number, a boolean, or a {file: ...} / {value: ...} mapping",
                )
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_string<E: Error>(self, v: String) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v))
            }
            fn visit_bool<E: Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_i128<E: Error>(self, v: i128) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_u128<E: Error>(self, v: u128) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_f64<E: Error>(self, v: f64) -> Result<EnvValue, E> {
                Err(E::custom(format!(
                    "the env value {v} is a YAML number with a fraction; quote it so it is passed exactly as written (unquoted, 1.10 would become 1.1)"
                )))
            }
            fn visit_unit<E: Error>(self) -> Result<EnvValue, E> {
                Err(E::custom(
                    "the env value is empty; write \"\" for an empty string",
                ))
            }
            fn visit_none<E: Error>(self) -> Result<EnvValue, E> {
                self.visit_unit()
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnvValue, A::Error> {
                EnvSource::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EnvValue::From)
            }
        }
        d.deserialize_any(EnvVisitor)
    }
}

/// `{file: /run/secrets/db, secret: true}` or `{value: "...", secret: true}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvSource {
    /// Read the value from this file at every pass (a trailing newline is
    /// dropped). Relative to the manifest's folder; it must be a regular
    /// file inside the agent's `files.allowed_dirs`.
    #[serde(default)]
    pub file: Option<String>,
    /// An inline value (useful with `secret: true`).
    #[serde(default)]
    pub value: Option<String>,
    /// Never show the value in logs, plan, status, labels or metrics.
    /// Default: `true` for a value read from a file, `false` for an inline
    /// `value`. Anything that interpolates a secret is secret too.
    #[serde(default)]
    pub secret: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// A fixed host port; without it the port is taken from the agent's range.
    #[serde(default)]
    pub r#static: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU shares (1000 ≈ 1 GHz, as in Nomad).
    #[serde(default)]
    pub cpu: Option<u32>,
    /// Memory hard limit in MiB; swap is disabled (memory+swap = memory).
    #[serde(default)]
    pub memory: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    #[serde(default)]
    pub username: Option<String>,
    /// Prefer `password_file`; a password here is still never logged.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub server_address: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull only when the image is not present locally.
    #[default]
    Missing,
    /// Pull at every create (a changed image replaces the container).
    Always,
    /// Never pull; the image must be present.
    Never,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever the container exits.
    #[default]
    Always,
    /// Restart only after a non-zero exit.
    OnFailure,
    /// Leave an exited container stopped.
    Never,
}

/// `update:`. None of these shape the container: changing them replaces
/// nothing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// `stop-first` (default) or `start-first`: the new container runs
    /// before the old one stops (not with static host ports).
    #[serde(default)]
    pub order: UpdateOrder,
    /// The new container must stay running (and healthy, if it has a
    /// healthcheck) this long before the update is done. Default 0s: done
    /// as soon as it runs, or once healthy when it has a healthcheck.
    #[serde(default)]
    pub min_healthy: Option<Duration>,
    /// The new container must pass its gate within this time, or the update
    /// has failed. Default 5m.
    #[serde(default = "default_update_deadline")]
    pub deadline: Duration,
    /// On failure, go back to the previous container (the last spec that
    /// was healthy), and hold the failed spec. Default true.
    #[serde(default = "default_true")]
    pub auto_revert: bool,
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            order: UpdateOrder::default(),
            min_healthy: None,
            deadline: default_update_deadline(),
            auto_revert: true,
        }
    }
}

fn default_update_deadline() -> Duration {
    Duration::from_secs(300)
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// What a dependency must be before its dependents go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DependencyCondition {
    /// Every instance runs.
    Started,
    /// Every instance runs and, with a healthcheck, is healthy.
    Healthy,
    /// A job whose every instance exited 0.
    Completed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Keeps running; restarted per `restart`.
    #[default]
    Service,
    /// Runs to completion: exit 0 is `succeeded` and never restarted. One
    /// container (`count` 1).
    Job,
}

/// Restart timings. None of these shape the container, so changing them
/// never replaces one (they are outside the spec hash).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Delay before the second restart; the first is immediate; then doubling.
    #[serde(default = "default_delay")]
    pub delay: Duration,
    #[serde(default = "default_max_delay")]
    pub max_delay: Duration,
    /// A container that ran this long resets the failure count.
    #[serde(default = "default_reset_after")]
    pub reset_after: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::default(),
            delay: default_delay(),
            max_delay: default_max_delay(),
            reset_after: default_reset_after(),
        }
    }
}

fn default_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(300)
}
fn default_reset_after() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// Docker's form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub start_period: Option<Duration>,
}

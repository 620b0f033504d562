//! From a task definition and an index to the exact container spec.
//!
//! This is where defaults are applied, `BERTH_*` variables are set, file
//! values are filled in and `${...}` references are interpolated. It does
//! no I/O: the folder loader has read the files a task names (under the
//! agent's `files` rules); the result is hashed, so everything here must be
//! deterministic for the same inputs.

use std::collections::BTreeMap;
use std::path::Path;

use crate::desired::folder::TaskDef;
use crate::desired::ports::PortKey;
use crate::desired::registry::RegistryCredentials;
use crate::desired::spec::{ContainerSpec, EnvEntry, HealthcheckSpec, PortBinding};
use crate::desired::state::DesiredInstance;
use crate::manifest::interpolate::interpolate;
use crate::manifest::{EnvValue, TaskManifest};
use crate::names::InstanceKey;
use crate::node::NodeInfo;

/// What resolution needs besides the task.
#[derive(Debug, Clone)]
pub struct ResolveContext<'a> {
    pub namespace: &'a str,
    pub meta: &'a BTreeMap<String, String>,
    pub node: &'a NodeInfo,
    /// The manifest folder (the loader has read the files it names).
    pub manifest_dir: &'a Path,
}

/// Why an instance could not be resolved this pass. The task is held: its
/// running containers are left alone until the problem is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: task {task}: {message}")]
pub struct ResolveError {
    pub task: String,
    pub file: String,
    pub message: String,
}

/// The `BERTH_*` variables of one instance, in the order the README lists them.
fn berth_variables(
    m: &TaskManifest,
    key: &InstanceKey,
    ports: &[PortBinding],
    ctx: &ResolveContext<'_>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    vars.insert("BERTH_TASK".into(), key.task.clone());
    vars.insert("BERTH_INDEX".into(), key.index.to_string());
    vars.insert("BERTH_NAMESPACE".into(), ctx.namespace.to_string());
    for p in ports {
        vars.insert(
            format!("BERTH_PORT_{}", p.label),
            p.container_port.to_string(),
        );
        vars.insert(
            format!("BERTH_HOST_PORT_{}", p.label),
            p.host_port.to_string(),
        );
        vars.insert(
            format!("BERTH_ADDR_{}", p.label),
            format!("{}:{}", ctx.node.ip, p.host_port),
        );
    }
    if let Some(r) = &m.resources {
        if let Some(cpu) = r.cpu {
            vars.insert("BERTH_CPU_LIMIT".into(), cpu.to_string());
        }
        if let Some(mem) = r.memory {
            vars.insert("BERTH_MEMORY_LIMIT".into(), mem.to_string());
        }
    }
    vars
}

/// The text the loader read for `field` (`env.KEY`, `auth.password_file`).
fn file_value(def: &TaskDef, field: &str) -> Result<String, String> {
    def.files.get(field).map(|t| t.0.clone()).ok_or_else(|| {
        format!("{field}: the file was not read (the manifest was not loaded from its folder)")
    })
}

/// Resolve one instance of a task. `host_ports` holds the allocation for
/// every port label of this instance.
pub fn resolve_instance(
    def: &TaskDef,
    index: u32,
    host_ports: &BTreeMap<PortKey, u16>,
    ctx: &ResolveContext<'_>,
) -> Result<DesiredInstance, ResolveError> {
    let m = &def.manifest;
    let key = InstanceKey::new(def.name.clone(), index);
    let fail = |message: String| ResolveError {
        task: def.name.clone(),
        file: def.file.clone(),
        message,
    };

    let mut ports = Vec::new();
    for label in m.ports.keys() {
        let host_port = *host_ports
            .get(&(def.name.clone(), index, label.clone()))
            .ok_or_else(|| fail(format!("no host port allocated for port label {label}")))?;
        let container_port = m.port_map.get(label).copied().unwrap_or(host_port);
        ports.push(PortBinding {
            label: label.clone(),
            host_port,
            container_port,
        });
    }

    let berth = berth_variables(m, &key, &ports, ctx);
    // Raw env values, for `${OTHER_KEY}` references (not themselves expanded:
    // no recursion, no cycles). File values are read now, at every pass.
    let mut raw_env: BTreeMap<String, (String, bool, bool)> = BTreeMap::new();
    for (name, value) in &m.env {
        let (text, secret, from_file) = match value {
            EnvValue::Plain(s) => (s.clone(), false, false),
            EnvValue::From(src) => match (&src.file, &src.value) {
                // A file's content is secret unless the manifest says otherwise.
                (Some(_), _) => (
                    file_value(def, &format!("env.{name}")).map_err(&fail)?,
                    src.secret.unwrap_or(true),
                    true,
                ),
                (None, Some(v)) => (v.clone(), src.secret.unwrap_or(false), false),
                (None, None) => (String::new(), src.secret.unwrap_or(false), false),
            },
        };
        raw_env.insert(name.clone(), (text, secret, from_file));
    }
    let lookup = |name: &str| -> Option<String> {
        if let Some(v) = berth.get(name) {
            return Some(v.clone());
        }
        if let Some(k) = name.strip_prefix("meta.") {
            return ctx.meta.get(k).cloned();
        }
        match name {
            "node.hostname" => return Some(ctx.node.hostname.clone()),
            "node.ip" => return Some(ctx.node.ip.clone()),
            _ => {}
        }
        raw_env.get(name).map(|(v, _, _)| v.clone())
    };
    let expand =
        |field: &str, s: &str| interpolate(s, lookup).map_err(|e| fail(format!("{field}: {e}")));
    // Secret taint: whatever interpolates a secret is itself secret.
    let tainted = |s: &str| {
        crate::manifest::interpolate::references(s)
            .iter()
            .any(|name| raw_env.get(name).is_some_and(|(_, secret, _)| *secret))
    };
    let mut secret_fields = std::collections::BTreeSet::new();
    if m.command.as_deref().is_some_and(tainted) || m.args.iter().any(|a| tainted(a)) {
        secret_fields.insert("command".to_string());
    }
    if m.entrypoint.iter().flatten().any(|e| tainted(e)) {
        secret_fields.insert("entrypoint".to_string());
    }
    if m.hostname.as_deref().is_some_and(tainted) {
        secret_fields.insert("hostname".to_string());
    }
    for (k, v) in &m.labels {
        if tainted(v) {
            secret_fields.insert(format!("labels.{k}"));
        }
    }

    let mut env: BTreeMap<String, EnvEntry> = berth
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                EnvEntry {
                    value: v.clone(),
                    secret: false,
                },
            )
        })
        .collect();
    for (name, (text, secret, from_file)) in &raw_env {
        // File contents are data, not templates: a password may contain `${`.
        let value = if *from_file {
            text.clone()
        } else {
            expand(&format!("env.{name}"), text)?
        };
        let secret = *secret || (!*from_file && tainted(text));
        env.insert(name.clone(), EnvEntry { value, secret });
    }

    let command = m
        .command
        .as_deref()
        .map(|c| expand("command", c))
        .transpose()?;
    let args = m
        .args
        .iter()
        .map(|a| expand("args", a))
        .collect::<Result<Vec<_>, _>>()?;
    // With a command, Cmd = command + args (Nomad). Without one, args alone
    // go to the image's entrypoint, as `docker run IMAGE ARGS...` would do.
    let cmd = match command {
        Some(c) => Some(std::iter::once(c).chain(args).collect()),
        None if !args.is_empty() => Some(args),
        None => None,
    };
    let entrypoint = m
        .entrypoint
        .as_ref()
        .map(|e| e.iter().map(|s| expand("entrypoint", s)).collect())
        .transpose()?;
    let labels = m
        .labels
        .iter()
        .map(|(k, v)| Ok((k.clone(), expand(&format!("labels.{k}"), v)?)))
        .collect::<Result<BTreeMap<_, _>, ResolveError>>()?;
    let hostname = m
        .hostname
        .as_deref()
        .map(|h| expand("hostname", h))
        .transpose()?;

    let ns =
        |d: &crate::manifest::duration::Duration| d.get().as_nanos().min(u64::MAX as u128) as u64;
    let spec = ContainerSpec {
        image: m.image.clone(),
        cmd,
        entrypoint,
        env,
        labels,
        ports,
        network_mode: m.network_mode.clone().unwrap_or_else(|| "bridge".into()),
        hostname,
        dns_servers: m.dns_servers.clone(),
        dns_search_domains: m.dns_search_domains.clone(),
        privileged: m.privileged,
        ipc_mode: m.ipc_mode.clone(),
        pid_mode: m.pid_mode.clone(),
        uts_mode: m.uts_mode.clone(),
        volumes: m.volumes.clone(),
        cpu_shares: m.resources.as_ref().and_then(|r| r.cpu).map(i64::from),
        memory_bytes: m
            .resources
            .as_ref()
            .and_then(|r| r.memory)
            .map(|mib| i64::from(mib) * 1024 * 1024),
        healthcheck: m.healthcheck.as_ref().map(|h| HealthcheckSpec {
            test: h.test.clone(),
            interval_ns: h.interval.as_ref().map(ns),
            timeout_ns: h.timeout.as_ref().map(ns),
            retries: h.retries,
            start_period_ns: h.start_period.as_ref().map(ns),
        }),
        stop_timeout_secs: m.stop_timeout.map(|d| d.get().as_secs_f64().ceil() as i64),
        secret_fields,
    };

    let credentials = match &m.auth {
        None => None,
        Some(auth) => {
            let password = match (&auth.password, &auth.password_file) {
                (_, Some(_)) => Some(file_value(def, "auth.password_file").map_err(&fail)?),
                (Some(p), None) => Some(p.clone()),
                (None, None) => None,
            };
            Some(RegistryCredentials {
                username: auth.username.clone(),
                password,
                email: auth.email.clone(),
                server_address: auth.server_address.clone(),
            })
        }
    };

    let mut instance = DesiredInstance::new(key, spec, def.file.clone());
    instance.restart = m.restart.clone();
    instance.update = m.update.clone();
    instance.depends_on = m.depends_on.clone();
    instance.kind = m.kind;
    instance.schedule = m.schedule.clone();
    instance.max_attempts = m.max_attempts;
    instance.source_commit = def.source_commit.clone();
    instance.pull = m.pull;
    instance.credentials = credentials;
    instance.stop_grace = m
        .stop_timeout
        .map(|d| d.get())
        .unwrap_or(crate::names::DEFAULT_GRACE);
    Ok(instance)
}

//! Every agent key as a flag and a `BERTH_*` environment variable.
//!
//! A key is one line of [`KEYS`]: its path in `berth.yaml`, the kind of
//! value, its help. The flag (`docker.privileged.enabled` →
//! `--docker-privileged`), the variable (`BERTH_DOCKER_PRIVILEGED`) and the
//! default shown in `--help` follow from that line. Precedence: flag, then
//! environment variable, then the config file, then the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser, ValueParser};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};
use serde_json::{Map, Value};

use berth::config::AgentConfig;

/// The agent config a host-acting command reads when `--config` is not given.
pub const HOST_CONFIG: &str = "/etc/berth/berth.yaml";

/// What a key's value is: decides how the flag is parsed and checked (bad
/// values are usage errors, before anything runs).
#[derive(Clone, Copy)]
pub enum Kind {
    Text,
    Path,
    Duration,
    Addr,
    Count,
    /// `--flag` (true), `--flag=false`; `BERTH_X=true|false`.
    Bool,
    Choice(&'static [&'static str]),
    /// Repeatable; replaces the file's list. The variable is comma-separated.
    List,
    /// Repeatable `KEY=VALUE`; merged over the file's map, key by key. The
    /// variable is comma-separated.
    Map,
}

/// One agent key.
pub struct Key {
    /// The key's path in berth.yaml (`docker.cleanup.image`).
    pub path: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Shown instead of the built-in default's value, where that is absent
    /// (keys under an optional section) or depends on something.
    pub default: Option<&'static str>,
}

const fn key(path: &'static str, kind: Kind, help: &'static str) -> Key {
    Key {
        path,
        kind,
        help,
        default: None,
    }
}

impl Key {
    const fn or(mut self, default: &'static str) -> Key {
        self.default = Some(default);
        self
    }
}

use Kind::*;

/// Every agent key. Adding one to `AgentConfig` is adding its line here (and
/// to deploy/berth.yaml and the README's table, which tests hold to this).
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    key("manifests", Path, "The folder of task manifests (*.yaml, *.yml; not recursive)").or("/etc/berth/manifests; ./manifests without a config file"),
    key("namespace", Text, "berth owns only containers labelled io.berth.namespace=<this>"),
    key("listen", Addr, "HTTP address for /healthz, /metrics and /v1/status (`berth status` asks here)"),
    key("http.token_file", Path, "File whose first line is the bearer token /v1/status and /v1/retry want (/healthz, /metrics stay open)").or("none: no token"),
    key("http.max_connections", Count, "HTTP connections served at once; a reserve of 8 beyond answers /healthz and /metrics only"),
    key("resync", Duration, "A full pass at least this often"),
    key("parallelism", Count, "Creates, starts and pulls that run at once (never a stop: removals have their own bound of 32)"),
    key("watch", Choice(&["auto", "inotify", "poll"]), "How the manifest folder is watched (auto: inotify, else polling)"),
    key("meta", Map, "A value for ${meta.KEY} and `select:` (repeatable; merged over the file's meta)"),
    key("ports.min", Count, "Lowest dynamic host port"),
    key("ports.max", Count, "Highest dynamic host port"),
    key("docker.endpoint", Text, "Docker endpoint (unix:///path, tcp://host:port); unset: DOCKER_HOST, else the local socket"),
    key("docker.auth_config", Path, "Registry credentials in Docker's config.json format"),
    key("docker.tls.cert", Path, "TLS client certificate for a tcp:// endpoint (with key and ca)"),
    key("docker.tls.key", Path, "TLS client key for a tcp:// endpoint"),
    key("docker.tls.ca", Path, "CA that signed the daemon's certificate"),
    key("docker.cleanup.container", Bool, "Remove containers of removed tasks (false: stop and keep them)"),
    key("docker.cleanup.image", Bool, "Remove images no task and no container uses any more"),
    key("docker.privileged.enabled", Bool, "Allow `privileged`, host network/ipc/pid/uts and container:<other owner's> modes in manifests"),
    key("docker.volumes.enabled", Bool, "Allow host bind mounts and named volumes not called <namespace>-* in manifests"),
    key("docker.volumes.allowed", List, "When set, the only host path prefixes and volume names manifests may mount (repeatable)").or("unset: anything, when enabled"),
    key("docker.networks.allowed", List, "Networks network_mode may name besides bridge, none, default and <namespace>-* (repeatable)").or("none: only those"),
    key("files.allowed_dirs", List, "Folders whose files env {file:} and auth.password_file may read (repeatable)").or("the manifest folder and /etc/berth/secrets"),
    key("files.max_size", Count, "The largest file a manifest may have read, in bytes"),
    key("docker_down_limit", Duration, "/healthz turns 503 once Docker has been unreachable this long"),
    key("state_dir", Path, "What berth keeps across restarts (held updates, the git source)"),
    key("run_dir", Path, "Where the one-agent-per-namespace lock lives"),
    key("removal_delay", Duration, "Removing a task or an index waits until the folder has been quiet this long"),
    key("allow_empty", Bool, "Let a folder with no manifest at all remove every container of the namespace"),
    key("max_instances", Count, "The most instances the whole folder may ask for"),
    key("node.ip", Text, "The address manifests see as ${node.ip}").or("the address of the default route's interface"),
    key("source.git.url", Text, "Manifests from this git repository instead of the folder (ssh://, https://, file:///, git://, user@host:path)"),
    key("source.git.ref", Text, "Branch, tag, full ref or full commit id (required with a url)").or("required with a url"),
    key("source.git.path", Text, "The repository's folder holding the manifests").or("its root"),
    key("source.git.interval", Duration, "How often the remote is asked for the ref").or("60s"),
    key("source.git.timeout", Duration, "Hard limit on any one git command").or("60s"),
    key("source.git.ssh_key_file", Path, "ssh deploy key (IdentitiesOnly)"),
    key("source.git.token_file", Path, "https token file, re-read at every fetch"),
    key("source.git.known_hosts_file", Path, "The only host keys ssh accepts"),
    key("source.git.verify.allowed_signers", Path, "Apply only commits whose ssh signature verifies against this file"),
];

impl Key {
    /// `docker.privileged.enabled` → `docker-privileged`.
    pub fn flag(&self) -> String {
        self.path
            .strip_suffix(".enabled")
            .unwrap_or(self.path)
            .replace(['.', '_'], "-")
    }

    /// `docker-privileged` → `BERTH_DOCKER_PRIVILEGED`.
    pub fn env(&self) -> String {
        format!("BERTH_{}", self.flag().to_uppercase().replace('-', "_"))
    }

    /// What `--help` shows as the default: the built-in default's value.
    pub fn shown_default(&self, defaults: &Value) -> String {
        match self.default {
            Some(d) => d.to_string(),
            None => display(lookup(defaults, self.path).unwrap_or(&Value::Null)),
        }
    }

    fn value_name(&self) -> &'static str {
        match self.kind {
            Text => "VALUE",
            Path | List => "PATH",
            Duration => "DURATION",
            Addr => "ADDR",
            Count => "N",
            Bool => "BOOL",
            Choice(_) => "MODE",
            Map => "KEY=VALUE",
        }
    }

    fn arg(&self, defaults: &Value) -> Arg {
        let flag = self.flag();
        let arg = Arg::new(flag.clone())
            .long(flag)
            .env(self.env())
            .value_name(self.value_name())
            .help(format!(
                "{} [default: {}]",
                self.help,
                self.shown_default(defaults)
            ))
            .help_heading("Agent config (flag > BERTH_* variable > config file > default)");
        let text = |f: fn(&str) -> Result<Value, String>| ValueParser::new(f);
        match self.kind {
            Text | Path => arg.value_parser(text(|s| Ok(Value::String(s.into())))),
            Duration => arg.value_parser(text(|s| {
                s.parse::<berth::manifest::duration::Duration>()
                    .map_err(|e| e.to_string())?;
                Ok(Value::String(s.into()))
            })),
            Addr => arg.value_parser(text(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| format!("{e} (write e.g. 127.0.0.1:9797)"))?;
                Ok(Value::String(s.into()))
            })),
            Count => arg.value_parser(text(|s| {
                s.parse::<u64>()
                    .map(Value::from)
                    .map_err(|_| "a whole number is expected".to_string())
            })),
            Bool => arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_parser(
                    PossibleValuesParser::new(["true", "false"]).map(|s| Value::Bool(s == "true")),
                ),
            Choice(values) => arg
                .value_parser(PossibleValuesParser::new(values.iter().copied()).map(Value::String)),
            List => arg
                .action(ArgAction::Append)
                .value_delimiter(',')
                .value_parser(text(|s| Ok(Value::String(s.into())))),
            Map => arg
                .action(ArgAction::Append)
                .value_delimiter(',')
                .value_parser(text(|s| match s.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok(Value::Array(vec![k.into(), v.into()])),
                    _ => Err("write KEY=VALUE".into()),
                })),
        }
    }
}

/// Where a value given outside the file came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Flag,
    Env,
}

/// A value given by flag or environment variable.
#[derive(Clone)]
struct Override {
    key: &'static Key,
    value: Value,
    origin: Origin,
}

/// The agent flags of a subcommand: `--config` and one flag per key.
#[derive(Clone, Default)]
pub struct AgentFlags {
    config: Option<PathBuf>,
    overrides: Vec<Override>,
}

/// The config a command runs with, and where each part came from.
pub struct Effective {
    pub config: AgentConfig,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The keys the file sets (as written).
    file_keys: Value,
    overrides: Vec<Override>,
}

impl clap::Args for AgentFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let defaults = serde_json::to_value(AgentConfig::default()).unwrap_or(Value::Null);
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .env("BERTH_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "Agent config file (YAML) [default: {HOST_CONFIG} for plan, status, down, retry and config when it exists]"
                )),
        );
        KEYS.iter().fold(cmd, |cmd, k| cmd.arg(k.arg(&defaults)))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for AgentFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = AgentFlags {
            config: m.get_one::<PathBuf>("config").cloned(),
            overrides: Vec::new(),
        };
        for key in KEYS {
            let id = key.flag();
            let origin = match m.value_source(&id) {
                Some(ValueSource::CommandLine) => Origin::Flag,
                Some(ValueSource::EnvVariable) => Origin::Env,
                _ => continue,
            };
            let mut values = m.get_many::<Value>(&id).into_iter().flatten().cloned();
            let value = match key.kind {
                List => Value::Array(values.collect()),
                Map => Value::Object(
                    values
                        .filter_map(|kv| match kv {
                            Value::Array(mut pair) if pair.len() == 2 => {
                                let v = pair.pop()?;
                                Some((pair.pop()?.as_str()?.to_string(), v))
                            }
                            _ => None,
                        })
                        .collect(),
                ),
                _ => match values.next() {
                    Some(v) => v,
                    None => continue,
                },
            };
            flags.overrides.push(Override { key, value, origin });
        }
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl AgentFlags {
    /// berth sets `BERTH_NAMESPACE` and `BERTH_TASK` in every container it
    /// runs. A `berth run` or `down` started inside one would take its
    /// parent's namespace from the environment and then remove the
    /// parent's containers as its own; it must be given one instead.
    pub fn refuse_inherited_namespace(&self) -> anyhow::Result<()> {
        if self.inherits_namespace(std::env::var_os("BERTH_TASK").is_some()) {
            anyhow::bail!(
                "BERTH_NAMESPACE comes from the environment of a container berth runs (BERTH_TASK \
                 is set too): this berth would act on its parent's containers. Give the namespace \
                 with --namespace or in the config file"
            );
        }
        Ok(())
    }

    fn inherits_namespace(&self, in_task: bool) -> bool {
        in_task
            && self
                .overrides
                .iter()
                .rev()
                .find(|o| o.key.path == "namespace")
                .is_some_and(|o| o.origin == Origin::Env)
    }

    /// The config for `run` and `validate`: `--config`, else the built-in
    /// defaults with `./manifests`.
    pub fn load(&self) -> anyhow::Result<AgentConfig> {
        Ok(self.resolve(None)?.config)
    }

    /// The config for a command acting on this host (`plan`, `status`,
    /// `down`, `retry`): `--config`, else [`HOST_CONFIG`] when it exists (what
    /// the installed service runs), else the defaults. Says which on stderr.
    pub fn load_host(&self) -> anyhow::Result<AgentConfig> {
        let effective = self.resolve(Some(Path::new(HOST_CONFIG)))?;
        eprintln!("{}", effective.describe_source());
        Ok(effective.config)
    }

    /// Flags over file over defaults; `host_default` is read when no
    /// `--config` is given and it exists.
    pub fn resolve(&self, host_default: Option<&Path>) -> anyhow::Result<Effective> {
        let file = self
            .config
            .clone()
            .or_else(|| host_default.filter(|p| p.exists()).map(Path::to_path_buf));
        let (base, file_keys) = match &file {
            Some(path) => {
                let config = AgentConfig::read(path)?;
                // Only to tell which keys the file sets; `read` checked it.
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let keys = serde_saphyr::from_str::<Value>(&text).unwrap_or(Value::Null);
                (config, keys)
            }
            None => (
                AgentConfig {
                    // Without a config file, the folder berth is run from is
                    // the friendliest default for trying it out.
                    manifests: PathBuf::from("manifests"),
                    ..AgentConfig::default()
                },
                Value::Null,
            ),
        };
        let mut config = overlay(&base, &self.overrides)?;
        config.check()?;
        if let Some(source) = &config.source {
            // The applied commit's checkout is the manifest folder.
            config.manifests = berth::source::manifests_link(&config.state_dir, &source.git)?;
        }
        Ok(Effective {
            config,
            file,
            file_keys,
            overrides: self.overrides.clone(),
        })
    }
}

/// The flags' values set over `base`, checked by the same deserializer as
/// the file.
fn overlay(base: &AgentConfig, overrides: &[Override]) -> anyhow::Result<AgentConfig> {
    if overrides.is_empty() {
        return Ok(base.clone());
    }
    let mut doc = serde_json::to_value(base).context("cannot represent the agent config")?;
    for o in overrides {
        set(&mut doc, o.key.path, o.value.clone());
    }
    serde_json::from_value(doc).map_err(|e| {
        let given: Vec<String> = overrides
            .iter()
            .map(|o| match o.origin {
                Origin::Env => o.key.env(),
                _ => format!("--{}", o.key.flag()),
            })
            .collect();
        anyhow::anyhow!(
            "the agent config with {} does not hold together: {e}",
            given.join(", ")
        )
    })
}

/// Set `value` at a dotted path, making the sections on the way; a map is
/// merged key by key.
fn set(doc: &mut Value, path: &str, value: Value) {
    let mut at = doc;
    for part in path.split('.') {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(map) = at else { return };
        at = map.entry(part.to_string()).or_insert(Value::Null);
    }
    match (at, value) {
        (Value::Object(existing), Value::Object(new)) => existing.extend(new),
        (slot, value) => *slot = value,
    }
}

fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |at, part| at.get(part))
}

/// A value as a person would write it on the command line.
fn display(value: &Value) -> String {
    match value {
        Value::Null => "unset".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".into(),
        Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => "none".into(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", display(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

impl Effective {
    /// One line: which config file is in use.
    pub fn describe_source(&self) -> String {
        match &self.file {
            Some(path) => format!("berth: config {}", path.display()),
            None => {
                let m = &self.config.manifests;
                let dot = if m.is_relative() { "./" } else { "" };
                format!(
                    "berth: no config file ({HOST_CONFIG} does not exist, no --config): built-in defaults, manifests {dot}{}",
                    m.display()
                )
            }
        }
    }

    /// Every key: its effective value and where it came from. Values are
    /// paths and settings only; berth never reads a secret file for this.
    pub fn table(&self) -> Vec<(String, String, String)> {
        let doc = serde_json::to_value(&self.config).unwrap_or(Value::Null);
        KEYS.iter()
            .map(|key| {
                let value = display(lookup(&doc, key.path).unwrap_or(&Value::Null));
                let origin = match self.overrides.iter().rev().find(|o| o.key.path == key.path) {
                    Some(o) if o.origin == Origin::Env => format!("env {}", key.env()),
                    Some(_) => format!("flag --{}", key.flag()),
                    None if lookup(&self.file_keys, key.path).is_some() => match &self.file {
                        Some(f) => format!("file {}", f.display()),
                        None => "file".into(),
                    },
                    None => "default".into(),
                };
                (key.path.to_string(), value, origin)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(args: &[&str]) -> Result<AgentFlags, clap::Error> {
        let cmd = AgentFlags::augment_args(clap::Command::new("t").no_binary_name(true));
        let m = cmd.try_get_matches_from(args)?;
        AgentFlags::from_arg_matches(&m)
    }

    /// Every leaf of the config's serialized form, optional sections included.
    fn leaves(doc: &Value, prefix: &str, out: &mut Vec<String>) {
        match doc {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn every_config_key_has_exactly_one_flag() {
        let mut config = AgentConfig::default();
        config.docker.tls = Some(berth::config::TlsConfig {
            cert: "c".into(),
            key: "k".into(),
            ca: "a".into(),
        });
        let mut doc = serde_json::to_value(&config).unwrap();
        set(
            &mut doc,
            "source",
            serde_json::json!({"git": {"url": "u", "ref": "r", "ssh_key_file": "k",
                "token_file": "t", "known_hosts_file": "h", "verify": {"allowed_signers": "s"}}}),
        );
        let config: AgentConfig = serde_json::from_value(doc).unwrap();
        let mut paths = Vec::new();
        leaves(&serde_json::to_value(&config).unwrap(), "", &mut paths);
        let keys: Vec<&str> = KEYS.iter().map(|k| k.path).collect();
        for p in &paths {
            assert!(
                keys.contains(&p.as_str()),
                "agent key {p} has no line in KEYS"
            );
        }
        for k in &keys {
            assert!(
                paths.contains(&k.to_string()),
                "KEYS names {k}, not a config key"
            );
        }
        let mut flags: Vec<String> = KEYS.iter().map(Key::flag).collect();
        flags.sort();
        flags.dedup();
        assert_eq!(flags.len(), KEYS.len(), "two keys share a flag");
    }

    #[test]
    fn list_keys_are_repeatable_and_replace_the_files_list() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.yaml");
        std::fs::write(
            &file,
            "files: {allowed_dirs: [/from/file]}\ndocker: {volumes: {allowed: [/srv]}, networks: {allowed: [a]}}\n",
        )
        .unwrap();
        let flags = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--files-allowed-dirs",
            "/a",
            "--files-allowed-dirs",
            "/b,/c",
            "--files-max-size",
            "4096",
            "--docker-networks-allowed",
            "frontend,backend",
        ])
        .unwrap();
        let c = flags.resolve(None).unwrap().config;
        let dirs: Vec<PathBuf> = ["/a", "/b", "/c"].iter().map(PathBuf::from).collect();
        assert_eq!(c.files.allowed_dirs, Some(dirs));
        assert_eq!(c.files.max_size, 4096);
        assert_eq!(c.docker.volumes.allowed, Some(vec!["/srv".to_string()]));
        assert_eq!(c.docker.networks.allowed, ["frontend", "backend"]);
    }

    #[test]
    fn only_a_namespace_from_the_environment_inside_a_task_is_inherited() {
        let key = KEYS.iter().find(|k| k.path == "namespace").unwrap();
        let given = |origin| AgentFlags {
            config: None,
            overrides: vec![Override {
                key,
                value: Value::String("parent".into()),
                origin,
            }],
        };
        assert!(given(Origin::Env).inherits_namespace(true));
        assert!(!given(Origin::Env).inherits_namespace(false));
        assert!(!given(Origin::Flag).inherits_namespace(true));
        assert!(!AgentFlags::default().inherits_namespace(true));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.yaml");
        std::fs::write(
            &file,
            "namespace: fromfile\nparallelism: 7\nmeta: {site: berlin, role: web}\ndocker:\n  privileged: {enabled: true}\n",
        )
        .unwrap();
        let flags = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--namespace",
            "fromflag",
            "--meta",
            "role=gateway",
            "--docker-privileged=false",
            "--ports-min",
            "21000",
            "--docker-tls-cert",
            "/c",
            "--docker-tls-key",
            "/k",
            "--docker-tls-ca",
            "/a",
        ])
        .unwrap();
        let e = flags.resolve(None).unwrap();
        let c = &e.config;
        assert_eq!(c.namespace, "fromflag");
        assert_eq!(c.parallelism, 7);
        assert_eq!(c.meta["site"], "berlin");
        assert_eq!(c.meta["role"], "gateway");
        assert!(!c.docker.privileged.enabled);
        assert_eq!(c.ports.min, 21000);
        assert_eq!(c.ports.max, 32000);
        assert_eq!(c.docker.tls.as_ref().unwrap().key, PathBuf::from("/k"));
        let table = e.table();
        let origin = |k: &str| table.iter().find(|r| r.0 == k).unwrap().2.clone();
        assert_eq!(origin("namespace"), "flag --namespace");
        assert!(origin("parallelism").starts_with("file "));
        assert_eq!(origin("resync"), "default");
    }

    #[test]
    fn a_bool_flag_alone_means_true() {
        let c = parse(&["--allow-empty", "--docker-cleanup-image=false"])
            .unwrap()
            .load()
            .unwrap();
        assert!(c.allow_empty);
        assert!(!c.docker.cleanup.image);
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        for (args, needle) in [
            (&["--resync", "10"][..], "--resync"),
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--parallelism", "many"][..], "--parallelism"),
            (&["--watch", "sometimes"][..], "--watch"),
            (&["--meta", "novalue"][..], "--meta"),
            (&["--allow-empty=maybe"][..], "--allow-empty"),
        ] {
            let err = parse(args).err().expect("should fail").to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_value_out_of_range_names_the_flag() {
        let err = parse(&["--ports-max", "70000"])
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ports-max"), "{err}");
    }

    #[test]
    fn an_optional_section_from_flags_alone_is_complete_or_refused() {
        let c = parse(&[
            "--source-git-url",
            "https://example.com/x.git",
            "--source-git-ref",
            "main",
        ])
        .unwrap()
        .load()
        .unwrap();
        let git = c.source.unwrap().git;
        assert_eq!(git.git_ref, "main");
        assert_eq!(git.interval.get(), std::time::Duration::from_secs(60));
        let err = parse(&["--source-git-url", "https://example.com/x.git"])
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ref") && err.contains("--source-git-url"),
            "{err}"
        );
    }

    #[test]
    fn the_host_config_is_read_only_when_it_exists_and_no_config_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("berth.yaml");
        let flags = parse(&[]).unwrap();
        let e = flags.resolve(Some(&host)).unwrap();
        assert!(e.file.is_none());
        assert_eq!(e.config.manifests, PathBuf::from("manifests"));
        assert!(
            e.describe_source().contains("does not exist"),
            "{}",
            e.describe_source()
        );

        std::fs::write(&host, "namespace: installed\n").unwrap();
        let e = flags.resolve(Some(&host)).unwrap();
        assert_eq!(e.config.namespace, "installed");
        assert_eq!(e.config.manifests, PathBuf::from("/etc/berth/manifests"));
        assert_eq!(
            e.describe_source(),
            format!("berth: config {}", host.display())
        );

        let other = dir.path().join("other.yaml");
        std::fs::write(&other, "namespace: explicit\n").unwrap();
        let flags = parse(&["--config", other.to_str().unwrap()]).unwrap();
        assert_eq!(
            flags.resolve(Some(&host)).unwrap().config.namespace,
            "explicit"
        );
    }
}

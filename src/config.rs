//! The agent config (`berth.yaml`): where the manifests are, which namespace
//! berth owns, how to reach Docker and what it may allow. Every key has a
//! flag and a `BERTH_*` variable (`src/cli/flags.rs`); both win over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::duration::Duration;
pub use crate::source::config::{GitSourceConfig, SourceConfig, VerifyConfig};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub manifests: PathBuf,
    pub namespace: String,
    pub listen: SocketAddr,
    pub resync: Duration,
    pub parallelism: usize,
    pub watch: WatchMode,
    pub meta: BTreeMap<String, String>,
    pub ports: PortRange,
    pub docker: DockerConfig,
    /// `/healthz` turns 503 once Docker has been unreachable this long.
    pub docker_down_limit: Duration,
    /// Where berth keeps what it must remember across restarts (the git
    /// source's clone and checkouts).
    pub state_dir: PathBuf,
    /// Manifests from a git repository instead of a folder someone fills.
    pub source: Option<SourceConfig>,
    /// Removing a task or an index waits until the folder has been quiet
    /// this long and the removal is seen again on a fresh read.
    pub removal_delay: Duration,
    /// A folder with no manifest at all empties the host. Off: such a folder
    /// (an unmounted disk leaves one) holds every removal.
    pub allow_empty: bool,
    /// The most instances the whole folder may ask for.
    pub max_instances: u32,
    /// Where the one-agent-per-namespace lock lives (`<run_dir>/<ns>.lock`).
    pub run_dir: PathBuf,
    /// Who may use the HTTP port's API, and how many connections it holds.
    pub http: HttpConfig,
    /// What `env {file:}` and `auth.password_file` may read.
    pub files: FilesConfig,
    /// Facts about this host that manifests see (`${node.ip}`).
    pub node: NodeConfig,
}

/// `node:`: overrides of what berth detects about this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `${node.ip}`; unset: the address of the interface holding the
    /// default route.
    pub ip: Option<std::net::IpAddr>,
}

/// `http:`: the port on `listen`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A file whose first line is the bearer token `/v1/status` and
    /// `/v1/retry` want. `/healthz` and `/metrics` stay open.
    pub token_file: Option<PathBuf>,
    /// Connections served at once; a small reserve beyond it answers
    /// `/healthz` and `/metrics` only.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            token_file: None,
            max_connections: 64,
        }
    }
}

/// `files:`: the files a manifest may have berth read.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Folders whose files (symlinks resolved) a manifest may read. Unset:
    /// the manifest folder and `/etc/berth/secrets`.
    pub allowed_dirs: Option<Vec<PathBuf>>,
    /// The largest file read, in bytes.
    pub max_size: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            allowed_dirs: None,
            max_size: crate::manifest::files::DEFAULT_MAX_SIZE,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            manifests: PathBuf::from("/etc/berth/manifests"),
            namespace: "berth".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9797)),
            resync: Duration::from_secs(60),
            parallelism: 4,
            watch: WatchMode::Auto,
            meta: BTreeMap::new(),
            ports: PortRange::default(),
            docker: DockerConfig::default(),
            docker_down_limit: Duration::from_secs(60),
            state_dir: PathBuf::from("/var/lib/berth"),
            source: None,
            removal_delay: Duration::from_secs(5),
            allow_empty: false,
            max_instances: crate::manifest::validate::DEFAULT_MAX_INSTANCES,
            run_dir: PathBuf::from("/run/berth"),
            http: HttpConfig::default(),
            files: FilesConfig::default(),
            node: NodeConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify, falling back to polling where it is not available.
    #[default]
    Auto,
    Inotify,
    Poll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            min: 20000,
            max: 32000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:2376`, ... When unset,
    /// `DOCKER_HOST`/`DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`, else the local socket.
    pub endpoint: Option<String>,
    /// A Docker `config.json` (dockercfg) with registry credentials.
    pub auth_config: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
    pub cleanup: CleanupConfig,
    pub privileged: Toggle<false>,
    pub volumes: VolumesConfig,
    pub networks: NetworksConfig,
}

/// `docker.networks`: the user-defined Docker networks a manifest may join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworksConfig {
    /// Networks `network_mode` may name besides `bridge`, `none`,
    /// `default` and the namespace's own (`<namespace>-*`), which are
    /// always allowed. `host` is not a network here: it needs
    /// `docker.privileged.enabled`.
    pub allowed: Vec<String>,
}

/// `docker.volumes`: host bind mounts and named volumes of other owners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumesConfig {
    /// Host paths and named volumes not of this namespace. Off: only
    /// volumes named `<namespace>-*`.
    pub enabled: bool,
    /// When set, only these host path prefixes and volume names (the
    /// namespace's own volumes are always allowed).
    pub allowed: Option<Vec<String>>,
}

impl Default for VolumesConfig {
    fn default() -> Self {
        VolumesConfig {
            enabled: true,
            allowed: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// false: containers of removed tasks are stopped and kept.
    pub container: bool,
    /// Remove images no task uses any more (never one a container still uses).
    pub image: bool,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            container: true,
            image: true,
        }
    }
}

/// `{enabled: bool}` with a default chosen by the key it sits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Toggle<const DEFAULT: bool> {
    #[serde(default = "Toggle::<DEFAULT>::default_enabled")]
    pub enabled: bool,
}

impl<const DEFAULT: bool> Toggle<DEFAULT> {
    fn default_enabled() -> bool {
        DEFAULT
    }
}

impl<const DEFAULT: bool> Default for Toggle<DEFAULT> {
    fn default() -> Self {
        Toggle { enabled: DEFAULT }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("agent config: {0}")]
    Invalid(String),
}

impl AgentConfig {
    /// What validating a manifest needs from this config.
    pub fn validation_context(&self) -> crate::manifest::validate::ValidationContext {
        crate::manifest::validate::ValidationContext {
            allow_privileged: self.docker.privileged.enabled,
            allow_host_volumes: self.docker.volumes.enabled,
            meta: self.meta.clone(),
            max_instances: self.max_instances,
            namespace: self.namespace.clone(),
            allowed_volumes: self.docker.volumes.allowed.clone(),
            allowed_networks: Some(self.docker.networks.allowed.clone()),
            files: crate::manifest::files::FilePolicy {
                allowed_dirs: self.files.allowed_dirs.clone(),
                max_size: self.files.max_size,
            },
        }
    }

    /// Read and check an agent config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let config = AgentConfig::read(path)?;
        config.check()?;
        Ok(config)
    }

    /// Read an agent config file without [`AgentConfig::check`]: flags may
    /// still change it (the CLI checks the result).
    pub fn read(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let config: AgentConfig = if text.trim().is_empty() {
            AgentConfig::default()
        } else {
            serde_saphyr::from_str(&text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                ConfigError::Parse {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: e.to_string(),
                }
            })?
        };
        Ok(config)
    }

    /// Rules serde cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.parallelism == 0 {
            return Err(ConfigError::Invalid(
                "parallelism must be at least 1".into(),
            ));
        }
        if self.ports.min == 0 || self.ports.min > self.ports.max {
            return Err(ConfigError::Invalid(format!(
                "ports: min ({}) must be at least 1 and not above max ({})",
                self.ports.min, self.ports.max
            )));
        }
        if !crate::manifest::is_valid_name(&self.namespace) {
            return Err(ConfigError::Invalid(format!(
                "namespace {:?} must match [a-z0-9]([a-z0-9-]*[a-z0-9])? and be at most 48 characters",
                self.namespace
            )));
        }
        if self.resync.get().is_zero() {
            return Err(ConfigError::Invalid("resync must be longer than 0s".into()));
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "http.max_connections must be at least 1".into(),
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("state_dir must not be empty".into()));
        }
        if self.files.max_size == 0 {
            return Err(ConfigError::Invalid(
                "files.max_size must be at least 1 (bytes)".into(),
            ));
        }
        for dir in self.files.allowed_dirs.iter().flatten() {
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "files.allowed_dirs: `{}` must be an absolute path",
                    dir.display()
                )));
            }
        }
        for entry in self.docker.volumes.allowed.iter().flatten() {
            let path_like = entry.starts_with('/');
            let name_like = !entry.is_empty()
                && entry
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
            if !(path_like || name_like)
                || (path_like && crate::manifest::files::has_parent_component(Path::new(entry)))
            {
                return Err(ConfigError::Invalid(format!(
                    "docker.volumes.allowed: `{entry}` is neither an absolute host path (without `..`) nor a volume name"
                )));
            }
        }
        for entry in &self.docker.networks.allowed {
            if entry == "host" {
                return Err(ConfigError::Invalid(
                    "docker.networks.allowed: `host` is the host's own network, not one to list here; it needs docker.privileged.enabled: true".into(),
                ));
            }
            if !crate::manifest::validate::is_network_name(entry) {
                return Err(ConfigError::Invalid(format!(
                    "docker.networks.allowed: `{entry}` is not a network name (letters, digits, `_`, `.` and `-`, not starting with `_`, `.` or `-`)"
                )));
            }
        }
        if let Some(source) = &self.source {
            source
                .git
                .check()
                .map_err(|e| ConfigError::Invalid(format!("source.git.{e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.yaml");
        std::fs::write(&path, "").unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config, AgentConfig::default());
        assert!(config.docker.cleanup.container && config.docker.cleanup.image);
        assert!(!config.docker.privileged.enabled);
        assert!(config.docker.volumes.enabled);
        assert!(config.docker.networks.allowed.is_empty());
    }

    #[test]
    fn every_documented_key_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.yaml");
        std::fs::write(
            &path,
            r#"
manifests: /srv/m
namespace: edge
listen: 127.0.0.1:9898
resync: 30s
parallelism: 2
watch: poll
meta: {site: berlin}
ports: {min: 21000, max: 22000}
docker:
  endpoint: unix:///var/run/docker.sock
  auth_config: /root/.docker/config.json
  tls: {cert: cert.pem, key: key.pem, ca: ca.pem}
  cleanup: {container: false, image: false}
  privileged: {enabled: true}
  volumes: {enabled: false, allowed: [/srv/www, shared-cache]}
  networks: {allowed: [frontend, shared.backend]}
files:
  allowed_dirs: [/etc/berth/manifests, /run/secrets]
  max_size: 65536
"#,
        )
        .unwrap();
        let c = AgentConfig::load(&path).unwrap();
        assert_eq!(c.namespace, "edge");
        assert_eq!(c.watch, WatchMode::Poll);
        assert_eq!(c.meta["site"], "berlin");
        assert_eq!(c.ports.max, 22000);
        assert!(!c.docker.cleanup.container);
        assert!(c.docker.privileged.enabled);
        assert!(!c.docker.volumes.enabled);
        assert_eq!(
            c.docker.volumes.allowed,
            Some(vec!["/srv/www".to_string(), "shared-cache".to_string()])
        );
        assert_eq!(c.docker.networks.allowed, ["frontend", "shared.backend"]);
        assert_eq!(
            c.files.allowed_dirs,
            Some(vec![
                PathBuf::from("/etc/berth/manifests"),
                PathBuf::from("/run/secrets")
            ])
        );
        assert_eq!(c.files.max_size, 65536);
    }

    #[test]
    fn file_volume_and_network_permissions_are_checked() {
        for (text, expected) in [
            ("files: {max_size: 0}\n", "files.max_size"),
            (
                "files: {allowed_dirs: [secrets]}\n",
                "must be an absolute path",
            ),
            (
                "docker: {volumes: {allowed: [\"/srv/../etc\"]}}\n",
                "docker.volumes.allowed",
            ),
            (
                "docker: {volumes: {allowed: [\"a b\"]}}\n",
                "docker.volumes.allowed",
            ),
            (
                "docker: {networks: {allowed: [\"a b\"]}}\n",
                "docker.networks.allowed: `a b` is not a network name",
            ),
            (
                "docker: {networks: {allowed: [\"container:db\"]}}\n",
                "docker.networks.allowed: `container:db` is not a network name",
            ),
            (
                "docker: {networks: {allowed: [\"-x\"]}}\n",
                "docker.networks.allowed: `-x` is not a network name",
            ),
            (
                "docker: {networks: {allowed: [\"\"]}}\n",
                "docker.networks.allowed: `` is not a network name",
            ),
            (
                "docker: {networks: {allowed: [host]}}\n",
                "docker.networks.allowed: `host` is the host's own network",
            ),
            ("docker: {networks: {allow: [frontend]}}\n", "allow"),
        ] {
            let err = load_text(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}\n→ {err}");
        }
    }

    #[test]
    fn a_misspelt_key_is_an_error_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.yaml");
        std::fs::write(&path, "namespace: a\nparalelism: 3\n").unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("paralelism"), "{err}");
        assert!(err.contains(":2:"), "{err}");
    }

    fn load_text(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.yaml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path)
    }

    #[test]
    fn the_git_source_parses_with_its_defaults() {
        let c = load_text(
            "state_dir: /srv/berth\nsource:\n  git:\n    url: ssh://git@example.com/ops/edge.git\n    ref: main\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/berth"));
        let git = &c.source.unwrap().git;
        assert_eq!(git.git_ref, "main");
        assert_eq!(git.path, "");
        assert_eq!(git.interval, Duration::from_secs(60));
        assert_eq!(git.timeout, Duration::from_secs(60));
        assert!(git.verify.is_none());
        assert_eq!(
            AgentConfig::default().state_dir,
            PathBuf::from("/var/lib/berth")
        );
        assert!(AgentConfig::default().source.is_none());
    }

    #[test]
    fn every_git_source_key_parses() {
        let c = load_text(
            r#"
source:
  git:
    url: git@example.com:ops/edge.git
    ref: 0123456789abcdef0123456789abcdef01234567
    path: hosts/edge
    interval: 30s
    timeout: 20s
    ssh_key_file: /etc/berth/deploy_key
    known_hosts_file: /etc/berth/known_hosts
    verify:
      allowed_signers: /etc/berth/allowed_signers
"#,
        )
        .unwrap();
        let git = c.source.unwrap().git;
        assert_eq!(git.path, "hosts/edge");
        assert_eq!(git.interval, Duration::from_secs(30));
        assert_eq!(
            git.ssh_key_file,
            Some(PathBuf::from("/etc/berth/deploy_key"))
        );
        assert_eq!(
            git.verify.unwrap().allowed_signers,
            PathBuf::from("/etc/berth/allowed_signers")
        );
    }

    #[test]
    fn git_source_mistakes_name_the_key_to_fix() {
        let base = "source:\n  git:\n    url: https://example.com/x.git\n    ref: main\n";
        let cases = [
            (format!("{base}    reff: x\n"), "reff"),
            ("source:\n  git:\n    ref: main\n".to_string(), "url"),
            (
                "source:\n  git:\n    url: https://example.com/x.git\n".to_string(),
                "ref",
            ),
            (
                base.replace("ref: main", "ref: \"\""),
                "source.git.ref: is empty",
            ),
            (
                base.replace("ref: main", "ref: main~1"),
                "source.git.ref: `main~1`",
            ),
            (base.replace("ref: main", "ref: -x"), "not a valid git ref"),
            (
                base.replace("https://example.com/x.git", "ftp://h/x"),
                "source.git.url: scheme",
            ),
            (
                format!("{base}    path: /etc\n"),
                "source.git.path: `/etc` must be relative",
            ),
            (format!("{base}    path: a/../../b\n"), "source.git.path"),
            (format!("{base}    interval: 0s\n"), "source.git.interval"),
            (format!("{base}    ssh_key_file: /k\n"), "not an ssh URL"),
            (
                "source:\n  git:\n    url: ssh://h/x.git\n    ref: main\n    token_file: /t\n"
                    .to_string(),
                "token_file is set but url ssh://h/x.git is not https://",
            ),
            (format!("{base}    verify: {{}}\n"), "allowed_signers"),
            (
                format!("{base}    verify: {{allowed_signers: /a, extra: 1}}\n"),
                "extra",
            ),
        ];
        for (text, expected) in cases {
            let err = load_text(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{text}\n→ {err}\n(expected {expected:?})"
            );
        }
    }

    #[test]
    fn a_password_in_the_source_url_is_refused_and_not_echoed() {
        let err = load_text(
            "source:\n  git:\n    url: https://me:hunter2@example.com/x.git\n    ref: main\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("token_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_commented_source_example_in_the_sample_config_is_valid() {
        let sample = include_str!("../deploy/berth.yaml");
        let start = sample.find("# source:").unwrap();
        let block: String = sample[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = load_text(&block).unwrap();
        let git = c.source.unwrap().git;
        assert_eq!(git.path, "hosts");
        assert!(git.verify.is_some() && git.ssh_key_file.is_some());
    }
}

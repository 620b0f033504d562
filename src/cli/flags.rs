//! Agent keys as flags; each overrides the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use berth::config::{AgentConfig, WatchMode};

/// Agent keys as flags; each overrides the config file.
#[derive(Args, Clone, Default)]
pub struct AgentFlags {
    /// Agent config file (YAML).
    #[arg(long, value_name = "FILE", env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[arg(long, value_name = "DURATION")]
    resync: Option<berth::manifest::duration::Duration>,
    #[arg(long, value_name = "N")]
    parallelism: Option<usize>,
    #[arg(long, value_enum)]
    watch: Option<WatchMode>,
    /// Docker endpoint (unix://, tcp://); default DOCKER_HOST, else the local socket.
    #[arg(long, value_name = "URL")]
    docker_endpoint: Option<String>,
    /// /healthz turns 503 once Docker has been unreachable this long [default: 60s].
    #[arg(long, value_name = "DURATION")]
    docker_down_limit: Option<berth::manifest::duration::Duration>,
    /// Removing a task or an index waits until the folder has been quiet this long [default: 5s].
    #[arg(long, value_name = "DURATION", env = "BERTH_REMOVAL_DELAY")]
    removal_delay: Option<berth::manifest::duration::Duration>,
    /// Let a folder with no manifest at all remove every container of the namespace [default: off].
    #[arg(long, env = "BERTH_ALLOW_EMPTY")]
    allow_empty: bool,
    /// The most instances the whole folder may ask for [default: 1000].
    #[arg(long, value_name = "N", env = "BERTH_MAX_INSTANCES")]
    max_instances: Option<u32>,
    /// Where berth keeps what must outlive a restart (held updates, the git source) [default: /var/lib/berth].
    #[arg(long, value_name = "DIR", env = "BERTH_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where the one-agent-per-namespace lock lives [default: /run/berth].
    #[arg(long, value_name = "DIR", env = "BERTH_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// File whose first line is the bearer token /v1/status and /v1/retry want [default: none, no token].
    #[arg(long, value_name = "FILE", env = "BERTH_HTTP_TOKEN_FILE")]
    http_token_file: Option<PathBuf>,
    /// HTTP connections served at once (a small reserve beyond answers /healthz and /metrics) [default: 64].
    #[arg(long, value_name = "N", env = "BERTH_HTTP_MAX_CONNECTIONS")]
    http_max_connections: Option<usize>,
}

impl AgentFlags {
    pub fn load(&self) -> anyhow::Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => AgentConfig::load(path)?,
            None => AgentConfig::default(),
        };
        if self.config.is_none() && self.manifests.is_none() {
            // Without a config file, the folder berth is run from is the
            // friendliest default for trying it out.
            config.manifests = PathBuf::from("manifests");
        }
        if let Some(v) = &self.manifests {
            config.manifests = v.clone();
        }
        if let Some(v) = &self.namespace {
            config.namespace = v.clone();
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.resync {
            config.resync = v;
        }
        if let Some(v) = self.parallelism {
            config.parallelism = v;
        }
        if let Some(v) = self.watch {
            config.watch = v;
        }
        if let Some(v) = &self.docker_endpoint {
            config.docker.endpoint = Some(v.clone());
        }
        if let Some(v) = self.docker_down_limit {
            config.docker_down_limit = v;
        }
        if let Some(v) = self.removal_delay {
            config.removal_delay = v;
        }
        if self.allow_empty {
            config.allow_empty = true;
        }
        if let Some(v) = self.max_instances {
            config.max_instances = v;
        }
        if let Some(v) = &self.run_dir {
            config.run_dir = v.clone();
        }
        if let Some(v) = &self.state_dir {
            config.state_dir = v.clone();
        }
        if let Some(v) = &self.http_token_file {
            config.http.token_file = Some(v.clone());
        }
        if let Some(v) = self.http_max_connections {
            config.http.max_connections = v;
        }
        config.check()?;
        Ok(config)
    }
}

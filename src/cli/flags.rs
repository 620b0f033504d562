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
        config.check()?;
        Ok(config)
    }
}

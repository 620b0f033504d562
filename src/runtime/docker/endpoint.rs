//! Where and how to reach the Docker daemon, and the client once it answers.
//! Resolved once from the agent config and Docker's environment variables,
//! so every reconnect uses the same answer.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bollard::errors::Error as BollardError;
use bollard::{Docker, API_DEFAULT_VERSION};
use tracing::debug;

use super::errors::map_err;
use super::REQUEST_TIMEOUT;
use crate::config::DockerConfig;
use crate::runtime::{Result, RuntimeError};

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// Where and how to reach the daemon, resolved once from the agent config and
/// the environment so every reconnect uses the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    Unix(String),
    Http(String),
    Tls {
        addr: String,
        key: PathBuf,
        cert: PathBuf,
        ca: PathBuf,
    },
}

impl Endpoint {
    /// `docker.endpoint` (with `docker.tls`) when set; else Docker's own
    /// variables, read as the docker CLI reads them (a non-empty
    /// `DOCKER_TLS_VERIFY` turns TLS on, certificates from `DOCKER_CERT_PATH`
    /// or `~/.docker`); else the local socket.
    pub(super) fn resolve(
        cfg: &DockerConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Endpoint> {
        let non_empty = |k: &str| env(k).filter(|v| !v.is_empty());
        let (addr, tls) = match &cfg.endpoint {
            Some(endpoint) => (
                endpoint.clone(),
                cfg.tls
                    .as_ref()
                    .map(|t| (t.key.clone(), t.cert.clone(), t.ca.clone())),
            ),
            None => {
                let addr = non_empty("DOCKER_HOST").unwrap_or_else(|| DEFAULT_SOCKET.into());
                let tls = match &cfg.tls {
                    Some(t) => Some((t.key.clone(), t.cert.clone(), t.ca.clone())),
                    None if non_empty("DOCKER_TLS_VERIFY").is_some() => {
                        let dir = non_empty("DOCKER_CERT_PATH")
                            .map(PathBuf::from)
                            .or_else(|| non_empty("HOME").map(|h| Path::new(&h).join(".docker")))
                            .ok_or_else(|| {
                                RuntimeError::Other(
                                    "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor HOME is"
                                        .into(),
                                )
                            })?;
                        Some((
                            dir.join("key.pem"),
                            dir.join("cert.pem"),
                            dir.join("ca.pem"),
                        ))
                    }
                    None => None,
                };
                (addr, tls)
            }
        };
        if addr.starts_with("unix://") {
            if tls.is_some() {
                return Err(RuntimeError::Other(format!(
                    "docker endpoint {addr}: TLS needs a tcp:// or https:// endpoint"
                )));
            }
            return Ok(Endpoint::Unix(addr));
        }
        let is_tcp = addr.starts_with("tcp://") || addr.starts_with("http://");
        match tls {
            Some((key, cert, ca)) if is_tcp || addr.starts_with("https://") => Ok(Endpoint::Tls {
                addr,
                key,
                cert,
                ca,
            }),
            None if is_tcp => Ok(Endpoint::Http(addr)),
            _ => Err(RuntimeError::Other(format!(
                "docker endpoint {addr}: expected unix://, tcp://, http:// (or https:// with tls)"
            ))),
        }
    }

    /// A client for this endpoint. Makes no request; bollard only checks that
    /// a unix socket exists and reads the TLS CA file.
    fn client(&self) -> std::result::Result<Docker, BollardError> {
        let secs = REQUEST_TIMEOUT.as_secs();
        match self {
            Endpoint::Unix(path) => Docker::connect_with_unix(path, secs, API_DEFAULT_VERSION),
            Endpoint::Http(addr) => Docker::connect_with_http(addr, secs, API_DEFAULT_VERSION),
            Endpoint::Tls {
                addr,
                key,
                cert,
                ca,
            } => Docker::connect_with_ssl(addr, key, cert, ca, secs, API_DEFAULT_VERSION),
        }
    }
}

/// The endpoint plus the negotiated client once Docker has answered.
#[derive(Debug)]
pub(super) struct Connector {
    pub(super) endpoint: Endpoint,
    pub(super) client: Mutex<Option<Docker>>,
}

impl Connector {
    /// The negotiated client, connecting first if Docker has not answered yet.
    ///
    /// A client is kept only after `negotiate_version` succeeded: bollard's
    /// default API version (1.53) is newer than Docker 20.10 accepts, so an
    /// unnegotiated client would fail every call with a 400.
    pub(super) async fn client(&self) -> Result<Docker> {
        if let Some(client) = self.cached() {
            return Ok(client);
        }
        let client = self
            .endpoint
            .client()
            .map_err(map_err)?
            .negotiate_version()
            .await
            .map_err(map_err)?;
        debug!(api = %client.client_version(), "connected to docker");
        if let Ok(mut slot) = self.client.lock() {
            *slot = Some(client.clone());
        }
        Ok(client)
    }

    fn cached(&self) -> Option<Docker> {
        // A poisoned lock only means another thread panicked mid-assignment of
        // a clone; reconnecting is always safe.
        self.client.lock().ok().and_then(|slot| slot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_config_then_docker_host_then_the_local_socket() {
        let none = |_: &str| None;
        assert_eq!(
            Endpoint::resolve(&DockerConfig::default(), none).unwrap(),
            Endpoint::Unix(DEFAULT_SOCKET.into())
        );
        let env = |k: &str| match k {
            "DOCKER_HOST" => Some("tcp://10.0.0.1:2376".to_string()),
            "DOCKER_TLS_VERIFY" => Some("1".to_string()),
            "DOCKER_CERT_PATH" => Some("/certs".to_string()),
            _ => None,
        };
        assert_eq!(
            Endpoint::resolve(&DockerConfig::default(), env).unwrap(),
            Endpoint::Tls {
                addr: "tcp://10.0.0.1:2376".into(),
                key: "/certs/key.pem".into(),
                cert: "/certs/cert.pem".into(),
                ca: "/certs/ca.pem".into(),
            }
        );
        let plain = |k: &str| (k == "DOCKER_HOST").then(|| "tcp://10.0.0.1:2375".to_string());
        assert_eq!(
            Endpoint::resolve(&DockerConfig::default(), plain).unwrap(),
            Endpoint::Http("tcp://10.0.0.1:2375".into())
        );
        // An explicit endpoint ignores the environment.
        let cfg = DockerConfig {
            endpoint: Some("unix:///run/d.sock".into()),
            ..Default::default()
        };
        assert_eq!(
            Endpoint::resolve(&cfg, env).unwrap(),
            Endpoint::Unix("unix:///run/d.sock".into())
        );
        let bad = DockerConfig {
            endpoint: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(matches!(
            Endpoint::resolve(&bad, none),
            Err(RuntimeError::Other(_))
        ));
    }

    #[test]
    fn docker_tls_applies_to_a_tcp_endpoint_and_is_refused_on_a_unix_socket() {
        let tls = Some(crate::config::TlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            ca: "ca.pem".into(),
        });
        let cfg = DockerConfig {
            endpoint: Some("tcp://10.0.0.1:2376".into()),
            tls: tls.clone(),
            ..Default::default()
        };
        assert_eq!(
            Endpoint::resolve(&cfg, |_| None).unwrap(),
            Endpoint::Tls {
                addr: "tcp://10.0.0.1:2376".into(),
                key: "k.pem".into(),
                cert: "c.pem".into(),
                ca: "ca.pem".into(),
            }
        );
        let unix = DockerConfig {
            endpoint: Some("unix:///var/run/docker.sock".into()),
            tls,
            ..Default::default()
        };
        assert!(Endpoint::resolve(&unix, |_| None).is_err());
    }
}

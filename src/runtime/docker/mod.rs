//! [`ContainerRuntime`] over the Docker Engine API (bollard). The only module
//! that sees bollard's types: everything leaving it is berth's own
//! ([`ObservedContainer`], [`RuntimeError`]).
//!
//! The client is created lazily: berth must keep running (and keep its HTTP
//! status up) while the daemon is away, so a missing socket or a refused
//! connection is an [`RuntimeError::Unavailable`] on each call until Docker
//! answers again, never a failure to start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    RemoveImageOptions, RenameContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use tracing::{debug, warn};

use super::{
    ContainerRuntime, ContainerState, CreateRequest, ObservedContainer, ProgressFn,
    RegistryCredentials, Result, RuntimeError,
};
use crate::config::DockerConfig;

mod create;
mod endpoint;
mod errors;
mod events;
mod observe;
mod pull;

pub(crate) use errors::map_err;
pub use events::{ContainerEvent, ACTIONS as EVENT_ACTIONS};

use crate::names::labels;
use create::create_body;
use endpoint::{Connector, Endpoint};
use observe::{from_inspect, from_summary, with_exit_details};
use pull::{split_reference, PullTally};

/// Request timeout for ordinary calls. Long enough for a slow daemon on a
/// loaded edge host; `stop` extends it by its grace period.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How many inspects `list` runs at once for stopped containers: enough to
/// hide latency, few enough not to flood a small daemon.
const INSPECT_CONCURRENCY: usize = 4;

/// berth's Docker runtime. Cheap to share: clones of the inner client share
/// one connection pool.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    conn: Arc<Connector>,
}

impl DockerRuntime {
    /// Prepare a client for `cfg` and try to negotiate the API version.
    ///
    /// Fails only for a configuration that can never work (unknown scheme,
    /// unreadable TLS CA, TLS on a unix socket). A daemon that is down or a
    /// socket that does not exist yet is logged and retried on each call,
    /// which then returns [`RuntimeError::Unavailable`].
    pub async fn connect(cfg: &DockerConfig) -> Result<DockerRuntime> {
        let endpoint = Endpoint::resolve(cfg, |k| std::env::var(k).ok())?;
        let runtime = DockerRuntime {
            conn: Arc::new(Connector {
                endpoint,
                client: Mutex::new(None),
            }),
        };
        match runtime.conn.client().await {
            Ok(_) => {}
            Err(RuntimeError::Unavailable(why)) => {
                warn!(endpoint = ?runtime.conn.endpoint, %why, "docker is not reachable yet; will retry on each call");
            }
            Err(e) => return Err(e),
        }
        Ok(runtime)
    }

    async fn client(&self) -> Result<Docker> {
        self.conn.client().await
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn list(&self, namespace: &str) -> Result<Vec<ObservedContainer>> {
        let docker = self.client().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={namespace}", labels::NAMESPACE)],
        )]);
        let summaries = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(map_err)?;
        debug!(namespace, containers = summaries.len(), "listed containers");
        let observed: Vec<ObservedContainer> = summaries
            .into_iter()
            .filter_map(from_summary)
            // The label filter is Docker's; ownership is berth's invariant,
            // so it is checked here too rather than trusted.
            .filter(|c| c.namespace() == Some(namespace))
            .collect();
        let filled: Vec<Option<ObservedContainer>> = stream::iter(observed)
            .map(|c| {
                let docker = docker.clone();
                async move {
                    // Exit details (code, start and finish times) exist only
                    // for a container that ran and stopped. A `created` one
                    // is, during a cold start, usually one whose start is in
                    // flight: its inspect would wait for that start to end.
                    if !matches!(c.state, ContainerState::Exited | ContainerState::Dead) {
                        return Ok(Some(c));
                    }
                    match docker.inspect_container(&c.id, None).await {
                        Ok(detail) => Ok(Some(with_exit_details(c, &detail))),
                        // Removed between list and inspect: it is simply gone.
                        Err(e) => match map_err(e) {
                            RuntimeError::NotFound(_) => Ok(None),
                            other => Err(other),
                        },
                    }
                }
            })
            .buffered(INSPECT_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(filled.into_iter().flatten().collect())
    }

    async fn inspect(&self, name_or_id: &str) -> Result<ObservedContainer> {
        let docker = self.client().await?;
        debug!(container = name_or_id, "inspect container");
        let detail = docker
            .inspect_container(name_or_id, None)
            .await
            .map_err(map_err)?;
        from_inspect(&detail)
            .ok_or_else(|| RuntimeError::Other(format!("docker returned no id for {name_or_id}")))
    }

    async fn create(&self, req: CreateRequest<'_>) -> Result<String> {
        let docker = self.client().await?;
        debug!(container = req.name, image = %req.spec.image, "create container");
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(req.name.to_string()),
                    ..Default::default()
                }),
                create_body(req.spec, req.labels),
            )
            .await
            .map_err(map_err)?;
        for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
            warn!(container = req.name, %warning, "docker warned on create");
        }
        Ok(created.id)
    }

    /// Docker 20.10 answers 304 for a container that already runs, but
    /// bollard folds 304 into success, so this returns `Ok(())` then — which
    /// apply treats exactly like `NotModified`.
    async fn start(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        debug!(container = id, "start container");
        docker.start_container(id, None).await.map_err(map_err)
    }

    /// Like `start`, an already stopped container gives `Ok(())` (Docker's
    /// 304 is success to bollard).
    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let docker = self.client().await?;
        let t = stop_secs(grace);
        debug!(container = id, grace_secs = t, "stop container");
        // Docker answers only after the container stopped: allow the grace
        // period on top of the usual request timeout.
        let docker =
            docker.with_timeout(REQUEST_TIMEOUT + Duration::from_secs(u64::from(t.unsigned_abs())));
        docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    ..Default::default()
                }),
            )
            .await
            .map_err(map_err)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let docker = self.client().await?;
        debug!(container = id, "remove container");
        docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(map_err)
    }

    async fn rename(&self, id: &str, new_name: &str) -> Result<()> {
        let docker = self.client().await?;
        debug!(container = id, new_name, "rename container");
        docker
            .rename_container(
                id,
                RenameContainerOptions {
                    name: new_name.to_string(),
                },
            )
            .await
            .map_err(map_err)
    }

    async fn image_present(&self, image: &str) -> Result<bool> {
        let docker = self.client().await?;
        match docker.inspect_image(image).await.map_err(map_err) {
            Ok(_) => Ok(true),
            Err(RuntimeError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
        progress: ProgressFn<'_>,
    ) -> Result<()> {
        let docker = self.client().await?;
        let (repo, tag) = split_reference(image);
        // Only the username is logged: the password stays in the header.
        debug!(
            image,
            username = credentials.and_then(|c| c.username.as_deref()),
            "pull image"
        );
        let credentials = credentials.map(|c| DockerCredentials {
            username: c.username.clone(),
            password: c.password.clone(),
            email: c.email.clone(),
            serveraddress: c.server_address.clone(),
            ..Default::default()
        });
        let mut stream = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(repo.to_string()),
                tag: Some(tag.to_string()),
                ..Default::default()
            }),
            None,
            credentials,
        );
        let mut tally = PullTally::default();
        while let Some(item) = stream.next().await {
            tally.record(&item.map_err(map_err)?);
            progress(&tally.summary());
        }
        Ok(())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let docker = self.client().await?;
        debug!(image, "remove image");
        docker
            .remove_image(
                image,
                Some(RemoveImageOptions {
                    force: false,
                    noprune: false,
                    ..Default::default()
                }),
                None,
            )
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn version(&self) -> Result<String> {
        let docker = self.client().await?;
        let version = docker.version().await.map_err(map_err)?;
        version
            .version
            .ok_or_else(|| RuntimeError::Other("docker reported no version".into()))
    }
}

/// Docker's `t` for a stop: whole seconds, rounded up, and at least 1 when
/// any grace was asked for (0 would mean "SIGKILL at once").
fn stop_secs(grace: Duration) -> i32 {
    if grace.is_zero() {
        return 0;
    }
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_grace_rounds_up_to_whole_seconds_and_never_to_zero() {
        assert_eq!(stop_secs(Duration::ZERO), 0);
        assert_eq!(stop_secs(Duration::from_millis(1)), 1);
        assert_eq!(stop_secs(Duration::from_millis(1500)), 2);
        assert_eq!(stop_secs(Duration::from_secs(10)), 10);
    }
}

//! [`ContainerRuntime`] over the Docker Engine API (bollard). The only module
//! that sees bollard's types: everything leaving it is berth's own
//! ([`ObservedContainer`], [`RuntimeError`]).
//!
//! The client is created lazily: berth must keep running (and keep its HTTP
//! status up) while the daemon is away, so a missing socket or a refused
//! connection is an [`RuntimeError::Unavailable`] on each call until Docker
//! answers again, never a failure to start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EventMessage, HealthConfig,
    HealthStatusEnum, HostConfig, PortBinding as DockerPortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    RemoveContainerOptions, RemoveImageOptions, RenameContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use tracing::{debug, warn};

use super::{
    ContainerRuntime, ContainerState, CreateRequest, Health, ObservedContainer, ProgressFn,
    PullProgress, RegistryCredentials, Result, RuntimeError,
};
use crate::config::DockerConfig;
use crate::spec::{labels, ContainerSpec};

/// Request timeout for ordinary calls. Long enough for a slow daemon on a
/// loaded edge host; `stop` extends it by its grace period.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How many inspects `list` runs at once for stopped containers: enough to
/// hide latency, few enough not to flood a small daemon.
const INSPECT_CONCURRENCY: usize = 4;

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// Where and how to reach the daemon, resolved once from the agent config and
/// the environment so every reconnect uses the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
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
    fn resolve(cfg: &DockerConfig, env: impl Fn(&str) -> Option<String>) -> Result<Endpoint> {
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
struct Connector {
    endpoint: Endpoint,
    client: Mutex<Option<Docker>>,
}

impl Connector {
    /// The negotiated client, connecting first if Docker has not answered yet.
    ///
    /// A client is kept only after `negotiate_version` succeeded: bollard's
    /// default API version (1.53) is newer than Docker 20.10 accepts, so an
    /// unnegotiated client would fail every call with a 400.
    async fn client(&self) -> Result<Docker> {
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

/// berth's Docker runtime. Cheap to share: clones of the inner client share
/// one connection pool.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    conn: Arc<Connector>,
}

/// One Docker container event, narrowed to what triggers a reconcile pass.
/// Events are hints ("look again"), never state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Docker's action: `die`, `oom`, `destroy`, `start`, `kill`,
    /// `health_status: unhealthy`, ...
    pub action: String,
    /// Container id.
    pub id: String,
    /// `io.berth.task` of the container, when labelled.
    pub task: Option<String>,
    /// `io.berth.index` of the container, when labelled and numeric.
    pub index: Option<u32>,
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

    /// Container events of one namespace (`type=container`,
    /// `label=io.berth.namespace=<ns>`), as hints for the watcher.
    ///
    /// The stream ends after an error (Docker went away, the connection
    /// broke): the caller reconnects by calling `events` again, and should
    /// run a full pass since events may have been missed meanwhile.
    pub fn events(
        &self,
        namespace: &str,
    ) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
        self.events_since(namespace, None)
    }

    /// Like [`events`](Self::events), but Docker first replays the events
    /// since `since`. The subscription is only made when the stream is first
    /// polled; replaying from a time taken before closes that gap (and the
    /// gap of a reconnect).
    pub fn events_since(
        &self,
        namespace: &str,
        since: Option<SystemTime>,
    ) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + Send + 'static {
        let since = since.map(|t| {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
        });
        let conn = Arc::clone(&self.conn);
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}={namespace}", labels::NAMESPACE)],
            ),
        ]);
        stream::once(async move { conn.client().await })
            .map(move |client| match client {
                Ok(docker) => docker
                    .events(Some(EventsOptions {
                        since: since.clone(),
                        filters: Some(filters.clone()),
                        ..Default::default()
                    }))
                    .map_err(map_err)
                    .try_filter_map(|msg| async move { Ok(container_event(msg)) })
                    .boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .flatten()
            // End after the first error so callers see one clear signal.
            .scan(false, |failed, item| {
                let out = if *failed { None } else { Some(item) };
                if let Some(Err(_)) = &out {
                    *failed = true;
                }
                async move { out }
            })
    }
}

fn container_event(msg: EventMessage) -> Option<ContainerEvent> {
    let action = msg.action?;
    let actor = msg.actor?;
    let id = actor.id?;
    let attributes = actor.attributes.unwrap_or_default();
    Some(ContainerEvent {
        action,
        id,
        task: attributes.get(labels::TASK).cloned(),
        index: attributes.get(labels::INDEX).and_then(|i| i.parse().ok()),
    })
}

/// Map a bollard error onto berth's kinds. Docker's own message is kept for
/// people; the kind drives apply (404 gone, 409 conflict, 304 no-op).
pub(crate) fn map_err(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            304 => RuntimeError::NotModified,
            400 => RuntimeError::Invalid(message),
            404 => RuntimeError::NotFound(message),
            409 => RuntimeError::Conflict(message),
            _ => RuntimeError::Other(format!("docker answered {status_code}: {message}")),
        },
        BollardError::DockerStreamError { error } => RuntimeError::Other(error),
        e @ (BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError
        | BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }) => RuntimeError::Unavailable(error_chain(&e)),
        e => RuntimeError::Other(error_chain(&e)),
    }
}

/// The error and its sources on one line: hyper's top-level message
/// ("client error (Connect)") alone does not say the socket was refused.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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
                    if c.is_running() {
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

/// Per-layer progress of one pull, from Docker's JSON progress stream.
#[derive(Default)]
struct PullTally {
    /// layer id → (current, total, done)
    layers: BTreeMap<String, (u64, u64, bool)>,
}

impl PullTally {
    fn record(&mut self, info: &bollard::models::CreateImageInfo) {
        let Some(id) = info.id.as_deref() else { return };
        let status = info.status.as_deref().unwrap_or_default();
        // The first line names the tag, not a layer.
        if status.starts_with("Pulling from") {
            return;
        }
        let entry = self.layers.entry(id.to_string()).or_default();
        if let Some(d) = &info.progress_detail {
            if status == "Downloading" {
                entry.0 = d.current.unwrap_or(0).max(0) as u64;
                entry.1 = d.total.unwrap_or(0).max(0) as u64;
            }
        }
        if matches!(
            status,
            "Pull complete" | "Already exists" | "Download complete"
        ) {
            entry.0 = entry.1;
            entry.2 = status != "Download complete" || entry.2;
        }
    }

    fn summary(&self) -> PullProgress {
        PullProgress {
            layers_done: self.layers.values().filter(|l| l.2).count(),
            layers: self.layers.len(),
            bytes_done: self.layers.values().map(|l| l.0).sum(),
            bytes_total: self.layers.values().map(|l| l.1).sum(),
        }
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

/// Split an image reference into Docker's `fromImage` and `tag`. An empty tag
/// would make Docker pull every tag of the repository, so a reference without
/// one means `latest`, as with the docker CLI. A digest goes in `tag`.
fn split_reference(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (&image[..colon], &image[colon + 1..])
        }
        None => (image, "latest"),
    }
}

/// The full create body for a resolved spec. Every `ContainerSpec` field has
/// a place here; Docker's restart policy is always `no` because berth itself
/// restarts (with backoff) and must see every exit.
fn create_body(spec: &ContainerSpec, labels: &BTreeMap<String, String>) -> ContainerCreateBody {
    let mut exposed = BTreeSet::new();
    let mut bindings: HashMap<String, Option<Vec<DockerPortBinding>>> = HashMap::new();
    for port in &spec.ports {
        for proto in ["tcp", "udp"] {
            let key = format!("{}/{proto}", port.container_port);
            exposed.insert(key.clone());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(DockerPortBinding {
                    host_ip: None,
                    host_port: Some(port.host_port.to_string()),
                });
        }
    }
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let host_config = HostConfig {
        network_mode: Some(spec.network_mode.clone()),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        dns: non_empty(&spec.dns_servers),
        dns_search: non_empty(&spec.dns_search_domains),
        privileged: Some(spec.privileged),
        ipc_mode: spec.ipc_mode.clone(),
        pid_mode: spec.pid_mode.clone(),
        uts_mode: spec.uts_mode.clone(),
        binds: non_empty(&spec.volumes),
        cpu_shares: spec.cpu_shares,
        memory: spec.memory_bytes,
        // memory + swap = memory: a hard limit with no swap, as Nomad does.
        memory_swap: spec.memory_bytes,
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    let ns = |v: Option<u64>| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={}", v.value))
                .collect(),
        ),
        labels: Some(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        hostname: spec.hostname.clone(),
        exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().collect()),
        healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: ns(h.interval_ns),
            timeout: ns(h.timeout_ns),
            retries: h.retries.map(i64::from),
            start_period: ns(h.start_period_ns),
            start_interval: None,
        }),
        stop_timeout: spec.stop_timeout_secs,
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn from_summary(s: ContainerSummary) -> Option<ObservedContainer> {
    let name = s
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let state = ContainerState::parse(&s.state.map(|st| st.to_string()).unwrap_or_default());
    Some(ObservedContainer {
        id: s.id?,
        name,
        image: s.image.unwrap_or_default(),
        labels: s.labels.unwrap_or_default().into_iter().collect(),
        state,
        health: health_from_status(s.status.as_deref().unwrap_or_default()),
        exit_code: None,
        // Approximate, for status's uptime: the list call has no start time.
        started_at: uptime_from_status(s.status.as_deref().unwrap_or_default())
            .and_then(|up| SystemTime::now().checked_sub(up)),
        finished_at: None,
    })
}

/// Health as `docker ps` shows it in the status text ("Up 5 minutes
/// (unhealthy)"): API 1.41's list has no structured health field.
/// How long a running container has been up, from the list's status text
/// (`Up 5 minutes`, `Up About an hour (healthy)`): as precise as `docker ps`.
fn uptime_from_status(status: &str) -> Option<Duration> {
    let rest = status.strip_prefix("Up ")?;
    let rest = rest.split(" (").next().unwrap_or(rest);
    let mut words = rest.split_whitespace();
    let first = words.next()?;
    let (n, unit) = match first {
        "Less" => return Some(Duration::ZERO),
        "About" => (1, words.nth(1)?),
        n => (n.parse::<u64>().ok()?, words.next()?),
    };
    let secs = match unit.trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        "month" => 30 * 86_400,
        "year" => 365 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n * secs))
}

fn health_from_status(status: &str) -> Health {
    if status.contains("(unhealthy)") {
        Health::Unhealthy
    } else if status.contains("(healthy)") {
        Health::Healthy
    } else if status.contains("(health: starting)") {
        Health::Starting
    } else {
        Health::None
    }
}

fn with_exit_details(
    mut c: ObservedContainer,
    detail: &ContainerInspectResponse,
) -> ObservedContainer {
    if let Some(state) = &detail.state {
        c.exit_code = state.exit_code;
        c.started_at = state.started_at.as_deref().and_then(parse_docker_time);
        c.finished_at = state.finished_at.as_deref().and_then(parse_docker_time);
    }
    c
}

fn from_inspect(d: &ContainerInspectResponse) -> Option<ObservedContainer> {
    let config = d.config.as_ref();
    let state = d.state.as_ref();
    let health = match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        _ => Health::None,
    };
    Some(ObservedContainer {
        id: d.id.clone()?,
        name: d
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        // The reference the container was created with, as `list` reports it.
        image: config.and_then(|c| c.image.clone()).unwrap_or_default(),
        labels: config
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        state: ContainerState::parse(
            &state
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        health,
        exit_code: state.and_then(|s| s.exit_code),
        started_at: state
            .and_then(|s| s.started_at.as_deref())
            .and_then(parse_docker_time),
        finished_at: state
            .and_then(|s| s.finished_at.as_deref())
            .and_then(parse_docker_time),
    })
}

/// Parse Docker's RFC 3339 timestamps (`2024-05-01T10:00:00.123456789Z`, or
/// with a `+hh:mm` offset). Docker's zero time `0001-01-01T00:00:00Z` ("never")
/// and anything unparsable or before 1970 give `None`.
pub(crate) fn parse_docker_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Keep nanosecond precision; ignore anything finer.
        for (i, c) in frac.bytes().take(digits).enumerate() {
            if i < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
        }
        nanos *= 10u32.pow(9u32.saturating_sub(digits as u32));
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{EnvEntry, HealthcheckSpec, PortBinding};

    #[test]
    fn http_statuses_map_to_berths_error_kinds_keeping_dockers_message() {
        let server = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.into(),
        };
        assert_eq!(
            map_err(server(404, "No such container: x")),
            RuntimeError::NotFound("No such container: x".into())
        );
        assert_eq!(
            map_err(server(409, "name in use by abc")),
            RuntimeError::Conflict("name in use by abc".into())
        );
        assert_eq!(map_err(server(304, "")), RuntimeError::NotModified);
        assert_eq!(
            map_err(server(
                400,
                "conflicting options: hostname and the network mode"
            )),
            RuntimeError::Invalid("conflicting options: hostname and the network mode".into())
        );
        let other = map_err(server(500, "driver failed"));
        assert!(
            matches!(&other, RuntimeError::Other(m) if m.contains("500") && m.contains("driver failed")),
            "{other:?}"
        );
    }

    #[test]
    fn a_missing_socket_refused_connection_or_timeout_is_unavailable() {
        for e in [
            BollardError::SocketNotFoundError("/var/run/docker.sock".into()),
            BollardError::RequestTimeoutError,
            BollardError::IOError {
                err: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
            },
        ] {
            let mapped = map_err(e);
            assert!(matches!(mapped, RuntimeError::Unavailable(_)), "{mapped:?}");
        }
    }

    #[test]
    fn a_pull_stream_error_keeps_dockers_message_and_other_errors_are_other() {
        assert_eq!(
            map_err(BollardError::DockerStreamError {
                error: "no basic auth credentials".into()
            }),
            RuntimeError::Other("no basic auth credentials".into())
        );
        let mapped = map_err(BollardError::APIVersionParseError {});
        assert!(matches!(mapped, RuntimeError::Other(_)), "{mapped:?}");
    }

    #[test]
    fn docker_times_parse_with_nanoseconds_and_the_zero_time_is_none() {
        let t = parse_docker_time("2024-05-01T10:00:00.123456789Z").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_714_557_600);
        assert_eq!(d.subsec_nanos(), 123_456_789);
        assert_eq!(
            parse_docker_time("2024-05-01T10:00:00Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_714_557_600)
        );
        assert_eq!(
            parse_docker_time("2024-05-01T12:00:00.5+02:00").unwrap(),
            UNIX_EPOCH + Duration::new(1_714_557_600, 500_000_000)
        );
        assert_eq!(
            parse_docker_time("1970-01-01T00:00:00Z").unwrap(),
            UNIX_EPOCH
        );
        assert_eq!(
            parse_docker_time("2000-02-29T00:00:00Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(951_782_400)
        );
        assert_eq!(parse_docker_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_docker_time(""), None);
        assert_eq!(parse_docker_time("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_docker_time("2024-05-01 10:00:00Z"), None);
    }

    #[test]
    fn uptime_is_read_from_the_status_text() {
        let up = |s| uptime_from_status(s).map(|d| d.as_secs());
        assert_eq!(up("Up 5 minutes"), Some(300));
        assert_eq!(up("Up About an hour (healthy)"), Some(3600));
        assert_eq!(up("Up 1 second"), Some(1));
        assert_eq!(up("Up Less than a second"), Some(0));
        assert_eq!(up("Up 3 days (Paused)"), Some(3 * 86_400));
        assert_eq!(up("Exited (0) 3 minutes ago"), None);
    }

    #[test]
    fn health_is_read_from_the_status_text() {
        assert_eq!(
            health_from_status("Up 5 minutes (unhealthy)"),
            Health::Unhealthy
        );
        assert_eq!(
            health_from_status("Up 5 minutes (healthy)"),
            Health::Healthy
        );
        assert_eq!(
            health_from_status("Up 2 seconds (health: starting)"),
            Health::Starting
        );
        assert_eq!(health_from_status("Up 5 minutes"), Health::None);
        assert_eq!(health_from_status("Exited (0) 3 seconds ago"), Health::None);
    }

    #[test]
    fn stop_grace_rounds_up_to_whole_seconds_and_never_to_zero() {
        assert_eq!(stop_secs(Duration::ZERO), 0);
        assert_eq!(stop_secs(Duration::from_millis(1)), 1);
        assert_eq!(stop_secs(Duration::from_millis(1500)), 2);
        assert_eq!(stop_secs(Duration::from_secs(10)), 10);
    }

    #[test]
    fn image_references_split_into_repo_and_tag_defaulting_to_latest() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("nginx:1.27"), ("nginx", "1.27"));
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app:v2"),
            ("127.0.0.1:5000/team/app", "v2")
        );
        assert_eq!(split_reference("app@sha256:abcd"), ("app", "sha256:abcd"));
    }

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

    #[test]
    fn every_spec_field_reaches_the_create_body() {
        let mut spec = ContainerSpec::for_image("berth-fixture:1");
        spec.cmd = Some(vec!["sleep".into(), "forever".into()]);
        spec.entrypoint = Some(vec!["/fixture".into()]);
        spec.env.insert(
            "A".into(),
            EnvEntry {
                value: "1".into(),
                secret: false,
            },
        );
        spec.ports.push(PortBinding {
            label: "http".into(),
            host_port: 20001,
            container_port: 80,
        });
        spec.hostname = Some("web1".into());
        spec.dns_servers = vec!["1.1.1.1".into()];
        spec.dns_search_domains = vec!["lan".into()];
        spec.volumes = vec!["/srv:/srv:ro".into()];
        spec.cpu_shares = Some(250);
        spec.memory_bytes = Some(64 << 20);
        spec.ipc_mode = Some("host".into());
        spec.healthcheck = Some(HealthcheckSpec {
            test: vec!["CMD".into(), "/fixture".into(), "probe".into(), "80".into()],
            interval_ns: Some(1_000_000_000),
            timeout_ns: Some(500_000_000),
            retries: Some(3),
            start_period_ns: None,
        });
        spec.stop_timeout_secs = Some(5);
        let labels = BTreeMap::from([("io.berth.namespace".to_string(), "t".to_string())]);
        let body = create_body(&spec, &labels);
        assert_eq!(body.env.unwrap(), vec!["A=1".to_string()]);
        assert_eq!(
            body.exposed_ports.unwrap(),
            vec!["80/tcp".to_string(), "80/udp".to_string()]
        );
        let hc = body.host_config.unwrap();
        let bindings = hc.port_bindings.unwrap();
        for key in ["80/tcp", "80/udp"] {
            let b = bindings[key].as_ref().unwrap();
            assert_eq!(b[0].host_port.as_deref(), Some("20001"));
        }
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.memory_swap, Some(64 << 20));
        assert_eq!(hc.cpu_shares, Some(250));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        assert_eq!(hc.ipc_mode.as_deref(), Some("host"));
        assert_eq!(hc.binds.unwrap(), vec!["/srv:/srv:ro".to_string()]);
        assert_eq!(hc.dns.unwrap(), vec!["1.1.1.1".to_string()]);
        assert_eq!(hc.dns_search.unwrap(), vec!["lan".to_string()]);
        let health = body.healthcheck.unwrap();
        assert_eq!(health.interval, Some(1_000_000_000));
        assert_eq!(health.retries, Some(3));
        assert_eq!(body.stop_timeout, Some(5));
        assert_eq!(body.hostname.as_deref(), Some("web1"));
        assert_eq!(body.labels.unwrap()["io.berth.namespace"], "t");
    }
}

//! berth's HTTP endpoints on `listen`: `/healthz`, `/metrics`, `/v1/status`,
//! and the two that ask the loop to act: `POST /v1/retry/{task}` and
//! `POST /v1/sync` (fetch the git source now).
//!
//! Every handler reads what the loop published; none calls Docker, so a
//! hung daemon cannot hang a health probe. `/healthz` follows the loop's own
//! heartbeat, not pass completion: a 1 h stop or a 20 min pull in flight
//! keeps it at 200; a stuck loop, or Docker unreachable for longer than the
//! agent's `docker_down_limit`, turns it 503.
//!
//! Warning: the port may face strangers. Connections are bounded (see
//! [`HttpLimits`]): one that has sent nothing holds no slot and is closed
//! after the header timeout (or sooner, when newer ones need the room);
//! when every slot is taken a small reserve
//! still answers `/healthz` and `/metrics`; beyond that a connection is
//! closed at once. With `http.token_file`, `/v1/status`, `/v1/retry` and
//! `/v1/sync` want `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Path;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::engine::status::{unix_millis, unix_secs, SharedStatus, Status};
use crate::engine::trigger::Trigger;
use crate::faces::metrics::Metrics;
use tokio::sync::{mpsc, oneshot};

use crate::source::SourceStatus;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {cause} (choose another address with --listen or `listen:` in the agent config)")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot read http.token_file {path}: {cause}")]
    TokenRead {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("http.token_file {path} is empty: put the token on its first line")]
    TokenEmpty { path: std::path::PathBuf },
}

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub status: SharedStatus,
    pub metrics: Arc<Metrics>,
    /// Docker unreachable for longer than this turns `/healthz` 503
    /// (agent key `docker_down_limit`).
    pub docker_down_limit: Duration,
    /// Where `POST /v1/retry/{task}` asks the loop to act.
    pub triggers: Option<mpsc::Sender<Trigger>>,
    /// When set, `/v1/status`, `/v1/retry` and `/v1/sync` want this bearer token.
    pub token: Option<BearerToken>,
    /// Where `POST /v1/sync` asks the git source to fetch, when there is one.
    pub sync: Option<mpsc::Sender<oneshot::Sender<SourceStatus>>>,
}

/// A bearer token, kept as its digest so comparing takes the same time
/// whatever the guess.
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl BearerToken {
    pub fn new(token: &str) -> BearerToken {
        BearerToken(Sha256::digest(token.as_bytes()).into())
    }

    /// The token file's first line, trimmed.
    pub fn read(path: &std::path::Path) -> Result<BearerToken, HttpError> {
        let text = read_token_file(path)?;
        Ok(BearerToken::new(&text))
    }

    /// Does an `Authorization` header value carry this token? Constant time
    /// in the token's content.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        given
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The token in `path` (first line, trimmed): what `berth status` and
/// `berth retry` send.
pub fn read_token_file(path: &std::path::Path) -> Result<String, HttpError> {
    let text = std::fs::read_to_string(path).map_err(|cause| HttpError::TokenRead {
        path: path.to_path_buf(),
        cause,
    })?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(HttpError::TokenEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// How many connections the port holds, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections being served at once (agent key `http.max_connections`).
    pub max_connections: usize,
    /// Beyond those, this many more are served `/healthz` and `/metrics`
    /// only, one request each, so a probe still gets an answer.
    pub reserve: usize,
    /// Connections accepted that have not sent a byte yet; beyond this the
    /// one waiting longest is closed, so a new client always gets in.
    pub max_waiting: usize,
    /// A request's headers must arrive within this (and the first byte of a
    /// connection, too). hyper starts the clock when it waits for the next
    /// request, so this is also how long a keep-alive connection may idle.
    pub header_read_timeout: Duration,
    /// A connection on which no byte is read or written for this long is
    /// closed: a client that stopped reading an answer, a stalled body.
    pub idle_timeout: Duration,
}

/// Default for `http.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

impl HttpLimits {
    pub fn new(max_connections: usize) -> HttpLimits {
        HttpLimits {
            max_connections,
            reserve: 8,
            max_waiting: 4 * max_connections.max(64),
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::new(DEFAULT_MAX_CONNECTIONS)
    }
}

/// `/healthz` turns 503 when the loop has not beaten for this long. It beats
/// every few seconds and a pass waits at most 30 s for Docker's list.
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(60);

/// Bind `addr` now, so a taken port is an error at startup, not later.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr,
            cause: source,
        })
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/retry/{task}", post(retry))
        .route("/v1/sync", post(sync))
        .with_state(state)
}

/// What a connection beyond `max_connections` is served: the probes only.
fn reserve_router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many connections\n",
            )
        })
        .with_state(state)
}

/// The soft limit on open files raised to the hard limit, so connections
/// and Docker calls do not compete for the default 1,024. Returns the new
/// soft limit (`None`: unlimited or unchanged).
pub fn raise_open_files_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok(limit.current);
    }
    setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )?;
    Ok(limit.maximum)
}

/// Serve until the process ends.
pub fn spawn(
    listener: TcpListener,
    state: HttpState,
    limits: HttpLimits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve(listener, state, limits))
}

async fn serve(listener: TcpListener, state: HttpState, limits: HttpLimits) {
    let app = router(state.clone());
    let reserve_app = reserve_router(state);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(limits.reserve));
    let waiting = Arc::new(Waiting::new(limits.max_waiting));
    let mut accept_failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
            }
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                if !accept_failing {
                    tracing::warn!("HTTP: cannot accept a connection: {e}");
                    accept_failing = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let evicted = waiting.enter();
        let (slots, reserve) = (slots.clone(), reserve.clone());
        let (app, reserve_app) = (app.clone(), reserve_app.clone());
        tokio::spawn(async move {
            // A connection that sends nothing holds no slot; when too many
            // wait, the one waiting longest is closed to make room.
            let mut first = [0u8; 1];
            tokio::select! {
                r = tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)) => {
                    if !matches!(r, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
                _ = evicted => return,
            }
            if let Ok(_slot) = slots.try_acquire_owned() {
                serve_connection(stream, app, limits, true).await;
            } else if let Ok(_slot) = reserve.try_acquire_owned() {
                serve_connection(stream, reserve_app, limits, false).await;
            } else {
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
    }
}

/// Connections accepted that have not sent their first byte, oldest first.
/// Each holds the sending half of its eviction notice; a connection that
/// moved on has dropped the receiving half.
struct Waiting {
    max: usize,
    queue: std::sync::Mutex<std::collections::VecDeque<tokio::sync::oneshot::Sender<()>>>,
}

impl Waiting {
    fn new(max: usize) -> Waiting {
        Waiting {
            max: max.max(1),
            queue: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Register a new connection; when too many wait, evict the oldest.
    /// Returns the notice the new one is evicted by.
    fn enter(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.max {
            queue.retain(|s| !s.is_closed());
        }
        while queue.len() >= self.max {
            if let Some(oldest) = queue.pop_front() {
                let _ = oldest.send(());
            }
        }
        queue.push_back(tx);
        rx
    }
}

/// One connection: hyper's HTTP/1.1 with the header timeout, closed when
/// idle for `idle_timeout`.
async fn serve_connection(stream: TcpStream, app: Router, limits: HttpLimits, keep_alive: bool) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = hyper_util::rt::TokioIo::new(Tracked {
        inner: stream,
        start,
        last: last.clone(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(keep_alive);
    let conn = builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(app));
    tokio::pin!(conn);
    loop {
        let idle = start
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        let Some(left) = limits
            .idle_timeout
            .checked_sub(idle)
            .filter(|d| !d.is_zero())
        else {
            return; // dropped: closed
        };
        tokio::select! {
            _ = &mut conn => return,
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// A stream that notes when a byte last moved (ms since `start`).
struct Tracked {
    inner: TcpStream,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// `None` when the request may go on; else the 401 to answer.
fn unauthorized(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let token = state.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if token.accepts(given) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this endpoint wants `Authorization: Bearer <token>` (the agent's http.token_file)\n",
        )
            .into_response(),
    )
}

/// Why berth is unhealthy, or `None` when it is healthy. Pure.
pub fn unhealthy_reason(
    status: &Status,
    docker_down_limit: Duration,
    now: SystemTime,
) -> Option<String> {
    let Some(beat) = status.heartbeat_ms else {
        return Some("the loop has not started yet".into());
    };
    let silent = unix_millis(now).saturating_sub(beat) / 1000;
    if silent > HEARTBEAT_LIMIT.as_secs() {
        return Some(format!(
            "the loop has not beaten for {silent}s (limit {}s): it is stuck",
            HEARTBEAT_LIMIT.as_secs()
        ));
    }
    if let Some(since) = status.docker_down_since {
        let down = unix_secs(now).saturating_sub(since);
        if down >= docker_down_limit.as_secs() {
            let why = status.docker_error.as_deref().unwrap_or("no answer");
            return Some(format!(
                "Docker has been unreachable for {down}s (limit {}s): {why}",
                docker_down_limit.as_secs()
            ));
        }
    }
    None
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let status = state.status.view(SystemTime::now());
    match unhealthy_reason(&status, state.docker_down_limit, SystemTime::now()) {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

/// The Prometheus text format unless the scraper's `Accept` prefers
/// OpenMetrics.
async fn metrics(State(state): State<HttpState>, headers: axum::http::HeaderMap) -> Response {
    let status = state.status.view(SystemTime::now());
    state.metrics.refresh_from(&status, SystemTime::now());
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::faces::metrics::Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.metrics.encode_as(format),
    )
        .into_response()
}

/// `berth retry TASK`: try the task's held updates again (202), or 404 for
/// a task the agent does not run.
async fn retry(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(task): Path<String>,
) -> Response {
    if let Some(denied) = unauthorized(&state, &headers) {
        return denied;
    }
    let known = state
        .status
        .view(SystemTime::now())
        .instances
        .iter()
        .any(|i| i.task == task);
    if !known {
        return (StatusCode::NOT_FOUND, format!("no task {task:?} here\n")).into_response();
    }
    match &state.triggers {
        Some(tx) if tx.send(Trigger::Retry { task: task.clone() }).await.is_ok() => (
            StatusCode::ACCEPTED,
            format!("retrying {task}: its held updates and backoff are forgotten\n"),
        )
            .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "the loop is not running\n").into_response(),
    }
}

/// Fetch the git source now and answer with its status once the fetch is
/// done (200, also when the fetch failed: `last_error` says why; the
/// commit that runs is unchanged then). 404 without a git source.
async fn sync(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&state, &headers) {
        return denied;
    }
    let Some(requests) = &state.sync else {
        return (
            StatusCode::NOT_FOUND,
            "no git source configured (source.git in the agent config)\n",
        )
            .into_response();
    };
    let (tx, rx) = oneshot::channel();
    if requests.send(tx).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the git source is not running\n",
        )
            .into_response();
    }
    match rx.await {
        Ok(status) => Json(status).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the git source stopped\n").into_response(),
    }
}

async fn status(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&state, &headers) {
        return denied;
    }
    Json(state.status.view(SystemTime::now())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    const LIMIT: Duration = Duration::from_secs(60);

    #[test]
    fn a_bearer_token_is_accepted_exactly() {
        let t = BearerToken::new("s3cret-token");
        assert!(t.accepts(Some("Bearer s3cret-token")));
        assert!(!t.accepts(Some("Bearer s3cret-tokeN")));
        assert!(!t.accepts(Some("Bearer s3cret")));
        assert!(!t.accepts(Some("Basic s3cret-token")));
        assert!(!t.accepts(Some("s3cret-token")));
        assert!(!t.accepts(None));
    }

    #[test]
    fn healthy_while_the_loop_beats_whatever_work_is_in_flight() {
        let mut s = Status::default();
        assert_eq!(
            unhealthy_reason(&s, LIMIT, at(100)).as_deref(),
            Some("the loop has not started yet")
        );
        s.heartbeat_ms = Some(95_000);
        assert_eq!(unhealthy_reason(&s, LIMIT, at(100)), None);
        assert_eq!(
            unhealthy_reason(&s, LIMIT, at(155)),
            None,
            "within the limit"
        );
        assert!(unhealthy_reason(&s, LIMIT, at(200)).is_some_and(|r| r.contains("105s")));
    }

    #[test]
    fn docker_away_turns_unhealthy_only_after_the_limit() {
        let mut s = Status {
            heartbeat_ms: Some(1_000_000),
            docker_down_since: Some(960),
            docker_error: Some("connection refused".into()),
            ..Status::default()
        };
        assert_eq!(
            unhealthy_reason(&s, LIMIT, at(1000)),
            None,
            "40 s is within the limit"
        );
        s.heartbeat_ms = Some(1_030_000);
        let reason = unhealthy_reason(&s, LIMIT, at(1030)).expect("70 s is not");
        assert!(
            reason.contains("unreachable for 70s") && reason.contains("refused"),
            "{reason}"
        );
    }

    /// GET /metrics with `accept`, over a real socket: (content type, body).
    async fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        (content_type, body.to_string())
    }

    #[tokio::test]
    async fn metrics_answer_in_the_format_the_scraper_accepts() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        spawn(
            listener,
            HttpState {
                status: crate::engine::status::StatusBoard::new(Status::default()),
                metrics: Arc::new(Metrics::new()),
                docker_down_limit: LIMIT,
                triggers: None,
                sync: None,
                token: None,
            },
            HttpLimits::new(4),
        );
        let (kind, body) = scrape(addr, None).await;
        assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            body.contains("# TYPE berth_source_fetch_failures_total counter"),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");
        let (kind, body) = scrape(
            addr,
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        )
        .await;
        assert!(
            kind.starts_with("application/openmetrics-text; version=1.0.0"),
            "{kind}"
        );
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert!(body.contains("berth_build_info{"), "{body}");
    }
}

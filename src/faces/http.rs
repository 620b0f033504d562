//! berth's HTTP endpoints on `listen`: `/healthz`, `/metrics`, `/v1/status`,
//! and the two that ask the loop to act: `POST /v1/retry/{task}` and
//! `POST /v1/sync` (fetch the git source now).
//!
//! Every handler reads what the loop published; none calls Docker, so a
//! hung daemon cannot hang a health probe. `/healthz` follows the loop's own
//! heartbeat, not pass completion: a 1 h stop or a 20 min pull in flight
//! keeps it at 200; a stuck loop, or Docker unreachable for longer than the
//! agent's `docker_down_limit`, turns it 503.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::Path;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;

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
    /// Where `POST /v1/sync` asks the git source to fetch, when there is one.
    pub sync: Option<mpsc::Sender<oneshot::Sender<SourceStatus>>>,
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

/// Serve until the process ends.
pub fn spawn(listener: TcpListener, state: HttpState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    })
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

async fn metrics(State(state): State<HttpState>) -> Response {
    let status = state.status.view(SystemTime::now());
    state.metrics.refresh_from(&status, SystemTime::now());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// `berth retry TASK`: try the task's held updates again (202), or 404 for
/// a task the agent does not run.
async fn retry(State(state): State<HttpState>, Path(task): Path<String>) -> Response {
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
async fn sync(State(state): State<HttpState>) -> Response {
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

async fn status(State(state): State<HttpState>) -> Json<Status> {
    Json(state.status.view(SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    const LIMIT: Duration = Duration::from_secs(60);

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
}

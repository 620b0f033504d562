//! berth's HTTP endpoints on `listen`: `/healthz`, `/metrics`, `/v1/status`.
//!
//! Every handler reads what the loop last published; none calls Docker, so a
//! hung daemon cannot hang a health probe. "Docker answers" therefore means
//! "the last pass reached Docker".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::controller::{SharedStatus, Status};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source} (choose another address with --listen or `listen:` in the agent config)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub status: SharedStatus,
    pub metrics: Arc<Metrics>,
    /// The resync period: a last pass older than 3 × this means the loop is stuck.
    pub resync: Duration,
}

/// Bind `addr` now, so a taken port is an error at startup, not later.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
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

fn snapshot(state: &HttpState) -> Status {
    state.status.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Why berth is unhealthy, or `None` when it is healthy. Pure.
pub fn unhealthy_reason(status: &Status, resync: Duration, now: SystemTime) -> Option<String> {
    if let Some(e) = &status.docker_error {
        return Some(format!("docker unreachable: {e}"));
    }
    let Some(last) = status.last_pass else {
        return Some("no pass has completed yet".into());
    };
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let age = now_secs.saturating_sub(last);
    let limit = (resync * 3).as_secs().max(1);
    if age > limit {
        return Some(format!(
            "the last completed pass was {age}s ago (limit {limit}s = 3 x resync)"
        ));
    }
    None
}

async fn healthz(State(state): State<HttpState>) -> Response {
    let status = snapshot(&state);
    match unhealthy_reason(&status, state.resync, SystemTime::now()) {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let status = snapshot(&state);
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

async fn status(State(state): State<HttpState>) -> Json<Status> {
    let mut status = snapshot(&state);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for i in &mut status.instances {
        i.uptime_secs = i.started_at.map(|t| now.saturating_sub(t));
    }
    Json(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn healthy_only_with_a_recent_pass_and_docker_answering() {
        let resync = Duration::from_secs(10);
        let mut s = Status::default();
        assert_eq!(
            unhealthy_reason(&s, resync, at(100)).as_deref(),
            Some("no pass has completed yet")
        );
        s.last_pass = Some(95);
        assert_eq!(unhealthy_reason(&s, resync, at(100)), None);
        assert!(unhealthy_reason(&s, resync, at(200)).is_some_and(|r| r.contains("105s ago")));
        s.docker_error = Some("connection refused".into());
        assert!(unhealthy_reason(&s, resync, at(100))
            .is_some_and(|r| r.starts_with("docker unreachable")));
    }
}

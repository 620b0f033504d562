//! Docker's answers (list summaries, inspects) as berth's
//! [`ObservedContainer`]: state, health, start and exit details.

use std::time::{Duration, SystemTime};

use bollard::models::{ContainerInspectResponse, ContainerSummary, HealthStatusEnum, MountPoint};

use crate::runtime::{ContainerState, Health, HostAccess, ObservedContainer};

/// Network mode, networks and mounts: the list's `HostConfig.NetworkMode`,
/// `NetworkSettings.Networks` (by name) and `Mounts`.
fn host_access<'a>(
    network_mode: Option<&str>,
    networks: impl IntoIterator<Item = &'a String>,
    mounts: &[MountPoint],
) -> HostAccess {
    let mut networks: Vec<String> = networks.into_iter().cloned().collect();
    networks.sort();
    let mut host = HostAccess {
        network_mode: network_mode.unwrap_or_default().to_string(),
        networks,
        ..HostAccess::default()
    };
    for m in mounts {
        match m.typ.as_ref().map(|t| t.to_string()).as_deref() {
            Some("bind") => {
                host.binds.push(m.source.clone().unwrap_or_default());
            }
            Some("volume") => {
                let name = m.name.clone().unwrap_or_default();
                // An anonymous volume (an image's VOLUME) is named by 64 hex digits.
                let anonymous = name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit());
                if !name.is_empty() && !anonymous {
                    host.volumes.push(name);
                }
            }
            _ => {}
        }
    }
    host
}

/// Everything an inspect shows: the list's part, plus `Privileged` and the
/// pid, ipc and uts modes.
fn full_host_access(d: &ContainerInspectResponse) -> HostAccess {
    let hc = d.host_config.as_ref();
    let mode = |m: Option<&String>| m.cloned().unwrap_or_default();
    HostAccess {
        privileged: hc.and_then(|h| h.privileged).unwrap_or(false),
        pid_mode: mode(hc.and_then(|h| h.pid_mode.as_ref())),
        ipc_mode: mode(hc.and_then(|h| h.ipc_mode.as_ref())),
        uts_mode: mode(hc.and_then(|h| h.uts_mode.as_ref())),
        ..host_access(
            hc.and_then(|h| h.network_mode.as_deref()),
            d.network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .into_iter()
                .flat_map(|n| n.keys()),
            d.mounts.as_deref().unwrap_or_default(),
        )
    }
}

pub(super) fn from_summary(s: ContainerSummary) -> Option<ObservedContainer> {
    let name = s
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let state = ContainerState::parse(&s.state.map(|st| st.to_string()).unwrap_or_default());
    let host = host_access(
        s.host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref()),
        s.network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .into_iter()
            .flat_map(|n| n.keys()),
        s.mounts.as_deref().unwrap_or_default(),
    );
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
        host,
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

pub(super) fn with_exit_details(
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

pub(super) fn from_inspect(d: &ContainerInspectResponse) -> Option<ObservedContainer> {
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
        host: full_host_access(d),
    })
}

/// Docker's RFC 3339 timestamps (`2024-05-01T10:00:00.123456789Z`; Docker
/// writes container times in UTC). Docker's zero time
/// `0001-01-01T00:00:00Z` ("never") and anything unparsable give `None`.
pub(crate) fn parse_docker_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
}

//! Docker's errors in berth's kinds: the kind drives apply's decisions (404
//! gone, 409 conflict, 304 no-op, 400 refused), Docker's message is kept for
//! people.

use bollard::errors::Error as BollardError;

use crate::runtime::RuntimeError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! `berth status` asks the running berth for `/v1/status`: a minimal
//! HTTP/1.1 GET over a tokio `TcpStream`, enough for one small JSON body on
//! loopback without pulling in an HTTP client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::engine::status::Status;

#[derive(Debug, thiserror::Error)]
pub enum StatusClientError {
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: {cause}")]
    Io {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("{addr} answered, but not like berth: {message}")]
    Protocol { addr: SocketAddr, message: String },
}

/// The `Authorization` header line for `token`, or nothing.
fn authorization(token: Option<&str>) -> String {
    token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"))
}

/// Fetch and parse `/v1/status` from a berth listening on `addr`, with the
/// bearer token when the agent config has one.
pub async fn fetch_status(
    addr: SocketAddr,
    timeout: Duration,
    token: Option<&str>,
) -> Result<Status, StatusClientError> {
    match tokio::time::timeout(timeout, fetch(addr, authorization(token))).await {
        Ok(r) => r,
        Err(_) => Err(StatusClientError::Timeout { addr, timeout }),
    }
}

async fn fetch(addr: SocketAddr, authorization: String) -> Result<Status, StatusClientError> {
    let request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{authorization}Connection: close\r\n\r\n"
    );
    // A status is small; cap what a stranger on the port can make us read.
    let raw = exchange(addr, &request, 16 * 1024 * 1024).await?;
    parse_response(&raw).map_err(|message| StatusClientError::Protocol { addr, message })
}

/// Send `request` on a new connection and read the answer, at most `cap` bytes.
async fn exchange(addr: SocketAddr, request: &str, cap: u64) -> Result<Vec<u8>, StatusClientError> {
    let mut stream =
        TcpStream::connect(addr)
            .await
            .map_err(|source| StatusClientError::Connect {
                addr,
                cause: source,
            })?;
    let io = |source| StatusClientError::Io {
        addr,
        cause: source,
    };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    stream.take(cap).read_to_end(&mut raw).await.map_err(io)?;
    Ok(raw)
}

/// `POST path` with an empty body; returns the status code and the body.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    token: Option<&str>,
) -> Result<(u16, String), StatusClientError> {
    let authorization = authorization(token);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{authorization}Connection: close\r\n\r\n"
    );
    let answer = async {
        let raw = exchange(addr, &request, 64 * 1024).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| StatusClientError::Protocol {
                addr,
                message: "no status line".into(),
            })?;
        Ok((code, body.trim().to_string()))
    };
    match tokio::time::timeout(timeout, answer).await {
        Ok(r) => r,
        Err(_) => Err(StatusClientError::Timeout { addr, timeout }),
    }
}

/// Split an HTTP/1.1 response into status and body, and parse the body. Pure.
pub fn parse_response(raw: &[u8]) -> Result<Status, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("unexpected response: {status_line}"));
    }
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&body).map_err(|e| format!("not a berth status: {e}"))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_text = String::from_utf8_lossy(&body[..end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies_parse_and_errors_are_named() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"berth_version\":\"0.1.0\",\"namespace\":\"b\",\"docker_version\":null,\"docker_error\":null,\"last_pass\":null,\"passes\":0,\"instances\":[],\"manifest_errors\":[]}";
        assert_eq!(parse_response(plain).unwrap().namespace, "b");
        let body = "{\"berth_version\":\"0.1.0\",\"namespace\":\"c\",\"docker_version\":null,\"docker_error\":null,\"last_pass\":null,\"passes\":0,\"instances\":[],\"manifest_errors\":[]}";
        let (a, b) = body.split_at(10);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        assert_eq!(parse_response(chunked.as_bytes()).unwrap().namespace, "c");
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .unwrap_err()
            .contains("404"));
    }
}

//! systemd's sd_notify protocol, without a crate: one datagram to
//! `$NOTIFY_SOCKET` per message. Used for `READY=1` after the first pass and
//! `WATCHDOG=1` at every beat of the loop (at least every 5 s, whatever work
//! is in flight), so only a stuck loop is restarted by systemd.
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::os::unix::net::UnixDatagram;

/// Send `message` (e.g. `"READY=1"`) to systemd when it listens. Returns
/// whether a message was sent; errors are reported, never fatal.
pub fn sd_notify(message: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: systemd writes it with a leading '@'.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
            return Ok(true);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Ok(false);
        }
    }
    socket.send_to(message.as_bytes(), std::path::Path::new(&path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_notify_socket_nothing_is_sent() {
        // The test runner is not started by systemd with Type=notify.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!sd_notify("READY=1").unwrap());
        }
    }
}

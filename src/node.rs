//! Facts about this host that manifests may use: `${node.hostname}`,
//! `${node.ip}`, and `select: {node.hostname: ...}`.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

/// The host's name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub hostname: String,
    pub ip: String,
}

impl NodeInfo {
    /// The host name, and the address of the interface that holds the
    /// default route (what other hosts reach this one by), falling back to
    /// the first non-loopback IPv4 address, then `127.0.0.1`.
    pub fn detect() -> NodeInfo {
        NodeInfo::detect_with(None)
    }

    /// [`detect`](Self::detect), with `ip` (agent key `node.ip`) taking
    /// the place of the detected address when set.
    pub fn detect_with(ip: Option<IpAddr>) -> NodeInfo {
        let ip = ip
            .map(|ip| ip.to_string())
            .or_else(default_route_ip)
            .or_else(|| {
                std::fs::read_to_string("/proc/net/fib_trie")
                    .ok()
                    .and_then(|t| first_local_ipv4(&t))
            })
            .unwrap_or_else(|| "127.0.0.1".into());
        NodeInfo {
            hostname: this_hostname(),
            ip,
        }
    }
}

/// The host's name, `localhost` where it cannot be read.
pub fn this_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// When this host booted, from `/proc/stat`'s `btime`.
pub fn boot_time() -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Whether a container that finished at `finished_at` was stopped by the
/// host going down rather than by its own doing: it finished before this
/// boot. An update interrupted by a reboot resumes its gate instead of
/// counting the reboot as the new container's failure.
pub fn stopped_by_reboot(finished_at: Option<std::time::SystemTime>) -> bool {
    match (finished_at, boot_time()) {
        (Some(finished), Some(boot)) => finished < boot,
        _ => false,
    }
}

/// The source address the kernel picks for a packet to the outside world:
/// connecting a UDP socket sends nothing, it only chooses a route. The
/// target is in TEST-NET-1 (never routed anywhere), so any default route
/// answers; without one there is no answer.
fn default_route_ip() -> Option<String> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() && !ip.is_loopback() => Some(ip.to_string()),
        _ => None,
    }
}

/// In /proc/net/fib_trie, a local address is the line before `/32 host LOCAL`.
fn first_local_ipv4(fib_trie: &str) -> Option<String> {
    let lines: Vec<&str> = fib_trie.lines().collect();
    lines.windows(2).find_map(|w| {
        let addr = w[0].trim().trim_start_matches("|-- ").trim();
        let is_local = w[1].contains("/32 host LOCAL");
        let usable = !addr.starts_with("127.") && addr.parse::<Ipv4Addr>().is_ok();
        (is_local && usable).then(|| addr.to_string())
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_agent_key_takes_the_place_of_the_detected_address() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(NodeInfo::detect_with(Some(ip)).ip, "192.0.2.10");
        assert_eq!(NodeInfo::detect_with(None), NodeInfo::detect());
    }
    use super::*;

    #[test]
    fn the_first_non_loopback_local_address_is_the_fallback_node_ip() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 172.17.0.5\n        /32 host LOCAL\n";
        assert_eq!(first_local_ipv4(fib), Some("172.17.0.5".into()));
        assert_eq!(first_local_ipv4("nothing"), None);
    }

    #[test]
    fn the_node_ip_is_an_address_of_this_host() {
        let node = NodeInfo::detect();
        let ip: Ipv4Addr = node.ip.parse().expect("an IPv4 address");
        // Binding succeeds only for an address this host owns.
        assert!(UdpSocket::bind((ip, 0)).is_ok(), "{ip} is not ours");
    }
}

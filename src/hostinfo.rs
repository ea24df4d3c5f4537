//! Facts about the host that usernet reads from /proc once, before it may enter a sandbox
//! where /proc is gone: they only shape messages and defaults, never the datapath; and the
//! addresses of the host's interfaces, which `--outbound-addr IFNAME` names.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct HostInfo {
    /// `net.ipv4.ip_unprivileged_port_start`.
    pub unprivileged_port_start: i64,
    /// `net.ipv4.ping_group_range`, as "LOW HIGH".
    pub ping_group_range: String,
    /// Whether the host has IPv6 at all.
    pub ipv6: bool,
}

static INFO: OnceLock<HostInfo> = OnceLock::new();

/// The host's facts, read on first use.
pub fn get() -> &'static HostInfo {
    INFO.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        HostInfo {
            unprivileged_port_start: read("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                .trim()
                .parse()
                .unwrap_or(1024),
            ping_group_range: read("/proc/sys/net/ipv4/ping_group_range")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            ipv6: std::path::Path::new("/proc/net/if_inet6").exists(),
        }
    })
}

/// Read everything now (call before entering a sandbox).
pub fn preload() {
    get();
}

/// The first IPv4 address of the interface `name`.
pub fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != name {
            return None;
        }
        let sin = ifa.address?.as_sockaddr_in().copied()?;
        Some(sin.ip())
    })
}

/// The first IPv6 address of the interface `name` that is not link-local (a host socket
/// bound to one could only reach that link).
pub fn interface_ipv6(name: &str) -> Option<Ipv6Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != name {
            return None;
        }
        let ip = ifa.address?.as_sockaddr_in6().copied()?.ip();
        (!ip.is_unicast_link_local()).then_some(ip)
    })
}

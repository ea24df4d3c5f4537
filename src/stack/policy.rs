//! Where a guest's destination goes on the host, and what the guest is never allowed to reach.
//!
//! One decision per new flow: connect to a host address (the gateway maps to the host's
//! 127.0.0.1), refuse with a reset, or answer with an ICMP error. With
//! `--disable-host-loopback` the guest must not reach the host itself by any spelling: not the
//! gateway alias, not 127.0.0.0/8 or 0.0.0.0/8 written directly (a guest with CAP_NET_RAW can
//! craft those), and not one of the host's own addresses. The last is checked with a route
//! lookup (a UDP `connect()`, which sends nothing): a destination the kernel would deliver
//! locally comes back as its own source address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use smoltcp::wire::Icmpv4DstUnreachable;

use crate::net::VirtualNetwork;

/// What to do with a new guest flow towards some destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Open a host socket to this address.
    Connect(SocketAddr),
    /// Reset the guest's connection attempt (as a closed port would).
    Refuse,
    /// Tell the guest the destination cannot be reached.
    Unreachable(Icmpv4DstUnreachable),
}

#[derive(Debug, Clone, Copy)]
pub struct HostPolicy {
    pub net: VirtualNetwork,
    pub disable_host_loopback: bool,
}

impl HostPolicy {
    /// Decide where a guest TCP connection to `dst` goes.
    pub fn tcp(&self, dst: SocketAddrV4) -> Verdict {
        let ip = *dst.ip();
        if ip == self.net.gateway {
            return if self.disable_host_loopback {
                Verdict::Unreachable(Icmpv4DstUnreachable::NetUnreachable)
            } else {
                Verdict::Connect(SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())))
            };
        }
        if ip == self.net.dns {
            // The DNS forwarder owns this address; no TCP service behind it yet.
            return Verdict::Refuse;
        }
        if self.net.contains(ip) {
            // Nobody else lives in the virtual subnet.
            return Verdict::Unreachable(Icmpv4DstUnreachable::HostUnreachable);
        }
        if is_martian(ip) {
            return Verdict::Unreachable(Icmpv4DstUnreachable::NetUnreachable);
        }
        if self.disable_host_loopback && is_host_local(IpAddr::V4(ip)) {
            return Verdict::Unreachable(Icmpv4DstUnreachable::NetUnreachable);
        }
        Verdict::Connect(SocketAddr::V4(dst))
    }
}

/// Destinations no guest packet may go to through us, whatever the flags: the host's loopback
/// and "this network" written directly, multicast, broadcast and the reserved class E.
fn is_martian(ip: Ipv4Addr) -> bool {
    let first = ip.octets()[0];
    ip.is_loopback() || first == 0 || ip.is_multicast() || ip.is_broadcast() || first >= 240
}

/// Whether the kernel would deliver a packet for `ip` to this host itself.
pub fn is_host_local(ip: IpAddr) -> bool {
    match local_source_for(ip) {
        Ok(src) => src == ip || ip.is_loopback() || ip.is_unspecified(),
        // No route at all: a connect would fail anyway, and it is not local.
        Err(_) => ip.is_loopback() || ip.is_unspecified(),
    }
}

fn local_source_for(ip: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(bind)?;
    probe.connect((ip, 9))?;
    Ok(probe.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(disable: bool) -> HostPolicy {
        HostPolicy {
            net: VirtualNetwork::default(),
            disable_host_loopback: disable,
        }
    }

    #[test]
    fn gateway_maps_to_host_loopback_unless_disabled() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
        assert_eq!(
            policy(false).tcp(dst),
            Verdict::Connect("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            policy(true).tcp(dst),
            Verdict::Unreachable(Icmpv4DstUnreachable::NetUnreachable)
        );
    }

    #[test]
    fn loopback_and_martians_are_never_reachable() {
        for p in [policy(false), policy(true)] {
            for ip in [
                "127.0.0.1",
                "127.1.2.3",
                "0.0.0.0",
                "0.1.2.3",
                "224.0.0.1",
                "255.255.255.255",
                "240.0.0.1",
            ] {
                let dst = SocketAddrV4::new(ip.parse().unwrap(), 80);
                assert!(matches!(p.tcp(dst), Verdict::Unreachable(_)), "{ip}");
            }
        }
    }

    #[test]
    fn subnet_neighbours_do_not_exist() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 50), 80);
        assert_eq!(
            policy(false).tcp(dst),
            Verdict::Unreachable(Icmpv4DstUnreachable::HostUnreachable)
        );
        let dns = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 80);
        assert_eq!(policy(false).tcp(dns), Verdict::Refuse);
    }

    #[test]
    fn loopback_is_host_local() {
        assert!(is_host_local("127.0.0.1".parse().unwrap()));
        assert!(is_host_local("127.0.0.9".parse().unwrap()));
        assert!(is_host_local("0.0.0.0".parse().unwrap()));
    }
}

//! Where a guest's destination goes on the host, and what the guest is never allowed to reach.
//!
//! One decision per new flow (TCP connection, UDP NAT entry, ping): connect to a host address
//! (the gateway maps to the host's 127.0.0.1), hand it to one of our services (the DNS
//! forwarder on 10.0.2.3:53, local echo replies), or refuse it. With `--disable-host-loopback`
//! the guest must not reach the host itself by any spelling: not the gateway alias, not
//! 127.0.0.0/8 or 0.0.0.0/8 written directly (a guest with CAP_NET_RAW can craft those), and
//! not one of the host's own addresses. The last is checked with a route lookup (a UDP
//! `connect()`, which sends nothing): a destination the kernel would deliver locally comes
//! back as its own source address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use smoltcp::wire::Icmpv4DstUnreachable;

use crate::net::VirtualNetwork;

/// What to do with a new guest TCP connection or UDP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Open a host socket to this address.
    Connect(SocketAddr),
    /// The DNS forwarder's address and port: relay to the upstream resolvers.
    Dns,
    /// Refuse as a closed port would: RST for TCP, ICMP port unreachable for UDP.
    Refuse,
    /// Tell the guest the destination cannot be reached.
    Unreachable(Icmpv4DstUnreachable),
}

/// What to do with a guest ICMP echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoVerdict {
    /// One of our own addresses: answer it ourselves.
    Local,
    /// Ping this host address through a host ping socket.
    Forward(Ipv4Addr),
    Unreachable(Icmpv4DstUnreachable),
}

#[derive(Debug, Clone, Copy)]
pub struct HostPolicy {
    pub net: VirtualNetwork,
    pub disable_host_loopback: bool,
    /// 10.0.2.3 is an ordinary address, not our DNS forwarder (`--disable-dns`).
    pub disable_dns: bool,
    /// Source address for host sockets to the outside (`--outbound-addr`).
    pub outbound: Option<Ipv4Addr>,
}

const DNS_PORT: u16 = 53;

impl HostPolicy {
    pub fn new(net: VirtualNetwork) -> Self {
        HostPolicy {
            net,
            disable_host_loopback: false,
            disable_dns: false,
            outbound: None,
        }
    }

    /// Decide where a guest TCP connection or UDP flow to `dst` goes.
    pub fn transport(&self, dst: SocketAddrV4) -> Verdict {
        let ip = *dst.ip();
        if ip == self.net.gateway {
            return if self.disable_host_loopback {
                Verdict::Unreachable(Icmpv4DstUnreachable::NetUnreachable)
            } else {
                Verdict::Connect(SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())))
            };
        }
        if ip == self.net.dns && !self.disable_dns {
            return if dst.port() == DNS_PORT {
                Verdict::Dns
            } else {
                Verdict::Refuse
            };
        }
        if let Some(reason) = self.blocked(ip) {
            return Verdict::Unreachable(reason);
        }
        Verdict::Connect(SocketAddr::V4(dst))
    }

    /// Decide what to do with a guest ping to `dst`.
    pub fn echo(&self, dst: Ipv4Addr) -> EchoVerdict {
        if dst == self.net.gateway || (dst == self.net.dns && !self.disable_dns) {
            return EchoVerdict::Local;
        }
        match self.blocked(dst) {
            Some(reason) => EchoVerdict::Unreachable(reason),
            None => EchoVerdict::Forward(dst),
        }
    }

    /// Why a destination other than our own addresses may not be reached, if it may not.
    fn blocked(&self, ip: Ipv4Addr) -> Option<Icmpv4DstUnreachable> {
        if self.net.contains(ip) && !(ip == self.net.dns && self.disable_dns) {
            // Nobody else lives in the virtual subnet.
            return Some(Icmpv4DstUnreachable::HostUnreachable);
        }
        if is_martian(ip) {
            return Some(Icmpv4DstUnreachable::NetUnreachable);
        }
        if self.disable_host_loopback && is_host_local(IpAddr::V4(ip)) {
            return Some(Icmpv4DstUnreachable::NetUnreachable);
        }
        None
    }

    /// The local address a host socket towards `target` binds to: the outbound address,
    /// except towards loopback (where a foreign source would never be answered).
    pub fn bind_for(&self, target: &SocketAddr) -> Option<SocketAddr> {
        match (self.outbound, target) {
            (Some(addr), SocketAddr::V4(t)) if !t.ip().is_loopback() => {
                Some(SocketAddr::from((addr, 0)))
            }
            _ => None,
        }
    }
}

/// The ICMP error that tells a guest what `connect()` told us, for errors that mean the
/// destination cannot be reached.
pub fn unreachable_reason(e: &io::Error) -> Option<Icmpv4DstUnreachable> {
    match e.raw_os_error()? {
        libc::ENETUNREACH => Some(Icmpv4DstUnreachable::NetUnreachable),
        libc::EHOSTUNREACH | libc::ETIMEDOUT | libc::EHOSTDOWN => {
            Some(Icmpv4DstUnreachable::HostUnreachable)
        }
        libc::EACCES | libc::EPERM => Some(Icmpv4DstUnreachable::CommProhibited),
        _ => None,
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
            disable_host_loopback: disable,
            ..HostPolicy::new(VirtualNetwork::default())
        }
    }

    fn v4(s: &str, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(s.parse().unwrap(), port)
    }

    #[test]
    fn gateway_maps_to_host_loopback_unless_disabled() {
        let dst = v4("10.0.2.2", 8080);
        assert_eq!(
            policy(false).transport(dst),
            Verdict::Connect("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            policy(true).transport(dst),
            Verdict::Unreachable(Icmpv4DstUnreachable::NetUnreachable)
        );
        // Pings to the gateway are answered by usernet itself either way.
        assert_eq!(policy(true).echo(*dst.ip()), EchoVerdict::Local);
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
                assert!(
                    matches!(p.transport(v4(ip, 80)), Verdict::Unreachable(_)),
                    "{ip}"
                );
                assert!(
                    matches!(p.echo(ip.parse().unwrap()), EchoVerdict::Unreachable(_)),
                    "{ip}"
                );
            }
        }
    }

    #[test]
    fn dns_address_serves_port_53_only_unless_disabled() {
        let p = policy(false);
        assert_eq!(p.transport(v4("10.0.2.3", 53)), Verdict::Dns);
        assert_eq!(p.transport(v4("10.0.2.3", 80)), Verdict::Refuse);
        assert_eq!(p.echo("10.0.2.3".parse().unwrap()), EchoVerdict::Local);
        // With --disable-dns, 10.0.2.3 is just an address out there, as in slirp4netns.
        let p = HostPolicy {
            disable_dns: true,
            ..p
        };
        assert_eq!(
            p.transport(v4("10.0.2.3", 53)),
            Verdict::Connect("10.0.2.3:53".parse().unwrap())
        );
        assert_eq!(
            p.echo("10.0.2.3".parse().unwrap()),
            EchoVerdict::Forward("10.0.2.3".parse().unwrap())
        );
    }

    #[test]
    fn subnet_neighbours_do_not_exist() {
        assert_eq!(
            policy(false).transport(v4("10.0.2.50", 80)),
            Verdict::Unreachable(Icmpv4DstUnreachable::HostUnreachable)
        );
    }

    #[test]
    fn outbound_address_is_used_except_towards_loopback() {
        let p = HostPolicy {
            outbound: Some("192.0.2.7".parse().unwrap()),
            ..policy(false)
        };
        assert_eq!(
            p.bind_for(&"198.18.0.1:80".parse().unwrap()),
            Some("192.0.2.7:0".parse().unwrap())
        );
        assert_eq!(p.bind_for(&"127.0.0.1:80".parse().unwrap()), None);
    }

    #[test]
    fn loopback_is_host_local() {
        assert!(is_host_local("127.0.0.1".parse().unwrap()));
        assert!(is_host_local("127.0.0.9".parse().unwrap()));
        assert!(is_host_local("0.0.0.0".parse().unwrap()));
    }
}

//! Where a guest's destination goes on the host, and what the guest is never allowed to reach.
//!
//! One decision per new flow (TCP connection, UDP NAT entry, ping): connect to a host address
//! (the gateway maps to the host's 127.0.0.1, or ::1 for IPv6), hand it to one of our
//! services (the DNS forwarder on 10.0.2.3:53 and [fd00::3]:53, local echo replies), or
//! refuse it. With `--disable-host-loopback` the guest must not reach the host itself by any
//! spelling: not the gateway alias, not 127.0.0.0/8, 0.0.0.0/8, ::1 or :: written directly (a
//! guest with CAP_NET_RAW can craft those), not an IPv4-mapped IPv6 address (which an IPv6
//! host socket would carry to the IPv4 address inside), and not one of the host's own
//! addresses. The last is checked with a route lookup (a UDP `connect()`, which sends
//! nothing): a destination the kernel would deliver locally comes back as its own source
//! address. Loopback, unspecified, multicast and mapped addresses are refused whatever the
//! flags, since nothing legitimate reaches them through a gateway.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};

use crate::net::VirtualNetwork;

/// Why a destination cannot be reached, as the ICMP or ICMPv6 error that tells the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No route to that network.
    Net,
    /// No such host (for IPv6: address unreachable).
    Host,
    /// No service on that port.
    Port,
    /// Not allowed (communication administratively prohibited).
    Prohibited,
}

impl Unreachable {
    /// ICMP type 3 (destination unreachable) code.
    pub fn icmpv4_code(self) -> u8 {
        match self {
            Unreachable::Net => 0,
            Unreachable::Host => 1,
            Unreachable::Port => 3,
            Unreachable::Prohibited => 13,
        }
    }

    /// ICMPv6 type 1 (destination unreachable) code.
    pub fn icmpv6_code(self) -> u8 {
        match self {
            Unreachable::Net => 0,
            Unreachable::Prohibited => 1,
            Unreachable::Host => 3,
            Unreachable::Port => 4,
        }
    }
}

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
    Unreachable(Unreachable),
}

/// What to do with a guest ICMP echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoVerdict {
    /// One of our own addresses: answer it ourselves.
    Local,
    /// Ping this host address through a host ping socket.
    Forward(IpAddr),
    Unreachable(Unreachable),
}

#[derive(Debug, Clone, Copy)]
pub struct HostPolicy {
    pub net: VirtualNetwork,
    pub disable_host_loopback: bool,
    /// 10.0.2.3 is an ordinary address, not our DNS forwarder (`--disable-dns`).
    pub disable_dns: bool,
    /// Source address for host sockets to the outside (`--outbound-addr`).
    pub outbound: Option<Ipv4Addr>,
    /// The same for IPv6 (`--outbound-addr6`).
    pub outbound6: Option<Ipv6Addr>,
    /// Bind to the outbound address towards the host's loopback too (through the gateway), as
    /// slirp4netns does, so a service there sees the outbound address as its peer. Off for
    /// `usernet run` and `attach`, whose loopback services see 127.0.0.1 or ::1, the address
    /// loopback-only access rules expect.
    pub outbound_to_host_loopback: bool,
}

const DNS_PORT: u16 = 53;

impl HostPolicy {
    pub fn new(net: VirtualNetwork) -> Self {
        HostPolicy {
            net,
            disable_host_loopback: false,
            disable_dns: false,
            outbound: None,
            outbound6: None,
            outbound_to_host_loopback: false,
        }
    }

    /// Decide where a guest TCP connection or UDP flow to `dst` goes.
    pub fn transport(&self, dst: SocketAddr) -> Verdict {
        match dst {
            SocketAddr::V4(dst) => self.transport4(dst),
            SocketAddr::V6(dst) => self.transport6(dst),
        }
    }

    fn transport4(&self, dst: SocketAddrV4) -> Verdict {
        let ip = *dst.ip();
        // DNS first: a layout may put the forwarder on the host-loopback address.
        if ip == self.net.dns && !self.disable_dns && dst.port() == DNS_PORT {
            return Verdict::Dns;
        }
        if ip == self.net.host_loopback {
            return if self.disable_host_loopback {
                Verdict::Unreachable(Unreachable::Net)
            } else {
                Verdict::Connect(SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())))
            };
        }
        if ip == self.net.dns && !self.disable_dns {
            return Verdict::Refuse;
        }
        if let Some(reason) = self.blocked(ip) {
            return Verdict::Unreachable(reason);
        }
        Verdict::Connect(SocketAddr::V4(dst))
    }

    fn transport6(&self, dst: SocketAddrV6) -> Verdict {
        let Some(v6) = self.net.v6 else {
            // The classifier drops IPv6 when the guest has none; refuse anything that slips by.
            return Verdict::Unreachable(Unreachable::Net);
        };
        let ip = *dst.ip();
        if ip == v6.gateway || ip == v6.router {
            return if self.disable_host_loopback {
                Verdict::Unreachable(Unreachable::Net)
            } else {
                Verdict::Connect(SocketAddr::from((Ipv6Addr::LOCALHOST, dst.port())))
            };
        }
        if ip == v6.dns && !self.disable_dns {
            return if dst.port() == DNS_PORT {
                Verdict::Dns
            } else {
                Verdict::Refuse
            };
        }
        if let Some(reason) = self.blocked6(ip) {
            return Verdict::Unreachable(reason);
        }
        // Without the guest's flow label or scope: the host picks its own.
        Verdict::Connect(SocketAddr::from((ip, dst.port())))
    }

    /// Decide what to do with a guest ping to `dst`.
    pub fn echo(&self, dst: IpAddr) -> EchoVerdict {
        let blocked = match dst {
            IpAddr::V4(ip) => {
                if ip == self.net.gateway
                    || ip == self.net.host_loopback
                    || (ip == self.net.dns && !self.disable_dns)
                {
                    return EchoVerdict::Local;
                }
                self.blocked(ip)
            }
            IpAddr::V6(ip) => {
                let Some(v6) = self.net.v6 else {
                    return EchoVerdict::Unreachable(Unreachable::Net);
                };
                if ip == v6.gateway || ip == v6.router || (ip == v6.dns && !self.disable_dns) {
                    return EchoVerdict::Local;
                }
                self.blocked6(ip)
            }
        };
        match blocked {
            Some(reason) => EchoVerdict::Unreachable(reason),
            None => EchoVerdict::Forward(dst),
        }
    }

    /// Why a destination other than our own addresses may not be reached, if it may not.
    fn blocked(&self, ip: Ipv4Addr) -> Option<Unreachable> {
        if self.net.contains(ip) && !(ip == self.net.dns && self.disable_dns) {
            // Nobody else lives in the virtual subnet.
            return Some(Unreachable::Host);
        }
        if is_martian(ip) {
            return Some(Unreachable::Net);
        }
        if self.disable_host_loopback && is_host_local(IpAddr::V4(ip)) {
            return Some(Unreachable::Net);
        }
        None
    }

    /// The IPv6 version of [`HostPolicy::blocked`].
    fn blocked6(&self, ip: Ipv6Addr) -> Option<Unreachable> {
        if let Some(v6) = self.net.v6
            && v6.contains(ip)
            && !(ip == v6.dns && self.disable_dns)
        {
            return Some(Unreachable::Host);
        }
        if is_martian6(ip) {
            return Some(Unreachable::Net);
        }
        if self.disable_host_loopback && is_host_local(IpAddr::V6(ip)) {
            return Some(Unreachable::Net);
        }
        None
    }

    /// The local address a host socket towards `target` binds to: the outbound address of
    /// its family; towards the host's loopback only with
    /// [`outbound_to_host_loopback`](Self::outbound_to_host_loopback). (An outbound address
    /// is one of the host's own, so a loopback service's answer to it comes back over `lo`.)
    pub fn bind_for(&self, target: &SocketAddr) -> Option<SocketAddr> {
        if target.ip().is_loopback() && !self.outbound_to_host_loopback {
            return None;
        }
        match target {
            SocketAddr::V4(_) => self.outbound.map(|a| SocketAddr::from((a, 0))),
            SocketAddr::V6(_) => self.outbound6.map(|a| SocketAddr::from((a, 0))),
        }
    }
}

/// The ICMP error that tells a guest what `connect()` told us, for errors that mean the
/// destination cannot be reached.
pub fn unreachable_reason(e: &io::Error) -> Option<Unreachable> {
    match e.raw_os_error()? {
        libc::ENETUNREACH | libc::EADDRNOTAVAIL => Some(Unreachable::Net),
        libc::EHOSTUNREACH | libc::ETIMEDOUT | libc::EHOSTDOWN => Some(Unreachable::Host),
        libc::EACCES | libc::EPERM => Some(Unreachable::Prohibited),
        _ => None,
    }
}

/// Destinations no guest packet may go to through us, whatever the flags: the host's loopback
/// and "this network" written directly, multicast, broadcast and the reserved class E.
fn is_martian(ip: Ipv4Addr) -> bool {
    let first = ip.octets()[0];
    ip.is_loopback() || first == 0 || ip.is_multicast() || ip.is_broadcast() || first >= 240
}

/// The IPv6 version of [`is_martian`]: loopback, unspecified, multicast, link-local (a host
/// socket cannot know which of the host's links the guest meant), and addresses with an IPv4
/// address inside: IPv4-mapped (::ffff:0:0/96, which an IPv6 socket sends as IPv4, so
/// ::ffff:127.0.0.1 is the host's loopback) and the deprecated IPv4-compatible ::/96.
fn is_martian6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unicast_link_local()
        || ip.to_ipv4_mapped().is_some()
        || s[..6] == [0; 6]
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

    fn v4(s: &str, port: u16) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), port)
    }

    fn policy6(disable: bool) -> HostPolicy {
        HostPolicy {
            disable_host_loopback: disable,
            ..HostPolicy::new(
                VirtualNetwork::default().with_ipv6(crate::net::Ipv6Network::default()),
            )
        }
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
            Verdict::Unreachable(Unreachable::Net)
        );
        // Pings to the gateway are answered by usernet itself either way.
        assert_eq!(policy(true).echo(dst.ip()), EchoVerdict::Local);
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
            Verdict::Unreachable(Unreachable::Host)
        );
    }

    #[test]
    fn ipv6_gateway_maps_to_host_loopback_and_dns_to_the_forwarder() {
        let p = policy6(false);
        for gw in ["[fd00::2]:8080", "[fe80::2]:8080"] {
            assert_eq!(
                p.transport(gw.parse().unwrap()),
                Verdict::Connect("[::1]:8080".parse().unwrap())
            );
            assert_eq!(
                policy6(true).transport(gw.parse().unwrap()),
                Verdict::Unreachable(Unreachable::Net)
            );
        }
        assert_eq!(p.transport("[fd00::3]:53".parse().unwrap()), Verdict::Dns);
        assert_eq!(
            p.transport("[fd00::3]:80".parse().unwrap()),
            Verdict::Refuse
        );
        assert_eq!(
            p.transport("[fd00::77]:80".parse().unwrap()),
            Verdict::Unreachable(Unreachable::Host)
        );
        assert_eq!(
            p.transport("[2001:2::1]:80".parse().unwrap()),
            Verdict::Connect("[2001:2::1]:80".parse().unwrap())
        );
        assert_eq!(p.echo("fe80::2".parse().unwrap()), EchoVerdict::Local);
        assert_eq!(
            p.echo("2001:2::1".parse().unwrap()),
            EchoVerdict::Forward("2001:2::1".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_loopback_mapped_and_link_local_are_never_reachable() {
        for p in [policy6(false), policy6(true)] {
            for ip in [
                "::1",
                "::",
                "::ffff:127.0.0.1",
                "::ffff:198.18.0.1",
                "::127.0.0.1",
                "fe80::1",
                "ff02::1",
            ] {
                assert!(
                    matches!(
                        p.transport(SocketAddr::new(ip.parse().unwrap(), 80)),
                        Verdict::Unreachable(_)
                    ),
                    "{ip}"
                );
                assert!(
                    matches!(p.echo(ip.parse().unwrap()), EchoVerdict::Unreachable(_)),
                    "{ip}"
                );
            }
        }
        // Without --ipv6 nothing IPv6 goes anywhere.
        assert!(matches!(
            policy(false).transport("[2001:2::1]:80".parse().unwrap()),
            Verdict::Unreachable(_)
        ));
    }

    #[test]
    fn outbound_address_is_used_towards_loopback_only_when_asked() {
        let p = HostPolicy {
            outbound: Some("192.0.2.7".parse().unwrap()),
            ..policy(false)
        };
        assert_eq!(
            p.bind_for(&"198.18.0.1:80".parse().unwrap()),
            Some("192.0.2.7:0".parse().unwrap())
        );
        assert_eq!(p.bind_for(&"127.0.0.1:80".parse().unwrap()), None);
        // No IPv6 outbound address: IPv6 sockets bind to nothing.
        assert_eq!(p.bind_for(&"[2001:2::1]:80".parse().unwrap()), None);
        let p = HostPolicy {
            outbound6: Some("2001:2::7".parse().unwrap()),
            ..p
        };
        assert_eq!(
            p.bind_for(&"[2001:2::1]:80".parse().unwrap()),
            Some("[2001:2::7]:0".parse().unwrap())
        );
        assert_eq!(p.bind_for(&"[::1]:80".parse().unwrap()), None);
        // As slirp4netns: towards the host's loopback too.
        let p = HostPolicy {
            outbound_to_host_loopback: true,
            ..p
        };
        assert_eq!(
            p.bind_for(&"127.0.0.1:80".parse().unwrap()),
            Some("192.0.2.7:0".parse().unwrap())
        );
        assert_eq!(
            p.bind_for(&"[::1]:80".parse().unwrap()),
            Some("[2001:2::7]:0".parse().unwrap())
        );
    }

    #[test]
    fn other_layouts_put_dns_and_the_host_loopback_where_they_say() {
        use crate::net::HostNumbers;
        // gvisor-tap-vsock's: gateway, DNS and the host's loopback all on .1.
        let one = HostNumbers {
            gateway: 1,
            dns: 1,
            guest: 100,
            host_loopback: 1,
        };
        let net = VirtualNetwork::with_hosts("10.0.2.0".parse().unwrap(), 24, one).unwrap();
        let p = HostPolicy::new(net);
        assert_eq!(p.transport(v4("10.0.2.1", 53)), Verdict::Dns);
        assert_eq!(
            p.transport(v4("10.0.2.1", 80)),
            Verdict::Connect("127.0.0.1:80".parse().unwrap())
        );
        assert!(matches!(
            p.transport(v4("10.0.2.2", 80)),
            Verdict::Unreachable(_)
        ));
        // vpnkit's: gateway and DNS on .1, the host's loopback on .2 (answered, pinged).
        let vpnkit = HostNumbers {
            gateway: 1,
            dns: 1,
            guest: 3,
            host_loopback: 2,
        };
        let net = VirtualNetwork::with_hosts("192.168.65.0".parse().unwrap(), 24, vpnkit).unwrap();
        let p = HostPolicy::new(net);
        assert_eq!(p.transport(v4("192.168.65.1", 53)), Verdict::Dns);
        assert_eq!(p.transport(v4("192.168.65.1", 80)), Verdict::Refuse);
        assert_eq!(
            p.transport(v4("192.168.65.2", 8080)),
            Verdict::Connect("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(p.echo("192.168.65.2".parse().unwrap()), EchoVerdict::Local);
        assert!(net.is_ours("192.168.65.2".parse().unwrap()));
        let p = HostPolicy {
            disable_host_loopback: true,
            ..p
        };
        assert_eq!(
            p.transport(v4("192.168.65.2", 8080)),
            Verdict::Unreachable(Unreachable::Net)
        );
    }

    #[test]
    fn loopback_is_host_local() {
        assert!(is_host_local("127.0.0.1".parse().unwrap()));
        assert!(is_host_local("127.0.0.9".parse().unwrap()));
        assert!(is_host_local("0.0.0.0".parse().unwrap()));
    }
}

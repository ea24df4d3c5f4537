//! The virtual network the guest sees: its subnet, the gateway, the DNS forwarder and the
//! guest's own address, all derived from one CIDR, plus the MAC addresses we answer with; and,
//! with `--ipv6`, the same on an IPv6 /64 ([`Ipv6Network`]).
//!
//! This module is pure data: no sockets, no I/O. The launcher uses it to configure tap0 in the
//! child, the stack uses it to decide which frames are addressed to us.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::wire::EthernetAddress;

/// Default MTU of tap0: the largest a tap device takes that still leaves room for headers in
/// a 64 KiB buffer (the slirp4netns and rootlesskit default).
pub const DEFAULT_MTU: u32 = 65520;
/// The smallest MTU we accept (IPv4's minimum datagram size every host must take).
pub const MIN_MTU: u32 = 576;
/// The largest MTU we accept; 14 bytes of Ethernet header must still fit in 64 KiB.
pub const MAX_MTU: u32 = 65520;

/// Host offsets inside the subnet, as slirp uses them.
const GATEWAY_HOST: u32 = 2;
const DNS_HOST: u32 = 3;
const GUEST_HOST: u32 = 100;
/// The first address of libslirp's DHCP pool.
const SLIRP_DHCP_HOST: u32 = 15;
/// The guest's host number on IPv6, written like its IPv4 one: fd00::100.
const GUEST_HOST6: u128 = 0x100;

/// A `--cidr` value that cannot hold the virtual network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not an IPv4 CIDR like 10.0.2.0/24")]
    Syntax(String),
    #[error("{given}/{prefix} is not a network address; did you mean {network}/{prefix}?")]
    NotNetworkAddress {
        given: Ipv4Addr,
        network: Ipv4Addr,
        prefix: u8,
    },
    #[error(
        "a /{0} network is too small: the guest takes host number {GUEST_HOST}, so the prefix must be /25 or shorter"
    )]
    TooSmall(u8),
    /// Not an IPv6 prefix like fd00::/64.
    #[error("'{0}' is not an IPv6 prefix like fd00::/64")]
    Syntax6(String),
    /// An IPv6 prefix that is not a /64.
    #[error(
        "an IPv6 /{0} cannot be used: the guest's link is a /{IPV6_PREFIX_LEN}, as address autoconfiguration needs"
    )]
    PrefixLen6(u8),
    #[error(
        "{given}/{IPV6_PREFIX_LEN} is not a network address; did you mean {network}/{IPV6_PREFIX_LEN}?"
    )]
    NotNetworkAddress6 { given: Ipv6Addr, network: Ipv6Addr },
}

/// Where the addresses of the virtual network sit in it, as host numbers: slirp's layout
/// ([`HostNumbers::SLIRP`]) unless a driver whose addresses usernet takes on says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNumbers {
    pub gateway: u32,
    pub dns: u32,
    pub guest: u32,
    /// The address that stands for the host's own loopback.
    pub host_loopback: u32,
}

impl HostNumbers {
    /// slirp4netns's (and pasta's): gateway .2, which is also the host's loopback, DNS .3,
    /// the guest .100.
    pub const SLIRP: HostNumbers = HostNumbers {
        gateway: GATEWAY_HOST,
        dns: DNS_HOST,
        guest: GUEST_HOST,
        host_loopback: GATEWAY_HOST,
    };
}

/// The addresses of the virtual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualNetwork {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub guest: Ipv4Addr,
    /// TCP and UDP to this address reach the host's 127.0.0.1 (unless the policy disables
    /// it): the gateway in slirp's layout.
    pub host_loopback: Ipv4Addr,
    /// The IPv6 side, when the guest has IPv6 (`--ipv6`).
    pub v6: Option<Ipv6Network>,
}

impl Default for VirtualNetwork {
    fn default() -> Self {
        VirtualNetwork::new(Ipv4Addr::new(10, 0, 2, 0), 24).expect("the default CIDR is valid")
    }
}

impl VirtualNetwork {
    /// The network `network/prefix` in slirp's layout; `network` must have no host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        VirtualNetwork::with_hosts(network, prefix, HostNumbers::SLIRP)
    }

    /// The network `network/prefix` with its addresses at `hosts`; `network` must have no
    /// host bits set, and every host number must fit in it (not the network or broadcast
    /// address).
    pub fn with_hosts(
        network: Ipv4Addr,
        prefix: u8,
        hosts: HostNumbers,
    ) -> Result<Self, CidrError> {
        let largest = [hosts.gateway, hosts.dns, hosts.guest, hosts.host_loopback]
            .into_iter()
            .max()
            .unwrap_or(0);
        let smallest = [hosts.gateway, hosts.dns, hosts.guest, hosts.host_loopback]
            .into_iter()
            .min()
            .unwrap_or(0);
        if prefix > 30 || smallest == 0 || u64::from(largest) >= (1u64 << (32 - prefix)) - 1 {
            return Err(CidrError::TooSmall(prefix));
        }
        let mask = prefix_mask(prefix);
        let base = u32::from(network);
        if base & !mask != 0 {
            return Err(CidrError::NotNetworkAddress {
                given: network,
                network: Ipv4Addr::from(base & mask),
                prefix,
            });
        }
        Ok(VirtualNetwork {
            network,
            prefix,
            gateway: Ipv4Addr::from(base + hosts.gateway),
            dns: Ipv4Addr::from(base + hosts.dns),
            guest: Ipv4Addr::from(base + hosts.guest),
            host_loopback: Ipv4Addr::from(base + hosts.host_loopback),
            v6: None,
        })
    }

    /// The same network with IPv6 on `v6`.
    pub fn with_ipv6(self, v6: Ipv6Network) -> Self {
        VirtualNetwork {
            v6: Some(v6),
            ..self
        }
    }

    /// Parse `a.b.c.d/len`.
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let len: u8 = len.parse().map_err(|_| syntax())?;
        if len > 32 {
            return Err(syntax());
        }
        VirtualNetwork::new(addr, len)
    }

    /// Where libslirp's DHCP pool starts: host number 15 (10.0.2.15), as slirp4netns leases.
    pub fn slirp_dhcp_start(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + SLIRP_DHCP_HOST)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !prefix_mask(self.prefix))
    }

    /// Whether `addr` lies inside the virtual subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & prefix_mask(self.prefix) == u32::from(self.network)
    }

    /// The first address block this network overlaps that no link can use, as the block and
    /// what it is: 0.0.0.0/8 ("this network"), 127.0.0.0/8 (loopback), 224.0.0.0/4
    /// (multicast), 240.0.0.0/4 (reserved, and the broadcast address). A /0 overlaps them all.
    pub fn special_overlap(&self) -> Option<(&'static str, &'static str)> {
        const BLOCKS: [(Ipv4Addr, u8, &str, &str); 4] = [
            (Ipv4Addr::new(0, 0, 0, 0), 8, "0.0.0.0/8", "this network"),
            (Ipv4Addr::new(127, 0, 0, 0), 8, "127.0.0.0/8", "loopback"),
            (Ipv4Addr::new(224, 0, 0, 0), 4, "224.0.0.0/4", "multicast"),
            (Ipv4Addr::new(240, 0, 0, 0), 4, "240.0.0.0/4", "reserved"),
        ];
        BLOCKS.iter().find_map(|&(base, len, name, what)| {
            let mask = prefix_mask(self.prefix.min(len));
            (u32::from(base) & mask == u32::from(self.network) & mask).then_some((name, what))
        })
    }

    /// Whether `addr` is one of the addresses usernet itself answers for (ARP, ping).
    pub fn is_ours(&self, addr: Ipv4Addr) -> bool {
        addr == self.gateway || addr == self.dns || addr == self.host_loopback
    }

    /// The MAC address usernet uses for one of its own addresses: `52:55` followed by the
    /// IPv4 address, as slirp does, so a packet capture reads the same.
    pub fn mac_for(addr: Ipv4Addr) -> EthernetAddress {
        let o = addr.octets();
        EthernetAddress([0x52, 0x55, o[0], o[1], o[2], o[3]])
    }

    /// The source MAC of every frame usernet sends: everything the guest reaches lives behind
    /// the gateway. IPv6 neighbour discovery answers with it for every address of ours too.
    pub fn gateway_mac(&self) -> EthernetAddress {
        Self::mac_for(self.gateway)
    }

    /// The gateway address of `addr`'s family: where our own ICMP errors come from. IPv6
    /// without `--ipv6` cannot occur (the classifier drops it), and gets the IPv4 gateway.
    pub fn gateway_for(&self, addr: IpAddr) -> IpAddr {
        match (addr, self.v6) {
            (IpAddr::V6(_), Some(v6)) => IpAddr::V6(v6.gateway),
            _ => IpAddr::V4(self.gateway),
        }
    }

    /// The DNS forwarder's address of `addr`'s family (as [`VirtualNetwork::gateway_for`]).
    pub fn dns_for(&self, addr: IpAddr) -> IpAddr {
        match (addr, self.v6) {
            (IpAddr::V6(_), Some(v6)) => IpAddr::V6(v6.dns),
            _ => IpAddr::V4(self.dns),
        }
    }
}

/// The smallest link MTU IPv6 works on (RFC 8200 §5); the kernel turns IPv6 off on a link
/// below it.
pub const IPV6_MIN_MTU: u32 = 1280;

/// Prefix length of the IPv6 network: always a /64, the size stateless address
/// autoconfiguration works on.
pub const IPV6_PREFIX_LEN: u8 = 64;

/// The IPv6 side of the virtual network: a /64 (fd00::/64 by default, as slirp) on which
/// the gateway, the DNS forwarder and the guest take the same host numbers as on IPv4 (::2,
/// ::3, ::100), plus the router's link-local address fe80::2, which the guest's default route
/// points at. The guest also hears of the prefix through router advertisements, so a guest
/// that configures itself (SLAAC) lands on the same /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Network {
    pub prefix: Ipv6Addr,
    pub gateway: Ipv6Addr,
    pub dns: Ipv6Addr,
    pub guest: Ipv6Addr,
    /// The gateway's link-local address.
    pub router: Ipv6Addr,
}

impl Default for Ipv6Network {
    fn default() -> Self {
        Ipv6Network::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0))
            .expect("the default prefix is valid")
    }
}

impl Ipv6Network {
    /// The /64 starting at `prefix`, which must have no host bits set.
    pub fn new(prefix: Ipv6Addr) -> Result<Self, CidrError> {
        let base = u128::from(prefix);
        let mask = u128::MAX << (128 - u32::from(IPV6_PREFIX_LEN));
        if base & !mask != 0 {
            return Err(CidrError::NotNetworkAddress6 {
                given: prefix,
                network: Ipv6Addr::from(base & mask),
            });
        }
        Ok(Ipv6Network {
            prefix,
            gateway: Ipv6Addr::from(base + u128::from(GATEWAY_HOST)),
            dns: Ipv6Addr::from(base + u128::from(DNS_HOST)),
            guest: Ipv6Addr::from(base + GUEST_HOST6),
            router: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
        })
    }

    /// Parse `PREFIX/64`.
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax6(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| syntax())?;
        let len: u8 = len.parse().map_err(|_| syntax())?;
        if len > 128 {
            return Err(syntax());
        }
        if len != IPV6_PREFIX_LEN {
            return Err(CidrError::PrefixLen6(len));
        }
        Ipv6Network::new(addr)
    }

    /// Whether `addr` lies inside the /64.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) >> (128 - u32::from(IPV6_PREFIX_LEN))
            == u128::from(self.prefix) >> (128 - u32::from(IPV6_PREFIX_LEN))
    }

    /// Whether `addr` is one of the addresses usernet itself answers for (neighbour
    /// discovery, ping).
    pub fn is_ours(&self, addr: Ipv6Addr) -> bool {
        addr == self.gateway || addr == self.dns || addr == self.router
    }
}

impl fmt::Display for Ipv6Network {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{IPV6_PREFIX_LEN}", self.prefix)
    }
}

impl fmt::Display for VirtualNetwork {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_overlapping_special_blocks_are_named() {
        let overlap = |s: &str| VirtualNetwork::parse(s).unwrap().special_overlap();
        assert_eq!(overlap("10.0.2.0/24"), None);
        assert_eq!(overlap("192.168.0.0/16"), None);
        assert_eq!(overlap("127.0.0.0/24").map(|o| o.1), Some("loopback"));
        assert_eq!(overlap("0.0.0.0/24").map(|o| o.1), Some("this network"));
        assert_eq!(overlap("224.1.0.0/24").map(|o| o.1), Some("multicast"));
        assert_eq!(overlap("255.255.255.0/25").map(|o| o.1), Some("reserved"));
        assert_eq!(overlap("96.0.0.0/3").map(|o| o.1), Some("loopback"));
        assert!(overlap("0.0.0.0/0").is_some());
    }

    #[test]
    fn default_network_matches_slirp() {
        let n = VirtualNetwork::default();
        assert_eq!(n.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(n.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(n.guest, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 0, 2, 255));
        assert_eq!(n.gateway_mac(), EthernetAddress([0x52, 0x55, 10, 0, 2, 2]));
    }

    #[test]
    fn cidr_moves_every_address() {
        let n = VirtualNetwork::parse("10.0.3.0/24").unwrap();
        assert_eq!(n.gateway, Ipv4Addr::new(10, 0, 3, 2));
        assert_eq!(n.guest, Ipv4Addr::new(10, 0, 3, 100));
        assert!(n.contains(Ipv4Addr::new(10, 0, 3, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 0, 2, 77)));
    }

    #[test]
    fn cidr_rejects_host_bits_bad_syntax_and_tiny_nets() {
        assert!(matches!(
            VirtualNetwork::parse("10.0.2.100/24"),
            Err(CidrError::NotNetworkAddress { .. })
        ));
        assert!(matches!(
            VirtualNetwork::parse("10.0.2.0"),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            VirtualNetwork::parse("10.0.2.0/33"),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            VirtualNetwork::parse("x/24"),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            VirtualNetwork::parse("10.0.2.0/26"),
            Err(CidrError::TooSmall(26))
        ));
        assert!(VirtualNetwork::parse("10.0.0.0/8").is_ok());
    }

    #[test]
    fn default_ipv6_network_matches_slirp() {
        let n = Ipv6Network::default();
        assert_eq!(n.gateway, "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(n.dns, "fd00::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(n.guest, "fd00::100".parse::<Ipv6Addr>().unwrap());
        assert_eq!(n.router, "fe80::2".parse::<Ipv6Addr>().unwrap());
        assert!(n.contains("fd00::1234:5678".parse().unwrap()));
        assert!(!n.contains("fd00:0:0:1::2".parse().unwrap()));
        assert!(n.is_ours(n.router) && n.is_ours(n.dns) && !n.is_ours(n.guest));
        assert_eq!(n.to_string(), "fd00::/64");
    }

    #[test]
    fn ipv6_prefix_must_be_a_clean_64() {
        let n = Ipv6Network::parse("fd12:3456:789a:1::/64").unwrap();
        assert_eq!(
            n.guest,
            "fd12:3456:789a:1::100".parse::<Ipv6Addr>().unwrap()
        );
        assert!(matches!(
            Ipv6Network::parse("fd00::1/64"),
            Err(CidrError::NotNetworkAddress6 { .. })
        ));
        assert!(matches!(
            Ipv6Network::parse("fd00::/48"),
            Err(CidrError::PrefixLen6(48))
        ));
        for bad in ["fd00::", "10.0.2.0/24", "fd00::/129", "x/64"] {
            assert!(
                matches!(Ipv6Network::parse(bad), Err(CidrError::Syntax6(_))),
                "{bad}"
            );
        }
    }
}

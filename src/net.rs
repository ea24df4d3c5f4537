//! The virtual network the guest sees: its subnet, the gateway, the DNS forwarder and the
//! guest's own address, all derived from one CIDR, plus the MAC addresses we answer with.
//!
//! This module is pure data: no sockets, no I/O. The launcher uses it to configure tap0 in the
//! child, the stack uses it to decide which frames are addressed to us.

use std::fmt;
use std::net::Ipv4Addr;

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

/// A `--cidr` value that cannot hold the virtual network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    Syntax(String),
    NotNetworkAddress {
        given: Ipv4Addr,
        network: Ipv4Addr,
        prefix: u8,
    },
    TooSmall(u8),
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            CidrError::Syntax(s) => write!(f, "'{s}' is not an IPv4 CIDR like 10.0.2.0/24"),
            CidrError::NotNetworkAddress {
                given,
                network,
                prefix,
            } => write!(
                f,
                "{given}/{prefix} is not a network address; did you mean {network}/{prefix}?"
            ),
            CidrError::TooSmall(p) => write!(
                f,
                "a /{p} network is too small: the guest takes host number {GUEST_HOST}, so the prefix must be /25 or shorter"
            ),
        }
    }
}

impl std::error::Error for CidrError {}

/// The addresses of the virtual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualNetwork {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub guest: Ipv4Addr,
}

impl Default for VirtualNetwork {
    fn default() -> Self {
        VirtualNetwork::new(Ipv4Addr::new(10, 0, 2, 0), 24).expect("the default CIDR is valid")
    }
}

impl VirtualNetwork {
    /// The network `network/prefix`; `network` must have no host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 25 {
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
            gateway: Ipv4Addr::from(base + GATEWAY_HOST),
            dns: Ipv4Addr::from(base + DNS_HOST),
            guest: Ipv4Addr::from(base + GUEST_HOST),
        })
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

    /// Whether `addr` is one of the addresses usernet itself answers for (ARP, ping).
    pub fn is_ours(&self, addr: Ipv4Addr) -> bool {
        addr == self.gateway || addr == self.dns
    }

    /// The MAC address usernet uses for one of its own addresses: `52:55` followed by the
    /// IPv4 address, as slirp does, so a packet capture reads the same.
    pub fn mac_for(addr: Ipv4Addr) -> EthernetAddress {
        let o = addr.octets();
        EthernetAddress([0x52, 0x55, o[0], o[1], o[2], o[3]])
    }

    /// The source MAC of every frame usernet sends: everything the guest reaches lives behind
    /// the gateway.
    pub fn gateway_mac(&self) -> EthernetAddress {
        Self::mac_for(self.gateway)
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
}

//! The DHCP server on the gateway address, for guests that configure themselves (VMs,
//! `udhcpc`, `dhclient`) rather than being configured by the launcher.
//!
//! The pool is [`MAX_LEASES`] addresses from a start the runtime chooses, one per client MAC.
//! For usernet the start is the guest address (10.0.2.100 by default), the address the
//! launcher assigns, that rootlesskit reports as `childIP` and that port forwards default to,
//! so a DHCP-configured guest ends up exactly where a launcher-configured one would be. As
//! slirp4netns it is libslirp's .15, which QEMU and slirp users expect.
//!
//! Offers carry the netmask, router (10.0.2.2), DNS server (10.0.2.3, unless DNS is
//! disabled), interface MTU, broadcast address, lease time, and the host's search domains.
//! Parsing and encoding are smoltcp's `DhcpRepr`.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr,
    EthernetAddress,
};

use super::Ctx;
use super::emit;
use super::frame::GuestDhcp;

/// Leases handed out at most (one per client MAC).
pub const MAX_LEASES: usize = 16;
/// Lease time in seconds, as slirp uses.
pub const LEASE_SECS: u32 = 86400;

const OPT_MTU: u8 = 26;
const OPT_BROADCAST: u8 = 28;
const OPT_DOMAIN_NAME: u8 = 15;
const OPT_DOMAIN_SEARCH: u8 = 119;

#[derive(Debug, Default, Clone, Copy)]
pub struct DhcpStats {
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub ignored: u64,
}

pub struct DhcpServer {
    /// The first address of the pool.
    start: Ipv4Addr,
    /// Client MACs; lease i is `start` + i.
    leases: Vec<EthernetAddress>,
    dns: Option<Ipv4Addr>,
    search: Vec<String>,
    pub stats: DhcpStats,
}

impl DhcpServer {
    /// Addresses leased now (one per client MAC).
    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    /// `start`: the first address leased; `dns`: the DNS server to offer (None with
    /// `--disable-dns`); `search`: domains to offer.
    pub fn new(start: Ipv4Addr, dns: Option<Ipv4Addr>, search: Vec<String>) -> Self {
        DhcpServer {
            start,
            leases: Vec::new(),
            dns,
            search,
            stats: DhcpStats::default(),
        }
    }

    /// Handle one client message.
    pub fn on_guest_message(&mut self, msg: &GuestDhcp<'_>, cx: &mut Ctx<'_>) {
        let Ok(packet) = DhcpPacket::new_checked(msg.payload) else {
            self.stats.ignored += 1;
            return;
        };
        let Ok(req) = DhcpRepr::parse(&packet) else {
            self.stats.ignored += 1;
            return;
        };
        let mac = req.client_hardware_address;
        if !mac.is_unicast() {
            self.stats.ignored += 1;
            return;
        }
        let net = cx.policy.net;
        let reply_type = match req.message_type {
            DhcpMessageType::Discover => match self.lease_for(mac, &net) {
                Some(_) => DhcpMessageType::Offer,
                None => {
                    self.stats.ignored += 1;
                    return;
                }
            },
            DhcpMessageType::Request => {
                // A request for another server's offer is none of our business.
                if req.server_identifier.is_some_and(|s| s != net.gateway) {
                    return;
                }
                let wanted = req.requested_ip.unwrap_or(req.client_ip);
                match self.lease_for(mac, &net) {
                    Some(ip) if wanted == ip || wanted.is_unspecified() => DhcpMessageType::Ack,
                    _ => DhcpMessageType::Nak,
                }
            }
            DhcpMessageType::Inform => DhcpMessageType::Ack,
            DhcpMessageType::Release | DhcpMessageType::Decline => {
                self.leases.retain(|m| *m != mac);
                return;
            }
            _ => {
                self.stats.ignored += 1;
                return;
            }
        };
        let your_ip = match reply_type {
            DhcpMessageType::Nak => Ipv4Addr::UNSPECIFIED,
            _ if req.message_type == DhcpMessageType::Inform => Ipv4Addr::UNSPECIFIED,
            _ => self.lease_for(mac, &net).unwrap_or(Ipv4Addr::UNSPECIFIED),
        };
        match reply_type {
            DhcpMessageType::Offer => self.stats.offers += 1,
            DhcpMessageType::Ack => self.stats.acks += 1,
            _ => self.stats.naks += 1,
        }
        self.send(&req, reply_type, your_ip, msg.src_mac, cx);
    }

    /// The address leased to `mac`, allocating one if the pool has room.
    fn lease_for(
        &mut self,
        mac: EthernetAddress,
        net: &crate::net::VirtualNetwork,
    ) -> Option<Ipv4Addr> {
        let index = match self.leases.iter().position(|m| *m == mac) {
            Some(i) => i,
            None if self.leases.len() < MAX_LEASES => {
                self.leases.push(mac);
                self.leases.len() - 1
            }
            None => return None,
        };
        let ip = Ipv4Addr::from(u32::from(self.start).saturating_add(index as u32));
        (net.contains(ip) && ip != net.broadcast() && ip != net.gateway && ip != net.dns)
            .then_some(ip)
    }

    fn send(
        &self,
        req: &DhcpRepr<'_>,
        kind: DhcpMessageType,
        your_ip: Ipv4Addr,
        src_mac: EthernetAddress,
        cx: &mut Ctx<'_>,
    ) {
        let net = cx.policy.net;
        let full = kind != DhcpMessageType::Nak;
        let mtu = u16::try_from(cx.link.mtu).unwrap_or(u16::MAX).to_be_bytes();
        let broadcast = net.broadcast().octets();
        let search = encode_search(&self.search);
        let domain = self
            .search
            .first()
            .map(|d| d.as_bytes())
            .unwrap_or_default();
        let mut options = Vec::new();
        if full {
            options.push(DhcpOption {
                kind: OPT_MTU,
                data: &mtu,
            });
            options.push(DhcpOption {
                kind: OPT_BROADCAST,
                data: &broadcast,
            });
            if !domain.is_empty() && domain.len() <= 255 {
                options.push(DhcpOption {
                    kind: OPT_DOMAIN_NAME,
                    data: domain,
                });
            }
            if !search.is_empty() {
                options.push(DhcpOption {
                    kind: OPT_DOMAIN_SEARCH,
                    data: &search,
                });
            }
        }
        let mut dns_servers = heapless::Vec::new();
        if let Some(dns) = self.dns {
            let _ = dns_servers.push(dns);
        }
        let reply = DhcpRepr {
            message_type: kind,
            transaction_id: req.transaction_id,
            secs: 0,
            client_hardware_address: req.client_hardware_address,
            client_ip: if req.message_type == DhcpMessageType::Inform {
                req.client_ip
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            your_ip,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: full.then_some(net.gateway),
            subnet_mask: full.then_some(net.netmask()),
            relay_agent_ip: req.relay_agent_ip,
            broadcast: req.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(net.gateway),
            parameter_request_list: None,
            dns_servers: (full && self.dns.is_some()).then_some(dns_servers),
            max_size: None,
            lease_duration: (full && req.message_type != DhcpMessageType::Inform)
                .then_some(LEASE_SECS),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &options,
        };
        let mut payload = vec![0u8; reply.buffer_len()];
        if reply
            .emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .is_err()
        {
            return;
        }
        // Broadcast unless the client can take unicast before it has an address.
        let dst_mac = if req.broadcast {
            EthernetAddress::BROADCAST
        } else {
            src_mac
        };
        let from = SocketAddrV4::new(net.gateway, DHCP_SERVER_PORT);
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT);
        emit::udp_datagram(cx.tap, &net, dst_mac, from.into(), to.into(), &payload);
    }
}

/// The domain search option (RFC 3397): each domain as DNS labels, without compression,
/// cut off at the 255 bytes one option can hold.
fn encode_search(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in domains {
        let mut enc = Vec::new();
        let labels: Vec<&str> = d.trim_end_matches('.').split('.').collect();
        if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
            continue;
        }
        for l in labels {
            enc.push(l.len() as u8);
            enc.extend_from_slice(l.as_bytes());
        }
        enc.push(0);
        if out.len() + enc.len() > 255 {
            break;
        }
        out.extend_from_slice(&enc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_search;

    #[test]
    fn search_domains_are_label_encoded() {
        let enc = encode_search(&["a.example".into(), "bad..name".into(), "c.".into()]);
        assert_eq!(enc, b"\x01a\x07example\x00\x01c\x00");
    }
}

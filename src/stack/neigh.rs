//! The guest link's neighbours, as passt's `arp.c` and `ndp.c`: ARP for IPv4, IPv6 neighbour
//! discovery and router advertisements (RFC 4861). This module owns all of it:
//!
//! - **Parsing**: which ARP messages and NDP solicitations are for us ([`classify_arp`] and
//!   [`classify_ndp`], called by the [classifier](super::frame) so every frame is still
//!   parsed once, in one place).
//! - **Replies**: ARP replies for our addresses, neighbour advertisements ("every address of
//!   ours is at the gateway's MAC"), router advertisements, solicited and every
//!   [`RA_INTERVAL`] (the prefix, the MTU and the DNS forwarder: no DHCPv6 needed).
//! - **State**: the neighbour table (which MAC answers for which IPv4 address on the TAP), the
//!   ARP requests we send to fill it, and when the next unsolicited advertisement is due.
//!
//! Guest-initiated traffic never needs the table: every reply goes back to the MAC the
//! guest's frame came from. Connections that *we* open towards the guest (the
//! [host forwards](super::hostfwd)) have no such frame, so the table learns from what the
//! guest sends anyway (the source of its IPv4 frames, the sender of its ARP messages) and,
//! for an address it has not seen, asks with an ARP request from the gateway, as a router
//! would.
//!
//! Everything here comes from the guest, so the table is bounded ([`MAX_NEIGHBORS`]) and
//! only unicast addresses are learned; solicitations are rate-limited per address. We answer
//! only for our own addresses: claiming any other (the guest's own included) would break the
//! guest's duplicate address detection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetProtocol, Icmpv6Packet, Icmpv6Repr,
    IpProtocol, Ipv6Packet, NdiscNeighborFlags, NdiscPrefixInfoFlags, NdiscPrefixInformation,
    NdiscRepr, NdiscRouterFlags, RawHardwareAddress,
};

use super::Ctx;
use super::emit::{self, ETH_LEN, HOP_LIMIT};
use super::frame::{Classified, DropReason, is_guest_source, is_unicast6};
use super::tx::TapWriter;
use crate::net::{Ipv6Network, VirtualNetwork};

/// Most addresses remembered; past it, the least recently confirmed one makes room.
pub const MAX_NEIGHBORS: usize = 256;
/// Most addresses with an ARP request outstanding.
const MAX_SOLICITING: usize = 64;
/// An address is asked for at most this often.
pub const SOLICIT_INTERVAL: Duration = Duration::from_secs(1);

/// Hop limit of every neighbour discovery message, theirs and ours (RFC 4861 §6.1, §7.1,
/// §7.1.2): receivers check it, as proof that the message was not forwarded from off the
/// link.
const NDP_HOP_LIMIT: u8 = 255;
/// The all-nodes link-local multicast group, and its Ethernet address.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);
/// How long the guest may keep us as its default router without hearing from us again; the
/// stack advertises again well before ([`RA_INTERVAL`]).
const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
/// How often the stack sends an unsolicited router advertisement.
pub const RA_INTERVAL: Duration = Duration::from_secs(600);
/// Lifetimes of the prefix in router advertisements (RFC 4861's suggested defaults).
const PREFIX_VALID: Duration = Duration::from_secs(86400);
const PREFIX_PREFERRED: Duration = Duration::from_secs(14400);
/// NDP option type of Recursive DNS Server (RFC 8106 §5.1), which smoltcp does not build.
const NDP_OPTION_RDNSS: u8 = 25;
const RDNSS_LEN: usize = 24;

/// An ARP request for one of our addresses, to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    pub sender_mac: EthernetAddress,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// Who sent an ARP message we do not answer (a reply, a probe, a gratuitous announcement):
/// where that address lives on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpSender {
    pub mac: EthernetAddress,
    pub ip: Ipv4Addr,
}

/// An IPv6 neighbour solicitation for one of our addresses, to be answered with an
/// advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicit {
    pub sender_mac: EthernetAddress,
    /// The unspecified address when the sender is checking that `target` is free (duplicate
    /// address detection).
    pub sender_ip: Ipv6Addr,
    pub target: Ipv6Addr,
}

/// An IPv6 router solicitation, to be answered with a router advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSolicit {
    pub sender_mac: EthernetAddress,
    /// The unspecified address from a host that has no address yet.
    pub sender_ip: Ipv6Addr,
}

/// Sort an ARP message (the Ethernet payload): a request for one of our addresses, news of
/// where a guest address lives, or a drop.
pub fn classify_arp(payload: &[u8], net: &VirtualNetwork) -> Classified<'static> {
    let Ok(packet) = ArpPacket::new_checked(payload) else {
        return Classified::Drop(DropReason::Arp);
    };
    let Ok(ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    }) = ArpRepr::parse(&packet)
    else {
        return Classified::Drop(DropReason::Arp);
    };
    // Messages from a multicast MAC, or claiming one of our own addresses, are bogus.
    if !source_hardware_addr.is_unicast() || net.is_ours(source_protocol_addr) {
        return Classified::Drop(DropReason::Arp);
    }
    // Answer only for our own addresses. A gratuitous ARP or probe for any other address,
    // including the guest's own, gets no answer: claiming it would break the guest's
    // duplicate address detection. It still tells us where its sender is.
    if operation == ArpOperation::Request && net.is_ours(target_protocol_addr) {
        return Classified::Arp(ArpRequest {
            sender_mac: source_hardware_addr,
            sender_ip: source_protocol_addr,
            target_ip: target_protocol_addr,
        });
    }
    if matches!(operation, ArpOperation::Request | ArpOperation::Reply)
        && is_guest_source(source_protocol_addr, net)
    {
        return Classified::ArpNeighbor(ArpSender {
            mac: source_hardware_addr,
            ip: source_protocol_addr,
        });
    }
    Classified::Drop(DropReason::Arp)
}

/// Neighbour and router solicitations (ICMPv6 whose checksum the classifier verified): the
/// ones for us are answered, the rest (duplicate address detection for the guest's own
/// addresses, solicitations for other neighbours) are not, since claiming them would break
/// the guest.
pub fn classify_ndp<'a>(
    src_mac: EthernetAddress,
    ip: &Ipv6Packet<&'a [u8]>,
    icmp: &Icmpv6Packet<&'a [u8]>,
    v6: &Ipv6Network,
) -> Classified<'a> {
    let src = ip.src_addr();
    let sender_ok = src.is_unspecified() || (is_unicast6(src) && !v6.is_ours(src));
    if ip.hop_limit() != NDP_HOP_LIMIT
        || icmp.msg_code() != 0
        || !src_mac.is_unicast()
        || !sender_ok
    {
        return Classified::Drop(DropReason::Ndp);
    }
    match NdiscRepr::parse(icmp) {
        Ok(NdiscRepr::NeighborSolicit { target_addr, .. }) if v6.is_ours(target_addr) => {
            Classified::NeighborSolicit(NeighborSolicit {
                sender_mac: src_mac,
                sender_ip: src,
                target: target_addr,
            })
        }
        Ok(NdiscRepr::RouterSolicit { .. }) => Classified::RouterSolicit(RouterSolicit {
            sender_mac: src_mac,
            sender_ip: src,
        }),
        _ => Classified::Drop(DropReason::Ndp),
    }
}

/// Where the sender of a guest frame lives on the link, if the frame says: the IPv4 source
/// and MAC of its ARP messages and IP traffic. Only IPv4 is learned: the forwards into the
/// guest (the table's only users) are IPv4.
pub fn link_sender(c: &Classified<'_>) -> Option<(Ipv4Addr, EthernetAddress)> {
    let (ip, mac) = match c {
        Classified::Arp(r) => (IpAddr::V4(r.sender_ip), r.sender_mac),
        Classified::ArpNeighbor(s) => (IpAddr::V4(s.ip), s.mac),
        Classified::Tcp(t) => (t.src.ip(), t.src_mac),
        Classified::Udp(u) => (u.src.ip(), u.src_mac),
        Classified::Echo(e) => (e.src, e.src_mac),
        _ => return None,
    };
    match ip {
        IpAddr::V4(ip) => Some((ip, mac)),
        IpAddr::V6(_) => None,
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NeighborStats {
    pub learned: u64,
    pub solicitations: u64,
}

#[derive(Default)]
pub struct Neighbors {
    table: HashMap<Ipv4Addr, (EthernetAddress, Instant)>,
    /// The last pair learned: the common case (one guest) costs one comparison per frame.
    last: Option<(Ipv4Addr, EthernetAddress)>,
    /// When each unresolved address was last asked for.
    soliciting: HashMap<Ipv4Addr, Instant>,
    /// When the next unsolicited router advertisement is due (IPv6 only).
    advert_due: Option<Instant>,
    pub stats: NeighborStats,
}

impl Neighbors {
    /// The neighbours of `net`'s link; with IPv6, the first router advertisement is due at
    /// once (on the first turn of the loop).
    pub fn new(net: &VirtualNetwork) -> Self {
        Neighbors {
            advert_due: net.v6.map(|_| Instant::from_micros(0)),
            ..Neighbors::default()
        }
    }

    /// Note that `ip` is at `mac` (from a frame the guest sent). Returns true when this is
    /// news: a new address, or one that moved.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: Instant) -> bool {
        if self.last == Some((ip, mac)) {
            return false;
        }
        if !mac.is_unicast() || !is_unicast(ip) {
            return false;
        }
        self.last = Some((ip, mac));
        let news = self.table.get(&ip).is_none_or(|(m, _)| *m != mac);
        if news && !self.table.contains_key(&ip) && self.table.len() >= MAX_NEIGHBORS {
            let oldest = self
                .table
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(ip, _)| *ip);
            if let Some(o) = oldest {
                self.table.remove(&o);
            }
        }
        self.table.insert(ip, (mac, now));
        if news {
            self.stats.learned += 1;
            self.soliciting.remove(&ip);
        }
        news
    }

    /// The MAC address of `ip`, if known.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.table.get(&ip).map(|(mac, _)| *mac)
    }

    /// Ask the link who has `ip`, unless we asked less than [`SOLICIT_INTERVAL`] ago.
    pub fn solicit(
        &mut self,
        ip: Ipv4Addr,
        tap: &mut TapWriter,
        net: &VirtualNetwork,
        now: Instant,
    ) {
        if !is_unicast(ip) || net.is_ours(ip) {
            return;
        }
        if let Some(at) = self.soliciting.get(&ip)
            && now < *at + SOLICIT_INTERVAL
        {
            return;
        }
        if self.soliciting.len() >= MAX_SOLICITING && !self.soliciting.contains_key(&ip) {
            // Forget requests nobody answered for a while; if all are recent, skip this one.
            self.soliciting
                .retain(|_, at| now < *at + SOLICIT_INTERVAL * 4);
            if self.soliciting.len() >= MAX_SOLICITING {
                return;
            }
        }
        self.soliciting.insert(ip, now);
        self.stats.solicitations += 1;
        arp_request(tap, net, ip);
    }

    /// Answer an ARP request for one of our addresses.
    pub fn on_arp_request(&self, req: &ArpRequest, cx: &mut Ctx<'_>) {
        arp_reply(cx.tap, req);
    }

    /// Answer a neighbour solicitation for one of our addresses.
    pub fn on_neighbor_solicit(&self, ns: &NeighborSolicit, cx: &mut Ctx<'_>) {
        neighbor_advert(cx.tap, &cx.policy.net, ns);
    }

    /// Answer a router solicitation: to its sender, or to all nodes if it has no address yet.
    pub fn on_router_solicit(&self, rs: &RouterSolicit, cx: &mut Ctx<'_>) {
        let to = (!rs.sender_ip.is_unspecified()).then_some((rs.sender_ip, rs.sender_mac));
        advertise_router(cx, to);
    }

    /// When [`Neighbors::run_timers`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.advert_due
    }

    /// Send the unsolicited router advertisement, if it is due.
    pub fn run_timers(&mut self, cx: &mut Ctx<'_>) {
        if self.advert_due.is_some_and(|due| due <= cx.now) {
            self.advert_due = Some(cx.now + RA_INTERVAL);
            advertise_router(cx, None);
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

/// Answer an ARP request for one of our addresses.
fn arp_reply(tx: &mut TapWriter, req: &ArpRequest) {
    let our_mac = VirtualNetwork::mac_for(req.target_ip);
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: our_mac,
        source_protocol_addr: req.target_ip,
        target_hardware_addr: req.sender_mac,
        target_protocol_addr: req.sender_ip,
    };
    tx.send(ETH_LEN + repr.buffer_len(), |f| {
        emit::ethernet(f, our_mac, req.sender_mac, EthernetProtocol::Arp);
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_LEN..]));
    });
}

/// Ask the guest link who has `target`, from the gateway.
fn arp_request(tx: &mut TapWriter, net: &VirtualNetwork, target: Ipv4Addr) {
    let our_mac = net.gateway_mac();
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: our_mac,
        source_protocol_addr: net.gateway,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    tx.send(ETH_LEN + repr.buffer_len(), |f| {
        emit::ethernet(
            f,
            our_mac,
            EthernetAddress::BROADCAST,
            EthernetProtocol::Arp,
        );
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_LEN..]));
    });
}

/// Answer a neighbour solicitation for one of our addresses: "it is at the gateway's MAC".
/// A solicitation from the unspecified address (the sender checking whether the address is
/// free) is answered to all nodes, without the solicited flag (RFC 4861 §7.2.4).
fn neighbor_advert(tx: &mut TapWriter, net: &VirtualNetwork, ns: &NeighborSolicit) {
    let (dst, dst_mac, mut flags) = if ns.sender_ip.is_unspecified() {
        (ALL_NODES, ALL_NODES_MAC, NdiscNeighborFlags::OVERRIDE)
    } else {
        (
            ns.sender_ip,
            ns.sender_mac,
            NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
        )
    };
    // Every address of ours is the router's.
    flags |= NdiscNeighborFlags::ROUTER;
    let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags,
        target_addr: ns.target,
        lladdr: Some(RawHardwareAddress::from(net.gateway_mac())),
    });
    ndp_frame(tx, net, (ns.target, dst, dst_mac), repr, 0, |_| {});
}

/// Advertise ourselves as the IPv6 router, to `to` or to all nodes; the DNS forwarder goes
/// with it unless `--disable-dns`.
fn advertise_router(cx: &mut Ctx<'_>, to: Option<(Ipv6Addr, EthernetAddress)>) {
    let net = cx.policy.net;
    let dns = net.v6.filter(|_| !cx.policy.disable_dns).map(|v6| v6.dns);
    router_advert(cx.tap, &net, to, cx.link.mtu, dns);
}

/// A router advertisement from fe80::2 to `to` (a host that solicited one, or all nodes):
/// we are the default router, the /64 is on-link and for stateless autoconfiguration, the
/// link MTU is `mtu`, and `dns` (the forwarder, unless `--disable-dns`) resolves names. No
/// DHCPv6: everything a guest needs is in here.
fn router_advert(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    to: Option<(Ipv6Addr, EthernetAddress)>,
    mtu: usize,
    dns: Option<Ipv6Addr>,
) {
    let Some(v6) = net.v6 else {
        return;
    };
    let (dst, dst_mac) = to.unwrap_or((ALL_NODES, ALL_NODES_MAC));
    let repr = Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        hop_limit: HOP_LIMIT,
        flags: NdiscRouterFlags::empty(),
        router_lifetime: ROUTER_LIFETIME,
        reachable_time: Duration::ZERO,
        retrans_time: Duration::ZERO,
        lladdr: Some(RawHardwareAddress::from(net.gateway_mac())),
        mtu: u32::try_from(mtu).ok(),
        prefix_info: Some(NdiscPrefixInformation {
            prefix_len: crate::net::IPV6_PREFIX_LEN,
            flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
            valid_lifetime: PREFIX_VALID,
            preferred_lifetime: PREFIX_PREFERRED,
            prefix: v6.prefix,
        }),
    });
    let options = if dns.is_some() { RDNSS_LEN } else { 0 };
    ndp_frame(tx, net, (v6.router, dst, dst_mac), repr, options, |opt| {
        if let Some(dns) = dns {
            opt[0] = NDP_OPTION_RDNSS;
            opt[1] = (RDNSS_LEN / 8) as u8;
            opt[2..4].fill(0);
            opt[4..8].copy_from_slice(&(ROUTER_LIFETIME.secs() as u32).to_be_bytes());
            opt[8..].copy_from_slice(&dns.octets());
        }
    });
}

/// One neighbour discovery message from `src` to `dst` at `dst_mac`: `repr`, then `extra`
/// bytes of options smoltcp does not build, written by `options` (the checksum covers them).
fn ndp_frame(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    (src, dst, dst_mac): (Ipv6Addr, Ipv6Addr, EthernetAddress),
    repr: Icmpv6Repr<'_>,
    extra: usize,
    options: impl FnOnce(&mut [u8]),
) {
    let base = repr.buffer_len();
    emit::ip_frame(
        tx,
        net,
        dst_mac,
        IpAddr::V6(src),
        IpAddr::V6(dst),
        IpProtocol::Icmpv6,
        base + extra,
        NDP_HOP_LIMIT,
        |p| {
            let caps = ChecksumCapabilities::default();
            repr.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(&mut p[..]),
                &caps,
            );
            if extra > 0 {
                options(&mut p[base..base + extra]);
                Icmpv6Packet::new_unchecked(&mut p[..]).fill_checksum(&src, &dst);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::emit::tests::{next_icmpv6, setup};
    use crate::stack::frame::classify;
    use crate::testkit::{self, GUEST_MAC, ipv6_frame};

    const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

    /// A neighbour solicitation for `target` with hop limit `hops`.
    fn solicit(src: Ipv6Addr, target: Ipv6Addr, hops: u8) -> Vec<u8> {
        let dst = "ff02::1:ff00:2".parse().unwrap();
        let repr = NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: None,
        };
        ipv6_frame(
            src,
            dst,
            IpProtocol::Icmpv6,
            hops,
            &testkit::ndisc(src, dst, repr),
        )
    }

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    #[test]
    fn learns_unicast_pairs_and_reports_news_once() {
        let mut n = Neighbors::default();
        let ip = Ipv4Addr::new(10, 0, 2, 100);
        let t = Instant::from_secs(1);
        assert!(n.learn(ip, MAC, t));
        assert!(!n.learn(ip, MAC, t));
        assert_eq!(n.lookup(ip), Some(MAC));
        let moved = EthernetAddress([2, 0, 0, 0, 0, 2]);
        assert!(n.learn(ip, moved, t));
        assert_eq!(n.lookup(ip), Some(moved));
        assert!(!n.learn(Ipv4Addr::UNSPECIFIED, MAC, t));
        assert!(!n.learn(Ipv4Addr::new(10, 0, 2, 5), EthernetAddress::BROADCAST, t));
        assert_eq!(n.len(), 1);
    }

    #[test]
    fn table_is_bounded() {
        let mut n = Neighbors::default();
        for i in 0..(MAX_NEIGHBORS as u32 * 3) {
            let ip = Ipv4Addr::from(0x0a00_0000 + i + 1);
            n.learn(ip, MAC, Instant::from_millis(i64::from(i)));
        }
        assert_eq!(n.len(), MAX_NEIGHBORS);
        // The newest survive.
        assert!(
            n.lookup(Ipv4Addr::from(0x0a00_0000 + MAX_NEIGHBORS as u32 * 3))
                .is_some()
        );
    }

    #[test]
    fn arp_is_answered_only_for_our_addresses() {
        let net = VirtualNetwork::default();
        let arp = |target: Ipv4Addr| {
            testkit::arp_frame(ArpOperation::Request, GUEST_MAC, net.guest, target)
        };
        assert!(matches!(
            classify(&arp(net.gateway), &net),
            Classified::Arp(_)
        ));
        assert!(matches!(classify(&arp(net.dns), &net), Classified::Arp(_)));
        // The guest's own gratuitous ARP and other subnet addresses go unanswered, but say
        // where the guest is.
        let sender = ArpSender {
            mac: GUEST_MAC,
            ip: net.guest,
        };
        assert_eq!(classify(&arp(net.guest), &net).arp_neighbor(), Some(sender));
        assert_eq!(
            classify(&arp(Ipv4Addr::new(10, 0, 2, 50)), &net).arp_neighbor(),
            Some(sender)
        );
    }

    #[test]
    fn neighbour_solicitations_are_answered_only_for_our_addresses() {
        let net = testkit::net();
        for target in ["fd00::2", "fd00::3", "fe80::2"] {
            let target: Ipv6Addr = target.parse().unwrap();
            match classify(&solicit(GUEST6, target, 255), &net) {
                Classified::NeighborSolicit(ns) => {
                    assert_eq!(ns.target, target);
                    assert_eq!(ns.sender_ip, GUEST6);
                    assert_eq!(ns.sender_mac, GUEST_MAC);
                }
                other => panic!("{target}: expected a solicitation, got {other:?}"),
            }
        }
        // The guest's duplicate address detection for its own address, and other neighbours,
        // go unanswered; so does anything that did not come from the link (hop limit).
        for (src, target, hops) in [
            (Ipv6Addr::UNSPECIFIED, GUEST6, 255),
            (GUEST6, "fd00::55".parse().unwrap(), 255),
            (GUEST6, "fd00::2".parse().unwrap(), 64),
            ("fd00::2".parse().unwrap(), "fd00::3".parse().unwrap(), 255),
        ] {
            assert!(
                matches!(
                    classify(&solicit(src, target, hops), &net),
                    Classified::Drop(DropReason::Ndp)
                ),
                "{src} -> {target} hops {hops}"
            );
        }
        let rs = testkit::ndisc_frame(
            Ipv6Addr::UNSPECIFIED,
            "ff02::2".parse().unwrap(),
            NdiscRepr::RouterSolicit { lladdr: None },
        );
        assert!(matches!(
            classify(&rs, &net),
            Classified::RouterSolicit(RouterSolicit {
                sender_mac: GUEST_MAC,
                sender_ip: Ipv6Addr::UNSPECIFIED,
            })
        ));
        // A corrupted checksum is not ICMPv6 at all.
        let mut bad = solicit(GUEST6, "fd00::2".parse().unwrap(), 255);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            classify(&bad, &net),
            Classified::Drop(DropReason::Icmp)
        ));
    }

    #[test]
    fn neighbour_advert_names_the_gateway_mac_with_router_and_solicited_flags() {
        let (mut tx, guest, net) = setup();
        let guest_ip: Ipv6Addr = "fd00::100".parse().unwrap();
        let target: Ipv6Addr = "fe80::2".parse().unwrap();
        let ns = NeighborSolicit {
            sender_mac: GUEST_MAC,
            sender_ip: guest_ip,
            target,
        };
        neighbor_advert(&mut tx, &net, &ns);
        let (dst_mac, ip, icmp) = next_icmpv6(&guest);
        assert_eq!(
            (dst_mac, ip.dst_addr, ip.src_addr),
            (GUEST_MAC, guest_ip, target)
        );
        assert_eq!(ip.hop_limit, 255);
        let packet = Icmpv6Packet::new_checked(&icmp[..]).unwrap();
        match NdiscRepr::parse(&packet).unwrap() {
            NdiscRepr::NeighborAdvert {
                flags,
                target_addr,
                lladdr,
            } => {
                assert_eq!(target_addr, target);
                assert!(flags.contains(NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::SOLICITED));
                assert_eq!(lladdr, Some(RawHardwareAddress::from(net.gateway_mac())));
            }
            other => panic!("{other:?}"),
        }
        // From the unspecified address (the sender's address check): to all nodes.
        let dad = NeighborSolicit {
            sender_ip: Ipv6Addr::UNSPECIFIED,
            ..ns
        };
        neighbor_advert(&mut tx, &net, &dad);
        let (dst_mac, ip, _) = next_icmpv6(&guest);
        assert_eq!((dst_mac, ip.dst_addr), (ALL_NODES_MAC, ALL_NODES));
    }

    #[test]
    fn router_advert_carries_prefix_mtu_and_dns() {
        let (mut tx, guest, net) = setup();
        let dns: Ipv6Addr = "fd00::3".parse().unwrap();
        router_advert(&mut tx, &net, None, 1500, Some(dns));
        let (dst_mac, ip, icmp) = next_icmpv6(&guest);
        assert_eq!((dst_mac, ip.dst_addr), (ALL_NODES_MAC, ALL_NODES));
        assert_eq!(ip.src_addr, "fe80::2".parse::<Ipv6Addr>().unwrap());
        let packet = Icmpv6Packet::new_checked(&icmp[..]).unwrap();
        match NdiscRepr::parse(&packet).unwrap() {
            NdiscRepr::RouterAdvert {
                router_lifetime,
                mtu,
                prefix_info: Some(prefix),
                lladdr,
                ..
            } => {
                assert_eq!(router_lifetime, ROUTER_LIFETIME);
                assert_eq!(mtu, Some(1500));
                assert_eq!(prefix.prefix, "fd00::".parse::<Ipv6Addr>().unwrap());
                assert_eq!(prefix.prefix_len, 64);
                assert!(prefix.is_valid_prefix_info());
                assert!(prefix.flags.contains(NdiscPrefixInfoFlags::ON_LINK));
                assert_eq!(lladdr, Some(RawHardwareAddress::from(net.gateway_mac())));
            }
            other => panic!("{other:?}"),
        }
        // The last option is RDNSS with the forwarder.
        let rdnss = &icmp[icmp.len() - RDNSS_LEN..];
        assert_eq!((rdnss[0], rdnss[1]), (NDP_OPTION_RDNSS, 3));
        assert_eq!(&rdnss[8..], &dns.octets());
        // Solicited by a host with an address: unicast, and without DNS when it is off.
        let guest_ip: Ipv6Addr = "fd00::100".parse().unwrap();
        router_advert(&mut tx, &net, Some((guest_ip, GUEST_MAC)), 1500, None);
        let (dst_mac, ip, icmp2) = next_icmpv6(&guest);
        assert_eq!((dst_mac, ip.dst_addr), (GUEST_MAC, guest_ip));
        assert_eq!(icmp2.len(), icmp.len() - RDNSS_LEN);
    }
}

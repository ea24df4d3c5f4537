//! The classifier: every frame the guest sends is parsed here, once, before anything acts on
//! it, and sorted into what the stack handles (ARP and IPv6 neighbour and router
//! solicitations for our addresses, TCP segments, UDP datagrams, ICMP and ICMPv6 echo
//! requests, DHCP) or a counted drop. What is ARP and NDP for us is decided by
//! [`neigh`], which owns those protocols; this module calls it.
//!
//! Every byte comes from the guest and is hostile. Parsing goes through smoltcp's
//! `new_checked` views, so no accessor can panic afterwards, and everything a handler needs
//! (addresses, ports, flags) is copied out into small plain structs. The function is pure:
//! same bytes in, same verdict out, which is what the fuzz targets exercise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket, UdpPacket,
};

use super::neigh::{self, ArpRequest, ArpSender, NeighborSolicit, RouterSolicit};
use crate::net::{Ipv6Network, VirtualNetwork};

/// Why a frame was dropped. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// An EtherType we do not handle.
    EtherType,
    /// ARP that is malformed, not Ethernet/IPv4, or not a request for one of our addresses.
    Arp,
    /// IPv4 header that fails length, version or checksum checks.
    Ipv4Header,
    /// IPv4 fragments: we never reassemble.
    Fragment,
    /// Source address that cannot be a guest (multicast, broadcast, unspecified, loopback).
    Source,
    /// Destination that is broadcast or multicast where only unicast makes sense.
    Destination,
    /// A TCP header that does not parse, or says something impossible.
    TcpHeader,
    /// A UDP header that does not parse, or uses port 0.
    UdpHeader,
    /// ICMP that does not parse or is not an echo request (guests' own errors included).
    Icmp,
    /// An IP protocol we do not relay.
    Protocol,
    /// IPv6 while the guest has no IPv6 (`--ipv6` not given).
    Ipv6Off,
    /// IPv6 header that fails length or version checks.
    Ipv6Header,
    /// IPv6 with extension headers (hop-by-hop options of multicast listener reports,
    /// fragments, routing headers): nothing we relay needs them.
    Ipv6Extension,
    /// Neighbour discovery we do not answer: solicitations for other addresses (the guest's
    /// duplicate address detection), advertisements, redirects, or malformed messages.
    Ndp,
}

impl DropReason {
    pub const COUNT: usize = 15;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Runt,
        DropReason::EtherType,
        DropReason::Arp,
        DropReason::Ipv4Header,
        DropReason::Fragment,
        DropReason::Source,
        DropReason::Destination,
        DropReason::TcpHeader,
        DropReason::UdpHeader,
        DropReason::Icmp,
        DropReason::Protocol,
        DropReason::Ipv6Off,
        DropReason::Ipv6Header,
        DropReason::Ipv6Extension,
        DropReason::Ndp,
    ];
}

/// The TCP flags the flow table acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}

/// A guest TCP segment, with the IP packet it came in (for smoltcp) and the header fields the
/// flow table needs before smoltcp sees it.
#[derive(Debug, Clone, Copy)]
pub struct GuestTcp<'a> {
    pub src_mac: EthernetAddress,
    /// The whole IPv4 or IPv6 packet, trimmed to its total length (Ethernet padding removed).
    pub ip_packet: &'a [u8],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: Option<u32>,
    /// Sequence space the segment occupies: payload plus one each for SYN and FIN.
    pub seq_len: u32,
}

/// A guest UDP datagram (unicast).
#[derive(Debug, Clone, Copy)]
pub struct GuestUdp<'a> {
    pub src_mac: EthernetAddress,
    /// The whole IPv4 or IPv6 packet, for quoting in ICMP errors.
    pub ip_packet: &'a [u8],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// A guest ICMP or ICMPv6 echo request (the family of `src` and `dst` says which).
#[derive(Debug, Clone, Copy)]
pub struct GuestEcho<'a> {
    pub src_mac: EthernetAddress,
    pub ip_packet: &'a [u8],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ident: u16,
    pub seq_no: u16,
    pub data: &'a [u8],
}

/// A DHCP message from a client (UDP 68 → 67, usually broadcast from 0.0.0.0).
#[derive(Debug, Clone, Copy)]
pub struct GuestDhcp<'a> {
    pub src_mac: EthernetAddress,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub enum Classified<'a> {
    Arp(ArpRequest),
    ArpNeighbor(ArpSender),
    NeighborSolicit(NeighborSolicit),
    RouterSolicit(RouterSolicit),
    Tcp(GuestTcp<'a>),
    Udp(GuestUdp<'a>),
    Echo(GuestEcho<'a>),
    Dhcp(GuestDhcp<'a>),
    Drop(DropReason),
}

impl Classified<'_> {
    /// The sender of an ARP message we do not answer, if this is one.
    pub fn arp_neighbor(&self) -> Option<ArpSender> {
        match self {
            Classified::ArpNeighbor(s) => Some(*s),
            _ => None,
        }
    }
}

/// Sort one Ethernet frame from the guest.
pub fn classify<'a>(frame: &'a [u8], net: &VirtualNetwork) -> Classified<'a> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Classified::Drop(DropReason::Runt);
    };
    let src_mac = eth.src_addr();
    let payload = &frame[EthernetFrame::<&[u8]>::header_len()..];
    match eth.ethertype() {
        EthernetProtocol::Arp => neigh::classify_arp(payload, net),
        EthernetProtocol::Ipv4 => classify_ipv4(src_mac, payload, net),
        EthernetProtocol::Ipv6 => match net.v6 {
            Some(v6) => classify_ipv6(src_mac, payload, &v6),
            None => Classified::Drop(DropReason::Ipv6Off),
        },
        _ => Classified::Drop(DropReason::EtherType),
    }
}

fn classify_ipv4<'a>(
    src_mac: EthernetAddress,
    bytes: &'a [u8],
    net: &VirtualNetwork,
) -> Classified<'a> {
    let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
        return Classified::Drop(DropReason::Ipv4Header);
    };
    if ip.version() != 4 || !ip.verify_checksum() {
        return Classified::Drop(DropReason::Ipv4Header);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Classified::Drop(DropReason::Fragment);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let total = usize::from(ip.total_len());
    let ip_packet = &bytes[..total];
    let l4 = &ip_packet[usize::from(ip.header_len())..];
    let proto = ip.next_header();
    if proto == IpProtocol::Udp
        && let Some(dhcp) = classify_dhcp(src_mac, dst, l4, net)
    {
        return dhcp;
    }
    if !is_guest_source(src, net) {
        return Classified::Drop(DropReason::Source);
    }
    if dst.is_multicast() || dst.is_broadcast() || dst == net.broadcast() {
        return Classified::Drop(DropReason::Destination);
    }
    let (src, dst) = (IpAddr::V4(src), IpAddr::V4(dst));
    match proto {
        IpProtocol::Tcp => classify_tcp(src_mac, ip_packet, src, dst, l4),
        IpProtocol::Udp => classify_udp(src_mac, ip_packet, src, dst, l4),
        IpProtocol::Icmp => {
            let Ok(icmp) = Icmpv4Packet::new_checked(l4) else {
                return Classified::Drop(DropReason::Icmp);
            };
            if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
                return Classified::Drop(DropReason::Icmp);
            }
            Classified::Echo(GuestEcho {
                src_mac,
                ip_packet,
                src,
                dst,
                ident: icmp.echo_ident(),
                seq_no: icmp.echo_seq_no(),
                data: &l4[8..],
            })
        }
        _ => Classified::Drop(DropReason::Protocol),
    }
}

/// The IPv6 twin of [`classify_ipv4`]. No extension headers are followed: a guest's TCP, UDP
/// and echo traffic never carries them, and what does (multicast listener reports behind
/// hop-by-hop options, fragments) is nothing we relay.
fn classify_ipv6<'a>(
    src_mac: EthernetAddress,
    bytes: &'a [u8],
    v6: &Ipv6Network,
) -> Classified<'a> {
    let Ok(ip) = Ipv6Packet::new_checked(bytes) else {
        return Classified::Drop(DropReason::Ipv6Header);
    };
    if ip.version() != 6 {
        return Classified::Drop(DropReason::Ipv6Header);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let ip_packet = &bytes[..ip.total_len()];
    let l4 = &ip_packet[ip.header_len()..];
    let mut echo = None;
    match ip.next_header() {
        IpProtocol::Tcp | IpProtocol::Udp => {}
        IpProtocol::Icmpv6 => {
            let Ok(icmp) = Icmpv6Packet::new_checked(l4) else {
                return Classified::Drop(DropReason::Icmp);
            };
            if !icmp.verify_checksum(&src, &dst) {
                return Classified::Drop(DropReason::Icmp);
            }
            match icmp.msg_type() {
                // new_checked guarantees the 8-byte echo header.
                Icmpv6Message::EchoRequest if icmp.msg_code() == 0 => {
                    echo = Some((icmp.echo_ident(), icmp.echo_seq_no()));
                }
                Icmpv6Message::NeighborSolicit | Icmpv6Message::RouterSolicit => {
                    return neigh::classify_ndp(src_mac, &ip, &icmp, v6);
                }
                Icmpv6Message::NeighborAdvert
                | Icmpv6Message::RouterAdvert
                | Icmpv6Message::Redirect => return Classified::Drop(DropReason::Ndp),
                _ => return Classified::Drop(DropReason::Icmp),
            }
        }
        IpProtocol::HopByHop
        | IpProtocol::Ipv6Route
        | IpProtocol::Ipv6Frag
        | IpProtocol::Ipv6Opts
        | IpProtocol::IpSecAh
        | IpProtocol::IpSecEsp
        | IpProtocol::Ipv6NoNxt => return Classified::Drop(DropReason::Ipv6Extension),
        _ => return Classified::Drop(DropReason::Protocol),
    }
    if !is_guest_source6(src, v6) {
        return Classified::Drop(DropReason::Source);
    }
    if dst.is_multicast() || dst.is_unspecified() {
        return Classified::Drop(DropReason::Destination);
    }
    let (src, dst) = (IpAddr::V6(src), IpAddr::V6(dst));
    match (ip.next_header(), echo) {
        (IpProtocol::Tcp, _) => classify_tcp(src_mac, ip_packet, src, dst, l4),
        (IpProtocol::Udp, _) => classify_udp(src_mac, ip_packet, src, dst, l4),
        (_, Some((ident, seq_no))) => Classified::Echo(GuestEcho {
            src_mac,
            ip_packet,
            src,
            dst,
            ident,
            seq_no,
            data: &l4[8..],
        }),
        _ => Classified::Drop(DropReason::Icmp),
    }
}

fn classify_udp<'a>(
    src_mac: EthernetAddress,
    ip_packet: &'a [u8],
    src: IpAddr,
    dst: IpAddr,
    l4: &'a [u8],
) -> Classified<'a> {
    let Ok(udp) = UdpPacket::new_checked(l4) else {
        return Classified::Drop(DropReason::UdpHeader);
    };
    if udp.src_port() == 0 || udp.dst_port() == 0 {
        return Classified::Drop(DropReason::UdpHeader);
    }
    let len = usize::from(udp.len());
    Classified::Udp(GuestUdp {
        src_mac,
        ip_packet,
        src: SocketAddr::new(src, udp.src_port()),
        dst: SocketAddr::new(dst, udp.dst_port()),
        payload: &l4[8..len],
    })
}

fn classify_tcp<'a>(
    src_mac: EthernetAddress,
    ip_packet: &'a [u8],
    src: IpAddr,
    dst: IpAddr,
    l4: &'a [u8],
) -> Classified<'a> {
    let Ok(tcp) = TcpPacket::new_checked(l4) else {
        return Classified::Drop(DropReason::TcpHeader);
    };
    let flags = TcpFlags {
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
    };
    // Port 0 does not exist, and at most one of SYN, FIN and RST may be set (smoltcp
    // rejects the rest too; catching them here saves a pointless host connect).
    let controls = u8::from(flags.syn) + u8::from(flags.fin) + u8::from(flags.rst);
    if tcp.src_port() == 0 || tcp.dst_port() == 0 || controls > 1 {
        return Classified::Drop(DropReason::TcpHeader);
    }
    let payload_len = l4.len() - usize::from(tcp.header_len());
    let seq_len = payload_len as u32 + u32::from(flags.syn) + u32::from(flags.fin);
    Classified::Tcp(GuestTcp {
        src_mac,
        ip_packet,
        src: SocketAddr::new(src, tcp.src_port()),
        dst: SocketAddr::new(dst, tcp.dst_port()),
        flags,
        seq: tcp.seq_number().0 as u32,
        ack: tcp.ack().then(|| tcp.ack_number().0 as u32),
        seq_len,
    })
}

/// DHCP from a client, which may come from 0.0.0.0 and go to the broadcast address, so it is
/// recognised before the source and destination checks that apply to everything else.
fn classify_dhcp<'a>(
    src_mac: EthernetAddress,
    dst: Ipv4Addr,
    l4: &'a [u8],
    net: &VirtualNetwork,
) -> Option<Classified<'a>> {
    let udp = UdpPacket::new_checked(l4).ok()?;
    if udp.src_port() != DHCP_CLIENT_PORT || udp.dst_port() != DHCP_SERVER_PORT {
        return None;
    }
    if !(dst.is_broadcast() || dst == net.broadcast() || dst == net.gateway)
        || !src_mac.is_unicast()
    {
        return None;
    }
    let len = usize::from(udp.len());
    Some(Classified::Dhcp(GuestDhcp {
        src_mac,
        payload: &l4[8..len],
    }))
}

/// Whether `src` can be the source of a guest packet. The stack never answers to broadcast,
/// multicast, unspecified or loopback sources (and smoltcp would assert on some of them).
pub fn is_guest_source(src: Ipv4Addr, net: &VirtualNetwork) -> bool {
    !(src.is_multicast()
        || src.is_broadcast()
        || src.is_unspecified()
        || src.is_loopback()
        || src == net.broadcast()
        || net.is_ours(src))
}

/// The IPv6 version of [`is_guest_source`]: a unicast address that is not ours. Link-local
/// sources pass (a guest talks to fe80::2 from its own fe80:: address).
pub fn is_guest_source6(src: Ipv6Addr, v6: &Ipv6Network) -> bool {
    is_unicast6(src) && !v6.is_ours(src)
}

/// Unicast, and not the unspecified or loopback address, nor an IPv4-mapped one (which never
/// appears on a wire).
pub fn is_unicast6(a: Ipv6Addr) -> bool {
    !(a.is_multicast() || a.is_unspecified() || a.is_loopback() || a.to_ipv4_mapped().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, GUEST_MAC, Segment, flags, ipv6_frame};
    use smoltcp::wire::NdiscRepr;

    /// A TCP segment from `src`:40000 to `dst`:80 with `flags`, and 6 bytes of Ethernet
    /// padding after it.
    fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = Segment {
            src: SocketAddr::from((src, 40000)),
            dst: SocketAddr::from((dst, 80)),
            seq: 1000,
            ack: 0,
            flags,
            window: 1000,
            options: &[],
            payload,
        }
        .frame();
        frame.extend_from_slice(&[0; 6]);
        frame
    }

    #[test]
    fn syn_is_classified_with_padding_trimmed() {
        let net = VirtualNetwork::default();
        let f = tcp_frame(net.guest, Ipv4Addr::new(198, 18, 0, 1), flags::SYN, b"");
        match classify(&f, &net) {
            Classified::Tcp(t) => {
                assert!(t.flags.syn);
                assert_eq!(t.seq, 1000);
                assert_eq!(t.seq_len, 1);
                assert_eq!(t.ip_packet.len(), 40);
                assert_eq!(t.dst, SocketAddr::from((Ipv4Addr::new(198, 18, 0, 1), 80)));
                assert_eq!(t.src_mac, GUEST_MAC);
            }
            other => panic!("expected TCP, got {other:?}"),
        }
    }

    #[test]
    fn bad_sources_fragments_and_checksums_are_dropped() {
        let net = VirtualNetwork::default();
        let dst = Ipv4Addr::new(198, 18, 0, 1);
        for src in [
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
            net.gateway,
        ] {
            let f = tcp_frame(src, dst, flags::SYN, b"");
            assert!(
                matches!(classify(&f, &net), Classified::Drop(DropReason::Source)),
                "{src}"
            );
        }
        let mut f = tcp_frame(net.guest, dst, flags::SYN, b"");
        f[14 + 6] |= 0x20; // more fragments
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::Ipv4Header)
        ));
        let mut f = tcp_frame(net.guest, dst, 0, b"data");
        f[14 + 6] |= 0x20;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.fill_checksum();
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::Fragment)
        ));
        let f = tcp_frame(net.guest, Ipv4Addr::new(224, 0, 0, 5), flags::SYN, b"");
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::Destination)
        ));
    }

    #[test]
    fn impossible_tcp_segments_are_dropped() {
        let net = VirtualNetwork::default();
        let dst = Ipv4Addr::new(198, 18, 0, 1);
        let mut f = tcp_frame(net.guest, dst, flags::SYN, b"");
        TcpPacket::new_unchecked(&mut f[34..]).set_fin(true);
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::TcpHeader)
        ));
        let mut f = tcp_frame(net.guest, dst, flags::SYN, b"");
        TcpPacket::new_unchecked(&mut f[34..]).set_dst_port(0);
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::TcpHeader)
        ));
    }

    #[test]
    fn truncated_frames_never_panic() {
        let net = VirtualNetwork::default();
        let f = tcp_frame(
            net.guest,
            Ipv4Addr::new(198, 18, 0, 1),
            flags::SYN,
            b"hello",
        );
        for len in 0..f.len() {
            let _ = classify(&f[..len], &net);
        }
    }

    const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

    fn net6() -> VirtualNetwork {
        VirtualNetwork::default().with_ipv6(Ipv6Network::default())
    }

    #[test]
    fn ipv6_syn_is_classified_and_ipv6_without_the_flag_is_dropped() {
        let dst: Ipv6Addr = "2001:2::1".parse().unwrap();
        let l4 = Segment {
            src: SocketAddr::from((GUEST6, 40000)),
            dst: SocketAddr::from((dst, 80)),
            seq: 1000,
            ack: 0,
            flags: flags::SYN,
            window: 1000,
            options: &[],
            payload: &[],
        }
        .l4();
        let mut f = ipv6_frame(GUEST6, dst, IpProtocol::Tcp, 64, &l4);
        f.extend_from_slice(&[0; 6]); // Ethernet padding
        match classify(&f, &net6()) {
            Classified::Tcp(t) => {
                assert!(t.flags.syn);
                assert_eq!(t.ip_packet.len(), 40 + 20);
                assert_eq!(t.dst, SocketAddr::from((dst, 80)));
                assert_eq!(t.src, SocketAddr::from((GUEST6, 40000)));
            }
            other => panic!("expected TCP, got {other:?}"),
        }
        assert!(matches!(
            classify(&f, &VirtualNetwork::default()),
            Classified::Drop(DropReason::Ipv6Off)
        ));
        // Sources that cannot be the guest, destinations that cannot be relayed.
        for (src, dst) in [
            (Ipv6Addr::LOCALHOST, dst),
            ("fd00::2".parse().unwrap(), dst),
            ("::ffff:10.0.2.100".parse().unwrap(), dst),
        ] {
            let f = ipv6_frame(src, dst, IpProtocol::Tcp, 64, &l4);
            assert!(
                matches!(classify(&f, &net6()), Classified::Drop(DropReason::Source)),
                "{src}"
            );
        }
        let f = ipv6_frame(GUEST6, "ff02::1".parse().unwrap(), IpProtocol::Tcp, 64, &l4);
        assert!(matches!(
            classify(&f, &net6()),
            Classified::Drop(DropReason::Destination)
        ));
        // Extension headers (a multicast listener report's hop-by-hop options) are not
        // followed.
        let f = ipv6_frame(GUEST6, dst, IpProtocol::HopByHop, 1, &[0; 16]);
        assert!(matches!(
            classify(&f, &net6()),
            Classified::Drop(DropReason::Ipv6Extension)
        ));
    }

    #[test]
    fn truncated_ipv6_frames_never_panic() {
        let net = net6();
        let solicit = NdiscRepr::NeighborSolicit {
            target_addr: "fd00::2".parse().unwrap(),
            lladdr: None,
        };
        let f = testkit::ndisc_frame(GUEST6, "ff02::1:ff00:2".parse().unwrap(), solicit);
        for len in 0..f.len() {
            let _ = classify(&f[..len], &net);
        }
        // A payload length longer than the frame.
        let mut f = ipv6_frame(
            GUEST6,
            "2001:2::1".parse().unwrap(),
            IpProtocol::Udp,
            64,
            &[0; 8],
        );
        f[14 + 4] = 0xff;
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::Ipv6Header)
        ));
    }
}

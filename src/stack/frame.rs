//! The classifier: every frame the guest sends is parsed here, once, before anything acts on
//! it, and sorted into what the stack handles (ARP for our addresses, TCP segments, UDP
//! datagrams, ICMP echo requests, DHCP) or a counted drop.
//!
//! Every byte comes from the guest and is hostile. Parsing goes through smoltcp's
//! `new_checked` views, so no accessor can panic afterwards, and everything a handler needs
//! (addresses, ports, flags) is copied out into small plain structs. The function is pure:
//! same bytes in, same verdict out, which is what the fuzz targets exercise.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, EthernetAddress,
    EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
    TcpPacket, UdpPacket,
};

use crate::net::VirtualNetwork;

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
    /// IPv6, not handled yet.
    Ipv6,
}

impl DropReason {
    pub const COUNT: usize = 12;
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
        DropReason::Ipv6,
    ];
}

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
    /// The whole IPv4 packet, trimmed to its total length (Ethernet padding removed).
    pub ip_packet: &'a [u8],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
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
    /// The whole IPv4 packet, for quoting in ICMP errors.
    pub ip_packet: &'a [u8],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: &'a [u8],
}

/// A guest ICMP echo request.
#[derive(Debug, Clone, Copy)]
pub struct GuestEcho<'a> {
    pub src_mac: EthernetAddress,
    pub ip_packet: &'a [u8],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
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
        EthernetProtocol::Arp => classify_arp(payload, net),
        EthernetProtocol::Ipv4 => classify_ipv4(src_mac, payload, net),
        EthernetProtocol::Ipv6 => Classified::Drop(DropReason::Ipv6),
        _ => Classified::Drop(DropReason::EtherType),
    }
}

fn classify_arp(payload: &[u8], net: &VirtualNetwork) -> Classified<'static> {
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
    match proto {
        IpProtocol::Tcp => classify_tcp(src_mac, ip_packet, src, dst, l4),
        IpProtocol::Udp => {
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
                src: SocketAddrV4::new(src, udp.src_port()),
                dst: SocketAddrV4::new(dst, udp.dst_port()),
                payload: &l4[8..len],
            })
        }
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

fn classify_tcp<'a>(
    src_mac: EthernetAddress,
    ip_packet: &'a [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
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
        src: SocketAddrV4::new(src, tcp.src_port()),
        dst: SocketAddrV4::new(dst, tcp.dst_port()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

    const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x64]);

    fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, control: TcpControl, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len() + 6];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_src_addr(GUEST_MAC);
        eth.set_dst_addr(EthernetAddress([0x52, 0x55, 10, 0, 2, 2]));
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let caps = ChecksumCapabilities::default();
        let mut ipp = Ipv4Packet::new_unchecked(&mut buf[14..]);
        ip.emit(&mut ipp, &caps);
        let hl = ip.buffer_len();
        let mut tp = TcpPacket::new_unchecked(&mut buf[14 + hl..14 + hl + tcp.buffer_len()]);
        tcp.emit(&mut tp, &src.into(), &dst.into(), &caps);
        buf
    }

    #[test]
    fn syn_is_classified_with_padding_trimmed() {
        let net = VirtualNetwork::default();
        let f = tcp_frame(
            net.guest,
            Ipv4Addr::new(198, 18, 0, 1),
            TcpControl::Syn,
            b"",
        );
        match classify(&f, &net) {
            Classified::Tcp(t) => {
                assert!(t.flags.syn);
                assert_eq!(t.seq, 1000);
                assert_eq!(t.seq_len, 1);
                assert_eq!(t.ip_packet.len(), 40);
                assert_eq!(t.dst, SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80));
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
            let f = tcp_frame(src, dst, TcpControl::Syn, b"");
            assert!(
                matches!(classify(&f, &net), Classified::Drop(DropReason::Source)),
                "{src}"
            );
        }
        let mut f = tcp_frame(net.guest, dst, TcpControl::Syn, b"");
        f[14 + 6] |= 0x20; // more fragments
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::Ipv4Header)
        ));
        let mut f = tcp_frame(net.guest, dst, TcpControl::None, b"data");
        f[14 + 6] |= 0x20;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.fill_checksum();
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::Fragment)
        ));
        let f = tcp_frame(net.guest, Ipv4Addr::new(224, 0, 0, 5), TcpControl::Syn, b"");
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::Destination)
        ));
    }

    #[test]
    fn impossible_tcp_segments_are_dropped() {
        let net = VirtualNetwork::default();
        let dst = Ipv4Addr::new(198, 18, 0, 1);
        let mut f = tcp_frame(net.guest, dst, TcpControl::Syn, b"");
        TcpPacket::new_unchecked(&mut f[34..]).set_fin(true);
        assert!(matches!(
            classify(&f, &net),
            Classified::Drop(DropReason::TcpHeader)
        ));
        let mut f = tcp_frame(net.guest, dst, TcpControl::Syn, b"");
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
            TcpControl::Syn,
            b"hello",
        );
        for len in 0..f.len() {
            let _ = classify(&f[..len], &net);
        }
    }

    #[test]
    fn arp_is_answered_only_for_our_addresses() {
        let net = VirtualNetwork::default();
        let arp = |target: Ipv4Addr| {
            let repr = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: GUEST_MAC,
                source_protocol_addr: net.guest,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            let mut buf = vec![0u8; 14 + repr.buffer_len()];
            let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
            eth.set_src_addr(GUEST_MAC);
            eth.set_dst_addr(EthernetAddress::BROADCAST);
            eth.set_ethertype(EthernetProtocol::Arp);
            repr.emit(&mut ArpPacket::new_unchecked(&mut buf[14..]));
            buf
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
}

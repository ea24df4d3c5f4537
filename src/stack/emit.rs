//! Frames usernet writes on its own, outside any smoltcp socket: TCP resets for connections
//! that do not exist or were refused, TCP window updates for flows whose window the gate held
//! back, UDP datagrams (NAT replies, DNS, DHCP), ICMP and ICMPv6 echo replies and errors. ARP
//! and neighbour discovery messages are [`neigh`](super::neigh)'s, built on [`ip_frame`].
//!
//! Each builder writes a complete Ethernet frame through the [`TapWriter`], using smoltcp's
//! `Repr::emit` so headers and checksums are right by construction. Builders that take
//! addresses work for both families; the addresses' family picks IPv4 or IPv6 (and ICMP or
//! ICMPv6), and a mixed pair, which no caller makes, emits nothing.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, Icmpv6Message,
    Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use super::frame::GuestTcp;
use super::policy::Unreachable;
use super::tx::TapWriter;
use crate::net::VirtualNetwork;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const UDP_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
/// Hop limit of everything we originate (but neighbour discovery).
pub const HOP_LIMIT: u8 = 64;
/// How much of the offending datagram an ICMP error quotes: as much as keeps the error within
/// 576 bytes, as Linux does (RFC 1812 §4.3.2.3); at least its IP header and 8 bytes.
pub const ICMP_QUOTE_MAX: usize = 576 - IPV4_LEN - ICMP_HEADER_LEN;
/// The same for ICMPv6: as much as keeps the error within the minimum IPv6 MTU (RFC 4443
/// §2.4 (c)).
pub const ICMPV6_QUOTE_MAX: usize = 1280 - IPV6_LEN - ICMP_HEADER_LEN;
/// Room for the larger of the two quotes.
pub const QUOTE_BUF: usize = ICMPV6_QUOTE_MAX;

/// Length of the IP header we put in front of a payload to or from `addr`.
pub fn ip_header_len(addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(_) => IPV4_LEN,
        IpAddr::V6(_) => IPV6_LEN,
    }
}

/// Write an Ethernet header at the start of `frame`.
pub fn ethernet(
    frame: &mut [u8],
    src: EthernetAddress,
    dst: EthernetAddress,
    proto: EthernetProtocol,
) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_src_addr(src);
    eth.set_dst_addr(dst);
    eth.set_ethertype(proto);
}

/// Write the IPv4 or IPv6 header of a packet from `src` to `dst` (both of one family) at the
/// start of `buf`, which must hold it; returns its length, or None for a mixed pair.
fn ip_header(
    buf: &mut [u8],
    (src, dst): (IpAddr, IpAddr),
    proto: IpProtocol,
    payload_len: usize,
    hop_limit: u8,
) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            let ip = Ipv4Repr {
                src_addr,
                dst_addr,
                next_header: proto,
                payload_len,
                hop_limit,
            };
            let caps = ChecksumCapabilities::default();
            ip.emit(&mut Ipv4Packet::new_unchecked(buf), &caps);
            Some(IPV4_LEN)
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            let ip = Ipv6Repr {
                src_addr,
                dst_addr,
                next_header: proto,
                payload_len,
                hop_limit,
            };
            ip.emit(&mut Ipv6Packet::new_unchecked(buf));
            Some(IPV6_LEN)
        }
        _ => None,
    }
}

/// Write Ethernet and IP headers for an IP payload of `payload_len` bytes from `src` to `dst`
/// (both IPv4 or both IPv6); `fill` writes the payload.
#[allow(clippy::too_many_arguments)]
pub fn ip_frame(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    dst_mac: EthernetAddress,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    payload_len: usize,
    hop_limit: u8,
    fill: impl FnOnce(&mut [u8]),
) {
    if src.is_ipv4() != dst.is_ipv4() {
        return;
    }
    let (header, ethertype) = match src {
        IpAddr::V4(_) => (IPV4_LEN, EthernetProtocol::Ipv4),
        IpAddr::V6(_) => (IPV6_LEN, EthernetProtocol::Ipv6),
    };
    tx.send(ETH_LEN + header + payload_len, |f| {
        ethernet(f, net.gateway_mac(), dst_mac, ethertype);
        let _ = ip_header(&mut f[ETH_LEN..], (src, dst), proto, payload_len, hop_limit);
        fill(&mut f[ETH_LEN + header..]);
    });
}

/// Reset `seg` the way RFC 9293 §3.10.7.1 says a closed port does: if it carried an ACK, the
/// RST takes its sequence number from that ACK; otherwise the RST acknowledges the segment.
pub fn tcp_reset(tx: &mut TapWriter, net: &VirtualNetwork, seg: &GuestTcp<'_>) {
    if seg.flags.rst {
        return;
    }
    let (seq, ack) = match seg.ack {
        Some(ack) => (ack, None),
        None => (0, Some(seg.seq.wrapping_add(seg.seq_len))),
    };
    let rst = TcpControl::Rst;
    emit_tcp(tx, net, seg.src_mac, seg.dst, seg.src, rst, seq, ack, 0);
}

/// Refuse a guest SYN whose sequence space ends at `syn_end`: RST|ACK from `remote`, so the
/// guest's connect fails with `ECONNREFUSED`.
pub fn tcp_refuse(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    remote: SocketAddr,
    guest: SocketAddr,
    syn_end: u32,
) {
    let rst = TcpControl::Rst;
    emit_tcp(tx, net, guest_mac, remote, guest, rst, 0, Some(syn_end), 0);
}

/// A pure ACK from `from` to the guest at `to` that tells it of a new receive window (the
/// flow's smoltcp socket does not know its window was held back, so it would not).
#[allow(clippy::too_many_arguments)]
pub fn tcp_window_update(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    ack: u32,
    window: u16,
) {
    let none = TcpControl::None;
    emit_tcp(tx, net, guest_mac, from, to, none, seq, Some(ack), window);
}

/// A segment without payload or options: a bare RST (with ACK when `ack` is given), or a
/// pure ACK.
#[allow(clippy::too_many_arguments)]
fn emit_tcp(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: SocketAddr,
    to: SocketAddr,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    window: u16,
) {
    let tcp = TcpRepr {
        src_port: from.port(),
        dst_port: to.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let caps = ChecksumCapabilities::default();
    let (src, dst) = (from.ip(), to.ip());
    ip_frame(
        tx,
        net,
        guest_mac,
        src,
        dst,
        IpProtocol::Tcp,
        tcp.buffer_len(),
        HOP_LIMIT,
        |p| {
            tcp.emit(
                &mut TcpPacket::new_unchecked(p),
                &IpAddress::from(src),
                &IpAddress::from(dst),
                &caps,
            );
        },
    );
}

/// A UDP datagram to the guest.
pub fn udp_datagram(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    dst_mac: EthernetAddress,
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) {
    let udp = UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    };
    let caps = ChecksumCapabilities::default();
    let (src, dst) = (from.ip(), to.ip());
    let len = UDP_LEN + payload.len();
    ip_frame(
        tx,
        net,
        dst_mac,
        src,
        dst,
        IpProtocol::Udp,
        len,
        HOP_LIMIT,
        |p| {
            udp.emit(
                &mut UdpPacket::new_unchecked(p),
                &IpAddress::from(src),
                &IpAddress::from(dst),
                payload.len(),
                |b| b.copy_from_slice(payload),
                &caps,
            );
        },
    );
}

/// An ICMP (or ICMPv6) echo reply to the guest, from `from`.
#[allow(clippy::too_many_arguments)]
pub fn icmp_echo_reply(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: IpAddr,
    to: IpAddr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
    hop_limit: u8,
) {
    let msg_type = match from {
        IpAddr::V4(_) => u8::from(Icmpv4Message::EchoReply),
        IpAddr::V6(_) => u8::from(Icmpv6Message::EchoReply),
    };
    let word = u32::from(ident) << 16 | u32::from(seq_no);
    icmp(
        tx,
        net,
        guest_mac,
        (from, to, hop_limit),
        msg_type,
        0,
        word,
        data,
    );
}

/// An ICMP or ICMPv6 error (destination unreachable, time exceeded, packet too big...) from
/// `from` to the guest at `to`, quoting `quote` (the start of the offending packet, IP header
/// first). `word` is the header's second word: zero, or the MTU of "fragmentation needed"
/// and "packet too big".
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: IpAddr,
    to: IpAddr,
    msg_type: u8,
    code: u8,
    word: u32,
    quote: &[u8],
) {
    let max = match from {
        IpAddr::V4(_) => ICMP_QUOTE_MAX,
        IpAddr::V6(_) => ICMPV6_QUOTE_MAX,
    };
    let quote = &quote[..quote.len().min(max)];
    icmp(
        tx,
        net,
        guest_mac,
        (from, to, HOP_LIMIT),
        msg_type,
        code,
        word,
        quote,
    );
}

/// One ICMP or ICMPv6 message: type, code, the header's second word, body.
#[allow(clippy::too_many_arguments)]
fn icmp(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    (from, to, hop_limit): (IpAddr, IpAddr, u8),
    msg_type: u8,
    code: u8,
    word: u32,
    body: &[u8],
) {
    let len = ICMP_HEADER_LEN + body.len();
    let proto = match from {
        IpAddr::V4(_) => IpProtocol::Icmp,
        IpAddr::V6(_) => IpProtocol::Icmpv6,
    };
    ip_frame(tx, net, guest_mac, from, to, proto, len, hop_limit, |p| {
        p[0] = msg_type;
        p[1] = code;
        p[2..4].fill(0);
        p[4..8].copy_from_slice(&word.to_be_bytes());
        p[ICMP_HEADER_LEN..].copy_from_slice(body);
        match (from, to) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                Icmpv6Packet::new_unchecked(p).fill_checksum(&src, &dst);
            }
            _ => Icmpv4Packet::new_unchecked(p).fill_checksum(),
        }
    });
}

/// Send an ICMP (or ICMPv6) destination-unreachable about the packet `offending`, which the
/// guest sent from `guest_mac`, from `from` or else the gateway. `offending` must be a packet
/// the classifier accepted.
pub fn icmp_unreachable(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: Option<IpAddr>,
    reason: Unreachable,
    offending: &[u8],
) {
    let (to, msg_type, code) = match offending.first().map(|b| b >> 4) {
        Some(4) => match Ipv4Packet::new_checked(offending) {
            Ok(orig) => (IpAddr::V4(orig.src_addr()), 3, reason.icmpv4_code()),
            Err(_) => return,
        },
        Some(6) => match Ipv6Packet::new_checked(offending) {
            Ok(orig) => (IpAddr::V6(orig.src_addr()), 1, reason.icmpv6_code()),
            Err(_) => return,
        },
        _ => return,
    };
    let from = from.unwrap_or_else(|| net.gateway_for(to));
    icmp_error(tx, net, guest_mac, from, to, msg_type, code, 0, offending);
}

/// The start of an IP packet the guest sent, rebuilt from what we know of it: an IPv4 or
/// IPv6 header and the first `l4` bytes of its transport payload (whose full length was
/// `l4_total`). ICMP errors about packets we only have in pieces quote this.
pub fn rebuild_quote(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    l4_total: usize,
    l4: &[u8],
) -> Vec<u8> {
    let (header, quote_max) = match src {
        IpAddr::V4(_) => (IPV4_LEN, ICMP_QUOTE_MAX),
        IpAddr::V6(_) => (IPV6_LEN, ICMPV6_QUOTE_MAX),
    };
    let take = l4.len().min(quote_max - header);
    let mut out = vec![0u8; header + take];
    if ip_header(&mut out, (src, dst), proto, l4_total, HOP_LIMIT).is_none() {
        return Vec::new();
    }
    out[header..].copy_from_slice(&l4[..take]);
    out
}

/// Parse what we emitted, for tests: the ICMP message carried by an Ethernet frame.
#[cfg(test)]
pub(crate) fn parse_icmp(frame: &[u8]) -> Option<(Ipv4Repr, smoltcp::wire::Icmpv4Repr<'_>)> {
    use smoltcp::wire::Icmpv4Repr;
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Packet::new_checked(&frame[ETH_LEN..]).ok()?;
    let ip_repr = Ipv4Repr::parse(&ip, &caps).ok()?;
    let icmp = Icmpv4Packet::new_checked(&frame[ETH_LEN + IPV4_LEN..]).ok()?;
    let icmp_repr = Icmpv4Repr::parse(&icmp, &caps).ok()?;
    Some((ip_repr, icmp_repr))
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::fd::AsFd;

    use std::net::Ipv6Addr;

    use super::*;
    use crate::net::Ipv6Network;

    const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x64]);

    /// A TAP writer on a stand-in TAP, the guest's end of it, and the default network with
    /// IPv6.
    pub(in crate::stack) fn setup() -> (TapWriter, std::os::fd::OwnedFd, VirtualNetwork) {
        let (ours, theirs) = crate::testkit::tap_pair();
        let net = VirtualNetwork::default().with_ipv6(Ipv6Network::default());
        (
            TapWriter::new(ours, crate::tap::Framing::Plain).unwrap(),
            theirs,
            net,
        )
    }

    /// The next frame written: its Ethernet destination, IPv6 header and ICMPv6 bytes, the
    /// checksum verified.
    pub(in crate::stack) fn next_icmpv6(
        guest: &std::os::fd::OwnedFd,
    ) -> (EthernetAddress, Ipv6Repr, Vec<u8>) {
        let mut buf = vec![0u8; 2048];
        let n = crate::tap::read_frame(guest.as_fd(), &mut buf).expect("a frame");
        let eth = EthernetFrame::new_checked(&buf[..n]).unwrap();
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv6);
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let repr = Ipv6Repr::parse(&ip).unwrap();
        assert_eq!(repr.next_header, IpProtocol::Icmpv6);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&repr.src_addr, &repr.dst_addr));
        (eth.dst_addr(), repr, ip.payload().to_vec())
    }

    #[test]
    fn ipv6_unreachable_quotes_the_packet_with_icmpv6_codes() {
        let (mut tx, guest, net) = setup();
        let guest_ip: Ipv6Addr = "fd00::100".parse().unwrap();
        let remote: Ipv6Addr = "2001:2::1".parse().unwrap();
        let offending =
            crate::testkit::ipv6_packet(guest_ip, remote, IpProtocol::Udp, 64, &[0; 8 + 2000]);
        icmp_unreachable(
            &mut tx,
            &net,
            GUEST_MAC,
            None,
            Unreachable::Port,
            &offending,
        );
        let (_, ip, icmp) = next_icmpv6(&guest);
        assert_eq!(
            (ip.src_addr, ip.dst_addr),
            ("fd00::2".parse().unwrap(), guest_ip)
        );
        assert_eq!((icmp[0], icmp[1]), (1, 4));
        // Quoted up to the minimum IPv6 MTU, no more.
        assert_eq!(IPV6_LEN + icmp.len(), 1280);
        assert_eq!(&icmp[8..8 + IPV6_LEN], &offending[..IPV6_LEN]);
    }
}

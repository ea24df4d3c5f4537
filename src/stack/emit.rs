//! Frames usernet writes on its own, outside any smoltcp socket: ARP replies, TCP resets for
//! connections that do not exist or were refused, UDP datagrams (NAT replies, DNS, DHCP),
//! ICMP echo replies and ICMP errors.
//!
//! Each builder writes a complete Ethernet frame through the [`TapWriter`], using smoltcp's
//! `Repr::emit` so headers and checksums are right by construction.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use super::frame::{ArpRequest, GuestTcp};
use super::tx::TapWriter;
use crate::net::VirtualNetwork;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
/// Hop limit of everything we originate.
const HOP_LIMIT: u8 = 64;
/// How much of the offending datagram an ICMP error quotes: as much as keeps the error within
/// 576 bytes, as Linux does (RFC 1812 §4.3.2.3); at least its IP header and 8 bytes.
pub const ICMP_QUOTE_MAX: usize = 576 - IPV4_LEN - ICMP_HEADER_LEN;

fn ethernet(frame: &mut [u8], src: EthernetAddress, dst: EthernetAddress, proto: EthernetProtocol) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_src_addr(src);
    eth.set_dst_addr(dst);
    eth.set_ethertype(proto);
}

/// Write Ethernet and IPv4 headers for an IP payload of `payload_len` bytes from `src` to
/// `dst`; `fill` writes the payload.
#[allow(clippy::too_many_arguments)]
fn ipv4_frame(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload_len: usize,
    hop_limit: u8,
    fill: impl FnOnce(&mut [u8]),
) {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit,
    };
    let caps = ChecksumCapabilities::default();
    tx.send(ETH_LEN + IPV4_LEN + payload_len, |f| {
        ethernet(f, net.gateway_mac(), dst_mac, EthernetProtocol::Ipv4);
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]), &caps);
        fill(&mut f[ETH_LEN + IPV4_LEN..]);
    });
}

/// Answer an ARP request for one of our addresses.
pub fn arp_reply(tx: &mut TapWriter, req: &ArpRequest) {
    let our_mac = VirtualNetwork::mac_for(req.target_ip);
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: our_mac,
        source_protocol_addr: req.target_ip,
        target_hardware_addr: req.sender_mac,
        target_protocol_addr: req.sender_ip,
    };
    tx.send(ETH_LEN + repr.buffer_len(), |f| {
        ethernet(f, our_mac, req.sender_mac, EthernetProtocol::Arp);
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_LEN..]));
    });
}

/// Ask the guest link who has `target`, from the gateway.
pub fn arp_request(tx: &mut TapWriter, net: &VirtualNetwork, target: Ipv4Addr) {
    let our_mac = net.gateway_mac();
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: our_mac,
        source_protocol_addr: net.gateway,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    tx.send(ETH_LEN + repr.buffer_len(), |f| {
        ethernet(
            f,
            our_mac,
            EthernetAddress::BROADCAST,
            EthernetProtocol::Arp,
        );
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_LEN..]));
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
    emit_tcp(tx, net, seg.src_mac, seg.dst, seg.src, seq, ack);
}

/// Refuse a guest SYN whose sequence space ends at `syn_end`: RST|ACK from `remote`, so the
/// guest's connect fails with `ECONNREFUSED`.
pub fn tcp_refuse(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    remote: SocketAddrV4,
    guest: SocketAddrV4,
    syn_end: u32,
) {
    emit_tcp(tx, net, guest_mac, remote, guest, 0, Some(syn_end));
}

/// A bare RST (with ACK when `ack` is given).
fn emit_tcp(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: SocketAddrV4,
    to: SocketAddrV4,
    seq: u32,
    ack: Option<u32>,
) {
    let tcp = TcpRepr {
        src_port: from.port(),
        dst_port: to.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let caps = ChecksumCapabilities::default();
    let (src, dst) = (*from.ip(), *to.ip());
    ipv4_frame(
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
                &src.into(),
                &dst.into(),
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
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: &[u8],
) {
    let udp = UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    };
    let caps = ChecksumCapabilities::default();
    let (src, dst) = (*from.ip(), *to.ip());
    let len = UDP_LEN + payload.len();
    ipv4_frame(
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
                &src.into(),
                &dst.into(),
                payload.len(),
                |b| b.copy_from_slice(payload),
                &caps,
            );
        },
    );
}

/// An ICMP echo reply to the guest, from `from`.
#[allow(clippy::too_many_arguments)]
pub fn icmp_echo_reply(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: Ipv4Addr,
    to: Ipv4Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
    hop_limit: u8,
) {
    let (msg, route) = (Icmpv4Message::EchoReply, (from, to, hop_limit));
    icmp(tx, net, guest_mac, route, msg, 0, [ident, seq_no], data);
}

/// An ICMP error (destination unreachable, time exceeded...) from `from` to the guest at
/// `to`, quoting `quote` (the start of the offending packet, IP header first).
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: Ipv4Addr,
    to: Ipv4Addr,
    msg_type: u8,
    code: u8,
    quote: &[u8],
) {
    let quote = &quote[..quote.len().min(ICMP_QUOTE_MAX)];
    // The second header word is unused for these message types and must be zero.
    let msg = Icmpv4Message::from(msg_type);
    icmp(
        tx,
        net,
        guest_mac,
        (from, to, HOP_LIMIT),
        msg,
        code,
        [0, 0],
        quote,
    );
}

/// One ICMP message: type, code, the header's second word (as two 16-bit halves), body.
#[allow(clippy::too_many_arguments)]
fn icmp(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    (from, to, hop_limit): (Ipv4Addr, Ipv4Addr, u8),
    msg_type: Icmpv4Message,
    code: u8,
    word: [u16; 2],
    body: &[u8],
) {
    let len = ICMP_HEADER_LEN + body.len();
    ipv4_frame(
        tx,
        net,
        guest_mac,
        from,
        to,
        IpProtocol::Icmp,
        len,
        hop_limit,
        |p| {
            let mut icmp = Icmpv4Packet::new_unchecked(p);
            icmp.set_msg_type(msg_type);
            icmp.set_msg_code(code);
            icmp.set_echo_ident(word[0]);
            icmp.set_echo_seq_no(word[1]);
            icmp.data_mut().copy_from_slice(body);
            icmp.fill_checksum();
        },
    );
}

/// Send an ICMP destination-unreachable from `from` about the IPv4 packet `offending`, which
/// the guest sent from `guest_mac`. `offending` must be a packet the classifier accepted.
pub fn icmp_unreachable(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: Ipv4Addr,
    reason: Icmpv4DstUnreachable,
    offending: &[u8],
) {
    let Ok(orig) = Ipv4Packet::new_checked(offending) else {
        return;
    };
    let to = orig.src_addr();
    icmp_error(tx, net, guest_mac, from, to, 3, reason.into(), offending);
}

/// The start of an IPv4 packet the guest sent, rebuilt from what we know of it: an IPv4
/// header and the first `l4` bytes of its transport payload (whose full length was
/// `l4_total`). ICMP errors about packets we only have in pieces quote this.
pub fn rebuild_quote(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    l4_total: usize,
    l4: &[u8],
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4_total,
        hop_limit: HOP_LIMIT,
    };
    let take = l4.len().min(ICMP_QUOTE_MAX - IPV4_LEN);
    let mut out = vec![0u8; IPV4_LEN + take];
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut out[..]),
        &ChecksumCapabilities::default(),
    );
    out[IPV4_LEN..].copy_from_slice(&l4[..take]);
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

//! Frames usernet writes on its own, outside any smoltcp socket: ARP replies, TCP resets for
//! connections that do not exist or were refused, and ICMP destination-unreachable errors.
//!
//! Each builder writes a complete Ethernet frame through the [`TapWriter`], using smoltcp's
//! `Repr::emit` so headers and checksums are right by construction.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4DstUnreachable, Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};

use super::frame::{ArpRequest, GuestTcp};
use super::tx::TapWriter;
use crate::net::VirtualNetwork;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
/// Hop limit of everything we originate.
const HOP_LIMIT: u8 = 64;
/// How much of the offending datagram an ICMP error quotes: as much as keeps the error within
/// 576 bytes, as Linux does (RFC 1812 §4.3.2.3); at least its IP header and 8 bytes.
const ICMP_QUOTE_MAX: usize = 576 - IPV4_LEN - 8;

fn ethernet(frame: &mut [u8], src: EthernetAddress, dst: EthernetAddress, proto: EthernetProtocol) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_src_addr(src);
    eth.set_dst_addr(dst);
    eth.set_ethertype(proto);
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
    emit_tcp(
        tx,
        net,
        seg.src_mac,
        seg.dst,
        seg.src,
        TcpControl::Rst,
        seq,
        ack,
    );
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
    emit_tcp(
        tx,
        net,
        guest_mac,
        remote,
        guest,
        TcpControl::Rst,
        0,
        Some(syn_end),
    );
}

#[allow(clippy::too_many_arguments)]
fn emit_tcp(
    tx: &mut TapWriter,
    net: &VirtualNetwork,
    guest_mac: EthernetAddress,
    from: SocketAddrV4,
    to: SocketAddrV4,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) {
    let tcp = TcpRepr {
        src_port: from.port(),
        dst_port: to.port(),
        control,
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
    let ip = Ipv4Repr {
        src_addr: *from.ip(),
        dst_addr: *to.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: HOP_LIMIT,
    };
    let caps = ChecksumCapabilities::default();
    tx.send(ETH_LEN + IPV4_LEN + tcp.buffer_len(), |f| {
        ethernet(f, net.gateway_mac(), guest_mac, EthernetProtocol::Ipv4);
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut f[ETH_LEN + IPV4_LEN..]),
            &(*from.ip()).into(),
            &(*to.ip()).into(),
            &caps,
        );
    });
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
    let quote = &offending[..offending.len().min(ICMP_QUOTE_MAX)];
    // ICMP header (8 bytes) followed by the quote, verbatim.
    let icmp_len = 8 + quote.len();
    let ip = Ipv4Repr {
        src_addr: from,
        dst_addr: orig.src_addr(),
        next_header: IpProtocol::Icmp,
        payload_len: icmp_len,
        hop_limit: HOP_LIMIT,
    };
    let caps = ChecksumCapabilities::default();
    tx.send(ETH_LEN + IPV4_LEN + icmp_len, |f| {
        ethernet(f, net.gateway_mac(), guest_mac, EthernetProtocol::Ipv4);
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]), &caps);
        let mut icmp = Icmpv4Packet::new_unchecked(&mut f[ETH_LEN + IPV4_LEN..]);
        icmp.set_msg_type(smoltcp::wire::Icmpv4Message::DstUnreachable);
        icmp.set_msg_code(reason.into());
        // Bytes 4..8 are unused for this message type and must be zero.
        icmp.set_echo_ident(0);
        icmp.set_echo_seq_no(0);
        icmp.data_mut().copy_from_slice(quote);
        icmp.fill_checksum();
    });
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

//! Frames as a guest would send them, built with `smoltcp::wire` so headers, lengths and
//! checksums are right and the fuzzed part (payloads, flags, options) reaches the parsers
//! behind the classifier.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscRepr, TcpPacket, UdpPacket,
};
use usernet::net::{Ipv6Network, VirtualNetwork};

/// The guest's MAC address.
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x00, 0x02, 0x64]);
/// Another client on the link.
pub const OTHER_MAC: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x00, 0x02, 0x65]);

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
/// The all-nodes and all-routers multicast groups' Ethernet addresses.
const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);

/// The default virtual network (10.0.2.0/24 and fd00::/64).
pub fn net() -> VirtualNetwork {
    VirtualNetwork::default().with_ipv6(Ipv6Network::default())
}

/// An IP packet of either family in a frame from the guest's MAC: `src` and `dst` are of the
/// same family.
pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_frame(s, d, proto, 64, l4),
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_frame(s, d, proto, l4),
        // The guest's own address of dst's family.
        (_, IpAddr::V4(d)) => ipv4_frame(net().guest, d, proto, l4),
        (_, IpAddr::V6(d)) => ipv6_frame(net().v6.unwrap_or_default().guest, d, proto, 64, l4),
    }
}

/// An IPv6 packet in a frame from the guest's MAC to the gateway's (or the multicast MAC of a
/// multicast destination).
pub fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, proto: IpProtocol, hops: u8, l4: &[u8]) -> Vec<u8> {
    let l4 = &l4[..l4.len().min(65535)];
    let mut ip = vec![0u8; IPV6_LEN + l4.len()];
    let mut packet = Ipv6Packet::new_unchecked(&mut ip[..]);
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: hops,
    }
    .emit(&mut packet);
    packet.payload_mut().copy_from_slice(l4);
    let dst_mac = if dst.is_multicast() {
        ALL_NODES_MAC
    } else {
        net().gateway_mac()
    };
    ethernet(GUEST_MAC, dst_mac, EthernetProtocol::Ipv6, &ip)
}

/// A neighbour discovery message (hop limit 255, as on a link).
pub fn ndisc_frame(src: Ipv6Addr, dst: Ipv6Addr, repr: NdiscRepr<'_>) -> Vec<u8> {
    let icmp = Icmpv6Repr::Ndisc(repr);
    let mut l4 = vec![0u8; icmp.buffer_len()];
    icmp.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
        &Default::default(),
    );
    ipv6_frame(src, dst, IpProtocol::Icmpv6, 255, &l4)
}

/// An Ethernet frame to the gateway's MAC (or `dst`).
pub fn ethernet(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = vec![0u8; ETH_LEN + payload.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut eth);
    eth.payload_mut().copy_from_slice(payload);
    frame
}

/// An IPv4 packet in a frame from the guest's MAC to the gateway's.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    ipv4_frame_from(GUEST_MAC, dst_mac_for(dst), src, dst, proto, l4)
}

fn dst_mac_for(dst: Ipv4Addr) -> EthernetAddress {
    if dst.is_broadcast() {
        EthernetAddress::BROADCAST
    } else {
        net().gateway_mac()
    }
}

pub fn ipv4_frame_from(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    l4: &[u8],
) -> Vec<u8> {
    // Lengths past 65535 cannot be expressed; clip the payload.
    let l4 = &l4[..l4.len().min(65535 - IPV4_LEN)];
    let mut ip = vec![0u8; IPV4_LEN + l4.len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut ip[..]);
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: 64,
    }
    .emit(&mut packet, &Default::default());
    packet.payload_mut().copy_from_slice(l4);
    ethernet(src_mac, dst_mac, EthernetProtocol::Ipv4, &ip)
}

/// A UDP datagram's L4 bytes (header with checksum, then `payload`).
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(65535 - IPV4_LEN - 8)];
    let mut l4 = vec![0u8; 8 + payload.len()];
    let mut p = UdpPacket::new_unchecked(&mut l4[..]);
    p.set_src_port(src.port());
    p.set_dst_port(dst.port());
    p.set_len((8 + payload.len()) as u16);
    p.payload_mut().copy_from_slice(payload);
    p.fill_checksum(&IpAddress::from(src.ip()), &IpAddress::from(dst.ip()));
    l4
}

/// A whole UDP frame from the guest's MAC.
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    ip_frame(src.ip(), dst.ip(), IpProtocol::Udp, &udp(src, dst, payload))
}

/// TCP flag bits as on the wire (low byte of the flags field).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// One TCP segment, any flags, raw options (padded to a multiple of 4, at most 40 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl Segment<'_> {
    pub fn frame(&self) -> Vec<u8> {
        let options = &self.options[..self.options.len().min(40)];
        let header = 20 + options.len().div_ceil(4) * 4;
        let payload = &self.payload[..self.payload.len().min(65535 - IPV4_LEN - header)];
        let mut l4 = vec![0u8; header + payload.len()];
        l4[20..20 + options.len()].copy_from_slice(options);
        let mut p = TcpPacket::new_unchecked(&mut l4[..]);
        p.set_src_port(self.src.port());
        p.set_dst_port(self.dst.port());
        p.set_seq_number(smoltcp::wire::TcpSeqNumber(self.seq as i32));
        p.set_ack_number(smoltcp::wire::TcpSeqNumber(self.ack as i32));
        p.set_header_len(header as u8);
        p.clear_flags();
        p.set_fin(self.flags & flags::FIN != 0);
        p.set_syn(self.flags & flags::SYN != 0);
        p.set_rst(self.flags & flags::RST != 0);
        p.set_psh(self.flags & flags::PSH != 0);
        p.set_ack(self.flags & flags::ACK != 0);
        p.set_urg(self.flags & flags::URG != 0);
        p.set_window_len(self.window);
        p.set_urgent_at(0);
        p.payload_mut().copy_from_slice(payload);
        p.fill_checksum(
            &IpAddress::from(self.src.ip()),
            &IpAddress::from(self.dst.ip()),
        );
        ip_frame(self.src.ip(), self.dst.ip(), IpProtocol::Tcp, &l4)
    }
}

/// An ICMP (or ICMPv6) echo request from the guest.
pub fn echo_frame(src: IpAddr, dst: IpAddr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let data = &data[..data.len().min(65535 - IPV4_LEN - 8)];
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            let mut l4 = vec![0u8; repr.buffer_len()];
            repr.emit(
                &s,
                &d,
                &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
                &Default::default(),
            );
            ipv6_frame(s, d, IpProtocol::Icmpv6, 64, &l4)
        }
        _ => {
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            let mut l4 = vec![0u8; repr.buffer_len()];
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(&mut l4[..]),
                &Default::default(),
            );
            ip_frame(src, dst, IpProtocol::Icmp, &l4)
        }
    }
}

/// An ARP message on the link.
pub fn arp_frame(
    operation: ArpOperation,
    sender_mac: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: sender_mac,
        source_protocol_addr: sender_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target_ip,
    };
    let mut body = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut body[..]));
    let dst = match operation {
        ArpOperation::Request => EthernetAddress::BROADCAST,
        _ => net().gateway_mac(),
    };
    ethernet(sender_mac, dst, EthernetProtocol::Arp, &body)
}

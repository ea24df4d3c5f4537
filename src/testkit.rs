//! Frames as a guest would send them, and a stand-in TAP to send them on: what the unit tests,
//! the fuzz targets (`fuzz/`) and the integration tests' tools (`tests/integration/tools/`)
//! build guest traffic with, so each does not write its own.
//!
//! Frames are built with `smoltcp::wire`, so headers, lengths and checksums are right and
//! whatever a test or a fuzz input varies (payloads, flags, options, addresses) reaches the
//! parsers behind the classifier. Lengths that cannot be expressed are clipped, never a panic:
//! the fuzz targets hand these functions arbitrary sizes.
//!
//! Not part of usernet proper: it is compiled for the crate's own unit tests and with the
//! `testkit` feature, which the fuzz crate and the integration tests turn on (usernet is its
//! own dev-dependency with that feature, see `Cargo.toml`). A normal build has none of it.

#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscRepr, TcpPacket, UdpPacket,
};

use crate::net::{Ipv6Network, VirtualNetwork};

/// The guest's MAC address.
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x00, 0x02, 0x64]);
/// Another client on the link.
pub const OTHER_MAC: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x00, 0x02, 0x65]);

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
/// Hop limit of the guest's ordinary traffic.
const HOPS: u8 = 64;
/// The all-nodes and all-routers multicast groups' Ethernet addresses.
const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);

/// The default virtual network (10.0.2.0/24 and fd00::/64).
pub fn net() -> VirtualNetwork {
    VirtualNetwork::default().with_ipv6(Ipv6Network::default())
}

/// The guest's IPv6 address on the default network (fd00::100).
fn guest6() -> Ipv6Addr {
    net().v6.unwrap_or_default().guest
}

/// A stand-in TAP: a non-blocking `socketpair(AF_UNIX, SOCK_SEQPACKET)`, whose ends keep
/// frame boundaries as a TAP does. The first end is the device (give it to the stack), the
/// second the guest's side.
pub fn tap_pair() -> (OwnedFd, OwnedFd) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair for a test TAP")
}

/// An Ethernet frame from `src` to `dst` carrying `payload`.
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

/// An IPv4 packet (header, then `l4`).
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    // Lengths past 65535 cannot be expressed; clip the payload.
    let l4 = &l4[..l4.len().min(65535 - IPV4_LEN)];
    let mut ip = vec![0u8; IPV4_LEN + l4.len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut ip[..]);
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: HOPS,
    }
    .emit(&mut packet, &Default::default());
    packet.payload_mut().copy_from_slice(l4);
    ip
}

/// An IPv6 packet (header with hop limit `hops`, then `l4`).
pub fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: IpProtocol,
    hops: u8,
    l4: &[u8],
) -> Vec<u8> {
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
    ip
}

/// An IP packet of either family from `src` to `dst`; if their families differ, from the
/// guest's own address of `dst`'s family.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_packet(s, d, proto, l4),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_packet(s, d, proto, HOPS, l4),
        (_, IpAddr::V4(d)) => ipv4_packet(net().guest, d, proto, l4),
        (_, IpAddr::V6(d)) => ipv6_packet(guest6(), d, proto, HOPS, l4),
    }
}

/// An IP packet of either family in a frame from the guest's MAC (see [`ip_packet`] for the
/// addresses), to the gateway's MAC or the broadcast or multicast MAC of `dst`.
pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let packet = ip_packet(src, dst, proto, l4);
    match dst {
        IpAddr::V4(d) => ethernet(GUEST_MAC, dst_mac_for(d), EthernetProtocol::Ipv4, &packet),
        IpAddr::V6(d) => ethernet(GUEST_MAC, dst_mac6_for(d), EthernetProtocol::Ipv6, &packet),
    }
}

/// An IPv4 packet in a frame from the guest's MAC to the gateway's (or the broadcast MAC).
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    ipv4_frame_from(GUEST_MAC, dst_mac_for(dst), src, dst, proto, l4)
}

/// An IPv4 packet in a frame between any two MACs.
pub fn ipv4_frame_from(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    l4: &[u8],
) -> Vec<u8> {
    let packet = ipv4_packet(src, dst, proto, l4);
    ethernet(src_mac, dst_mac, EthernetProtocol::Ipv4, &packet)
}

/// An IPv6 packet in a frame from the guest's MAC to the gateway's (or the all-nodes MAC of a
/// multicast destination).
pub fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, proto: IpProtocol, hops: u8, l4: &[u8]) -> Vec<u8> {
    let packet = ipv6_packet(src, dst, proto, hops, l4);
    ethernet(
        GUEST_MAC,
        dst_mac6_for(dst),
        EthernetProtocol::Ipv6,
        &packet,
    )
}

fn dst_mac_for(dst: Ipv4Addr) -> EthernetAddress {
    if dst.is_broadcast() {
        EthernetAddress::BROADCAST
    } else {
        net().gateway_mac()
    }
}

fn dst_mac6_for(dst: Ipv6Addr) -> EthernetAddress {
    if dst.is_multicast() {
        ALL_NODES_MAC
    } else {
        net().gateway_mac()
    }
}

/// An ICMPv6 message's bytes, checksum right for `src` and `dst`.
pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, repr: Icmpv6Repr<'_>) -> Vec<u8> {
    let mut l4 = vec![0u8; repr.buffer_len()];
    repr.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
        &Default::default(),
    );
    l4
}

/// A neighbour discovery message's ICMPv6 bytes.
pub fn ndisc(src: Ipv6Addr, dst: Ipv6Addr, repr: NdiscRepr<'_>) -> Vec<u8> {
    icmpv6(src, dst, Icmpv6Repr::Ndisc(repr))
}

/// A neighbour discovery message in a frame (hop limit 255, as on a link).
pub fn ndisc_frame(src: Ipv6Addr, dst: Ipv6Addr, repr: NdiscRepr<'_>) -> Vec<u8> {
    ipv6_frame(src, dst, IpProtocol::Icmpv6, 255, &ndisc(src, dst, repr))
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

/// TCP options as smoltcp and Linux put them in a SYN, for [`Segment::options`]: maximum
/// segment size, window scale, SACK permitted (in that order, padded by the segment).
pub fn syn_options(mss: Option<u16>, window_scale: Option<u8>, sack_permitted: bool) -> Vec<u8> {
    let mut options = Vec::new();
    if let Some(mss) = mss {
        options.extend_from_slice(&[2, 4]);
        options.extend_from_slice(&mss.to_be_bytes());
    }
    if let Some(shift) = window_scale {
        options.extend_from_slice(&[3, 3, shift]);
    }
    if sack_permitted {
        options.extend_from_slice(&[4, 2]);
    }
    options
}

/// One TCP segment, any flags, raw options (padded to a multiple of 4, at most 40 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    /// The acknowledgment number field (meaningful with [`flags::ACK`]).
    pub ack: u32,
    /// [`flags`] bits.
    pub flags: u8,
    pub window: u16,
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl Segment<'_> {
    /// The TCP header and payload, checksum right for `src` and `dst`.
    pub fn l4(&self) -> Vec<u8> {
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
        l4
    }

    /// The segment in an IP packet (see [`ip_packet`]).
    pub fn ip_packet(&self) -> Vec<u8> {
        ip_packet(self.src.ip(), self.dst.ip(), IpProtocol::Tcp, &self.l4())
    }

    /// The segment in a frame from the guest's MAC (see [`ip_frame`]).
    pub fn frame(&self) -> Vec<u8> {
        ip_frame(self.src.ip(), self.dst.ip(), IpProtocol::Tcp, &self.l4())
    }
}

/// An ICMP (or ICMPv6) echo request from the guest.
pub fn echo_frame(src: IpAddr, dst: IpAddr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let data = &data[..data.len().min(65535 - IPV4_LEN - 8)];
    let (proto, l4) = match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            (IpProtocol::Icmpv6, icmpv6(s, d, repr))
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
            (IpProtocol::Icmp, l4)
        }
    };
    ip_frame(src, dst, proto, &l4)
}

/// An ARP message on the link: requests are broadcast, the rest go to the gateway.
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

/// The vnet header a Linux guest's kernel writes before `frame` on a TAP with offloads: the
/// checksum of TCP and UDP left to the receiver, and a TCP segment with more than `gso_size`
/// bytes of payload marked as a super-segment of that many per segment.
pub fn guest_vnet_header(frame: &[u8], gso_size: u16) -> crate::stack::vnet::VnetHeader {
    use crate::stack::vnet::{self, VnetHeader};
    let Some(t) = vnet::transport(frame) else {
        return VnetHeader::default();
    };
    let csum_offset = match t.proto {
        IpProtocol::Tcp => 16,
        IpProtocol::Udp => 6,
        _ => return VnetHeader::default(),
    };
    let mut header = VnetHeader {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: t.offset as u16,
        csum_offset,
        ..VnetHeader::default()
    };
    if t.proto == IpProtocol::Tcp
        && let Ok(tcp) = TcpPacket::new_checked(&frame[t.offset..t.offset + t.len])
    {
        let headers = t.offset + usize::from(tcp.header_len());
        let payload = t.offset + t.len - headers;
        if gso_size > 0 && payload > usize::from(gso_size) {
            header.gso_type = if t.v6 {
                vnet::GSO_TCPV6
            } else {
                vnet::GSO_TCPV4
            };
            header.gso_size = gso_size;
            header.hdr_len = headers as u16;
        }
    }
    header
}

/// One read from a TAP whose vnet header is `header_len` bytes: `header`, then `frame`.
pub fn vnet_read(
    header: crate::stack::vnet::VnetHeader,
    header_len: usize,
    frame: &[u8],
) -> Vec<u8> {
    let mut read = vec![0u8; header_len];
    header.emit(&mut read);
    read.extend_from_slice(frame);
    read
}

/// What the guest kernel does with a frame whose vnet header says `NEEDS_CSUM`: sum from
/// `csum_start` to the end and store the complement at `csum_offset`. Nothing otherwise.
pub fn complete_vnet_checksum(frame: &mut [u8], header: &crate::stack::vnet::VnetHeader) {
    if header.flags & crate::stack::vnet::F_NEEDS_CSUM == 0 {
        return;
    }
    let start = usize::from(header.csum_start);
    let at = start + usize::from(header.csum_offset);
    if at + 2 > frame.len() {
        return;
    }
    let sum = !smoltcp::wire::checksum::data(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};

    /// The raw options of a SYN come out as smoltcp's own `TcpRepr` writes them, so tests
    /// that used to build SYNs with `TcpRepr` see the same bytes.
    #[test]
    fn syn_options_match_smoltcps_encoding() {
        let (src, dst): (SocketAddr, SocketAddr) = (
            "10.0.2.100:40000".parse().unwrap(),
            "10.0.2.2:80".parse().unwrap(),
        );
        let repr = TcpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(5000),
            ack_number: None,
            window_len: 64000,
            window_scale: Some(7),
            max_seg_size: Some(1460),
            sack_permitted: true,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let mut theirs = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut TcpPacket::new_unchecked(&mut theirs[..]),
            &IpAddress::from(src.ip()),
            &IpAddress::from(dst.ip()),
            &ChecksumCapabilities::default(),
        );
        let ours = Segment {
            src,
            dst,
            seq: 5000,
            ack: 0,
            flags: flags::SYN,
            window: 64000,
            options: &syn_options(Some(1460), Some(7), true),
            payload: &[],
        }
        .l4();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn oversized_inputs_are_clipped_not_a_panic() {
        let big = vec![0u8; 70_000];
        let a: SocketAddr = "[fd00::100]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:2".parse().unwrap();
        for frame in [
            udp_frame(a, b, &big),
            echo_frame(a.ip(), b.ip(), 1, 1, &big),
            ip_frame(b.ip(), a.ip(), IpProtocol::Tcp, &big),
        ] {
            assert!(frame.len() <= ETH_LEN + IPV6_LEN + 65535);
        }
    }
}

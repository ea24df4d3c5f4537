//! The virtio-net header in front of every frame on a TAP opened with offloads (see
//! [`crate::tap`]), and what offloads change in the TCP segments that cross it.
//!
//! Guest → us: [`accept`] checks the header the guest kernel wrote and returns the frame
//! behind it. With offloads the guest hands over TCP super-segments (`gso_type` TCPV4/TCPV6,
//! up to 64 KiB whatever the MTU) and leaves their checksum to the receiver (`NEEDS_CSUM`);
//! a `UDP_SEGMENT` send arrives as one UDP super-datagram (`GSO_UDP_L4`), which the UDP relay
//! splits at `gso_size` ([`udp_segment_size`]).
//! Both are fine as they are: smoltcp takes a segment larger than the MSS as long as it fits
//! the window, and usernet never verifies a TCP or UDP payload checksum from the guest (the
//! payload goes to a host socket, whose kernel checksums what it sends; a guest that corrupts
//! its own data only hurts itself, as with passt). What is checked is that the header tells
//! the truth about the frame (a GSO type that matches the packet, sizes and checksum
//! positions inside it): the TAP's writer is the guest kernel, but a header that lies is
//! dropped and counted, never acted on.
//!
//! Us → guest: [`offload_tcp`] turns a TCP segment smoltcp built (checksum field zero) into
//! one the guest kernel finishes: the pseudo-header sum in the checksum field, `NEEDS_CSUM`,
//! and for a segment longer than the guest's MSS, `gso_type`/`gso_size` so the kernel treats
//! it as that many segments already received. smoltcp is made to build such segments by
//! raising the MSS it believes the guest offered ([`rewrite_mss`] on the guest's SYN) while
//! its device reports a 64 KiB MTU; the real MSS sizes `gso_size`, and our own SYN's MSS is
//! put back to the link's. This works the same for IPv4 and IPv6, where smoltcp 0.14's own
//! `segmentation-offload` covers IPv4 only.
//!
//! Pure functions over byte slices, for unit tests and the `frame` fuzz target.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, checksum,
};

/// The header fields usernet reads and writes (`struct virtio_net_hdr`, 10 bytes); a longer
/// header has more after them, which we write as zeroes and ignore.
pub const HEADER_LEN: usize = 10;

/// `flags`: the checksum at `csum_start + csum_offset` is to be completed by the receiver.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// UDP segmentation (USO): the payload is datagrams of `gso_size` bytes, the last shorter.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the super-segment carries ECN's CWR.
pub const GSO_ECN: u8 = 0x80;

const ETH_LEN: usize = 14;
/// Where the checksum field is in a TCP header.
const TCP_CSUM_OFFSET: u16 = 16;
/// Where the checksum field is in a UDP header.
const UDP_CSUM_OFFSET: u16 = 6;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;

/// A `virtio_net_hdr`, little-endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (Ethernet to TCP) of a super-segment.
    pub hdr_len: u16,
    /// Payload bytes per segment of a super-segment.
    pub gso_size: u16,
    /// Where the checksummed data starts (from the Ethernet header).
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// The header at the start of `bytes`, if there are enough of them.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HEADER_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Write the header over all of `out` (the TAP's header length): its fields, then zeroes.
    pub fn emit(&self, out: &mut [u8]) {
        out.fill(0);
        let Some(b) = out.get_mut(..HEADER_LEN) else {
            return;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// How a guest's vnet header lied (see [`accept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    #[error("shorter than the vnet header")]
    Short,
    #[error("unknown flags")]
    Flags,
    #[error("a GSO type we never offered")]
    GsoType,
    #[error("the GSO type does not match the packet")]
    GsoMismatch,
    #[error("gso_size is 0")]
    GsoSizeZero,
    #[error("gso_size is larger than the frame")]
    GsoSizeTooLarge,
    #[error("hdr_len is past the end of the frame")]
    HdrLen,
    #[error("hdr_len of a super-segment does not cover its headers")]
    HdrLenShort,
    #[error("the checksum position is past the end of the frame")]
    CsumPastEnd,
    #[error("the checksum position is not the packet's TCP or UDP checksum")]
    CsumPlace,
}

/// Where the transport header of an IPv4 or IPv6 packet in an Ethernet frame is (no IPv6
/// extension headers: the classifier drops those anyway).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transport {
    pub v6: bool,
    pub proto: IpProtocol,
    /// From the start of the Ethernet frame.
    pub offset: usize,
    /// Transport header and payload, as the IP header counts them.
    pub len: usize,
}

pub(crate) fn transport(frame: &[u8]) -> Option<Transport> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = frame.get(ETH_LEN..)?;
    let (v6, proto, header, total) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            let header = usize::from(p.header_len());
            (false, p.next_header(), header, usize::from(p.total_len()))
        }
        EthernetProtocol::Ipv6 => {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            (true, p.next_header(), p.header_len(), p.total_len())
        }
        _ => return None,
    };
    let len = total.checked_sub(header)?;
    Some(Transport {
        v6,
        proto,
        offset: ETH_LEN + header,
        len,
    })
}

/// Check the vnet header at the start of `read` (one read from a TAP whose header is
/// `header_len` bytes) against the frame after it; the frame and the header, or why the
/// header lies. Only what is checked here is ever acted on (nothing, so far, but that the
/// frame is as the header says).
pub fn accept(read: &[u8], header_len: usize) -> Result<(&[u8], VnetHeader), VnetError> {
    let header = VnetHeader::parse(read).ok_or(VnetError::Short)?;
    let frame = read.get(header_len..).ok_or(VnetError::Short)?;
    if header.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(VnetError::Flags);
    }
    if usize::from(header.hdr_len) > frame.len() {
        return Err(VnetError::HdrLen);
    }
    let l4 = transport(frame);
    if header.flags & F_NEEDS_CSUM != 0 {
        let end = usize::from(header.csum_start) + usize::from(header.csum_offset) + 2;
        if end > frame.len() {
            return Err(VnetError::CsumPastEnd);
        }
        let expected = match l4 {
            Some(t) if t.proto == IpProtocol::Tcp => Some((t.offset, TCP_CSUM_OFFSET)),
            Some(t) if t.proto == IpProtocol::Udp => Some((t.offset, UDP_CSUM_OFFSET)),
            _ => None,
        };
        if let Some((start, offset)) = expected
            && (usize::from(header.csum_start) != start || header.csum_offset != offset)
        {
            return Err(VnetError::CsumPlace);
        }
    }
    match header.gso_type & !GSO_ECN {
        GSO_NONE => {}
        kind @ (GSO_TCPV4 | GSO_TCPV6) => {
            let headers = l4
                .filter(|t| t.proto == IpProtocol::Tcp && t.v6 == (kind == GSO_TCPV6))
                .and_then(|t| Some((t.offset, frame.get(t.offset..t.offset + t.len)?)))
                .and_then(|(offset, tcp)| {
                    let tcp = TcpPacket::new_checked(tcp).ok()?;
                    Some(offset + usize::from(tcp.header_len()))
                });
            let Some(headers) = headers else {
                return Err(VnetError::GsoMismatch);
            };
            check_hdr_len(&header, headers)?;
            check_gso_size(&header, frame)?;
        }
        GSO_UDP_L4 => {
            let Some(t) = l4.filter(|t| t.proto == IpProtocol::Udp) else {
                return Err(VnetError::GsoMismatch);
            };
            check_hdr_len(&header, t.offset + UDP_HEADER_LEN)?;
            check_gso_size(&header, frame)?;
        }
        _ => return Err(VnetError::GsoType),
    }
    Ok((frame, header))
}

/// A super-segment's `hdr_len` covers at least its headers (`headers` bytes, Ethernet to
/// TCP or UDP): the kernel sets it to the linear part of the packet, which always holds them.
fn check_hdr_len(header: &VnetHeader, headers: usize) -> Result<(), VnetError> {
    if usize::from(header.hdr_len) < headers {
        return Err(VnetError::HdrLenShort);
    }
    Ok(())
}

fn check_gso_size(header: &VnetHeader, frame: &[u8]) -> Result<(), VnetError> {
    if header.gso_size == 0 {
        return Err(VnetError::GsoSizeZero);
    }
    if usize::from(header.gso_size) > frame.len() {
        return Err(VnetError::GsoSizeTooLarge);
    }
    Ok(())
}

/// The size of the datagrams a guest's UDP super-datagram with this (accepted) header is made
/// of, if it is one.
pub fn udp_segment_size(header: &VnetHeader) -> Option<usize> {
    (header.gso_type & !GSO_ECN == GSO_UDP_L4).then_some(usize::from(header.gso_size))
}

/// Make the TCP segment in `frame` (an Ethernet frame smoltcp filled, TCP checksum zero) one
/// the guest kernel completes: the pseudo-header sum in the checksum field and a header that
/// says so; if it carries more than one segment's worth for a guest whose MSS is `guest_mss`
/// on a link of `link_mtu`, a GSO header that has the kernel treat it as segments of that
/// size. Anything but a TCP segment gets an empty header (and must carry its own checksum).
pub fn offload_tcp(frame: &mut [u8], guest_mss: u16, link_mtu: usize) -> VnetHeader {
    let Some(t) = transport(frame).filter(|t| t.proto == IpProtocol::Tcp) else {
        return VnetHeader::default();
    };
    let ip = &frame[ETH_LEN..];
    let pseudo = if t.v6 {
        let Ok(p) = Ipv6Packet::new_checked(ip) else {
            return VnetHeader::default();
        };
        checksum::pseudo_header_v6(&p.src_addr(), &p.dst_addr(), IpProtocol::Tcp, t.len as u32)
    } else {
        let Ok(p) = Ipv4Packet::new_checked(ip) else {
            return VnetHeader::default();
        };
        checksum::pseudo_header_v4(&p.src_addr(), &p.dst_addr(), IpProtocol::Tcp, t.len as u32)
    };
    let Some(tcp) = frame.get_mut(t.offset..t.offset + t.len) else {
        return VnetHeader::default();
    };
    let Ok(mut packet) = TcpPacket::new_checked(tcp) else {
        return VnetHeader::default();
    };
    packet.set_checksum(pseudo);
    let tcp_header = usize::from(packet.header_len());
    let payload = t.len - tcp_header;
    let mut header = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len: (t.offset + tcp_header) as u16,
        gso_size: 0,
        csum_start: t.offset as u16,
        csum_offset: TCP_CSUM_OFFSET,
    };
    // The MSS excludes options; a segment's payload is the MSS less this one's options.
    let link_mss = link_mtu.saturating_sub(t.offset - ETH_LEN + TCP_HEADER_LEN);
    let segment = usize::from(guest_mss)
        .min(link_mss)
        .saturating_sub(tcp_header - TCP_HEADER_LEN)
        .max(1);
    if payload > segment {
        header.gso_type = if t.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        header.gso_size = segment as u16;
    }
    header
}

/// Set the MSS options of the TCP header at the start of `tcp` to `mss`; the value the last
/// one had (the one smoltcp's parser goes by), or None if there is none (or the options stop
/// parsing before one). The checksum is left as it was: the segments this is used on are
/// either not verified (the guest's SYN, on its way into smoltcp) or checksummed after (ours,
/// by [`offload_tcp`]).
pub fn rewrite_mss(tcp: &mut [u8], mss: u16) -> Option<u16> {
    let header_len = TcpPacket::new_checked(&*tcp).ok()?.header_len();
    let options = tcp.get_mut(TCP_HEADER_LEN..usize::from(header_len))?;
    let mut old = None;
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = options.get(i + 1) else {
                    break;
                };
                let len = usize::from(len);
                if len < 2 || i + len > options.len() {
                    break;
                }
                if kind == 2 && len == 4 {
                    old = Some(u16::from_be_bytes([options[i + 2], options[i + 3]]));
                    options[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                }
                i += len;
            }
        }
    }
    old
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use smoltcp::wire::IpAddress;

    use super::*;
    use crate::testkit::{
        Segment, complete_vnet_checksum, flags, guest_vnet_header, ip_frame, syn_options,
        udp_frame, vnet_read,
    };

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
    const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
    const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    fn tcp_frame(src: IpAddr, dst: IpAddr, payload: &[u8], options: Vec<u8>) -> Vec<u8> {
        Segment {
            src: SocketAddr::new(src, 40000),
            dst: SocketAddr::new(dst, 80),
            seq: 1000,
            ack: 2000,
            flags: flags::ACK | flags::PSH,
            window: 1000,
            options: &options,
            payload,
        }
        .frame()
    }

    #[test]
    fn header_round_trips_little_endian_with_zeroes_after() {
        let h = VnetHeader {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x4a,
            gso_size: 0x05a8,
            csum_start: 0x36,
            csum_offset: 0x10,
        };
        let mut out = [0xffu8; 12];
        h.emit(&mut out);
        assert_eq!(out, [1, 4, 0x4a, 0, 0xa8, 5, 0x36, 0, 0x10, 0, 0, 0]);
        assert_eq!(VnetHeader::parse(&out), Some(h));
        assert_eq!(VnetHeader::parse(&out[..9]), None);
    }

    #[test]
    fn honest_super_segments_and_plain_frames_are_accepted_as_they_are() {
        let data = vec![7u8; 60_000];
        for (src, dst) in [(GUEST.into(), HOST.into()), (GUEST6.into(), HOST6.into())] {
            let frame = tcp_frame(src, dst, &data, vec![]);
            for len in [10, 12] {
                let bytes = vnet_read(guest_vnet_header(&frame, 1448), len, &frame);
                let (got, header) = accept(&bytes, len).unwrap();
                assert_eq!(got, &frame[..]);
                assert_eq!(header.gso_size, 1448);
                // With ECN's CWR bit too.
                let mut h = guest_vnet_header(&frame, 1448);
                h.gso_type |= GSO_ECN;
                assert!(accept(&vnet_read(h, len, &frame), len).is_ok());
            }
            let plain = vnet_read(VnetHeader::default(), 10, &frame);
            assert_eq!(accept(&plain, 10).unwrap().0, &frame[..]);
        }
        // A UDP datagram with its checksum left to us; anything at all without flags.
        let udp = udp_frame(
            SocketAddr::new(GUEST.into(), 5000),
            SocketAddr::new(HOST.into(), 53),
            b"query",
        );
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        assert!(accept(&vnet_read(h, 10, &udp), 10).is_ok());
        assert_eq!(udp_segment_size(&h), None);
        assert!(accept(&vnet_read(VnetHeader::default(), 10, b"junk"), 10).is_ok());
        // Three datagrams' worth from one UDP_SEGMENT send.
        let udp = udp_frame(
            SocketAddr::new(GUEST6.into(), 5000),
            SocketAddr::new(HOST6.into(), 7),
            &[3u8; 3000],
        );
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 62,
            gso_size: 1200,
            csum_start: 54,
            csum_offset: 6,
        };
        let (_, header) = accept(&vnet_read(h, 10, &udp), 10).unwrap();
        assert_eq!(udp_segment_size(&header), Some(1200));
    }

    #[test]
    fn lying_headers_are_refused() {
        let frame = tcp_frame(GUEST.into(), HOST.into(), &[1u8; 5000], vec![]);
        let frame6 = tcp_frame(GUEST6.into(), HOST6.into(), &[1u8; 5000], vec![]);
        let udp = udp_frame(
            SocketAddr::new(GUEST.into(), 5000),
            SocketAddr::new(HOST.into(), 53),
            &[2u8; 5000],
        );
        let good = guest_vnet_header(&frame, 1448);
        let cases: Vec<(&str, VnetHeader, &[u8], VnetError)> = vec![
            (
                "gso_size 0",
                VnetHeader {
                    gso_size: 0,
                    ..good
                },
                &frame,
                VnetError::GsoSizeZero,
            ),
            (
                "gso_size past the frame",
                VnetHeader {
                    gso_size: frame.len() as u16 + 1,
                    ..good
                },
                &frame,
                VnetError::GsoSizeTooLarge,
            ),
            (
                "csum_start past the end",
                VnetHeader {
                    csum_start: frame.len() as u16,
                    ..good
                },
                &frame,
                VnetError::CsumPastEnd,
            ),
            (
                "csum_offset past the end",
                VnetHeader {
                    csum_offset: 0xfff0,
                    ..good
                },
                &frame,
                VnetError::CsumPastEnd,
            ),
            (
                "checksum not where TCP's is",
                VnetHeader {
                    csum_start: 20,
                    ..good
                },
                &frame,
                VnetError::CsumPlace,
            ),
            (
                "hdr_len past the end",
                VnetHeader {
                    hdr_len: frame.len() as u16 + 1,
                    ..good
                },
                &frame,
                VnetError::HdrLen,
            ),
            (
                "hdr_len short of the headers",
                VnetHeader {
                    hdr_len: 20,
                    ..good
                },
                &frame,
                VnetError::HdrLenShort,
            ),
            (
                "TCPV4 on an IPv6 packet",
                VnetHeader {
                    gso_type: GSO_TCPV4,
                    csum_start: 54,
                    ..good
                },
                &frame6,
                VnetError::GsoMismatch,
            ),
            (
                "TCPV6 on an IPv4 packet",
                VnetHeader {
                    gso_type: GSO_TCPV6,
                    ..good
                },
                &frame,
                VnetError::GsoMismatch,
            ),
            (
                "TCPV4 on UDP",
                VnetHeader { flags: 0, ..good },
                &udp,
                VnetError::GsoMismatch,
            ),
            (
                "UDP fragmentation offload, never offered",
                VnetHeader {
                    gso_type: 3,
                    ..good
                },
                &frame,
                VnetError::GsoType,
            ),
            (
                "UDP segmentation on TCP",
                VnetHeader {
                    gso_type: GSO_UDP_L4,
                    ..good
                },
                &frame,
                VnetError::GsoMismatch,
            ),
            (
                "UDP segmentation of size 0",
                VnetHeader {
                    flags: F_NEEDS_CSUM,
                    gso_type: GSO_UDP_L4,
                    hdr_len: 42,
                    gso_size: 0,
                    csum_start: 34,
                    csum_offset: 6,
                },
                &udp,
                VnetError::GsoSizeZero,
            ),
            (
                "unknown flags",
                VnetHeader {
                    flags: 0x40,
                    ..good
                },
                &frame,
                VnetError::Flags,
            ),
        ];
        for (what, header, frame, error) in cases {
            assert_eq!(
                accept(&vnet_read(header, 10, frame), 10),
                Err(error),
                "{what}"
            );
        }
        assert_eq!(accept(&[0u8; 9], 10), Err(VnetError::Short));
        assert_eq!(accept(&[0u8; 11], 12), Err(VnetError::Short));
    }

    #[test]
    fn our_segments_get_the_pseudo_header_sum_and_gso_past_the_guests_mss() {
        let timestamps = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        for (src, dst, v6) in [
            (IpAddr::from(HOST), IpAddr::from(GUEST), false),
            (HOST6.into(), GUEST6.into(), true),
        ] {
            let (ip_len, link_mss) = if v6 { (40, 1440) } else { (20, 1460) };
            // 64 KiB-ish for a guest at MTU 1500 whose MSS is the link's: segments of the MSS
            // less the 12 bytes of timestamps.
            let mut frame = tcp_frame(src, dst, &[9u8; 60_000], timestamps.clone());
            let h = offload_tcp(&mut frame, link_mss, 1500);
            assert_eq!(h.flags, F_NEEDS_CSUM);
            assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!(h.gso_size, link_mss - 12);
            assert_eq!(usize::from(h.csum_start), 14 + ip_len);
            assert_eq!(h.hdr_len as usize, 14 + ip_len + 32);
            complete_vnet_checksum(&mut frame, &h);
            let t = transport(&frame).unwrap();
            let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
            let tcp = TcpPacket::new_checked(&frame[t.offset..]).unwrap();
            assert!(tcp.verify_checksum(&s, &d), "checksum completes right");
            // A guest MSS below the link's sizes the segments.
            let mut frame = tcp_frame(src, dst, &[9u8; 60_000], vec![]);
            assert_eq!(offload_tcp(&mut frame, 1000, 1500).gso_size, 1000);
            // One segment's worth: no GSO, still a partial checksum.
            let mut frame = tcp_frame(src, dst, &[9u8; 1000], vec![]);
            let h = offload_tcp(&mut frame, 1460, 1500);
            assert_eq!(
                (h.flags, h.gso_type, h.gso_size),
                (F_NEEDS_CSUM, GSO_NONE, 0)
            );
            complete_vnet_checksum(&mut frame, &h);
            let tcp = TcpPacket::new_checked(&frame[t.offset..]).unwrap();
            assert!(tcp.verify_checksum(&s, &d));
        }
        // Not TCP: nothing to offload.
        let mut udp = udp_frame(
            SocketAddr::new(HOST.into(), 53),
            SocketAddr::new(GUEST.into(), 5000),
            b"answer",
        );
        assert_eq!(offload_tcp(&mut udp, 1460, 1500), VnetHeader::default());
        let mut icmp = ip_frame(HOST.into(), GUEST.into(), IpProtocol::Icmp, &[8, 0, 0, 0]);
        assert_eq!(offload_tcp(&mut icmp, 1460, 1500), VnetHeader::default());
    }

    #[test]
    fn mss_option_is_found_among_others_and_rewritten() {
        let options = syn_options(Some(1460), Some(7), true);
        let mut frame = tcp_frame(GUEST.into(), HOST.into(), &[], options);
        let t = transport(&frame).unwrap();
        let tcp = &mut frame[t.offset..];
        assert_eq!(rewrite_mss(tcp, 65535), Some(1460));
        let summary = TcpPacket::new_checked(&*tcp)
            .unwrap()
            .options_summary()
            .unwrap();
        assert_eq!(summary.max_segment_size, Some(65535));
        assert_eq!(summary.window_scale, Some(7));
        let mut frame = tcp_frame(
            GUEST.into(),
            HOST.into(),
            &[],
            syn_options(None, Some(7), true),
        );
        assert_eq!(rewrite_mss(&mut frame[t.offset..], 65535), None);
        // Two MSS options: both raised, the last one's value (smoltcp's) reported.
        let two = vec![2, 4, 0, 100, 2, 4, 5, 0xb4];
        let mut frame = tcp_frame(GUEST.into(), HOST.into(), &[], two);
        assert_eq!(rewrite_mss(&mut frame[t.offset..], 65535), Some(1460));
        let tcp = TcpPacket::new_checked(&frame[t.offset..]).unwrap();
        assert_eq!(tcp.options(), [2, 4, 0xff, 0xff, 2, 4, 0xff, 0xff]);
        // An option whose length runs past the header.
        let mut frame = tcp_frame(GUEST.into(), HOST.into(), &[], vec![3, 40, 0, 0]);
        assert_eq!(rewrite_mss(&mut frame[t.offset..], 65535), None);
    }
}

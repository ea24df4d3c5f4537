//! `vnet`: one arbitrary read from a TAP with vnet headers (the header, then the frame),
//! through the offload code and into the whole stack.
//!
//! Input: byte 0 picks the header length (bit 0: 10 or 12 bytes) and the MTU (bits 1-2: 1500,
//! 576, 65520, 9000); the rest is the read. Each run:
//! - checks the read with `vnet::accept` (twice: it must be pure); an accepted read's frame is
//!   the bytes after the header, and a GSO header is only accepted on TCP of its family or,
//!   for UDP segmentation, on UDP (whose datagrams the stack then relays one by one);
//! - treats the frame as one of our own TCP segments: `offload_tcp` must give a header our
//!   own `accept` takes, whose checksum completes (as the guest kernel would) to a valid one,
//!   and whose GSO segments fit the link; `rewrite_mss` must find the MSS smoltcp's option
//!   parser finds and leave options that parse exactly when they did, with the new MSS;
//! - hands the read to a fresh stack on a vnet TAP, turns its loop so the simulated host can
//!   answer, and checks every frame it sends (an honest header, a valid checksum, within the
//!   MTU or GSO's limits), and that the bad-header counter moved exactly when `accept`
//!   refused.
//!
//! Runs only inside a throwaway network namespace (see `fuzz/run.sh`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, Ipv4Packet, Ipv6Packet};
use smoltcp::wire::{IpProtocol, TcpPacket};
use usernet::stack::vnet;
use usernet::tap::Framing;
use usernet_fuzz::harness::{Harness, small_config};
use usernet_fuzz::{guest, host, world};

/// The transport of a TCP segment in `frame`: (IPv6, TCP header offset, source, destination).
fn tcp_of(frame: &[u8]) -> Option<(bool, usize, IpAddress, IpAddress)> {
    let (proto, v6, offset, src, dst) = transport(frame)?;
    (proto == IpProtocol::Tcp).then_some((v6, offset, src, dst))
}

/// The transport of `frame`: (protocol, IPv6, its header offset, source, destination).
fn transport(frame: &[u8]) -> Option<(IpProtocol, bool, usize, IpAddress, IpAddress)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let (v6, proto, offset, src, dst) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(&frame[14..]).ok()?;
            let off = 14 + usize::from(ip.header_len());
            (
                false,
                ip.next_header(),
                off,
                ip.src_addr().into(),
                ip.dst_addr().into(),
            )
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(&frame[14..]).ok()?;
            (
                true,
                ip.next_header(),
                54,
                ip.src_addr().into(),
                ip.dst_addr().into(),
            )
        }
        _ => return None,
    };
    Some((proto, v6, offset, src, dst))
}

fuzz_target!(
    init: {
        world::enter();
        host::start();
    },
    |data: &[u8]| {
        let Some((&conf, read)) = data.split_first() else {
            return;
        };
        let header_len = if conf & 1 == 0 { 10 } else { 12 };
        let mtu = [1500u32, 576, 65520, 9000][usize::from((conf >> 1) & 3)];

        let verdict = vnet::accept(read, header_len);
        assert_eq!(verdict, vnet::accept(read, header_len), "accept is pure");
        if let Ok((frame, header)) = verdict {
            assert_eq!(frame, &read[header_len..]);
            let gso = header.gso_type & !vnet::GSO_ECN;
            if gso == vnet::GSO_UDP_L4 {
                assert_eq!(transport(frame).map(|t| t.0), Some(IpProtocol::Udp));
                assert_eq!(vnet::udp_segment_size(&header), Some(header.gso_size.into()));
            } else if gso != vnet::GSO_NONE {
                let (v6, ..) = tcp_of(frame).expect("TCP GSO accepted on something not TCP");
                let want = if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 };
                assert_eq!(gso, want);
            }
            if gso != vnet::GSO_NONE {
                assert!(header.gso_size > 0 && usize::from(header.gso_size) <= frame.len());
            }
        }

        // The frame as one of our own segments.
        if let Some(frame) = read.get(header_len..) {
            let mut ours = frame.to_vec();
            let guest_mss = u16::from_le_bytes([conf, read.first().copied().unwrap_or(0)]);
            let header = vnet::offload_tcp(&mut ours, guest_mss, mtu as usize);
            let mut out = vec![0u8; header_len];
            header.emit(&mut out);
            out.extend_from_slice(&ours);
            let (_, again) = vnet::accept(&out, header_len)
                .unwrap_or_else(|e| panic!("our own header lies: {e}: {header:?}"));
            assert_eq!(again, header);
            if let Some((_, offset, src, dst)) = tcp_of(&ours)
                && header.flags & vnet::F_NEEDS_CSUM != 0
            {
                guest::complete_vnet_checksum(&mut ours, &header);
                let tcp = TcpPacket::new_checked(&ours[offset..]).expect("TCP still parses");
                assert!(tcp.verify_checksum(&src, &dst), "our checksum does not complete");
                if header.gso_size > 0 {
                    let segment = usize::from(header.hdr_len) - 14 + usize::from(header.gso_size);
                    assert!(segment <= (mtu as usize).max(usize::from(header.hdr_len) - 14 + 1));
                }
            }
            let mut syn = frame.to_vec();
            if let Some((_, offset, ..)) = tcp_of(&syn) {
                let parsed = |b: &[u8]| {
                    TcpPacket::new_checked(b)
                        .ok()
                        .and_then(|t| t.options_summary().ok())
                };
                let before = parsed(&syn[offset..]);
                let old = vnet::rewrite_mss(&mut syn[offset..], 1400);
                let after = parsed(&syn[offset..]);
                assert_eq!(before.is_some(), after.is_some(), "options parse as before");
                if let (Some(before), Some(after)) = (before, after) {
                    assert_eq!(before.max_segment_size, old, "the MSS it said was there");
                    if old.is_some() {
                        assert_eq!(after.max_segment_size, Some(1400));
                    }
                }
            }
        }

        let mut h = Harness::with_framing(small_config(mtu), Framing::Vnet { header_len });
        h.inject_read(read);
        assert_eq!(
            h.stack.stats.drops_bad_vnet_header,
            u64::from(verdict.is_err()),
            "the bad-header counter and accept disagree"
        );
        h.answer_one_frame();
        h.check_bounds();
    }
);

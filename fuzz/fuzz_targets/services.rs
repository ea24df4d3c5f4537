//! `services`: the stack's own services, with valid Ethernet/IPv4/UDP headers built around the
//! fuzzed payloads (smoltcp `emit`) so the fuzzer spends its effort in the parsers behind the
//! classifier: the DHCP server (smoltcp's `DhcpRepr` and our option handling, leases, NAKs),
//! the DNS forwarder in both directions (guest queries, and hostile answers coming back from
//! the upstream resolvers: wrong ids, truncated headers, oversized answers, failover between
//! upstreams and timeouts), ARP, and IPv6 neighbour and router discovery.
//!
//! The upstream resolvers are two UDP sockets on 127.0.0.1 that this target owns; what they
//! answer comes from the input. The input is a sequence of records, each a kind byte (modulo
//! the number of kinds), a big-endian u16 length and that many bytes:
//!
//! | kind | record | what |
//! |---|---|---|
//! | 0 DHCP | flags, BOOTP message | to UDP 67 from 68; flags bits 0-1 the destination (255.255.255.255, the gateway, the subnet broadcast, the guest), bit 2 source 10.0.2.100 instead of 0.0.0.0, bit 3 another client's MAC |
//! | 1 DNS query | sport, DNS message | to 10.0.2.3:53 from 10.0.2.100:(5300+sport) |
//! | 2 DNS answer | flags, DNS message | an upstream answers the last query it got: bit 0 which upstream, bit 1 put that query's id in, bit 2 set the QR bit |
//! | 3 ARP | bytes | overwrite a valid ARP request for the gateway from the start, then send it |
//! | 4 clock | ms u16 | advance the clock by ms×10 ms, then turn (timeouts, failover, SERVFAIL) |
//! | 5 DNS query over IPv6 | sport, DNS message | to [fd00::3]:53 from [fd00::100]:(5300+sport) |
//! | 6 NDP | bytes | overwrite a valid router solicitation (or, if the first byte is 135, a neighbour solicitation for fd00::2) from its ICMPv6 header on, then send it; the checksum is left as the bytes say |
//!
//! Asserts no panic, bounded tables, and that every frame sent back parses and fits the MTU.
//! Runs only inside a throwaway network namespace (see `fuzz/run.sh`).

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{ArpOperation, EthernetAddress, EthernetProtocol, IpProtocol, NdiscRepr};
use usernet_fuzz::guest::{self, GUEST_MAC, OTHER_MAC};
use usernet_fuzz::harness::{Harness, small_config};
use usernet_fuzz::{Input, world};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const DNS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53));
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
const DNS6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
    53,
    0,
    0,
));

struct Upstream {
    socket: UdpSocket,
    /// The last query forwarded to it, and where from.
    last: Option<(Vec<u8>, SocketAddr)>,
}

fn upstreams() -> &'static [UdpSocket; 2] {
    static SOCKETS: OnceLock<[UdpSocket; 2]> = OnceLock::new();
    SOCKETS.get_or_init(|| {
        world::enter();
        [0, 1].map(|_| {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("upstream socket");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
    })
}

fuzz_target!(
    init: {
        world::enter();
        upstreams();
    },
    |data: &[u8]| {
        let sockets = upstreams();
        let mut ups: Vec<Upstream> = sockets
            .iter()
            .map(|s| {
                let socket = s.try_clone().expect("clone");
                let mut buf = [0u8; 2048];
                // Leftovers of the previous run.
                while socket.recv_from(&mut buf).is_ok() {}
                Upstream { socket, last: None }
            })
            .collect();
        let mut config = small_config(1500);
        config.dns_upstreams = ups
            .iter()
            .map(|u| u.socket.local_addr().expect("local addr"))
            .collect();
        let mut h = Harness::new(config);
        let mut input = Input::new(data);
        let mut records = 0;
        while !input.is_empty() && records < 256 {
            records += 1;
            let kind = input.u8() % 7;
            let mut record = Input::new(input.chunk());
            match kind {
                0 => dhcp(&mut h, &mut record),
                1 => {
                    let src = SocketAddr::from((GUEST, 5300 + u16::from(record.u8())));
                    h.inject(&guest::udp_frame(src, DNS, record.rest()));
                }
                5 => {
                    let src = SocketAddr::from((GUEST6, 5300 + u16::from(record.u8())));
                    h.inject(&guest::udp_frame(src, DNS6, record.rest()));
                }
                2 => {
                    let flags = record.u8();
                    let up = &mut ups[usize::from(flags & 1)];
                    let mut answer = record.rest().to_vec();
                    if let Some((query, from)) = &up.last {
                        if flags & 2 != 0 && answer.len() >= 2 && query.len() >= 2 {
                            answer[..2].copy_from_slice(&query[..2]);
                        }
                        if flags & 4 != 0 && answer.len() >= 3 {
                            answer[2] |= 0x80;
                        }
                        let _ = up.socket.send_to(&answer, from);
                    }
                    h.turns(2, Duration::ZERO);
                }
                3 => {
                    let mut frame = guest::arp_frame(
                        ArpOperation::Request,
                        GUEST_MAC,
                        GUEST,
                        Ipv4Addr::new(10, 0, 2, 2),
                    );
                    let body = record.rest();
                    let n = body.len().min(frame.len() - 14);
                    frame[14..14 + n].copy_from_slice(&body[..n]);
                    h.inject(&frame);
                }
                4 => {
                    let ms = u64::from(record.u16()) * 10;
                    h.stack.advance_clock(Duration::from_millis(ms));
                    h.turns(2, Duration::ZERO);
                }
                _ => ndp(&mut h, record.rest()),
            }
            // What the forwarder sent upstream.
            let mut buf = vec![0u8; 70_000];
            for up in &mut ups {
                while let Ok((n, from)) = up.socket.recv_from(&mut buf) {
                    up.last = Some((buf[..n].to_vec(), from));
                }
            }
            h.check_bounds();
        }
    }
);

fn dhcp(h: &mut Harness, record: &mut Input<'_>) {
    let flags = record.u8();
    let net = guest::net();
    let dst = match flags & 3 {
        0 => Ipv4Addr::BROADCAST,
        1 => net.gateway,
        2 => net.broadcast(),
        _ => GUEST,
    };
    let src = if flags & 4 != 0 {
        GUEST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let mac = if flags & 8 != 0 { OTHER_MAC } else { GUEST_MAC };
    let dst_mac = if dst == net.gateway {
        net.gateway_mac()
    } else {
        EthernetAddress::BROADCAST
    };
    let l4 = guest::udp(
        SocketAddr::from((src, 68)),
        SocketAddr::from((dst, 67)),
        record.rest(),
    );
    let frame = guest::ipv4_frame_from(mac, dst_mac, src, dst, IpProtocol::Udp, &l4);
    debug_assert_eq!(
        smoltcp::wire::EthernetFrame::new_checked(&frame[..])
            .map(|f| f.ethertype())
            .ok(),
        Some(EthernetProtocol::Ipv4)
    );
    h.inject(&frame);
}

/// A valid solicitation from the guest with its ICMPv6 part overwritten by `body`.
fn ndp(h: &mut Harness, body: &[u8]) {
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let repr = if body.first() == Some(&135) {
        NdiscRepr::NeighborSolicit {
            target_addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            lladdr: Some(GUEST_MAC.into()),
        }
    } else {
        NdiscRepr::RouterSolicit {
            lladdr: Some(GUEST_MAC.into()),
        }
    };
    let mut frame = guest::ndisc_frame(GUEST6, all_routers, repr);
    let start = 14 + 40;
    let n = body.len().min(frame.len() - start);
    frame[start..start + n].copy_from_slice(&body[..n]);
    h.inject(&frame);
}

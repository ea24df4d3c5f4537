//! `stateful`: a sequence of operations against one stack: guest frames, turns of the event
//! loop in which real host servers answer, clock steps that fire timers, and host-side
//! clients of port forwards. It reaches what one frame cannot: TCP connections carried through
//! their whole life (the harness acknowledges the stack's segments with the right numbers,
//! even though its initial sequence numbers are random), UDP and DNS entries that expire or
//! are evicted, pings answered by host ping sockets, forwards whose connections wait for the
//! guest's ARP answer, tables filled to their bounds.
//!
//! Input format (every byte sequence decodes; missing bytes read as zero):
//! - byte 0, the configuration: bits 0-1 the MTU (1500, 576, 65520, 9000), bit 2
//!   `--disable-host-loopback`, bit 3 `--disable-dns`, bit 4 IPv6: the guest's TCP, UDP and
//!   ping operations go to the IPv6 destinations (`TCP_DESTS6`...) from fd00::100, and the
//!   ARP operation becomes neighbour discovery (the stack has IPv6 either way); bit 5 a TAP
//!   with vnet headers (10 bytes, 12 with bit 6 set): the guest's frames get the header a
//!   Linux guest with offloads writes (TCP payloads above 1448 bytes as super-segments),
//!   except the raw operation's, whose bytes are the whole read, header included, so lying
//!   headers reach the stack; the stack's frames must carry honest headers and complete to
//!   valid checksums;
//! - then operations, each an opcode byte (modulo the number of operations) and its fields:
//!
//! | op | fields | what |
//! |---|---|---|
//! | 0 raw | len u16, bytes | any frame, as is (with vnet headers: any read, header first) |
//! | 1 tcp | flow u8, sport u8, flags u8, [optlen u8, options], window u16, len u16, payload | a segment with the guest's numbers for that flow. flow: bit 7 picks a connection the harness already knows (also ones the stack opened into the guest); else `TCP_DESTS[flow % len]` from port 40000+sport. flags: TCP flags (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32), bit 6 shifts seq by `sport` (out of window), bit 7 says options follow |
//! | 2 udp | dest u8, sport u8, len u16, payload | a datagram to `UDP_DESTS[dest % len]` from port 50000+sport |
//! | 3 ping | dest u8, ident u16, seq u16, len u16, data | an echo request to `PING_DESTS[dest % len]` |
//! | 4 arp | op u8, who u8 | ARP request/reply/other from the guest (or another or a bogus sender) about one of a few addresses; in IPv6 mode a neighbour solicitation (op bit 0 clear) or router solicitation (set) from the guest, the unspecified address or a bogus sender, about one of a few addresses |
//! | 5 turn | n u8 | 1 + n%4 turns of the loop, each after a pause of [0, 100, 300, 1000] µs (bits 2-3) that lets the host's servers answer (at most 5 ms of pauses per input) |
//! | 6 clock | ms u16 | advance the stack's clock by ms×10 ms, then turn |
//! | 7 forward | spec u8 | add a forward: bit 0 UDP, bits 1-2 slot (host port 47000+slot), bit 3 guest port 7 instead of 80, bit 4 a guest address that never answers ARP |
//! | 8 connect | slot u8, from u8 | a host client connects to that forward's port (from 127.0.0.1 or 198.18.0.1) |
//! | 9 client | index u8, len u16, payload | a client writes, and reads what came |
//! | 10 close | index u8, how u8 | a client closes: FIN, RST, or shutdown of its write side |
//! | 11 datagram | slot u8, from u8, len u16, payload | a host datagram to a UDP forward |
//! | 12 unforward | slot u8 | remove that forward |
//!
//! After every operation, every table must be within its bound and every frame the stack sent
//! must parse and fit the MTU. Runs only inside a throwaway network namespace (see
//! `fuzz/run.sh`).

#![no_main]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{ArpOperation, EthernetAddress, NdiscRepr};
use usernet::stack::hostfwd::{ForwardSpec, Proto};
use usernet::tap::Framing;
use usernet_fuzz::Input;
use usernet_fuzz::guest::{self, GUEST_MAC, OTHER_MAC, Segment, flags};
use usernet_fuzz::harness::{GUEST_ISN, GuestFlow, Harness, small_config};
use usernet_fuzz::host::{self, Client};
use usernet_fuzz::world::{self, REMOTE, REMOTE6};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// Nothing routes there in the fuzz namespace: connects fail with ENETUNREACH.
const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
/// Inside the virtual subnet, but nobody.
const NOBODY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 50);

const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const UNREACHABLE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);
const NOBODY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x50);
/// An IPv4-mapped address (never valid on a wire; an IPv6 socket would reach 127.0.0.1).
const MAPPED_LOOPBACK: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1);

const fn dest(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

const fn dest6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, 0, 0))
}

/// Where guest TCP connections go (the index is the `flow` field).
pub const TCP_DESTS: [SocketAddr; 14] = [
    dest(GATEWAY, host::PORT_ECHO),
    dest(GATEWAY, host::PORT_DISCARD),
    dest(GATEWAY, host::PORT_CHARGEN),
    dest(GATEWAY, host::PORT_DAYTIME),
    dest(GATEWAY, host::PORT_RESET),
    dest(GATEWAY, host::PORT_CLOSED),
    dest(DNS, 53),
    dest(DNS, 80),
    dest(REMOTE, host::PORT_ECHO),
    dest(REMOTE, host::PORT_CHARGEN),
    dest(UNREACHABLE, 80),
    dest(NOBODY, 80),
    dest(Ipv4Addr::LOCALHOST, host::PORT_ECHO),
    dest(GATEWAY, 47000),
];

/// The same in IPv6 mode, one for one.
pub const TCP_DESTS6: [SocketAddr; 14] = [
    dest6(GATEWAY6, host::PORT_ECHO),
    dest6(GATEWAY6, host::PORT_DISCARD),
    dest6(GATEWAY6, host::PORT_CHARGEN),
    dest6(ROUTER6, host::PORT_DAYTIME),
    dest6(GATEWAY6, host::PORT_RESET),
    dest6(GATEWAY6, host::PORT_CLOSED),
    dest6(DNS6, 53),
    dest6(DNS6, 80),
    dest6(REMOTE6, host::PORT_ECHO),
    dest6(REMOTE6, host::PORT_CHARGEN),
    dest6(UNREACHABLE6, 80),
    dest6(NOBODY6, 80),
    dest6(Ipv6Addr::LOCALHOST, host::PORT_ECHO),
    dest6(MAPPED_LOOPBACK, host::PORT_ECHO),
];

pub const UDP_DESTS: [SocketAddr; 10] = [
    dest(GATEWAY, host::PORT_ECHO),
    dest(GATEWAY, host::PORT_DISCARD),
    dest(DNS, 53),
    dest(DNS, 54),
    dest(GATEWAY, host::PORT_DNS),
    dest(REMOTE, host::PORT_ECHO),
    dest(UNREACHABLE, 53),
    dest(GATEWAY, host::PORT_CLOSED),
    dest(NOBODY, 7),
    dest(Ipv4Addr::BROADCAST, 7),
];

pub const UDP_DESTS6: [SocketAddr; 10] = [
    dest6(GATEWAY6, host::PORT_ECHO),
    dest6(ROUTER6, host::PORT_DISCARD),
    dest6(DNS6, 53),
    dest6(DNS6, 54),
    dest6(GATEWAY6, host::PORT_DNS),
    dest6(REMOTE6, host::PORT_ECHO),
    dest6(UNREACHABLE6, 53),
    dest6(GATEWAY6, host::PORT_CLOSED),
    dest6(NOBODY6, 7),
    dest6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 7),
];

pub const PING_DESTS: [IpAddr; 6] = [
    IpAddr::V4(GATEWAY),
    IpAddr::V4(DNS),
    IpAddr::V4(REMOTE),
    IpAddr::V4(UNREACHABLE),
    IpAddr::V4(NOBODY),
    IpAddr::V4(Ipv4Addr::LOCALHOST),
];

pub const PING_DESTS6: [IpAddr; 6] = [
    IpAddr::V6(GATEWAY6),
    IpAddr::V6(ROUTER6),
    IpAddr::V6(REMOTE6),
    IpAddr::V6(UNREACHABLE6),
    IpAddr::V6(NOBODY6),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

const FORWARD_PORT: u16 = 47000;
const MAX_CLIENTS: usize = 16;

/// Microseconds one input may spend pausing for the simulated host, in all its turns.
/// More buys little: replaying the corpus with 20 ms reaches the same coverage at 40% of the
/// speed.
const PAUSE_BUDGET_US: u64 = 5_000;

struct Run {
    h: Harness,
    /// IPv6 mode (configuration bit 4).
    ipv6: bool,
    paused_us: u64,
    forwards: [Option<i64>; 4],
    clients: Vec<Client>,
    udp_client: Option<[UdpSocket; 2]>,
}

fuzz_target!(
    init: {
        world::enter();
        host::start();
    },
    |data: &[u8]| {
        let mut input = Input::new(data);
        let conf = input.u8();
        let mtu = [1500, 576, 65520, 9000][usize::from(conf & 3)];
        let mut config = small_config(mtu);
        config.policy.disable_host_loopback = conf & 4 != 0;
        config.policy.disable_dns = conf & 8 != 0;
        let framing = match conf & 0x60 {
            0x20 => Framing::Vnet { header_len: 10 },
            0x60 => Framing::Vnet { header_len: 12 },
            _ => Framing::Plain,
        };
        let mut run = Run {
            h: Harness::with_framing(config, framing),
            ipv6: conf & 16 != 0,
            paused_us: 0,
            forwards: [None; 4],
            clients: Vec::new(),
            udp_client: None,
        };
        let mut ops = 0;
        while !input.is_empty() && ops < 4096 {
            ops += 1;
            run.op(&mut input);
            run.h.check_bounds();
        }
        run.h.turns(2, Duration::ZERO);
        run.h.check_bounds();
        if debug() {
            eprintln!("{} frames out; {}", run.h.frames_out, run.h.stack.summary());
        }
    }
);

/// `USERNET_FUZZ_DEBUG=1`: print the stack's counters after each input.
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("USERNET_FUZZ_DEBUG").is_some())
}

impl Run {
    fn op(&mut self, input: &mut Input<'_>) {
        match input.u8() % 13 {
            0 => {
                let read = input.chunk();
                self.h.inject_read(read);
            }
            1 => self.tcp(input),
            2 => {
                let dests = if self.ipv6 { &UDP_DESTS6 } else { &UDP_DESTS };
                let dst = dests[usize::from(input.u8()) % dests.len()];
                let src = SocketAddr::new(self.guest(), 50000 + u16::from(input.u8()));
                let payload = input.chunk();
                self.h.inject(&guest::udp_frame(src, dst, payload));
            }
            3 => {
                let dests = if self.ipv6 { &PING_DESTS6 } else { &PING_DESTS };
                let dst = dests[usize::from(input.u8()) % dests.len()];
                let (ident, seq) = (input.u16(), input.u16());
                let data = input.chunk();
                let frame = guest::echo_frame(self.guest(), dst, ident, seq, data);
                self.h.inject(&frame);
            }
            4 if self.ipv6 => self.ndp(input.u8(), input.u8()),
            4 => {
                let op = input.u8();
                let who = input.u8();
                let operation = match op % 3 {
                    0 => ArpOperation::Request,
                    1 => ArpOperation::Reply,
                    _ => ArpOperation::Unknown(u16::from(op)),
                };
                let (mac, sender) = match who & 3 {
                    0 => (GUEST_MAC, GUEST),
                    1 => (OTHER_MAC, Ipv4Addr::new(10, 0, 2, 101)),
                    2 => (EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]), GUEST),
                    _ => (GUEST_MAC, GATEWAY),
                };
                let target = [GATEWAY, DNS, GUEST, NOBODY][usize::from(who >> 2) & 3];
                self.h
                    .inject(&guest::arp_frame(operation, mac, sender, target));
            }
            5 => {
                let n = input.u8();
                let turns = 1 + u64::from(n & 3);
                let mut pause = [0, 100, 300, 1000][usize::from(n >> 2) & 3];
                if self.paused_us + turns * pause > PAUSE_BUDGET_US {
                    pause = 0;
                }
                self.paused_us += turns * pause;
                self.h.settle(turns as usize, Duration::from_micros(pause));
            }
            6 => {
                let ms = u64::from(input.u16()) * 10;
                self.h.stack.advance_clock(Duration::from_millis(ms));
                self.h.turns(1, Duration::ZERO);
            }
            7 => self.forward(input.u8()),
            8 => {
                let slot = usize::from(input.u8()) % self.forwards.len();
                let from = (input.u8() & 1 == 1).then_some(IpAddr::V4(REMOTE));
                if self.clients.len() < MAX_CLIENTS
                    && let Ok(c) = host::connect_from(
                        from,
                        dest(Ipv4Addr::LOCALHOST, FORWARD_PORT + slot as u16),
                    )
                {
                    self.clients.push(c);
                }
                self.h.turns(1, Duration::ZERO);
            }
            9 => {
                let i = usize::from(input.u8());
                let payload = input.chunk();
                if !self.clients.is_empty() {
                    let n = self.clients.len();
                    let c = &mut self.clients[i % n];
                    let _ = c.stream.write(payload);
                    let mut buf = [0u8; 4096];
                    while let Ok(1..) = c.stream.read(&mut buf) {}
                }
                self.h.turns(1, Duration::ZERO);
            }
            10 => {
                let i = usize::from(input.u8());
                let how = input.u8();
                if !self.clients.is_empty() {
                    let n = self.clients.len();
                    let c = self.clients.swap_remove(i % n);
                    match how % 3 {
                        0 => drop(c),
                        1 => {
                            let _ =
                                socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                            drop(c);
                        }
                        _ => {
                            let _ = c.stream.shutdown(std::net::Shutdown::Write);
                            self.clients.push(c);
                        }
                    }
                }
                self.h.turns(1, Duration::ZERO);
            }
            11 => {
                let slot = usize::from(input.u8()) % self.forwards.len();
                let from = usize::from(input.u8() & 1);
                let payload = input.chunk();
                let sockets = self.udp_client.get_or_insert_with(|| {
                    [Ipv4Addr::LOCALHOST, REMOTE].map(|ip| {
                        let s = UdpSocket::bind((ip, 0)).expect("UDP client");
                        s.set_nonblocking(true).expect("nonblocking");
                        s
                    })
                });
                let to = SocketAddr::from((Ipv4Addr::LOCALHOST, FORWARD_PORT + 100 + slot as u16));
                let _ = sockets[from].send_to(payload, to);
                self.h.turns(1, Duration::ZERO);
            }
            _ => {
                let slot = usize::from(input.u8()) % self.forwards.len();
                if let Some(id) = self.forwards[slot].take() {
                    assert!(self.h.stack.remove_forward(id));
                }
                self.h.turns(1, Duration::ZERO);
            }
        }
    }

    fn tcp(&mut self, input: &mut Input<'_>) {
        let which = input.u8();
        let sport = input.u8();
        let bits = input.u8();
        let options = if bits & 0x80 != 0 {
            let n = usize::from(input.u8()) % 41;
            input.bytes(n)
        } else {
            &[]
        };
        let window = input.u16();
        let payload = input.chunk();
        let known: Vec<_> = self.h.flows.keys().copied().collect();
        let key = if which & 0x80 != 0 && !known.is_empty() {
            known[usize::from(which & 0x7f) % known.len()]
        } else {
            let dests = if self.ipv6 { &TCP_DESTS6 } else { &TCP_DESTS };
            let dst = dests[usize::from(which) % dests.len()];
            (SocketAddr::new(self.guest(), 40000 + u16::from(sport)), dst)
        };
        let flow = self.h.flows.entry(key).or_insert(GuestFlow {
            snd_nxt: GUEST_ISN,
            rcv_nxt: 0,
            synced: false,
        });
        let tcp_flags = bits & 0x3f;
        let mut seq = flow.snd_nxt;
        if bits & 0x40 != 0 {
            seq = seq.wrapping_add(u32::from(sport) << 8);
        }
        let segment = Segment {
            src: key.0,
            dst: key.1,
            seq,
            ack: flow.rcv_nxt,
            flags: tcp_flags,
            window,
            options,
            payload,
        };
        let len = payload.len() as u32
            + u32::from(tcp_flags & flags::SYN != 0)
            + u32::from(tcp_flags & flags::FIN != 0);
        if bits & 0x40 == 0 {
            flow.snd_nxt = flow.snd_nxt.wrapping_add(len);
        }
        if tcp_flags & flags::RST != 0 {
            self.h.flows.remove(&key);
        }
        self.h.inject(&segment.frame());
    }

    /// The guest's address of the mode's family.
    fn guest(&self) -> IpAddr {
        if self.ipv6 {
            IpAddr::V6(GUEST6)
        } else {
            IpAddr::V4(GUEST)
        }
    }

    /// A neighbour or router solicitation, from the guest or a stranger, about one of a few
    /// addresses.
    fn ndp(&mut self, op: u8, who: u8) {
        let sender = match who & 3 {
            0 => GUEST6,
            1 => Ipv6Addr::UNSPECIFIED,
            2 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0x42, 0xaff, 0xfe00, 0x264),
            _ => GATEWAY6,
        };
        let lladdr = (who & 0x10 != 0).then(|| GUEST_MAC.into());
        let frame = if op & 1 == 0 {
            let target = [GATEWAY6, DNS6, ROUTER6, GUEST6][usize::from(who >> 2) & 3];
            let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
            guest::ndisc_frame(
                sender,
                dst,
                NdiscRepr::NeighborSolicit {
                    target_addr: target,
                    lladdr,
                },
            )
        } else {
            let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
            guest::ndisc_frame(sender, dst, NdiscRepr::RouterSolicit { lladdr })
        };
        self.h.inject(&frame);
    }

    fn forward(&mut self, spec: u8) {
        let slot = usize::from(spec >> 1) & 3;
        if self.forwards[slot].is_some() {
            return;
        }
        let udp = spec & 1 == 1;
        let guest_ip = if spec & 0x10 != 0 {
            Ipv4Addr::new(10, 0, 2, 77)
        } else {
            GUEST
        };
        let guest_port = if spec & 8 != 0 { 7 } else { 80 };
        let host_port = FORWARD_PORT + slot as u16 + if udp { 100 } else { 0 };
        let spec = ForwardSpec {
            proto: if udp { Proto::Udp } else { Proto::Tcp },
            host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, host_port),
            guest: SocketAddrV4::new(guest_ip, guest_port),
        };
        if let Ok(id) = self.h.stack.add_forward(spec) {
            self.forwards[slot] = Some(id);
        }
        self.h.drain();
    }
}

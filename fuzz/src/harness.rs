//! A [`Stack`] whose TAP is one end of a `socketpair(AF_UNIX, SOCK_SEQPACKET)`: the stack
//! reads and writes frames there with plain `read()`/`write()`, as on a real TAP; the harness
//! holds the other end, drains what the stack sends after every step and checks each frame
//! (it must parse, and be no bigger than the link allows). It also keeps what a guest would
//! know about each TCP connection (the next sequence numbers both ways), so the targets can
//! answer the stack's segments meaningfully even though its initial sequence numbers are
//! random.
//!
//! With [`Framing::Vnet`] the harness plays a guest kernel with offloads: every frame it sends
//! gets the vnet header Linux would write ([`guest::guest_vnet_header`]: checksums left to
//! the receiver, TCP payloads above [`GUEST_GSO_SIZE`] as super-segments), and every frame
//! the stack sends must carry an honest header (it passes the stack's own
//! [`vnet::accept`]); its checksum is completed as the kernel would before the frame is
//! checked, and a super-segment may exceed the MTU only as far as GSO allows.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, IpProtocol,
    Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};
use usernet::stack::vnet::{self, VnetHeader};
use usernet::stack::{Stack, StackConfig, TableSizes};
use usernet::tap::Framing;

use crate::guest;

/// The segment size of the harness's guest super-segments (a Linux guest's at MTU 1500 with
/// timestamps).
pub const GUEST_GSO_SIZE: u16 = 1448;

/// The guest's side of one TCP connection.
#[derive(Debug, Clone, Copy)]
pub struct GuestFlow {
    /// Next sequence number the guest sends.
    pub snd_nxt: u32,
    /// Next sequence number the guest expects from the stack (what it acknowledges).
    pub rcv_nxt: u32,
    /// Whether the stack's SYN has been seen (there is something to acknowledge).
    pub synced: bool,
}

/// Key of a guest flow: the guest's address and the remote address it talks to.
pub type FlowKey = (SocketAddr, SocketAddr);

/// The guest's initial sequence number for connections it opens or accepts.
pub const GUEST_ISN: u32 = 0x1000_0000;

pub struct Harness {
    pub stack: Stack,
    peer: OwnedFd,
    config: StackConfig,
    framing: Framing,
    buf: Vec<u8>,
    /// TCP connections, as the guest sees them.
    pub flows: BTreeMap<FlowKey, GuestFlow>,
    /// Frames the stack sent since the harness was made.
    pub frames_out: u64,
}

/// The stack configuration the targets use: small tables, so their bounds are reached, and
/// IPv6 on (fd00::/64), so its paths are reached too.
pub fn small_config(mtu: u32) -> StackConfig {
    let mut config = StackConfig::new(crate::guest::net(), mtu);
    config.tcp.rx_ring = 64 * 1024;
    config.tcp.tx_ring = 64 * 1024;
    config.tcp.max_flows = 8;
    config.tcp.max_pending_connects = 4;
    config.udp.max_entries = 8;
    config.dns_upstreams = crate::host::dns_upstreams();
    config.search_domains = vec!["fuzz.example".into()];
    config
}

impl Harness {
    /// A stack with `config`, in the fuzz namespace ([`crate::world::enter`] must have run).
    pub fn new(config: StackConfig) -> Self {
        Self::with_framing(config, Framing::Plain)
    }

    /// [`Harness::new`] on a TAP laid out as `framing`.
    pub fn with_framing(config: StackConfig, framing: Framing) -> Self {
        assert!(
            !config.dns_upstreams.is_empty()
                && config.dns_upstreams.iter().all(|a| a.ip().is_loopback()),
            "DNS upstreams must be on loopback, never the machine's resolver"
        );
        let (ours, peer) = usernet::testkit::tap_pair();
        let stack = Stack::with_framing(ours, config.clone(), framing).expect("Stack::new");
        Harness {
            stack,
            peer,
            config,
            framing,
            buf: vec![0u8; 70_000],
            flows: BTreeMap::new(),
            frames_out: 0,
        }
    }

    pub fn mtu(&self) -> usize {
        self.config.mtu as usize
    }

    /// Hand the stack a frame as if the guest sent it (with the header a guest kernel would
    /// write, on a TAP with vnet headers), then take what it answered.
    pub fn inject(&mut self, frame: &[u8]) {
        match self.framing {
            Framing::Plain => self.stack.inject_frame(frame),
            Framing::Vnet { header_len } => {
                let header = guest::guest_vnet_header(frame, GUEST_GSO_SIZE);
                self.stack
                    .inject_read(&guest::vnet_read(header, header_len, frame));
            }
        }
        self.drain();
    }

    /// Hand the stack one read from the TAP as it is (its vnet header, if any, included),
    /// then take what it answered.
    pub fn inject_read(&mut self, read: &[u8]) {
        self.stack.inject_read(read);
        self.drain();
    }

    /// Send a frame through the TAP (read by the stack on its next turn), with a guest's
    /// vnet header if the TAP has them.
    pub fn send(&mut self, frame: &[u8]) {
        let read = match self.framing {
            Framing::Plain => frame.to_vec(),
            Framing::Vnet { header_len } => {
                let header = guest::guest_vnet_header(frame, GUEST_GSO_SIZE);
                guest::vnet_read(header, header_len, frame)
            }
        };
        let _ = nix::unistd::write(self.peer.as_fd(), &read);
    }

    /// Run `n` turns of the event loop, each waiting at most `wait`, draining after each.
    pub fn turns(&mut self, n: usize, wait: Duration) {
        for _ in 0..n {
            self.stack.turn(wait).expect("turn");
            self.drain();
        }
    }

    /// Run `n` turns that do not wait in `epoll_wait` (whose timeouts are whole
    /// milliseconds), each after a `pause` that lets the simulated host's thread answer.
    pub fn settle(&mut self, n: usize, pause: Duration) {
        for _ in 0..n {
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
            self.stack.turn(Duration::ZERO).expect("turn");
            self.drain();
        }
    }

    /// After one injected frame: a turn of the loop, then let a host connect finish, an echo
    /// come back, a DNS answer arrive, waiting for the simulated host only when the frame
    /// gave it something to answer.
    pub fn answer_one_frame(&mut self) {
        self.turns(1, Duration::ZERO);
        for _ in 0..3 {
            let t = self.sizes();
            if t.tcp_flows + t.udp_flows + t.dns_queries + t.pings == 0 {
                break;
            }
            self.settle(1, Duration::from_micros(200));
        }
    }

    /// Read every frame the stack sent, check it, and note TCP sequence numbers.
    pub fn drain(&mut self) {
        loop {
            match nix::unistd::read(self.peer.as_fd(), &mut self.buf) {
                Ok(0) => return,
                Ok(n) => {
                    self.frames_out += 1;
                    let buf = std::mem::take(&mut self.buf);
                    match self.framing {
                        Framing::Plain => self.check_frame(&buf[..n], VnetHeader::default()),
                        Framing::Vnet { header_len } => {
                            let (frame, header) = vnet::accept(&buf[..n], header_len)
                                .unwrap_or_else(|e| panic!("the stack's vnet header lies: {e}"));
                            let mut frame = frame.to_vec();
                            guest::complete_vnet_checksum(&mut frame, &header);
                            self.check_frame(&frame, header);
                        }
                    }
                    self.buf = buf;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Check one frame the stack sent, which came with `header` (its checksum completed).
    fn check_frame(&mut self, frame: &[u8], header: VnetHeader) {
        let eth = EthernetFrame::new_checked(frame).expect("the stack sent a runt frame");
        if header.gso_type != vnet::GSO_NONE {
            // A super-segment: each of its segments must fit the link.
            let segment = usize::from(header.hdr_len) - 14 + usize::from(header.gso_size);
            assert!(
                segment <= self.mtu(),
                "the stack's super-segment splits into {segment}-byte packets at MTU {}: {header:?}",
                self.mtu()
            );
            assert!(
                usize::from(header.hdr_len) < frame.len(),
                "{header:?} on {} bytes",
                frame.len()
            );
        } else if frame.len() > 14 + self.mtu() {
            let what = match Ipv4Packet::new_checked(eth.payload()) {
                Ok(ip) if ip.version() == 4 => format!(
                    "{} {} -> {}",
                    ip.next_header(),
                    ip.src_addr(),
                    ip.dst_addr()
                ),
                _ => format!("{}", eth.ethertype()),
            };
            panic!(
                "the stack sent a {}-byte frame ({what}) on a link with MTU {}",
                frame.len(),
                self.mtu()
            );
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let arp = ArpPacket::new_checked(eth.payload()).expect("malformed ARP sent");
                ArpRepr::parse(&arp).expect("malformed ARP sent");
            }
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).expect("malformed IPv4 sent");
                let l4 = ip.payload();
                match ip.next_header() {
                    IpProtocol::Tcp => {
                        let tcp = TcpPacket::new_checked(l4).expect("malformed TCP sent");
                        let (src, dst) = (ip.src_addr(), ip.dst_addr());
                        if header.flags & vnet::F_NEEDS_CSUM != 0 {
                            assert!(
                                tcp.verify_checksum(&src.into(), &dst.into()),
                                "bad TCP checksum"
                            );
                        }
                        self.note_tcp(src.into(), dst.into(), &tcp);
                    }
                    IpProtocol::Udp => {
                        let udp = UdpPacket::new_checked(l4).expect("malformed UDP sent");
                        assert!(usize::from(udp.len()) <= l4.len());
                    }
                    IpProtocol::Icmp => {
                        Icmpv4Packet::new_checked(l4).expect("malformed ICMP sent");
                    }
                    other => panic!("the stack sent IP protocol {other}"),
                }
            }
            EthernetProtocol::Ipv6 => {
                let ip = Ipv6Packet::new_checked(eth.payload()).expect("malformed IPv6 sent");
                assert_eq!(ip.version(), 6);
                let (src, dst) = (ip.src_addr(), ip.dst_addr());
                let l4 = ip.payload();
                match ip.next_header() {
                    IpProtocol::Tcp => {
                        let tcp = TcpPacket::new_checked(l4).expect("malformed TCP sent");
                        assert!(
                            tcp.verify_checksum(&src.into(), &dst.into()),
                            "bad TCP checksum"
                        );
                        self.note_tcp(src.into(), dst.into(), &tcp);
                    }
                    IpProtocol::Udp => {
                        let udp = UdpPacket::new_checked(l4).expect("malformed UDP sent");
                        assert!(usize::from(udp.len()) <= l4.len());
                        assert!(
                            udp.verify_checksum(&src.into(), &dst.into()),
                            "bad UDP checksum"
                        );
                    }
                    IpProtocol::Icmpv6 => {
                        let icmp = Icmpv6Packet::new_checked(l4).expect("malformed ICMPv6 sent");
                        assert!(icmp.verify_checksum(&src, &dst), "bad ICMPv6 checksum");
                    }
                    other => panic!("the stack sent IPv6 next header {other}"),
                }
            }
            other => panic!("the stack sent ethertype {other}"),
        }
    }

    /// What the stack's segment tells the guest about its connection.
    fn note_tcp(&mut self, src: IpAddr, dst: IpAddr, tcp: &TcpPacket<&[u8]>) {
        let key = (
            SocketAddr::new(dst, tcp.dst_port()),
            SocketAddr::new(src, tcp.src_port()),
        );
        let seq = tcp.seq_number().0 as u32;
        let len = tcp.payload().len() as u32 + u32::from(tcp.syn()) + u32::from(tcp.fin());
        if tcp.rst() {
            self.flows.remove(&key);
            return;
        }
        if self.flows.len() >= 256 && !self.flows.contains_key(&key) {
            return;
        }
        let flow = self.flows.entry(key).or_insert(GuestFlow {
            snd_nxt: GUEST_ISN,
            rcv_nxt: seq,
            synced: false,
        });
        if tcp.syn() {
            flow.synced = true;
            flow.rcv_nxt = seq.wrapping_add(len);
        } else {
            let end = seq.wrapping_add(len);
            if !flow.synced || (end.wrapping_sub(flow.rcv_nxt) as i32) > 0 {
                flow.rcv_nxt = end;
                flow.synced = true;
            }
        }
    }

    /// Assert that no table grew past its bound.
    pub fn check_bounds(&self) {
        let t = self.stack.table_sizes();
        let c = &self.config;
        let ok = t.tcp_flows <= c.tcp.max_flows
            && t.udp_flows <= c.udp.max_entries
            && t.dns_queries <= usernet::stack::dns::MAX_QUERIES
            && t.pings <= usernet::stack::icmp::MAX_ENTRIES
            && t.neighbors <= usernet::stack::neigh::MAX_NEIGHBORS
            && t.forwards <= usernet::stack::hostfwd::MAX_FORWARDS
            && t.waiting <= usernet::stack::hostfwd::MAX_WAITING
            && t.tx_backlog <= 1024;
        assert!(ok, "a table outgrew its bound: {t:?}");
    }

    pub fn sizes(&self) -> TableSizes {
        self.stack.table_sizes()
    }
}

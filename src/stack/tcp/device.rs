//! The smoltcp `Device` each TCP flow's private `Interface` talks to.
//!
//! It is created on the stack for one call into smoltcp and borrows what it needs: at most one
//! received IP packet to hand in, and the shared [`TapWriter`] to write replies to. smoltcp works
//! on `Medium::Ip`; this device adds the Ethernet header on the way out, and hands each
//! segment to the flow's [`WindowGate`] before it leaves. It reports itself exhausted while
//! the TAP backlog is full, which is how flows are back-pressured.
//!
//! On a TAP with offloads ([`Link::offload`]) the device tells smoltcp its MTU is
//! [`OFFLOAD_MTU`] and that it computes no TCP checksum; the flow raised the MSS smoltcp
//! believes the guest offered (see [`vnet`]), so smoltcp sends segments of up to 64 KiB. On
//! the way out each gets its vnet header from [`vnet::offload_tcp`], sized by the guest's
//! real MSS (from its SYN, kept by the gate), and our SYN's MSS option is put back to what
//! the link allows, so the guest sees the same handshake as without offloads.
//!
//! For a flow whose host data stays in the host socket's queue ([`PeekedSend`]), the device
//! tells smoltcp it writes TCP payloads itself, and fills each segment's payload from the host
//! socket after smoltcp wrote the headers; a segment it cannot fill is not sent.

use std::os::fd::BorrowedFd;

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol, TcpPacket};

use super::direct::PeekedSend;
use super::gate::{self, WindowGate};
use crate::stack::tx::TapWriter;
use crate::stack::{Link, vnet};

const ETH_LEN: usize = 14;
/// The IP MTU smoltcp is told of with offloads: the largest `--mtu`, so segments are as
/// large as at MTU 65520, whatever the link's.
pub const OFFLOAD_MTU: usize = 65520;
/// The MSS a guest that sent none is assumed to take (RFC 9293, 3.7.1).
const DEFAULT_GUEST_MSS: u16 = 536;

pub struct FlowDevice<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut TapWriter,
    link: Link,
    guest_mac: EthernetAddress,
    gate: Option<&'a mut WindowGate>,
    peek: Option<(BorrowedFd<'a>, &'a mut PeekedSend)>,
    /// Tell smoltcp this device fills TCP payloads (smoltcp reads a device's capabilities
    /// once, when its interface is created, so this is decided per flow then).
    fills_payloads: bool,
}

impl<'a> FlowDevice<'a> {
    pub fn new(
        rx: Option<&'a [u8]>,
        tx: &'a mut TapWriter,
        link: Link,
        guest_mac: EthernetAddress,
        gate: Option<&'a mut WindowGate>,
    ) -> Self {
        FlowDevice {
            rx,
            tx,
            link,
            guest_mac,
            gate,
            peek: None,
            fills_payloads: false,
        }
    }

    /// For creating the interface of a flow whose host data will be peeked (see
    /// [`FlowDevice::with_peek`]).
    pub fn filling_payloads(mut self, yes: bool) -> Self {
        self.fills_payloads = yes && self.link.offload;
        self
    }

    /// Segments' payloads come from the host socket `fd` (offloads only: no checksum is
    /// computed over a payload smoltcp never sees).
    pub fn with_peek(mut self, fd: BorrowedFd<'a>, send: Option<&'a mut PeekedSend>) -> Self {
        if self.link.offload {
            self.peek = send.map(|send| (fd, send));
            self.fills_payloads = self.peek.is_some();
        }
        self
    }
}

impl Device for FlowDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.take()?;
        Some((
            RxToken { packet },
            TxToken {
                tx: self.tx,
                link: self.link,
                guest_mac: self.guest_mac,
                gate: self.gate.as_deref_mut(),
                peek: self.peek.as_mut().map(|(fd, send)| (*fd, &mut **send)),
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.is_blocked() {
            return None;
        }
        Some(TxToken {
            tx: self.tx,
            link: self.link,
            guest_mac: self.guest_mac,
            gate: self.gate.as_deref_mut(),
            peek: self.peek.as_mut().map(|(fd, send)| (*fd, &mut **send)),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        // Verify nothing on the way in: the classifier already checked the IPv4 header, and a
        // corrupt TCP checksum from a local guest only hurts the guest. Compute everything on
        // the way out, because a plain tap hands our frames to the guest kernel as-is; with
        // offloads the guest kernel completes the TCP checksum.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        if self.link.offload {
            caps.max_transmission_unit = OFFLOAD_MTU;
            checksum.tcp = Checksum::None;
            checksum.tcp_payload_by_device = self.fills_payloads;
        } else {
            caps.max_transmission_unit = self.link.mtu;
            checksum.tcp = Checksum::Tx;
        }
        caps.checksum = checksum;
        caps
    }
}

pub struct RxToken<'a> {
    packet: &'a [u8],
}

impl smoltcp::phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.packet)
    }
}

pub struct TxToken<'a> {
    tx: &'a mut TapWriter,
    link: Link,
    guest_mac: EthernetAddress,
    gate: Option<&'a mut WindowGate>,
    peek: Option<(BorrowedFd<'a>, &'a mut PeekedSend)>,
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let (link, guest_mac, gate, peek) = (self.link, self.guest_mac, self.gate, self.peek);
        self.tx.send_offloaded(ETH_LEN + len, |frame| {
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            eth.set_src_addr(link.our_mac);
            eth.set_dst_addr(guest_mac);
            let ip = &mut frame[ETH_LEN..];
            let f_result = f(ip);
            if let Some((fd, send)) = peek
                && !send.fill(fd, ip)
            {
                return (f_result, None);
            }
            let ipv6 = ip.first().is_some_and(|b| b >> 4 == 6);
            let mut guest_mss = None;
            if let Some(gate) = gate {
                gate.on_egress(ip);
                guest_mss = gate.guest_mss();
            }
            let proto = if ipv6 {
                EthernetProtocol::Ipv6
            } else {
                EthernetProtocol::Ipv4
            };
            EthernetFrame::new_unchecked(&mut frame[..]).set_ethertype(proto);
            if !link.offload {
                return (f_result, Some(vnet::VnetHeader::default()));
            }
            let ip_header = if ipv6 { 40 } else { 20 };
            let link_mss = link.mtu.saturating_sub(ip_header + 20);
            if let Some(tcp) = gate::tcp_of_mut(&mut frame[ETH_LEN..])
                && TcpPacket::new_checked(&*tcp).is_ok_and(|p| p.syn())
            {
                // Our SYN or SYN-ACK: the MSS of the link, not of OFFLOAD_MTU.
                vnet::rewrite_mss(tcp, u16::try_from(link_mss).unwrap_or(u16::MAX));
            }
            let mss = guest_mss.unwrap_or(DEFAULT_GUEST_MSS);
            (f_result, Some(vnet::offload_tcp(frame, mss, link.mtu)))
        })
    }
}

//! The smoltcp `Device` each TCP flow's private `Interface` talks to.
//!
//! It is created on the stack for one call into smoltcp and borrows what it needs: at most one
//! received IP packet to hand in, and the shared [`TapWriter`] to write replies to. smoltcp works
//! on `Medium::Ip`; this device adds the Ethernet header on the way out, and hands each
//! segment to the flow's [`WindowGate`] before it leaves. It reports itself exhausted while
//! the TAP backlog is full, which is how flows are back-pressured.

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, EthernetFrame, EthernetProtocol};

use super::gate::WindowGate;
use crate::stack::Link;
use crate::stack::tx::TapWriter;

const ETH_LEN: usize = 14;

pub struct FlowDevice<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut TapWriter,
    link: Link,
    guest_mac: EthernetAddress,
    gate: Option<&'a mut WindowGate>,
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
        }
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
                our_mac: self.link.our_mac,
                guest_mac: self.guest_mac,
                gate: self.gate.as_deref_mut(),
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.is_blocked() {
            return None;
        }
        Some(TxToken {
            tx: self.tx,
            our_mac: self.link.our_mac,
            guest_mac: self.guest_mac,
            gate: self.gate.as_deref_mut(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.link.mtu;
        // Verify nothing on the way in: the classifier already checked the IPv4 header, and a
        // corrupt TCP checksum from a local guest only hurts the guest. Compute everything on
        // the way out, because a plain tap hands our frames to the guest kernel as-is.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
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
    our_mac: EthernetAddress,
    guest_mac: EthernetAddress,
    gate: Option<&'a mut WindowGate>,
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let (our_mac, guest_mac, gate) = (self.our_mac, self.guest_mac, self.gate);
        self.tx.send(ETH_LEN + len, |frame| {
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            eth.set_src_addr(our_mac);
            eth.set_dst_addr(guest_mac);
            let ip = &mut frame[ETH_LEN..];
            let f_result = f(ip);
            if let Some(gate) = gate {
                gate.on_egress(ip);
            }
            let proto = if ip.first().is_some_and(|b| b >> 4 == 6) {
                EthernetProtocol::Ipv6
            } else {
                EthernetProtocol::Ipv4
            };
            EthernetFrame::new_unchecked(&mut frame[..]).set_ethertype(proto);
            f_result
        })
    }
}

//! The window gate: the receive window a flow advertises to the guest, limited by us rather
//! than by smoltcp alone.
//!
//! smoltcp 0.14 advertises its receive ring's free space and has no way to advertise less,
//! and its rings cannot be resized. To bound the memory the guest can make a flow hold (see
//! [`super::budget`]), every segment a flow emits passes through [`WindowGate::on_egress`]
//! on its way to the TAP: when smoltcp's window reaches past the flow's current limit, the
//! window field is lowered and the TCP checksum fixed incrementally (RFC 1624). Nothing else
//! in the segment changes, so smoltcp need not know.
//!
//! The gate remembers the right edge it has advertised (acknowledgment plus scaled window)
//! and never moves it back: a guest may always send what it was once allowed to. On the way
//! in, [`WindowGate::admit`] turns away data that ends past that edge before smoltcp sees it
//! (a segment a compliant guest never sends; RFC 9293 lets a receiver drop it, and the guest
//! is owed an ACK). That also keeps smoltcp from taking data right after the handshake
//! against a window it believes larger than the one it sent (see `rx_ring_size`).
//!
//! Since smoltcp does not know its window was lowered, it sends no window update when room
//! comes back; [`WindowGate::update`] tells the flow when to send one itself.
//!
//! The limit also grows with use (as Linux's receive-buffer autotuning does): a flow starts
//! with [`INITIAL_WINDOW`] and its window doubles each time the guest fills more than half of
//! it, up to the ring. An idle connection so commits 64 KiB, not the 2 MiB ring.
//!
//! Costs on the hot path: reading three header fields per emitted segment and comparing two
//! numbers; the field is rewritten only when the limit is below smoltcp's window.

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};

/// The window a flow starts with, before the guest shows it needs more.
pub const INITIAL_WINDOW: u32 = 64 << 10;
/// The least growth of a held-back window worth a window update of our own (smaller ones
/// wait for the guest's next segment or window probe, against silly-window syndrome).
pub const UPDATE_MIN_GAIN: u32 = 8 << 10;

/// Whether sequence number `a` comes after `b` (RFC 9293's modular comparison).
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The later of two sequence numbers.
fn seq_max(a: u32, b: u32) -> u32 {
    if seq_after(a, b) { a } else { b }
}

/// How far `to` lies ahead of `from`, or 0 if it does not.
fn ahead(to: u32, from: u32) -> u32 {
    if seq_after(to, from) {
        to.wrapping_sub(from)
    } else {
        0
    }
}

/// A pure ACK that tells the guest of a larger window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUpdate {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
}

/// One flow's advertised receive window (see the module docs).
#[derive(Debug)]
pub struct WindowGate {
    /// The window shift of our SYN or SYN-ACK, once it went out.
    our_shift: Option<u8>,
    /// The guest's SYN or SYN-ACK carried a window scale option (so ours applies).
    guest_scales: bool,
    /// The MSS option of the guest's SYN or SYN-ACK: the most it takes per segment, which
    /// sizes the segments of our offloaded super-segments (see `super::device`).
    guest_mss: Option<u16>,
    /// The guest's initial sequence number is known: the fields below mean something.
    synced: bool,
    /// The furthest right edge of the receive window ever advertised.
    edge: u32,
    /// The acknowledgment number of our latest segment.
    ack: u32,
    /// The next sequence number of ours (the end of what we sent), once we sent anything.
    snd_nxt: Option<u32>,
    /// The furthest the edge may go now (the flow's memory allowance, set at each service).
    limit: u32,
    /// The most window to offer beyond the acknowledgment: grows as the guest uses it.
    target: u32,
    /// The largest `target` may grow to: the receive ring.
    ring: u32,
    /// The latest window sent was lower than smoltcp's, so smoltcp will not send the update.
    pub clamped: bool,
    /// Guest data past the edge was turned away: the guest is owed an ACK.
    pub ack_owed: bool,
}

impl WindowGate {
    /// A gate for a flow whose receive ring holds `ring` bytes.
    pub fn new(ring: usize) -> Self {
        let ring = u32::try_from(ring).unwrap_or(u32::MAX);
        WindowGate {
            our_shift: None,
            guest_scales: false,
            guest_mss: None,
            synced: false,
            edge: 0,
            ack: 0,
            snd_nxt: None,
            limit: 0,
            target: INITIAL_WINDOW.min(ring),
            ring,
            clamped: false,
            ack_owed: false,
        }
    }

    /// The guest's SYN (or SYN-ACK) as a TCP header: its initial sequence number, and whether
    /// it offers window scaling.
    pub fn on_guest_syn(&mut self, tcp: &[u8]) {
        let Ok(packet) = TcpPacket::new_checked(tcp) else {
            return;
        };
        let options = packet.options_summary().ok();
        self.guest_scales = options.is_some_and(|o| o.window_scale.is_some());
        self.guest_mss = options.and_then(|o| o.max_segment_size);
        if !self.synced {
            let next = (packet.seq_number().0 as u32).wrapping_add(1);
            self.synced = true;
            self.edge = next;
            self.ack = next;
            self.limit = next;
        }
    }

    /// The guest's initial sequence number plus one: where its data starts. None until its
    /// SYN was seen.
    pub fn guest_data_start(&self) -> Option<u32> {
        self.synced.then_some(self.edge)
    }

    /// The MSS the guest's SYN or SYN-ACK offered, if it offered one.
    pub fn guest_mss(&self) -> Option<u16> {
        self.guest_mss
    }

    /// The shift of the windows we send.
    fn shift(&self) -> u8 {
        match self.our_shift {
            Some(s) if self.guest_scales => s,
            _ => 0,
        }
    }

    /// The furthest right edge advertised so far.
    pub fn edge(&self) -> u32 {
        self.edge
    }

    /// How far the edge may go.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Set how far the edge may go (an absolute sequence number).
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
    }

    /// Where the edge would go with no memory limit: `target` past `ack` (what smoltcp
    /// acknowledges now, which may be ahead of our latest segment), and no further than
    /// `ring_edge` (where smoltcp's own window ends).
    pub fn wanted_edge(&self, ack: u32, ring_edge: u32) -> u32 {
        let wanted = ack.wrapping_add(self.target);
        if seq_after(wanted, ring_edge) {
            seq_max(ring_edge, self.edge)
        } else {
            seq_max(wanted, self.edge)
        }
    }

    /// A guest segment carrying `len` bytes of data from `seq`: whether smoltcp may have it.
    pub fn admit(&mut self, seq: u32, len: u32) -> bool {
        if !self.synced || len == 0 {
            return true;
        }
        let end = seq.wrapping_add(len);
        if seq_after(end, self.edge) {
            self.ack_owed = true;
            return false;
        }
        // The guest has more than half the window in flight: offer more from now on.
        let outstanding = ahead(self.edge, self.ack);
        if ahead(self.edge, end) < outstanding / 2 {
            self.target = self.target.saturating_mul(2).min(self.ring);
        }
        true
    }

    /// The window field to send with acknowledgment `ack`, given smoltcp's `field`, with
    /// `shift` in effect: no further than the limit and the target, never short of the edge
    /// already advertised, never above smoltcp's.
    fn field_for(&self, ack: u32, field: u16, shift: u8) -> u16 {
        let unit = 1u64 << shift;
        let offered = u64::from(field) << shift;
        let allowed_edge = {
            let by_target = ack.wrapping_add(self.target);
            if seq_after(self.limit, by_target) {
                by_target
            } else {
                self.limit
            }
        };
        let allowed = u64::from(ahead(allowed_edge, ack));
        if offered <= allowed {
            return field;
        }
        let floor = u64::from(ahead(self.edge, ack)).div_ceil(unit);
        let fit = allowed >> shift;
        u16::try_from(fit.max(floor)).unwrap_or(u16::MAX).min(field)
    }

    /// A segment a flow is about to send (an IPv4 or IPv6 packet made by smoltcp): learn from
    /// it, and lower its window to the limit.
    pub fn on_egress(&mut self, ip: &mut [u8]) {
        let Some(tcp) = tcp_of_mut(ip) else {
            return;
        };
        let Ok(mut packet) = TcpPacket::new_checked(tcp) else {
            return;
        };
        if packet.rst() {
            return;
        }
        let syn = packet.syn();
        if syn {
            self.our_shift = packet.options_summary().ok().and_then(|o| o.window_scale);
        }
        let end = (packet.seq_number().0 as u32).wrapping_add(packet.segment_len() as u32);
        self.snd_nxt = Some(self.snd_nxt.map_or(end, |n| seq_max(n, end)));
        if !packet.ack() || !self.synced {
            return;
        }
        let ack = packet.ack_number().0 as u32;
        let field = packet.window_len();
        // A SYN's window is never scaled.
        let shift = if syn { 0 } else { self.shift() };
        let sent = self.field_for(ack, field, shift);
        if sent != field {
            packet.set_window_len(sent);
            let checksum = checksum_after_change(packet.checksum(), field, sent);
            packet.set_checksum(checksum);
        }
        self.clamped = sent < field;
        self.ack = seq_max(self.ack, ack);
        self.edge = seq_max(self.edge, ack.wrapping_add(u32::from(sent) << shift));
    }

    /// A pure ACK to send now, if the guest should hear of a window larger than the last one
    /// by at least as much again (and `min_gain`), or is owed an ACK. `ring_edge` is where
    /// smoltcp's own window ends.
    pub fn update(&mut self, ring_edge: u32, min_gain: u32) -> Option<WindowUpdate> {
        if !self.synced || !(self.clamped || self.ack_owed) {
            return None;
        }
        let seq = self.snd_nxt?;
        let shift = self.shift();
        let smoltcp_field = u16::try_from(ahead(ring_edge, self.ack) >> shift).unwrap_or(u16::MAX);
        let window = self.field_for(self.ack, smoltcp_field, shift);
        let new_edge = self.ack.wrapping_add(u32::from(window) << shift);
        let gain = ahead(new_edge, self.edge);
        let before = ahead(self.edge, self.ack);
        if !self.ack_owed && (gain < min_gain || gain < before) {
            return None;
        }
        self.ack_owed = false;
        self.clamped = window < smoltcp_field;
        self.edge = seq_max(self.edge, new_edge);
        Some(WindowUpdate {
            seq,
            ack: self.ack,
            window,
        })
    }
}

/// The TCP segment in an IP packet (one the classifier or smoltcp made: no IPv6 extension
/// headers), if it is one.
pub fn tcp_of(ip: &[u8]) -> Option<&[u8]> {
    let offset = tcp_offset(ip)?;
    ip.get(offset..)
}

pub(super) fn tcp_offset(ip: &[u8]) -> Option<usize> {
    let (proto, offset) = match ip.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            (p.next_header(), usize::from(p.header_len()))
        }
        6 => {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            (p.next_header(), smoltcp::wire::IPV6_HEADER_LEN)
        }
        _ => return None,
    };
    (proto == IpProtocol::Tcp).then_some(offset)
}

/// [`tcp_of`], writable.
pub(super) fn tcp_of_mut(ip: &mut [u8]) -> Option<&mut [u8]> {
    let offset = tcp_offset(ip)?;
    ip.get_mut(offset..)
}

/// The Internet checksum `old` of data in which one 16-bit word went from `from` to `to`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
pub fn checksum_after_change(old: u16, from: u16, to: u16) -> u16 {
    let mut sum = u32::from(!old) + u32::from(!from) + u32::from(to);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::testkit::{Segment, flags, syn_options};
    use smoltcp::wire::{IpAddress, TcpControl};
    use std::net::{Ipv4Addr, SocketAddr};

    const US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

    /// An IPv4 packet carrying a TCP segment from us (port 80) to the guest (port 40000),
    /// ACK set, checksums right; `scale` is a window scale option.
    pub(in crate::stack::tcp) fn segment(
        control: TcpControl,
        seq: u32,
        ack: u32,
        window: u16,
        scale: Option<u8>,
        payload: &[u8],
    ) -> Vec<u8> {
        let syn = if control == TcpControl::Syn {
            flags::SYN
        } else {
            0
        };
        Segment {
            src: SocketAddr::from((US, 80)),
            dst: SocketAddr::from((GUEST, 40000)),
            seq,
            ack,
            flags: flags::ACK | syn,
            window,
            options: &syn_options(None, scale, false),
            payload,
        }
        .ip_packet()
    }

    fn window_and_checksum_ok(packet: &[u8]) -> (u16, bool) {
        let tcp = TcpPacket::new_checked(&packet[20..]).unwrap();
        let ok = tcp.verify_checksum(&IpAddress::from(US), &IpAddress::from(GUEST));
        (tcp.window_len(), ok)
    }

    /// A gate past the handshake: the guest's SYN (ISN 999, window scaling) was seen and our
    /// SYN-ACK with shift 5 went out.
    fn synced_gate() -> WindowGate {
        let mut gate = WindowGate::new((2 << 20) - 1);
        let guest_syn = {
            let mut p = segment(TcpControl::Syn, 999, 0, 64000, Some(7), &[]);
            p.drain(..20);
            p
        };
        gate.on_guest_syn(&guest_syn);
        gate.set_limit(1000 + (1 << 30));
        let mut synack = segment(TcpControl::Syn, 5000, 1000, 65535, Some(5), &[]);
        gate.on_egress(&mut synack);
        gate
    }

    #[test]
    fn incremental_checksum_matches_a_full_recomputation() {
        let mut packet = segment(TcpControl::None, 1, 2, 4000, None, b"some payload bytes");
        let (window, ok) = window_and_checksum_ok(&packet);
        assert!(ok && window == 4000);
        for to in [0u16, 1, 3999, 4001, 0xffff, 0x8000] {
            let mut tcp = TcpPacket::new_unchecked(&mut packet[20..]);
            let from = tcp.window_len();
            tcp.set_window_len(to);
            let c = checksum_after_change(tcp.checksum(), from, to);
            tcp.set_checksum(c);
            let (window, ok) = window_and_checksum_ok(&packet);
            assert!(ok && window == to, "{from} -> {to}");
        }
    }

    #[test]
    fn syn_ack_window_is_the_initial_window_and_unscaled() {
        let gate = synced_gate();
        assert_eq!(gate.shift(), 5);
        assert_eq!(gate.edge(), 1000 + 65535);
    }

    #[test]
    fn window_is_lowered_to_the_limit_with_a_valid_checksum() {
        let mut gate = synced_gate();
        // Room for 100 KiB past the ISN, smoltcp offers the whole ring (65535 << 5).
        gate.target = 2 << 20;
        gate.set_limit(1000 + (100 << 10));
        let mut ack = segment(TcpControl::None, 5001, 1000, 65535, None, &[]);
        gate.on_egress(&mut ack);
        let (window, ok) = window_and_checksum_ok(&ack);
        assert!(ok, "checksum fixed");
        assert_eq!(u32::from(window) << 5, 100 << 10);
        assert!(gate.clamped);
        assert_eq!(gate.edge(), 1000 + (100 << 10));
        // A window within the limit goes out untouched.
        let mut small = segment(TcpControl::None, 5001, 1000, 100, None, &[]);
        let before = small.clone();
        gate.on_egress(&mut small);
        assert_eq!(small, before);
        assert!(!gate.clamped);
    }

    #[test]
    fn advertised_edge_is_never_moved_back() {
        let mut gate = synced_gate();
        let edge = gate.edge();
        // The limit drops to nothing: the window still reaches the edge already offered.
        gate.set_limit(1000);
        let mut ack = segment(TcpControl::None, 5001, 1000 + 300, 65535, None, &[]);
        gate.on_egress(&mut ack);
        let (window, ok) = window_and_checksum_ok(&ack);
        assert!(ok);
        let new_edge = 1000 + 300 + (u32::from(window) << 5);
        assert!(
            new_edge >= edge && new_edge < edge + 32,
            "{new_edge} vs {edge}"
        );
        // Once the guest filled it, the window is zero.
        let mut ack = segment(TcpControl::None, 5001, gate.edge(), 65535, None, &[]);
        gate.on_egress(&mut ack);
        assert_eq!(window_and_checksum_ok(&ack), (0, true));
    }

    #[test]
    fn data_past_the_edge_is_turned_away_and_owed_an_ack() {
        let mut gate = synced_gate();
        let edge = gate.edge();
        assert!(gate.admit(1000, 1000));
        assert!(gate.admit(edge - 1000, 1000), "up to the edge");
        assert!(!gate.ack_owed);
        assert!(!gate.admit(edge - 999, 1000), "one byte past it");
        assert!(gate.ack_owed);
        assert!(gate.admit(edge + 5, 0), "pure ACKs pass");
        // Across the sequence-number wrap.
        let mut gate = WindowGate::new(1 << 20);
        let mut syn = segment(TcpControl::Syn, u32::MAX - 10, 0, 1000, None, &[]);
        syn.drain(..20);
        gate.on_guest_syn(&syn);
        assert_eq!(gate.edge(), u32::MAX - 9);
        let mut synack = segment(TcpControl::Syn, 1, u32::MAX - 9, 65535, None, &[]);
        gate.set_limit((u32::MAX - 9).wrapping_add(1 << 20));
        gate.on_egress(&mut synack);
        let edge = gate.edge();
        assert!(edge < 100_000, "wrapped: {edge}");
        assert!(gate.admit(edge.wrapping_sub(500), 500));
        assert!(!gate.admit(edge.wrapping_sub(500), 501));
    }

    #[test]
    fn window_grows_as_the_guest_fills_it() {
        let mut gate = synced_gate();
        gate.set_limit(1000 + (1 << 30));
        assert_eq!(gate.target, INITIAL_WINDOW);
        // A quarter of the window in flight: no growth.
        assert!(gate.admit(1000, 16 << 10));
        assert_eq!(gate.target, INITIAL_WINDOW);
        // Most of it: twice as much next time.
        assert!(gate.admit(1000, 60 << 10));
        assert_eq!(gate.target, 2 * INITIAL_WINDOW);
        let mut ack = segment(TcpControl::None, 5001, 1000 + (60 << 10), 65535, None, &[]);
        gate.on_egress(&mut ack);
        assert_eq!(gate.edge(), 1000 + (60 << 10) + 2 * INITIAL_WINDOW);
        for _ in 0..20 {
            gate.admit(gate.edge() - 10, 10);
        }
        assert_eq!(gate.target, (2 << 20) - 1, "no more than the ring");
    }

    #[test]
    fn window_update_when_room_comes_back() {
        let mut gate = synced_gate();
        gate.target = 2 << 20;
        // The guest filled the window of the SYN-ACK, and there is no room for more.
        let filled = gate.edge();
        gate.set_limit(filled);
        let mut ack = segment(TcpControl::None, 5001, filled, 65535, None, &[]);
        gate.on_egress(&mut ack);
        assert_eq!(window_and_checksum_ok(&ack), (0, true), "closed");
        assert!(gate.clamped);
        let ring_edge = 1000 + (2 << 20);
        assert_eq!(gate.update(ring_edge, 4096), None, "no room yet");
        gate.set_limit(filled + 2048);
        assert_eq!(gate.update(ring_edge, 4096), None, "too little to tell");
        gate.set_limit(filled + (200 << 10));
        let update = gate.update(ring_edge, 4096).expect("an update");
        assert_eq!(update.ack, filled);
        assert_eq!(update.seq, 5001);
        assert_eq!(u32::from(update.window) << 5, 200 << 10);
        assert_eq!(gate.edge(), filled + (200 << 10));
        assert_eq!(gate.update(ring_edge, 4096), None, "told once");
        // Owed an ACK for data turned away: told even without a larger window.
        assert!(!gate.admit(gate.edge(), 100));
        assert!(gate.update(ring_edge, 4096).is_some());
    }
}

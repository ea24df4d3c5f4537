//! The memory budget of the TCP flows' rings (`--max-buffer-memory`), and the accounting of
//! each flow's share of it.
//!
//! Each flow has two rings of up to 2 MiB (guest → host, host → guest); a ring costs memory
//! only where data has been, but once there a page stays until given back. Without a bound,
//! stalled flows (a host peer that does not read, a guest whose window is closed) would each
//! hold 2 MiB per direction, and `--max-tcp-flows` of them far more than a machine has.
//!
//! # What a flow is charged
//!
//! For each ring, an upper bound on the pages it can have resident without asking again:
//!
//! - **receive ring** (guest → host): the bytes from where its pages were last given back
//!   (`clean`) to the right edge of the window the [gate](super::gate) lets the flow
//!   advertise, since the guest may fill all of it; plus two pages for the partly used ones
//!   at either end. It is what the guest could make resident, data not yet sent included.
//! - **transmit ring** (host → guest): what was in it when its pages were last given back,
//!   plus every byte read from the host since (each lands on at most one new byte of the
//!   ring), plus the two pages.
//!
//! Both are capped at the ring's own pages. A flow *reserves* its receive charge at the
//! edge it may go to, and its transmit charge after reading, so the sum of reservations,
//! `used`, bounds what the rings can hold: flows only grow into room they were granted.
//!
//! # Policy
//!
//! | `used` | a direction may hold |
//! |---|---|
//! | below half the budget | as much as it wants, while the total stays below half |
//! | from half the budget | [`FLOOR`] (64 KiB), or what it already holds if more |
//! | at the budget | [`MIN_SHARE`] (16 KiB), or what it already holds if more |
//!
//! so new transfers keep moving while stalled flows hold what they have, and nothing is ever
//! dropped or failed: a flow that gets no more simply advertises no more window and reads no
//! more from its host socket. The one excess over the budget is that last row: however many
//! stalled flows took the rest, a new transfer still gets a 16 KiB share each way (a window
//! of 8 KiB past the two partly used pages), so it completes, slowly, rather than wait for
//! memory that may never come back. That bounds the total by the budget plus 32 KiB per
//! flow, reached only by flows that each hold no more than their minimum. From half the budget on ("pressure"), rings also give back the
//! pages of data that has left them (`madvise(MADV_DONTNEED)`): a flow being serviced does
//! so itself, and flows that went quiet with pages to spare are found on a list kept for
//! that, never by scanning every flow. A flow that was refused room it wanted waits on
//! another list and is serviced again when room is freed.

use std::collections::VecDeque;

use smoltcp::socket::tcp::{self, State};

use super::gate::{WindowGate, seq_after};
use crate::slab::Id;

/// The budget unless `--max-buffer-memory` says otherwise: fits a small machine, and is 64
/// flows at full speed both ways.
pub const DEFAULT_BUFFER_MEMORY: usize = 256 << 20;
/// What each direction of a flow may hold once the budget is half used.
pub const FLOOR: usize = 64 << 10;
/// What each direction of a flow may hold whatever the budget (4 pages where pages are
/// larger than 4 KiB): the only memory past the budget, at most twice this per flow.
pub const MIN_SHARE: usize = 16 << 10;
/// The least a busy flow under pressure gives back at once (so a flow held at the floor keeps
/// moving, at one `madvise` per 16 KiB).
const RELEASE_MIN: usize = 16 << 10;
/// A flow with at least this much to give back goes on the list of flows to reclaim from.
const RECLAIM_MIN: usize = 256 << 10;

/// What the accounting needs to know of a flow's smoltcp socket.
#[derive(Debug, Clone, Copy)]
pub struct SocketView {
    pub state: State,
    /// Bytes received in order and not yet read.
    pub recv_queue: usize,
    /// Bytes read from the host and not yet acknowledged by the guest.
    pub send_queue: usize,
}

impl SocketView {
    pub fn of(sock: &tcp::Socket<'_>) -> Self {
        SocketView {
            state: sock.state(),
            recv_queue: sock.recv_queue(),
            send_queue: sock.send_queue(),
        }
    }
}

/// Counters, in the `--debug` summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct BudgetStats {
    /// The most ever reserved, in bytes.
    pub peak: usize,
    /// Times a flow gave back the pages of data that had left its rings.
    pub releases: u64,
    /// Times a flow was refused room it wanted.
    pub starved: u64,
}

/// The budget shared by all flows (see the module docs).
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    page: usize,
    /// Bytes given back since the starved flows were last woken.
    freed: usize,
    /// Flows refused room they wanted, the longest waiting first.
    starved: VecDeque<Id>,
    /// Flows holding pages of data that has left them.
    reclaimable: Vec<Id>,
    pub stats: BudgetStats,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget {
            limit,
            used: 0,
            page: crate::footprint::page_size(),
            freed: 0,
            starved: VecDeque::new(),
            reclaimable: Vec::new(),
            stats: BudgetStats::default(),
        }
    }

    /// Bytes reserved by all flows.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Half the budget is reserved: flows are held to the floor and give pages back.
    pub fn under_pressure(&self) -> bool {
        self.used >= self.limit / 2
    }

    /// How much a direction of a flow may hold when the other flows reserve `others` and it
    /// would like `want`.
    fn allowance(&self, others: usize, want: usize) -> usize {
        let soft = (self.limit / 2).saturating_sub(others);
        let hard = self.limit.saturating_sub(others);
        want.min(soft.max(FLOOR))
            .min(hard)
            .max(want.min(self.min_share()))
    }

    /// What a direction of any flow may hold even with the budget used up: enough for a
    /// small window past the two partly used pages, so a transfer that moves data keeps
    /// moving however many stalled flows hold the rest.
    fn min_share(&self) -> usize {
        MIN_SHARE.max(4 * self.page)
    }

    /// A flow's reservation goes from `*reserved` to `new`.
    fn reserve(&mut self, reserved: &mut usize, new: usize) {
        self.used = self.used - *reserved + new;
        if new < *reserved {
            self.freed += *reserved - new;
        }
        *reserved = new;
        self.stats.peak = self.stats.peak.max(self.used);
    }

    /// A flow is gone: give back its reservation.
    pub fn forget(&mut self, memory: &mut FlowMemory) {
        self.reserve(&mut memory.reserved, 0);
    }

    /// After a flow was serviced: note it among the starved or the reclaimable.
    pub fn note(&mut self, id: Id, memory: &mut FlowMemory, sock: SocketView) {
        if memory.short && !memory.starved {
            memory.starved = true;
            self.starved.push_back(id);
            self.stats.starved += 1;
        }
        if !memory.reclaimable && memory.spare(sock, self.page) >= RECLAIM_MIN {
            memory.reclaimable = true;
            self.reclaimable.push(id);
        }
    }

    /// The next flow to give pages back, while under pressure. Stale ids (flows since removed,
    /// or no longer reclaimable) come out too; the caller skips them.
    pub fn next_to_reclaim(&mut self) -> Option<Id> {
        if !self.under_pressure() {
            return None;
        }
        self.reclaimable.pop()
    }

    /// Flows to service again because room was freed: about one per [`FLOOR`] freed.
    pub fn take_woken(&mut self) -> Vec<Id> {
        if self.freed == 0 || self.starved.is_empty() {
            self.freed = 0;
            return Vec::new();
        }
        let n = (self.freed / FLOOR + 1).min(self.starved.len());
        self.freed = 0;
        self.starved.drain(..n).collect()
    }

    /// Drop stale ids once the lists outgrow the flows (ids of removed flows stay behind).
    pub fn compact(&mut self, flows: usize, live: impl Fn(Id, bool) -> bool) {
        if self.starved.len() > 2 * flows + 64 {
            self.starved.retain(|&id| live(id, true));
        }
        if self.reclaimable.len() > 2 * flows + 64 {
            self.reclaimable.retain(|&id| live(id, false));
        }
    }

    /// Give back what `memory` holds beyond its data, and update its reservation.
    pub fn reclaim(&mut self, memory: &mut FlowMemory, sock: SocketView) {
        memory.reclaimable = false;
        if memory.release(sock, self.page, 0) > 0 {
            self.stats.releases += 1;
        }
        let new = memory.rx_reserved(self.page) + memory.tx_charge(self.page);
        self.reserve(&mut memory.reserved, new);
    }
}

/// Where a ring's storage lies, so the pages of its free part can be given back.
#[derive(Debug)]
struct RingStorage {
    /// The address of the first byte (its provenance exposed, see [`RingStorage::release`]).
    base: usize,
    len: usize,
}

impl RingStorage {
    fn new(storage: &mut [u8]) -> Self {
        RingStorage {
            base: storage.as_mut_ptr().expose_provenance(),
            len: storage.len(),
        }
    }

    /// The position in the ring of a pointer smoltcp handed out into it.
    fn position(&self, ptr: *const u8) -> usize {
        match self.len {
            0 => 0,
            len => ptr.addr().wrapping_sub(self.base) % len,
        }
    }

    /// The most the ring can have resident: its bytes rounded out to whole pages.
    fn pages(&self, page: usize) -> usize {
        (self.len + 2 * page - 1) / page * page
    }

    /// Give back the pages that lie wholly outside the `live` bytes from position `start`
    /// (wrapping around the end); returns how many bytes were given back.
    fn release(&self, start: usize, live: usize, page: usize) -> usize {
        if self.len == 0 || live >= self.len {
            return 0;
        }
        let free_start = (start % self.len + live) % self.len;
        let free_len = self.len - live;
        let first = free_len.min(self.len - free_start);
        let mut given = self.release_range(free_start, first, page);
        if first < free_len {
            given += self.release_range(0, free_len - first, page);
        }
        given
    }

    /// Give back the whole pages within positions `from..from + len` (no wrap).
    #[allow(unsafe_code)] // madvise(2) of the ring's own memory; see the SAFETY comment.
    fn release_range(&self, from: usize, len: usize, page: usize) -> usize {
        let start = (self.base + from).next_multiple_of(page);
        let end = (self.base + from + len) / page * page;
        if end <= start {
            return 0;
        }
        let ptr = std::ptr::with_exposed_provenance_mut::<u8>(start);
        // SAFETY: [start, end) lies within the ring's storage: a Vec<u8> moved into the
        // flow's smoltcp socket, whose heap buffer never moves or resizes and lives as long
        // as the socket, which lives in the same `Conn` as this record; we are called only
        // between calls into smoltcp, so no reference into the storage exists. The range is
        // outside the part of the ring that holds data (unread or out-of-order data within
        // the advertised window, or data not yet acknowledged by the guest), which smoltcp
        // writes before it reads again. MADV_DONTNEED on private anonymous memory (malloc's
        // mmap'd or heap pages alike) only makes those pages read as zeros, a valid value
        // for u8: the same as writing zeros there, with the pages returned to the system.
        let r = unsafe { libc::madvise(ptr.cast(), end - start, libc::MADV_DONTNEED) };
        if r == 0 {
            end - start
        } else {
            log::debug!(
                "madvise of a ring's free pages failed: {}",
                std::io::Error::last_os_error()
            );
            0
        }
    }
}

/// What one flow holds of the budget, and the bookkeeping behind it (see the module docs).
#[derive(Debug)]
pub struct FlowMemory {
    pub gate: WindowGate,
    rx: RingStorage,
    tx: RingStorage,
    /// Receive ring: where the next unread byte is (smoltcp never moves it back), and the
    /// sequence numbers of that byte and of where the pages were last given back.
    rx_read: usize,
    rx_consumed: u32,
    rx_clean: u32,
    /// Transmit ring: where the next byte read from the host goes, bytes read in all, and
    /// (when its pages were last given back) the bytes in it and the count read by then.
    tx_write: usize,
    tx_written: u64,
    tx_live_at_clean: usize,
    tx_written_at_clean: u64,
    /// Bytes that may still be read from the host in this service.
    tx_room: usize,
    /// What this flow counts for in the budget.
    reserved: usize,
    /// Its receive reservation: the charge at the edge the gate may go to.
    rx_limit_charge: usize,
    /// Refused room it wanted, in this service; on the starved list.
    short: bool,
    starved: bool,
    /// On the reclaimable list.
    reclaimable: bool,
}

impl FlowMemory {
    /// The memory of a flow whose rings are `rx` and `tx`, before smoltcp has them.
    pub fn new(rx: &mut [u8], tx: &mut [u8]) -> Self {
        FlowMemory {
            gate: WindowGate::new(rx.len()),
            rx: RingStorage::new(rx),
            tx: RingStorage::new(tx),
            rx_read: 0,
            rx_consumed: 0,
            rx_clean: 0,
            tx_write: 0,
            tx_written: 0,
            tx_live_at_clean: 0,
            tx_written_at_clean: 0,
            tx_room: usize::MAX,
            reserved: 0,
            rx_limit_charge: 0,
            short: false,
            starved: false,
            reclaimable: false,
        }
    }

    /// The guest's SYN or SYN-ACK (its TCP header).
    pub fn on_guest_syn(&mut self, tcp: &[u8]) {
        let known = self.gate.guest_data_start().is_some();
        self.gate.on_guest_syn(tcp);
        if !known && let Some(start) = self.gate.guest_data_start() {
            self.rx_consumed = start;
            self.rx_clean = start;
        }
    }

    /// smoltcp handed out `buf` from the receive ring and `taken` bytes of it left.
    pub fn on_recv(&mut self, buf: *const u8, taken: usize) {
        self.rx_read = (self.rx.position(buf) + taken) % self.rx.len.max(1);
        self.rx_consumed = self.rx_consumed.wrapping_add(taken as u32);
    }

    /// `taken` in-order bytes went from the guest's segment straight to the host socket,
    /// never into the receive ring (whose next unread byte is where it was).
    pub fn on_recv_direct(&mut self, taken: usize) {
        self.rx_consumed = self.rx_consumed.wrapping_add(taken as u32);
    }

    /// How many bytes of `buf`, the transmit ring's free space, may be read into now.
    pub fn send_room(&self, free: usize) -> usize {
        free.min(self.tx_room)
    }

    /// `put` bytes were read from the host into `buf`, the transmit ring's free space.
    pub fn on_send(&mut self, buf: *const u8, put: usize) {
        self.tx_write = (self.tx.position(buf) + put) % self.tx.len.max(1);
        self.tx_written += put as u64;
        self.tx_room = self.tx_room.saturating_sub(put);
    }

    /// Whether reading from the host stopped for want of budget rather than ring space.
    pub fn send_blocked(&self) -> bool {
        self.tx_room == 0
    }

    /// Where smoltcp's own receive window ends: the ring's size past the unread data.
    pub fn ring_edge(&self) -> u32 {
        self.rx_consumed.wrapping_add(self.rx.len as u32)
    }

    fn rx_charge_at(&self, edge: u32, page: usize) -> usize {
        if self.gate.guest_data_start().is_none() {
            return 0;
        }
        let span = if seq_after(edge, self.rx_clean) {
            edge.wrapping_sub(self.rx_clean) as usize
        } else {
            0
        };
        (span + 2 * page).min(self.rx.pages(page))
    }

    fn rx_reserved(&self, page: usize) -> usize {
        self.rx_limit_charge
            .max(self.rx_charge_at(self.gate.edge(), page))
    }

    /// The transmit ring's bytes that may be resident, before rounding to pages.
    fn tx_span(&self) -> usize {
        self.tx_live_at_clean + (self.tx_written - self.tx_written_at_clean) as usize
    }

    fn tx_charge(&self, page: usize) -> usize {
        let span = self.tx_span();
        if span == 0 {
            0
        } else {
            (span + 2 * page).min(self.tx.pages(page))
        }
    }

    /// Bytes of the receive ring that may hold data now: unread, or within the window.
    fn rx_live(&self) -> usize {
        let edge = self.gate.edge();
        if seq_after(edge, self.rx_consumed) {
            edge.wrapping_sub(self.rx_consumed) as usize
        } else {
            0
        }
    }

    /// What giving back pages would free now.
    fn spare(&self, sock: SocketView, page: usize) -> usize {
        let rx = self
            .rx_charge_at(self.gate.edge(), page)
            .saturating_sub(self.rx_live() + 2 * page);
        let tx = self
            .tx_charge(page)
            .saturating_sub(sock.send_queue + 2 * page);
        rx + tx
    }

    /// Give back the pages of either ring that hold no data, where that frees at least
    /// `min` bytes, or any whole page for a direction held at its allowance (which could not
    /// move otherwise); returns the bytes given back.
    fn release(&mut self, sock: SocketView, page: usize, min: usize) -> usize {
        // Closed: smoltcp cleared the rings (and may have moved their start); nothing more
        // comes in or goes out. Listen, SYN-SENT: nothing was ever in them.
        if matches!(sock.state, State::Closed | State::Listen | State::SynSent) {
            return 0;
        }
        let mut given = 0;
        let live = self.rx_live();
        let rx_charge = self.rx_charge_at(self.gate.edge(), page);
        let rx_min = if rx_charge + page >= self.rx_limit_charge {
            page
        } else {
            min.max(1)
        };
        if self.gate.guest_data_start().is_some() && rx_charge >= live + 2 * page + rx_min {
            given += self.rx.release(self.rx_read, live, page);
            self.rx_clean = self.rx_consumed;
            self.rx_limit_charge = self.rx_charge_at(self.gate.limit(), page);
        }
        let queued = sock.send_queue;
        let tx_min = if self.send_blocked() {
            page
        } else {
            min.max(1)
        };
        if self.tx_charge(page) >= queued + 2 * page + tx_min {
            let len = self.tx.len.max(1);
            let start = (self.tx_write + len - queued.min(len)) % len;
            given += self.tx.release(start, queued, page);
            self.tx_live_at_clean = queued;
            self.tx_written_at_clean = self.tx_written;
        }
        given
    }

    /// Before a flow moves data: give pages back if under pressure, then decide how far its
    /// window may reach and how much it may read from the host, and reserve that.
    pub fn plan(&mut self, budget: &mut Budget, sock: SocketView) {
        let page = budget.page;
        if budget.under_pressure() && self.release(sock, page, RELEASE_MIN) > 0 {
            budget.stats.releases += 1;
        }
        let others = budget.used - self.reserved;
        self.short = false;
        // Receive: the edge the window may reach.
        let mut rx_reserved = 0;
        if self.gate.guest_data_start().is_some() {
            let now = self.rx_charge_at(self.gate.edge(), page);
            // smoltcp's next ACK covers the data in order in its ring. (Computed from our
            // latest ACK instead, the limit would lag by what arrived since, and close the
            // window on a guest that had filled it.)
            let ack = self.rx_consumed.wrapping_add(sock.recv_queue as u32);
            let wanted_edge = self.gate.wanted_edge(ack, self.ring_edge());
            let want = self.rx_charge_at(wanted_edge, page).max(now);
            let allowed = budget.allowance(others, want).max(now);
            let limit = if allowed >= want {
                wanted_edge
            } else {
                // The edge at which the charge reaches `allowed` (it is at least the two
                // pages, since `now` is).
                self.rx_clean
                    .wrapping_add(allowed.saturating_sub(2 * page) as u32)
            };
            self.gate.set_limit(limit);
            self.short = allowed < want;
            self.rx_limit_charge = allowed;
            rx_reserved = allowed;
        }
        // Transmit: what may be read from the host in this service. Nothing else runs until
        // `settle`, which reserves what was read.
        let full = self.tx.pages(page);
        let now = self.tx_charge(page);
        let allowed = budget.allowance(others + rx_reserved, full).max(now);
        self.tx_room = if allowed >= full {
            usize::MAX
        } else {
            allowed.saturating_sub(self.tx_span() + 2 * page)
        };
        budget.reserve(&mut self.reserved, rx_reserved + now);
    }

    /// After a flow moved data: reserve what it read from the host, and note whether the
    /// budget stopped its reads.
    pub fn settle(&mut self, budget: &mut Budget, host_has_more: bool) {
        let page = budget.page;
        if host_has_more && self.send_blocked() {
            self.short = true;
        }
        let new = self.rx_reserved(page) + self.tx_charge(page);
        budget.reserve(&mut self.reserved, new);
    }

    /// Whether this flow is on the starved list (`starved`) or the reclaimable one, and still
    /// belongs there.
    pub fn listed(&self, starved: bool) -> bool {
        if starved {
            self.starved
        } else {
            self.reclaimable
        }
    }

    /// Taken off the starved list to be serviced.
    pub fn woken(&mut self) {
        self.starved = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn allowance_is_what_is_wanted_below_half_then_the_floor_then_the_minimum() {
        let budget = Budget::new(64 * MIB);
        // Plenty of room: what is wanted, up to where half the budget would be reserved.
        assert_eq!(budget.allowance(0, 2 * MIB), 2 * MIB);
        assert_eq!(budget.allowance(31 * MIB, 2 * MIB), MIB);
        // Past half: the floor.
        assert_eq!(budget.allowance(40 * MIB, 2 * MIB), FLOOR);
        assert_eq!(budget.allowance(40 * MIB, 1000), 1000);
        // Near the budget: what is left, floor or not; at it, the minimum share.
        assert_eq!(budget.allowance(64 * MIB - 30_000, 2 * MIB), 30_000);
        assert_eq!(budget.allowance(64 * MIB, 2 * MIB), budget.min_share());
        assert_eq!(budget.allowance(64 * MIB, 1000), 1000);
    }

    #[test]
    fn reservations_add_up_and_frees_wake_the_starved() {
        let mut budget = Budget::new(64 * MIB);
        let (mut a, mut b) = (0, 0);
        budget.reserve(&mut a, 3 * MIB);
        budget.reserve(&mut b, 40 * MIB);
        assert_eq!(budget.used(), 43 * MIB);
        assert!(budget.under_pressure());
        assert_eq!(budget.stats.peak, 43 * MIB);
        let ids: Vec<Id> = (0..4).map(|i| Id::from_token(mio::Token(i)).1).collect();
        budget.starved.extend(ids.iter().copied());
        budget.freed = 0;
        assert!(
            budget.take_woken().is_empty(),
            "nothing freed, nobody woken"
        );
        budget.reserve(&mut b, 40 * MIB - FLOOR);
        // One per FLOOR freed, plus one; the longest waiting first.
        assert_eq!(budget.take_woken(), ids[..2].to_vec());
        assert!(budget.take_woken().is_empty());
    }

    /// An IPv4 packet with a TCP segment from us (ACK set); a SYN offers window scale 5.
    fn our_segment(syn: bool, seq: u32, ack: u32, window: u16) -> Vec<u8> {
        use smoltcp::wire::TcpControl;
        let control = if syn {
            TcpControl::Syn
        } else {
            TcpControl::None
        };
        super::super::gate::tests::segment(control, seq, ack, window, syn.then_some(5), &[])
    }

    fn window_of(packet: &[u8]) -> u32 {
        u32::from(
            smoltcp::wire::TcpPacket::new_checked(&packet[20..])
                .unwrap()
                .window_len(),
        ) << 5
    }

    /// Found by bench/throughput.sh: the window limit was computed from our latest ACK, so
    /// a guest that filled the whole window before the next one got a zero window, and
    /// waited for its persist timer (stalls of 200 ms in a 13 Gbit/s stream).
    #[test]
    fn window_reopens_for_a_guest_that_filled_it_between_two_acks() {
        let ring = (2 << 20) - 1;
        let (mut rx, mut tx) = (vec![0u8; ring], vec![0u8; 2 << 20]);
        let mut memory = FlowMemory::new(&mut rx, &mut tx);
        let mut budget = Budget::new(256 * MIB);
        let isn = 1_000_000u32;
        let guest_syn = {
            let mut p = our_segment(true, isn - 1, 0, 65535);
            p.drain(..20);
            p
        };
        memory.on_guest_syn(&guest_syn);
        let start = isn;
        let view = |recv_queue| SocketView {
            state: State::Established,
            recv_queue,
            send_queue: 0,
        };
        memory.plan(&mut budget, view(0));
        memory
            .gate
            .on_egress(&mut our_segment(true, 5000, start, 65535));
        // The guest fills windows as fast as they open, and its window grows to the ring.
        let mut acked = start;
        for _ in 0..10 {
            let edge = memory.gate.edge();
            assert!(memory.gate.admit(acked, edge - acked));
            // The host takes all of it at once.
            memory.on_recv(rx.as_ptr(), (edge - acked) as usize);
            memory.plan(&mut budget, view(0));
            acked = edge;
            let field = (ring >> 5) as u16;
            memory
                .gate
                .on_egress(&mut our_segment(false, 5001, acked, field));
        }
        assert!(
            memory.gate.edge() - acked > ring as u32 - 65536,
            "the window grew to the ring"
        );
        // Now it sends the whole window while the host reads nothing; smoltcp's ring is full.
        let edge = memory.gate.edge();
        assert!(memory.gate.admit(acked, edge - acked));
        let in_ring = (edge - acked) as usize;
        memory.plan(&mut budget, view(in_ring));
        // The host reads 1 MiB: smoltcp acknowledges everything, with 1 MiB of window.
        memory.on_recv(rx.as_ptr(), MIB);
        memory.plan(&mut budget, view(in_ring - MIB));
        let field = ((ring - in_ring + MIB) >> 5) as u16;
        let mut ack = our_segment(false, 5001, edge, field);
        memory.gate.on_egress(&mut ack);
        assert_eq!(window_of(&ack), u32::from(field) << 5, "the window reopens");
        assert!(budget.used() <= 4 * MIB);
    }

    /// Whether each page of `buf` is resident (mincore).
    #[allow(unsafe_code)]
    fn resident(buf: &[u8], page: usize) -> Vec<bool> {
        let start = buf.as_ptr().addr() / page * page;
        let end = (buf.as_ptr().addr() + buf.len()).next_multiple_of(page);
        let mut vec = vec![0u8; (end - start) / page];
        // SAFETY: the range covers mapped memory (buf), vec has one byte per page.
        let r = unsafe {
            libc::mincore(
                std::ptr::with_exposed_provenance_mut(start),
                end - start,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        vec.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn release_gives_back_only_whole_pages_outside_the_live_bytes() {
        let page = Budget::new(MIB).page;
        let len = 64 * page - 1;
        let mut ring = vec![0u8; len];
        let storage = RingStorage::new(&mut ring);
        ring.fill(7);
        assert!(resident(&ring, page).iter().all(|&r| r));
        // Live bytes wrapping around the end: the last 10 pages and the first 5.
        let start = len - 10 * page;
        let live = 15 * page;
        let given = storage.release(start, live, page);
        assert!(given > 40 * page && given < 50 * page, "{given}");
        for (i, byte) in ring.iter().enumerate() {
            let in_live = i >= start || i < live - (len - start);
            if in_live {
                assert_eq!(*byte, 7, "live byte {i} kept");
            }
        }
        // The pages wholly inside the free part are gone (and read as zeros).
        let pages = resident(&ring, page);
        let gone = pages.iter().filter(|&&r| !r).count();
        assert_eq!(gone * page, given);
        assert_eq!(ring[start / 2], 0);
        // Nothing to give back when all of it is live.
        assert_eq!(storage.release(0, len, page), 0);
    }
}

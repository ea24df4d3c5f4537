//! The guest link's neighbour table: which MAC address answers for which IPv4 address on the
//! TAP, so connections that *we* open towards the guest (forwarded host ports) can be framed.
//!
//! Guest-initiated traffic never needs it: every reply goes back to the MAC the guest's frame
//! came from. Inbound connections have no such frame, so the table learns from what the guest
//! sends anyway (the source of its IPv4 frames, the sender of its ARP messages) and, for an
//! address it has not seen, asks with an ARP request from the gateway, as a router would.
//!
//! Everything here comes from the guest, so the table is bounded ([`MAX_NEIGHBORS`]) and
//! only unicast addresses are learned; solicitations are rate-limited per address.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;

use super::emit;
use super::tx::TapWriter;
use crate::net::VirtualNetwork;

/// Most addresses remembered; past it, the least recently confirmed one makes room.
pub const MAX_NEIGHBORS: usize = 256;
/// Most addresses with an ARP request outstanding.
const MAX_SOLICITING: usize = 64;
/// An address is asked for at most this often.
pub const SOLICIT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone, Copy)]
pub struct NeighborStats {
    pub learned: u64,
    pub solicitations: u64,
}

#[derive(Default)]
pub struct Neighbors {
    table: HashMap<Ipv4Addr, (EthernetAddress, Instant)>,
    /// The last pair learned: the common case (one guest) costs one comparison per frame.
    last: Option<(Ipv4Addr, EthernetAddress)>,
    /// When each unresolved address was last asked for.
    soliciting: HashMap<Ipv4Addr, Instant>,
    pub stats: NeighborStats,
}

impl Neighbors {
    /// Note that `ip` is at `mac` (from a frame the guest sent). Returns true when this is
    /// news: a new address, or one that moved.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress, now: Instant) -> bool {
        if self.last == Some((ip, mac)) {
            return false;
        }
        if !mac.is_unicast() || !is_unicast(ip) {
            return false;
        }
        self.last = Some((ip, mac));
        let news = self.table.get(&ip).is_none_or(|(m, _)| *m != mac);
        if news && !self.table.contains_key(&ip) && self.table.len() >= MAX_NEIGHBORS {
            let oldest = self
                .table
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(ip, _)| *ip);
            if let Some(o) = oldest {
                self.table.remove(&o);
            }
        }
        self.table.insert(ip, (mac, now));
        if news {
            self.stats.learned += 1;
            self.soliciting.remove(&ip);
        }
        news
    }

    /// The MAC address of `ip`, if known.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.table.get(&ip).map(|(mac, _)| *mac)
    }

    /// Ask the link who has `ip`, unless we asked less than [`SOLICIT_INTERVAL`] ago.
    pub fn solicit(
        &mut self,
        ip: Ipv4Addr,
        tap: &mut TapWriter,
        net: &VirtualNetwork,
        now: Instant,
    ) {
        if !is_unicast(ip) || net.is_ours(ip) {
            return;
        }
        if let Some(at) = self.soliciting.get(&ip)
            && now < *at + SOLICIT_INTERVAL
        {
            return;
        }
        if self.soliciting.len() >= MAX_SOLICITING && !self.soliciting.contains_key(&ip) {
            // Forget requests nobody answered for a while; if all are recent, skip this one.
            self.soliciting
                .retain(|_, at| now < *at + SOLICIT_INTERVAL * 4);
            if self.soliciting.len() >= MAX_SOLICITING {
                return;
            }
        }
        self.soliciting.insert(ip, now);
        self.stats.solicitations += 1;
        emit::arp_request(tap, net, ip);
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    #[test]
    fn learns_unicast_pairs_and_reports_news_once() {
        let mut n = Neighbors::default();
        let ip = Ipv4Addr::new(10, 0, 2, 100);
        let t = Instant::from_secs(1);
        assert!(n.learn(ip, MAC, t));
        assert!(!n.learn(ip, MAC, t));
        assert_eq!(n.lookup(ip), Some(MAC));
        let moved = EthernetAddress([2, 0, 0, 0, 0, 2]);
        assert!(n.learn(ip, moved, t));
        assert_eq!(n.lookup(ip), Some(moved));
        assert!(!n.learn(Ipv4Addr::UNSPECIFIED, MAC, t));
        assert!(!n.learn(Ipv4Addr::new(10, 0, 2, 5), EthernetAddress::BROADCAST, t));
        assert_eq!(n.len(), 1);
    }

    #[test]
    fn table_is_bounded() {
        let mut n = Neighbors::default();
        for i in 0..(MAX_NEIGHBORS as u32 * 3) {
            let ip = Ipv4Addr::from(0x0a00_0000 + i + 1);
            n.learn(ip, MAC, Instant::from_millis(i64::from(i)));
        }
        assert_eq!(n.len(), MAX_NEIGHBORS);
        // The newest survive.
        assert!(
            n.lookup(Ipv4Addr::from(0x0a00_0000 + MAX_NEIGHBORS as u32 * 3))
                .is_some()
        );
    }
}

//! ICMP and ICMPv6 echo (ping): answered locally for our own addresses, relayed through
//! unprivileged host ping sockets (`SOCK_DGRAM` with `IPPROTO_ICMP` or `IPPROTO_ICMPV6`) for
//! everything else.
//!
//! The kernel gives each ping socket its own echo identifier, so every (guest, identifier,
//! destination) gets a socket of its own and replies are mapped back to the guest's
//! identifier. Errors the host receives for a ping (unreachable, TTL exceeded) are passed on
//! as ICMP errors about the guest's request.
//!
//! When the host does not allow ping sockets for our group (`net.ipv4.ping_group_range`),
//! one warning is logged and the guest gets "communication administratively prohibited"
//! from the gateway: an honest answer, never a fabricated echo reply.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use mio::Interest;
use mio::unix::SourceFd;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpProtocol};
use socket2::{Protocol, Socket};

use super::Ctx;
use super::emit;
use super::errqueue;
use super::frame::GuestEcho;
use super::policy::{Unreachable, unreachable_reason};
use super::snapshot::{Failures, row};
use super::token::Kind;
use super::udp::{connect_dgram, error_source};
use crate::observe::report::{FlowState, FlowTable, Protocol as FlowProtocol, Traffic};
use crate::slab::{Id, Slab};

/// A ping flow idle this long is forgotten.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most ping flows at once; the least recently used makes room.
pub const MAX_ENTRIES: usize = 1024;
/// TTL of replies to pings of our own addresses, as slirp.
const LOCAL_TTL: u8 = 255;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

#[derive(Debug, Default, Clone, Copy)]
pub struct IcmpStats {
    pub local_replies: u64,
    pub forwarded: u64,
    pub replies: u64,
    pub errors: u64,
    pub refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PingKey {
    guest: IpAddr,
    ident: u16,
    dst: IpAddr,
}

struct Entry {
    key: PingKey,
    guest_mac: EthernetAddress,
    socket: Socket,
    last_used: Instant,
    /// For the flow table: when it was opened, what went each way.
    created: Instant,
    to_remote: Traffic,
    to_guest: Traffic,
}

#[derive(Default)]
pub struct Pinger {
    by_key: HashMap<PingKey, Id>,
    entries: Slab<Entry>,
    idle: BTreeSet<(Instant, Id)>,
    /// Ping sockets were refused once; we said so.
    warned: bool,
    pub stats: IcmpStats,
    /// Recent pings that could not be relayed, for the flow table.
    pub failures: Failures,
}

impl Pinger {
    /// One row per ping mapping (guest identifier and destination), for the flow table.
    pub fn snapshot(&self, now: Instant, table: &mut FlowTable) {
        let rows = self.entries.iter().map(|(_, e)| {
            let guest = format!("{} id {}", e.key.guest, e.key.ident);
            let ends = (guest, e.key.dst.to_string());
            let times = (e.created, e.last_used, now);
            let traffic = (e.to_remote, e.to_guest);
            row(FlowProtocol::Icmp, ends, FlowState::Open, times, traffic)
        });
        table.extend(self.entries.len(), rows);
    }

    /// Host ping sockets open (one per guest identifier and destination).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Answer a ping of one of our own addresses.
    pub fn reply_locally(&mut self, e: &GuestEcho<'_>, cx: &mut Ctx<'_>) {
        // The reply is as large as the request. One too large for the link (a guest that set
        // a bigger MTU on its side, or wrote the frame itself) is not answered, as replies
        // from the host that would not fit are not.
        if e.data.len() > cx.link.mtu.saturating_sub(emit::ip_header_len(e.src) + 8) {
            return;
        }
        self.stats.local_replies += 1;
        let net = cx.policy.net;
        emit::icmp_echo_reply(
            cx.tap, &net, e.src_mac, e.dst, e.src, e.ident, e.seq_no, e.data, LOCAL_TTL,
        );
    }

    /// Relay a ping to `dst` through a host ping socket.
    pub fn forward(&mut self, e: &GuestEcho<'_>, dst: IpAddr, cx: &mut Ctx<'_>) {
        let key = PingKey {
            guest: e.src,
            ident: e.ident,
            dst,
        };
        let id = match self.by_key.get(&key) {
            Some(&id) => id,
            None => match self.open(key, e.src_mac, cx) {
                Ok(id) => id,
                Err(err) => {
                    self.refuse(e, &err, cx);
                    return;
                }
            },
        };
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        self.idle.remove(&(entry.last_used, id));
        entry.last_used = cx.now;
        entry.guest_mac = e.src_mac;
        self.idle.insert((cx.now, id));
        let request = match dst {
            IpAddr::V4(_) => ICMP_ECHO_REQUEST,
            IpAddr::V6(_) => ICMPV6_ECHO_REQUEST,
        };
        let mut msg = Vec::with_capacity(8 + e.data.len());
        msg.extend_from_slice(&[request, 0, 0, 0]);
        msg.extend_from_slice(&e.ident.to_be_bytes()); // the kernel puts its own identifier here
        msg.extend_from_slice(&e.seq_no.to_be_bytes());
        msg.extend_from_slice(e.data);
        match entry.socket.send(&msg) {
            Ok(_) => {
                self.stats.forwarded += 1;
                entry.to_remote.count(msg.len());
            }
            Err(err) => log::debug!("ping {dst}: {err}"),
        }
    }

    fn open(
        &mut self,
        key: PingKey,
        guest_mac: EthernetAddress,
        cx: &mut Ctx<'_>,
    ) -> io::Result<Id> {
        if self.entries.len() >= MAX_ENTRIES
            && let Some(&(_, oldest)) = self.idle.first()
        {
            self.remove(oldest, cx);
        }
        let target = SocketAddr::from((key.dst, 0));
        let protocol = match key.dst {
            IpAddr::V4(_) => Protocol::ICMPV4,
            IpAddr::V6(_) => Protocol::ICMPV6,
        };
        let socket = connect_dgram(target, cx.policy.bind_for(&target), protocol)?;
        let id = self.entries.insert(Entry {
            key,
            guest_mac,
            socket,
            last_used: cx.now,
            created: cx.now,
            to_remote: Traffic::default(),
            to_guest: Traffic::default(),
        });
        let fd = self
            .entries
            .get(id)
            .expect("just inserted")
            .socket
            .as_raw_fd();
        if let Err(e) =
            cx.registry
                .register(&mut SourceFd(&fd), Kind::Ping.token(id), Interest::READABLE)
        {
            self.entries.remove(id);
            return Err(e);
        }
        self.by_key.insert(key, id);
        self.idle.insert((cx.now, id));
        Ok(id)
    }

    /// No ping socket: tell the guest why (the network is unreachable, or the gateway will not
    /// relay pings), and the user, once, when ping sockets are not allowed.
    fn refuse(&mut self, e: &GuestEcho<'_>, err: &io::Error, cx: &mut Ctx<'_>) {
        self.stats.refused += 1;
        let guest = format!("{} id {}", e.src, e.ident);
        let why = format!("no ping socket: {err}");
        self.failures
            .note(FlowProtocol::Icmp, (guest, e.dst), (cx.now, cx.now), why);
        if matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
            if !self.warned {
                self.warned = true;
                let range = &crate::hostinfo::get().ping_group_range;
                log::warn!(
                    "ping is not relayed: this host does not allow ping sockets for group {} (sysctl net.ipv4.ping_group_range = \"{range}\")",
                    nix::unistd::getegid()
                );
            }
        } else {
            log::debug!("ping {}: {err}", e.dst);
        }
        let net = cx.policy.net;
        let reason = unreachable_reason(err).unwrap_or(Unreachable::Prohibited);
        emit::icmp_unreachable(cx.tap, &net, e.src_mac, None, reason, e.ip_packet);
    }

    /// Replies (or errors) on a ping socket.
    pub fn on_host_event(&mut self, id: Id, cx: &mut Ctx<'_>, buf: &mut [u8]) {
        let Some(entry) = self.entries.get(id) else {
            return;
        };
        let net = cx.policy.net;
        let key = entry.key;
        let mac = entry.guest_mac;
        let fd = entry.socket.as_raw_fd();
        let mut replies = Traffic::default();
        loop {
            let n = match recv(fd, buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                // WouldBlock, or an error waiting in the queue (relayed below).
                Err(_) => break,
            };
            let msg = &buf[..n];
            let max_data = cx.link.mtu.saturating_sub(emit::ip_header_len(key.dst) + 8);
            let reply = match key.dst {
                IpAddr::V4(_) => ICMP_ECHO_REPLY,
                IpAddr::V6(_) => ICMPV6_ECHO_REPLY,
            };
            if msg.len() < 8 || msg[0] != reply || msg.len() - 8 > max_data {
                continue;
            }
            self.stats.replies += 1;
            replies.count(msg.len());
            let seq_no = u16::from_be_bytes([msg[6], msg[7]]);
            emit::icmp_echo_reply(
                cx.tap,
                &net,
                mac,
                key.dst,
                key.guest,
                key.ident,
                seq_no,
                &msg[8..],
                64,
            );
        }
        if let Some(entry) = self.entries.get_mut(id) {
            entry.to_guest.bytes += replies.bytes;
            entry.to_guest.packets += replies.packets;
        }
        self.relay_errors(id, cx);
    }

    /// ICMP errors about our pings, passed on about the guest's requests.
    fn relay_errors(&mut self, id: Id, cx: &mut Ctx<'_>) {
        let Some(entry) = self.entries.get(id) else {
            return;
        };
        let net = cx.policy.net;
        let mut sent = [0u8; emit::QUOTE_BUF];
        while let Some(err) = errqueue::take(entry.socket.as_fd(), &mut sent) {
            let Some((icmp_type, code)) = err.icmp else {
                continue;
            };
            self.stats.errors += 1;
            // The kernel hands back the request we sent, with its identifier: quote the
            // guest's instead.
            let len = err.payload_len.min(sent.len());
            if len >= 8 {
                sent[4..6].copy_from_slice(&entry.key.ident.to_be_bytes());
            }
            let proto = match entry.key.dst {
                IpAddr::V4(_) => IpProtocol::Icmp,
                IpAddr::V6(_) => IpProtocol::Icmpv6,
            };
            let quote = emit::rebuild_quote(
                entry.key.guest,
                entry.key.dst,
                proto,
                err.payload_len,
                &sent[..len],
            );
            let from = error_source(&err, entry.key.dst);
            emit::icmp_error(
                cx.tap,
                &net,
                entry.guest_mac,
                from,
                entry.key.guest,
                icmp_type,
                code,
                err.info,
                &quote,
            );
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.idle.first().map(|&(t, _)| t + IDLE_TIMEOUT)
    }

    pub fn expire(&mut self, cx: &mut Ctx<'_>) {
        while let Some(&(t, id)) = self.idle.first() {
            if t + IDLE_TIMEOUT > cx.now {
                break;
            }
            self.remove(id, cx);
        }
    }

    fn remove(&mut self, id: Id, cx: &mut Ctx<'_>) {
        if let Some(entry) = self.entries.remove(id) {
            self.idle.remove(&(entry.last_used, id));
            self.by_key.remove(&entry.key);
            let _ = cx
                .registry
                .deregister(&mut SourceFd(&entry.socket.as_raw_fd()));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Local echo replies, through a whole [`Stack`](crate::stack::Stack) whose TAP is a
    //! socketpair.

    use std::os::fd::AsFd;

    use crate::net::VirtualNetwork;
    use crate::stack::{Stack, StackConfig};
    use crate::testkit;

    fn echo_request(net: &VirtualNetwork, data: &[u8]) -> Vec<u8> {
        testkit::echo_frame(net.guest.into(), net.gateway.into(), 1, 1, data)
    }

    /// Found by the `stateful` fuzz target: a 1676-byte ping of the gateway at MTU 1500 got a
    /// 1690-byte reply.
    #[test]
    fn local_replies_never_exceed_the_link_mtu() {
        let (ours, theirs) = crate::testkit::tap_pair();
        let net = VirtualNetwork::default();
        let mut stack = Stack::new(ours, StackConfig::new(net, 1500)).unwrap();
        let mut buf = vec![0u8; 70_000];
        for (len, answered) in [(1472, true), (1473, false), (3000, false), (0, true)] {
            stack.inject_frame(&echo_request(&net, &vec![7u8; len]));
            match crate::tap::read_frame(theirs.as_fd(), &mut buf) {
                Ok(n) => {
                    assert!(answered, "a {len}-byte ping was answered");
                    assert_eq!(n, 14 + 20 + 8 + len);
                }
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
                    assert!(!answered, "a {len}-byte ping was not answered");
                }
            }
        }
    }
}

//! The DNS forwarder at 10.0.2.3:53, UDP side. (TCP queries take the TCP relay to the same
//! upstreams, in the same order; see [`Upstreams`].)
//!
//! Each guest query is sent unchanged to the preferred upstream resolver from a fresh
//! connected socket (so the kernel picks a random source port and reports ICMP errors). If
//! that upstream refuses or stays silent for a second, the next one is asked too, and the
//! first good answer wins. Upstreams that fail lose the preference to the next, so one dead
//! resolver costs one timeout, not one per query. When every upstream has failed the guest
//! gets SERVFAIL at once instead of waiting for its own timeouts.
//!
//! The upstreams are the host's nameservers from `/etc/resolv.conf` (re-read when it changes)
//! unless `--dns-upstream` names others. Answers larger than the guest link carries are
//! replaced by a truncated answer (TC set), so the guest retries over TCP.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use mio::Interest;
use mio::net::UdpSocket;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;

use super::Ctx;
use super::emit::{self, UDP_LEN};
use super::frame::GuestUdp;
use super::token::Kind;
use super::udp::connect_udp;
use crate::resolv::ResolvConf;
use crate::slab::{Id, Slab};

/// How long an upstream has to answer before the next one is asked too.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the last upstream gets before the guest is told SERVFAIL.
const LAST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries in flight at once; past this the guest gets SERVFAIL.
pub const MAX_QUERIES: usize = 1024;
/// Upstreams tried per query.
const MAX_ATTEMPTS: usize = 8;
/// How often a resolv.conf-based upstream list checks the file for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

const HEADER_LEN: usize = 12;
const RCODE_SERVFAIL: u8 = 2;

/// The upstream resolvers, in order of preference.
pub struct Upstreams {
    list: Vec<SocketAddr>,
    preferred: usize,
    resolv_conf: Option<ResolvConfWatch>,
}

struct ResolvConfWatch {
    path: PathBuf,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Upstreams {
    /// A fixed list (`--dns-upstream`).
    pub fn fixed(list: Vec<SocketAddr>) -> Self {
        Upstreams {
            list,
            preferred: 0,
            resolv_conf: None,
        }
    }

    /// The nameservers of a resolv.conf, re-read when the file changes.
    pub fn from_resolv_conf(path: PathBuf) -> Self {
        let mut u = Upstreams {
            list: Vec::new(),
            preferred: 0,
            resolv_conf: Some(ResolvConfWatch {
                path,
                modified: None,
                checked: None,
            }),
        };
        u.reload();
        u
    }

    fn reload(&mut self) {
        let Some(watch) = &mut self.resolv_conf else {
            return;
        };
        let modified = std::fs::metadata(&watch.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified == watch.modified {
            return;
        }
        watch.modified = modified;
        self.list = ResolvConf::read(&watch.path).nameservers;
        self.preferred = 0;
        if self.list.is_empty() {
            log::warn!(
                "no nameserver in {}: DNS queries to the namespace's resolver will fail (use --dns-upstream)",
                watch.path.display()
            );
        } else {
            log::debug!(
                "DNS upstreams from {}: {:?}",
                watch.path.display(),
                self.list
            );
        }
    }

    /// Check resolv.conf for changes, at most every few seconds.
    pub fn refresh(&mut self, now: Instant) {
        let due = match &self.resolv_conf {
            Some(w) => w.checked.is_none_or(|t| now - t >= RELOAD_INTERVAL),
            None => false,
        };
        if due {
            self.reload();
            if let Some(w) = &mut self.resolv_conf {
                w.checked = Some(now);
            }
        }
    }

    /// All upstreams, the preferred one first.
    pub fn ordered(&self) -> Vec<SocketAddr> {
        let n = self.list.len();
        (0..n.min(MAX_ATTEMPTS))
            .map(|i| self.list[(self.preferred + i) % n])
            .collect()
    }

    fn answered(&mut self, addr: SocketAddr) {
        if let Some(i) = self.list.iter().position(|a| *a == addr) {
            self.preferred = i;
        }
    }

    fn failed(&mut self, addr: SocketAddr) {
        if self.list.get(self.preferred) == Some(&addr) && !self.list.is_empty() {
            self.preferred = (self.preferred + 1) % self.list.len();
            log::debug!(
                "DNS upstream {addr} failed; preferring {}",
                self.list[self.preferred]
            );
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DnsStats {
    pub queries: u64,
    pub answered: u64,
    pub truncated: u64,
    pub servfail: u64,
    pub failovers: u64,
    pub malformed: u64,
}

struct Query {
    guest: SocketAddr,
    guest_mac: EthernetAddress,
    txid: u16,
    message: Box<[u8]>,
    candidates: Vec<SocketAddr>,
    /// Index into `candidates` of the next upstream to ask.
    next: usize,
    attempts: Vec<Id>,
    deadline: Instant,
}

struct Attempt {
    query: Id,
    socket: UdpSocket,
    upstream: SocketAddr,
}

#[derive(Default)]
pub struct DnsForwarder {
    queries: Slab<Query>,
    attempts: Slab<Attempt>,
    by_guest: HashMap<(SocketAddr, u16), Id>,
    deadlines: BTreeSet<(Instant, Id)>,
    ready: Vec<Id>,
    pub stats: DnsStats,
}

impl DnsForwarder {
    pub fn in_flight(&self) -> usize {
        self.queries.len()
    }

    /// A query from the guest to 10.0.2.3:53 or [fd00::3]:53.
    pub fn on_guest_query(
        &mut self,
        d: &GuestUdp<'_>,
        upstreams: &mut Upstreams,
        cx: &mut Ctx<'_>,
    ) {
        let msg = d.payload;
        if msg.len() < HEADER_LEN || msg[2] & 0x80 != 0 {
            self.stats.malformed += 1;
            return;
        }
        self.stats.queries += 1;
        let txid = u16::from_be_bytes([msg[0], msg[1]]);
        if self.by_guest.contains_key(&(d.src, txid)) {
            // The guest retried a query we are still working on.
            return;
        }
        upstreams.refresh(cx.now);
        let candidates = upstreams.ordered();
        if candidates.is_empty() || self.queries.len() >= MAX_QUERIES {
            self.stats.servfail += 1;
            reply_to_guest(
                cx,
                d.src_mac,
                d.src,
                &synthesize(msg, RCODE_SERVFAIL, false),
            );
            return;
        }
        let id = self.queries.insert(Query {
            guest: d.src,
            guest_mac: d.src_mac,
            txid,
            message: msg.into(),
            candidates,
            next: 0,
            attempts: Vec::new(),
            deadline: cx.now,
        });
        self.by_guest.insert((d.src, txid), id);
        if !self.ask_next(id, upstreams, cx) {
            self.give_up(id, cx);
        }
    }

    /// Send the query to the next untried upstream; false if none is left.
    fn ask_next(&mut self, id: Id, upstreams: &mut Upstreams, cx: &mut Ctx<'_>) -> bool {
        let Some(q) = self.queries.get_mut(id) else {
            return false;
        };
        while q.next < q.candidates.len() {
            let upstream = q.candidates[q.next];
            q.next += 1;
            let sent = connect_udp(upstream, cx.policy.bind_for(&upstream)).and_then(|socket| {
                socket.send(&q.message)?;
                Ok(socket)
            });
            let socket = match sent {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("DNS upstream {upstream}: {e}");
                    upstreams.failed(upstream);
                    continue;
                }
            };
            let aid = self.attempts.insert(Attempt {
                query: id,
                socket,
                upstream,
            });
            let attempt = self.attempts.get_mut(aid).expect("just inserted");
            if cx
                .registry
                .register(
                    &mut attempt.socket,
                    Kind::DnsQuery.token(aid),
                    Interest::READABLE,
                )
                .is_err()
            {
                self.attempts.remove(aid);
                continue;
            }
            q.attempts.push(aid);
            self.deadlines.remove(&(q.deadline, id));
            let last = q.next >= q.candidates.len();
            q.deadline = cx.now
                + if last {
                    LAST_ATTEMPT_TIMEOUT
                } else {
                    ATTEMPT_TIMEOUT
                };
            self.deadlines.insert((q.deadline, id));
            if q.attempts.len() > 1 {
                self.stats.failovers += 1;
            }
            return true;
        }
        false
    }

    /// An upstream socket is readable.
    pub fn on_host_event(&mut self, attempt: Id) {
        self.ready.push(attempt);
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Read answers (or errors) from ready upstream sockets.
    pub fn service_ready(&mut self, upstreams: &mut Upstreams, cx: &mut Ctx<'_>, buf: &mut [u8]) {
        for aid in std::mem::take(&mut self.ready) {
            self.receive(aid, upstreams, cx, buf);
        }
    }

    fn receive(&mut self, aid: Id, upstreams: &mut Upstreams, cx: &mut Ctx<'_>, buf: &mut [u8]) {
        loop {
            let Some(attempt) = self.attempts.get(aid) else {
                return;
            };
            let (qid, upstream) = (attempt.query, attempt.upstream);
            let Some(q) = self.queries.get(qid) else {
                return;
            };
            match attempt.socket.recv(buf) {
                Ok(n) => {
                    let answer = &buf[..n];
                    if n < HEADER_LEN
                        || answer[..2] != q.txid.to_be_bytes()
                        || answer[2] & 0x80 == 0
                    {
                        // Not the answer to this query; keep listening.
                        continue;
                    }
                    upstreams.answered(upstream);
                    self.stats.answered += 1;
                    let (mac, guest) = (q.guest_mac, q.guest);
                    let max_payload = cx
                        .link
                        .mtu
                        .saturating_sub(emit::ip_header_len(guest.ip()) + UDP_LEN);
                    if n > max_payload {
                        self.stats.truncated += 1;
                        reply_to_guest(
                            cx,
                            mac,
                            guest,
                            &synthesize(answer, header_rcode(answer), true),
                        );
                    } else {
                        reply_to_guest(cx, mac, guest, answer);
                    }
                    self.finish(qid, cx);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("DNS upstream {upstream}: {e}");
                    upstreams.failed(upstream);
                    self.drop_attempt(aid, qid, cx);
                    let live = self
                        .queries
                        .get(qid)
                        .is_some_and(|q| !q.attempts.is_empty());
                    if !live && !self.ask_next(qid, upstreams, cx) {
                        self.give_up(qid, cx);
                    }
                    return;
                }
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    /// Ask the next upstream for queries whose current one is too slow; give up on queries
    /// with nobody left to ask.
    pub fn run_timers(&mut self, upstreams: &mut Upstreams, cx: &mut Ctx<'_>) {
        let mut due = Vec::new();
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > cx.now {
                break;
            }
            self.deadlines.pop_first();
            due.push(id);
        }
        for id in due {
            if let Some(q) = self.queries.get(id)
                && let Some(&last) = q.attempts.last()
                && let Some(a) = self.attempts.get(last)
            {
                upstreams.failed(a.upstream);
            }
            if !self.ask_next(id, upstreams, cx) {
                self.give_up(id, cx);
            }
        }
    }

    fn give_up(&mut self, id: Id, cx: &mut Ctx<'_>) {
        if let Some(q) = self.queries.get(id) {
            self.stats.servfail += 1;
            let reply = synthesize(&q.message, RCODE_SERVFAIL, false);
            reply_to_guest(cx, q.guest_mac, q.guest, &reply);
        }
        self.finish(id, cx);
    }

    fn drop_attempt(&mut self, aid: Id, qid: Id, cx: &mut Ctx<'_>) {
        if let Some(mut a) = self.attempts.remove(aid) {
            let _ = cx.registry.deregister(&mut a.socket);
        }
        if let Some(q) = self.queries.get_mut(qid) {
            q.attempts.retain(|&x| x != aid);
        }
    }

    fn finish(&mut self, id: Id, cx: &mut Ctx<'_>) {
        let Some(q) = self.queries.remove(id) else {
            return;
        };
        self.by_guest.remove(&(q.guest, q.txid));
        self.deadlines.remove(&(q.deadline, id));
        for aid in q.attempts {
            if let Some(mut a) = self.attempts.remove(aid) {
                let _ = cx.registry.deregister(&mut a.socket);
            }
        }
    }
}

/// Answer the guest from the forwarder's address of its family.
fn reply_to_guest(cx: &mut Ctx<'_>, mac: EthernetAddress, guest: SocketAddr, message: &[u8]) {
    let net = cx.policy.net;
    let server = SocketAddr::new(net.dns_for(guest.ip()), 53);
    emit::udp_datagram(cx.tap, &net, mac, server, guest, message);
}

fn header_rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(0, |b| b & 0x0f)
}

/// The end of the question section of a one-question message, if it parses.
fn question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < HEADER_LEN || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = HEADER_LEN;
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 == 0xc0 {
            i += 2;
            break;
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
    }
    let end = i + 4;
    (end <= msg.len()).then_some(end)
}

/// A response made from `msg` (a query or an answer): its header and question, no records,
/// with the given rcode and TC flag.
pub fn synthesize(msg: &[u8], rcode: u8, truncated: bool) -> Vec<u8> {
    let mut out = msg[..HEADER_LEN.min(msg.len())].to_vec();
    out.resize(HEADER_LEN, 0);
    let question = question_end(msg);
    if let Some(end) = question {
        out.extend_from_slice(&msg[HEADER_LEN..end]);
    }
    let rd = out[2] & 0x01;
    out[2] = 0x80 | (out[2] & 0x78) | rd | if truncated { 0x02 } else { 0 };
    out[3] = 0x80 | (rcode & 0x0f);
    out[4..6].copy_from_slice(&u16::from(question.is_some()).to_be_bytes());
    out[6..12].fill(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for "a.example" A/IN with id 0x1234 and RD set.
    fn query() -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        q
    }

    #[test]
    fn servfail_keeps_id_question_and_rd() {
        let r = synthesize(&query(), RCODE_SERVFAIL, false);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2], 0x81, "QR and RD");
        assert_eq!(r[3] & 0x0f, RCODE_SERVFAIL);
        assert_eq!(&r[4..6], &[0, 1]);
        assert_eq!(&r[12..], &query()[12..]);
    }

    #[test]
    fn truncated_answer_has_tc_and_no_records() {
        let mut answer = query();
        answer[2] |= 0x80;
        answer[7] = 40; // 40 answers (not actually present)
        let r = synthesize(&answer, 0, true);
        assert_eq!(r[2] & 0x02, 0x02, "TC set");
        assert_eq!(&r[6..12], &[0; 6]);
        assert_eq!(r.len(), query().len());
    }

    #[test]
    fn garbage_questions_do_not_panic() {
        for msg in [
            &b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f"[..],
            b"\x00",
            b"",
        ] {
            let r = synthesize(msg, RCODE_SERVFAIL, false);
            assert!(r.len() >= HEADER_LEN);
        }
        let mut q = query();
        q.truncate(15);
        assert_eq!(question_end(&q), None);
    }

    #[test]
    fn failed_upstream_loses_preference() {
        let a: SocketAddr = "127.0.0.2:53".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut u = Upstreams::fixed(vec![a, b]);
        assert_eq!(u.ordered(), [a, b]);
        u.failed(a);
        assert_eq!(u.ordered(), [b, a]);
        u.failed(a);
        assert_eq!(
            u.ordered(),
            [b, a],
            "only the preferred one moves the preference"
        );
        u.answered(a);
        assert_eq!(u.ordered(), [a, b]);
    }
}

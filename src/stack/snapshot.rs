//! The stack's side of observation: the flow table and the counters, built on the stack's
//! own thread from its tables (see [`crate::observe`] for how other threads ask for them),
//! and the ring of recent failures the flow table shows.
//!
//! Nothing here runs per frame: the tables count as they go (plain `u64` fields), and this
//! file only reads them when asked. A flow table is at most
//! [`MAX_ROWS`](crate::observe::report::MAX_ROWS) rows, whatever the tables hold.

use std::collections::VecDeque;

use smoltcp::time::Instant;

use super::Stack;
use super::frame::DropReason;
use crate::observe::report::{
    self, Buffers, CaptureCounts, Dhcp, Dns, Drops, FlowCounts, FlowRow, FlowState, FlowTable,
    Frames, MAX_FAILURES, Protocol, Refusals, Traffic,
};
use crate::observe::{ObserveError, Observer, Stats};

/// Milliseconds from `since` to `now` (0 if `now` is earlier).
pub fn millis_between(since: Instant, now: Instant) -> u64 {
    if now > since {
        (now - since).total_millis()
    } else {
        0
    }
}

/// A row of the flow table with nothing buffered and no failure: `times` is when the flow
/// began, when it was last active, and now; `traffic` what went to the remote end and back.
pub fn row(
    proto: Protocol,
    (guest, remote): (String, String),
    state: FlowState,
    (started, last, now): (Instant, Instant, Instant),
    (to_remote, to_guest): (Traffic, Traffic),
) -> FlowRow {
    FlowRow {
        proto,
        inbound: false,
        guest,
        remote,
        state,
        age_ms: millis_between(started, now),
        idle_ms: millis_between(last, now),
        to_remote,
        to_guest,
        buffered_to_remote: 0,
        buffered_to_guest: 0,
        why: None,
    }
}

/// A flow that was refused or failed, kept to say why.
#[derive(Debug, Clone)]
struct Failure {
    proto: Protocol,
    guest: String,
    remote: String,
    started: Instant,
    at: Instant,
    why: String,
}

/// The last [`MAX_FAILURES`] refused or failed flows, the most recent first.
#[derive(Debug, Default)]
pub struct Failures {
    ring: VecDeque<Failure>,
}

impl Failures {
    /// Remember that a flow of `proto` from `guest` to `remote`, begun at `started`, failed
    /// at `at` for `why`.
    pub fn note(
        &mut self,
        proto: Protocol,
        (guest, remote): (impl ToString, impl ToString),
        (started, at): (Instant, Instant),
        why: impl Into<String>,
    ) {
        if self.ring.len() >= MAX_FAILURES {
            self.ring.pop_back();
        }
        self.ring.push_front(Failure {
            proto,
            guest: guest.to_string(),
            remote: remote.to_string(),
            started,
            at,
            why: why.into(),
        });
    }
}

impl Stack {
    /// Every flow now (up to the table's bound), then the recent failures, most recent first.
    pub fn flow_table(&self) -> FlowTable {
        let now = self.now();
        let mut table = FlowTable::default();
        self.tcp.snapshot(now, &mut table);
        self.udp.snapshot(now, &mut table);
        self.pinger.snapshot(now, &mut table);
        let rings = [
            &self.tcp.failures,
            &self.udp.failures,
            &self.pinger.failures,
            &self.failures,
        ];
        let mut failures: Vec<&Failure> = rings.iter().flat_map(|f| f.ring.iter()).collect();
        failures.sort_by_key(|f| std::cmp::Reverse(f.at));
        for f in failures.into_iter().take(MAX_FAILURES) {
            let ends = (f.guest.clone(), f.remote.clone());
            let times = (f.started, f.at, now);
            let none = (Traffic::default(), Traffic::default());
            table.flows.push(FlowRow {
                why: Some(f.why.clone()),
                ..row(f.proto, ends, FlowState::Failed, times, none)
            });
        }
        table
    }

    /// The counters, grouped as `usernet stats` shows them.
    pub fn counters(&self) -> Stats {
        let tcp = &self.tcp.stats;
        let udp = &self.udp.stats;
        let icmp = &self.pinger.stats;
        let tx = &self.tx.stats;
        let mut drops = Drops {
            over_bound: tx.dropped + udp.dropped,
            policy: self.stats.policy_refusals + tcp.refused_by_policy,
            no_flow: tcp.reset_unknown,
            ..Drops::default()
        };
        for reason in DropReason::ALL {
            let n = self.stats.drops[reason as usize];
            if n == 0 {
                continue;
            }
            if is_malformed(reason) {
                drops.malformed += n;
            } else {
                drops.unsupported += n;
            }
            drops.by_reason.insert(format!("{reason:?}"), n);
        }
        // A frame whose vnet header lied is malformed too (see `vnet::accept`).
        if self.stats.drops_bad_vnet_header > 0 {
            drops.malformed += self.stats.drops_bad_vnet_header;
            drops
                .by_reason
                .insert("VnetHeader".into(), self.stats.drops_bad_vnet_header);
        }
        Stats {
            uptime_ms: self.epoch.elapsed().as_millis() as u64,
            frames: Frames {
                from_guest: Traffic {
                    bytes: self.stats.bytes_in,
                    packets: self.stats.frames_in,
                },
                to_guest: Traffic {
                    bytes: tx.bytes,
                    packets: tx.frames,
                },
                deferred: tx.deferred,
            },
            drops,
            refusals: Refusals {
                policy: self.stats.policy_refusals + tcp.refused_by_policy,
                over_bound: tcp.refused_over_limit + udp.refused_full + self.forwards.stats.refused,
                host_refused: tcp.refused,
                unreachable: tcp.unreachable + icmp.refused,
                timed_out: tcp.connect_timeouts,
                abandoned: tcp.abandoned,
                evicted: tcp.evicted,
            },
            buffers: Buffers {
                used: self.tcp.buffer_memory() as u64,
                peak: tcp.buffers.peak as u64,
                limit: self.tcp.buffer_limit() as u64,
                starved: tcp.buffers.starved,
                direct_to_host: tcp.direct_to_host,
                direct_to_guest: tcp.direct_to_guest,
            },
            flows: FlowCounts {
                tcp: self.tcp.len() as u64,
                udp: self.udp.len() as u64,
                icmp: self.pinger.len() as u64,
                tcp_opened: tcp.opened,
                tcp_inbound: tcp.inbound,
                udp_created: udp.entries_created,
                pings_forwarded: icmp.forwarded,
            },
            dns: Dns {
                queries: self.dns.stats.queries,
                answered: self.dns.stats.answered,
                failovers: self.dns.stats.failovers,
                truncated: self.dns.stats.truncated,
                servfail: self.dns.stats.servfail,
                malformed: self.dns.stats.malformed,
            },
            dhcp: Dhcp {
                leases: self.dhcp.leases() as u64,
                offers: self.dhcp.stats.offers,
                acks: self.dhcp.stats.acks,
                naks: self.dhcp.stats.naks,
            },
            capture: self
                .tx
                .capture
                .as_ref()
                .map(|c| CaptureCounts::clone(c.counts())),
        }
    }

    /// The counters on one line, for the `--debug` summary at exit.
    pub fn summary(&self) -> String {
        self.counters().render().trim_end().replace('\n', "; ")
    }

    /// Count a guest flow the policy refused, and remember it in the flow table.
    pub(super) fn note_policy_refusal(
        &mut self,
        proto: Protocol,
        ends: (impl ToString, impl ToString),
        now: Instant,
        why: &str,
    ) {
        self.stats.policy_refusals += 1;
        self.failures
            .note(proto, ends, (now, now), format!("refused by policy: {why}"));
    }
}

/// Whether a frame dropped for `reason` was malformed (rather than well formed and of a kind
/// usernet does not relay).
fn is_malformed(reason: DropReason) -> bool {
    matches!(
        reason,
        DropReason::Runt
            | DropReason::Ipv4Header
            | DropReason::Ipv6Header
            | DropReason::TcpHeader
            | DropReason::UdpHeader
            | DropReason::Source
    )
}

/// The stack as an [`Observer`], for an API served on the stack's own thread.
impl Observer for Stack {
    fn flows(&mut self) -> Result<FlowTable, ObserveError> {
        Ok(self.flow_table())
    }

    fn stats(&mut self) -> Result<Stats, ObserveError> {
        Ok(self.counters())
    }
}

// The report's bound is what the snapshot relies on for its cost.
const _: () = assert!(report::MAX_ROWS >= MAX_FAILURES);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_the_most_recent_few() {
        let mut f = Failures::default();
        let t = Instant::from_millis(0);
        for n in 0..(MAX_FAILURES + 5) {
            f.note(Protocol::Tcp, (n, "x"), (t, t), "why");
        }
        assert_eq!(f.ring.len(), MAX_FAILURES);
        assert_eq!(f.ring[0].guest, (MAX_FAILURES + 4).to_string());
        assert_eq!(
            millis_between(Instant::from_millis(5), Instant::from_millis(2)),
            0
        );
        assert_eq!(
            millis_between(Instant::from_millis(2), Instant::from_millis(5)),
            3
        );
    }
}

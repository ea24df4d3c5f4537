//! What the flow table shows of a TCP flow: its [`Activity`] (kept up to date by the relay
//! with a few additions per pass) and the row built from it on request.

use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;

use super::{Flow, FlowKey, Phase, TcpFlows};
use crate::observe::report::{FlowRow, FlowState, FlowTable, Protocol, Traffic};
use crate::stack::snapshot::{Failures, row};

/// A flow's age, last activity and traffic each way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Activity {
    pub started: Instant,
    pub last: Instant,
    /// Opened through a published port (slirp4netns-style forward), not by the guest.
    pub inbound: bool,
    /// Guest segments received; bytes written to the host.
    pub to_remote: Traffic,
    /// Segments sent to the guest; bytes read from the host.
    pub to_guest: Traffic,
}

impl Activity {
    pub fn new(now: Instant, inbound: bool) -> Self {
        Activity {
            started: now,
            last: now,
            inbound,
            to_remote: Traffic::default(),
            to_guest: Traffic::default(),
        }
    }

    /// A segment from the guest.
    #[inline]
    pub fn guest_sent(&mut self, now: Instant) {
        self.to_remote.packets += 1;
        self.last = now;
    }

    /// `bytes` read from the host.
    #[inline]
    pub fn host_sent(&mut self, bytes: u64, now: Instant) {
        if bytes > 0 {
            self.to_guest.bytes += bytes;
            self.last = now;
        }
    }
}

impl Failures {
    /// Remember a TCP flow that failed at `at`, begun at `started`.
    pub(super) fn note_tcp(
        &mut self,
        key: FlowKey,
        (started, at): (Instant, Instant),
        why: impl Into<String>,
    ) {
        self.note(Protocol::Tcp, (key.guest, key.remote), (started, at), why);
    }
}

impl TcpFlows {
    /// One row per flow, for the flow table.
    pub fn snapshot(&self, now: Instant, table: &mut FlowTable) {
        let rows = self.flows.iter().map(|(_, flow)| flow_row(flow, now));
        table.extend(self.flows.len(), rows);
    }

    /// The memory the flows' rings may hold together (`--max-buffer-memory`).
    pub fn buffer_limit(&self) -> usize {
        self.config.buffer_memory
    }
}

fn flow_row(flow: &Flow, now: Instant) -> FlowRow {
    let a = &flow.activity;
    let (state, buffered_to_remote, buffered_to_guest) = match &flow.phase {
        Phase::Connecting { .. } => (FlowState::Connecting, 0, 0),
        Phase::Open(conn) => {
            let sock = conn.sockets.get::<tcp::Socket>(conn.handle);
            (
                state_of(flow, sock.state()),
                sock.recv_queue() as u64,
                sock.send_queue() as u64,
            )
        }
    };
    let ends = (flow.key.guest.to_string(), flow.key.remote.to_string());
    let times = (a.started, a.last, now);
    FlowRow {
        inbound: a.inbound,
        buffered_to_remote,
        buffered_to_guest,
        ..row(Protocol::Tcp, ends, state, times, (a.to_remote, a.to_guest))
    }
}

/// An open flow's state as the table names it: which sides have finished sending.
fn state_of(flow: &Flow, socket: State) -> FlowState {
    let host = &flow.host;
    if matches!(socket, State::Listen | State::SynSent | State::SynReceived) {
        return FlowState::Connecting;
    }
    if host.failed || host.reset || socket == State::Closed {
        return FlowState::Closing;
    }
    let guest_done = flow.guest_fin || host.write_shut;
    match (guest_done, host.eof) {
        (false, false) => FlowState::Open,
        (true, true) => FlowState::Closing,
        _ => FlowState::HalfClosed,
    }
}

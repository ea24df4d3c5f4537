//! Seeing inside the network: the live flow table, the counters and the packet capture.
//!
//! What this module owns:
//! - [`report`]: what a flow row and the counters are, as the API sends them (JSON) and as
//!   `usernet flows` and `usernet stats` print them. The stack fills them in
//!   (`crate::stack::snapshot`); nothing here reads the stack's tables itself;
//! - [`probe`]: how a thread other than the stack's asks for them. The REST API runs on the
//!   control thread; the stack's tables belong to the stack's thread and are never locked.
//!   A request goes over a bounded channel and wakes the stack's poller; the stack builds the
//!   answer between two events (a copy of at most [`report::MAX_ROWS`] rows) and sends it
//!   back. The datapath never waits on a reader; a reader waits at most one turn of the
//!   stack's loop;
//! - [`capture`]: `--pcap FILE`, every frame on the guest link in pcap format, written by a
//!   thread of its own so a slow disk never holds up a frame.
//!
//! What it leaves to others: `usernet flows` and `usernet stats` are clients, a front end's
//! (`crate::client::observe`), so that this module stays below the stack that uses it; the
//! counters themselves are plain `u64` fields of the tables
//! that count (`TcpStats`, `UdpStats`...), incremented on the stack's thread; the API routes
//! are the API's ([`crate::api::rest`], [`crate::api::slirp`]).

pub mod capture;
pub mod probe;
pub mod report;

pub use report::{FlowRow, FlowState, FlowTable, Stats, Traffic};

/// Where the flow table and the counters come from, for an API protocol: the stack itself
/// (when the API runs on the stack's thread) or a [`probe::Probe`] to it.
pub trait Observer {
    fn flows(&mut self) -> Result<FlowTable, ObserveError>;
    fn stats(&mut self) -> Result<Stats, ObserveError>;
}

/// Why the flow table or the counters could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// This usernet has no network stack (`--net host` or `--net none`).
    #[error("this usernet has no network stack (--net host or none)")]
    NoStack,
    /// The stack did not answer in time (it is stopping, or too many readers are waiting).
    #[error("the network stack is busy or stopping; try again")]
    Busy,
}

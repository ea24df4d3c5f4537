//! How the control thread (the REST API of `usernet run`) asks the stack's thread for the flow
//! table and the counters, and (with `--port-driver stack`) to add, list and remove the
//! stack's forwards, without sharing the stack's tables or locking them.
//!
//! A [`Probe`] sends a [`Query`] over a bounded channel and wakes the stack's poller (a
//! `mio::Waker` on the stack's registry). The stack's thread, on that token, answers every
//! query waiting ([`ProbeEnd::answer`]) between two events, and goes on. The datapath never
//! waits for a reader: the channel is bounded ([`QUEUE`]) and a full one is the reader's
//! "busy"; a reader waits at most [`ANSWER_TIMEOUT`], normally one turn of the stack's loop.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use mio::{Registry, Token, Waker};

use super::{FlowTable, ObserveError, Observer, Stats};
use crate::ports::{PortError, PortSpec, PortStatus};

/// Queries waiting for the stack at once; more are answered "busy".
const QUEUE: usize = 8;
/// How long a reader waits for the stack's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a reader wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Flows,
    Stats,
    /// Publish a port through the stack's forwards.
    AddPort(PortSpec),
    /// Stop forwarding the port with this id.
    RemovePort(i64),
    /// The stack's forwards.
    ListPorts,
}

/// The stack's answer.
#[derive(Debug)]
pub enum Answer {
    Flows(FlowTable),
    Stats(Box<Stats>),
    PortAdded(Result<PortStatus, PortError>),
    PortRemoved(Result<(), PortError>),
    Ports(Vec<PortStatus>),
}

/// Where a query stands between its reader and the stack. A reader that gives up marks it
/// [`ABANDONED`]; the stack acts only on a query it could mark [`TAKEN`], and a reader that
/// finds its query taken waits for the answer (made at once, on the stack's thread). So a
/// query is either acted on and its answer read, or neither: a client told "busy" never finds
/// its port published after all.
const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

type Request = (Query, Arc<AtomicU8>, SyncSender<Answer>);

/// The reader's end: cloneable, used from any thread.
#[derive(Clone)]
pub struct Probe {
    requests: SyncSender<Request>,
    waker: Arc<Waker>,
}

/// The stack's end: answers on the stack's thread.
pub struct ProbeEnd {
    requests: Receiver<Request>,
}

/// A probe whose queries wake `token` on `registry` (the stack's poller).
pub fn channel(registry: &Registry, token: Token) -> io::Result<(Probe, ProbeEnd)> {
    let waker = Arc::new(Waker::new(registry, token)?);
    let (requests, receiver) = mpsc::sync_channel(QUEUE);
    Ok((Probe { requests, waker }, ProbeEnd { requests: receiver }))
}

impl Probe {
    /// Ask the stack, and wait for its answer.
    pub fn ask(&self, query: Query) -> Result<Answer, ObserveError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(PENDING));
        match self.requests.try_send((query, Arc::clone(&state), reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ObserveError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ObserveError::NoStack),
        }
        let waited = match self.waker.wake() {
            Ok(()) => answer.recv_timeout(ANSWER_TIMEOUT),
            Err(_) => Err(RecvTimeoutError::Timeout),
        };
        match waited {
            Ok(a) => Ok(a),
            Err(RecvTimeoutError::Timeout) => {
                let abandoned = state
                    .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if abandoned {
                    return Err(ObserveError::Busy);
                }
                // The stack took the query just now: its answer is being made.
                answer.recv().map_err(|_| ObserveError::NoStack)
            }
            Err(RecvTimeoutError::Disconnected) => Err(ObserveError::NoStack),
        }
    }
}

impl Observer for Probe {
    fn flows(&mut self) -> Result<FlowTable, ObserveError> {
        match self.ask(Query::Flows)? {
            Answer::Flows(table) => Ok(table),
            _ => Err(ObserveError::Busy),
        }
    }

    fn stats(&mut self) -> Result<Stats, ObserveError> {
        match self.ask(Query::Stats)? {
            Answer::Stats(stats) => Ok(*stats),
            _ => Err(ObserveError::Busy),
        }
    }
}

impl ProbeEnd {
    /// Answer every query waiting with `observe` (on the stack's thread). A query whose
    /// reader gave up is skipped, not acted on.
    pub fn answer(&self, mut observe: impl FnMut(Query) -> Answer) {
        while let Ok((query, state, reply)) = self.requests.try_recv() {
            let taken = state
                .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if taken {
                let _ = reply.try_send(observe(query));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    #[test]
    fn a_query_wakes_the_poller_and_gets_the_answer_made_on_its_thread() {
        let mut poll = Poll::new().unwrap();
        let (mut probe, end) = channel(poll.registry(), Token(5)).unwrap();
        let stack = std::thread::spawn(move || {
            let mut events = Events::with_capacity(4);
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
            assert_eq!(events.iter().next().map(|e| e.token()), Some(Token(5)));
            end.answer(|q| match q {
                Query::Flows => Answer::Flows(FlowTable {
                    flows: Vec::new(),
                    omitted: 7,
                }),
                Query::Stats => Answer::Stats(Box::default()),
                _ => Answer::Ports(Vec::new()),
            });
        });
        assert_eq!(probe.flows().unwrap().omitted, 7);
        stack.join().unwrap();
        // The stack is gone: the reader is told so rather than left waiting.
        assert_eq!(probe.stats(), Err(ObserveError::NoStack));
    }

    #[test]
    fn a_query_its_reader_gave_up_on_is_not_acted_on() {
        let poll = Poll::new().unwrap();
        let (probe, end) = channel(poll.registry(), Token(5)).unwrap();
        // A reader that queued its query and gave up before the stack came to it.
        let (reply, _gone) = mpsc::sync_channel(1);
        let abandoned = Arc::new(AtomicU8::new(ABANDONED));
        probe
            .requests
            .try_send((Query::RemovePort(1), abandoned, reply))
            .unwrap();
        // And one still waiting.
        let (reply, answer) = mpsc::sync_channel(1);
        let waiting = Arc::new(AtomicU8::new(PENDING));
        probe
            .requests
            .try_send((Query::Stats, Arc::clone(&waiting), reply))
            .unwrap();
        let mut acted = Vec::new();
        end.answer(|q| {
            acted.push(q);
            Answer::Stats(Box::default())
        });
        assert_eq!(acted, [Query::Stats]);
        assert_eq!(waiting.load(Ordering::Acquire), TAKEN);
        assert!(matches!(answer.try_recv(), Ok(Answer::Stats(_))));
    }
}

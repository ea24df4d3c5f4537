//! The parent's second thread: the REST API on `api.sock` and the builtin port driver's relay.
//!
//! They live apart from the guest's network stack so that a slow API client or a busy
//! published port never delays a guest frame, and so inbound relays get a core of their own.
//! Both are set up on the main thread (ports from `-p` must exist before COMMAND starts) and
//! then moved here with their own mio poller. With `--port-driver stack` the ports are the
//! stack's own forwards: the API reaches them on the stack's thread through its probe.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry};

use crate::api::rest::{self, RestApi};
use crate::api::{self, Info, Server};
use crate::observe::probe::Probe;
use crate::portdriver::parent::{self as forwarder, Forwarder, Ports};
use crate::ports::{PortError, PortManager, PortSpec, PortStatus};
use crate::slab::Id;
use crate::stack_ports::ProbedForwards;

/// How often idle API connections and UDP clients are swept.
const SWEEP: Duration = Duration::from_secs(5);

pub struct Control {
    poll: Poll,
    api: Server<RestApi>,
    inbound: Inbound,
}

/// What serves the ports the API publishes.
pub enum Inbound {
    /// Nothing: the API refuses to publish.
    None,
    /// The builtin port driver, whose relay runs on this thread.
    Relay(Box<Forwarder>),
    /// The stack's forwards, on the stack's thread.
    Stack(ProbedForwards),
}

impl Control {
    /// Listen on `api_sock`, serving `info`, the stack's flows and counters through `probe`,
    /// and publishing ports through `inbound`.
    pub fn new(
        api_sock: &Path,
        info: Info,
        limits: api::Limits,
        probe: Option<Probe>,
        inbound: Inbound,
    ) -> io::Result<Control> {
        let poll = Poll::new()?;
        let protocol = RestApi::new(info, limits).with_probe(probe);
        let settings = protocol.settings();
        let mut api = Server::bind(api_sock, protocol, settings)?;
        api.register(poll.registry())?;
        Ok(Control { poll, api, inbound })
    }

    /// Publish a port through the builtin port driver now (used for `-p`, before the thread
    /// starts; the stack's forwards are published on the stack's thread).
    pub fn publish(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
        match &mut self.inbound {
            Inbound::Relay(forwarder) => Ports {
                forwarder,
                registry: self.poll.registry(),
            }
            .add(spec),
            _ => Err(PortError("no PortDriver is available".into())),
        }
    }

    /// Serve on a thread of its own, until the process exits.
    pub fn spawn(self) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        loop {
            let sweep = self.api.has_connections()
                || matches!(&self.inbound, Inbound::Relay(f) if f.expiry_interval().is_some());
            let timeout = sweep.then_some(SWEEP);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("control thread: {e}");
                return;
            }
            let registry = self.poll.registry();
            for event in events.iter() {
                dispatch(&mut self.api, &mut self.inbound, registry, event.token());
            }
            if last_sweep.elapsed() >= SWEEP {
                last_sweep = Instant::now();
                self.api.expire(registry);
                if let Inbound::Relay(f) = &mut self.inbound {
                    f.expire(registry);
                }
            }
        }
    }
}

// The control thread's poller holds the port driver's kinds and the API's connections.
const _: () = assert!(rest::KIND_CONNECTION >= forwarder::FIRST_FREE_KIND);

fn dispatch(
    api: &mut Server<RestApi>,
    inbound: &mut Inbound,
    registry: &Registry,
    token: mio::Token,
) {
    if api.is_listener(token) {
        api.accept(registry);
        return;
    }
    let (bits, id): (u8, Id) = Id::from_token(token);
    if let Some(kind) = forwarder::Kind::from_bits(bits) {
        if let Inbound::Relay(f) = inbound {
            f.on_event(kind, id, registry);
        }
        return;
    }
    if bits != rest::KIND_CONNECTION {
        return;
    }
    match inbound {
        Inbound::Relay(forwarder) => {
            let mut ports = Ports {
                forwarder,
                registry,
            };
            api.on_event(id, registry, Some(&mut ports));
        }
        Inbound::Stack(forwards) => api.on_event(id, registry, Some(forwards)),
        Inbound::None => api.on_event(id, registry, None),
    }
}

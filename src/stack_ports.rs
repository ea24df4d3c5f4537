//! The stack's forward table as a [`PortManager`]: published ports whose connections and
//! datagrams enter the namespace through the stack itself ([`crate::stack::hostfwd`]), the way
//! slirp4netns's `add_hostfwd` (and rootlesskit's slirp4netns port driver) works.
//!
//! It serves three front ends: the slirp4netns API of `usernet attach`, and `usernet run
//! --port-driver stack` (rootlesskit's `--port-driver=slirp4netns` under that personality),
//! both on the stack's own thread ([`StackForwards`]); and the REST API of `usernet run`, which
//! runs on the control thread and reaches the stack's thread through the
//! [probe](crate::observe::probe) ([`ProbedForwards`], answered by [`answer`]).
//!
//! What a port spec may be here is what the stack can forward: IPv4, `tcp`/`tcp4`/`udp`/`udp4`,
//! to a unicast IPv4 address the guest answers ARP for (an empty child IP is the namespace's
//! own address; loopback is refused, as rootlesskit's `disallowLoopbackChildIP` tells clients;
//! an address nobody answers for resets each connection after a few seconds). The spec
//! stored and listed is the one forwarded, its defaults filled in (`tcp`, `0.0.0.0`, the
//! namespace's address).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::observe::probe::{Answer, Probe, Query};
use crate::observe::{ObserveError, Observer};
use crate::portdriver::parent::listen_error;
use crate::ports::{PortError, PortManager, PortSpec, PortStatus};
use crate::stack::Stack;
use crate::stack::hostfwd::{AddError, ForwardSpec, Proto};

/// The forwards of a stack this thread runs.
pub struct StackForwards<'a>(pub &'a mut Stack);

impl PortManager for StackForwards<'_> {
    fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
        let forward = forward_spec(&spec, self.0.policy().net.guest)?;
        let stored = port_spec(&forward);
        // The same host port and protocol twice is rootlesskit's conflict, not a bind error.
        stored.validate(&self.list())?;
        let id = self.0.add_forward(forward).map_err(|e| match e {
            AddError::Bind(e) => listen_error(
                &stored,
                forward.proto.as_str(),
                SocketAddr::V4(forward.host),
                e,
            ),
            other => PortError(other.to_string()),
        })?;
        Ok(PortStatus { id, spec: stored })
    }

    fn remove(&mut self, id: i64) -> Result<(), PortError> {
        if self.0.remove_forward(id) {
            Ok(())
        } else {
            Err(PortError(format!("unknown id: {id}")))
        }
    }

    fn observer(&mut self) -> Option<&mut dyn Observer> {
        Some(&mut *self.0)
    }

    fn list(&self) -> Vec<PortStatus> {
        self.0
            .forwards()
            .into_iter()
            .map(|(id, f)| PortStatus {
                id,
                spec: port_spec(&f),
            })
            .collect()
    }
}

/// The forwards of a stack another thread runs, through its probe.
pub struct ProbedForwards(pub Probe);

impl ProbedForwards {
    /// Ask the stack for a change; its answer, or why there is none as a port error.
    fn change(&self, query: Query) -> Result<Answer, PortError> {
        self.0.ask(query).map_err(|e| PortError(e.to_string()))
    }
}

/// The answer to a change that was not the one asked for (never made by [`answer`]).
fn no_answer() -> PortError {
    PortError("the network stack gave no answer; try again".into())
}

impl PortManager for ProbedForwards {
    fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
        match self.change(Query::AddPort(spec))? {
            Answer::PortAdded(result) => result,
            _ => Err(no_answer()),
        }
    }

    fn remove(&mut self, id: i64) -> Result<(), PortError> {
        match self.change(Query::RemovePort(id))? {
            Answer::PortRemoved(result) => result,
            _ => Err(no_answer()),
        }
    }

    fn list(&self) -> Vec<PortStatus> {
        self.list_now().unwrap_or_default()
    }

    fn list_now(&self) -> Result<Vec<PortStatus>, ObserveError> {
        match self.0.ask(Query::ListPorts)? {
            Answer::Ports(ports) => Ok(ports),
            _ => Err(ObserveError::Busy),
        }
    }
}

/// Answer a probe's query on the stack's thread.
pub fn answer(stack: &mut Stack, query: Query) -> Answer {
    match query {
        Query::Flows => Answer::Flows(stack.flow_table()),
        Query::Stats => Answer::Stats(Box::new(stack.counters())),
        Query::AddPort(spec) => Answer::PortAdded(StackForwards(stack).add(spec)),
        Query::RemovePort(id) => Answer::PortRemoved(StackForwards(stack).remove(id)),
        Query::ListPorts => Answer::Ports(StackForwards(stack).list()),
    }
}

/// A port spec as a forward of the stack's: an empty host address is every address, an
/// empty child address is `guest`, the namespace's own.
fn forward_spec(spec: &PortSpec, guest: Ipv4Addr) -> Result<ForwardSpec, PortError> {
    let proto = match spec.proto.as_str() {
        "tcp" | "tcp4" => Proto::Tcp,
        "udp" | "udp4" => Proto::Udp,
        other => {
            return Err(PortError(format!(
                "unsupported protocol {other:?}: ports forwarded through the stack are IPv4 (tcp, tcp4, udp, udp4)"
            )));
        }
    };
    let address = |s: &str, what: &str, empty: Ipv4Addr| -> Result<Ipv4Addr, PortError> {
        if s.is_empty() {
            return Ok(empty);
        }
        s.parse().map_err(|_| {
            PortError(format!(
                "{what} {s:?} is not an IPv4 address: ports forwarded through the stack are IPv4"
            ))
        })
    };
    let port = |p: i64, what: &str| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| PortError(format!("{what} {p} is outside 1..65535")))
    };
    let child = address(&spec.child_ip, "child IP", guest)?;
    if child.is_loopback() || child.is_unspecified() || child.is_multicast() || child.is_broadcast()
    {
        return Err(PortError(format!(
            "child IP {child} cannot be reached through the tap device: give the namespace's address ({guest}) or none"
        )));
    }
    Ok(ForwardSpec {
        proto,
        host: SocketAddrV4::new(
            address(&spec.parent_ip, "parent IP", Ipv4Addr::UNSPECIFIED)?,
            port(spec.parent_port, "parent port")?,
        ),
        guest: SocketAddrV4::new(child, port(spec.child_port, "child port")?),
    })
}

/// A forward of the stack's as a port spec.
fn port_spec(f: &ForwardSpec) -> PortSpec {
    PortSpec {
        proto: f.proto.as_str().into(),
        parent_ip: f.host.ip().to_string(),
        parent_port: f.host.port().into(),
        child_ip: f.guest.ip().to_string(),
        child_port: f.guest.port().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

    fn spec(proto: &str, parent: &str, pport: i64, child: &str, cport: i64) -> PortSpec {
        PortSpec {
            proto: proto.into(),
            parent_ip: parent.into(),
            parent_port: pport,
            child_ip: child.into(),
            child_port: cport,
        }
    }

    #[test]
    fn an_empty_child_ip_is_the_namespaces_address_and_tcp4_is_tcp() {
        let f = forward_spec(&spec("tcp4", "127.0.0.1", 8080, "", 80), GUEST).unwrap();
        assert_eq!(f.proto, Proto::Tcp);
        assert_eq!(f.host, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(f.guest, "10.0.2.100:80".parse().unwrap());
        let f = forward_spec(&spec("udp", "", 53, "10.0.2.5", 5353), GUEST).unwrap();
        assert_eq!(f.proto, Proto::Udp);
        assert_eq!(f.host, "0.0.0.0:53".parse().unwrap());
        assert_eq!(f.guest, "10.0.2.5:5353".parse().unwrap());
        assert_eq!(
            port_spec(&f),
            spec("udp", "0.0.0.0", 53, "10.0.2.5", 5353),
            "stored as forwarded, the defaults filled in"
        );
    }

    #[test]
    fn what_the_stack_cannot_forward_is_refused_with_why() {
        for (bad, why) in [
            (
                spec("tcp6", "", 8080, "", 80),
                "IPv4 (tcp, tcp4, udp, udp4)",
            ),
            (spec("sctp", "", 8080, "", 80), "unsupported protocol"),
            (spec("tcp", "::1", 8080, "", 80), "parent IP \"::1\""),
            (spec("tcp", "", 8080, "127.0.0.1", 80), "child IP 127.0.0.1"),
            (spec("tcp", "", 8080, "0.0.0.0", 80), "child IP 0.0.0.0"),
            (
                spec("tcp", "", 8080, "fd00::100", 80),
                "child IP \"fd00::100\"",
            ),
            (spec("tcp", "", 0, "", 80), "parent port 0"),
            (spec("tcp", "", 8080, "", 65536), "child port 65536"),
            (spec("udp", "", -1, "", 80), "parent port -1"),
        ] {
            let e = forward_spec(&bad, GUEST).unwrap_err();
            assert!(e.0.contains(why), "{bad:?}: {e}");
        }
    }
}

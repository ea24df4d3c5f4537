//! rootlesskit's builtin port driver: published ports on the host, served by sockets created
//! inside the namespace.
//!
//! - [`parent`]: listens on the host ports, asks the child for a socket per connection (or
//!   per UDP client) and relays with `splice()`, so TCP payload never enters userspace.
//!   A published port's connection is accepted in [`parent::Forwarder::accept`].
//! - [`child`]: serves `.bp.sock` inside the namespaces and dials the targets there.
//! - [`msg`]: the `.bp.sock` wire format both ends share.
//!
//! What a published port is ([`crate::ports::PortSpec`]) and the interface a port manager
//! offers the APIs ([`crate::ports::PortManager`]) live in [`crate::ports`].

pub mod child;
pub mod msg;
pub mod parent;

mod splice;

//! The control APIs: rootlesskit's REST API on `STATE_DIR/api.sock` ([`rest`], for
//! `usernet run`, `rootlessctl` and Docker) and slirp4netns's JSON API on `--api-socket`
//! ([`slirp`], for `usernet attach` and the slirp4netns personality).
//!
//! Both are protocols over one bounded Unix-socket [server]: it owns the socket (mode 0600),
//! the `SO_PEERCRED` check that refuses other users, the connection cap, timeouts and
//! buffering; a protocol only turns request bytes into answers. Both act on published ports
//! through [`crate::ports::PortManager`], whoever serves them (the builtin port driver, the
//! stack's slirp-style forwards, a fake in tests), so neither knows the other or the
//! datapath. [`http`] is the small HTTP/1.1 codec the REST API needs. Both also answer
//! usernet's extensions, the flow table and the counters, from a [`crate::observe::Observer`]
//! (a probe to the stack's thread, or the stack itself where the API runs on its thread).

pub mod http;
pub mod rest;
pub mod server;
pub mod slirp;

pub use rest::{API_VERSION, Info, Limits, NetworkDriverInfo, PortDriverInfo, RestApi};
pub use server::Server;

//! usernet: rootless networking for Linux namespaces.
//!
//! `usernet run -- COMMAND` gives COMMAND its own user, network and mount namespaces with
//! outbound connectivity through a userspace TCP/IP stack that runs in this process, on the
//! host side of a TAP device. No helper process, no root.
//!
//! Where things live:
//! - [`launcher`]: namespaces, uid/gid maps, the child's network setup, state dir, signals
//!   and exit codes (setup code, runs once);
//! - [`stack`]: the event loop and the datapath (runs per frame); its module doc names the
//!   file of each protocol. A guest SYN goes to [`stack::frame::classify`] and then
//!   [`stack::tcp::TcpFlows::on_guest_segment`];
//! - [`tap`], [`netconf`], [`fdpass`]: the TAP device, rtnetlink configuration and fd passing;
//! - [`net`]: the virtual network's addresses;
//! - [`attach`]: `usernet attach`, connecting a namespace that already exists, and
//!   [`slirp4netns`], the same process behind slirp4netns's command line and API;
//! - [`rootlesskit`]: rootlesskit's command line in front of the launcher;
//! - [`portdriver`]: rootlesskit's builtin port driver (a relay with splice), and
//!   [`stack_ports`]: published ports served by the stack's own forwards instead;
//! - [`harden`]: the sandbox and seccomp filter of the long-lived process;
//! - [`observe`]: the flow table, counters and packet capture (`usernet flows`, `stats`,
//!   `--pcap`);
//! - [`cli`]: the command line.

pub mod api;
pub mod attach;
pub mod cli;
pub mod client;
pub mod config;
pub mod docker_proxy;
pub mod fdpass;
pub mod footprint;
pub mod goflag;
pub mod harden;
pub mod hostinfo;
pub mod launcher;
pub mod links;
pub mod net;
pub mod netconf;
pub mod observe;
pub mod portdriver;
pub mod ports;
pub mod process;
pub mod resolv;
pub mod rootlessctl;
pub mod rootlesskit;
pub mod runtime;
pub mod slab;
pub mod slirp4netns;
pub mod stack;
pub mod stack_ports;
pub mod tap;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod units;

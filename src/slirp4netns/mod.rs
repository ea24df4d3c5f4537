//! The slirp4netns personality: invoked as `slirp4netns` (a symlink to usernet), usernet
//! takes slirp4netns 1.2's exact command line ([`args`]) and JSON API ([`api`],
//! [`server`]), so rootlesskit (`--net=slirp4netns --port-driver=slirp4netns`) and podman
//! use it unchanged. The process behind it is `usernet attach`'s ([`crate::attach`]).
//!
//! Kept from slirp4netns: the options, `--help`/`--version` texts (the feature probes grep
//! them), the startup banner on stdout, exit codes (0 for help, version and exit-fd, 1 for
//! errors, death by the signal that stopped it), the ready-fd/exit-fd contract, the API
//! bytes, and libslirp's behaviour where callers see it: DHCP leases from .15, and
//! `--outbound-addr` binds the sockets to the host's loopback too. Changed on purpose: errors
//! are one line on stderr saying what to do; the sandbox can be used by an unprivileged user with
//! `--netns-type=path` (it joins the namespace's owner instead of failing); and no client
//! of the API socket can stall the network.

pub mod args;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use crate::attach;
use crate::config::NamespaceRef;
use crate::config::{AttachConfig, OnSignal, Target, UsageError};
use crate::harden::Hardening;
use crate::net::{MAX_MTU, MIN_MTU, VirtualNetwork};
use crate::stack::StackConfig;
use crate::stack::dhcp::MAX_LEASES;
use args::Parse;

/// Run as slirp4netns with `argv`.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let (opts, target, tap_name) = match args::parse(&argv, &mut out, &mut err) {
        Parse::Exit(code) => return ExitCode::from(code as u8),
        Parse::Run(o, t, n) => (o, t, n),
    };
    let program = attach::program_name(argv.first());
    init_logging(&program);
    match config(&opts, target, tap_name) {
        Ok(cfg) => match attach::run(cfg) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                let code = e
                    .downcast_ref::<crate::process::Failure>()
                    .map_or(1, |f| f.code);
                let _ = writeln!(err, "{program}: {e:#}");
                ExitCode::from(code.clamp(1, 255) as u8)
            }
        },
        Err(message) => {
            // slirp4netns's own texts, without usage (they come after parsing).
            let _ = writeln!(err, "{message}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(program: &str) {
    let prefix = program.to_string();
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(move |buf, record| writeln!(buf, "{prefix}: {}", record.args()))
        .try_init();
}

/// Turn the parsed options into what `attach` runs, with slirp4netns's checks and messages.
fn config(
    o: &args::Options,
    target: args::Target,
    tap_name: Option<String>,
) -> Result<AttachConfig, UsageError> {
    let (network, prefix) = match &o.cidr {
        Some(c) => args::parse_cidr(c)?,
        None => (Ipv4Addr::new(10, 0, 2, 0), 24),
    };
    let mut net = VirtualNetwork::new(network, prefix).map_err(|e| e.to_string())?;
    if o.enable_ipv6 && o.mtu < crate::net::IPV6_MIN_MTU {
        let _ = writeln!(
            std::io::stdout(),
            "WARNING: IPv6 needs an MTU of at least {}; the namespace gets IPv4 only",
            crate::net::IPV6_MIN_MTU
        );
    } else if o.enable_ipv6 {
        // slirp4netns's prefix, which it does not let anyone change.
        net = net.with_ipv6(crate::net::Ipv6Network::default());
    }
    let outbound = o
        .outbound_addr
        .as_deref()
        .map(args::outbound4)
        .transpose()?;
    let outbound6 = o
        .outbound_addr6
        .as_deref()
        .map(args::outbound6)
        .transpose()?;
    let mac = match &o.macaddress {
        Some(m) => Some(args::parse_mac(m)?),
        None => None,
    };
    // The stack works within the MTUs it supports; the tap gets exactly what was asked.
    let mut stack = StackConfig::new(net, o.mtu.clamp(MIN_MTU, MAX_MTU));
    stack.policy.disable_host_loopback = o.disable_host_loopback;
    stack.policy.disable_dns = o.disable_dns;
    stack.policy.outbound = outbound;
    stack.policy.outbound6 = outbound6;
    // As libslirp: every host socket binds to the outbound address, the ones to the host's
    // loopback through the gateway too; and DHCP leases from .15.
    stack.policy.outbound_to_host_loopback = true;
    stack.dhcp_start = net.slirp_dhcp_start();
    let target = match target {
        args::Target::Pid(pid) => Target::Namespace(NamespaceRef::Pid(pid)),
        args::Target::Path(p) => Target::Namespace(NamespaceRef::Path(p)),
        args::Target::TapFd(fd) => Target::TapFd(fd),
        args::Target::Bess(p) => Target::Bess(p),
    };
    let harden = |on: bool| if on { Hardening::On } else { Hardening::Off };
    let banner = banner(o, &net, outbound, outbound6, mac);
    Ok(AttachConfig {
        target,
        userns_path: o.userns_path.clone(),
        ifname: tap_name.unwrap_or_else(|| "tap0".into()),
        configure: o.configure,
        mac,
        stack,
        api_socket: o.api_socket.clone(),
        max_api_connections: crate::api::slirp::DEFAULT_MAX_CONNECTIONS,
        ready_fd: o.ready_fd,
        exit_fd: o.exit_fd,
        sandbox: harden(o.enable_sandbox),
        seccomp: harden(o.enable_seccomp),
        exit_with_target: false,
        on_signal: OnSignal::Reraise,
        banner: Some(banner),
        // The tap gets exactly the MTU asked for, even where the stack clamps it.
        tap_mtu: o.mtu,
    })
}

/// What slirp4netns prints on stdout once the network is up.
fn banner(
    o: &args::Options,
    net: &VirtualNetwork,
    outbound: Option<Ipv4Addr>,
    outbound6: Option<std::net::Ipv6Addr>,
    mac: Option<[u8; 6]>,
) -> String {
    let mut b = String::new();
    let mut line = |label: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(b, "{:<19}{value}", format!("* {label}:"));
    };
    let dhcp_begin = net.slirp_dhcp_start();
    let dhcp_end = Ipv4Addr::from(u32::from(dhcp_begin) + MAX_LEASES as u32 - 1);
    line("MTU", &o.mtu);
    line("Network", &net.network);
    line("Netmask", &net.netmask());
    line("Gateway", &net.gateway);
    line("DNS", &net.dns);
    line("DHCP begin", &dhcp_begin);
    line("DHCP end", &dhcp_end);
    line("Recommended IP", &net.guest);
    if let Some(p) = &o.api_socket {
        line("API Socket", &p.display());
    }
    if let Some(a) = outbound {
        line("Outbound IPv4", &format_args!(" {a}"));
    }
    if let Some(a) = outbound6 {
        line("Outbound IPv6", &format_args!(" {a}"));
    }
    if let Some(m) = mac {
        line("MAC address", &smoltcp::wire::EthernetAddress(m));
    }
    let mut text = format!(
        "Starting usernet {} (slirp4netns-compatible)\n{b}",
        env!("CARGO_PKG_VERSION")
    );
    if !o.disable_host_loopback {
        let _ = writeln!(
            text,
            "WARNING: 127.0.0.1:* on the host is accessible as {} (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)",
            net.gateway
        );
    }
    text
}

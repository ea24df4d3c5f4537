//! From rootlesskit's options to what `usernet run`'s runtime is asked to do
//! ([`RunConfig`]), with rootlesskit's checks in rootlesskit's order and words, and the
//! decisions that make the other drivers usernet's:
//!
//! - **Networks.** `--net=builtin` is usernet's stack. `slirp4netns`, `pasta`, `vpnkit` and
//!   `gvisor-tap-vsock` are served by the same stack with that driver's addresses
//!   ([`StackDriver::network`]), so what a caller expects of them (10.0.2.2 for the host, or
//!   vpnkit's 192.168.65.2, gvisor-tap-vsock's 10.0.2.1) holds; no helper process starts.
//!   `host` and `none` are rootlesskit's. `lxc-user-nic` is refused: it is a setuid helper
//!   plugging a veth into a host bridge, which usernet has no part in.
//! - **Port drivers.** All of them are usernet's builtin driver (splice relays, sockets
//!   opened inside), which serves every protocol and child address the others do.
//!   `GET /v1/info` still names the one asked for, with the shape its clients know
//!   (slirp4netns: `tcp`/`udp` on IPv4, child address not loopback), so clients behave as
//!   with rootlesskit. `implicit` (pasta forwarding whatever the namespace listens on) is
//!   reported as `builtin`: usernet does not forward ports nobody published, so a client
//!   must publish through the API, which it only does when told of a driver.
//! - **Helper programs' flags** (`--slirp4netns-binary`, `--pasta-binary`, ...) are accepted
//!   and logged as unused. `--slirp4netns-sandbox`/`--slirp4netns-seccomp` confine usernet's
//!   own process (they confined slirp4netns's); not given, usernet's default `auto` applies.
//! - **Process flags**: `--reaper` is checked as rootlesskit checks it, but usernet always
//!   reaps and never moves COMMAND to a session of its own, so the terminal stays COMMAND's in
//!   every mode (rootlesskit keeps it only with `--reaper=false`).
//! - Differences on purpose: an unknown `--propagation` is refused (rootlesskit ignores it);
//!   `-p` also takes the short forms `usernet run -p` does (`8080:80`).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::ValueEnum;

use super::args::Options;
use super::help::VERSION;
use crate::api::PortDriverInfo;
use crate::config::{
    ApiNames, ExtraNamespaces, NetMode, PortDriver, Propagation, RunConfig, SubidSource,
};
use crate::harden::Hardening;
use crate::net::{DEFAULT_MTU, HostNumbers, IPV6_MIN_MTU, MAX_MTU, MIN_MTU, VirtualNetwork};
use crate::observe::capture::{CaptureConfig, check_max_bytes};
use crate::ports::PortSpec;
use crate::stack::StackConfig;

/// A network usernet's stack serves, by the driver name it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackDriver {
    Builtin,
    Slirp4netns,
    Pasta,
    Vpnkit,
    GvisorTapVsock,
}

impl StackDriver {
    fn from_name(name: &str) -> Option<StackDriver> {
        Some(match name {
            "builtin" => StackDriver::Builtin,
            "slirp4netns" => StackDriver::Slirp4netns,
            "pasta" => StackDriver::Pasta,
            "vpnkit" => StackDriver::Vpnkit,
            "gvisor-tap-vsock" => StackDriver::GvisorTapVsock,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            StackDriver::Builtin => "builtin",
            StackDriver::Slirp4netns => "slirp4netns",
            StackDriver::Pasta => "pasta",
            StackDriver::Vpnkit => "vpnkit",
            StackDriver::GvisorTapVsock => "gvisor-tap-vsock",
        }
    }

    /// The MTU `--mtu=0` (the default) means.
    fn default_mtu(self) -> u32 {
        match self {
            StackDriver::Vpnkit => 1500,
            _ => DEFAULT_MTU,
        }
    }

    /// The driver's addresses (rootlesskit's `docs/network.md`): slirp's layout on `cidr`
    /// for builtin, slirp4netns and pasta; gvisor-tap-vsock's gateway, DNS and host loopback
    /// all on .1; vpnkit's fixed 192.168.65.0/24 (the guest .3, gateway and DNS .1, the host
    /// .2).
    pub fn network(self, cidr: Option<VirtualNetwork>) -> VirtualNetwork {
        let base = cidr.unwrap_or_default();
        let hosts = match self {
            StackDriver::Builtin | StackDriver::Slirp4netns | StackDriver::Pasta => return base,
            StackDriver::GvisorTapVsock => HostNumbers {
                gateway: 1,
                dns: 1,
                guest: 100,
                host_loopback: 1,
            },
            StackDriver::Vpnkit => {
                let vpnkit = HostNumbers {
                    gateway: 1,
                    dns: 1,
                    guest: 3,
                    host_loopback: 2,
                };
                return VirtualNetwork::with_hosts(Ipv4Addr::new(192, 168, 65, 0), 24, vpnkit)
                    .unwrap_or(base);
            }
        };
        VirtualNetwork::with_hosts(base.network, base.prefix, hosts).unwrap_or(base)
    }
}

/// The network the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    Host,
    None,
    Stack(StackDriver),
}

/// What the command line asks for, as the runtime's configuration; `Err` is the one line
/// rootlesskit would print (after `[rootlesskit:parent] error: `). Warnings and notices
/// rootlesskit logs are logged here.
pub fn run_config(o: &Options, command: Vec<OsString>) -> Result<RunConfig, String> {
    if !o.evacuate_cgroup2.is_empty() {
        if !o.cgroupns {
            return Err("evacuate-cgroup2 requires --cgroupns".into());
        }
        if !o.pidns {
            return Err("evacuate-cgroup2 requires --pidns".into());
        }
    }
    if !(0..=65521).contains(&o.mtu) {
        return Err(format!("mtu must be <= 65521, got {}", o.mtu));
    }
    let cidr = parse_cidr(&o.cidr)?;
    let capture = capture(o)?;
    if o.ifname.contains('/') {
        return Err("ifname must not contain \"/\"".into());
    }
    let network = match o.net.as_str() {
        "host" => Network::Host,
        "none" => Network::None,
        "lxc-user-nic" => {
            return Err(
                "--net=lxc-user-nic is not supported by usernet (it plugs a veth into a host bridge through the setuid lxc-user-nic); use --net=builtin, usernet's own network".into(),
            );
        }
        name => Network::Stack(
            StackDriver::from_name(name).ok_or_else(|| format!("unknown network mode: {name}"))?,
        ),
    };
    let mut ipv6 = o.ipv6;
    if ipv6 {
        match network {
            Network::Stack(StackDriver::GvisorTapVsock) => {
                return Err("--ipv6 is not supported for gvisor-tap-vsock".into());
            }
            Network::Stack(
                StackDriver::Builtin | StackDriver::Slirp4netns | StackDriver::Pasta,
            ) => {}
            _ => {
                log::warn!("--ipv6 is discarded for --net={}", o.net);
                ipv6 = false;
            }
        }
    }
    if !o.disable_host_loopback && matches!(network, Network::Stack(_)) {
        log::warn!(
            "specifying --disable-host-loopback is highly recommended to prohibit connecting to 127.0.0.1:* on the host namespace (requires pasta, slirp4netns, or VPNKit)"
        );
    }
    match network {
        Network::Host | Network::None => {
            if o.mtu != 0 {
                log::warn!("unsupported mtu for --net={}: {}", o.net, o.mtu);
            }
            if cidr.is_some() {
                return Err(format!("custom cidr is not supported for --net={}", o.net));
            }
            if !o.ifname.is_empty() {
                return Err(format!("ifname cannot be specified for --net={}", o.net));
            }
            if !o.pcap.is_empty() {
                return Err(format!(
                    "--pcap captures usernet's network, and --net={} has none",
                    o.net
                ));
            }
            if network == Network::None && !matches!(o.port_driver.as_str(), "none" | "builtin") {
                return Err(
                    "network \"none\" requires either port driver \"none\" or \"builtin\"".into(),
                );
            }
        }
        Network::Stack(StackDriver::Pasta) => {
            if !matches!(o.port_driver.as_str(), "none" | "implicit") {
                return Err(
                    "network \"pasta\" requires port driver \"none\" or \"implicit\"".into(),
                );
            }
        }
        Network::Stack(StackDriver::Vpnkit) if cidr.is_some() => {
            return Err("custom cidr is not supported for --net=vpnkit".into());
        }
        Network::Stack(_) => {}
    }
    let sandbox = hardening(o.sandbox.as_deref(), "slirp4netns-sandbox")?;
    let seccomp = hardening(o.seccomp.as_deref(), "slirp4netns-seccomp")?;
    let port_driver = port_driver(&o.port_driver, &o.net, network, &o.publish)?;
    let publish = o
        .publish
        .iter()
        .map(|s| PortSpec::parse(s).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let reaper_ok = match o.reaper.as_str() {
        "auto" | "false" => true,
        "true" => o.pidns,
        other => return Err(format!("unknown reaper mode: {other}")),
    };
    if !reaper_ok {
        return Err("reaper requires --pidns".into());
    }
    let propagation = Propagation::from_str(&o.propagation, false).map_err(|_| {
        format!(
            "unknown propagation mode: {} (want rprivate, private, rslave, slave, rshared or shared)",
            o.propagation
        )
    })?;
    if o.copy_up_mode != "tmpfs+symlink" {
        return Err(format!("unknown copy-up mode: {}", o.copy_up_mode));
    }
    if !o.copy_up.is_empty() && matches!(propagation, Propagation::Shared | Propagation::Rshared) {
        return Err(format!(
            "propagation {} does not support copy-up driver {}",
            o.propagation, o.copy_up_mode
        ));
    }
    let copy_up = o
        .copy_up
        .iter()
        .map(|d| crate::cli::parse_copy_up(d).map_err(|e| format!("--copy-up: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let subid_source = SubidSource::from_str(&o.subid_source, false)
        .map_err(|_| format!("unknown subid source: {}", o.subid_source))?;
    warn_if_root_not_shared(propagation);
    for (flag, value) in &o.unused {
        log::warn!("--{flag}={value} is ignored: usernet starts no helper program");
    }

    let (net_mode, stack) = match network {
        Network::Host => (
            NetMode::Host,
            StackConfig::new(VirtualNetwork::default(), DEFAULT_MTU),
        ),
        Network::None => (
            NetMode::None,
            StackConfig::new(VirtualNetwork::default(), DEFAULT_MTU),
        ),
        Network::Stack(driver) => {
            let mut stack = stack_config(o, driver, cidr, ipv6)?;
            stack.capture = capture;
            (NetMode::Builtin, stack)
        }
    };
    if let Network::Stack(driver) = network {
        let net = stack.policy.net;
        log::info!(
            "--net={}: served by usernet's own network stack in this process ({}/{}, gateway {}, DNS {}, host loopback {}); no helper program is started",
            driver.name(),
            net.guest,
            net.prefix,
            net.gateway,
            net.dns,
            net.host_loopback,
        );
    }
    let ifname = if o.ifname.is_empty() {
        "tap0".to_string()
    } else {
        crate::cli::parse_ifname(&o.ifname).map_err(|e| format!("--ifname: {e}"))?
    };
    let network_driver = match network {
        Network::Host => None,
        Network::None => Some("none".to_string()),
        Network::Stack(driver) => Some(driver.name().to_string()),
    };
    Ok(RunConfig {
        net_mode,
        ifname,
        mac: None,
        state_dir: (!o.state_dir.is_empty()).then(|| PathBuf::from(&o.state_dir)),
        command,
        stack,
        port_driver: match &port_driver {
            None => PortDriver::None,
            // As rootlesskit's: through the network's own stack, which usernet serves.
            Some(info) if info.driver == "slirp4netns" => PortDriver::Stack,
            Some(_) => PortDriver::Builtin,
        },
        publish,
        copy_up,
        propagation,
        pidns: o.pidns,
        sandbox,
        seccomp,
        api_limits: crate::api::Limits::default(),
        detach_netns: o.detach_netns,
        extra_namespaces: ExtraNamespaces {
            cgroup: o.cgroupns,
            uts: o.utsns,
            ipc: o.ipcns,
        },
        hosts_file: true,
        source_ip_transparent: o.source_ip_transparent,
        api_names: ApiNames {
            version: VERSION.into(),
            network_driver,
            port_driver,
        },
        subid_source,
        evacuate_cgroup2: (!o.evacuate_cgroup2.is_empty()).then(|| o.evacuate_cgroup2.clone()),
    })
}

/// `--cidr`, checked as rootlesskit does (Go's `net.ParseCIDR`, then a network address),
/// then as usernet needs (room for the guest's address, not a special block).
fn parse_cidr(s: &str) -> Result<Option<VirtualNetwork>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let invalid = || format!("invalid CIDR address: {s}");
    let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| {
        if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("cidr {s}: usernet's network is IPv4 here (IPv6 comes with --ipv6)")
        } else {
            invalid()
        }
    })?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(invalid)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(addr) & !mask != 0 {
        return Err("cidr must be like 10.0.2.0/24, not like 10.0.2.100/24".into());
    }
    crate::cli::parse_cidr(s)
        .map(Some)
        .map_err(|e| format!("--cidr: {e}"))
}

/// `--slirp4netns-sandbox`/`--slirp4netns-seccomp` as usernet's own hardening; not given,
/// `auto`.
fn hardening(value: Option<&str>, flag: &str) -> Result<Hardening, String> {
    match value {
        None | Some("auto") => Ok(Hardening::Auto),
        Some("true") => Ok(Hardening::On),
        Some("false") | Some("") => Ok(Hardening::Off),
        Some(other) => Err(format!("unsupported {flag} mode: {other:?}")),
    }
}

/// The port driver: `None` for none, else what `GET /v1/info` reports for it (slirp4netns's
/// is served by the stack's forwards, the others by the builtin driver).
fn port_driver(
    name: &str,
    net: &str,
    network: Network,
    publish: &[String],
) -> Result<Option<PortDriverInfo>, String> {
    let builtin = PortDriverInfo::builtin();
    let info = match name {
        "none" => {
            if !publish.is_empty() {
                return Err(format!(
                    "port driver {name:?} does not support publishing ports"
                ));
            }
            return Ok(None);
        }
        "implicit" => {
            if net != "pasta" {
                return Err("port driver requires pasta network".into());
            }
            log::info!(
                "--port-driver=implicit: usernet does not forward every port the namespace listens on, as pasta does; ports are published with -p or the API (reported as the builtin driver)"
            );
            builtin
        }
        "slirp4netns" => {
            if net != "slirp4netns" {
                return Err("port driver requires slirp4netns network".into());
            }
            PortDriverInfo::stack("slirp4netns")
        }
        "builtin" => builtin,
        "gvisor-tap-vsock" | "gvisortapvsock" => PortDriverInfo {
            driver: "gvisor-tap-vsock".into(),
            ..builtin
        },
        other => return Err(format!("unknown port driver: {other}")),
    };
    if network == Network::Host {
        return Err("port driver requires non-host network".into());
    }
    Ok(Some(info))
}

/// The stack of a network usernet serves as `driver`.
fn stack_config(
    o: &Options,
    driver: StackDriver,
    cidr: Option<VirtualNetwork>,
    ipv6: bool,
) -> Result<StackConfig, String> {
    let mtu = match u32::try_from(o.mtu) {
        Ok(0) | Err(_) => driver.default_mtu(),
        Ok(m) => m,
    };
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(format!(
            "--mtu {mtu} is outside {MIN_MTU}..={MAX_MTU}, the MTUs usernet's network takes"
        ));
    }
    if ipv6 && mtu < IPV6_MIN_MTU {
        return Err(format!(
            "--ipv6 needs --mtu {IPV6_MIN_MTU} or more (the smallest link IPv6 works on), not {mtu}"
        ));
    }
    let mut net = driver.network(cidr);
    if ipv6 {
        net = net.with_ipv6(Default::default());
    }
    let mut stack = StackConfig::new(net, mtu);
    stack.policy.disable_host_loopback = o.disable_host_loopback;
    Ok(stack)
}

/// `--pcap FILE` and `--pcap-max-bytes SIZE` (usernet's, as `usernet run` takes them).
fn capture(o: &Options) -> Result<Option<CaptureConfig>, String> {
    let max_bytes = (!o.pcap_max_bytes.is_empty())
        .then(|| {
            crate::units::parse_bytes(&o.pcap_max_bytes)
                .and_then(check_max_bytes)
                .map_err(|e| format!("--pcap-max-bytes: {e}"))
        })
        .transpose()?;
    CaptureConfig::from_flags(
        (!o.pcap.is_empty()).then(|| PathBuf::from(&o.pcap)),
        max_bytes,
    )
}

/// rootlesskit's warning: a slave or shared `/` inside needs a shared `/` outside to receive
/// anything.
fn warn_if_root_not_shared(propagation: Propagation) {
    if matches!(propagation, Propagation::Private | Propagation::Rprivate) {
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root_shared = mountinfo.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.get(4) == Some(&"/")
            && f.iter()
                .skip(6)
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"))
    });
    if !root_shared {
        log::warn!(
            "the host's / is not a shared mount: with --propagation={}, mounts the host makes later do not show up inside",
            format!("{propagation:?}").to_lowercase()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::args::parse;
    use super::*;

    fn config(args: &[&str]) -> Result<RunConfig, String> {
        let argv: Vec<OsString> = std::iter::once("rootlesskit")
            .chain(args.iter().copied())
            .chain(["true"])
            .map(OsString::from)
            .collect();
        let cl = parse(&argv).map_err(|e| e.0)?;
        run_config(&cl.options, cl.command)
    }

    #[test]
    fn validation_errors_are_rootlesskits_words() {
        for (args, want) in [
            (&["--mtu=70000"][..], "mtu must be <= 65521, got 70000"),
            (&["--mtu=-1"], "mtu must be <= 65521, got -1"),
            (
                &["--net=slirp4netns", "--cidr=10.0.2.100/24"],
                "cidr must be like 10.0.2.0/24, not like 10.0.2.100/24",
            ),
            (
                &["--cidr=10.0.2.0/24"],
                "custom cidr is not supported for --net=host",
            ),
            (
                &["--net=none", "--ifname=x"],
                "ifname cannot be specified for --net=none",
            ),
            (
                &["--net=builtin", "--ifname=a/b"],
                "ifname must not contain \"/\"",
            ),
            (&["--net=magic"], "unknown network mode: magic"),
            (
                &["--net=none", "--port-driver=slirp4netns"],
                "network \"none\" requires either port driver \"none\" or \"builtin\"",
            ),
            (
                &["--net=pasta", "--port-driver=builtin"],
                "network \"pasta\" requires port driver \"none\" or \"implicit\"",
            ),
            (
                &["--port-driver=builtin"],
                "port driver requires non-host network",
            ),
            (
                &["--net=builtin", "--port-driver=slirp4netns"],
                "port driver requires slirp4netns network",
            ),
            (
                &["--net=builtin", "--port-driver=implicit"],
                "port driver requires pasta network",
            ),
            (
                &["--net=builtin", "--port-driver=magic"],
                "unknown port driver: magic",
            ),
            (
                &["--net=builtin", "-p", "127.0.0.1:8080:80/tcp"],
                "port driver \"none\" does not support publishing ports",
            ),
            (&["--reaper=true"], "reaper requires --pidns"),
            (&["--reaper=maybe"], "unknown reaper mode: maybe"),
            (&["--copy-up-mode=overlay"], "unknown copy-up mode: overlay"),
            (
                &["--copy-up=/etc", "--propagation=rshared"],
                "propagation rshared does not support copy-up driver tmpfs+symlink",
            ),
            (
                &["--evacuate-cgroup2=e"],
                "evacuate-cgroup2 requires --cgroupns",
            ),
            (
                &["--evacuate-cgroup2=e", "--cgroupns"],
                "evacuate-cgroup2 requires --pidns",
            ),
            (
                &["--net=slirp4netns", "--slirp4netns-sandbox=maybe"],
                "unsupported slirp4netns-sandbox mode: \"maybe\"",
            ),
            (
                &["--net=gvisor-tap-vsock", "--ipv6"],
                "--ipv6 is not supported for gvisor-tap-vsock",
            ),
            (
                &["--net=vpnkit", "--cidr=10.0.3.0/24"],
                "custom cidr is not supported for --net=vpnkit",
            ),
        ] {
            assert_eq!(config(args).unwrap_err(), want, "{args:?}");
        }
        assert!(
            config(&["--net=lxc-user-nic"])
                .unwrap_err()
                .contains("not supported by usernet")
        );
    }

    #[test]
    fn drivers_get_their_addresses_and_mtus() {
        let net = |args: &[&str]| {
            let c = config(args).unwrap();
            (c.stack.policy.net, c.stack.mtu)
        };
        let (n, mtu) = net(&["--net=builtin"]);
        assert_eq!(
            (n.guest, n.gateway, n.dns, n.host_loopback, mtu),
            (
                "10.0.2.100".parse().unwrap(),
                "10.0.2.2".parse().unwrap(),
                "10.0.2.3".parse().unwrap(),
                "10.0.2.2".parse().unwrap(),
                65520
            )
        );
        let (n, _) = net(&["--net=slirp4netns", "--cidr=10.0.5.0/24"]);
        assert_eq!(n.guest, "10.0.5.100".parse::<Ipv4Addr>().unwrap());
        let (n, mtu) = net(&["--net=gvisor-tap-vsock"]);
        assert_eq!(
            (n.gateway, n.dns, n.host_loopback, mtu),
            (
                "10.0.2.1".parse().unwrap(),
                "10.0.2.1".parse().unwrap(),
                "10.0.2.1".parse().unwrap(),
                65520
            )
        );
        let (n, mtu) = net(&["--net=vpnkit", "--mtu=0"]);
        assert_eq!(
            (n.guest, n.gateway, n.host_loopback, mtu),
            (
                "192.168.65.3".parse().unwrap(),
                "192.168.65.1".parse().unwrap(),
                "192.168.65.2".parse().unwrap(),
                1500
            )
        );
        let (n, _) = net(&["--net=vpnkit", "--ipv6"]);
        assert!(n.v6.is_none(), "discarded, as rootlesskit does");
        let (n, _) = net(&["--net=pasta", "--ipv6"]);
        assert!(n.v6.is_some());
    }

    #[test]
    fn what_a_docker_launch_asks_for() {
        let c = config(&[
            "--net=slirp4netns",
            "--mtu=65520",
            "--slirp4netns-sandbox=auto",
            "--slirp4netns-seccomp=auto",
            "--disable-host-loopback",
            "--port-driver=builtin",
            "--copy-up=/etc",
            "--copy-up=/run",
            "--propagation=rslave",
            "--detach-netns",
        ])
        .unwrap();
        assert_eq!(c.net_mode, NetMode::Builtin);
        assert!(c.stack.policy.disable_host_loopback && c.detach_netns && c.hosts_file);
        assert_eq!(c.propagation, Propagation::Rslave);
        assert_eq!(c.copy_up.len(), 2);
        assert_eq!(c.api_names.network_driver.as_deref(), Some("slirp4netns"));
        assert_eq!(
            c.api_names.port_driver.as_ref().map(|p| p.driver.as_str()),
            Some("builtin")
        );
        assert_eq!(c.sandbox, Hardening::Auto);
        assert_eq!(c.api_names.version, VERSION);
    }

    #[test]
    fn pcap_and_its_cap_reach_the_stack() {
        let capture = |args: &[&str]| config(args).map(|c| c.stack.capture);
        assert_eq!(capture(&["--net=builtin"]).unwrap(), None);
        let c = capture(&["--net=builtin", "--pcap=/tmp/x.pcap", "--pcap-max-bytes=2M"])
            .unwrap()
            .unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x.pcap"));
        assert_eq!(c.max_bytes, 2 << 20);
        let c = capture(&["--net=slirp4netns", "--pcap", "/tmp/y"])
            .unwrap()
            .unwrap();
        assert_eq!(c.max_bytes, crate::observe::capture::DEFAULT_MAX_BYTES);
        for (args, line) in [
            (&["--pcap-max-bytes=2M"][..], "give --pcap FILE too"),
            (
                &["--net=builtin", "--pcap=/x", "--pcap-max-bytes=lots"],
                "--pcap-max-bytes: ",
            ),
            (&["--net=host", "--pcap=/x"], "--net=host has none"),
        ] {
            let e = capture(args).unwrap_err();
            assert!(e.contains(line), "{args:?}: {e}");
        }
    }

    #[test]
    fn port_drivers_are_reported_with_their_own_shapes() {
        let info = |args: &[&str]| config(args).unwrap().api_names.port_driver;
        let s = info(&["--net=slirp4netns", "--port-driver=slirp4netns"]).unwrap();
        assert_eq!(s.protos, ["tcp", "tcp4", "udp", "udp4"]);
        assert!(s.disallow_loopback_child_ip);
        // Served as rootlesskit serves it: through the network's stack, not a relay.
        let c = config(&["--net=slirp4netns", "--port-driver=slirp4netns"]).unwrap();
        assert_eq!(c.port_driver, PortDriver::Stack);
        let c = config(&["--net=slirp4netns", "--port-driver=builtin"]).unwrap();
        assert_eq!(c.port_driver, PortDriver::Builtin);
        assert_eq!(
            info(&["--net=pasta", "--port-driver=implicit"])
                .unwrap()
                .driver,
            "builtin"
        );
        assert_eq!(
            info(&["--net=builtin", "--port-driver=gvisortapvsock"])
                .unwrap()
                .driver,
            "gvisor-tap-vsock"
        );
        assert!(info(&["--net=builtin"]).is_none());
        let c = config(&["--net=none", "--port-driver=builtin"]).unwrap();
        assert_eq!(c.port_driver, PortDriver::Builtin);
        assert_eq!(c.api_names.network_driver.as_deref(), Some("none"));
        let c = config(&[]).unwrap();
        assert_eq!(
            (c.net_mode, c.api_names.network_driver),
            (NetMode::Host, None)
        );
    }
}

//! The command line: `usernet run [FLAGS] -- COMMAND [ARGS...]`, `usernet attach`, and the
//! API clients. (Invoked as `slirp4netns`, usernet parses slirp4netns's command line
//! instead: `crate::slirp4netns::args`.)
//!
//! Flags follow rootlesskit's names and spellings where the concept exists (boolean flags also
//! as `--flag=true|false`, `--net=slirp4netns` or `pasta` meaning usernet's own network, as
//! those are served under the rootlesskit personality). Values are validated here, so a bad
//! flag fails before anything is set up, with one line naming the flag and the problem.
//! As every front end does, it then translates what it parsed into the runtime's
//! [configuration](crate::config) ([`RunConfig`], [`AttachArgs::into_config`]), all of it here.

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{
    self, AttachConfig, NamespaceRef, NetMode, OnSignal, PortDriver, Propagation, RunConfig,
    UsageError,
};
use crate::harden::Hardening;
use crate::net::{DEFAULT_MTU, Ipv6Network, MAX_MTU, MIN_MTU, VirtualNetwork};
use crate::netconf::valid_ifname;
use crate::observe::capture::CaptureConfig;
use crate::ports::PortSpec;
use crate::process::Failure;
use crate::resolv::parse_upstream;

#[derive(Debug, Parser)]
#[command(
    name = "usernet",
    version,
    about = "Rootless networking for Linux namespaces: a userspace TCP/IP stack in one binary",
    propagate_version = true
)]
pub struct Cli {
    /// Log debug detail to stderr (RUST_LOG overrides the level).
    #[arg(long, global = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_name = "BOOL", value_parser = parse_bool)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND in new user, network and mount namespaces, with networking through usernet.
    Run(RunArgs),
    /// Give an existing network namespace connectivity (like slirp4netns).
    Attach(AttachArgs),
    /// List, publish or unpublish ports of a running usernet.
    Ports(PortsArgs),
    /// Show what a running usernet reports about itself.
    Info(InfoArgs),
    /// Show the flows a running usernet carries: TCP connections, UDP NAT entries, pings,
    /// published-port connections, and the last refused or failed flows with why.
    Flows(FlowsArgs),
    /// Show a running usernet's counters: frames, drops and refusals by reason, buffer
    /// memory, DNS, DHCP, capture.
    Stats(StatsArgs),
    /// List your running usernets: their pid, child_pid and state dir.
    Ps,
    /// Make usernet the slirp4netns, rootlesskit, docker-rootlesskit, rootlesskit-docker-proxy
    /// and rootlessctl of your clients: symlinks to usernet in DIR (never replacing a file it
    /// did not make).
    InstallLinks(InstallLinksArgs),
}

#[derive(Debug, Args)]
pub struct InstallLinksArgs {
    /// Where the links go (default: ~/.local/bin, else ~/bin if only that exists); put it
    /// before /usr/bin in $PATH.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PortsArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: PortsCommand,
}

#[derive(Debug, Subcommand)]
pub enum PortsCommand {
    /// List the published ports.
    List {
        /// One JSON object per port.
        #[arg(long)]
        json: bool,
    },
    /// Publish ports; prints their ids.
    Add {
        /// A port to publish: [HOSTIP:]HOSTPORT:[CHILDIP:]CHILDPORT[/PROTO], e.g. 8080:80,
        /// 127.0.0.1:5353:53/udp or [::1]:8080:80. PROTO: tcp (default), tcp4, tcp6, udp,
        /// udp4, udp6. Without HOSTIP the port listens on every interface of the host.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
    },
    /// Unpublish ports by id.
    Remove {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub target: Target,
    /// As JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which running usernet to ask for flows or counters, and how to print them.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub target: Target,
    /// Ask the slirp4netns-style API socket at PATH (`usernet attach --api-socket`, or usernet
    /// run as slirp4netns) instead of a state dir's api.sock.
    #[arg(long, value_name = "PATH", conflicts_with = "state_dir")]
    pub socket: Option<PathBuf>,
    /// As JSON (the API's own answer).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub observe: ObserveArgs,
    /// Print the table again every SECONDS (default 1) until interrupted; with --json, one
    /// JSON object per line.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true, default_missing_value = "1", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub watch: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// Which running usernet to talk to.
#[derive(Debug, Args)]
pub struct Target {
    /// State directory of the running usernet (default: $USERNET_STATE_DIR, set for the
    /// command usernet runs; else your only running usernet, see 'usernet ps').
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

/// A command line usernet cannot act on.
#[derive(Debug)]
pub enum BadCommandLine {
    /// What clap found: help or version asked for, or a usage error ([`usage_line`]).
    Clap(clap::Error),
    /// Flags that parse but do not go together: the line to print.
    Invalid(String),
}

/// Parse and check usernet's own command line (not the slirp4netns personality's).
pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<Cli, BadCommandLine> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command()
        .try_get_matches_from(argv)
        .map_err(BadCommandLine::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(BadCommandLine::Clap)?;
    let checked = match (&cli.command, matches.subcommand()) {
        (Command::Run(a), Some((name, sub))) => {
            let given = |id: &str| sub.value_source(id) == Some(ValueSource::CommandLine);
            a.check(&given).map_err(|e| (name, e))
        }
        (Command::Attach(a), Some((name, _))) => a.stack.check().map_err(|e| (name, e)),
        _ => Ok(()),
    };
    checked.map_err(|(name, line)| {
        BadCommandLine::Invalid(format!("{line} (see 'usernet {name} --help')"))
    })?;
    Ok(cli)
}

/// How `usernet run` is written, for messages.
const RUN_USAGE: &str = "usernet run [FLAGS] -- COMMAND [ARGS...]";

/// clap's usage error as one line: what is wrong, naming the flag or argument, and where
/// help is. An unknown flag of `run` also says where COMMAND goes, since a flag usernet does
/// not know (rootlesskit's `--slirp4netns-binary`, a typo) must not become the command.
pub fn usage_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ErrorKind};
    let context = |kind| e.get(kind).map(|v| v.to_string());
    let usage = context(ContextKind::Usage)
        .map(|u| u.trim().trim_start_matches("Usage:").trim().to_string())
        .unwrap_or_default();
    // "usernet run --mtu <MTU> <COMMAND>..." names the subcommand before its arguments.
    let mut command: Vec<&str> = usage
        .split_whitespace()
        .take_while(|w| !w.starts_with(['-', '<', '[']))
        .collect();
    if command.is_empty() {
        command.push("usernet");
    }
    let command = command.join(" ");
    let is_run = command == "usernet run";
    let line = match e.kind() {
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_default();
            if arg.starts_with('-') {
                let mut line = format!("unknown flag {arg}");
                if let Some(similar) = context(ContextKind::SuggestedArg) {
                    line += &format!(" (did you mean {similar}?)");
                }
                if is_run {
                    line +=
                        &format!("; flags go before COMMAND, and COMMAND after '--': {RUN_USAGE}");
                }
                line
            } else {
                format!("unexpected argument '{arg}'")
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let names = context(ContextKind::InvalidArg)
                .unwrap_or_default()
                .replace(['<', '>'], "")
                .replace("...", "");
            let usage = if is_run { RUN_USAGE.to_string() } else { usage };
            format!("missing {names}; usage: {usage}")
        }
        _ => e
            .render()
            .to_string()
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid command line")
            .trim_start_matches("error: ")
            .to_string(),
    };
    format!("{line} (see '{command} --help')")
}

#[derive(Debug, Args)]
#[command(after_help = "\
The state dir holds lock, child_pid (for nsenter -t), api.sock (rootlesskit's REST API), \
resolv.conf, and the port driver's .bp.sock and .bp-ready.pipe. 'usernet ps' lists the \
running usernets and their state dirs; --debug prints it too.")]
pub struct RunArgs {
    /// Network mode.
    #[arg(long, value_enum, default_value_t = NetMode::Builtin)]
    pub net: NetMode,

    /// Name of the tap device inside the namespace.
    #[arg(long, default_value = "tap0", value_parser = parse_ifname)]
    pub ifname: String,

    #[command(flatten)]
    pub stack: StackArgs,

    /// Publish a port: [HOSTIP:]HOSTPORT:[CHILDIP:]CHILDPORT[/PROTO] (PROTO: tcp, tcp4, tcp6,
    /// udp, udp4, udp6; default tcp). Without HOSTIP (-p 8080:80) the port listens on every
    /// interface of the host; -p 127.0.0.1:8080:80 keeps it local. Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = PortSpec::parse)]
    pub publish: Vec<PortSpec>,

    /// How published ports are served. builtin: rootlesskit's driver, a socket opened inside
    /// per connection (reaches servers on the namespace's 127.0.0.1; IPv4 and IPv6). stack:
    /// through usernet's network, as slirp4netns's add_hostfwd (faster for bulk transfers;
    /// the server must listen on the namespace's address, e.g. 0.0.0.0; IPv4 only; needs
    /// --net builtin). none: -p is refused.
    #[arg(long, value_enum, default_value_t = PortDriver::Builtin)]
    pub port_driver: PortDriver,

    /// State directory (see below). Default: a fresh directory under $XDG_RUNTIME_DIR or
    /// /tmp. DIR and missing parents are created; an existing DIR must be empty or a stale
    /// usernet state dir, and only you may write to it. usernet removes what it created.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Give the command a writable copy of DIR (e.g. /etc): a tmpfs over it whose entries
    /// are symlinks to the originals, which can be replaced. Repeatable.
    #[arg(long, value_name = "DIR", value_parser = parse_copy_up)]
    pub copy_up: Vec<PathBuf>,

    /// A new PID namespace too: usernet's process inside is its PID 1, so nothing COMMAND
    /// starts can outlive the run, and /proc shows the namespace's processes only.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_name = "BOOL", value_parser = parse_bool)]
    pub pidns: bool,

    /// Mount propagation of / in the namespace (rslave: mounts made on the host later show
    /// up inside).
    #[arg(long, value_enum, default_value_t = Propagation::Rprivate)]
    pub propagation: Propagation,

    /// Most clients of api.sock at once; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = crate::api::rest::DEFAULT_MAX_CONNECTIONS, value_parser = parse_bound)]
    pub max_api_connections: usize,

    /// Largest request body api.sock takes, in bytes; bigger ones are answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = crate::api::http::DEFAULT_MAX_BODY, value_parser = parse_bound)]
    pub max_api_request: usize,

    #[command(flatten)]
    pub harden: HardenArgs,

    /// The command to run, and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// The virtual network and the stack's behaviour: shared by `run` and `attach`.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// MTU of the tap device: 576 to 65520 (1280 or more with --ipv6).
    #[arg(long, default_value_t = DEFAULT_MTU, value_parser = parse_mtu)]
    pub mtu: u32,

    /// Do not let the command reach the host's loopback (10.0.2.2 and the host's own addresses
    /// become unreachable).
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_name = "BOOL", value_parser = parse_bool)]
    pub disable_host_loopback: bool,

    /// The virtual network, a /25 or larger (the command is host .100), outside 0.0.0.0/8,
    /// 127.0.0.0/8, multicast and 240.0.0.0/4: the gateway is host .2, the DNS forwarder .3.
    #[arg(long, default_value = "10.0.2.0/24", value_parser = parse_cidr)]
    pub cidr: VirtualNetwork,

    /// MAC address of the tap device (default: chosen by the kernel).
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub macaddress: Option<[u8; 6]>,

    /// Bind host-side sockets to this IPv4 address, or to the first IPv4 address of this
    /// interface.
    #[arg(long, value_name = "ADDR|IFNAME", value_parser = parse_outbound)]
    pub outbound_addr: Option<Ipv4Addr>,

    /// Give the command IPv6 too: fd00::100/64 on the tap device, the gateway fd00::2 (and
    /// fe80::2) reaching the host's ::1, the DNS forwarder on fd00::3.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_name = "BOOL", value_parser = parse_bool)]
    pub ipv6: bool,

    /// The IPv6 network (a /64; implies --ipv6): gateway ::2, DNS forwarder ::3, the command
    /// ::100.
    #[arg(long, value_name = "PREFIX/64", value_parser = parse_cidr6)]
    pub cidr6: Option<Ipv6Network>,

    /// Bind IPv6 host-side sockets to this address, or to the first global IPv6 address of
    /// this interface.
    #[arg(long, value_name = "ADDR|IFNAME", value_parser = parse_outbound6)]
    pub outbound_addr6: Option<Ipv6Addr>,

    /// Seconds an idle UDP flow is kept.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub udp_timeout: u64,

    /// Forward DNS to this resolver instead of those in /etc/resolv.conf (repeatable; ADDR,
    /// ADDR:PORT or [IPV6]:PORT).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,

    /// No DNS forwarder: 10.0.2.3 is an ordinary address and /etc/resolv.conf is left alone.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_name = "BOOL", value_parser = parse_bool)]
    pub disable_dns: bool,

    /// Most TCP connections at once (connecting or open); past it a new connection gets a
    /// reset while existing ones go on.
    #[arg(long, value_name = "N", default_value_t = crate::stack::tcp::DEFAULT_MAX_FLOWS, value_parser = parse_bound)]
    pub max_tcp_flows: usize,

    /// Most host connects in progress at once; past it a new connection takes the place of
    /// the one the guest retried least recently (abandoned ones first).
    #[arg(long, value_name = "N", default_value_t = crate::stack::tcp::DEFAULT_MAX_PENDING_CONNECTS, value_parser = parse_bound)]
    pub max_pending_connects: usize,

    /// Most UDP flows at once; past it a new flow replaces the oldest one that never got an
    /// answer (or a conversation quiet for 10 s), else it is refused with ICMP.
    #[arg(long, value_name = "N", default_value_t = crate::stack::udp::DEFAULT_MAX_ENTRIES, value_parser = parse_bound)]
    pub max_udp_flows: usize,

    /// Memory all TCP connections' buffers may hold together (SIZE in bytes, or with a K, M
    /// or G suffix); past half of it each connection gets a small share, so transfers slow
    /// down rather than memory grow.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub max_buffer_memory: usize,

    /// Capture every frame on the guest link, both directions, to FILE in pcap format (for
    /// tcpdump -r or Wireshark). FILE must not exist (usernet never overwrites a file); it is
    /// created mode 0600. $USERNET_PCAP does the same where flags cannot be passed.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Stop capturing once the --pcap file holds SIZE bytes (bytes, or with a K, M or G
    /// suffix; default 1G). The file keeps the first frames; it is never rotated.
    #[arg(long, value_name = "SIZE", value_parser = parse_pcap_max_bytes)]
    pub pcap_max_bytes: Option<u64>,
}

impl From<RunArgs> for RunConfig {
    fn from(a: RunArgs) -> Self {
        let port_driver = if a.net == NetMode::Host {
            PortDriver::None
        } else {
            a.port_driver
        };
        RunConfig {
            net_mode: a.net,
            ifname: a.ifname,
            mac: a.stack.macaddress,
            stack: a.stack.stack_config(),
            state_dir: a.state_dir,
            command: a.command,
            port_driver,
            publish: a.publish,
            copy_up: a.copy_up,
            propagation: a.propagation,
            pidns: a.pidns,
            sandbox: a.harden.sandbox,
            seccomp: a.harden.seccomp,
            api_limits: crate::api::Limits {
                max_connections: a.max_api_connections,
                max_body: a.max_api_request,
            },
            detach_netns: false,
            extra_namespaces: config::ExtraNamespaces::default(),
            hosts_file: false,
            source_ip_transparent: true,
            api_names: config::ApiNames::usernet(a.net, port_driver),
            subid_source: config::SubidSource::Static,
            evacuate_cgroup2: None,
        }
    }
}

impl AttachArgs {
    /// What `usernet attach` was asked to do.
    pub fn into_config(self) -> Result<AttachConfig, Failure> {
        let a = self;
        if a.stack.macaddress.is_some() && !a.configure {
            return Err(Failure {
                code: 2,
                message:
                    "--macaddress needs --configure (usernet only sets up the tap it configures)"
                        .into(),
            });
        }
        let target = if !a.target.is_empty() && a.target.bytes().all(|b| b.is_ascii_digit()) {
            match a.target.parse::<i32>() {
                Ok(pid) if pid > 0 => NamespaceRef::Pid(pid),
                _ => {
                    return Err(Failure {
                        code: 2,
                        message: format!("'{}' is not a valid PID", a.target),
                    });
                }
            }
        } else {
            NamespaceRef::Path(a.target.into())
        };
        Ok(AttachConfig {
            target: config::Target::Namespace(target),
            userns_path: a.userns_path,
            ifname: a.ifname,
            configure: a.configure,
            mac: a.stack.macaddress,
            tap_mtu: a.stack.mtu,
            stack: a.stack.stack_config(),
            api_socket: a.api_socket,
            max_api_connections: a.max_api_connections,
            ready_fd: a.ready_fd,
            exit_fd: a.exit_fd,
            sandbox: a.harden.sandbox,
            seccomp: a.harden.seccomp,
            exit_with_target: true,
            on_signal: OnSignal::ExitZero,
            banner: None,
        })
    }
}

/// Flags (by argument id) that only shape the builtin network: nothing uses them with
/// `--net none` or `--net host`.
const BUILTIN_NETWORK_FLAGS: [&str; 17] = [
    "mtu",
    "ifname",
    "cidr",
    "macaddress",
    "disable_host_loopback",
    "outbound_addr",
    "ipv6",
    "cidr6",
    "outbound_addr6",
    "udp_timeout",
    "dns_upstream",
    "disable_dns",
    "max_tcp_flows",
    "max_pending_connects",
    "max_udp_flows",
    "pcap",
    "pcap_max_bytes",
];

/// The flag an argument id is given as.
fn flag_name(id: &str) -> String {
    match id {
        "publish" => "-p".into(),
        _ => format!("--{}", id.replace('_', "-")),
    }
}

impl RunArgs {
    /// Flags that each parse but do not go together. `given(id)` says whether the flag with
    /// that argument id was on the command line (rather than defaulted).
    pub fn check(&self, given: &dyn Fn(&str) -> bool) -> Result<(), UsageError> {
        self.stack.check()?;
        let mut idle: Vec<String> = match self.net {
            NetMode::Builtin => Vec::new(),
            NetMode::None | NetMode::Host => BUILTIN_NETWORK_FLAGS
                .iter()
                .filter(|id| given(id))
                .map(|id| flag_name(id))
                .collect(),
        };
        if self.net == NetMode::Host {
            if !self.publish.is_empty() {
                idle.push(flag_name("publish"));
            }
            if given("port_driver") && self.port_driver != PortDriver::None {
                idle.push(format!(
                    "--port-driver {}",
                    self.port_driver
                        .to_possible_value()
                        .map_or("?".into(), |v| v.get_name().to_string())
                ));
            }
        }
        if !idle.is_empty() {
            let (net, why) = match self.net {
                NetMode::Host => ("host", "COMMAND uses the host's network as it is"),
                _ => ("none", "the namespace has only lo, no tap device or stack"),
            };
            return Err(UsageError(format!(
                "{} {} nothing with --net {net} ({why}); drop {}",
                idle.join(", "),
                if idle.len() == 1 { "does" } else { "do" },
                if idle.len() == 1 { "it" } else { "them" },
            )));
        }
        if self.net == NetMode::None && self.port_driver == PortDriver::Stack {
            return Err(
                "--port-driver stack forwards through usernet's network, and --net none has none; use --port-driver builtin"
                    .into(),
            );
        }
        if !self.publish.is_empty() && self.port_driver == PortDriver::None {
            return Err(
                "cannot publish ports (-p) with --port-driver none: the port driver is off; drop one of them"
                    .into(),
            );
        }
        if !self.copy_up.is_empty()
            && matches!(self.propagation, Propagation::Shared | Propagation::Rshared)
        {
            return Err(UsageError(
                format!(
                    "--copy-up needs a private or slave /, not --propagation {:?}",
                    self.propagation
                )
                .to_lowercase(),
            ));
        }
        Ok(())
    }
}

impl StackArgs {
    /// Flags that each parse but do not go together.
    pub fn check(&self) -> Result<(), UsageError> {
        if self.disable_dns && !self.dns_upstream.is_empty() {
            return Err(
                "--dns-upstream needs the DNS forwarder, which --disable-dns turns off; drop one of them"
                    .into(),
            );
        }
        CaptureConfig::from_flags(self.pcap.clone(), self.pcap_max_bytes)?;
        if (self.ipv6 || self.cidr6.is_some()) && self.mtu < crate::net::IPV6_MIN_MTU {
            return Err(UsageError(format!(
                "--ipv6 needs --mtu {} or more (the smallest link IPv6 works on), not {}",
                crate::net::IPV6_MIN_MTU,
                self.mtu
            )));
        }
        Ok(())
    }

    /// The stack configuration these flags describe.
    pub fn stack_config(&self) -> crate::stack::StackConfig {
        let mut net = self.cidr;
        if self.ipv6 || self.cidr6.is_some() {
            net = net.with_ipv6(self.cidr6.unwrap_or_default());
        }
        let mut stack = crate::stack::StackConfig::new(net, self.mtu);
        stack.policy.disable_host_loopback = self.disable_host_loopback;
        stack.policy.disable_dns = self.disable_dns;
        stack.policy.outbound = self.outbound_addr;
        stack.policy.outbound6 = self.outbound_addr6;
        stack.udp.timeout = smoltcp::time::Duration::from_secs(self.udp_timeout);
        stack.dns_upstreams = self.dns_upstream.clone();
        stack.tcp.max_flows = self.max_tcp_flows;
        stack.tcp.max_pending_connects = self.max_pending_connects;
        stack.udp.max_entries = self.max_udp_flows;
        stack.tcp.buffer_memory = self.max_buffer_memory;
        // Checked with the other flags, so an error here cannot happen.
        stack.capture =
            CaptureConfig::from_flags(self.pcap.clone(), self.pcap_max_bytes).unwrap_or(None);
        stack
    }
}

/// The sandbox and seccomp filter of the long-lived process.
#[derive(Debug, Args)]
pub struct HardenArgs {
    /// Sandbox usernet itself once set up: an empty read-only root with only /etc and /run,
    /// no capabilities. auto: try, and go on without if the system does not allow it.
    #[arg(long, value_enum, value_name = "auto|true|false", default_value = "auto", num_args = 0..=1, default_missing_value = "true")]
    pub sandbox: Hardening,

    /// Allow usernet only the system calls it needs once set up (a seccomp allow-list).
    #[arg(long, value_enum, value_name = "auto|true|false", default_value = "auto", num_args = 0..=1, default_missing_value = "true")]
    pub seccomp: Hardening,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The network namespace: a PID, or a namespace file such as /proc/PID/ns/net or
    /// /run/netns/NAME.
    #[arg(value_name = "PID|PATH")]
    pub target: String,

    /// Name of the tap device to create inside (an existing, unattached persistent tap of
    /// that name is adopted).
    #[arg(value_name = "IFNAME", default_value = "tap0", value_parser = parse_ifname)]
    pub ifname: String,

    /// The user namespace to join to enter the network namespace (default: the target
    /// process's, or the one that owns the namespace).
    #[arg(long, value_name = "PATH")]
    pub userns_path: Option<PathBuf>,

    /// Configure the tap inside: up, MTU, the guest address, the default route, lo up.
    #[arg(short = 'c', long)]
    pub configure: bool,

    /// Write "1" to this fd and close it once the network is ready.
    #[arg(short = 'r', long, value_name = "FD")]
    pub ready_fd: Option<i32>,

    /// Exit when this fd reports hang-up or error (e.g. the read end of a pipe whose writer
    /// closes).
    #[arg(short = 'e', long, value_name = "FD")]
    pub exit_fd: Option<i32>,

    /// Serve slirp4netns's JSON API (add_hostfwd, list_hostfwd, remove_hostfwd) on this
    /// socket.
    #[arg(short = 'a', long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// Most clients of the API socket at once; more are answered with an error and closed.
    #[arg(long, value_name = "N", default_value_t = crate::api::slirp::DEFAULT_MAX_CONNECTIONS, value_parser = parse_bound)]
    pub max_api_connections: usize,

    #[command(flatten)]
    pub stack: StackArgs,

    #[command(flatten)]
    pub harden: HardenArgs,
}

/// A boolean flag's value, given as `--flag=VALUE` (bare `--flag` is true), in the
/// spellings rootlesskit (Go) takes, so a command line moves between the two unchanged.
fn parse_bool(s: &str) -> Result<bool, UsageError> {
    crate::goflag::parse_bool(s).ok_or_else(|| UsageError(format!("'{s}' is not true or false")))
}

/// A table bound: 1 to 1,000,000.
fn parse_bound(s: &str) -> Result<usize, UsageError> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(1..=1_000_000).contains(&v) {
        return Err(UsageError(format!("{v} is outside 1..=1000000")));
    }
    Ok(v)
}

/// A memory size: bytes, or a number with a K, M or G suffix (powers of 1024), from 1 MiB to
/// 1 TiB.
fn parse_size(s: &str) -> Result<usize, UsageError> {
    let bytes = crate::units::parse_bytes(s)?;
    if !(1 << 20..=1 << 40).contains(&bytes) {
        return Err(UsageError(format!("{s} is outside 1M..=1024G")));
    }
    usize::try_from(bytes)
        .map_err(|_| UsageError(format!("{s} does not fit this machine's address space")))
}

fn parse_pcap_max_bytes(s: &str) -> Result<u64, UsageError> {
    crate::observe::capture::check_max_bytes(crate::units::parse_bytes(s)?).map_err(UsageError)
}

fn parse_mtu(s: &str) -> Result<u32, UsageError> {
    let v: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(MIN_MTU..=MAX_MTU).contains(&v) {
        return Err(UsageError(format!("{v} is outside {MIN_MTU}..={MAX_MTU}")));
    }
    Ok(v)
}

/// A `--copy-up` directory: absolute, not `/`, normalised (no `.`, `..` or trailing `/`).
pub(crate) fn parse_copy_up(s: &str) -> Result<PathBuf, UsageError> {
    let path = std::path::Path::new(s);
    if !path.is_absolute() {
        return Err(UsageError(format!("'{s}' is not an absolute path")));
    }
    let mut clean = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::Normal(part) => clean.push(part),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            _ => return Err(UsageError(format!("'{s}' must not contain '..'"))),
        }
    }
    if clean == std::path::Path::new("/") {
        return Err(UsageError(
            "/ cannot be copied up; name a directory under it, such as /etc".into(),
        ));
    }
    Ok(clean)
}

fn parse_cidr6(s: &str) -> Result<Ipv6Network, UsageError> {
    Ipv6Network::parse(s).map_err(|e| UsageError(e.to_string()))
}

/// A `--cidr`: a network that can hold ours, outside the address blocks that cannot be a
/// link's (this network, loopback, multicast, reserved).
pub(crate) fn parse_cidr(s: &str) -> Result<VirtualNetwork, UsageError> {
    let net = VirtualNetwork::parse(s).map_err(|e| e.to_string())?;
    if net.prefix == 0 {
        return Err(UsageError(format!(
            "{s} is every address, which cannot be one network; use a private one such as 10.0.2.0/24"
        )));
    }
    match net.special_overlap() {
        Some((block, what)) => Err(UsageError(format!(
            "{s} overlaps {block} ({what}), which cannot be a network's; use a private one such as 10.0.2.0/24"
        ))),
        None => Ok(net),
    }
}

/// A unicast MAC address written as six colon-separated hex bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6], UsageError> {
    let bad = || format!("'{s}' is not a MAC address like 02:00:00:00:00:01");
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| {
            if (1..=2).contains(&b.len()) {
                u8::from_str_radix(b, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| bad())?;
    if mac[0] & 1 == 1 {
        return Err(UsageError(format!(
            "{s} is a multicast address; a network interface needs a unicast one"
        )));
    }
    if mac == [0; 6] {
        return Err(UsageError(format!("{s} is not a usable MAC address")));
    }
    Ok(mac)
}

/// An IPv4 address of this host, given as itself or as an interface name.
fn parse_outbound(s: &str) -> Result<Ipv4Addr, UsageError> {
    let addr = match s.parse::<Ipv4Addr>() {
        Ok(a) => a,
        Err(_) => crate::hostinfo::interface_ipv4(s).ok_or_else(|| {
            format!("'{s}' is neither an IPv4 address nor an interface with an IPv4 address")
        })?,
    };
    std::net::UdpSocket::bind((addr, 0))
        .map_err(|e| format!("{addr} is not an address of this host ({e})"))?;
    Ok(addr)
}

/// An IPv6 address of this host, given as itself or as an interface name.
fn parse_outbound6(s: &str) -> Result<Ipv6Addr, UsageError> {
    let addr = match s.parse::<Ipv6Addr>() {
        Ok(a) => a,
        Err(_) => crate::hostinfo::interface_ipv6(s).ok_or_else(|| {
            format!("'{s}' is neither an IPv6 address nor an interface with a global IPv6 address")
        })?,
    };
    std::net::UdpSocket::bind((addr, 0))
        .map_err(|e| format!("{addr} is not an address of this host ({e})"))?;
    Ok(addr)
}

pub(crate) fn parse_ifname(s: &str) -> Result<String, UsageError> {
    if valid_ifname(s) {
        Ok(s.to_string())
    } else {
        Err(UsageError(format!(
            "'{s}' is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("usernet").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_command_after_double_dash_or_flags() {
        let c = parse(&["run", "--mtu", "1500", "--", "ls", "-l"]).unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.stack.mtu, 1500);
        assert_eq!(r.command, vec![OsString::from("ls"), OsString::from("-l")]);
        let c = parse(&["run", "sh", "-c", "echo --mtu"]).unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.stack.mtu, DEFAULT_MTU);
        assert_eq!(r.command.len(), 3);
    }

    #[test]
    fn buffer_memory_takes_sizes_with_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in [
            "",
            "M",
            "64X",
            "-1M",
            "1K",
            "2000G",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let c = parse(&["run", "--max-buffer-memory", "64M", "--", "true"]).unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.stack.stack_config().tcp.buffer_memory, 64 << 20);
        let c = parse(&["run", "--", "true"]).unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(
            r.stack.stack_config().tcp.buffer_memory,
            crate::stack::tcp::DEFAULT_BUFFER_MEMORY
        );
    }

    #[test]
    fn ipv6_flags_build_the_network_and_need_a_big_enough_mtu() {
        let stack = |args: &[&str]| {
            let mut all = vec!["run"];
            all.extend_from_slice(args);
            all.extend(["--", "true"]);
            match parse(&all).unwrap().command {
                Command::Run(r) => r.stack,
                _ => panic!("not run"),
            }
        };
        assert_eq!(stack(&[]).stack_config().policy.net.v6, None);
        let s = stack(&["--ipv6"]);
        assert!(s.check().is_ok());
        assert_eq!(s.stack_config().policy.net.v6, Some(Ipv6Network::default()));
        let s = stack(&["--cidr6", "fd12::/64", "--mtu", "1280"]);
        assert!(s.check().is_ok());
        let v6 = s.stack_config().policy.net.v6.unwrap();
        assert_eq!(v6.guest, "fd12::100".parse::<Ipv6Addr>().unwrap());
        let err = stack(&["--ipv6", "--mtu", "1000"]).check().unwrap_err();
        assert!(err.0.contains("--mtu 1280"), "{err}");
        assert!(parse(&["run", "--cidr6", "fd00::/48", "--", "true"]).is_err());
        assert!(parse(&["run", "--outbound-addr6", "no-such-if0", "--", "true"]).is_err());
        let s = stack(&["--ipv6", "--outbound-addr6", "::1"]);
        assert_eq!(s.stack_config().policy.outbound6, Some(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn copy_up_takes_clean_absolute_directories() {
        assert_eq!(parse_copy_up("/etc/").unwrap(), PathBuf::from("/etc"));
        assert_eq!(parse_copy_up("//run/./x").unwrap(), PathBuf::from("/run/x"));
        for bad in ["etc", "/", "/etc/../tmp", ""] {
            assert!(parse_copy_up(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse(&["run", "--mtu", "70000", "--", "true"]).is_err());
        assert!(parse(&["run", "--mtu", "x", "--", "true"]).is_err());
        assert!(parse(&["run", "--ifname", "a/b", "--", "true"]).is_err());
        assert!(parse(&["run", "--net", "bogus", "--", "true"]).is_err());
        assert!(parse(&["run"]).is_err());
        assert!(parse(&["run", "--cidr", "10.0.2.100/24", "--", "true"]).is_err());
        assert!(parse(&["run", "--udp-timeout", "0", "--", "true"]).is_err());
        assert!(parse(&["run", "--dns-upstream", "nowhere", "--", "true"]).is_err());
        assert!(parse(&["run", "--outbound-addr", "no-such-if0", "--", "true"]).is_err());
    }

    #[test]
    fn ports_take_the_state_dir_before_or_after_the_verb() {
        for args in [
            &["ports", "--state-dir", "/s", "add", "8080:80"][..],
            &["ports", "add", "--state-dir", "/s", "8080:80"],
        ] {
            let Command::Ports(p) = parse(args).unwrap().command else {
                panic!("not ports")
            };
            assert_eq!(p.target.state_dir, Some(PathBuf::from("/s")));
        }
        let c = parse(&[
            "run",
            "-p",
            "8080:80",
            "-p",
            "127.0.0.1:53:53/udp",
            "--",
            "true",
        ])
        .unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.publish.len(), 2);
        assert!(parse(&["run", "-p", "8080", "--", "true"]).is_err());
    }

    /// The one line usernet prints for a command line it refuses.
    fn refusal(args: &[&str]) -> String {
        let argv = std::iter::once("usernet")
            .chain(args.iter().copied())
            .map(OsString::from);
        match super::parse(argv) {
            Ok(_) => panic!("accepted {args:?}"),
            Err(BadCommandLine::Clap(e)) => usage_line(&e),
            Err(BadCommandLine::Invalid(line)) => line,
        }
    }

    fn accepted(args: &[&str]) -> Cli {
        let argv = std::iter::once("usernet")
            .chain(args.iter().copied())
            .map(OsString::from);
        super::parse(argv).unwrap_or_else(|e| panic!("{args:?}: {e:?}"))
    }

    #[test]
    fn unknown_flags_before_command_are_usage_errors_naming_the_flag() {
        let line = refusal(&["run", "--mtuu", "1500", "--", "true"]);
        assert!(
            line.starts_with("unknown flag --mtuu (did you mean --mtu?); flags go before COMMAND")
                && line.contains("usernet run [FLAGS] -- COMMAND"),
            "{line}"
        );
        // rootlesskit-only flags too.
        let line = refusal(&["run", "--slirp4netns-binary", "/x", "--", "true"]);
        assert!(
            line.starts_with("unknown flag --slirp4netns-binary"),
            "{line}"
        );
        let line = refusal(&["attach", "--bogus", "1"]);
        assert!(
            line.starts_with("unknown flag --bogus")
                && line.ends_with("(see 'usernet attach --help')"),
            "{line}"
        );
        // After "--", or once COMMAND has started, anything is COMMAND's.
        for (args, command) in [
            (&["run", "--", "--weird"][..], &["--weird"][..]),
            (
                &["run", "sh", "-c", "echo --mtu"],
                &["sh", "-c", "echo --mtu"],
            ),
        ] {
            let Command::Run(r) = accepted(args).command else {
                panic!("not run")
            };
            assert_eq!(
                r.command,
                command.iter().map(OsString::from).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn missing_arguments_are_named() {
        let line = refusal(&["run"]);
        assert!(
            line.starts_with("missing COMMAND; usage: usernet run [FLAGS] -- COMMAND [ARGS...]"),
            "{line}"
        );
        let line = refusal(&["ports", "add"]);
        assert!(
            line.starts_with("missing SPEC; usage: usernet ports add"),
            "{line}"
        );
    }

    #[test]
    fn capture_flags_build_the_capture_and_observers_take_a_socket_or_a_state_dir() {
        let Command::Run(run) = accepted(&["run", "--pcap", "/tmp/c.pcap", "--", "true"]).command
        else {
            panic!("not run");
        };
        let capture = run.stack.stack_config().capture.unwrap();
        assert_eq!(
            (capture.path.to_str(), capture.max_bytes),
            (
                Some("/tmp/c.pcap"),
                crate::observe::capture::DEFAULT_MAX_BYTES
            )
        );
        let Command::Attach(attach) =
            accepted(&["attach", "--pcap", "/tmp/d", "--pcap-max-bytes", "2M", "1"]).command
        else {
            panic!("not attach");
        };
        assert_eq!(
            attach.stack.stack_config().capture.unwrap().max_bytes,
            2 << 20
        );
        for (cap, ok) in [("4095", false), ("4K", true)] {
            let args = ["run", "--pcap", "/x", "--pcap-max-bytes", cap, "--", "true"];
            assert_eq!(parse(&args).is_ok(), ok, "{cap}");
        }
        let Command::Flows(flows) = accepted(&["flows", "--json", "--watch"]).command else {
            panic!("not flows");
        };
        assert_eq!((flows.observe.json, flows.watch), (true, Some(1)));
        assert!(parse(&["flows", "--watch=0"]).is_err());
        assert!(parse(&["stats", "--socket", "/s", "--state-dir", "/d"]).is_err());
        let Command::Stats(stats) = accepted(&["stats", "--socket", "/s"]).command else {
            panic!("not stats");
        };
        assert_eq!(
            stats.observe.socket.as_deref(),
            Some(std::path::Path::new("/s"))
        );
    }

    #[test]
    fn meaningless_combinations_are_refused_saying_which_flags() {
        for (args, want) in [
            (
                &[
                    "run",
                    "--net",
                    "none",
                    "--mtu",
                    "1500",
                    "--cidr",
                    "10.0.3.0/24",
                ][..],
                "--mtu, --cidr do nothing with --net none",
            ),
            (
                &["run", "--net", "host", "--disable-host-loopback"],
                "--disable-host-loopback does nothing with --net host",
            ),
            (
                &["run", "--net", "host", "--pcap", "/tmp/x.pcap"],
                "--pcap does nothing with --net host",
            ),
            (
                &["run", "--pcap-max-bytes", "1M"],
                "--pcap-max-bytes caps the --pcap file; give --pcap FILE too",
            ),
            (
                &["run", "--net", "host", "-p", "8080:80"],
                "-p does nothing with --net host",
            ),
            (
                &["run", "--net", "host", "--port-driver", "builtin"],
                "--port-driver builtin does nothing with --net host",
            ),
            (
                &["run", "--port-driver", "none", "-p", "8080:80"],
                "--port-driver none: the port driver is off",
            ),
            (
                &["run", "--net", "host", "--port-driver", "stack"],
                "--port-driver stack does nothing with --net host",
            ),
            (
                &["run", "--net", "none", "--port-driver", "stack"],
                "--net none has none; use --port-driver builtin",
            ),
            (
                &["run", "--disable-dns", "--dns-upstream", "127.0.0.1"],
                "--dns-upstream needs the DNS forwarder, which --disable-dns turns off",
            ),
            (&["run", "--cidr", "127.0.0.0/24"], "127.0.0.0/8 (loopback)"),
            (&["run", "--cidr", "0.0.0.0/8"], "0.0.0.0/8 (this network)"),
            (
                &["run", "--cidr", "239.1.0.0/16"],
                "224.0.0.0/4 (multicast)",
            ),
            (&["run", "--cidr", "0.0.0.0/0"], "every address"),
        ] {
            let mut all = args.to_vec();
            all.extend(["--", "true"]);
            let line = refusal(&all);
            assert!(line.contains(want), "{args:?}: {line}");
        }
        let line = refusal(&[
            "attach",
            "--disable-dns",
            "--dns-upstream",
            "127.0.0.1",
            "1",
        ]);
        assert!(line.contains("--disable-dns"), "{line}");
        // What does make sense stays accepted.
        for args in [
            &["run", "--net", "none", "-p", "8080:80", "--", "true"][..],
            &[
                "run",
                "--net",
                "host",
                "--port-driver",
                "none",
                "--pidns",
                "--",
                "true",
            ],
            &[
                "run",
                "--cidr",
                "192.168.0.0/16",
                "--dns-upstream",
                "127.0.0.1",
                "--",
                "true",
            ],
        ] {
            accepted(args);
        }
    }

    #[test]
    fn rootlesskit_spellings_of_booleans_and_networks_are_accepted() {
        let run = |args: &[&str]| match accepted(args).command {
            Command::Run(r) => r,
            _ => panic!("not run"),
        };
        let r = run(&[
            "run",
            "--net=slirp4netns",
            "--disable-host-loopback=false",
            "--ipv6=true",
            "--pidns=1",
            "--disable-dns=False",
            "--",
            "true",
        ]);
        assert_eq!(r.net, NetMode::Builtin);
        assert!(!r.stack.disable_host_loopback && r.stack.ipv6 && r.pidns);
        assert!(!r.stack.disable_dns);
        assert_eq!(
            run(&["run", "--net", "pasta", "--", "true"]).net,
            NetMode::Builtin
        );
        // Bare, a boolean is true; a value only after '=', so the next word is COMMAND.
        let r = run(&["run", "--pidns", "true"]);
        assert!(r.pidns);
        assert_eq!(r.command, [OsString::from("true")]);
        assert!(!accepted(&["--debug=false", "run", "--", "true"]).debug);
        assert!(accepted(&["run", "--debug", "--", "true"]).debug);
        let line = refusal(&["run", "--ipv6=maybe", "--", "true"]);
        assert!(line.contains("'maybe' is not true or false"), "{line}");
    }

    #[test]
    fn mac_addresses_are_strict_and_unicast() {
        assert_eq!(
            parse_mac("02:00:0a:0B:c:01").unwrap(),
            [2, 0, 10, 11, 12, 1]
        );
        for bad in [
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02-00-00-00-00-01",
            "02:00:00:00:00:100",
            "zz:00:00:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outbound_addr_takes_an_address_or_an_interface() {
        assert_eq!(parse_outbound("127.0.0.1").unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(parse_outbound("lo").unwrap(), Ipv4Addr::LOCALHOST);
    }
}

//! The domain types the front ends fill in and the runtimes consume: what `usernet run` and
//! `usernet attach` (and the personalities that share their runtimes) were asked to do, once
//! validated. Each front end translates its own command line into these (`crate::cli` for
//! usernet's, `crate::slirp4netns` for slirp4netns's); the launcher, `attach` and the stack
//! never see a command line.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::ValueEnum;

use crate::api::PortDriverInfo;
use crate::harden::Hardening;
use crate::ports::PortSpec;
use crate::stack::StackConfig;

/// A command-line value, or a combination of them, a front end cannot act on: the one line to
/// print (the front end adds where help is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl From<String> for UsageError {
    fn from(s: String) -> Self {
        UsageError(s)
    }
}

impl From<&str> for UsageError {
    fn from(s: &str) -> Self {
        UsageError(s.into())
    }
}

/// How published ports are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PortDriver {
    /// rootlesskit's builtin driver: sockets opened inside, relayed with splice().
    Builtin,
    /// Through usernet's own network stack, as slirp4netns's add_hostfwd (rootlesskit's
    /// slirp4netns port driver): the connection enters through the tap device, to the
    /// namespace's address, not its loopback; IPv4 only.
    Stack,
    /// No port publishing.
    None,
}

/// Mount propagation of `/` in the namespace (rootlesskit's `--propagation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Propagation {
    /// Nothing propagates, either way (for `/` only, not the mounts under it).
    Private,
    /// Nothing propagates, either way.
    Rprivate,
    /// Mounts the host makes appear inside (for `/` only); none go out.
    Slave,
    /// Mounts the host makes anywhere appear inside; none go out.
    Rslave,
    /// Like `slave`, and shared among the namespace's own mounts (for `/` only).
    Shared,
    /// Like `rslave`, and shared among the namespace's own mounts.
    Rshared,
}

impl Propagation {
    /// The flags of the `mount("none", "/", ...)` call that sets it.
    pub fn flags(self) -> nix::mount::MsFlags {
        use nix::mount::MsFlags;
        match self {
            Propagation::Private => MsFlags::MS_PRIVATE,
            Propagation::Rprivate => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            Propagation::Slave => MsFlags::MS_SLAVE,
            Propagation::Rslave => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            Propagation::Shared => MsFlags::MS_SHARED,
            Propagation::Rshared => MsFlags::MS_SHARED | MsFlags::MS_REC,
        }
    }
}

/// How the child's network namespace is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetMode {
    /// A new network namespace with tap0 connected to usernet's userspace stack (also
    /// spelled as the rootlesskit drivers it stands in for, with the same addresses).
    #[value(alias = "slirp4netns", alias = "pasta")]
    Builtin,
    /// A new network namespace with only lo.
    None,
    /// No new network namespace: the command shares the host's network.
    Host,
}

/// What `usernet run` was asked to do, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub net_mode: NetMode,
    pub ifname: String,
    /// MAC address of tap0 (`--macaddress`).
    pub mac: Option<[u8; 6]>,
    pub state_dir: Option<PathBuf>,
    pub command: Vec<OsString>,
    /// Addresses, policy, MTU and table bounds of the stack.
    pub stack: StackConfig,
    /// What serves published ports (never [`PortDriver::Stack`] without the stack, never
    /// [`PortDriver::Builtin`] with the host's network).
    pub port_driver: PortDriver,
    /// Ports published before COMMAND starts (`-p`).
    pub publish: Vec<PortSpec>,
    /// Directories given a writable tmpfs copy in the namespace (`--copy-up`).
    pub copy_up: Vec<PathBuf>,
    /// Mount propagation of `/` in the namespace.
    pub propagation: Propagation,
    /// A new PID namespace as well (`--pidns`).
    pub pidns: bool,
    /// Sandbox and seccomp filter for this process once set up.
    pub sandbox: Hardening,
    pub seccomp: Hardening,
    /// Bounds of api.sock.
    pub api_limits: crate::api::Limits,
    /// COMMAND stays in the caller's network namespace; the namespace usernet serves is a
    /// separate one, bind-mounted at `STATE_DIR/netns` in COMMAND's mount namespace
    /// (rootlesskit's `--detach-netns`).
    pub detach_netns: bool,
    /// Namespaces COMMAND gets besides user, mount, network (and PID with `pidns`).
    pub extra_namespaces: ExtraNamespaces,
    /// Write `STATE_DIR/hosts` (the host's /etc/hosts with the hostname on loopback) and show
    /// it as /etc/hosts inside, as rootlesskit does.
    pub hosts_file: bool,
    /// Published ports dial from the outside client's address, so the service sees it
    /// (rootlesskit's `--source-ip-transparent`).
    pub source_ip_transparent: bool,
    /// How `GET /v1/info` names what serves this run.
    pub api_names: ApiNames,
    /// Where subordinate ids come from.
    pub subid_source: SubidSource,
    /// Move the processes of usernet's cgroup (v2) into this subgroup of it, enable its
    /// controllers for subgroups, and show COMMAND a cgroup2 of its own cgroup namespace
    /// (rootlesskit's `--evacuate-cgroup2`; needs `pidns` and a cgroup namespace).
    pub evacuate_cgroup2: Option<String>,
}

/// Where an unprivileged user's subordinate ids come from (rootlesskit's `--subid-source`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum SubidSource {
    /// `getsubids` where it answers, else the files.
    #[default]
    Auto,
    /// `getsubids` (the system's subid service).
    Dynamic,
    /// `/etc/subuid` and `/etc/subgid`.
    Static,
}

/// Namespaces beyond user, mount, network and PID (rootlesskit's `--cgroupns`, `--utsns`,
/// `--ipcns`): each a new one owned by the new user namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtraNamespaces {
    pub cgroup: bool,
    pub uts: bool,
    pub ipc: bool,
}

/// How `GET /v1/info` names what serves a run, so clients that read it (Docker's port proxy,
/// `rootlessctl info`) see the drivers they asked for: rootlesskit's names under its
/// personality, usernet's own otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiNames {
    /// `version`: the implementation's version.
    pub version: String,
    /// `networkDriver.driver`; `None`: no `networkDriver` object (a host network).
    pub network_driver: Option<String>,
    /// `portDriver`; `None`: no `portDriver` object (none runs, or clients must not use it).
    pub port_driver: Option<PortDriverInfo>,
}

impl ApiNames {
    /// What `usernet run` reports: "usernet" (or "none") and its port driver.
    pub fn usernet(net_mode: NetMode, port_driver: PortDriver) -> ApiNames {
        ApiNames {
            version: env!("CARGO_PKG_VERSION").into(),
            network_driver: match net_mode {
                NetMode::Builtin => Some("usernet".into()),
                NetMode::None => Some("none".into()),
                NetMode::Host => None,
            },
            port_driver: match port_driver {
                PortDriver::Builtin => Some(PortDriverInfo::builtin()),
                PortDriver::Stack => Some(PortDriverInfo::stack("stack")),
                PortDriver::None => None,
            },
        }
    }
}

/// What `usernet attach` (or the slirp4netns personality) was asked to do.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    pub target: Target,
    pub userns_path: Option<PathBuf>,
    pub ifname: String,
    /// Configure the TAP inside (`--configure`).
    pub configure: bool,
    pub mac: Option<[u8; 6]>,
    pub stack: StackConfig,
    pub api_socket: Option<PathBuf>,
    /// Most API clients at once.
    pub max_api_connections: usize,
    pub ready_fd: Option<RawFd>,
    pub exit_fd: Option<RawFd>,
    pub sandbox: Hardening,
    pub seccomp: Hardening,
    /// Exit when the target process exits or its namespace file is removed.
    pub exit_with_target: bool,
    pub on_signal: OnSignal,
    /// Printed on stdout once the network is up (slirp4netns's banner).
    pub banner: Option<String>,
    /// The MTU `--configure` gives the tap.
    pub tap_mtu: u32,
}

/// Where the guest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A network namespace, by process or by file.
    Namespace(NamespaceRef),
    /// A TAP fd we inherited (slirp4netns `--netns-type=tapfd`).
    TapFd(RawFd),
    /// A `SOCK_SEQPACKET` socket path where one BESS client (User Mode Linux) connects.
    Bess(PathBuf),
}

/// Where the namespace is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceRef {
    Pid(i32),
    Path(PathBuf),
}

/// What a terminating signal does once everything is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSignal {
    /// Exit 0: the user asked us to stop.
    ExitZero,
    /// Die of the same signal, as slirp4netns does (it has no handlers).
    Reraise,
}

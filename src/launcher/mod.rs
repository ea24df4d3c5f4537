//! `usernet run`: the parent's side of the launch, from the command line to the exit code.
//!
//! The parent forks a [child](child) that enters new user, network and mount namespaces (and
//! a PID namespace with `--pidns`), and talks it through setup over a [channel]: write the
//! uid/gid maps ([idmap]), learn the namespace init's pid (`--pidns`), receive the TAP fd,
//! start the [stack](crate::stack), record `child_pid` in the [state dir](statedir), and let
//! COMMAND start. Then the parent runs the stack until the child exits, forwarding
//! SIGINT/SIGTERM/SIGHUP (and friends) to it, and exits with COMMAND's status.
//!
//! Every failure is one line and a non-zero exit, and the guards here make sure nothing is
//! left behind: the child is killed and reaped, the state dir removed. Both processes are
//! child subreapers ([reaper]), so whichever of them survives the other ends what COMMAND
//! started, with or without `--pidns`.
//!
//! This process holds the host side (the TAP fd, every host socket), so the guest must never
//! be able to inspect or drive it: it is non-dumpable from `main` on and never joins the
//! namespace's user namespace, not even for its sandbox; see [`crate::harden`] for why that
//! is enough and what the guest can still do to it.

mod cgroup;
mod child;
mod control;
mod idmap;
mod statedir;

use std::ops::ControlFlow;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid};

use crate::api::{self, Info, NetworkDriverInfo};
use crate::config::{NetMode, PortDriver, RunConfig};
use crate::harden;
use crate::portdriver::parent::Forwarder;
use crate::ports::PortManager;
use crate::process::channel::{Channel, Msg};
use crate::process::reaper::{self, Reaper};
use crate::process::signals::{self, Signals};
use crate::process::{CommandExit, Failure, activation, raise_fd_limit, txqueuelen};
use crate::resolv::{HOST_RESOLV_CONF, ResolvConf};
use crate::runtime;
use crate::stack_ports::{ProbedForwards, StackForwards};
use child::ChildConfig;
use control::{Control, Inbound};
use statedir::{Entry, Kind, StateDir};

pub use idmap::Mapping;
pub use statedir::{Running, running};

/// Run COMMAND as configured; returns the exit code `usernet run` ends with: COMMAND's, or
/// 128+N when signal N killed it.
pub fn run(cfg: RunConfig) -> Result<i32> {
    launch(cfg).map(CommandExit::shell_code)
}

/// Run COMMAND as configured; how it ended.
pub fn launch(mut cfg: RunConfig) -> Result<CommandExit> {
    if !cfg.publish.is_empty() && cfg.port_driver == PortDriver::None {
        // The command line's check says which flag is in the way; this only guards the API.
        return Err(anyhow!("cannot publish ports: the port driver is off"));
    }
    let with_resolv_conf = cfg.net_mode == NetMode::Builtin && !cfg.stack.policy.disable_dns;
    let with_hosts = cfg.hosts_file && cfg.net_mode != NetMode::Host;
    let state = StateDir::create(
        cfg.state_dir.as_deref(),
        &state_entries(&cfg, with_resolv_conf, with_hosts),
    )?;
    // The port driver's socket inside, and rootlesskit's readiness FIFO. Our end of the FIFO is
    // open before the child starts, so its open for writing never waits.
    for dir in &cfg.copy_up {
        check_copy_up(dir, state.path())?;
    }
    let bp_sock = state.path().join(".bp.sock");
    let bp_ready = state.path().join(".bp-ready.pipe");
    let builtin_ports = cfg.port_driver == PortDriver::Builtin;
    let ready_fifo = if builtin_ports {
        Some(state.make_fifo(".bp-ready.pipe")?)
    } else {
        None
    };
    let net = cfg.stack.policy.net;
    // The namespace's resolver is our forwarder, with the host's search domains and options.
    let host_resolv = ResolvConf::read(Path::new(HOST_RESOLV_CONF));
    cfg.stack.search_domains = host_resolv.search.clone();
    let resolv_conf = if with_resolv_conf {
        let text = host_resolv.for_guest(&dns_addresses(&net));
        state.write_file("resolv.conf", text.as_bytes(), 0o644)?;
        Some(state.path().join("resolv.conf"))
    } else {
        None
    };
    let hosts = if with_hosts {
        state.write_file("hosts", hosts_for_guest().as_bytes(), 0o644)?;
        Some(state.path().join("hosts"))
    } else {
        None
    };
    // The mount point of the detached namespace (an empty file, to bind it over inside).
    let detached_netns = if cfg.detach_netns {
        state.write_file(NETNS, b"", 0o644)?;
        Some(state.path().join(NETNS))
    } else {
        None
    };
    // Sockets a service manager passed us are COMMAND's (socket activation).
    let activation_fds = activation::passed_to_us();
    let child_cfg = ChildConfig {
        net_mode: cfg.net_mode,
        ifname: cfg.ifname.clone(),
        mac: cfg.mac,
        mtu: cfg.stack.mtu,
        txqueuelen: txqueuelen(cfg.stack.tcp.rx_ring, cfg.stack.mtu),
        net,
        resolv_conf,
        hosts,
        detached_netns,
        extra_namespaces: cfg.extra_namespaces,
        cgroup2: cfg.evacuate_cgroup2.is_some(),
        activation_fds,
        copy_up: cfg.copy_up.clone(),
        propagation: cfg.propagation,
        pidns: cfg.pidns,
        command: cfg.command.clone(),
        env: command_env(state.path()),
        parent: getpid(),
        state_dir: state.path().to_path_buf(),
        state_cleaner: state.cleaner().ok(),
        port_driver: builtin_ports.then(|| (bp_sock.clone(), bp_ready.clone())),
    };

    // Block the handled signals before forking, so none is lost in between; both processes
    // then read them from a signalfd.
    runtime::prepare(&signals::handled())?;
    // Should the child be killed, what COMMAND started comes to us, and we end it.
    reaper::become_subreaper();
    let reaper = Reaper::new().context("cannot open /proc/self/task")?;
    let (parent_end, child_end) = Channel::pair().context("cannot create the setup channel")?;
    // SAFETY: usernet is single-threaded here (no thread has been spawned), so the child may
    // keep running Rust code after fork.
    let pid = match unsafe { fork() }.context("fork failed")? {
        ForkResult::Child => {
            drop(parent_end);
            child::main(child_end, child_cfg);
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    // The child's copy (its state dir cleaner's fds among it) is the child's business, and so
    // are the activation sockets.
    drop(child_cfg);
    if let Some(count) = activation_fds {
        activation::close_passed(count);
    }
    let mut guard = ChildGuard {
        pid,
        signal_to: pid,
        reaped: false,
        reaper,
    };
    let mut signals = Signals::new().context("cannot create a signalfd")?;
    raise_fd_limit();

    expect(
        &parent_end,
        &mut signals,
        &mut guard,
        Msg::Unshared,
        OnSignal::Abort,
    )?;
    // The child is in its cgroup namespace, rooted at our cgroup: now move us both down.
    if let Some(subgroup) = &cfg.evacuate_cgroup2 {
        cgroup::evacuate(subgroup)?;
    }
    let mapping = idmap::write_maps(pid, cfg.subid_source)
        .context("cannot set up the user namespace's id maps")?;
    log::debug!("id mapping: {mapping:?}");
    parent_end
        .send(&Msg::MapsWritten)
        .context("setup channel")?;
    if cfg.pidns {
        // The namespace's init, a child of our child: it gets the signals, and is the
        // child_pid tools enter (nsenter -t).
        let init = receive(
            &parent_end,
            &mut signals,
            &mut guard,
            OnSignal::Abort,
            "Init",
            |m| match m {
                Msg::Init { pid } => Some(Pid::from_raw(*pid)),
                _ => None,
            },
        )?
        .0;
        guard.signal_to = init;
    }

    let mut stack = None;
    if cfg.net_mode == NetMode::Builtin {
        let tap = expect(
            &parent_end,
            &mut signals,
            &mut guard,
            Msg::Tap,
            OnSignal::Abort,
        )?
        .ok_or_else(|| anyhow!("the child sent no tap fd"))?;
        stack = Some(runtime::start_stack(tap, cfg.stack.clone())?);
    }
    expect(
        &parent_end,
        &mut signals,
        &mut guard,
        Msg::Configured,
        OnSignal::Abort,
    )?;
    // Inbound: the port driver's handshake, the -p ports, then child_pid and api.sock, all
    // before COMMAND starts (rootlesskit's order), so nothing races the command.
    let forwarder = match ready_fifo {
        Some(fifo) => {
            drop(fifo);
            let mut f = Forwarder::new(
                bp_sock,
                Duration::from_micros(cfg.stack.udp.timeout.total_micros()),
            );
            f.set_source_ip_transparent(cfg.source_ip_transparent);
            f.handshake()
                .context("the port driver inside the namespace did not answer")?;
            Some(f)
        }
        None => None,
    };
    let info = api_info(&cfg, state.path(), guard.signal_to);
    state.write_child_pid(guard.signal_to.as_raw())?;
    let (probe, probe_end) = match &stack {
        Some(stack) => {
            let (probe, end) = runtime::probe(stack)?;
            (Some(probe), Some(end))
        }
        None => (None, None),
    };
    // The probe exists exactly when the stack does.
    let inbound = match (forwarder, &probe) {
        (Some(f), _) => Inbound::Relay(Box::new(f)),
        (None, Some(probe)) if cfg.port_driver == PortDriver::Stack => {
            Inbound::Stack(ProbedForwards(probe.clone()))
        }
        _ => Inbound::None,
    };
    let mut control = Control::new(
        &state.path().join("api.sock"),
        info,
        cfg.api_limits,
        probe,
        inbound,
    )
    .context("cannot listen on api.sock")?;
    for spec in std::mem::take(&mut cfg.publish) {
        let published = match &mut stack {
            Some(stack) if cfg.port_driver == PortDriver::Stack => {
                StackForwards(stack).add(spec.clone())
            }
            _ => control.publish(spec.clone()),
        };
        published.map_err(|e| anyhow!("cannot publish port {spec}: {e}"))?;
    }
    // Setup is done: shrink what this process may do before the first guest packet or API
    // request is read. The state dir stays visible (the port driver dials .bp.sock in it).
    // This process never joins the namespace's user namespace, sandbox or not (see `harden`).
    let keep = harden::Keep {
        api_socket: None,
        state_dir: Some(state.path().to_path_buf()),
    };
    let _sandbox = runtime::confine(cfg.sandbox, cfg.seccomp, &keep)?;
    control.spawn().context("cannot start the control thread")?;
    parent_end.send(&Msg::Go).context("setup channel")?;
    // From here COMMAND may be running: signals are its business now.
    expect(
        &parent_end,
        &mut signals,
        &mut guard,
        Msg::Started,
        OnSignal::Forward,
    )?;

    let child_exit = match &mut stack {
        Some(stack) => {
            match runtime::serve(stack, &mut signals, |stack, signals, token| {
                if token == runtime::PROBE_TOKEN {
                    if let Some(end) = &probe_end {
                        runtime::answer_probe(end, stack);
                    }
                    return ControlFlow::Continue(());
                }
                debug_assert_eq!(token, runtime::SIGNALS_TOKEN);
                on_signals(signals, &mut guard)
            }) {
                Ok(exit) => exit,
                Err(e) => {
                    // The network is gone (the namespace died under us): COMMAND's exit status
                    // is still the answer.
                    log::debug!("{e:#}");
                    wait_child(&mut signals, &mut guard)?
                }
            }
        }
        None => {
            crate::footprint::shed_startup();
            wait_child(&mut signals, &mut guard)?
        }
    };
    // How COMMAND itself ended, as the child reported it just before exiting; without a
    // report (the child was killed), the child's own end.
    let exit = match parent_end.try_recv() {
        Ok((Msg::Exited(exit), _)) => exit,
        _ => child_exit,
    };
    // Normally the child has ended COMMAND's tree itself; if it was killed, the rest of the
    // tree is ours now, and the guard ends it.
    drop(guard);
    drop(state);
    Ok(exit)
}

/// The name of the detached network namespace's mount point in the state dir.
const NETNS: &str = "netns";

/// The namespace's /etc/hosts, as rootlesskit makes it: the host's, then this host's name on
/// the namespace's own loopback (the host's file may give it an address the namespace does
/// not have).
fn hosts_for_guest() -> String {
    use std::io::Read;
    let mut hosts = String::new();
    if let Ok(file) = std::fs::File::open("/etc/hosts") {
        // Bounded: a hosts file bigger than this is not one to copy.
        let _ = file.take(1 << 20).read_to_string(&mut hosts);
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace));
    if let Some(name) = name {
        hosts.push_str(&format!("\n127.0.0.1 {name}\n::1 {name}\n"));
    }
    hosts
}

/// Handle pending signals: forward the forwardable, and report the child's exit.
fn on_signals(signals: &mut Signals, guard: &mut ChildGuard) -> ControlFlow<CommandExit> {
    while let Ok(Some(received)) = signals.next_signal() {
        if received.signal == Signal::SIGCHLD {
            if let Some(exit) = guard.try_reap() {
                return ControlFlow::Break(exit);
            }
        } else if received.from_process {
            let _ = kill(guard.signal_to, received.signal);
        }
    }
    ControlFlow::Continue(())
}

/// Wait for the child's exit without a stack to run.
fn wait_child(signals: &mut Signals, guard: &mut ChildGuard) -> Result<CommandExit> {
    if let Some(exit) = guard.try_reap() {
        return Ok(exit);
    }
    loop {
        signals::wait_readable(&[signals.as_fd()]).context("waiting for signals")?;
        if let ControlFlow::Break(exit) = on_signals(signals, guard) {
            return Ok(exit);
        }
    }
}

/// What this run creates in its state dir (besides `lock`), so that exactly that is removed
/// at the end, by the parent or, should it be killed, by the child.
fn state_entries(cfg: &RunConfig, with_resolv_conf: bool, with_hosts: bool) -> Vec<Entry> {
    let mut entries = vec![
        Entry::new("child_pid", Kind::File),
        Entry::new("api.sock", Kind::Socket),
    ];
    if with_resolv_conf {
        entries.push(Entry::new("resolv.conf", Kind::File));
    }
    if with_hosts {
        entries.push(Entry::new("hosts", Kind::File));
    }
    if cfg.detach_netns {
        entries.push(Entry::new(NETNS, Kind::File));
    }
    if cfg.port_driver == PortDriver::Builtin {
        entries.push(Entry::new(".bp-ready.pipe", Kind::Fifo));
        entries.push(Entry::new(".bp.sock", Kind::Socket));
    }
    // Mount points the child makes and removes itself; declared in case it cannot.
    for n in 0..cfg.copy_up.len() {
        entries.push(Entry::new(format!(".copy-up-{n}"), Kind::Dir));
    }
    if cfg.net_mode != NetMode::Host && !cfg.detach_netns {
        entries.push(Entry::new(".cgroup-park", Kind::Dir));
    }
    entries
}

/// The environment COMMAND gets on top of ours: where to find the state dir (rootlesskit's
/// names, which its clients and Docker look for, and ours), and the caller's ids.
fn command_env(state_dir: &Path) -> Vec<(String, String)> {
    let dir = state_dir.display().to_string();
    vec![
        ("USERNET_STATE_DIR".into(), dir.clone()),
        ("ROOTLESSKIT_STATE_DIR".into(), dir),
        (
            "ROOTLESSKIT_PARENT_EUID".into(),
            nix::unistd::geteuid().to_string(),
        ),
        (
            "ROOTLESSKIT_PARENT_EGID".into(),
            nix::unistd::getegid().to_string(),
        ),
    ]
}

/// Whether `dir` can be copied up: a directory that does not hold the state dir (which the
/// child needs to reach while it covers `dir` with a tmpfs).
fn check_copy_up(dir: &Path, state_dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("cannot copy up {}: not a directory", dir.display()),
        Err(e) => anyhow::bail!("cannot copy up {}: {e}", dir.display()),
    }
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let state = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    if state.starts_with(&real) {
        anyhow::bail!(
            "cannot copy up {}: it holds the state dir {}; pick another --state-dir",
            dir.display(),
            state_dir.display()
        );
    }
    Ok(())
}

/// The DNS forwarder's addresses, IPv4 first (as rootlesskit lists them with `--ipv6`).
fn dns_addresses(net: &crate::net::VirtualNetwork) -> Vec<std::net::IpAddr> {
    let mut out = vec![std::net::IpAddr::V4(net.dns)];
    out.extend(net.v6.map(|v6| std::net::IpAddr::V6(v6.dns)));
    out
}

/// What `GET /v1/info` reports: the drivers under the names the front end chose, and the
/// stack's addresses (rootlesskit reports them for every network its stack serves).
fn api_info(cfg: &RunConfig, state_dir: &Path, child: Pid) -> Info {
    let net = cfg.stack.policy.net;
    let builtin = cfg.net_mode == NetMode::Builtin;
    let network_driver = cfg
        .api_names
        .network_driver
        .as_ref()
        .map(|driver| NetworkDriverInfo {
            driver: driver.clone(),
            dns: if builtin && !cfg.stack.policy.disable_dns {
                dns_addresses(&net).iter().map(|a| a.to_string()).collect()
            } else {
                Vec::new()
            },
            child_ip: if builtin {
                net.guest.to_string()
            } else {
                String::new()
            },
        });
    Info {
        api_version: api::API_VERSION.into(),
        version: cfg.api_names.version.clone(),
        state_dir: state_dir.display().to_string(),
        child_pid: i64::from(child.as_raw()),
        network_driver,
        port_driver: if cfg.port_driver != PortDriver::None {
            cfg.api_names.port_driver.clone()
        } else {
            None
        },
    }
}

/// What a signal does while the parent waits for the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnSignal {
    /// Setup is not finished: give up (the guards clean up).
    Abort,
    /// COMMAND may already run: pass the signal on.
    Forward,
}

/// Wait for `want` from the child, or for the reason it will not come.
fn expect(
    chan: &Channel,
    signals: &mut Signals,
    guard: &mut ChildGuard,
    want: Msg,
    on_signal: OnSignal,
) -> Result<Option<std::os::fd::OwnedFd>> {
    let name = format!("{want:?}");
    let accept = |m: &Msg| (*m == want).then_some(());
    Ok(receive(chan, signals, guard, on_signal, &name, accept)?.1)
}

/// Wait for the message `accept` takes (what it makes of it, and the fd that came with it),
/// handling signals meanwhile as `on_signal` says; `want` names it in errors.
fn receive<T>(
    chan: &Channel,
    signals: &mut Signals,
    guard: &mut ChildGuard,
    on_signal: OnSignal,
    want: &str,
    accept: impl Fn(&Msg) -> Option<T>,
) -> Result<(T, Option<std::os::fd::OwnedFd>)> {
    loop {
        let ready = signals::wait_readable(&[chan.as_fd(), signals.as_fd()])
            .context("waiting for the child")?;
        if ready == 1 {
            while let Some(received) = signals.next_signal().context("signalfd")? {
                match received.signal {
                    // Child exits are noticed when its end of the channel closes.
                    Signal::SIGCHLD => {}
                    s if on_signal == OnSignal::Forward => {
                        if received.from_process {
                            let _ = kill(guard.signal_to, s);
                        }
                    }
                    s => {
                        return Err(Failure {
                            code: 128 + s as i32,
                            message: format!("interrupted by {s} during setup"),
                        }
                        .into());
                    }
                }
            }
            continue;
        }
        return match chan.recv() {
            Ok((Msg::Failed { code, message }, _)) => Err(Failure { code, message }.into()),
            Ok((msg, fd)) => match accept(&msg) {
                Some(t) => Ok((t, fd)),
                None => Err(anyhow!("unexpected setup message {msg:?} (wanted {want})")),
            },
            Err(_) => {
                let how = match guard.wait_blocking() {
                    Some(CommandExit::Code(code)) => format!("exit status {code}"),
                    Some(CommandExit::Signal { signal, .. }) => {
                        format!("killed by signal {signal}")
                    }
                    None => "unknown status".into(),
                };
                Err(anyhow!("the namespace child died during setup ({how})"))
            }
        };
    }
}

/// Kills and reaps the child unless it was already reaped, so an error path leaves no process.
struct ChildGuard {
    pid: Pid,
    /// Who gets the signals we forward: the child, or with `--pidns` the namespace's init.
    signal_to: Pid,
    reaped: bool,
    /// Ends what is left of the child's tree once the child is gone.
    reaper: Reaper,
}

impl ChildGuard {
    fn try_reap(&mut self) -> Option<CommandExit> {
        if self.reaped {
            return None;
        }
        let exit = CommandExit::from_wait(waitpid(self.pid, Some(WaitPidFlag::WNOHANG)).ok()?)?;
        self.reaped = true;
        Some(exit)
    }

    fn wait_blocking(&mut self) -> Option<CommandExit> {
        if self.reaped {
            return None;
        }
        loop {
            match waitpid(self.pid, None) {
                Ok(status) => {
                    if let Some(exit) = CommandExit::from_wait(status) {
                        self.reaped = true;
                        return Some(exit);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            self.wait_blocking();
        }
        // Then whatever of it is left, now ours (we are a subreaper): with --pidns the
        // namespace's init, which outlives its parent once set up, to clean up after a
        // killed usernet. Killed here, before the setup channel closes, it never sees the
        // hang-up, so it never cleans up after this usernet, which cleans up itself. Our
        // unreaped children's pids cannot be reused.
        self.reaper.kill_all();
    }
}

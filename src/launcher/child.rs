//! The child: the process the parent forks, which enters the new namespaces, sets up the
//! network inside them, starts COMMAND and stays as its supervisor.
//!
//! It runs right after `fork()` of a single-threaded parent, so it may allocate and use std
//! freely. It never returns: it exits with COMMAND's status (128+N for signal N), or with the
//! code of a setup failure after telling the parent why. As a child subreaper it also cleans
//! up whatever COMMAND left running, so nothing outlives the run; should the parent be
//! killed, it notices on the setup channel and cleans up the parent's part too.
//!
//! In order: user, network and mount namespaces (and cgroup, UTS, IPC ones when asked); with
//! `--pidns` a PID namespace, whose init (a child of this process, which then only waits)
//! carries on; `/` propagation; `--copy-up` tmpfs copies; a sysfs of the new network
//! namespace; tap0 and its addresses (IPv4, and IPv6 with `--ipv6`); resolv.conf and hosts;
//! the port driver's `.bp.sock`; COMMAND.
//!
//! With a detached network namespace (rootlesskit's `--detach-netns`) this process and COMMAND
//! keep the caller's network namespace: the one usernet serves is made by a thread of its own
//! (a thread may change network namespace alone), bind-mounted on `STATE_DIR/netns` (visible
//! in this mount namespace, so to COMMAND), and configured from that thread; the port
//! driver's dials join it the same way. There is no sysfs to remount then, and resolv.conf
//! and hosts stay in the state dir for COMMAND to use where it wants them, as rootlesskit
//! leaves them.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid, getppid};

use crate::config::{ExtraNamespaces, NetMode, Propagation};
use crate::net::VirtualNetwork;
use crate::netconf::{LinkSettings, Netlink};
use crate::portdriver::child::ChildServer;
use crate::process::channel::{Channel, Msg};
use crate::process::signals::{Signals, wait_readable};
use crate::process::{CommandExit, Failure, activation};
use crate::tap;

/// Everything the child needs, decided by the parent before the fork.
pub struct ChildConfig {
    pub net_mode: NetMode,
    pub ifname: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub txqueuelen: u32,
    pub net: VirtualNetwork,
    /// A generated resolv.conf to bind over /etc/resolv.conf (builtin mode).
    pub resolv_conf: Option<PathBuf>,
    /// A generated hosts file to bind over /etc/hosts.
    pub hosts: Option<PathBuf>,
    /// Where to bind the detached network namespace (`--detach-netns`): set, COMMAND keeps
    /// the caller's network namespace.
    pub detached_netns: Option<PathBuf>,
    /// Namespaces beyond user, mount, network and PID.
    pub extra_namespaces: ExtraNamespaces,
    /// A cgroup2 of the child's cgroup namespace on /sys/fs/cgroup (`--evacuate-cgroup2`).
    pub cgroup2: bool,
    /// Sockets of a socket activation, passed on to COMMAND (fds 3 and up).
    pub activation_fds: Option<u32>,
    /// Directories to give a writable tmpfs copy (`--copy-up`).
    pub copy_up: Vec<PathBuf>,
    /// Mount propagation of `/` (`--propagation`).
    pub propagation: Propagation,
    /// A new PID namespace, whose init (PID 1) does the rest (`--pidns`).
    pub pidns: bool,
    pub command: Vec<OsString>,
    /// Variables added to COMMAND's environment.
    pub env: Vec<(String, String)>,
    pub parent: Pid,
    pub state_dir: PathBuf,
    /// Cleans the state dir up should the parent be killed before it can.
    pub state_cleaner: Option<crate::launcher::statedir::Cleaner>,
    /// The port driver's socket and readiness FIFO, when it runs.
    pub port_driver: Option<(PathBuf, PathBuf)>,
}

/// The child's whole life.
pub fn main(chan: Channel, cfg: ChildConfig) -> ! {
    let code = match run(&chan, &cfg) {
        Ok(exit) => {
            let _ = chan.send(&Msg::Exited(exit));
            exit.shell_code()
        }
        Err(f) => {
            let _ = chan.send(&Msg::Failed {
                code: f.code,
                message: f.message,
            });
            f.code
        }
    };
    std::process::exit(code)
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
}

fn run(chan: &Channel, cfg: &ChildConfig) -> Result<CommandExit, Failure> {
    // Die with the parent: without it there is no network and nobody to report to.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if getppid() != cfg.parent {
        return Err(fail("usernet exited during setup"));
    }

    let mut flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS;
    if cfg.net_mode != NetMode::Host && cfg.detached_netns.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let extra = cfg.extra_namespaces;
    for (wanted, flag) in [
        (extra.cgroup, CloneFlags::CLONE_NEWCGROUP),
        (extra.uts, CloneFlags::CLONE_NEWUTS),
        (extra.ipc, CloneFlags::CLONE_NEWIPC),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    unshare(flags).map_err(|e| fail(unshare_error(e)))?;
    // The parent made itself non-dumpable before forking (see `harden`), and so are we. We
    // hold nothing of the host side (no host socket; the TAP is only passed through), and
    // both the parent writing our id maps now and the caller entering `child_pid` later
    // (`nsenter -t`, `usernet attach`) need a dumpable process: become one again. The guest
    // may ptrace us; it gains nothing it does not already have.
    let _ = nix::sys::prctl::set_dumpable(true);
    chan.send(&Msg::Unshared)
        .map_err(|e| fail(format!("setup channel: {e}")))?;
    match chan.recv() {
        Ok((Msg::MapsWritten, _)) => {}
        Ok((other, _)) => return Err(fail(format!("unexpected setup message {other:?}"))),
        Err(e) => return Err(fail(format!("setup channel: {e}"))),
    }
    // Become root of the new namespace in every id slot.
    let _ = nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0));
    let _ = nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0));
    if cfg.pidns {
        become_init(chan)?;
    }

    mount(
        None::<&str>,
        "/",
        None::<&str>,
        cfg.propagation.flags(),
        None::<&str>,
    )
    .map_err(|e| {
        fail(format!(
            "cannot set the mount propagation of / to {:?}: {}",
            cfg.propagation,
            e.desc()
        ))
    })?;

    if cfg.pidns {
        mount_proc();
    }
    for (n, dir) in cfg.copy_up.iter().enumerate() {
        copy_up(dir, &cfg.state_dir.join(format!(".copy-up-{n}")))?;
    }
    let detached = match &cfg.detached_netns {
        Some(path) => Some(detached_network(chan, cfg, path)?),
        None => {
            if cfg.net_mode != NetMode::Host {
                remount_sysfs(&cfg.state_dir, cfg.cgroup2)?;
            } else if cfg.cgroup2 {
                // /sys stays the host's: a tmpfs to mount cgroup2 on, over its cgroups.
                mount(
                    Some("tmpfs"),
                    CGROUP_DIR,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("mode=755"),
                )
                .map_err(|e| {
                    fail(format!(
                        "cannot mount a tmpfs on {CGROUP_DIR}: {}",
                        e.desc()
                    ))
                })?;
                mount_cgroup2()?;
            }
            setup_network(chan, cfg)?;
            show_resolv_conf_and_hosts(cfg)?;
            None
        }
    };
    // The builtin port driver: .bp.sock, served from inside the namespaces, then rootlesskit's
    // readiness signal.
    let port_driver = match &cfg.port_driver {
        Some((socket, ready)) => {
            let netns = match &detached {
                Some(fd) => Some(fd.try_clone().map_err(|e| fail(format!("dup: {e}")))?),
                None => None,
            };
            let server = ChildServer::bind(socket, netns)
                .map_err(|e| fail(format!("cannot listen on {}: {e}", socket.display())))?;
            ChildServer::signal_ready(ready).map_err(|e| {
                fail(format!(
                    "cannot signal readiness on {}: {e}",
                    ready.display()
                ))
            })?;
            Some(server)
        }
        None => None,
    };
    // From here the state dir holds what the parent writes (child_pid, api.sock), so the
    // parent's death is no longer answered by dying with it: it shows as the setup channel
    // hanging up, and is answered by ending COMMAND (once there is one) and cleaning up,
    // which the parent, killed, cannot do. A death before this is still seen here.
    let _ = nix::sys::prctl::set_pdeathsig(None);
    if let Err(e) = chan.send(&Msg::Configured) {
        return match e.raw_os_error() {
            Some(libc::EPIPE | libc::ECONNRESET) => Ok(orphaned(None, cfg)),
            _ => Err(fail(format!("setup channel: {e}"))),
        };
    }
    // The parent talks to the port driver (its handshake) before it says Go.
    loop {
        let mut fds = vec![std::os::fd::AsFd::as_fd(chan)];
        if let Some(server) = &port_driver {
            fds.push(std::os::fd::AsFd::as_fd(server.listener()));
        }
        let ready = wait_readable(&fds).map_err(|e| fail(format!("setup channel: {e}")))?;
        if ready == 1
            && let Some(server) = &port_driver
        {
            server.accept_all();
            continue;
        }
        match chan.recv() {
            Ok((Msg::Go, _)) => break,
            Ok((other, _)) => return Err(fail(format!("unexpected setup message {other:?}"))),
            // The parent is gone: end of file, or ECONNRESET if it died with our message
            // unread. (It closes its end only after killing us.)
            Err(_) => return Ok(orphaned(None, cfg)),
        }
    }
    supervise(chan, cfg, port_driver.as_ref())
}

/// `--pidns`: make a PID namespace and go on as its init (PID 1), a child of this process,
/// which stays behind only to wait for it and exit with its status (the parent waits for us).
/// The init tells the parent its pid outside, which gets forwarded signals and is child_pid.
/// The init needs no signal handlers: signals blocked (ours are, read from a signalfd) are
/// never dropped, not even for a namespace's init.
fn become_init(chan: &Channel) -> Result<(), Failure> {
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| fail(format!("cannot create a PID namespace: {}", e.desc())))?;
    // SAFETY: this process is single-threaded (a fork of the single-threaded launcher).
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(fail(format!(
            "cannot start the PID namespace's init: {}",
            e.desc()
        ))),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let code = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, c)) => break c,
                    Ok(status @ WaitStatus::Signaled(..)) => {
                        // The init was killed: it could not say so itself.
                        if let Some(exit) = CommandExit::from_wait(status) {
                            let _ = chan.send(&Msg::Exited(exit));
                            break exit.shell_code();
                        }
                    }
                    Err(Errno::EINTR) | Ok(_) => {}
                    Err(_) => break 1,
                }
            };
            std::process::exit(code)
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // During setup, die with the process that made us (which dies with usernet).
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            // /proc is still the host's: /proc/self names us as the outside sees us.
            let outside = fs::read_link("/proc/self")
                .ok()
                .and_then(|p| p.to_str()?.parse::<i32>().ok())
                .ok_or_else(|| fail("cannot learn the PID namespace's init pid"))?;
            chan.send(&Msg::Init { pid: outside })
                .map_err(|e| fail(format!("setup channel: {e}")))
        }
    }
}

/// A /proc of the new PID namespace, so it lists the namespace's processes. A kernel that
/// does not allow it (a /proc with parts hidden by a container runtime) gets a read-only try,
/// then a warning: the host's /proc stays.
fn mount_proc() {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted = mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>).or_else(|_| {
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            flags | MsFlags::MS_RDONLY,
            None::<&str>,
        )
    });
    if let Err(e) = mounted {
        log::warn!(
            "cannot mount a /proc for the new PID namespace ({}); /proc shows the host's processes",
            e.desc()
        );
    }
}

/// Why unshare() failed, and what to do about it.
fn unshare_error(e: Errno) -> String {
    let what = "cannot create a user namespace";
    match e {
        Errno::ENOSPC | Errno::EUSERS => {
            let limit =
                fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
            format!(
                "{what}: the limit is reached (sysctl user.max_user_namespaces = {}); raise it",
                limit.trim()
            )
        }
        Errno::EPERM | Errno::EACCES => format!(
            "{what}: not permitted; unprivileged user namespaces may be disabled (sysctls kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns) or blocked by a container's seccomp policy"
        ),
        Errno::EINVAL => {
            format!("{what}: this kernel does not support user namespaces (CONFIG_USER_NS)")
        }
        e => format!("{what}: {}", e.desc()),
    }
}

/// Bring up lo in the new network namespace; returns the netlink connection for more.
fn loopback_up() -> Result<Netlink, Failure> {
    let mut nl = Netlink::open().map_err(|e| fail(format!("netlink: {e}")))?;
    nl.link_up("lo").map_err(|e| fail(e.to_string()))?;
    Ok(nl)
}

/// The network of the namespace this thread is in, as the mode says: tap0 and its addresses
/// (builtin), only lo up (none), or nothing (host).
fn setup_network(chan: &Channel, cfg: &ChildConfig) -> Result<(), Failure> {
    match cfg.net_mode {
        NetMode::Builtin => setup_builtin(chan, cfg),
        NetMode::None => loopback_up().map(drop),
        NetMode::Host => Ok(()),
    }
}

/// `--detach-netns`: make the network namespace usernet serves on a thread of its own, bind
/// it on `path`, and set it up there; this thread stays in the caller's. Returns the
/// namespace (for the port driver's dials).
fn detached_network(
    chan: &Channel,
    cfg: &ChildConfig,
    path: &Path,
) -> Result<std::os::fd::OwnedFd, Failure> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                    fail(format!(
                        "cannot create the detached network namespace: {}",
                        e.desc()
                    ))
                })?;
                let own = Path::new("/proc/thread-self/ns/net");
                bind(own, path)?;
                let netns = fs::File::open(own)
                    .map_err(|e| fail(format!("cannot open {}: {e}", own.display())))?;
                setup_network(chan, cfg)?;
                Ok(std::os::fd::OwnedFd::from(netns))
            })
            .join()
            .unwrap_or_else(|_| Err(fail("setting up the detached network namespace failed")))
    })
}

fn setup_builtin(chan: &Channel, cfg: &ChildConfig) -> Result<(), Failure> {
    let mut nl = loopback_up()?;
    let tap = tap::create(&cfg.ifname).map_err(|e| fail(e.to_string()))?;
    chan.send_with_fd(&Msg::Tap, std::os::fd::AsFd::as_fd(&tap))
        .map_err(|e| fail(format!("cannot pass the tap fd to the parent: {e}")))?;
    drop(tap);
    if cfg.net.v6.is_some() {
        crate::netconf::prepare_guest_ipv6(&cfg.ifname);
    }
    let settings = LinkSettings {
        up: true,
        mtu: Some(cfg.mtu),
        txqueuelen: Some(cfg.txqueuelen),
        mac: cfg.mac,
    };
    nl.set_link(&cfg.ifname, &settings)
        .map_err(|e| fail(e.to_string()))?;
    nl.add_ipv4_address(&cfg.ifname, cfg.net.guest, cfg.net.prefix)
        .map_err(|e| fail(e.to_string()))?;
    nl.add_default_ipv4_route(&cfg.ifname, cfg.net.gateway)
        .map_err(|e| fail(e.to_string()))?;
    if let Some(v6) = &cfg.net.v6 {
        nl.add_guest_ipv6(&cfg.ifname, v6)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Show the generated resolv.conf and hosts as /etc/resolv.conf and /etc/hosts.
fn show_resolv_conf_and_hosts(cfg: &ChildConfig) -> Result<(), Failure> {
    let etc_copied_up = cfg.copy_up.iter().any(|d| d == Path::new("/etc"));
    for (generated, name) in [(&cfg.resolv_conf, "resolv.conf"), (&cfg.hosts, "hosts")] {
        let Some(generated) = generated else {
            continue;
        };
        let target = Path::new("/etc").join(name);
        if etc_copied_up {
            // /etc is a tmpfs of ours: the file can simply be there, which no change on the
            // host can take away (a bind mount goes when the host replaces its file).
            let text = fs::read(generated)
                .map_err(|e| fail(format!("cannot read {}: {e}", generated.display())))?;
            let _ = fs::remove_file(&target);
            fs::write(&target, text)
                .map_err(|e| fail(format!("cannot write {}: {e}", target.display())))?;
        } else {
            bind_over_etc(generated, &target)?;
        }
    }
    Ok(())
}

/// `--copy-up DIR`, as rootlesskit's tmpfs+symlink mode: a tmpfs over DIR whose entries are
/// symlinks to the originals (kept visible under `DIR/.ro-usernet`), so the command can
/// replace or add files in DIR without touching the host's. `stash` is a path outside DIR
/// where the original is bound while the tmpfs goes on.
fn copy_up(dir: &Path, stash: &Path) -> Result<(), Failure> {
    let what = |e: nix::Error, doing: &str| {
        fail(format!(
            "cannot copy up {}: {doing}: {}",
            dir.display(),
            e.desc()
        ))
    };
    fs::create_dir(stash).map_err(|e| fail(format!("cannot copy up {}: {e}", dir.display())))?;
    let result = (|| {
        mount(
            Some(dir),
            stash,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| what(e, "binding the original"))?;
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .map_err(|e| what(e, "mounting a tmpfs"))?;
        let ro = dir.join(COPY_UP_ORIGINAL);
        fs::create_dir(&ro).map_err(|e| fail(format!("cannot create {}: {e}", ro.display())))?;
        mount(
            Some(stash),
            &ro,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| what(e, "moving the original under the tmpfs"))?;
        let entries =
            fs::read_dir(&ro).map_err(|e| fail(format!("cannot list {}: {e}", ro.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            // A symlink keeps pointing where it pointed; anything else points at the original.
            let target = match fs::read_link(entry.path()) {
                Ok(t) => t,
                Err(_) => Path::new(COPY_UP_ORIGINAL).join(&name),
            };
            std::os::unix::fs::symlink(&target, dir.join(&name))
                .map_err(|e| fail(format!("cannot copy up {}: {e}", dir.display())))?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir(stash);
    result
}

/// Where a copied-up directory's original stays visible.
const COPY_UP_ORIGINAL: &str = ".ro-usernet";

const CGROUP_DIR: &str = "/sys/fs/cgroup";

/// A cgroup2 of this cgroup namespace on /sys/fs/cgroup.
fn mount_cgroup2() -> Result<(), Failure> {
    mount(
        Some("none"),
        CGROUP_DIR,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        fail(format!(
            "cannot mount cgroup2 on {CGROUP_DIR}: {}",
            e.desc()
        ))
    })
}

/// Mount a sysfs of the new network namespace on /sys, so /sys/class/net lists its own
/// interfaces, keeping the host's /sys/fs/cgroup (parked in the state dir meanwhile), or
/// with `cgroup2` a cgroup2 of our cgroup namespace there. A sysfs that cannot be mounted is
/// survivable (/sys keeps showing the host's interfaces): warn and go on.
fn remount_sysfs(state_dir: &Path, cgroup2: bool) -> Result<(), Failure> {
    let cgroup = Path::new(CGROUP_DIR);
    let park = state_dir.join(".cgroup-park");
    let parked = !cgroup2
        && cgroup.is_dir()
        && fs::create_dir(&park).is_ok()
        && mount(
            Some(cgroup),
            &park,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .is_ok();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted = mount(Some("sysfs"), "/sys", Some("sysfs"), flags, None::<&str>).or_else(|_| {
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            flags | MsFlags::MS_RDONLY,
            None::<&str>,
        )
    });
    match mounted {
        Ok(()) if parked => {
            if let Err(e) = mount(
                Some(&park),
                cgroup,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            ) {
                log::warn!(
                    "cannot keep /sys/fs/cgroup over the namespace's sysfs: {}",
                    e.desc()
                );
            }
        }
        Ok(()) => {}
        Err(e) => {
            log::warn!(
                "cannot mount a sysfs for the new network namespace ({}); /sys/class/net shows the host's interfaces",
                e.desc()
            );
            if parked {
                let _ = nix::mount::umount2(&park, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _ = fs::remove_dir(&park);
    if cgroup2 {
        mount_cgroup2()?;
    }
    Ok(())
}

/// Make `file` in /etc (or the file it links to) show our generated one, in our private
/// mount namespace only.
fn bind_over_etc(generated: &Path, file: &Path) -> Result<(), Failure> {
    let target = match fs::canonicalize(file) {
        Ok(t) => t,
        Err(e) => {
            log::warn!(
                "{} cannot be resolved ({e}); the namespace keeps the host's",
                file.display()
            );
            return Ok(());
        }
    };
    bind(generated, &target)
}

/// Bind-mount `source` on `target` (in our mount namespace only).
fn bind(source: &Path, target: &Path) -> Result<(), Failure> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        fail(format!(
            "cannot bind-mount {} over {}: {}",
            source.display(),
            target.display(),
            e.desc()
        ))
    })
}

/// Start COMMAND, forward signals to it, and say how it ended.
fn supervise(
    chan: &Channel,
    cfg: &ChildConfig,
    port_driver: Option<&ChildServer>,
) -> Result<CommandExit, Failure> {
    // Orphans of COMMAND's process tree are re-parented to us, so we can clean them up.
    crate::process::reaper::become_subreaper();
    let mut signals = Signals::new().map_err(|e| fail(format!("signalfd: {e}")))?;

    let (program, args) = cfg
        .command
        .split_first()
        .ok_or_else(|| fail("no command given"))?;
    let mut command = match cfg.activation_fds {
        // Through the helper that sets LISTEN_PID to COMMAND's pid.
        Some(count) => {
            activation::keep_open(count);
            activation::helper_command(&cfg.command)
        }
        None => {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
    };
    command.envs(cfg.env.iter().map(|(k, v)| (k, v)));
    // We block the forwarded signals to read them from a signalfd; COMMAND must start with
    // none blocked.
    crate::process::supervised(&mut command);
    let child = command.spawn().map_err(|e| {
        let name = program.to_string_lossy();
        match e.kind() {
            std::io::ErrorKind::NotFound => Failure {
                code: 127,
                message: format!("{name}: command not found"),
            },
            _ => Failure {
                code: 126,
                message: format!("{name}: cannot execute: {e}"),
            },
        }
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let _ = chan.send(&Msg::Started);
    crate::footprint::shed_startup();
    // The parent's death is seen on the setup channel (it sends nothing more); if it died
    // before COMMAND started, the channel has already hung up.

    loop {
        let mut fds = vec![std::os::fd::AsFd::as_fd(&signals)];
        if let Some(server) = port_driver {
            fds.push(std::os::fd::AsFd::as_fd(server.listener()));
        }
        fds.push(std::os::fd::AsFd::as_fd(chan));
        let parent_index = fds.len() - 1;
        let ready = wait_readable(&fds).map_err(|e| fail(format!("waiting for signals: {e}")))?;
        if ready == parent_index && chan.recv().is_err() {
            return Ok(orphaned(Some(pid), cfg));
        }
        if ready == 1
            && let Some(server) = port_driver
        {
            server.accept_all();
            continue;
        }
        while let Some(received) = signals
            .next_signal()
            .map_err(|e| fail(format!("signalfd: {e}")))?
        {
            if received.signal == Signal::SIGCHLD {
                if let Some(exit) = reap(pid) {
                    // As a PID namespace's init, our exit ends everything left in it.
                    if !cfg.pidns {
                        kill_leftovers();
                    }
                    return Ok(exit);
                }
            } else if received.from_process {
                let _ = kill(pid, received.signal);
            }
        }
    }
}

/// The parent died without waiting for us (killed with SIGKILL: a normal exit waits for
/// COMMAND), before COMMAND started or after: end COMMAND and everything it started, remove
/// the state dir, and exit as killed.
fn orphaned(command: Option<Pid>, cfg: &ChildConfig) -> CommandExit {
    if let Some(command) = command {
        let _ = kill(command, Signal::SIGKILL);
        reap(command);
    }
    if !cfg.pidns {
        kill_leftovers();
    }
    // The detached namespace's mount point can only go once nothing is mounted on it here.
    if let Some(netns) = &cfg.detached_netns {
        let _ = nix::mount::umount2(netns, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Some(cleaner) = &cfg.state_cleaner {
        cleaner.clean();
    }
    CommandExit::Signal {
        signal: Signal::SIGKILL as i32,
        core_dumped: false,
    }
}

/// Reap every exited child; how COMMAND ended once it is among them.
fn reap(command: Pid) -> Option<CommandExit> {
    let mut exit = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(status) if status.pid() == Some(command) => {
                exit = CommandExit::from_wait(status).or(exit);
            }
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    exit
}

/// Kill whatever is left of COMMAND's process tree (our children, including adopted orphans).
fn kill_leftovers() {
    match crate::process::reaper::Reaper::new() {
        Ok(reaper) => reaper.kill_all(),
        Err(e) => log::warn!("cannot list what COMMAND left running: {e}"),
    }
}

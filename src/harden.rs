//! Hardening of the long-lived usernet process, the one that holds the TAP fd and every host
//! socket (call it the host-side process), so neither the guest nor a bug in the code that reads
//! guest packets and API requests can turn it into a way out.
//!
//! # The guest must not be able to inspect or drive the host-side process
//!
//! The guest is root of a user namespace that usernet's caller owns, so its processes carry
//! the caller's kernel uid, the same as the host-side process. The kernel lets a process ptrace
//! (and open `/proc/PID/mem`, `/proc/PID/fd/*`, `/proc/PID/root`, call `process_vm_readv` or
//! `pidfd_getfd` on) another whose uid matches, unless the target is **non-dumpable**, in which
//! case it also needs `CAP_SYS_PTRACE` in the user namespace the target was started in; or a
//! caller with `CAP_SYS_PTRACE` in the target's *current* user namespace. Hence two rules:
//!
//! 1. [`set_undumpable`] runs before `main` (a constructor of the binary, so only the dynamic
//!    loader's work comes between `execve` and it), for every personality (`run`, `attach`,
//!    slirp4netns), before any host socket exists, and nothing makes the process dumpable again
//!    (an `execve` would, and seccomp forbids it). The guest never has `CAP_SYS_PTRACE` in the
//!    namespace usernet was started in. A tracer that won the race for that first instant is
//!    refused ([`refuse_foreign_tracer`]); what is left is a `/proc/PID/mem` opened in it,
//!    which no process can detect: a guest would have to find usernet's pid within the
//!    loader's few hundred microseconds, and only under `usernet attach` to a namespace whose
//!    command already runs (`usernet run` starts COMMAND after setup). (An execute-only
//!    binary would not close it: kernel 6.18 leaves a process that runs a file it cannot read
//!    dumpable, as checked.) Forked helpers inherit
//!    the flag; the one process that turns it back off is `usernet run`'s process inside the
//!    namespace, which by then holds no host-side resource and must stay reachable for
//!    `nsenter -t $(cat child_pid)` (see the launcher's child).
//! 2. The host-side process **never enters the guest's user namespace**, where the guest's
//!    root holds every capability, `CAP_SYS_PTRACE` included. The sandbox needs a mount
//!    namespace, which an unprivileged process can only make inside a user namespace of its
//!    own: it gets a fresh one, a sibling of the guest's that the guest has no rights in
//!    ([`private_user_namespace`]), never the guest's (rootlesskit's parent and slirp4netns
//!    without a sandbox likewise stay out of it).
//!
//! What the guest's root can still do to the host-side process, having the same uid: send it
//! signals (kill or stop it: that only takes the guest's own network away), change its
//! resource limits with `prlimit`, and its scheduling priority or CPU affinity (the same: it
//! can slow or starve its own network, nothing more), and read the world-readable parts of
//! `/proc/PID` (`stat`, `status`, `cmdline`). It can also do all of that, and ptrace, to any of
//! the caller's other processes it can see, which usernet cannot prevent: `--pidns` hides them
//! from the guest, and a container runtime does more.
//!
//! # Sandbox and seccomp
//!
//! - **Sandbox**: a private mount namespace whose root is an empty, read-only tmpfs holding
//!   only `/etc` and `/run` (read-only: resolv.conf is re-read when it changes), the target
//!   of an `/etc/resolv.conf` symlink that escapes them, and the state directory when usernet
//!   still needs it; then every capability is dropped but `CAP_NET_BIND_SERVICE` (none at all
//!   in a private user namespace, where it would be worthless), and `no_new_privs` is set.
//! - **seccomp**: an allow-list (slirp4netns has a deny-list): only the system calls the
//!   event loop, the host sockets, the API servers, the port driver's relays and the exit
//!   path make. Anything else fails with `EPERM` (`execve`, `ptrace`, `mount`, `setns`,
//!   `bpf`, `keyctl`...). `clone` may only make threads, never namespaces; `clone3`, whose
//!   flags a filter cannot see, reports `ENOSYS` so glibc falls back to `clone`.
//!
//! Files that must go away at exit (the API socket, the state dir) are removed through
//! directory fds opened before the sandbox, since their paths are no longer visible.
//!
//! `Auto` (the default of `usernet run` and `usernet attach`) tries and carries on without
//! where the system does not allow it (said at info level, so `--debug` shows why); `On`
//! makes failure fatal; `Off` skips it. Neither changes rules 1 and 2.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Whether to harden, and how much failure matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hardening {
    /// Do not.
    #[value(name = "false")]
    Off,
    /// Try; where the system does not allow it, go on without (logged at info level).
    Auto,
    /// Do, or fail.
    #[value(name = "true")]
    On,
}

/// What must stay reachable after the sandbox is in place.
#[derive(Debug, Default, Clone)]
pub struct Keep {
    /// The API socket (removed at exit).
    pub api_socket: Option<PathBuf>,
    /// A directory that stays visible, writable, at its own path (the state dir).
    pub state_dir: Option<PathBuf>,
}

/// The result of [`apply_sandbox`]: how to clean up from inside it.
#[derive(Debug, Default)]
pub struct Sandbox {
    active: bool,
    /// The API socket's directory and name.
    api_dir: Option<(OwnedFd, OsString)>,
}

impl Sandbox {
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Remove the API socket file, whether or not its path is still visible.
    pub fn unlink_api_socket(&self, path: &Path) {
        match &self.api_dir {
            Some((dir, name)) => unlink_at(dir.as_fd(), name, false),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// `unlinkat(dir, name)`, ignoring errors (cleanup).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsString, is_dir: bool) {
    let flag = if is_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    let _ = nix::unistd::unlinkat(dir, name.as_os_str(), flag);
}

/// Open `path`'s parent directory (O_PATH) and return it with `path`'s file name.
pub fn open_parent(path: &Path) -> Option<(OwnedFd, OsString)> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name()?.to_os_string();
    let fd = open_path(parent, true).ok()?;
    Some((fd, name))
}

fn open_path(path: &Path, dir: bool) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, open};
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if dir {
        flags |= OFlag::O_DIRECTORY;
    }
    open(path, flags, nix::sys::stat::Mode::empty()).map_err(std::io::Error::from)
}

/// Make this process non-dumpable, so a process with the same uid but without
/// `CAP_SYS_PTRACE` where usernet started (the guest's root) can neither ptrace it nor open
/// its `/proc/PID/{mem,fd,root,...}`. Rule 1 of the module docs; call it before anything else.
pub fn set_undumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        // Only fails for an invalid argument; nothing to do but say so.
        log::warn!(
            "cannot make usernet non-dumpable: {}",
            std::io::Error::from(e)
        );
    }
}

/// Fail if a process other than our parent is tracing us: it could only have attached in the
/// instant between `execve` and [`set_undumpable`], and would then own this process. Our
/// parent tracing us (`strace usernet ...`, `gdb --args usernet ...`) is the user debugging.
pub fn refuse_foreign_tracer() -> Result<()> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if tracer != 0 && tracer != nix::unistd::getppid().as_raw() {
        return Err(anyhow!(
            "process {tracer} is tracing usernet (ptrace) and is not the process that started it; refusing to run (trace usernet by starting it from the tracer, e.g. strace usernet ...)"
        ));
    }
    Ok(())
}

/// Enter the sandbox as `mode` says.
pub fn apply_sandbox(mode: Hardening, keep: &Keep) -> Result<Sandbox> {
    if mode == Hardening::Off {
        return Ok(Sandbox::default());
    }
    crate::hostinfo::preload();
    let api_dir = keep.api_socket.as_deref().and_then(open_parent);
    match enter_sandbox(keep) {
        Ok(()) => {
            log::debug!("sandbox: in place");
            Ok(Sandbox {
                active: true,
                api_dir,
            })
        }
        Err(e) if mode == Hardening::Auto => {
            log::info!("running without a sandbox: {e}");
            Ok(Sandbox {
                active: false,
                api_dir,
            })
        }
        Err(e) => Err(anyhow!(
            "cannot create the sandbox: {e} (run without --enable-sandbox / with --sandbox=false to do without)"
        )),
    }
}

/// The directory the new root is built in (a tmpfs mounted over it, in our namespace only).
const NEW_ROOT: &str = "/tmp";

fn enter_sandbox(keep: &Keep) -> Result<()> {
    // Privileged where we are (root), a mount namespace is all it takes; otherwise make it in
    // a user namespace of our own (rule 2: never the guest's).
    let mut private_userns = false;
    match unshare(CloneFlags::CLONE_NEWNS) {
        Ok(()) => {}
        Err(nix::errno::Errno::EPERM) => {
            private_user_namespace()?;
            private_userns = true;
            unshare(CloneFlags::CLONE_NEWNS)
                .map_err(|e| anyhow!("cannot create a mount namespace: {}", e.desc()))?;
        }
        Err(e) => return Err(anyhow!("cannot create a mount namespace: {}", e.desc())),
    }
    // Mounts made from here on stay in this namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| anyhow!("cannot make / a slave mount: {}", e.desc()))?;

    // What to bring in at its own path, opened while still visible.
    let mut extra: Vec<(OwnedFd, PathBuf, bool)> = Vec::new();
    if let Some(dir) = &keep.state_dir
        && !under_kept_trees(dir)
    {
        let fd = open_path(dir, true).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
        extra.push((fd, dir.clone(), true));
    }
    if let Ok(target) = std::fs::canonicalize("/etc/resolv.conf")
        && !under_kept_trees(&target)
        && let Ok(fd) = open_path(&target, false)
    {
        log::debug!(
            "sandbox: /etc/resolv.conf links to {}, keeping it too",
            target.display()
        );
        extra.push((fd, target, false));
    }

    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(|e| anyhow!("cannot mount a tmpfs on {NEW_ROOT}: {}", e.desc()))?;
    build_root(&extra).inspect_err(|_| {
        let _ = umount2(NEW_ROOT, MntFlags::MNT_DETACH);
    })?;
    drop(extra);
    // Read-only root, as slirp4netns; some kernels refuse, which only costs a defence layer.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    ) {
        log::debug!("sandbox: cannot remount / read-only: {}", e.desc());
    }
    drop_capabilities(!private_userns)
}

/// Move this process into a new user namespace of its own, owned by the caller's uid and
/// mapping only the caller's uid and gid onto themselves, so it may make a mount namespace.
/// The guest's root has no capability there: the namespace is a sibling of the guest's.
///
/// A non-dumpable process cannot write its own `uid_map` (its `/proc` files belong to root),
/// so a throwaway helper makes the namespace: it closes every fd it inherited, unshares a user
/// namespace and an empty network namespace, becomes dumpable (nothing it holds is worth
/// having: a guest that seized it would find no fd and no network), writes the maps, and sends
/// the namespace back. This process then joins it, staying non-dumpable throughout.
fn private_user_namespace() -> Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| anyhow!("socketpair: {}", e.desc()))?;
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    // SAFETY: the caller is single-threaded (setns into a user namespace requires it anyway),
    // so the child may run ordinary code; it only makes system calls and exits.
    let helper = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(anyhow!("fork: {}", e.desc())),
        Ok(nix::unistd::ForkResult::Child) => {
            let code = match userns_helper(theirs.as_fd(), uid, gid) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = nix::unistd::write(&theirs, e.to_string().as_bytes());
                    1
                }
            };
            // SAFETY: _exit ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
    };
    drop(theirs);
    let mut buf = [0u8; 256];
    let received = crate::fdpass::recv_fd(ours.as_fd(), &mut buf);
    let _ = nix::sys::wait::waitpid(helper, None);
    let ns = match received {
        Ok((_, Some(fd))) => fd,
        Ok((n, None)) => {
            let why = String::from_utf8_lossy(&buf[..n]).into_owned();
            return Err(if why.is_empty() {
                anyhow!("the user namespace helper died")
            } else {
                anyhow!(why)
            });
        }
        Err(e) => return Err(anyhow!("the user namespace helper: {e}")),
    };
    setns(ns.as_fd(), CloneFlags::CLONE_NEWUSER)
        .map_err(|e| anyhow!("cannot join a private user namespace: {}", e.desc()))
}

/// The forked helper of [`private_user_namespace`].
fn userns_helper(sock: BorrowedFd<'_>, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> Result<()> {
    let keep = sock.as_raw_fd() as libc::c_uint;
    // SAFETY: close_range only closes descriptors; none of them is used again in this process
    // but `sock`, which is outside both ranges.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
        .map_err(|e| anyhow!("cannot create a user namespace: {}", e.desc()))?;
    let _ = nix::sys::prctl::set_dumpable(true);
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| anyhow!("cannot write /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("gid_map", format!("{gid} {gid} 1\n"))?;
    let ns = std::fs::File::open("/proc/self/ns/user")
        .map_err(|e| anyhow!("cannot open the new user namespace: {e}"))?;
    crate::fdpass::send_fd(sock, b"U", ns.as_fd()).map_err(|e| anyhow!("{e}"))
}

/// Whether `p` is inside /etc or /run, which the sandbox keeps anyway.
fn under_kept_trees(p: &Path) -> bool {
    p.starts_with("/etc") || p.starts_with("/run")
}

/// Fill the new root and switch to it.
fn build_root(extra: &[(OwnedFd, PathBuf, bool)]) -> Result<()> {
    let root = Path::new(NEW_ROOT);
    for d in ["etc", "run", "old"] {
        mkdir(&root.join(d))?;
    }
    bind(Path::new("/etc"), &root.join("etc"), true)?;
    bind(Path::new("/run"), &root.join("run"), true)?;
    for (fd, path, is_dir) in extra {
        let inside = root.join(path.strip_prefix("/").unwrap_or(path));
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow!("cannot create {}: {e}", parent.display()))?;
        }
        if *is_dir {
            mkdir(&inside)?;
        } else {
            std::fs::File::create(&inside)
                .map_err(|e| anyhow!("cannot create {}: {e}", inside.display()))?;
        }
        let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        bind(&source, &inside, !*is_dir)?;
    }
    std::env::set_current_dir(root).map_err(|e| anyhow!("chdir {NEW_ROOT}: {e}"))?;
    nix::unistd::pivot_root(".", "old").map_err(|e| anyhow!("pivot_root: {}", e.desc()))?;
    std::env::set_current_dir("/").map_err(|e| anyhow!("chdir /: {e}"))?;
    umount2("/old", MntFlags::MNT_DETACH).map_err(|e| anyhow!("umount /old: {}", e.desc()))?;
    let _ = std::fs::remove_dir("/old");
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow!("cannot create {}: {e}", p.display())),
    }
}

/// Bind `from` on `to`, read-only (and nosuid, nodev, noexec) if asked.
fn bind(from: &Path, to: &Path, read_only: bool) -> Result<()> {
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        anyhow!(
            "cannot bind {} on {}: {}",
            from.display(),
            to.display(),
            e.desc()
        )
    })?;
    let mut flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, to, None::<&str>, flags, None::<&str>)
        .map_err(|e| anyhow!("cannot restrict {}: {}", to.display(), e.desc()))
}

/// Keep only CAP_NET_BIND_SERVICE (published ports may be privileged) if `bind_service`, else
/// nothing, for good.
fn drop_capabilities(bind_service: bool) -> Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    // SAFETY: prctl with these options takes integer arguments only.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(anyhow!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        for cap in 0..64 {
            if bind_service && cap == Capability::CAP_NET_BIND_SERVICE.index() as libc::c_ulong {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
            {
                break;
            }
        }
    }
    let mut keep = CapsHashSet::new();
    if bind_service
        && caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_BIND_SERVICE).unwrap_or(false)
    {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    // Nothing is inheritable: this process never executes anything again.
    let sets = [
        (CapSet::Inheritable, CapsHashSet::new()),
        (CapSet::Effective, keep.clone()),
        (CapSet::Permitted, keep),
    ];
    for (set, caps) in sets {
        caps::set(None, set, &caps).map_err(|e| anyhow!("cannot drop capabilities: {e}"))?;
    }
    Ok(())
}

/// Load the seccomp allow-list as `mode` says, for every thread of the process.
pub fn apply_seccomp(mode: Hardening) -> Result<()> {
    if mode == Hardening::Off {
        return Ok(());
    }
    match load_seccomp() {
        Ok(n) => {
            log::debug!("seccomp: {n} system calls allowed");
            Ok(())
        }
        Err(e) if mode == Hardening::Auto => {
            log::info!("running without a seccomp filter: {e}");
            Ok(())
        }
        Err(e) => Err(anyhow!("cannot load the seccomp filter: {e}")),
    }
}

fn load_seccomp() -> Result<usize> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| anyhow!("{e}"))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    // clone: threads only, never new namespaces.
    let no_namespaces = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
        0,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| anyhow!("{e}"))?;
    rules.insert(libc::SYS_clone, vec![no_namespaces]);
    rules.insert(libc::SYS_clone3, Vec::new());
    // ioctl: non-blocking and close-on-exec flags, terminal queries for the logger; never
    // TIOCSTI or device control.
    rules.insert(libc::SYS_ioctl, one_of(1, ALLOWED_IOCTLS)?);
    // prctl: naming threads only.
    rules.insert(libc::SYS_prctl, one_of(0, &[libc::PR_SET_NAME as u64])?);
    // Sockets of the families the datapath and the APIs use; no packet sockets.
    rules.insert(libc::SYS_socket, one_of(0, ALLOWED_SOCKET_FAMILIES)?);
    let count = rules.len();
    // Debugging aid: USERNET_SECCOMP_LOG=1 lets everything through and logs what the filter
    // would have refused to the kernel's audit log (dmesg).
    let mismatch = if std::env::var_os("USERNET_SECCOMP_LOG").is_some() {
        SeccompAction::Log
    } else {
        SeccompAction::Errno(libc::EPERM as u32)
    };
    let allow = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| anyhow!("{e}"))?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| anyhow!("{e}"))?;
    // The allow-list last: it forbids the prctl() that installing a filter starts with.
    for filter in [clone3, allow] {
        let program: seccompiler::BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| anyhow!("{e}"))?;
        seccompiler::apply_filter_all_threads(&program).map_err(|e| anyhow!("{e}"))?;
    }
    Ok(count)
}

/// Rules matching when argument `arg` equals one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<seccompiler::SeccompRule>> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    values
        .iter()
        .map(|&v| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| anyhow!("{e}"))
        })
        .collect()
}

const ALLOWED_IOCTLS: &[u64] = &[
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::FIONREAD,
    libc::TCGETS,
    libc::TIOCGWINSZ,
];

const ALLOWED_SOCKET_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];

/// `clone` flags that make namespaces.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// The system calls usernet makes once set up: found by running the whole test suite with
/// `USERNET_SECCOMP_LOG=1` and reading the audit log, then reviewed one by one.
const ALLOWED: &[i64] = &[
    // Memory and the allocator.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Threads, futexes, signals, time.
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_kill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    // File descriptors.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_splice,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_openat,
    libc::SYS_unlinkat,
    libc::SYS_getdents64,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    // The event loop.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    // Sockets.
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_accept,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pipe,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
];

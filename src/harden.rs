//! Hardening of the long-lived usernet process once setup is done, so a bug in the code that
//! reads guest packets and API requests gives an attacker as little as possible:
//!
//! - **Sandbox**: a private mount namespace whose root is an empty, read-only tmpfs holding
//!   only `/etc` and `/run` (read-only: resolv.conf is re-read when it changes), the target
//!   of an `/etc/resolv.conf` symlink that escapes them, and the state directory when usernet
//!   still needs it; then every capability is dropped but `CAP_NET_BIND_SERVICE`, and
//!   `no_new_privs` is set. An unprivileged process first joins the user namespace it serves
//!   (it owns it), which is what lets it make a mount namespace at all, as slirp4netns does.
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
//! makes failure fatal; `Off` skips it.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    // SAFETY: c is a valid NUL-terminated path; open returns a new fd or -1.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Enter the sandbox as `mode` says. `userns` is the user namespace to join first when not
/// root (the one usernet serves).
pub fn apply_sandbox(
    mode: Hardening,
    userns: Option<BorrowedFd<'_>>,
    keep: &Keep,
) -> Result<Sandbox> {
    if mode == Hardening::Off {
        return Ok(Sandbox::default());
    }
    crate::hostinfo::preload();
    let api_dir = keep.api_socket.as_deref().and_then(open_parent);
    match enter_sandbox(userns, keep) {
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

fn enter_sandbox(userns: Option<BorrowedFd<'_>>, keep: &Keep) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        let Some(u) = userns else {
            return Err("not root, and no user namespace to join".into());
        };
        setns(u, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("cannot join the user namespace: {}", e.desc()))?;
        let _ = nix::unistd::setegid(nix::unistd::Gid::from_raw(0));
        let _ = nix::unistd::seteuid(nix::unistd::Uid::from_raw(0));
    }
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot create a mount namespace: {}", e.desc()))?;
    // Mounts made from here on stay in this namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make / a slave mount: {}", e.desc()))?;

    // What to bring in at its own path, opened while still visible.
    let mut extra: Vec<(OwnedFd, PathBuf, bool)> = Vec::new();
    if let Some(dir) = &keep.state_dir
        && !under_kept_trees(dir)
    {
        let fd = open_path(dir, true).map_err(|e| format!("{}: {e}", dir.display()))?;
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
    .map_err(|e| format!("cannot mount a tmpfs on {NEW_ROOT}: {}", e.desc()))?;
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
    drop_capabilities()
}

/// Whether `p` is inside /etc or /run, which the sandbox keeps anyway.
fn under_kept_trees(p: &Path) -> bool {
    p.starts_with("/etc") || p.starts_with("/run")
}

/// Fill the new root and switch to it.
fn build_root(extra: &[(OwnedFd, PathBuf, bool)]) -> Result<(), String> {
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
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        if *is_dir {
            mkdir(&inside)?;
        } else {
            std::fs::File::create(&inside)
                .map_err(|e| format!("cannot create {}: {e}", inside.display()))?;
        }
        let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        bind(&source, &inside, !*is_dir)?;
    }
    std::env::set_current_dir(root).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    nix::unistd::pivot_root(".", "old").map_err(|e| format!("pivot_root: {}", e.desc()))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    umount2("/old", MntFlags::MNT_DETACH).map_err(|e| format!("umount /old: {}", e.desc()))?;
    let _ = std::fs::remove_dir("/old");
    Ok(())
}

fn mkdir(p: &Path) -> Result<(), String> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", p.display())),
    }
}

/// Bind `from` on `to`, read-only (and nosuid, nodev, noexec) if asked.
fn bind(from: &Path, to: &Path, read_only: bool) -> Result<(), String> {
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
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
        .map_err(|e| format!("cannot restrict {}: {}", to.display(), e.desc()))
}

/// Keep only CAP_NET_BIND_SERVICE (published ports may be privileged), for good.
fn drop_capabilities() -> Result<(), String> {
    use caps::{CapSet, Capability, CapsHashSet};
    // SAFETY: prctl with these options takes integer arguments only.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        for cap in 0..64 {
            if cap == Capability::CAP_NET_BIND_SERVICE.index() as libc::c_ulong {
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
    if caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_BIND_SERVICE).unwrap_or(false) {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    // Nothing is inheritable: this process never executes anything again.
    let sets = [
        (CapSet::Inheritable, CapsHashSet::new()),
        (CapSet::Effective, keep.clone()),
        (CapSet::Permitted, keep),
    ];
    for (set, caps) in sets {
        caps::set(None, set, &caps).map_err(|e| format!("cannot drop capabilities: {e}"))?;
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

fn load_seccomp() -> Result<usize, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
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
    .map_err(|e| e.to_string())?;
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
        .map_err(|e| e.to_string())?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    // The allow-list last: it forbids the prctl() that installing a filter starts with.
    for filter in [clone3, allow] {
        let program: seccompiler::BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?;
        seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())?;
    }
    Ok(count)
}

/// Rules matching when argument `arg` equals one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<seccompiler::SeccompRule>, String> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    values
        .iter()
        .map(|&v| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| e.to_string())
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

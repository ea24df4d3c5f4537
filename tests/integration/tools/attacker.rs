//! The hostile guest of the security tests: a tool that runs as root inside usernet's
//! namespaces and tries every way the kernel offers one process to inspect or drive another
//! of the same uid, against the host-side usernet process (the one holding the TAP fd and the
//! host sockets).
//!
//! `__tool attack-host-side TARGET SECONDS [ADDR]`: TARGET is `grandparent` (under `usernet run`,
//! COMMAND's parent is usernet's process inside and its parent the host-side one) or
//! `file:PATH` (a file the test writes the pid into, for `usernet attach`). Every route is
//! tried again and again for SECONDS (so a window while usernet sets up is covered too), and
//! one line per route reports `ROUTE denied ERRNO` or `ROUTE SUCCEEDED ...`. A ptrace that
//! succeeds is detached at once, so the run goes on. With ADDR, a TCP connect to it comes
//! last (`connect denied ...` or `connect SUCCEEDED`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// What became of one route: the errno of its last failure, or what succeeded.
#[derive(Default)]
struct Route {
    succeeded: Option<String>,
    last_errno: Option<i32>,
}

impl Route {
    fn record(&mut self, r: Result<String, i32>) {
        match r {
            Ok(what) => {
                if self.succeeded.is_none() {
                    self.succeeded = Some(what);
                }
            }
            Err(e) => self.last_errno = Some(e),
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EBADF => "EBADF",
        libc::EFAULT => "EFAULT",
        libc::ENOSYS => "ENOSYS",
        _ => "other",
    }
}

fn target_pid(target: &str) -> io::Result<i32> {
    if target == "grandparent" {
        let parent = ppid_of(std::os::unix::process::parent_id() as i32)?;
        return Ok(parent);
    }
    let path = target
        .strip_prefix("file:")
        .ok_or_else(|| io::Error::other(format!("bad target {target}")))?;
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return Ok(pid);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(io::Error::other(format!("no pid in {path}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ppid_of(pid: i32) -> io::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').ok_or_else(|| io::Error::other("stat"))? + 1..];
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("no ppid"))
}

/// PTRACE_SEIZE (which does not stop the tracee), detached again at once.
fn try_ptrace(pid: i32) -> Result<String, i32> {
    // SAFETY: ptrace with PTRACE_SEIZE takes no pointers (addr and data are 0).
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    if r != 0 {
        return Err(errno());
    }
    // SAFETY: as above, for PTRACE_DETACH.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    Ok("attached".into())
}

/// Read 8 bytes at the address of the target's stack pointer area: any address will do, the
/// permission check comes first (EFAULT means it passed).
fn try_process_vm_readv(pid: i32) -> Result<String, i32> {
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: 0x10000 as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local points to our buffer; remote is only an address in the other process.
    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if r >= 0 {
        return Ok(format!("read {r} bytes"));
    }
    match errno() {
        // The permission check passed; only the address was wrong.
        libc::EFAULT => Ok("permitted (EFAULT on the address)".into()),
        e => Err(e),
    }
}

fn try_open(path: &str, flags: libc::c_int) -> Result<String, i32> {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: open returned a new descriptor we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(format!("opened {path}"))
}

fn try_list(path: &str) -> Result<String, i32> {
    match std::fs::read_dir(path) {
        Ok(entries) => Ok(format!("listed {path}: {} entries", entries.count())),
        Err(e) => Err(e.raw_os_error().unwrap_or(0)),
    }
}

fn try_readlink(path: &str) -> Result<String, i32> {
    match std::fs::read_link(path) {
        Ok(t) => Ok(format!("{path} -> {}", t.display())),
        Err(e) => Err(e.raw_os_error().unwrap_or(0)),
    }
}

/// pidfd_open (no permission needed), then pidfd_getfd of the target's fds 0..64.
fn try_pidfd_getfd(pid: i32) -> Result<String, i32> {
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        return Err(errno());
    }
    // SAFETY: pidfd_open returned a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut last = 0;
    for target_fd in 0..64 {
        // SAFETY: pidfd_getfd takes a pidfd, an fd number and flags.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                target_fd,
                0,
            )
        } as i32;
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            return Ok(format!("took fd {target_fd}"));
        }
        last = errno();
    }
    Err(last)
}

pub fn attack_host_side(target: &str, seconds: u64, connect: Option<&str>) -> io::Result<()> {
    let pid = target_pid(target)?;
    let mem = format!("/proc/{pid}/mem");
    let fd_dir = format!("/proc/{pid}/fd");
    let root = format!("/proc/{pid}/root");
    let netns = format!("/proc/{pid}/ns/net");
    let environ = format!("/proc/{pid}/environ");
    type Attempt<'a> = (&'static str, Box<dyn Fn() -> Result<String, i32> + 'a>);
    let attempts: Vec<Attempt> = vec![
        ("ptrace", Box::new(|| try_ptrace(pid))),
        ("process_vm_readv", Box::new(|| try_process_vm_readv(pid))),
        ("proc_mem_read", Box::new(|| try_open(&mem, libc::O_RDONLY))),
        (
            "proc_mem_write",
            Box::new(|| try_open(&mem, libc::O_WRONLY)),
        ),
        ("proc_fd_list", Box::new(|| try_list(&fd_dir))),
        (
            "proc_fd_open",
            Box::new(|| {
                let mut last = Err(0);
                for n in 0..64 {
                    last = try_open(&format!("{fd_dir}/{n}"), libc::O_RDONLY);
                    if last.is_ok() {
                        break;
                    }
                }
                last
            }),
        ),
        ("pidfd_getfd", Box::new(|| try_pidfd_getfd(pid))),
        ("proc_root", Box::new(|| try_readlink(&root))),
        ("proc_root_list", Box::new(|| try_list(&root))),
        ("proc_ns_net", Box::new(|| try_open(&netns, libc::O_RDONLY))),
        (
            "proc_environ",
            Box::new(|| try_open(&environ, libc::O_RDONLY)),
        ),
    ];
    let mut routes: Vec<Route> = attempts.iter().map(|_| Route::default()).collect();
    let start = Instant::now();
    loop {
        for ((_, attempt), route) in attempts.iter().zip(routes.iter_mut()) {
            route.record(attempt());
        }
        if start.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for ((name, _), route) in attempts.iter().zip(&routes) {
        match (&route.succeeded, route.last_errno) {
            (Some(what), _) => println!("{name} SUCCEEDED {what}"),
            (None, Some(e)) => println!("{name} denied {}", errno_name(e)),
            (None, None) => println!("{name} untried"),
        }
    }
    // And the front door, which --disable-host-loopback closes.
    if let Some(addr) = connect {
        match std::net::TcpStream::connect_timeout(
            &addr.parse().map_err(io::Error::other)?,
            Duration::from_secs(5),
        ) {
            Ok(_) => println!("connect SUCCEEDED {addr}"),
            Err(e) => println!("connect denied {:?}", e.kind()),
        }
    }
    Ok(())
}

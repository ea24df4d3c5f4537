//! A TAP opened by someone else, as slirp4netns's `--netns-type=tapfd` callers do: a
//! process forks a child that joins a namespace's user and network namespaces, opens a TAP
//! there (plain, or with vnet headers and offloads, as usernet opens its own) and passes the
//! fd back; the process, still in its own namespaces, then runs a program with the TAP as
//! fd 3.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};

/// `tap-fd-exec PID IFNAME vnet|plain PROGRAM ARGS...`.
pub(super) fn tap_fd_exec(pid: &str, ifname: &str, mode: &str, program: &[&str]) -> io::Result<()> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: the tool is single-threaded here; the child only makes syscalls and exits.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = match open_in(pid, ifname, mode) {
                Ok(tap) => match usernet::fdpass::send_fd(theirs.as_fd(), b"t", tap.as_fd()) {
                    Ok(()) => 0,
                    Err(_) => 2,
                },
                Err(e) => {
                    eprintln!("tap-fd-exec: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            let mut buf = [0u8; 1];
            let (_, tap) = usernet::fdpass::recv_fd(ours.as_fd(), &mut buf)?;
            waitpid(child, None)?;
            let tap = tap.ok_or_else(|| io::Error::other("no TAP came back"))?;
            let raw = tap.as_raw_fd();
            let mut cmd = std::process::Command::new(program[0]);
            cmd.args(&program[1..]);
            // SAFETY: dup2 is async-signal-safe; `raw` stays open until exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(raw, 3) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            Err(cmd.exec())
        }
    }
}

/// In the child: join `pid`'s user and network namespaces and open TAP `ifname` there.
fn open_in(pid: &str, ifname: &str, mode: &str) -> io::Result<std::os::fd::OwnedFd> {
    for (ns, kind) in [
        ("user", nix::sched::CloneFlags::CLONE_NEWUSER),
        ("net", nix::sched::CloneFlags::CLONE_NEWNET),
    ] {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))?;
        nix::sched::setns(f, kind)?;
    }
    // usernet's own opener, told by the environment whether to set offloads.
    // SAFETY: single-threaded child; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var(
            usernet::tap::OFFLOAD_ENV,
            if mode == "vnet" { "1" } else { "0" },
        )
    };
    let tap = usernet::tap::create(ifname).map_err(io::Error::other)?;
    let want = mode == "vnet";
    let has = usernet::tap::framing(tap.as_fd()) != usernet::tap::Framing::Plain;
    if want != has {
        return Err(io::Error::other(format!(
            "asked for {mode}, got framing {has}"
        )));
    }
    Ok(tap)
}

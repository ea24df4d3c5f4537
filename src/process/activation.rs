//! systemd socket activation through the launcher: the listening sockets a service manager
//! passed to usernet (`LISTEN_FDS` of them, from fd 3, with `LISTEN_PID` naming the process
//! meant to use them) reach COMMAND, and `LISTEN_PID` names COMMAND, as rootlesskit passes
//! them (its `integration-systemd-socket.sh` checks exactly that).
//!
//! The fds themselves need little: they are inherited across fork and exec, since a service
//! manager passes them without close-on-exec ([`keep_open`] makes sure of it in the process
//! that starts COMMAND, and [`close_passed`] drops the copies of the process that does not).
//! `LISTEN_PID` is the hard part: it must be COMMAND's own pid, known only once COMMAND is
//! forked, and an environment cannot be changed safely between fork and exec. So COMMAND is
//! started through this binary in helper mode, as rootlesskit does: [`helper_command`] builds
//! that command, and [`exec_if_helper`], the first thing `main` does, sets `LISTEN_PID` to its
//! own pid and execs COMMAND in its place, which keeps the pid.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first fd a service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// More passed fds than this is not a socket activation we believe.
const MAX_FDS: u32 = 4096;
/// Set in the environment of the helper (and only there).
const HELPER_ENV: &str = "_USERNET_ACTIVATION_HELPER";

/// How many sockets a service manager passed to this process: `LISTEN_FDS`, when
/// `LISTEN_PID` names us.
pub fn passed_to_us() -> Option<u32> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    (1..=MAX_FDS).contains(&fds).then_some(fds)
}

/// Make sure the `count` passed fds survive exec (they come without close-on-exec; a
/// careless parent may have set it).
pub fn keep_open(count: u32) {
    for fd in passed_fds(count) {
        // SAFETY: F_SETFD on an fd number only changes its flags; an fd that is not open
        // fails with EBADF, which changes nothing.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
}

/// Close this process's copies of the `count` passed fds (the process that starts COMMAND
/// holds them for it).
pub fn close_passed(count: u32) {
    for fd in passed_fds(count) {
        // SAFETY: the passed fds were handed to this process by the activation protocol and
        // nothing in it wraps them; from here on nothing in this process uses them.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

fn passed_fds(count: u32) -> impl Iterator<Item = RawFd> {
    (0..count.min(MAX_FDS)).map(|i| FIRST_FD + i as RawFd)
}

/// COMMAND, started through this binary in helper mode, so that it finds `LISTEN_PID` set
/// to its own pid.
pub fn helper_command(command: &[OsString]) -> Command {
    let mut helper = Command::new("/proc/self/exe");
    helper.arg0("usernet").env(HELPER_ENV, "1").args(command);
    helper
}

/// In helper mode (started by [`helper_command`]): set `LISTEN_PID` to this process and
/// exec COMMAND in its place; never returns then. Otherwise does nothing.
pub fn exec_if_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usernet: the socket activation helper was given no command");
        std::process::exit(1);
    };
    // SAFETY: this runs first thing in main, before any other thread exists.
    unsafe {
        std::env::remove_var(HELPER_ENV);
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
    }
    let err = Command::new(&program).args(args).exec();
    let name = program.to_string_lossy();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        eprintln!("usernet: {name}: command not found");
        127
    } else {
        eprintln!("usernet: {name}: cannot execute: {err}");
        126
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_fds_start_at_three_and_are_bounded() {
        assert_eq!(passed_fds(2).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(passed_fds(u32::MAX).count(), MAX_FDS as usize);
    }

    #[test]
    fn the_helper_runs_this_binary_with_the_command_after_it() {
        let c = helper_command(&["sh".into(), "-c".into(), "true".into()]);
        assert_eq!(c.get_program(), "/proc/self/exe");
        assert_eq!(c.get_args().collect::<Vec<_>>(), ["sh", "-c", "true"]);
        assert!(
            c.get_envs()
                .any(|(k, v)| k == HELPER_ENV && v == Some("1".as_ref()))
        );
    }
}

//! What every front end needs to live as a process, whichever command line started it:
//! exit codes ([`Failure`]), the setup [channel] between a parent and the child it forks,
//! [signals] read from a signalfd, the [reaper] that ends what a command left running, and
//! process-wide tuning (open file limit, malloc, the tap's queue length).
//!
//! Nothing here knows about networks or command lines; the launcher, `attach` and the
//! personalities build on it.

pub mod activation;
pub mod channel;
pub mod reaper;
pub mod signals;

/// An error that carries the exit code usernet should end with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

/// How COMMAND ended, as the process that waited for it saw it. Front ends turn it into
/// their own exit code: `usernet run` a shell's (128+N for signal N), the rootlesskit
/// personality rootlesskit's (255 for any signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandExit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal { signal: i32, core_dumped: bool },
}

impl CommandExit {
    /// The exit code a shell gives for it: the status, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            CommandExit::Code(code) => code,
            CommandExit::Signal { signal, .. } => 128 + signal,
        }
    }

    /// From a `waitpid` status; `None` for a status that is not an end (stopped, continued).
    pub fn from_wait(status: nix::sys::wait::WaitStatus) -> Option<CommandExit> {
        use nix::sys::wait::WaitStatus;
        match status {
            WaitStatus::Exited(_, code) => Some(CommandExit::Code(code)),
            WaitStatus::Signaled(_, signal, core_dumped) => Some(CommandExit::Signal {
                signal: signal as i32,
                core_dumped,
            }),
            _ => None,
        }
    }
}

/// tap0's queue length: enough frames for several full windows at this MTU, so a burst the
/// guest is allowed to send never overflows the queue we read from.
pub fn txqueuelen(window: usize, mtu: u32) -> u32 {
    let mss = (mtu as usize).saturating_sub(40).max(536);
    (4 * window / mss).clamp(1000, 65536) as u32
}

/// Flows need one fd each; the default soft limit of 1024 is far too low for a container.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::debug!("cannot raise the open file limit: {e}");
    }
}

/// Keep large allocations (the per-flow TCP rings) on fresh mmap'd pages: they cost no RSS and
/// no zeroing until used, and go back to the system when the flow ends. glibc would otherwise
/// raise its mmap threshold after the first free and start recycling (and zeroing) heap memory.
pub fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Make `command` start as a supervised child: killed (SIGKILL) if this process dies, and with
/// no signal blocked (its supervisor blocks the ones it reads from a signalfd).
pub fn supervised(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl, sigemptyset and sigprocmask, which are
    // async-signal-safe, on memory it owns.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// An I/O error's text as C's `strerror` words it (no "(os error N)").
pub fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::txqueuelen;

    #[test]
    fn txqueuelen_fits_the_window() {
        assert_eq!(txqueuelen(2 << 20, 65520), 1000);
        assert!(txqueuelen(2 << 20, 1500) >= 4 * (2 << 20) / 1460);
        assert_eq!(txqueuelen(usize::MAX / 8, 1500), 65536);
    }
}

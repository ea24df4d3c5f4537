//! Ending what is left of COMMAND's process tree, from whichever usernet process outlives the
//! other.
//!
//! Both processes of `usernet run` are child subreapers: orphans of COMMAND's tree go to the
//! process inside (which runs COMMAND), and, should that one be killed, to the host-side
//! process. Either way the survivor ends up the parent of everything left and can end it,
//! with or without a PID namespace. Its children are listed from
//! `/proc/self/task/TID/children` (each thread has its own list), through a directory fd
//! opened beforehand, so it also works in the sandbox, whose root has no `/proc`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How long ending a tree may take before we give up on what is left (a tree that keeps
/// forking faster than it is killed; the kernel's process limit bounds it).
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Make this process a child subreaper: orphaned descendants become its children.
pub fn become_subreaper() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// This process's `/proc/self/task` directory, kept open.
pub struct Reaper {
    tasks: OwnedFd,
}

impl Reaper {
    /// Open `/proc/self/task` now, while `/proc` is visible.
    pub fn new() -> std::io::Result<Reaper> {
        let file = File::open("/proc/self/task")?;
        Ok(Reaper { tasks: file.into() })
    }

    /// The pids of this process's children, whichever thread they hang from.
    pub fn children(&self) -> Vec<Pid> {
        let mut out = Vec::new();
        // A fresh handle on the directory for each listing (reading it consumes it).
        let Ok(dir) = nix::dir::Dir::openat(
            self.tasks.as_fd(),
            ".",
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            return out;
        };
        let tids: Vec<String> = dir
            .into_iter()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty())
            .collect();
        for tid in tids {
            let path = format!("{tid}/children");
            let Ok(fd) = nix::fcntl::openat(
                self.tasks.as_fd(),
                path.as_str(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ) else {
                continue;
            };
            let mut file = File::from(fd);
            let mut text = String::new();
            // Bounded: a pid list of at most the kernel's pid limit.
            if file
                .by_ref()
                .take(1 << 20)
                .read_to_string(&mut text)
                .is_ok()
            {
                out.extend(parse_pids(&text));
            }
        }
        out
    }

    /// SIGKILL every child and reap it, again and again, until none is left: the children of
    /// a killed process become ours in turn.
    pub fn kill_all(&self) {
        let start = Instant::now();
        loop {
            let children = self.children();
            if children.is_empty() || start.elapsed() > KILL_DEADLINE {
                break;
            }
            for &c in &children {
                let _ = kill(c, Signal::SIGKILL);
            }
            for c in children {
                while let Err(Errno::EINTR) = waitpid(c, None) {}
            }
        }
        reap_exited();
    }
}

/// Reap every child that has exited (zombies of orphans we adopted), without waiting.
pub fn reap_exited() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// The pids in a `children` file: decimal numbers separated by spaces.
fn parse_pids(text: &str) -> impl Iterator<Item = Pid> + '_ {
    text.split_ascii_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 0)
        .map(Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_files_parse_to_pids() {
        let pids: Vec<i32> = parse_pids("12 345 6\n").map(Pid::as_raw).collect();
        assert_eq!(pids, [12, 345, 6]);
        assert_eq!(parse_pids("").count(), 0);
        assert_eq!(
            parse_pids("x -3 0 7").map(Pid::as_raw).collect::<Vec<_>>(),
            [7]
        );
    }

    #[test]
    fn a_forked_child_is_listed_and_killed() {
        let reaper = Reaper::new().unwrap();
        // SAFETY: the child only sleeps (pause) until it is killed.
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => loop {
                // SAFETY: pause has no arguments.
                unsafe { libc::pause() };
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        assert!(reaper.children().contains(&child));
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        assert!(!reaper.children().contains(&child));
    }
}

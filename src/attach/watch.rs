//! Noticing that the target of `usernet attach` went away, without polling.
//!
//! A network namespace lives as long as anything holds it, and our own TAP fd does, so
//! "gone" cannot mean "destroyed". It means: the process we were pointed at exited (a
//! pidfd becomes readable), or the namespace file we were pointed at was removed or
//! replaced, as `ip netns delete` does (an inotify watch on its directory, then a check that
//! the path no longer names the same namespace).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::config::NamespaceRef;

pub enum TargetWatch {
    /// The target process: readable once it exits.
    Process(OwnedFd),
    /// The namespace file's directory.
    File {
        inotify: Inotify,
        path: PathBuf,
        name: OsString,
        identity: Option<(u64, u64)>,
    },
}

impl TargetWatch {
    /// Watch `target`, whose network namespace is (device, inode) `identity`.
    pub fn new(target: &NamespaceRef, identity: Option<(u64, u64)>) -> Result<TargetWatch> {
        let pid = match target {
            NamespaceRef::Pid(pid) => Some(*pid),
            NamespaceRef::Path(p) => proc_pid(p),
        };
        if let Some(pid) = pid {
            // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd < 0 {
                return Err(anyhow!(
                    "process {pid} is gone: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: pidfd_open returned a new descriptor that we own.
            return Ok(TargetWatch::Process(unsafe {
                OwnedFd::from_raw_fd(fd as i32)
            }));
        }
        let NamespaceRef::Path(path) = target else {
            return Err(anyhow!("nothing to watch"));
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let name = path
            .file_name()
            .map(OsString::from)
            .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify")?;
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_UNMOUNT,
            )
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        Ok(TargetWatch::File {
            inotify,
            path: path.clone(),
            name,
            identity,
        })
    }

    pub fn register(&self, registry: &Registry, token: Token) -> std::io::Result<()> {
        let fd = match self {
            TargetWatch::Process(fd) => fd.as_raw_fd(),
            TargetWatch::File { inotify, .. } => inotify.as_fd().as_raw_fd(),
        };
        registry.register(&mut SourceFd(&fd), token, Interest::READABLE)
    }

    /// After an event: whether the target is gone.
    pub fn gone(&mut self) -> bool {
        match self {
            TargetWatch::Process(_) => true,
            TargetWatch::File {
                inotify,
                path,
                name,
                identity,
            } => {
                let mut relevant = false;
                while let Ok(events) = inotify.read_events() {
                    if events.is_empty() {
                        break;
                    }
                    relevant |= events.iter().any(|e| {
                        e.name.as_deref() == Some(name.as_os_str())
                            || !e
                                .mask
                                .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                    });
                }
                relevant
                    && nix::sys::stat::stat(path.as_path())
                        .map(|st| Some((st.st_dev, st.st_ino)) != *identity)
                        .unwrap_or(true)
            }
        }
    }
}

/// The pid in a path like /proc/PID/ns/net.
fn proc_pid(p: &std::path::Path) -> Option<i32> {
    let mut parts = p.components().map(|c| c.as_os_str().to_str());
    parts.next()?; // "/"
    if parts.next()? != Some("proc") {
        return None;
    }
    parts.next()??.parse().ok()
}

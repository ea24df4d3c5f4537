//! The state directory: `child_pid`, the lock, and (later) the API sockets of one run.
//!
//! By default a fresh private directory (mode 0700) under `$XDG_RUNTIME_DIR`, else `/tmp`,
//! removed at exit. With `--state-dir DIR` the directory is created if needed; an exclusive
//! lock on `DIR/lock` keeps two instances apart, stale files from a killed run are cleaned at
//! start, and at exit our files go away, and the directory too if we created it or it is
//! left empty. A directory the user made is never removed with content inside.
//!
//! Cleanup goes through directory fds opened at creation, not paths, so it works from inside
//! the sandbox (`crate::harden`), where the directory may be visible elsewhere or not at all.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Files usernet puts in a state dir; everything it removes at start and exit.
const OWN_FILES: &[&str] = &[
    "child_pid",
    "resolv.conf",
    "hosts",
    "api.sock",
    ".bp.sock",
    ".bp-ready.pipe",
];

pub struct StateDir {
    path: PathBuf,
    created: bool,
    _lock: Flock<File>,
    /// The directory itself (O_PATH), for removing what is inside it.
    dir: OwnedFd,
    /// Its parent (O_PATH) and its name there, for removing it.
    parent: Option<(OwnedFd, OsString)>,
}

impl StateDir {
    /// Create or adopt the state dir.
    pub fn create(explicit: Option<&Path>) -> Result<Self> {
        let (path, created) = match explicit {
            Some(p) => adopt(p)?,
            None => (fresh()?, true),
        };
        let lock_path = path.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                anyhow!(
                    "state dir {} is in use by another usernet (its lock is held); pick another --state-dir",
                    path.display()
                )
            } else {
                anyhow!("cannot lock {}: {e}", lock_path.display())
            }
        })?;
        let dir_fd = open_dir(&path, libc::O_PATH)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let dir = StateDir {
            parent: crate::harden::open_parent(&path),
            path,
            created,
            _lock: lock,
            dir: dir_fd,
        };
        dir.remove_own_files();
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `child_pid` (decimal, no newline, read-only), as rootlesskit does.
    pub fn write_child_pid(&self, pid: i32) -> Result<()> {
        self.write_file("child_pid", pid.to_string().as_bytes(), 0o444)
    }

    pub fn write_file(&self, name: &str, content: &[u8], mode: u32) -> Result<()> {
        let p = self.path.join(name);
        let _ = fs::remove_file(&p);
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(&p)
            .with_context(|| format!("cannot create {}", p.display()))?;
        f.write_all(content)
            .with_context(|| format!("cannot write {}", p.display()))
    }

    fn remove_own_files(&self) {
        for f in OWN_FILES {
            let _ = unlinkat(self.dir.as_fd(), *f, UnlinkatFlags::NoRemoveDir);
        }
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let parent = self
            .parent
            .as_ref()
            .map(|(fd, name)| (fd.as_fd(), name.as_os_str()));
        clean(self.dir.as_fd(), parent, self.created);
    }
}

/// What the child needs to clean the state dir up when the parent cannot (it was killed):
/// duplicates of the directory fds, so it works whatever the child's mount namespace shows.
pub struct Cleaner {
    dir: OwnedFd,
    parent: Option<(OwnedFd, OsString)>,
    created: bool,
}

impl StateDir {
    pub fn cleaner(&self) -> io::Result<Cleaner> {
        let parent = match &self.parent {
            Some((fd, name)) => Some((fd.try_clone()?, name.clone())),
            None => None,
        };
        Ok(Cleaner {
            dir: self.dir.try_clone()?,
            parent,
            created: self.created,
        })
    }
}

impl Cleaner {
    /// Remove what the parent's [`StateDir`] would have removed at exit.
    pub fn clean(&self) {
        let parent = self
            .parent
            .as_ref()
            .map(|(fd, name)| (fd.as_fd(), name.as_os_str()));
        clean(self.dir.as_fd(), parent, self.created);
    }
}

impl std::fmt::Debug for Cleaner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleaner")
            .field("created", &self.created)
            .finish()
    }
}

/// Our files go; the contents too if we made the directory; then the directory itself, which
/// only succeeds when nothing of the user's is left inside.
fn clean(dir: BorrowedFd<'_>, parent: Option<(BorrowedFd<'_>, &std::ffi::OsStr)>, created: bool) {
    for f in OWN_FILES {
        let _ = unlinkat(dir, *f, UnlinkatFlags::NoRemoveDir);
    }
    let _ = unlinkat(dir, "lock", UnlinkatFlags::NoRemoveDir);
    if created {
        remove_contents(dir, 0);
    }
    if let Some((parent, name)) = parent {
        let _ = unlinkat(parent, name, UnlinkatFlags::RemoveDir);
    }
}

fn open_dir(path: &Path, extra: libc::c_int) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c is a valid NUL-terminated path; open returns a new fd or -1.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_DIRECTORY | libc::O_CLOEXEC | extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Remove everything inside the directory `dir` (a directory we created), depth-limited.
fn remove_contents(dir: BorrowedFd<'_>, depth: usize) {
    use nix::dir::Dir;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    if depth > 16 {
        return;
    }
    let Ok(mut listing) = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let names: Vec<(std::ffi::CString, bool)> = listing
        .iter()
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .map(|e| {
            let is_dir = e.file_type() == Some(nix::dir::Type::Directory);
            (e.file_name().to_owned(), is_dir)
        })
        .collect();
    for (name, is_dir) in names {
        if is_dir {
            if let Ok(sub) = Dir::openat(
                dir,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                remove_contents(sub.as_fd(), depth + 1);
            }
            let _ = unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir);
        } else {
            let _ = unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// A fresh private directory for one run.
fn fresh() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir() && nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let template = base.join("usernet-XXXXXX");
    nix::unistd::mkdtemp(&template)
        .map_err(|e| anyhow!("cannot create a state dir under {}: {e}", base.display()))
}

/// Use `p`, creating it (mode 0700) if missing. Returns whether we created it.
fn adopt(p: &Path) -> Result<(PathBuf, bool)> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot find the current directory")?
            .join(p)
    };
    match fs::metadata(&abs) {
        Ok(m) if m.is_dir() => Ok((abs, false)),
        Ok(_) => Err(anyhow!(
            "--state-dir {} exists and is not a directory",
            abs.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&abs)
                .with_context(|| format!("cannot create state dir {}", abs.display()))?;
            Ok((abs, true))
        }
        Err(e) => Err(anyhow!("cannot use state dir {}: {e}", abs.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_is_locked_and_cleaned() {
        let base = std::env::temp_dir().join(format!("usernet-test-{}", std::process::id()));
        let dir = base.join("state");
        {
            let s = StateDir::create(Some(&dir)).unwrap();
            s.write_child_pid(42).unwrap();
            assert_eq!(fs::read_to_string(dir.join("child_pid")).unwrap(), "42");
            let second = StateDir::create(Some(&dir));
            assert!(second.err().unwrap().to_string().contains("in use"));
        }
        assert!(!dir.exists(), "a state dir we created is removed");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("users-file"), "keep").unwrap();
        drop(StateDir::create(Some(&dir)).unwrap());
        assert_eq!(fs::read_to_string(dir.join("users-file")).unwrap(), "keep");
        assert!(!dir.join("lock").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}

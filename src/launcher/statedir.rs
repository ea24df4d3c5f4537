//! The state directory: `child_pid`, the lock, and (later) the API sockets of one run.
//!
//! By default a fresh private directory (mode 0700) under `$XDG_RUNTIME_DIR`, else `/tmp`,
//! removed at exit. With `--state-dir DIR` the directory is created if needed; an exclusive
//! lock on `DIR/lock` keeps two instances apart, stale files from a killed run are cleaned at
//! start, and at exit our files go away, and the directory too if we created it or it is
//! left empty. A directory the user made is never removed with content inside.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use nix::fcntl::{Flock, FlockArg};

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
        let dir = StateDir {
            path,
            created,
            _lock: lock,
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
            let _ = fs::remove_file(self.path.join(f));
        }
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        self.remove_own_files();
        let _ = fs::remove_file(self.path.join("lock"));
        if self.created {
            let _ = fs::remove_dir_all(&self.path);
        } else {
            // Only succeeds when nothing of the user's is left inside.
            let _ = fs::remove_dir(&self.path);
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

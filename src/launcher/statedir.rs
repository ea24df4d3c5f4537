//! The state directory of one `usernet run`: which directory it is, who may use it, what
//! usernet puts in it, and taking exactly that away again.
//!
//! By default a fresh private directory (mode 0700) under `$XDG_RUNTIME_DIR`, else `/tmp`.
//! With `--state-dir DIR`, DIR and any missing parents are created (mode 0700), or an existing
//! DIR is adopted if it is empty or holds nothing but a previous usernet's stale state (its
//! `lock`, not held, and files of the names in [`stale_kind`]), as rootlesskit reuses its
//! state dir after a SIGKILL. Anything else there is the user's, and usernet refuses the
//! directory rather than touch it.
//!
//! Trust: the state dir must belong to us and be writable by no one else, and so must every
//! directory usernet creates a directory in, and the one the state dir is in, except that a
//! sticky directory owned by root (such as `/tmp`) may be writable by all; otherwise another
//! user could replace `api.sock` or the directory under us. Clients check who serves
//! `api.sock` on their own (`crate::api::client`).
//!
//! Removal is of exactly what this run created, by name relative to directory fds opened
//! once (with `O_NOFOLLOW`), never a recursive delete: the [`Entry`]s the launcher declares
//! before anything runs (none of which existed, once stale ones are gone), then the
//! directories usernet created, deepest first, each only if it is empty. The same fds let the
//! child clean up after a SIGKILLed parent ([`Cleaner`]) and work from inside the sandbox
//! (`crate::harden`), where the paths may show something else or nothing at all.
//!
//! [`running`] finds the running instances of this user, for `usernet ps` and for clients
//! given no `--state-dir`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, geteuid, mkfifoat, unlinkat};

/// The kind of an entry in the state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Socket,
    Fifo,
    Dir,
}

impl Kind {
    fn of(stat: &FileStat) -> Option<Kind> {
        match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG => Some(Kind::File),
            SFlag::S_IFSOCK => Some(Kind::Socket),
            SFlag::S_IFIFO => Some(Kind::Fifo),
            SFlag::S_IFDIR => Some(Kind::Dir),
            _ => None,
        }
    }
}

/// Something one run creates in its state dir, removed again at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
}

impl Entry {
    pub fn new(name: impl Into<String>, kind: Kind) -> Entry {
        Entry {
            name: name.into(),
            kind,
        }
    }
}

/// The lock file: held (exclusive `flock`) by the running instance.
const LOCK: &str = "lock";

/// Whether `name` is something a usernet run creates, and of which kind: the stale state a
/// killed one leaves behind (next to its `lock`).
pub fn stale_kind(name: &str) -> Option<Kind> {
    match name {
        LOCK | "child_pid" | "resolv.conf" | "hosts" | "netns" => Some(Kind::File),
        "api.sock" | ".bp.sock" => Some(Kind::Socket),
        ".bp-ready.pipe" => Some(Kind::Fifo),
        ".cgroup-park" => Some(Kind::Dir),
        _ => name
            .strip_prefix(".copy-up-")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|_| Kind::Dir),
    }
}

/// A directory this run made: the directory it is in, and its name there.
type MadeDir = (OwnedFd, OsString);

/// A state dir found or made, not locked yet.
struct Opened {
    path: PathBuf,
    dir: OwnedFd,
    /// The directories made for it (it among them, last, if it is new), outermost first.
    created: Vec<MadeDir>,
}

/// Prefix of the default state dirs' names.
const DEFAULT_PREFIX: &str = "usernet-";

pub struct StateDir {
    path: PathBuf,
    /// Held for the whole run; another usernet on the same directory fails to take it.
    _lock: Flock<File>,
    owned: Owned,
}

/// What one run created, reachable through fds: the state dir's entries and the directories.
struct Owned {
    path: PathBuf,
    /// The state dir.
    dir: OwnedFd,
    /// The entries this run creates in it, `lock` among them.
    entries: Vec<Entry>,
    /// Directories this run created (the state dir and missing parents), outermost first.
    created: Vec<MadeDir>,
}

impl StateDir {
    /// Create or adopt the state dir (`explicit`, or a fresh default one) and lock it;
    /// `entries` are what this run will create in it, which are removed at the end.
    pub fn create(explicit: Option<&Path>, entries: &[Entry]) -> Result<Self> {
        let Opened { path, dir, created } = match explicit {
            Some(p) => open_or_create(p)?,
            None => fresh()?,
        };
        // Until the lock is ours, a failure removes only the directories made above.
        let lock = match take_over(&dir, &path) {
            Ok(lock) => lock,
            Err(e) => {
                remove_created(&created, &path);
                return Err(e);
            }
        };
        let mut owned = Owned {
            path,
            dir,
            entries: Vec::new(),
            created,
        };
        owned.entries.push(Entry::new(LOCK, Kind::File));
        owned.entries.extend(entries.iter().cloned());
        log::debug!("state dir: {}", owned.path.display());
        Ok(StateDir {
            path: owned.path.clone(),
            _lock: lock,
            owned,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `child_pid` (decimal, no newline, read-only), as rootlesskit does.
    pub fn write_child_pid(&self, pid: i32) -> Result<()> {
        self.write_file("child_pid", pid.to_string().as_bytes(), 0o444)
    }

    /// Create the declared file `name` with `content`; it must not exist yet.
    pub fn write_file(&self, name: &str, content: &[u8], mode: u32) -> Result<()> {
        self.declared(name, Kind::File)?;
        let fd = openat(
            &self.owned.dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .with_context(|| format!("cannot create {}", self.path.join(name).display()))?;
        File::from(fd)
            .write_all(content)
            .with_context(|| format!("cannot write {}", self.path.join(name).display()))
    }

    /// Create the declared FIFO `name` (mode 0600) and open it for reading, without waiting
    /// for a writer.
    pub fn make_fifo(&self, name: &str) -> Result<File> {
        self.declared(name, Kind::Fifo)?;
        let shown = self.path.join(name);
        mkfifoat(&self.owned.dir, name, Mode::from_bits_truncate(0o600))
            .with_context(|| format!("cannot create {}", shown.display()))?;
        let fd = openat(
            &self.owned.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open {}", shown.display()))?;
        Ok(File::from(fd))
    }

    fn declared(&self, name: &str, kind: Kind) -> Result<()> {
        if self.owned.entries.contains(&Entry::new(name, kind)) {
            Ok(())
        } else {
            Err(anyhow!(
                "{name} was not declared as an entry of the state dir, so it would not be removed"
            ))
        }
    }

    /// What the child needs to clean the state dir up when the parent cannot (it was
    /// killed): duplicates of the directory fds, so it works whatever the child's mount
    /// namespace shows.
    pub fn cleaner(&self) -> io::Result<Cleaner> {
        Ok(Cleaner(self.owned.try_clone()?))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        self.owned.clean();
    }
}

/// Cleans a state dir up as its [`StateDir`] would at exit.
pub struct Cleaner(Owned);

impl Cleaner {
    /// Remove what the parent's [`StateDir`] would have removed at exit.
    pub fn clean(&self) {
        self.0.clean();
    }
}

impl std::fmt::Debug for Cleaner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleaner")
            .field("path", &self.0.path)
            .finish()
    }
}

impl Owned {
    fn try_clone(&self) -> io::Result<Owned> {
        Ok(Owned {
            path: self.path.clone(),
            dir: self.dir.try_clone()?,
            entries: self.entries.clone(),
            created: self
                .created
                .iter()
                .map(|(fd, name)| Ok((fd.try_clone()?, name.clone())))
                .collect::<io::Result<_>>()?,
        })
    }

    /// Our entries go (the lock last), then the directories we made, innermost first, each
    /// only if nothing else is left in it.
    fn clean(&self) {
        for entry in self.entries.iter().rev() {
            let flag = match entry.kind {
                Kind::Dir => UnlinkatFlags::RemoveDir,
                _ => UnlinkatFlags::NoRemoveDir,
            };
            let _ = unlinkat(&self.dir, entry.name.as_str(), flag);
        }
        remove_created(&self.created, &self.path);
    }
}

/// Remove the directories in `created` (outermost first), innermost first, each only if it
/// is empty. `path` is the state dir, for the warning when it is not.
fn remove_created(created: &[MadeDir], path: &Path) {
    for (i, (parent, name)) in created.iter().enumerate().rev() {
        match unlinkat(parent, name.as_os_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::ENOTEMPTY | Errno::EEXIST) if i + 1 == created.len() => {
                log::warn!(
                    "state dir {} kept: it holds files usernet did not create",
                    path.display()
                );
                return;
            }
            Err(_) => return,
        }
    }
}

/// Lock the state dir `dir` for this run: take (or create) `lock`, then remove a previous
/// run's stale state. Refuses a directory holding anything else.
fn take_over(dir: &OwnedFd, path: &Path) -> Result<Flock<File>> {
    let foreign = |name: &OsStr| {
        anyhow!(
            "state dir {} holds {}, which usernet did not create; give --state-dir an empty or new directory",
            path.display(),
            name.to_string_lossy()
        )
    };
    let names = list(dir).with_context(|| format!("cannot list {}", path.display()))?;
    if let Some(first) = names.first()
        && !names.iter().any(|n| n == LOCK)
    {
        return Err(foreign(first));
    }
    let (file, created_lock) = open_lock(dir, names.is_empty())
        .with_context(|| format!("cannot open {}", path.join(LOCK).display()))?;
    let unlink_lock = || {
        if created_lock {
            let _ = unlinkat(dir, LOCK, UnlinkatFlags::NoRemoveDir);
        }
    };
    let in_use = || {
        anyhow!(
            "state dir {} is in use by another usernet (its lock is held); pick another --state-dir",
            path.display()
        )
    };
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => return Err(in_use()),
        Err((_, e)) => {
            unlink_lock();
            bail!("cannot lock {}: {e}", path.join(LOCK).display());
        }
    };
    // The lock we hold must still be the one named `lock` (an exiting instance removes it).
    let held = fstat(lock.as_fd())?;
    match fstatat(dir, LOCK, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(named) if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) => {}
        _ => return Err(in_use()),
    }
    if held.st_uid != geteuid().as_raw() || Kind::of(&held) != Some(Kind::File) {
        unlink_lock();
        return Err(foreign(OsStr::new(LOCK)));
    }
    // Under the lock: whatever else is here is a dead run's, or not ours at all.
    let stale = match stale_entries(dir) {
        Ok(stale) => stale,
        Err(name) => {
            unlink_lock();
            return Err(foreign(&name));
        }
    };
    for (name, kind) in &stale {
        let flag = if *kind == Kind::Dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(dir, name.as_os_str(), flag).map_err(|e| {
            anyhow!(
                "cannot remove the stale {} of a previous usernet: {e}",
                path.join(name).display()
            )
        })?;
    }
    if !stale.is_empty() {
        log::debug!(
            "state dir {}: removed a previous usernet's stale state",
            path.display()
        );
    }
    Ok(lock)
}

/// Open `lock` in `dir`, creating it when `create`; whether this call created it.
fn open_lock(dir: &OwnedFd, create: bool) -> nix::Result<(File, bool)> {
    let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if create {
        match openat(
            dir,
            LOCK,
            flags | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((File::from(fd), true)),
            // Another usernet is starting on the same directory; its lock decides.
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((File::from(openat(dir, LOCK, flags, Mode::empty())?), false))
}

/// The entries of `dir` other than `lock`, if each is a usernet name of the right kind, ours,
/// and (for directories) empty; else the name of the first that is not.
fn stale_entries(dir: &OwnedFd) -> Result<Vec<(OsString, Kind)>, OsString> {
    let names = list(dir).map_err(|_| OsString::from("unreadable entries"))?;
    let euid = geteuid().as_raw();
    let mut out = Vec::new();
    for name in names.into_iter().filter(|n| n != LOCK) {
        let kind = name.to_str().and_then(stale_kind);
        let stat = fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        match (kind, stat) {
            (Some(kind), Some(st))
                if st.st_uid == euid
                    && Kind::of(&st) == Some(kind)
                    && (kind != Kind::Dir || is_empty_dir(dir, &name)) =>
            {
                out.push((name, kind));
            }
            _ => return Err(name),
        }
    }
    Ok(out)
}

fn is_empty_dir(dir: &OwnedFd, name: &OsStr) -> bool {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .and_then(|fd| list(&fd).ok())
    .is_some_and(|names| names.is_empty())
}

/// The names in `dir`, without `.` and `..`, sorted.
fn list(dir: &OwnedFd) -> nix::Result<Vec<OsString>> {
    let mut listing = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names: Vec<OsString> = listing
        .iter()
        .filter_map(Result::ok)
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    Ok(names)
}

fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr, nofollow: bool) -> nix::Result<OwnedFd> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if nofollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    openat(parent, name, flags, Mode::empty())
}

/// `--state-dir p`: open it, creating it and its missing parents (mode 0700), each checked
/// by [`check_container`] before anything is made in it or adopted from it.
fn open_or_create(p: &Path) -> Result<Opened> {
    let path = std::path::absolute(p)
        .with_context(|| format!("cannot find the absolute path of {}", p.display()))?;
    let mut opened = Opened {
        dir: open_dir_at(cwd_fd(), OsStr::new("/"), false)
            .map_err(|e| anyhow!("cannot open /: {e}"))?,
        path,
        created: Vec::new(),
    };
    // Undo what was made if anything below fails.
    let result = walk_down(&mut opened).and_then(|()| check_state_dir(&opened.dir, &opened.path));
    if let Err(e) = result {
        remove_created(&opened.created, &opened.path);
        return Err(e);
    }
    Ok(opened)
}

/// Open `opened.path` one component at a time from `/` (in `opened.dir`), making those that
/// are missing. Existing parents may be symbolic links; the state dir itself may not.
fn walk_down(opened: &mut Opened) -> Result<()> {
    let path = opened.path.clone();
    let components: Vec<Component> = path.components().skip(1).collect();
    let mut shown = PathBuf::from("/");
    for (i, comp) in components.iter().enumerate() {
        let name = comp.as_os_str();
        let is_last = i + 1 == components.len();
        let here = shown.join(name);
        let cannot = |e: &dyn std::fmt::Display| {
            anyhow!(
                "cannot use state dir {}: {}: {e}",
                path.display(),
                here.display()
            )
        };
        let next = match open_dir_at(opened.dir.as_fd(), name, is_last) {
            Ok(next) => {
                if is_last {
                    check_container(&opened.dir, &shown, &path)?;
                }
                next
            }
            Err(Errno::ENOENT) => {
                check_container(&opened.dir, &shown, &path)?;
                match mkdirat(&opened.dir, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => opened
                        .created
                        .push((opened.dir.try_clone()?, name.to_os_string())),
                    // Made by someone else meanwhile: checked like any existing directory.
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(cannot(&e)),
                }
                open_dir_at(opened.dir.as_fd(), name, true).map_err(|e| cannot(&e))?
            }
            Err(Errno::ELOOP) if is_last => bail!(
                "state dir {} is a symbolic link; give the directory it points to",
                path.display()
            ),
            Err(Errno::ENOTDIR) => return Err(cannot(&"not a directory")),
            Err(e) => return Err(cannot(&e)),
        };
        opened.dir = next;
        shown = here;
    }
    Ok(())
}

fn cwd_fd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a valid "directory fd" for the *at calls for the process's life.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// A fresh default state dir: `usernet-XXXXXX` under `$XDG_RUNTIME_DIR`, else `/tmp`.
fn fresh() -> Result<Opened> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let open_base = |base: &Path| -> Result<OwnedFd> {
        let fd = open_dir_at(cwd_fd(), base.as_os_str(), false)
            .map_err(|e| anyhow!("cannot open {}: {e}", base.display()))?;
        check_container(&fd, base, &base.join(format!("{DEFAULT_PREFIX}XXXXXX")))?;
        Ok(fd)
    };
    let (base, base_fd) = match xdg.as_deref().map(|x| (x, open_base(x))) {
        Some((x, Ok(fd))) if nix::unistd::access(x, nix::unistd::AccessFlags::W_OK).is_ok() => {
            (x.to_path_buf(), fd)
        }
        other => {
            if let Some((x, Err(e))) = other {
                log::debug!("not using $XDG_RUNTIME_DIR {}: {e:#}", x.display());
            }
            let tmp = PathBuf::from("/tmp");
            let fd = open_base(&tmp)?;
            (tmp, fd)
        }
    };
    // mkdtemp relative to the directory we checked, not to whatever its path shows now.
    use std::os::fd::AsRawFd;
    let template = format!(
        "/proc/self/fd/{}/{DEFAULT_PREFIX}XXXXXX",
        base_fd.as_raw_fd()
    );
    let made = nix::unistd::mkdtemp(template.as_str())
        .map_err(|e| anyhow!("cannot create a state dir under {}: {e}", base.display()))?;
    let name = made
        .file_name()
        .ok_or_else(|| anyhow!("mkdtemp returned {}", made.display()))?
        .to_os_string();
    let path = base.join(&name);
    let created = vec![(base_fd.try_clone()?, name.clone())];
    let dir = open_dir_at(base_fd.as_fd(), &name, true)
        .map_err(|e| anyhow!("cannot open {}: {e}", path.display()))
        .and_then(|dir| check_state_dir(&dir, &path).map(|()| dir));
    match dir {
        Ok(dir) => Ok(Opened { path, dir, created }),
        Err(e) => {
            remove_created(&created, &path);
            Err(e)
        }
    }
}

/// The state dir itself: ours, and writable by no one else.
fn check_state_dir(dir: &OwnedFd, path: &Path) -> Result<()> {
    let st = fstat(dir).with_context(|| format!("cannot stat {}", path.display()))?;
    let euid = geteuid().as_raw();
    if st.st_uid != euid {
        bail!(
            "state dir {} belongs to uid {}, not to you (uid {euid}); another user could replace its files, pick another --state-dir",
            path.display(),
            st.st_uid
        );
    }
    if st.st_mode & 0o022 != 0 {
        bail!(
            "state dir {} is writable by other users (mode {:o}); run 'chmod go-w' on it or pick another --state-dir",
            path.display(),
            st.st_mode & 0o7777
        );
    }
    Ok(())
}

/// A directory usernet creates something in, or that holds the state dir: only we (or root)
/// may change what it holds. A sticky directory (such as `/tmp`) owned by root or us may be
/// writable by all: others can add names to it but not take or replace ours.
fn check_container(dir: &OwnedFd, shown: &Path, state: &Path) -> Result<()> {
    let st = fstat(dir).with_context(|| format!("cannot stat {}", shown.display()))?;
    let trusted_owner = st.st_uid == geteuid().as_raw() || is_root_like(st.st_uid);
    let others_write = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if trusted_owner && (!others_write || sticky) {
        return Ok(());
    }
    let why = if !trusted_owner {
        format!("belongs to uid {}", st.st_uid)
    } else {
        format!(
            "is writable by other users (mode {:o})",
            st.st_mode & 0o7777
        )
    };
    bail!(
        "cannot use state dir {}: {} {why}, so another user could replace it; pick a --state-dir in a directory only you can change",
        state.display(),
        shown.display()
    )
}

/// Whether files owned by `uid` are as trustworthy as root's: root itself, or, inside a user
/// namespace, the overflow uid that every id outside our mapping shows as (root's own
/// directories such as `/tmp` and `/` among them).
fn is_root_like(uid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let Some(overflow) = overflow.filter(|o| *o == uid) else {
        return false;
    };
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    !map.lines().any(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        f.len() == 3 && (f[0]..f[0] + f[2]).contains(&u64::from(overflow))
    })
}

/// A running usernet of this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub state_dir: PathBuf,
    /// The process holding the state dir's lock (usernet itself).
    pub pid: i32,
    /// What its `child_pid` says, once written.
    pub child_pid: Option<i32>,
}

/// The running usernets of this user: state dirs of ours whose `lock` a live process holds
/// (`/proc/locks`), looked for where default state dirs go (`$XDG_RUNTIME_DIR` and `/tmp`)
/// and where the command lines of our `usernet run` processes say (`--state-dir`).
pub fn running() -> Vec<Running> {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let holders = flock_holders(&locks);
    let mut candidates: Vec<PathBuf> = Vec::new();
    let bases = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/tmp")]);
    for base in bases {
        let Ok(dir) = std::fs::read_dir(&base) else {
            continue;
        };
        candidates.extend(dir.filter_map(|e| e.ok()).filter_map(|e| {
            let name = e.file_name();
            name.as_bytes()
                .starts_with(DEFAULT_PREFIX.as_bytes())
                .then(|| base.join(name))
        }));
    }
    candidates.extend(explicit_state_dirs());
    let euid = geteuid().as_raw();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for dir in candidates {
        let Ok(dir_stat) = nix::sys::stat::stat(&dir) else {
            continue;
        };
        let Ok(lock) = nix::sys::stat::lstat(&dir.join(LOCK)) else {
            continue;
        };
        if dir_stat.st_uid != euid
            || lock.st_uid != euid
            || seen.contains(&(dir_stat.st_dev, dir_stat.st_ino))
        {
            continue;
        }
        let key = (
            nix::sys::stat::major(lock.st_dev),
            nix::sys::stat::minor(lock.st_dev),
            lock.st_ino,
        );
        let Some(&(_, pid)) = holders.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        seen.push((dir_stat.st_dev, dir_stat.st_ino));
        let child_pid = std::fs::read_to_string(dir.join("child_pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        out.push(Running {
            state_dir: dir,
            pid,
            child_pid,
        });
    }
    out.sort_by_key(|r| r.pid);
    out
}

/// Exclusive `flock`s in `/proc/locks`: (device major, minor, inode) and the holder's pid.
fn flock_holders(locks: &str) -> Vec<((u64, u64, u64), i32)> {
    locks
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; waiters have "->" second.
            if f.len() < 6 || f[1] != "FLOCK" || f[3] != "WRITE" {
                return None;
            }
            let pid = f[4].parse().ok()?;
            let mut id = f[5].splitn(3, ':');
            let major = u64::from_str_radix(id.next()?, 16).ok()?;
            let minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let ino = id.next()?.parse().ok()?;
            Some(((major, minor, ino), pid))
        })
        .collect()
}

/// The `--state-dir` of every `usernet run` process of ours, as absolute paths.
fn explicit_state_dirs() -> Vec<PathBuf> {
    let euid = geteuid().as_raw().to_string();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in proc.filter_map(|e| e.ok()) {
        let pid = entry.file_name();
        if !pid.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let base = entry.path();
        let Ok(cmdline) = std::fs::read(base.join("cmdline")) else {
            continue;
        };
        let Some(dir) = state_dir_of_command_line(&cmdline) else {
            continue;
        };
        // Ours: the effective uid (the second field of "Uid:").
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let ours = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some(euid.as_str());
        if !ours {
            continue;
        }
        if dir.is_absolute() {
            out.push(dir);
        } else if let Ok(cwd) = std::fs::read_link(base.join("cwd")) {
            out.push(cwd.join(dir));
        }
    }
    out
}

/// The `--state-dir` of a `usernet run` command line (NUL-separated, as in
/// `/proc/PID/cmdline`).
fn state_dir_of_command_line(cmdline: &[u8]) -> Option<PathBuf> {
    let mut args = cmdline.split(|b| *b == 0).map(OsStr::from_bytes);
    let program = Path::new(args.next()?);
    if program.file_name() != Some(OsStr::new("usernet")) {
        return None;
    }
    let mut run = false;
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            break;
        } else if bytes == b"run" {
            run = true;
        } else if bytes == b"--state-dir" {
            return args.next().filter(|_| run).map(PathBuf::from);
        } else if let Some(v) = bytes.strip_prefix(b"--state-dir=") {
            return run.then(|| PathBuf::from(OsStr::from_bytes(v)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::new("child_pid", Kind::File),
            Entry::new("resolv.conf", Kind::File),
        ]
    }

    fn base(name: &str) -> PathBuf {
        let b = std::env::temp_dir().join(format!("usernet-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&b);
        fs::create_dir(&b).unwrap();
        b
    }

    #[test]
    fn explicit_dir_is_locked_and_removed_with_the_parents_it_created() {
        let base = base("created");
        let dir = base.join("a/b/state");
        {
            let s = StateDir::create(Some(&dir), &entries()).unwrap();
            s.write_child_pid(42).unwrap();
            assert_eq!(fs::read_to_string(dir.join("child_pid")).unwrap(), "42");
            let second = StateDir::create(Some(&dir), &entries());
            assert!(second.err().unwrap().to_string().contains("in use"));
            assert!(s.write_file("other", b"x", 0o644).is_err(), "undeclared");
        }
        assert!(!base.join("a").exists(), "a/b/state and its parents go");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_directory_with_the_users_files_is_refused_and_left_alone() {
        let base = base("users");
        let dir = base.join("state");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("resolv.conf"), "mine").unwrap();
        let err = StateDir::create(Some(&dir), &entries()).err().unwrap();
        assert!(err.to_string().contains("holds resolv.conf"), "{err}");
        assert_eq!(fs::read_to_string(dir.join("resolv.conf")).unwrap(), "mine");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no lock left");
        // Next to a stale lock, a name usernet never uses is still the user's.
        fs::write(dir.join("lock"), "").unwrap();
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        fs::remove_file(dir.join("resolv.conf")).unwrap();
        let err = StateDir::create(Some(&dir), &entries()).err().unwrap();
        assert!(err.to_string().contains("holds notes.txt"), "{err}");
        assert!(dir.join("lock").exists() && dir.join("notes.txt").exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn stale_state_is_reused_and_an_existing_directory_stays() {
        let base = base("stale");
        let dir = base.join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        for f in ["lock", "child_pid", "resolv.conf"] {
            fs::write(dir.join(f), "old").unwrap();
        }
        fs::create_dir(dir.join(".copy-up-0")).unwrap();
        {
            let s = StateDir::create(Some(&dir), &entries()).unwrap();
            assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "only the lock");
            s.write_child_pid(7).unwrap();
        }
        assert!(dir.is_dir(), "a directory usernet did not create stays");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = base("perm");
        let dir = base.join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, PermissionsExt::from_mode(0o777)).unwrap();
        let err = StateDir::create(Some(&dir), &entries()).err().unwrap();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        // A parent it would create into, too; a sticky one is fine.
        fs::set_permissions(&base, PermissionsExt::from_mode(0o777)).unwrap();
        let err = StateDir::create(Some(&base.join("new")), &entries())
            .err()
            .unwrap();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        assert!(!base.join("new").exists());
        fs::set_permissions(&base, PermissionsExt::from_mode(0o1777)).unwrap();
        drop(StateDir::create(Some(&base.join("new")), &entries()).unwrap());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn running_instances_are_found_by_their_held_lock() {
        let base = base("running");
        let dir = base.join("state");
        let s = StateDir::create(Some(&dir), &entries()).unwrap();
        // This test process is a `usernet run` only in name: look its dir up directly.
        let lock = nix::sys::stat::lstat(&dir.join(LOCK)).unwrap();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let key = (
            nix::sys::stat::major(lock.st_dev),
            nix::sys::stat::minor(lock.st_dev),
            lock.st_ino,
        );
        let holders = flock_holders(&locks);
        assert!(
            holders.contains(&(key, std::process::id() as i32)),
            "{key:?} in {locks}"
        );
        drop(s);
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        assert!(!flock_holders(&locks).iter().any(|(k, _)| *k == key));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn state_dir_is_read_from_usernet_run_command_lines() {
        let of = |args: &[&str]| state_dir_of_command_line(args.join("\0").as_bytes());
        assert_eq!(
            of(&[
                "/usr/bin/usernet",
                "--debug",
                "run",
                "--state-dir",
                "/s",
                "--",
                "x"
            ]),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(
            of(&["usernet", "run", "--state-dir=rel", "--", "x"]),
            Some(PathBuf::from("rel"))
        );
        assert_eq!(
            of(&["usernet", "run", "--", "x", "--state-dir", "/s"]),
            None
        );
        assert_eq!(of(&["usernet", "ports", "--state-dir", "/s", "list"]), None);
        assert_eq!(of(&["other", "run", "--state-dir", "/s"]), None);
    }

    #[test]
    fn stale_names_are_only_usernets() {
        assert_eq!(stale_kind("api.sock"), Some(Kind::Socket));
        assert_eq!(stale_kind(".copy-up-12"), Some(Kind::Dir));
        assert_eq!(stale_kind("netns"), Some(Kind::File));
        for other in [".copy-up-", ".copy-up-x", "hosts.bak", "resolv.conf.bak"] {
            assert_eq!(stale_kind(other), None, "{other}");
        }
    }
}

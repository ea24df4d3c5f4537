//! rootlesskit's `--evacuate-cgroup2 NAME`: the processes of usernet's cgroup (v2) move into
//! its subgroup NAME, and every controller the cgroup has is enabled for its subgroups, so
//! COMMAND (in a cgroup namespace whose root is usernet's cgroup, seeing a cgroup2 of its
//! own on /sys/fs/cgroup) can make and control cgroups of its own, as a container engine
//! does. cgroup v2 forbids processes in a cgroup that hands controllers to its children,
//! which is why they move first.
//!
//! As rootlesskit: the hierarchy is the first cgroup2 mount (none: a warning, and nothing
//! happens); a process that cannot be moved or a controller that cannot be enabled is a
//! warning. Unlike rootlesskit, the root of a cgroup namespace is refused: it holds every
//! process of the system (or of the container), which would all move.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Move this process's cgroup's processes into its subgroup `name` and enable its
/// controllers for subgroups. Runs in the parent, before COMMAND starts.
pub fn evacuate(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." {
        bail!("unexpected evacuation group name {name:?}");
    }
    if name.contains('/') {
        bail!("unexpected evacuation group name {name:?}: must not contain \"/\"");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mountpoint) = cgroup2_mountpoint(&mountinfo) else {
        log::warn!("cgroup2 is not mounted. cgroup2 evacuation is discarded.");
        return Ok(());
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(group) = own_cgroup2(&own) else {
        log::warn!("process is not running with cgroup2. cgroup2 evacuation is discarded.");
        return Ok(());
    };
    if group == "/" {
        bail!(
            "cannot evacuate the root of the cgroup namespace (every process of the system or container is in it); start from a cgroup of your own, e.g. with systemd-run --user --scope"
        );
    }
    let old = mountpoint.join(group.trim_start_matches('/'));
    let new = old.join(name);
    match std::fs::create_dir(&new) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", new.display())),
    }
    let procs = read_bounded(&old.join("cgroup.procs"))?;
    for pid in procs.split_whitespace().filter(|p| *p != "0") {
        if let Err(e) = std::fs::write(new.join("cgroup.procs"), pid) {
            log::warn!(
                "failed to move process {pid} to cgroup {}: {e}",
                new.display()
            );
        }
    }
    let controllers = read_bounded(&old.join("cgroup.controllers"))?;
    for controller in controllers.split_whitespace() {
        log::debug!("enabling controller {controller:?}");
        if let Err(e) = std::fs::write(old.join("cgroup.subtree_control"), format!("+{controller}"))
        {
            log::warn!("failed to enable controller {controller:?}: {e}");
        }
    }
    Ok(())
}

/// A cgroup file's text, bounded (a `cgroup.procs` holds at most the pid limit's worth).
fn read_bounded(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(16 << 20).read_to_string(&mut text))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text)
}

/// Where the first cgroup2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mountpoint(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2"))
            .then(|| before.split_whitespace().nth(4).map(unescape_octal))?
    })
}

/// mountinfo's escaping of a path (`\040` for a space, and so on).
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// This process's cgroup2 path, from `/proc/self/cgroup` (the `0::PATH` line).
fn own_cgroup2(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_and_group_are_found() {
        let mountinfo = "\
30 27 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
36 30 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mountpoint(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mountpoint("40 1 0:9 / /a\\040b rw - cgroup2 none rw\n"),
            Some(PathBuf::from("/a b"))
        );
        assert_eq!(cgroup2_mountpoint("garbage\n"), None);
        assert_eq!(
            own_cgroup2("9:name=systemd:/\n0::/user.slice/x.scope\n"),
            Some("/user.slice/x.scope")
        );
        assert_eq!(own_cgroup2("4:memory:/x\n"), None);
    }

    #[test]
    fn bad_names_are_refused_before_anything_moves() {
        for name in ["", ".", "..", "a/b"] {
            assert!(evacuate(name).is_err(), "{name:?}");
        }
    }
}

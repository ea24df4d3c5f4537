//! `usernet install-links [DIR]`: symlinks that make usernet the programs its clients look
//! for by name, so they run on usernet unchanged once DIR comes first in `$PATH`:
//! `slirp4netns` (podman, rootlesskit's `--net=slirp4netns`), `rootlesskit` and
//! `docker-rootlesskit` (`dockerd-rootless.sh` looks for the latter first, so a
//! `docker-rootlesskit` elsewhere in `$PATH` would otherwise win), `rootlesskit-docker-proxy`
//! (Docker before 28 publishes ports with it) and `rootlessctl`.
//!
//! It never replaces what it did not make: an existing file, or a link to anything but a
//! program named `usernet`, is left alone and reported in one line (exit 1); a link to a
//! usernet (this one, or one since moved or rebuilt elsewhere) is pointed at this one. There
//! is no `--force`: removing someone else's `slirp4netns` is a decision for the user, with
//! `rm`, not a flag.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

/// The names usernet answers to (see `main.rs`).
pub const NAMES: [&str; 5] = [
    "slirp4netns",
    "rootlesskit",
    "docker-rootlesskit",
    "rootlesskit-docker-proxy",
    "rootlessctl",
];

/// What became of one name.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Created,
    AlreadyThere,
    /// A link to another usernet, now to this one.
    Updated(PathBuf),
    /// Someone else's file: its description.
    LeftAlone(String),
}

/// Make the links in `dir` (or the default directory); print a line per name; the exit code:
/// 0 when every link is in place, 1 when a name was left to someone else's file.
pub fn install(dir: Option<PathBuf>) -> Result<i32> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("cannot tell where this usernet binary is")?;
    let dir = match dir {
        Some(d) => d,
        None => default_dir()?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut code = 0;
    for name in NAMES {
        let link = dir.join(name);
        match link_one(&link, &exe)
            .with_context(|| format!("cannot link {} to usernet", link.display()))?
        {
            Outcome::Created => println!("{} -> {}", link.display(), exe.display()),
            Outcome::AlreadyThere => println!("{} -> {} (already)", link.display(), exe.display()),
            Outcome::Updated(old) => println!(
                "{} -> {} (was {})",
                link.display(),
                exe.display(),
                old.display()
            ),
            Outcome::LeftAlone(what) => {
                code = 1;
                println!(
                    "{}: left alone, it is {what}; remove it to use usernet as {name}",
                    link.display()
                );
            }
        }
    }
    if let Some(warning) = path_warning(&dir) {
        println!("{warning}");
    }
    Ok(code)
}

/// `~/.local/bin`, else `~/bin` when only that exists.
fn default_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("$HOME is not set; give the directory for the links"))?;
    let local = home.join(".local/bin");
    let bin = home.join("bin");
    Ok(if !local.is_dir() && bin.is_dir() {
        bin
    } else {
        local
    })
}

fn link_one(link: &Path, exe: &Path) -> std::io::Result<Outcome> {
    let target = match std::fs::read_link(link) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::os::unix::fs::symlink(exe, link)?;
            return Ok(Outcome::Created);
        }
        // Exists, but not a link.
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            return Ok(Outcome::LeftAlone("a file, not a link to usernet".into()));
        }
        Err(e) => return Err(e),
    };
    let resolved = link
        .parent()
        .map(|d| d.join(&target))
        .unwrap_or_else(|| target.clone());
    if resolved.canonicalize().is_ok_and(|t| t == exe) {
        return Ok(Outcome::AlreadyThere);
    }
    if target.file_name().is_none_or(|n| n != "usernet") {
        return Ok(Outcome::LeftAlone(format!(
            "a link to {}",
            target.display()
        )));
    }
    // A link to another usernet: ours to repoint. A new link replaces it in one rename, so
    // the name never goes missing.
    let temporary = link.with_file_name(format!(
        ".{}.usernet-{}",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::os::unix::fs::symlink(exe, &temporary)?;
    if let Err(e) = std::fs::rename(&temporary, link) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(Outcome::Updated(target))
}

/// A line saying what keeps the links from being found, if anything: `dir` is not in `$PATH`,
/// or a directory before it has programs of the same names.
fn path_warning(dir: &Path) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let same = |d: &Path| d.canonicalize().ok() == dir.canonicalize().ok();
    let Some(position) = dirs.iter().position(|d| same(d)) else {
        return Some(format!(
            "note: {} is not in $PATH; add it before /usr/bin for your clients to find these",
            dir.display()
        ));
    };
    let shadowing: Vec<String> = dirs[..position]
        .iter()
        .flat_map(|d| NAMES.iter().map(move |n| d.join(n)))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    (!shadowing.is_empty()).then(|| {
        format!(
            "note: {} come first in $PATH; put {} before them",
            shadowing.join(", "),
            dir.display()
        )
    })
}

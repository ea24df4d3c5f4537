//! uid/gid maps for the child's new user namespace, written by the parent.
//!
//! Three cases, in order of preference:
//! - **root** (uid 0 in the current user namespace): map every id we have onto itself, so
//!   root stays root and files keep their owners;
//! - **an unprivileged user with subordinate ids** (`/etc/subuid`, `/etc/subgid` and the setuid
//!   `newuidmap`/`newgidmap`): the caller becomes root and ids 1.. come from the subordinate
//!   ranges, as rootlesskit and podman do. Where the ranges come from is rootlesskit's
//!   `--subid-source`: `getsubids` (shadow's, which asks the system's subid service, e.g.
//!   sssd or LDAP), the files, or (`auto`) `getsubids` where it answers, else the files;
//! - otherwise **a single mapping**: the caller becomes root and nothing else is mapped
//!   (`setgroups` is denied, as the kernel requires for this case).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::config::SubidSource;

/// One line of a uid_map or gid_map: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How the maps were written, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    Identity,
    Subordinate,
    Single,
}

/// Write the child's maps, subordinate ids from `source`. Must run after the child unshared
/// its user namespace.
pub fn write_maps(child: Pid, source: SubidSource) -> Result<Mapping> {
    let uid = Uid::effective();
    let gid = Gid::effective();
    if uid.is_root() {
        let uids = own_ranges("/proc/self/uid_map")?;
        let gids = own_ranges("/proc/self/gid_map")?;
        write_map(child, "uid_map", &uids)?;
        write_map(child, "gid_map", &gids)?;
        return Ok(Mapping::Identity);
    }
    let name = User::from_uid(uid).ok().flatten().map(|u| u.name);
    let (sub_uids, sub_gids) = subordinate_ids(source, uid.as_raw(), name.as_deref());
    if let (Some(newuidmap), Some(newgidmap)) =
        (find_in_path("newuidmap"), find_in_path("newgidmap"))
        && !sub_uids.is_empty()
        && !sub_gids.is_empty()
    {
        let run = || -> Result<()> {
            run_newidmap(&newuidmap, child, uid.as_raw(), &sub_uids)?;
            run_newidmap(&newgidmap, child, gid.as_raw(), &sub_gids)?;
            Ok(())
        };
        match run() {
            Ok(()) => return Ok(Mapping::Subordinate),
            Err(e) => log::warn!("{e:#}; mapping only your own uid and gid"),
        }
    }
    write_file(&proc_path(child, "setgroups"), "deny")?;
    write_map(
        child,
        "uid_map",
        &[Range {
            inside: 0,
            outside: uid.as_raw(),
            count: 1,
        }],
    )?;
    write_map(
        child,
        "gid_map",
        &[Range {
            inside: 0,
            outside: gid.as_raw(),
            count: 1,
        }],
    )?;
    Ok(Mapping::Single)
}

/// The ids valid in our own namespace, as identity ranges.
fn own_ranges(path: &str) -> Result<Vec<Range>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let ranges: Vec<Range> = parse_map(&text)
        .into_iter()
        .map(|r| Range {
            inside: r.inside,
            outside: r.inside,
            count: r.count,
        })
        .collect();
    if ranges.is_empty() {
        bail!("{path} is empty");
    }
    Ok(ranges)
}

/// Parse the text of a uid_map/gid_map file.
pub fn parse_map(text: &str) -> Vec<Range> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(|x| x.parse::<u32>());
            match (f.next(), f.next(), f.next()) {
                (Some(Ok(inside)), Some(Ok(outside)), Some(Ok(count))) if count > 0 => {
                    Some(Range {
                        inside,
                        outside,
                        count,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// The caller's subordinate uid and gid ranges from `source`.
fn subordinate_ids(source: SubidSource, uid: u32, name: Option<&str>) -> (Vec<Range>, Vec<Range>) {
    let from_files = || {
        (
            subordinate_ranges(Path::new("/etc/subuid"), uid, name),
            subordinate_ranges(Path::new("/etc/subgid"), uid, name),
        )
    };
    let from_getsubids = || -> Result<(Vec<Range>, Vec<Range>)> {
        Ok((getsubids(false, uid, name)?, getsubids(true, uid, name)?))
    };
    match source {
        SubidSource::Static => from_files(),
        SubidSource::Dynamic => from_getsubids().unwrap_or_else(|e| {
            log::warn!("{e:#}");
            (Vec::new(), Vec::new())
        }),
        SubidSource::Auto => match from_getsubids() {
            Ok((uids, gids)) if !uids.is_empty() && !gids.is_empty() => (uids, gids),
            Ok(_) => from_files(),
            Err(e) => {
                log::debug!("{e:#}; reading /etc/subuid and /etc/subgid");
                from_files()
            }
        },
    }
}

/// The caller's subordinate ranges as `getsubids` (shadow's; `$GETSUBIDS` names another)
/// reports them, gids with `groups`.
fn getsubids(groups: bool, uid: u32, name: Option<&str>) -> Result<Vec<Range>> {
    let tool = std::env::var_os("GETSUBIDS")
        .map(PathBuf::from)
        .or_else(|| find_in_path("getsubids"))
        .ok_or_else(|| anyhow::anyhow!("getsubids is not installed"))?;
    let who = name.map_or_else(|| uid.to_string(), str::to_string);
    let mut cmd = Command::new(&tool);
    if groups {
        cmd.arg("-g");
    }
    let out = run_tool(cmd.arg(&who))?;
    Ok(parse_getsubids(
        &String::from_utf8_lossy(&out.stdout),
        uid,
        name,
    ))
}

/// `getsubids` output ("0: alice 100000 65536" per range) as packed ranges.
pub fn parse_getsubids(text: &str, uid: u32, name: Option<&str>) -> Vec<Range> {
    let as_file: String = text
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f.len() == 3).then(|| format!("{}:{}:{}\n", f[0], f[1], f[2]))
        })
        .collect();
    parse_subordinate(&as_file, uid, name)
}

/// The subordinate ranges of a user from an /etc/subuid-style file, packed from inside id 1
/// onwards (id 0 is the caller).
pub fn subordinate_ranges(path: &Path, uid: u32, name: Option<&str>) -> Vec<Range> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    parse_subordinate(&text, uid, name)
}

pub fn parse_subordinate(text: &str, uid: u32, name: Option<&str>) -> Vec<Range> {
    let uid_text = uid.to_string();
    let mut next_inside: u32 = 1;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.trim().split(':');
        let (Some(who), Some(start), Some(count)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if who != uid_text && Some(who) != name {
            continue;
        }
        let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) else {
            continue;
        };
        if count == 0 {
            continue;
        }
        out.push(Range {
            inside: next_inside,
            outside: start,
            count,
        });
        let Some(n) = next_inside.checked_add(count) else {
            break;
        };
        next_inside = n;
    }
    out
}

fn run_newidmap(tool: &Path, child: Pid, own: u32, ranges: &[Range]) -> Result<()> {
    let mut cmd = Command::new(tool);
    cmd.arg(child.to_string())
        .args(["0", &own.to_string(), "1"]);
    for r in ranges {
        cmd.args([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    run_tool(&mut cmd).map(drop)
}

/// Run a helper program to completion; its output, or why it failed (its stderr).
fn run_tool(cmd: &mut Command) -> Result<std::process::Output> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn write_map(child: Pid, file: &str, ranges: &[Range]) -> Result<()> {
    let text: String = ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect();
    write_file(&proc_path(child, file), &text)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e: io::Error| anyhow::anyhow!("writing {}: {e}", path.display()))
}

fn proc_path(pid: Pid, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_packed_after_root() {
        let text = "alice:100000:65536\n1001:300000:10\nbob:200000:65536\nbad line\nalice:x:1\n";
        let r = parse_subordinate(text, 1001, Some("alice"));
        assert_eq!(
            r,
            vec![
                Range {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                },
                Range {
                    inside: 65537,
                    outside: 300000,
                    count: 10
                },
            ]
        );
        assert!(parse_subordinate(text, 5, Some("carol")).is_empty());
    }

    #[test]
    fn getsubids_output_is_read_as_the_files_are() {
        let r = parse_getsubids(
            "0: alice 100000 65536\n1: alice 300000 10\nnoise\n",
            1001,
            Some("alice"),
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].inside, 65537);
        assert_eq!(r[1].outside, 300000);
        assert!(parse_getsubids("", 1001, Some("alice")).is_empty());
    }

    #[test]
    fn maps_parse_and_skip_garbage() {
        let r = parse_map(
            "         0       1001          1\n         1     100000      65536\nx y z\n",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1],
            Range {
                inside: 1,
                outside: 100000,
                count: 65536
            }
        );
    }
}

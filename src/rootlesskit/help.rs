//! What the rootlesskit personality prints when asked about itself: `--help` (in urfave/cli's
//! layout, every flag listed, since callers probe it: `containerd-rootless.sh` greps it for
//! `--detach-netns`), `--version` (`rootlesskit version X`, which scripts cut the third word
//! of) and `--print-semver`.

use std::fmt::Write as _;

use super::args::{Category, FLAGS, Flag, Kind};

/// The rootlesskit release whose command line, API and behaviour this personality follows.
pub const COMPATIBLE_VERSION: (u64, u64, u64) = (3, 0, 1);

/// The version reported (`--version`, `GET /v1/info`): the rootlesskit release followed, with
/// usernet's own version as semver build metadata, so version checks see a rootlesskit 3.0.1
/// and a reader sees what answers.
pub const VERSION: &str = concat!("3.0.1+usernet.", env!("CARGO_PKG_VERSION"));

/// `--version`'s line, as urfave/cli prints it.
pub fn version_line() -> String {
    format!("rootlesskit version {VERSION}\n")
}

/// `--print-semver=COMPONENT`: the component as a decimal integer, or rootlesskit's error.
pub fn semver(component: &str) -> Result<String, String> {
    let (major, minor, patch) = COMPATIBLE_VERSION;
    match component {
        "major" => Ok(format!("{major}\n")),
        "minor" => Ok(format!("{minor}\n")),
        "patch" => Ok(format!("{patch}\n")),
        other => Err(format!(
            "expected --print-semver=(major|minor|patch), got {other:?}"
        )),
    }
}

const DESCRIPTION: &str = "\
usernet's rootlesskit personality: rootlesskit's command line, state directory, REST API
and exit codes, with the network served by usernet's own userspace stack in this process
(--net=builtin; --net=slirp4netns, pasta, vpnkit and gvisor-tap-vsock are served by the same
stack with those drivers' addresses). No slirp4netns, pasta or vpnkit process is started.

Examples:
  # spawn a shell with a new user namespace and a mount namespace
  rootlesskit bash

  # make /etc writable
  rootlesskit --copy-up=/etc bash

  # set mount propagation to rslave
  rootlesskit --propagation=rslave bash

  # create a network namespace, and expose 80/tcp on the namespace as 8080/tcp on the host
  rootlesskit --copy-up=/etc --net=builtin --disable-host-loopback --port-driver=builtin -p 127.0.0.1:8080:80/tcp bash";

/// The flag's names as urfave/cli shows them: `--net value`, `--help, -h`,
/// `--publish value, -p value [ --publish value, -p value ]`.
fn names_column(flag: &Flag) -> String {
    let one = |name: &str| {
        let dashes = if name.len() == 1 { "-" } else { "--" };
        match flag.kind {
            Kind::Bool => format!("{dashes}{name}"),
            _ => format!("{dashes}{name} value"),
        }
    };
    let names = flag
        .names
        .iter()
        .map(|n| one(n))
        .collect::<Vec<_>>()
        .join(", ");
    if flag.kind == Kind::Strings {
        format!("{names} [ {names} ]")
    } else {
        names
    }
}

/// `--help`.
pub fn help() -> String {
    let width = FLAGS
        .iter()
        .map(|f| names_column(f).len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = write!(
        out,
        "NAME:\n   rootlesskit - Linux-native fakeroot using user namespaces\n\n\
         USAGE:\n   rootlesskit [global options] [arguments...]\n\n\
         VERSION:\n   {VERSION}\n\n\
         DESCRIPTION:\n"
    );
    for line in DESCRIPTION.lines() {
        let _ = writeln!(out, "   {line}");
    }
    out.push_str("\nOPTIONS:\n");
    for category in Category::ALL {
        let _ = writeln!(out, "  {}:", category.title());
        for flag in FLAGS.iter().filter(|f| f.category == category) {
            let mut usage = flag.usage.to_string();
            if let Some(default) = flag.default {
                let _ = write!(usage, " (default: {default})");
            }
            let _ = writeln!(out, "    {:width$}  {usage}", names_column(flag));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_flag_as_callers_grep_for_it() {
        let text = help();
        for flag in FLAGS {
            for name in flag.names {
                let dashes = if name.len() == 1 { "-" } else { "--" };
                assert!(text.contains(&format!("{dashes}{name}")), "{name}");
            }
        }
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some("--detach-netns"))
        );
        assert!(text.contains("--publish value, -p value [ --publish value, -p value ]"));
    }

    #[test]
    fn version_and_semver_agree() {
        assert_eq!(
            version_line().split(' ').nth(2).map(str::trim),
            Some(VERSION)
        );
        assert!(VERSION.starts_with("3.0.1+usernet."));
        assert_eq!(semver("major").unwrap(), "3\n");
        assert_eq!(semver("minor").unwrap(), "0\n");
        assert_eq!(semver("patch").unwrap(), "1\n");
        assert_eq!(
            semver("build").unwrap_err(),
            "expected --print-semver=(major|minor|patch), got \"build\""
        );
    }
}

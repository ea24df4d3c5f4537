//! The command line: `usernet run [FLAGS] -- COMMAND [ARGS...]`.
//!
//! Flags follow rootlesskit's names where the concept exists. Values are validated here, so a
//! bad flag fails before anything is set up, with one line naming the flag and the problem.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::net::{DEFAULT_MTU, MAX_MTU, MIN_MTU};
use crate::netconf::valid_ifname;

#[derive(Debug, Parser)]
#[command(
    name = "usernet",
    version,
    about = "Rootless networking for Linux namespaces: a userspace TCP/IP stack in one binary",
    propagate_version = true
)]
pub struct Cli {
    /// Log debug detail to stderr (RUST_LOG overrides the level).
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND in new user, network and mount namespaces, with networking through usernet.
    Run(RunArgs),
}

/// How the child's network namespace is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetMode {
    /// A new network namespace with tap0 connected to usernet's userspace stack.
    Builtin,
    /// A new network namespace with only lo.
    None,
    /// No new network namespace: the command shares the host's network.
    Host,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Network mode.
    #[arg(long, value_enum, default_value_t = NetMode::Builtin)]
    pub net: NetMode,

    /// MTU of the tap device.
    #[arg(long, default_value_t = DEFAULT_MTU, value_parser = parse_mtu)]
    pub mtu: u32,

    /// Name of the tap device inside the namespace.
    #[arg(long, default_value = "tap0", value_parser = parse_ifname)]
    pub ifname: String,

    /// Do not let the command reach the host's loopback (10.0.2.2 and the host's own addresses
    /// become unreachable).
    #[arg(long)]
    pub disable_host_loopback: bool,

    /// State directory (child_pid, lock). Default: a fresh directory under $XDG_RUNTIME_DIR
    /// or /tmp, removed at exit.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The command to run, and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

fn parse_mtu(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(MIN_MTU..=MAX_MTU).contains(&v) {
        return Err(format!("{v} is outside {MIN_MTU}..={MAX_MTU}"));
    }
    Ok(v)
}

fn parse_ifname(s: &str) -> Result<String, String> {
    if valid_ifname(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("usernet").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_command_after_double_dash_or_flags() {
        let c = parse(&["run", "--mtu", "1500", "--", "ls", "-l"]).unwrap();
        let Command::Run(r) = c.command;
        assert_eq!(r.mtu, 1500);
        assert_eq!(r.command, vec![OsString::from("ls"), OsString::from("-l")]);
        let c = parse(&["run", "sh", "-c", "echo --mtu"]).unwrap();
        let Command::Run(r) = c.command;
        assert_eq!(r.mtu, DEFAULT_MTU);
        assert_eq!(r.command.len(), 3);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse(&["run", "--mtu", "70000", "--", "true"]).is_err());
        assert!(parse(&["run", "--mtu", "x", "--", "true"]).is_err());
        assert!(parse(&["run", "--ifname", "a/b", "--", "true"]).is_err());
        assert!(parse(&["run", "--net", "bogus", "--", "true"]).is_err());
        assert!(parse(&["run"]).is_err());
    }
}

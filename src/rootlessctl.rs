//! The rootlessctl personality: invoked as `rootlessctl` (a symlink to usernet), usernet takes
//! rootlessctl's command line (`[--debug] [--socket PATH] list-ports|add-ports|remove-ports|
//! info [--json] ARGS`, parsed as urfave/cli does, with Go's flag rules) and prints what it
//! prints, byte for byte on success: the port table, JSON lines, the info lines or indented
//! JSON, the ids. It is a front end over [`crate::client`], which talks to any rootlesskit
//! REST API (usernet's or rootlesskit's) and believes only a server that runs as us.
//!
//! Kept from rootlessctl 1.1: the commands, flags, help layout, the socket default
//! (`$ROOTLESSKIT_STATE_DIR/api.sock`), the port spec syntax and its error texts, errors as
//! `error: MESSAGE` with exit 1, 3 for an unknown command. Changed: `--version` names usernet;
//! connection errors say which socket and what to check.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};

use crate::client::{self, ApiClient};
use crate::goflag::{self, FlagError, Kind};
use crate::ports::PortSpec;

/// What usernet reports as rootlessctl's version.
fn version() -> String {
    format!("{}+usernet", env!("CARGO_PKG_VERSION"))
}

/// A command: its name, summary, argument synopsis, description, and whether it takes
/// `--json`.
struct CommandInfo {
    name: &'static str,
    usage: &'static str,
    args: &'static str,
    description: &'static str,
    json: bool,
}

const COMMANDS: [CommandInfo; 4] = [
    CommandInfo {
        name: "list-ports",
        usage: "List ports",
        args: "",
        description: "",
        json: true,
    },
    CommandInfo {
        name: "add-ports",
        usage: "Add ports",
        args: " PARENTIP:PARENTPORT:CHILDPORT/PROTO [PARENTIP:PARENTPORT:CHILDPORT/PROTO...]",
        description: "Add exposed ports. The port spec is similar to `docker run -p`. e.g. \"127.0.0.1:8080:80/tcp\".",
        json: true,
    },
    CommandInfo {
        name: "remove-ports",
        usage: "Remove ports",
        args: " ID [ID...]",
        description: "",
        json: false,
    },
    CommandInfo {
        name: "info",
        usage: "Show info",
        args: "",
        description: "",
        json: true,
    },
];

fn app_help() -> String {
    let mut commands = String::new();
    for c in &COMMANDS {
        commands += &format!("   {:<14}{}\n", c.name, c.usage);
    }
    format!(
        "NAME:\n   rootlessctl - RootlessKit API client\n\n\
         USAGE:\n   rootlessctl [global options] command [command options] [arguments...]\n\n\
         VERSION:\n   {}\n\n\
         COMMANDS:\n{commands}   help, h       Shows a list of commands or help for one command\n\n\
         GLOBAL OPTIONS:\n   \
         --debug         debug mode (default: false)\n   \
         --socket value  Path to api.sock (under the \"rootlesskit --state-dir\" directory), defaults to $ROOTLESSKIT_STATE_DIR/api.sock\n   \
         --help, -h      show help (default: false)\n   \
         --version, -v   print the version (default: false)\n",
        version()
    )
}

fn command_help(c: &CommandInfo) -> String {
    let mut out = format!(
        "NAME:\n   rootlessctl {} - {}\n\nUSAGE:\n   rootlessctl {} [command options] [flags]{}\n\n",
        c.name, c.usage, c.name, c.args
    );
    if !c.description.is_empty() {
        out += &format!("DESCRIPTION:\n   {}\n\n", c.description);
    }
    out += "OPTIONS:\n";
    if c.json {
        out += "   --json      Prints as JSON (default: false)\n";
    }
    out += "   --help, -h  show help (default: false)\n   \n";
    out
}

/// What the command line asks for, or how the process ends at once.
enum Parsed {
    Run {
        socket: Option<PathBuf>,
        command: &'static CommandInfo,
        json: bool,
        args: Vec<String>,
    },
    /// Print this on stdout, exit with this code.
    Print(String, u8),
    /// A usage error: the help shown with it on stdout, the message.
    Usage(String, String),
    /// An unknown command (urfave/cli's exit 3).
    UnknownCommand(String),
}

fn parse(args: &[OsString]) -> Parsed {
    let global = [
        ("debug", Kind::Bool),
        ("socket", Kind::Value),
        ("version", Kind::Bool),
        ("v", Kind::Bool),
    ];
    let g = match goflag::parse(&global, args) {
        Ok(g) => g,
        Err(FlagError::Help) => return Parsed::Print(app_help(), 0),
        Err(FlagError::Invalid(e)) => return Parsed::Usage(app_help(), e),
    };
    if g.is_set("version") || g.is_set("v") {
        return Parsed::Print(format!("rootlessctl version {}\n", version()), 0);
    }
    let Some((name, rest)) = g.rest.split_first() else {
        return Parsed::Print(app_help(), 0);
    };
    let name = name.to_string_lossy();
    if name == "help" || name == "h" {
        return match rest.first().map(|r| r.to_string_lossy()) {
            None => Parsed::Print(app_help(), 0),
            Some(topic) => match COMMANDS.iter().find(|c| c.name == topic) {
                Some(c) => Parsed::Print(command_help(c), 0),
                None => Parsed::UnknownCommand(topic.into_owned()),
            },
        };
    }
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        return Parsed::UnknownCommand(name.into_owned());
    };
    let defs: &[(&str, Kind)] = if command.json {
        &[("json", Kind::Bool)]
    } else {
        &[]
    };
    let c = match goflag::parse(defs, rest) {
        Ok(c) => c,
        Err(FlagError::Help) => return Parsed::Print(command_help(command), 0),
        Err(FlagError::Invalid(e)) => return Parsed::Usage(command_help(command), e),
    };
    Parsed::Run {
        socket: g.value("socket").map(PathBuf::from),
        command,
        json: c.is_set("json"),
        args: c
            .rest
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    }
}

/// Run as rootlessctl with `argv`.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let (socket, command, json, args) = match parse(argv.get(1..).unwrap_or_default()) {
        Parsed::Run {
            socket,
            command,
            json,
            args,
        } => (socket, command, json, args),
        Parsed::Print(text, code) => {
            print!("{text}");
            return ExitCode::from(code);
        }
        Parsed::Usage(help, message) => {
            print!("Incorrect Usage. {message}\n\n{help}");
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
        Parsed::UnknownCommand(name) => {
            eprintln!("No help topic for '{name}'");
            return ExitCode::from(3);
        }
    };
    match run(socket, command.name, json, &args) {
        Ok(out) => {
            let mut stdout = std::io::stdout();
            let _ = stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(socket: Option<PathBuf>, command: &str, json: bool, args: &[String]) -> Result<String> {
    let socket = match socket {
        Some(s) => s,
        None => match std::env::var_os("ROOTLESSKIT_STATE_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("api.sock"),
            _ => bail!("please specify --socket or set $ROOTLESSKIT_STATE_DIR"),
        },
    };
    if let Err(e) = std::fs::metadata(&socket) {
        let why = crate::process::strerror(&e);
        let mut chars = why.chars();
        let why = match chars.next() {
            Some(first) => first.to_lowercase().chain(chars).collect(),
            None => why,
        };
        bail!("stat {}: {why}", socket.display());
    }
    let api = ApiClient::new(socket);
    match command {
        "list-ports" => client::ports_text(&api.ports()?, json),
        "info" => client::info_text(&api.info()?, json),
        "add-ports" => {
            if args.is_empty() {
                bail!("no port specified");
            }
            let specs: Vec<PortSpec> = args
                .iter()
                .map(|s| PortSpec::parse_rootlesskit(s).map_err(|e| anyhow!(e)))
                .collect::<Result<_>>()?;
            client::add_specs(&api, &specs, json)
        }
        _ => {
            if args.is_empty() {
                bail!("no ID specified");
            }
            let ids: Vec<i64> = args
                .iter()
                .map(|s| {
                    s.parse()
                        .map_err(|_| anyhow!("strconv.Atoi: parsing {s:?}: invalid syntax"))
                })
                .collect::<Result<_>>()?;
            client::remove_ids(&api, &ids)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(a: &[&str]) -> Parsed {
        parse(&a.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn flags_go_before_the_command_and_its_arguments() {
        match parse_strs(&["-socket", "/s", "add-ports", "--json", "127.0.0.1:1:2/tcp"]) {
            Parsed::Run {
                socket,
                command,
                json,
                args,
            } => {
                assert_eq!(socket, Some(PathBuf::from("/s")));
                assert_eq!(command.name, "add-ports");
                assert!(json);
                assert_eq!(args, ["127.0.0.1:1:2/tcp"]);
            }
            _ => panic!("not a run"),
        }
        // After an argument, --json is an argument (a bad spec), as in urfave/cli v2.
        match parse_strs(&["add-ports", "127.0.0.1:1:2/tcp", "--json"]) {
            Parsed::Run { json, args, .. } => {
                assert!(!json);
                assert_eq!(args.len(), 2);
            }
            _ => panic!("not a run"),
        }
    }

    #[test]
    fn help_version_and_unknown_commands() {
        assert!(matches!(parse_strs(&[]), Parsed::Print(_, 0)));
        assert!(
            matches!(parse_strs(&["-v"]), Parsed::Print(v, 0) if v.starts_with("rootlessctl version "))
        );
        assert!(
            matches!(parse_strs(&["info", "-h"]), Parsed::Print(h, 0) if h.contains("rootlessctl info - Show info"))
        );
        assert!(matches!(parse_strs(&["bogus"]), Parsed::UnknownCommand(c) if c == "bogus"));
        assert!(
            matches!(parse_strs(&["--bogus", "info"]), Parsed::Usage(_, m) if m == "flag provided but not defined: -bogus")
        );
        assert!(matches!(
            parse_strs(&["remove-ports", "--json", "1"]),
            Parsed::Usage(..)
        ));
    }
}

//! The `usernet` binary: parse the command line, set up logging, dispatch, and turn the outcome
//! into an exit code and at most one line on stderr.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;

use usernet::api::client;
use usernet::cli::{BadCommandLine, Command, PortsCommand};
use usernet::launcher::{self, Failure};

fn main() -> ExitCode {
    // Before anything else, whatever the personality: the guest must never be able to ptrace
    // or read the memory and fds of the process that holds host sockets (see `harden`).
    usernet::harden::set_undumpable();
    usernet::footprint::heap_policy();
    // Invoked as slirp4netns (through a symlink): slirp4netns's command line, exactly.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "slirp4netns")
    {
        return usernet::slirp4netns::main(argv);
    }
    let cli = match usernet::cli::parse(argv) {
        Ok(cli) => cli,
        Err(BadCommandLine::Clap(e)) => return usage_error(e),
        Err(BadCommandLine::Invalid(line)) => {
            eprintln!("usernet: {line}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.debug);
    let result =
        match cli.command {
            Command::Run(args) => launcher::run(args.into()),
            Command::Attach(args) => attach_config(args).and_then(usernet::attach::run),
            Command::Ports(ports) => print(client::state_dir(ports.target.state_dir).and_then(
                |dir| match ports.command {
                    PortsCommand::List { json } => client::list(&dir, json),
                    PortsCommand::Add { specs } => client::add(&dir, &specs),
                    PortsCommand::Remove { ids } => client::remove(&dir, &ids),
                },
            )),
            Command::Info(args) => print(
                client::state_dir(args.target.state_dir).and_then(|d| client::info(&d, args.json)),
            ),
            Command::Ps => print(client::ps()),
        };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map_or(1, |f| f.code);
            eprintln!("usernet: {e:#}");
            ExitCode::from(code.clamp(1, 255) as u8)
        }
    }
}

/// What `usernet attach` was asked to do.
fn attach_config(a: usernet::cli::AttachArgs) -> anyhow::Result<usernet::attach::AttachConfig> {
    use usernet::attach::namespace::NamespaceRef;
    use usernet::attach::{AttachConfig, OnSignal, Target};
    if a.stack.macaddress.is_some() && !a.configure {
        return Err(launcher::Failure {
            code: 2,
            message: "--macaddress needs --configure (usernet only sets up the tap it configures)"
                .into(),
        }
        .into());
    }
    let target = if !a.target.is_empty() && a.target.bytes().all(|b| b.is_ascii_digit()) {
        match a.target.parse::<i32>() {
            Ok(pid) if pid > 0 => NamespaceRef::Pid(pid),
            _ => {
                return Err(launcher::Failure {
                    code: 2,
                    message: format!("'{}' is not a valid PID", a.target),
                }
                .into());
            }
        }
    } else {
        NamespaceRef::Path(a.target.into())
    };
    Ok(AttachConfig {
        target: Target::Namespace(target),
        userns_path: a.userns_path,
        ifname: a.ifname,
        configure: a.configure,
        mac: a.stack.macaddress,
        tap_mtu: a.stack.mtu,
        stack: a.stack.stack_config(),
        api_socket: a.api_socket,
        max_api_connections: a.max_api_connections,
        ready_fd: a.ready_fd,
        exit_fd: a.exit_fd,
        sandbox: a.harden.sandbox,
        seccomp: a.harden.seccomp,
        exit_with_target: true,
        on_signal: OnSignal::ExitZero,
        banner: None,
    })
}

/// Print a client command's output; exit 0.
fn print(output: anyhow::Result<String>) -> anyhow::Result<i32> {
    output.map(|text| {
        print!("{text}");
        0
    })
}

/// Help and version go to stdout with exit 0; a bad command line is one line and exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            eprintln!("usernet: {}", usernet::cli::usage_line(&e));
            ExitCode::from(2)
        }
    }
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(move |buf, record| {
            if debug {
                writeln!(
                    buf,
                    "usernet[{}] {} {}: {}",
                    std::process::id(),
                    record.level(),
                    record.target(),
                    record.args()
                )
            } else {
                writeln!(buf, "usernet: {}", record.args())
            }
        })
        .init();
}

//! The `usernet` binary: parse the command line, set up logging, dispatch, and turn the outcome
//! into an exit code and at most one line on stderr.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;

use usernet::cli::{BadCommandLine, Command, PortsCommand};
use usernet::client;
use usernet::client::observe::Source;
use usernet::launcher;
use usernet::process::Failure;

/// Non-dumpable before `main`, before even the Rust runtime starts: a constructor the loader
/// runs right after mapping the binary, so the time in which a process of the same uid could
/// ptrace usernet or open its `/proc/PID/mem` (an fd that would stay usable) shrinks to the
/// dynamic loader's own work (see `harden`).
#[used]
#[unsafe(link_section = ".init_array")]
static UNDUMPABLE_AT_LOAD: extern "C" fn() = {
    extern "C" fn undumpable() {
        usernet::harden::set_undumpable();
    }
    undumpable
};

fn main() -> ExitCode {
    // COMMAND of a socket-activated run, started through us to learn its own pid.
    usernet::process::activation::exec_if_helper();
    // Before anything else, whatever the personality: the guest must never be able to ptrace
    // or read the memory and fds of the process that holds host sockets (see `harden`). The
    // constructor above already did it; a tracer that attached before it is refused here.
    usernet::harden::set_undumpable();
    if let Err(e) = usernet::harden::refuse_foreign_tracer() {
        eprintln!("usernet: {e}");
        return ExitCode::from(1);
    }
    usernet::footprint::heap_policy();
    // Invoked through a symlink with another program's name, that program's command line:
    // slirp4netns's exactly, and the rootlesskit family (docker-rootlesskit is the name
    // dockerd-rootless.sh looks for first).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv
        .first()
        .map(|a| usernet::attach::program_name(Some(a)))
        .as_deref()
    {
        Some("slirp4netns") => return usernet::slirp4netns::main(argv),
        Some("rootlesskit" | "docker-rootlesskit") => return usernet::rootlesskit::main(argv),
        Some("rootlessctl") => return usernet::rootlessctl::main(argv),
        Some("rootlesskit-docker-proxy") => return usernet::docker_proxy::main(argv),
        _ => {}
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
            Command::Attach(args) => args
                .into_config()
                .map_err(anyhow::Error::from)
                .and_then(usernet::attach::run),
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
            Command::Flows(args) => {
                let o = args.observe;
                Source::resolve(o.target.state_dir, o.socket).and_then(|source| {
                    let every = args.watch.map(std::time::Duration::from_secs);
                    usernet::client::observe::flows(&source, o.json, every)
                })
            }
            Command::Stats(args) => {
                let o = args.observe;
                print(
                    Source::resolve(o.target.state_dir, o.socket)
                        .and_then(|source| usernet::client::observe::stats(&source, o.json)),
                )
            }
            Command::Ps => print(client::ps()),
            Command::InstallLinks(args) => usernet::links::install(args.dir),
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

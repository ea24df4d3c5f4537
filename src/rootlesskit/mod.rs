//! The rootlesskit personality: invoked as `rootlesskit` or `docker-rootlesskit` (a symlink
//! to usernet; `dockerd-rootless.sh` looks for the second first), usernet takes rootlesskit
//! v3's command line ([`args`]) and runs COMMAND with `usernet run`'s runtime
//! ([`crate::launcher`]), its network being usernet's own stack in the launching process
//! (`--net=builtin`, and the other drivers' names, see [`translate`]).
//!
//! Kept from rootlesskit, because callers depend on them: the flags and their checks, the
//! help and version texts callers probe ([`help`]), the environment COMMAND gets
//! (`ROOTLESSKIT_STATE_DIR`, `ROOTLESSKIT_PARENT_EUID`/`EGID`, socket activation's
//! `LISTEN_FDS`/`LISTEN_PID`), the state dir's files and `api.sock`'s REST API, the exit code
//! (COMMAND's status, 255 when a signal killed it, 1 when setting up failed) and the error
//! lines (`[rootlesskit:parent] error: ...`, and for a COMMAND that failed or was killed the
//! child's line with Go's wording, `signal: user defined signal 1`).
//!
//! This module only translates: what it builds is a [`RunConfig`](crate::config::RunConfig).

pub mod args;
pub mod help;
pub mod translate;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use crate::launcher;
use crate::process::CommandExit;

/// Run as rootlesskit with `argv`.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let cl = match args::parse(&argv) {
        Ok(cl) => cl,
        Err(e) => return fail(&e.to_string()),
    };
    let o = &cl.options;
    // urfave/cli answers help, then version, before anything else.
    if o.help {
        print!("{}", help::help());
        return ExitCode::SUCCESS;
    }
    if o.version {
        print!("{}", help::version_line());
        return ExitCode::SUCCESS;
    }
    init_logging(o.debug);
    if let Some(component) = o.print_semver.as_deref().filter(|c| !c.is_empty()) {
        return match help::semver(component) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    if cl.command.is_empty() {
        return fail("no command specified");
    }
    let config = match translate::run_config(o, cl.command.clone()) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    match launcher::launch(config) {
        Ok(exit) => ExitCode::from(report_exit(&cl.command, exit)),
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// rootlesskit's error line, exit 1.
fn fail(message: &str) -> ExitCode {
    eprintln!("[rootlesskit:parent] error: {message}");
    ExitCode::from(1)
}

/// The exit code for how COMMAND ended, and rootlesskit's lines about it: for anything but
/// success, its child's line (Go's wording of the status) and its parent's.
fn report_exit(command: &[OsString], exit: CommandExit) -> u8 {
    let (how, code) = match exit {
        CommandExit::Code(0) => return 0,
        CommandExit::Code(code) => (format!("exit status {code}"), code.clamp(0, 255) as u8),
        CommandExit::Signal {
            signal,
            core_dumped,
        } => {
            let core = if core_dumped { " (core dumped)" } else { "" };
            (format!("signal: {}{core}", signal_description(signal)), 255)
        }
    };
    let words: Vec<String> = command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "[rootlesskit:child ] error: command [{}] exited: {how}",
        words.join(" ")
    );
    let _ = writeln!(
        err,
        "[rootlesskit:parent] error: child exited: exit status {code}"
    );
    code
}

/// A signal as Go's `syscall.Signal.String()` words it (what rootlesskit prints).
pub fn signal_description(signal: i32) -> String {
    const NAMES: [&str; 31] = [
        "hangup",
        "interrupt",
        "quit",
        "illegal instruction",
        "trace/breakpoint trap",
        "aborted",
        "bus error",
        "floating point exception",
        "killed",
        "user defined signal 1",
        "segmentation fault",
        "user defined signal 2",
        "broken pipe",
        "alarm clock",
        "terminated",
        "stack fault",
        "child exited",
        "continued",
        "stopped (signal)",
        "stopped",
        "stopped (tty input)",
        "stopped (tty output)",
        "urgent I/O condition",
        "CPU time limit exceeded",
        "file size limit exceeded",
        "virtual timer expired",
        "profiling timer expired",
        "window changed",
        "I/O possible",
        "power failure",
        "bad system call",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("signal {signal}"), |name| name.to_string())
}

/// Log lines as rootlesskit's, `[rootlesskit:parent] ...` (`child ` in the process inside):
/// warnings and errors always, notices of this front end too, everything with `--debug`
/// (`RUST_LOG` overrides).
fn init_logging(debug: bool) {
    let default = if debug {
        "debug"
    } else {
        "warn,usernet::rootlesskit=info"
    };
    let parent = std::process::id();
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(move |buf, record| {
            let id = if std::process::id() == parent {
                "parent"
            } else {
                "child "
            };
            match record.level() {
                log::Level::Error => writeln!(buf, "[rootlesskit:{id}] error: {}", record.args()),
                log::Level::Warn => writeln!(buf, "[rootlesskit:{id}] warning: {}", record.args()),
                log::Level::Info => writeln!(buf, "[rootlesskit:{id}] {}", record.args()),
                _ => writeln!(
                    buf,
                    "[rootlesskit:{id}] {} {}: {}",
                    record.level(),
                    record.target(),
                    record.args()
                ),
            }
        })
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_as_go_prints_them() {
        assert_eq!(signal_description(10), "user defined signal 1");
        assert_eq!(signal_description(15), "terminated");
        assert_eq!(signal_description(9), "killed");
        assert_eq!(signal_description(31), "bad system call");
        assert_eq!(signal_description(34), "signal 34");
        assert_eq!(signal_description(0), "signal 0");
    }
}

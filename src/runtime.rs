//! The start-up skeleton both runtimes follow, `usernet run` ([`crate::launcher`]) and
//! `usernet attach` ([`crate::attach`], also behind the slirp4netns personality), so that the
//! order that matters for safety is written once:
//!
//! 1. **prepare** ([`prepare`]): block the signals the process handles (they are read from a
//!    signalfd, so none is lost while setting up, nor inherited unblocked by a child); the
//!    open file limit is raised once no process that runs the user's command is still to be
//!    forked (COMMAND keeps the caller's limits);
//! 2. **handshake**: each runtime's own way to a TAP fd (a child in new namespaces, a helper
//!    joining an existing one, an inherited fd, a BESS client), then [`start_stack`] on it,
//!    and whatever the runtime serves besides (API sockets, published ports);
//! 3. **confine** ([`confine`]): sandbox and seccomp filter, once everything the process will
//!    ever open by path is open, and before the first guest frame or API request is read;
//! 4. **serve** ([`serve`]): the stack's event loop, signals included, until the runtime's
//!    callback says stop.
//!
//! What differs between the runtimes (the handshake, what a signal means, when to stop) stays
//! with them.

use std::ops::ControlFlow;
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use mio::Token;
use nix::sys::signal::SigSet;

use crate::harden::{self, Hardening, Keep, Sandbox};
use crate::observe::capture::CaptureConfig;
use crate::observe::probe::{self, Probe, ProbeEnd};
use crate::process::signals::{self, Signals};
use crate::process::tune_malloc;
use crate::stack::{Stack, StackConfig};

/// Token of the signalfd on the stack's poller.
pub const SIGNALS_TOKEN: Token = Token(1);
/// Token of the [probe](crate::observe::probe) waker on the stack's poller: another thread
/// asks for the flow table or the counters, or to change the stack's forwards.
pub const PROBE_TOKEN: Token = Token(4);

/// Step 1: block `handled`, to be read from a signalfd.
pub fn prepare(handled: &SigSet) -> Result<()> {
    signals::block_set(handled).context("cannot block signals")?;
    Ok(())
}

/// Step 2's end: the stack on the TAP the handshake produced. Its capture file (`--pcap`, or
/// `USERNET_PCAP` for every personality) is created here, before confinement.
pub fn start_stack(tap: OwnedFd, mut config: StackConfig) -> Result<Stack> {
    tune_malloc();
    if config.capture.is_none() {
        config.capture = CaptureConfig::from_env().map_err(|e| anyhow::anyhow!(e))?;
    }
    Stack::new(tap, config).context("cannot start the network stack")
}

/// A probe other threads ask the stack with, waking it on [`PROBE_TOKEN`]; the runtime's
/// callback hands that token to [`answer_probe`].
pub fn probe(stack: &Stack) -> Result<(Probe, ProbeEnd)> {
    probe::channel(stack.registry(), PROBE_TOKEN).context("cannot create the stack's waker")
}

/// Answer the queries waiting on `end` from `stack` (on the stack's thread).
pub fn answer_probe(end: &ProbeEnd, stack: &mut Stack) {
    end.answer(|query| crate::stack_ports::answer(stack, query));
}

/// Step 3: the sandbox (keeping `keep` reachable), then the seccomp filter.
pub fn confine(sandbox: Hardening, seccomp: Hardening, keep: &Keep) -> Result<Sandbox> {
    let confined = harden::apply_sandbox(sandbox, keep)?;
    harden::apply_seccomp(seccomp)?;
    Ok(confined)
}

/// Step 4: give back the pages only set-up used, watch `signals` on [`SIGNALS_TOKEN`], and
/// run the stack, handing every event that is not the stack's to `on_event` (with the
/// signals, to read them), until it breaks. An error means the network went away under us
/// (the TAP is gone).
pub fn serve<B>(
    stack: &mut Stack,
    signals: &mut Signals,
    mut on_event: impl FnMut(&mut Stack, &mut Signals, Token) -> ControlFlow<B>,
) -> Result<B> {
    signals
        .watch(stack.registry(), SIGNALS_TOKEN)
        .context("cannot watch signals")?;
    crate::footprint::shed_startup();
    let result = stack.run(|stack, token| on_event(stack, signals, token));
    if result.is_ok() {
        stack.finish();
    }
    log::debug!("stack: {}", stack.summary());
    Ok(result?)
}

//! Getting a TAP device inside someone else's network namespace.
//!
//! The namespace files are opened here, in the caller's process, so a wrong PID or path is
//! reported before anything else happens. Then a short-lived child is forked: it joins the
//! target's user namespace (which gives it the capabilities the target's network namespace
//! requires), then the network namespace, opens the TAP there (reusing a persistent,
//! unattached one of that name, as rootlesskit prepares it), optionally configures it
//! (`--configure`), sends the fd back over a socketpair and exits. The parent never leaves
//! its own namespaces, so every host socket it opens later is in the host's network.
//!
//! The user namespace is the one given (`--userns-path`), else the target process's, else
//! the one that owns the network namespace (`NS_GET_USERNS`), which slirp4netns did not
//! look for. Joining it fails harmlessly when we already hold the needed rights (root, or
//! it is our own).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};

use crate::config::NamespaceRef;
use crate::net::VirtualNetwork;
use crate::netconf::{LinkSettings, Netlink};
use crate::process::Failure;
use crate::process::channel::{Channel, Msg};
use crate::process::signals::{Signals, wait_readable};
use crate::tap;

/// `NS_GET_USERNS` from linux/nsfs.h: the user namespace that owns a namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;
/// `NS_GET_NSTYPE` from linux/nsfs.h: the kind of a namespace (a `CLONE_NEW*` flag).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The namespace files, opened.
pub struct Namespaces {
    pub net: File,
    pub net_path: PathBuf,
    /// The user namespace to join first, if any could be opened.
    pub user: Option<File>,
}

impl Namespaces {
    /// Open the network namespace of `target` and the user namespace to join with it.
    pub fn open(target: &NamespaceRef, userns_path: Option<&Path>) -> Result<Namespaces> {
        let net_path = match target {
            NamespaceRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            NamespaceRef::Path(p) => p.clone(),
        };
        let net = File::open(&net_path).map_err(|e| {
            let hint = match (target, e.kind()) {
                (NamespaceRef::Pid(pid), io::ErrorKind::NotFound) => {
                    format!(" (is process {pid} running?)")
                }
                (_, io::ErrorKind::PermissionDenied) => {
                    " (it must belong to you, or run as root)".to_string()
                }
                _ => String::new(),
            };
            anyhow!(
                "cannot open network namespace {}: {}{hint}",
                net_path.display(),
                crate::process::strerror(&e)
            )
        })?;
        if !is_netns(&net) {
            return Err(anyhow!(
                "{} is not a network namespace (give a PID, or a file such as /proc/PID/ns/net or /run/netns/NAME)",
                net_path.display()
            ));
        }
        let user = match (userns_path, target) {
            (Some(p), _) => Some(
                File::open(p)
                    .with_context(|| format!("cannot open user namespace {}", p.display()))?,
            ),
            (None, NamespaceRef::Pid(pid)) => File::open(format!("/proc/{pid}/ns/user")).ok(),
            (None, NamespaceRef::Path(_)) => owning_userns(&net),
        };
        Ok(Namespaces {
            net,
            net_path,
            user,
        })
    }

    /// The (device, inode) identity of the network namespace.
    pub fn identity(&self) -> Option<(u64, u64)> {
        nix::sys::stat::fstat(self.net.as_fd())
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }
}

/// Whether `f` is a network namespace file.
fn is_netns(f: &File) -> bool {
    // SAFETY: ioctl NS_GET_NSTYPE (Linux 4.11+) takes no argument and returns a namespace
    // type or -1.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    t == libc::CLONE_NEWNET
}

/// The user namespace that owns the namespace `f`, if we may open it.
fn owning_userns(f: &File) -> Option<File> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS as _) };
    // SAFETY: on success fd is a new descriptor we own.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// How to configure the TAP inside (`--configure`).
#[derive(Debug, Clone)]
pub struct Configure {
    pub net: VirtualNetwork,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub txqueuelen: u32,
}

/// Fork a child that opens the TAP `ifname` in `ns` (configured if asked) and hands it back.
/// Signals in `signals` that arrive meanwhile abort with exit code 128+N.
pub fn open_tap(
    ns: &Namespaces,
    ifname: &str,
    configure: Option<&Configure>,
    signals: &mut Signals,
) -> Result<OwnedFd> {
    let (parent_end, child_end) = Channel::pair().context("cannot create a socketpair")?;
    // SAFETY: the process is single-threaded here (attach starts no thread before the
    // stack runs), so the child may run Rust code after fork.
    let child = match unsafe { fork() }.context("fork failed")? {
        ForkResult::Child => {
            drop(parent_end);
            let msg = match child(ns, ifname, configure) {
                Ok(tap) => match child_end.send_with_fd(&Msg::Tap, tap.as_fd()) {
                    Ok(()) => std::process::exit(0),
                    Err(e) => format!("cannot pass the tap fd: {e}"),
                },
                Err(e) => format!("{e:#}"),
            };
            let _ = child_end.send(&Msg::Failed {
                code: 1,
                message: msg,
            });
            std::process::exit(1);
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    let result = loop {
        let ready = wait_readable(&[parent_end.as_fd(), signals.as_fd()])
            .context("waiting for the namespace helper")?;
        if ready == 1 {
            if let Some(r) = signals.next_signal().context("signalfd")? {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                break Err(Failure {
                    code: 128 + r.signal as i32,
                    message: format!("interrupted by {} during setup", r.signal),
                }
                .into());
            }
            continue;
        }
        break match parent_end.recv() {
            Ok((Msg::Tap, Some(fd))) => Ok(fd),
            Ok((Msg::Failed { message, .. }, _)) => Err(anyhow!(message)),
            Ok(_) => Err(anyhow!("the namespace helper sent no tap fd")),
            Err(e) => Err(anyhow!("the namespace helper died: {e}")),
        };
    };
    let _ = waitpid(child, None);
    result
}

/// The forked child's work; an error is the one-line message for the user.
fn child(ns: &Namespaces, ifname: &str, configure: Option<&Configure>) -> Result<OwnedFd> {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let joined_user = ns
        .user
        .as_ref()
        .map(|u| setns(u.as_fd(), CloneFlags::CLONE_NEWUSER));
    if let Err(e) = setns(ns.net.as_fd(), CloneFlags::CLONE_NEWNET) {
        let hint = match (e, &joined_user) {
            (nix::errno::Errno::EPERM, None) => {
                "; pass the user namespace that owns it with --userns-path".to_string()
            }
            (nix::errno::Errno::EPERM, Some(Err(u))) => {
                format!(" (joining its user namespace failed too: {})", u.desc())
            }
            _ => String::new(),
        };
        return Err(anyhow!(
            "cannot enter network namespace {}: {}{hint}",
            ns.net_path.display(),
            e.desc()
        ));
    }
    let tap = tap::create(ifname)?;
    if let Some(c) = configure {
        configure_inside(ifname, c)?;
    }
    Ok(tap)
}

/// `--configure`: lo up; the TAP's MAC, MTU, queue length and up; the guest address and the
/// default route via the gateway, for IPv6 too with `--ipv6`. What is already configured is
/// left as is.
fn configure_inside(ifname: &str, c: &Configure) -> Result<()> {
    let exists = crate::netconf::ignore_exists;
    let mut nl = Netlink::open().map_err(|e| anyhow!("netlink: {e}"))?;
    nl.link_up("lo")?;
    if c.net.v6.is_some() {
        crate::netconf::prepare_guest_ipv6(ifname);
    }
    let settings = LinkSettings {
        up: true,
        mtu: Some(c.mtu),
        txqueuelen: Some(c.txqueuelen),
        mac: c.mac,
    };
    nl.set_link(ifname, &settings)?;
    exists(nl.add_ipv4_address(ifname, c.net.guest, c.net.prefix))?;
    exists(nl.add_default_ipv4_route(ifname, c.net.gateway))?;
    if let Some(v6) = &c.net.v6 {
        exists(nl.add_guest_ipv6(ifname, v6))?;
    }
    Ok(())
}

//! What a test needs of the machine beyond what every test needs, declared by the test itself
//! in its first line:
//!
//! ```ignore
//! pub fn other_users_cannot_reach_the_state_dir_or_the_api() -> Result<(), Unmet> {
//!     needs(&[Need::RealRoot])?;
//!     ...
//!     Ok(())
//! }
//! ```
//!
//! A test whose needs this machine lacks stops there and is reported as ignored, with the
//! reason (never as passed). Tests that need nothing more return `()`.

/// Something a test needs that not every machine or user has.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Root of the initial user namespace (as CI runs the tests): the test becomes other
    /// users, or maps a million ids.
    RealRoot,
    /// A kernel with IPv6.
    Ipv6,
    /// `/dev/net/tun` readable and writable by every user (its usual mode 0666, which
    /// `.ci/run` sets): the test runs usernet with a TAP as another user.
    TunForEveryone,
}

/// Why a test did not run: the first of its needs this machine lacks.
#[derive(Debug)]
pub struct Unmet(pub String);

/// Ok if this machine has everything in `list`; else what it lacks, to skip the test.
pub fn needs(list: &[Need]) -> Result<(), Unmet> {
    for need in list {
        let (met, lacking) = match need {
            Need::RealRoot => (is_real_root(), "needs root of the initial user namespace"),
            Need::Ipv6 => (ipv6_available(), "needs a kernel with IPv6"),
            Need::TunForEveryone => (
                tun_usable_by_everyone(),
                "needs /dev/net/tun open to every user (mode 0666)",
            ),
        };
        if !met {
            return Err(Unmet(lacking.into()));
        }
    }
    Ok(())
}

/// Whether this process is root of the initial user namespace, which a test needs to become
/// an arbitrary other user.
pub fn is_real_root() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        && nix::unistd::geteuid().is_root()
}

/// Whether this kernel has IPv6.
pub fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// Whether /dev/net/tun has its usual mode, readable and writable by every user.
pub fn tun_usable_by_everyone() -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata("/dev/net/tun").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006)
}

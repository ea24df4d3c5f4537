//! slirp4netns 1.2's command line, parsed the way slirp4netns parses it: with glibc's own
//! `getopt_long`, so argument permutation, clustered short options, `--opt=value`, unique
//! prefixes (`--conf`) and glibc's error messages are exactly those of the original, and
//! with its validation order, messages and exit codes (usage on stdout, exit 1).
//!
//! Parsing prints as slirp4netns does: warnings on stdout while options are read, `-h`/`-v`
//! as soon as they are seen. What differs is deliberate: `--outbound-addr6=IFNAME` looks up
//! its own value (slirp4netns looked up `--outbound-addr`'s), and "experimental" warnings
//! are not printed for what usernet fully supports.

use crate::config::UsageError;
use std::ffi::{CStr, CString, OsString, c_char, c_int};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// The version slirp4netns's consumers see. Its line `SLIRP_CONFIG_VERSION_MAX: 4` (≥ 3)
/// is what feature probes grep for.
pub fn version_text() -> String {
    format!(
        "slirp4netns version 1.2.0+usernet-{v}\n\
         commit: usernet-{v}\n\
         libslirp: none (usernet {v}, smoltcp 0.14.0)\n\
         SLIRP_CONFIG_VERSION_MAX: 4\n\
         libseccomp: none (seccompiler)\n",
        v = env!("CARGO_PKG_VERSION")
    )
}

/// slirp4netns 1.2's `--help`, byte for byte (two lines carry a TAB); podman and rootlesskit
/// detect features by the option names in it.
pub fn usage_text(argv0: &str) -> String {
    format!(
        "Usage: {argv0} [OPTION]... PID|PATH [TAPNAME]\n\
User-mode networking for unprivileged network namespaces.\n\
\n\
-c, --configure          bring up the interface\n\
-e, --exit-fd=FD         specify the FD for terminating slirp4netns\n\
-r, --ready-fd=FD        specify the FD to write to when the network is configured\n\
-m, --mtu=MTU            specify MTU (default=1500, max=65521)\n\
-6, --enable-ipv6        enable IPv6 (experimental)\n\
-a, --api-socket=PATH    specify API socket path\n\
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24)\n\
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace\n\
--netns-type=TYPE \t specify network namespace type ([path|pid], default=pid)\n\
--userns-path=PATH\t specify user namespace path\n\
--enable-sandbox         create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)\n\
--enable-seccomp         enable seccomp to limit syscalls (experimental)\n\
--outbound-addr=IPv4     sets outbound ipv4 address to bound to (experimental)\n\
--outbound-addr6=IPv6    sets outbound ipv6 address to bound to (experimental)\n\
--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect (experimental)\n\
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)\n\
--target-type=TYPE       specify the target type ([netns|bess], default=netns)\n\
-h, --help               show this help and exit\n\
-v, --version            show version and exit\n"
    )
}

/// The options as given, before the checks that need no more parsing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    pub configure: bool,
    pub exit_fd: Option<i32>,
    pub ready_fd: Option<i32>,
    pub mtu: u32,
    pub enable_ipv6: bool,
    pub api_socket: Option<PathBuf>,
    pub cidr: Option<String>,
    pub disable_host_loopback: bool,
    pub netns_type: Option<String>,
    pub userns_path: Option<PathBuf>,
    pub enable_sandbox: bool,
    pub enable_seccomp: bool,
    pub outbound_addr: Option<String>,
    pub outbound_addr6: Option<String>,
    pub disable_dns: bool,
    pub macaddress: Option<String>,
    pub bess: bool,
    pub positional: Vec<OsString>,
}

/// What the command line asks for, once parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A process whose network namespace (and user namespace) to join.
    Pid(i32),
    /// A network namespace file (`--netns-type=path`).
    Path(PathBuf),
    /// An inherited TAP fd (`--netns-type=tapfd`, slirp4netns 1.3).
    TapFd(i32),
    /// A SOCK_SEQPACKET socket to serve one BESS client on (`--target-type=bess`).
    Bess(PathBuf),
}

/// The end of parsing: run, or exit with this code (everything already printed).
#[derive(Debug)]
pub enum Parse {
    Run(Box<Options>, Target, Option<String>),
    Exit(i32),
}

/// Values of `getopt_long`'s `val` for options without a short form.
mod long {
    pub const CIDR: i32 = 1000;
    pub const DISABLE_HOST_LOOPBACK: i32 = 1001;
    pub const NO_HOST_LOOPBACK: i32 = 1002;
    pub const NETNS_TYPE: i32 = 1003;
    pub const USERNS_PATH: i32 = 1004;
    pub const ENABLE_SANDBOX: i32 = 1005;
    pub const CREATE_SANDBOX: i32 = 1006;
    pub const ENABLE_SECCOMP: i32 = 1007;
    pub const OUTBOUND_ADDR: i32 = 1008;
    pub const OUTBOUND_ADDR6: i32 = 1009;
    pub const DISABLE_DNS: i32 = 1010;
    pub const MACADDRESS: i32 = 1011;
    pub const TARGET_TYPE: i32 = 1012;
}

const NO_ARG: c_int = 0;
const REQUIRED: c_int = 1;

/// (name, has_arg, val), in slirp4netns's order (it matters for ambiguity messages).
const LONG_OPTIONS: &[(&CStr, c_int, i32)] = &[
    (c"help", NO_ARG, b'h' as i32),
    (c"version", NO_ARG, b'v' as i32),
    (c"configure", NO_ARG, b'c' as i32),
    (c"exit-fd", REQUIRED, b'e' as i32),
    (c"ready-fd", REQUIRED, b'r' as i32),
    (c"mtu", REQUIRED, b'm' as i32),
    (c"cidr", REQUIRED, long::CIDR),
    (
        c"disable-host-loopback",
        NO_ARG,
        long::DISABLE_HOST_LOOPBACK,
    ),
    (c"no-host-loopback", NO_ARG, long::NO_HOST_LOOPBACK),
    (c"netns-type", REQUIRED, long::NETNS_TYPE),
    (c"userns-path", REQUIRED, long::USERNS_PATH),
    (c"api-socket", REQUIRED, b'a' as i32),
    (c"enable-ipv6", NO_ARG, b'6' as i32),
    (c"enable-sandbox", NO_ARG, long::ENABLE_SANDBOX),
    (c"create-sandbox", NO_ARG, long::CREATE_SANDBOX),
    (c"enable-seccomp", NO_ARG, long::ENABLE_SECCOMP),
    (c"outbound-addr", REQUIRED, long::OUTBOUND_ADDR),
    (c"outbound-addr6", REQUIRED, long::OUTBOUND_ADDR6),
    (c"disable-dns", NO_ARG, long::DISABLE_DNS),
    (c"macaddress", REQUIRED, long::MACADDRESS),
    (c"target-type", REQUIRED, long::TARGET_TYPE),
];

unsafe extern "C" {
    static mut optind: c_int;
    static mut optarg: *mut c_char;
}

/// glibc's getopt keeps its state in globals.
static GETOPT: Mutex<()> = Mutex::new(());

/// What one `getopt_long` step returned.
enum Opt {
    /// An option's `val`, and its argument.
    Found(i32, Option<OsString>),
    /// glibc printed why the command line is wrong.
    Error,
}

/// Run glibc's `getopt_long` over `args` (args[0] is the program name). Returns the options
/// in order and the positional arguments (which getopt moves to the end).
fn getopt(args: &[OsString]) -> (Vec<Opt>, Vec<OsString>) {
    let _guard = GETOPT.lock().unwrap_or_else(|p| p.into_inner());
    // An argument with a NUL byte cannot come from execve; keep what precedes it.
    let owned: Vec<CString> = args
        .iter()
        .map(|a| {
            let bytes = a.as_bytes();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            CString::new(&bytes[..end]).unwrap_or_default()
        })
        .collect();
    let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let mut longopts: Vec<libc::option> = LONG_OPTIONS
        .iter()
        .map(|(name, has_arg, val)| libc::option {
            name: name.as_ptr(),
            has_arg: *has_arg,
            flag: std::ptr::null_mut(),
            val: *val,
        })
        .collect();
    longopts.push(libc::option {
        name: std::ptr::null(),
        has_arg: 0,
        flag: std::ptr::null_mut(),
        val: 0,
    });
    let argc = c_int::try_from(owned.len()).unwrap_or(c_int::MAX);
    let mut found = Vec::new();
    // SAFETY: argv is a NULL-terminated array of pointers to NUL-terminated strings that
    // outlive the calls (owned); getopt_long only permutes the pointers. longopts ends with an
    // all-zero entry. optind and optarg are glibc's globals, guarded by GETOPT; optind = 0
    // asks glibc to start a fresh scan. optarg points into owned while it lives.
    unsafe {
        optind = 0;
        loop {
            let c = libc::getopt_long(
                argc,
                argv.as_ptr(),
                c"ce:r:m:a:6hv".as_ptr(),
                longopts.as_ptr(),
                std::ptr::null_mut(),
            );
            if c == -1 {
                break;
            }
            if c == b'?' as c_int || c == b':' as c_int {
                found.push(Opt::Error);
                break;
            }
            let arg = if optarg.is_null() {
                None
            } else {
                Some(OsString::from(std::ffi::OsStr::from_bytes(
                    CStr::from_ptr(optarg).to_bytes(),
                )))
            };
            found.push(Opt::Found(c, arg));
        }
        let first = usize::try_from(optind).unwrap_or(0).min(owned.len());
        let positional = argv[first..owned.len()]
            .iter()
            .map(|p| OsString::from(std::ffi::OsStr::from_bytes(CStr::from_ptr(*p).to_bytes())))
            .collect();
        (found, positional)
    }
}

/// Parse slirp4netns's command line, printing what slirp4netns prints along the way.
pub fn parse(args: &[OsString], out: &mut dyn Write, err: &mut dyn Write) -> Parse {
    let argv0 = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "slirp4netns".into());
    let usage_fail = |out: &mut dyn Write, err: &mut dyn Write, msg: Option<&str>| {
        if let Some(m) = msg {
            let _ = writeln!(err, "{m}");
        }
        let _ = write!(out, "{}", usage_text(&argv0));
        Parse::Exit(1)
    };
    let (found, positional) = getopt(args);
    let mut o = Options {
        mtu: 1500,
        ..Options::default()
    };
    let mut target_type: Option<String> = None;
    for opt in found {
        let (c, arg) = match opt {
            Opt::Found(c, arg) => (c, arg),
            Opt::Error => return usage_fail(out, err, None),
        };
        let text = arg
            .as_ref()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        match c {
            c if c == b'h' as i32 => {
                let _ = write!(out, "{}", usage_text(&argv0));
                return Parse::Exit(0);
            }
            c if c == b'v' as i32 => {
                let _ = write!(out, "{}", version_text());
                return Parse::Exit(0);
            }
            c if c == b'c' as i32 => o.configure = true,
            c if c == b'e' as i32 => match c_long(&text).map(|v| v as i32) {
                Some(fd) if fd >= 0 => o.exit_fd = Some(fd),
                _ => return usage_fail(out, err, Some("exit-fd must be a non-negative integer")),
            },
            c if c == b'r' as i32 => match c_long(&text).map(|v| v as i32) {
                Some(fd) if fd >= 0 => o.ready_fd = Some(fd),
                _ => {
                    return usage_fail(out, err, Some("ready-fd must be a non-negative integer"));
                }
            },
            c if c == b'm' as i32 => match c_long(&text).map(|v| v as u32) {
                Some(mtu) if mtu > 0 && mtu <= 65521 => o.mtu = mtu,
                _ => {
                    return usage_fail(out, err, Some("MTU must be a positive integer (< 65522)"));
                }
            },
            c if c == b'6' as i32 => {
                o.enable_ipv6 = true;
                let _ = writeln!(out, "WARNING: Support for IPv6 is experimental");
            }
            c if c == b'a' as i32 => o.api_socket = arg.map(PathBuf::from),
            long::CIDR => o.cidr = Some(text),
            long::DISABLE_HOST_LOOPBACK => o.disable_host_loopback = true,
            long::NO_HOST_LOOPBACK => {
                o.disable_host_loopback = true;
                let _ = writeln!(
                    out,
                    "WARNING: --no-host-loopback is deprecated and will be removed in future releases, please use --disable-host-loopback instead."
                );
            }
            long::NETNS_TYPE => o.netns_type = Some(text),
            long::USERNS_PATH => {
                let path = PathBuf::from(arg.unwrap_or_default());
                if !path.exists() && std::fs::symlink_metadata(&path).is_err() {
                    let msg = format!("userns path doesn't exist: {}", path.display());
                    return usage_fail(out, err, Some(&msg));
                }
                o.userns_path = Some(path);
            }
            long::ENABLE_SANDBOX => o.enable_sandbox = true,
            long::CREATE_SANDBOX => {
                o.enable_sandbox = true;
                let _ = writeln!(
                    out,
                    "WARNING: --create-sandbox is deprecated and will be removed in future releases, please use --enable-sandbox instead."
                );
            }
            long::ENABLE_SECCOMP => o.enable_seccomp = true,
            long::OUTBOUND_ADDR => o.outbound_addr = Some(text),
            long::OUTBOUND_ADDR6 => o.outbound_addr6 = Some(text),
            long::DISABLE_DNS => o.disable_dns = true,
            long::MACADDRESS => o.macaddress = Some(text),
            long::TARGET_TYPE => {
                if text != "netns" && text != "bess" {
                    return usage_fail(
                        out,
                        err,
                        Some("--target-type must be either \"netns\" or \"bess\""),
                    );
                }
                target_type = Some(text);
            }
            _ => return usage_fail(out, err, None),
        }
    }
    o.bess = target_type.as_deref() == Some("bess");
    if o.macaddress.is_some() && !o.configure {
        return usage_fail(
            out,
            err,
            Some("--macaddr cannot be specified when --configure or -c is not specified"),
        );
    }
    let target = if o.bess {
        for (conflict, set) in [
            ("--configure", o.configure),
            ("--netns-type", o.netns_type.is_some()),
            ("--userns-path", o.userns_path.is_some()),
        ] {
            if set {
                let msg = format!("{conflict} conflicts with --target-type=bess");
                return usage_fail(out, err, Some(&msg));
            }
        }
        match positional.as_slice() {
            [] => return usage_fail(out, err, None),
            [path] => Target::Bess(PathBuf::from(path)),
            _ => return usage_fail(out, err, Some("too many arguments")),
        }
    } else {
        let tapfd = o.netns_type.as_deref() == Some("tapfd");
        let needed = if tapfd { 1 } else { 2 };
        if positional.len() < needed {
            return usage_fail(out, err, None);
        }
        if positional.len() > 2 {
            let _ = writeln!(out, "WARNING: too many arguments");
        }
        let first = positional[0].to_string_lossy().into_owned();
        match o.netns_type.as_deref() {
            None | Some("pid") => match c_long(&first).map(|v| v as i32) {
                Some(pid) if pid > 0 => Target::Pid(pid),
                _ => return usage_fail(out, err, Some("PID must be a positive integer")),
            },
            Some("tapfd") => match c_long(&first).map(|v| v as i32) {
                Some(fd) if fd >= 0 => Target::TapFd(fd),
                _ => return usage_fail(out, err, Some("TAPFD must a file descriptor")),
            },
            // Any other type means a path, as in slirp4netns.
            Some(_) => {
                let path = PathBuf::from(&positional[0]);
                if let Err(e) = std::fs::metadata(&path) {
                    let msg = format!(
                        "existing path expected when --netns-type=path: {}",
                        crate::process::strerror(&e)
                    );
                    return usage_fail(out, err, Some(&msg));
                }
                Target::Path(path)
            }
        }
    };
    let tap_name = if o.bess {
        None
    } else {
        positional.get(1).map(|n| n.to_string_lossy().into_owned())
    };
    o.positional = positional;
    Parse::Run(Box::new(o), target, tap_name)
}

/// `strtol(s, &end, 10)` with slirp4netns's checks: leading whitespace and a sign allowed,
/// at least one digit, nothing after the digits. Out-of-range values saturate as `long` does.
pub fn c_long(s: &str) -> Option<i64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = (v * 10 + i128::from(b - b'0')).min(i128::from(i64::MAX) + 1);
    }
    if negative {
        v = -v;
    }
    Some(v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// `--cidr`, checked as slirp4netns checks it, with its messages.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), UsageError> {
    let invalid = || UsageError(format!("invalid CIDR: {s}"));
    let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
    let octets: Vec<&str> = addr.split('.').collect();
    let shape_ok = octets.len() == 4
        && octets
            .iter()
            .all(|o| (1..=3).contains(&o.len()) && o.bytes().all(|b| b.is_ascii_digit()))
        && (1..=2).contains(&len.len())
        && len.bytes().all(|b| b.is_ascii_digit());
    if !shape_ok {
        return Err(invalid());
    }
    let network: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("invalid network address: {addr}"))?;
    let prefix: u8 = len
        .parse()
        .map_err(|_| format!("invalid prefix length: {len}"))?;
    if !(1..=25).contains(&prefix) {
        return Err(UsageError("prefix length needs to be 1-25".into()));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(network) & !mask != 0 {
        return Err(
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24".into(),
        );
    }
    Ok((network, prefix))
}

/// `--macaddress`, read as slirp4netns reads it: up to six colon-separated groups, each
/// what `sscanf("%x")` takes at its start (garbage after the number is ignored), missing
/// groups zero. Errors are its two-line message.
pub fn parse_mac(s: &str) -> Result<[u8; 6], UsageError> {
    let tail = "macaddress has to be a valid MAC address (hex string, 6 bytes, each byte separated by a ':').";
    let invalid =
        |why: &str| UsageError(format!("\"{s}\" is an invalid MAC address.{why}\n{tail}"));
    let mut mac = [0u8; 6];
    let mut rest = Some(s);
    for byte in mac.iter_mut() {
        let Some(group) = rest else {
            break;
        };
        *byte = scan_hex(group)
            .filter(|v| *v <= 255)
            .ok_or_else(|| invalid(""))? as u8;
        rest = group.split_once(':').map(|(_, r)| r);
    }
    if rest.is_some() {
        return Err(invalid("  Is it too long?"));
    }
    Ok(mac)
}

/// What `sscanf(s, "%x")` reads: whitespace, a sign, an optional 0x, hex digits.
fn scan_hex(s: &str) -> Option<u64> {
    let t = s.trim_start();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let t = match t.get(..2) {
        Some("0x" | "0X") if t[2..].starts_with(|c: char| c.is_ascii_hexdigit()) => &t[2..],
        _ => t,
    };
    let digits: String = t.chars().take_while(char::is_ascii_hexdigit).collect();
    if digits.is_empty() {
        return None;
    }
    let v = digits.chars().fold(0u64, |v, c| {
        v.saturating_mul(16)
            .saturating_add(u64::from(c.to_digit(16).unwrap_or(0)))
    });
    Some(if negative { v.wrapping_neg() } else { v })
}

/// `--outbound-addr`: an IPv4 address, or an interface's first IPv4 address.
pub fn outbound4(s: &str) -> Result<Ipv4Addr, UsageError> {
    s.parse()
        .ok()
        .or_else(|| crate::hostinfo::interface_ipv4(s))
        .ok_or_else(|| "outbound-addr has to be valid ipv4 address or interface name.".into())
}

/// `--outbound-addr6`: an IPv6 address, or an interface's first IPv6 address.
pub fn outbound6(s: &str) -> Result<Ipv6Addr, UsageError> {
    s.parse()
        .ok()
        .or_else(|| crate::hostinfo::interface_ipv6(s))
        .ok_or_else(|| "outbound-addr6 has to be valid ipv6 address or interface name.".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Parse, String, String) {
        let argv: Vec<OsString> = std::iter::once("slirp4netns")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let p = parse(&argv, &mut out, &mut err);
        (
            p,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    fn exit_code(args: &[&str]) -> i32 {
        match run(args).0 {
            Parse::Exit(c) => c,
            Parse::Run(..) => -1,
        }
    }

    #[test]
    fn getopt_permutes_clusters_and_abbreviates_like_glibc() {
        let (p, out, _) = run(&[
            "-c",
            "7",
            "--cidr",
            "10.0.135.128/25",
            "tap11",
            "--mt",
            "9000",
        ]);
        let Parse::Run(o, target, tap) = p else {
            panic!("{out}")
        };
        assert!(o.configure);
        assert_eq!(o.mtu, 9000);
        assert_eq!(o.cidr.as_deref(), Some("10.0.135.128/25"));
        assert_eq!(target, Target::Pid(7));
        assert_eq!(tap.as_deref(), Some("tap11"));

        let Parse::Run(o, ..) = run(&["-c6", "-m9000", "-r3", "--conf", "1", "t"]).0 else {
            panic!()
        };
        assert!(o.configure && o.enable_ipv6);
        assert_eq!((o.mtu, o.ready_fd), (9000, Some(3)));

        // "--" ends options: what follows is positional.
        let (p, out, _) = run(&["--", "5", "tap", "--mtu", "9000"]);
        let Parse::Run(o, ..) = p else { panic!() };
        assert_eq!(o.mtu, 1500);
        assert!(out.contains("WARNING: too many arguments"));
    }

    #[test]
    fn help_and_version_exit_zero_as_soon_as_seen() {
        let (p, out, _) = run(&["--mtu", "1500", "-v", "--bogus"]);
        assert!(matches!(p, Parse::Exit(0)));
        assert!(out.contains("SLIRP_CONFIG_VERSION_MAX: 4\n"));
        assert!(out.starts_with("slirp4netns version "));
        let (p, out, _) = run(&["-h"]);
        assert!(matches!(p, Parse::Exit(0)));
        for needle in [
            "--netns-type",
            "--userns-path",
            "--enable-ipv6",
            "--cidr",
            "--disable-host-loopback",
            "--api-socket",
            "--enable-sandbox",
            "--enable-seccomp",
            "--mtu",
            "--outbound-addr",
            "--disable-dns",
            "--macaddress",
        ] {
            assert!(out.contains(needle), "{needle}");
        }
        assert!(out.contains("--netns-type=TYPE \t specify"));
        // An error before -h wins.
        assert_eq!(exit_code(&["-m", "0", "-h"]), 1);
    }

    #[test]
    fn errors_print_slirp4netns_messages_and_usage() {
        let cases: &[(&[&str], &str, bool)] = &[
            (
                &["-e", "-1", "1", "t"],
                "exit-fd must be a non-negative integer\n",
                true,
            ),
            (
                &["-e", "4294967295", "1", "t"],
                "exit-fd must be a non-negative integer\n",
                true,
            ),
            (
                &["-r", "x", "1", "t"],
                "ready-fd must be a non-negative integer\n",
                true,
            ),
            (
                &["-m", "65522", "1", "t"],
                "MTU must be a positive integer (< 65522)\n",
                true,
            ),
            (
                &["--target-type=foo", "1", "t"],
                "--target-type must be either \"netns\" or \"bess\"\n",
                true,
            ),
            (
                &["--macaddress=aa:bb", "1", "t"],
                "--macaddr cannot be specified when --configure or -c is not specified\n",
                true,
            ),
            (&["0", "t"], "PID must be a positive integer\n", true),
            (&["12x", "t"], "PID must be a positive integer\n", true),
            (
                &["--netns-type=path", "/nonexistent/ns", "t"],
                "existing path expected when --netns-type=path: No such file or directory\n",
                true,
            ),
            (
                &["--userns-path=/nonexistent/u", "1", "t"],
                "userns path doesn't exist: /nonexistent/u\n",
                true,
            ),
            (
                &["--target-type=bess", "-c", "/x"],
                "--configure conflicts with --target-type=bess\n",
                true,
            ),
            (
                &["--target-type=bess", "--netns-type=pid", "/x"],
                "--netns-type conflicts with --target-type=bess\n",
                true,
            ),
            (
                &["--target-type=bess", "/x", "/y"],
                "too many arguments\n",
                true,
            ),
            (&["1"], "", true),
            (&[], "", true),
            (&["--bogus"], "", true),
        ];
        for (args, msg, usage) in cases {
            let (p, out, err) = run(args);
            assert!(matches!(p, Parse::Exit(1)), "{args:?}");
            assert_eq!(err, *msg, "{args:?}");
            assert_eq!(
                out.contains("Usage: slirp4netns [OPTION]"),
                *usage,
                "{args:?}"
            );
        }
    }

    #[test]
    fn targets() {
        let Parse::Run(_, t, tap) = run(&["+12", "tap0"]).0 else {
            panic!()
        };
        assert_eq!((t, tap.as_deref()), (Target::Pid(12), Some("tap0")));
        let Parse::Run(_, t, _) = run(&["--netns-type=foo", "/", "tap0"]).0 else {
            panic!()
        };
        assert_eq!(t, Target::Path("/".into()));
        let Parse::Run(_, t, tap) = run(&["--netns-type=tapfd", "3"]).0 else {
            panic!()
        };
        assert_eq!((t, tap), (Target::TapFd(3), None));
        let Parse::Run(o, t, _) = run(&["--target-type=bess", "/tmp/b.sock"]).0 else {
            panic!()
        };
        assert!(o.bess);
        assert_eq!(t, Target::Bess("/tmp/b.sock".into()));
        // A huge fd wraps like C's int conversion.
        let Parse::Run(o, ..) = run(&["-r", "4294967299", "1", "t"]).0 else {
            panic!()
        };
        assert_eq!(o.ready_fd, Some(3));
    }

    #[test]
    fn cidr_checks_and_messages() {
        assert_eq!(
            parse_cidr("10.0.135.128/25"),
            Ok((Ipv4Addr::new(10, 0, 135, 128), 25))
        );
        assert_eq!(parse_cidr("x"), Err("invalid CIDR: x".into()));
        assert_eq!(
            parse_cidr("10.0.2.0/123"),
            Err("invalid CIDR: 10.0.2.0/123".into())
        );
        assert_eq!(
            parse_cidr("010.0.2.0/24"),
            Err("invalid network address: 010.0.2.0".into())
        );
        assert_eq!(
            parse_cidr("300.0.2.0/24"),
            Err("invalid network address: 300.0.2.0".into())
        );
        assert_eq!(
            parse_cidr("10.0.2.0/26"),
            Err(UsageError("prefix length needs to be 1-25".into()))
        );
        assert_eq!(
            parse_cidr("10.0.2.0/0"),
            Err(UsageError("prefix length needs to be 1-25".into()))
        );
        assert!(
            parse_cidr("10.0.2.100/24")
                .unwrap_err()
                .0
                .starts_with("CIDR needs to be")
        );
    }

    #[test]
    fn mac_parsing_is_as_lax_as_slirp4netns() {
        assert_eq!(
            parse_mac("0e:d4:18:d9:38:fb"),
            Ok([0x0e, 0xd4, 0x18, 0xd9, 0x38, 0xfb])
        );
        assert_eq!(
            parse_mac("0e:d4:18:d9:38"),
            Ok([0x0e, 0xd4, 0x18, 0xd9, 0x38, 0])
        );
        assert_eq!(parse_mac("2-3-4-5-6-7"), Ok([2, 0, 0, 0, 0, 0]));
        assert_eq!(parse_mac(" 0x12:ab:1:2:3:4"), Ok([0x12, 0xab, 1, 2, 3, 4]));
        for bad in ["zz", "100:0:0:0:0:0", "aa::bb", "aa:", "-1"] {
            let e = parse_mac(bad).unwrap_err().0;
            assert_eq!(
                e,
                format!(
                    "\"{bad}\" is an invalid MAC address.\nmacaddress has to be a valid MAC address (hex string, 6 bytes, each byte separated by a ':')."
                )
            );
        }
        assert!(
            parse_mac("1:2:3:4:5:6:7")
                .unwrap_err()
                .0
                .contains("Is it too long?")
        );
    }

    #[test]
    fn c_long_accepts_what_strtol_accepts() {
        assert_eq!(c_long(" +12"), Some(12));
        assert_eq!(c_long("-3"), Some(-3));
        assert_eq!(c_long("12x"), None);
        assert_eq!(c_long(""), None);
        assert_eq!(c_long("99999999999999999999999"), Some(i64::MAX));
    }
}

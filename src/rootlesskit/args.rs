//! rootlesskit's command line, parsed as rootlesskit parses it: urfave/cli v2 on top of Go's
//! `flag` package, whose rules callers' scripts rely on without knowing it.
//!
//! - A flag is `-name` or `--name` (one dash or two, the same flag), and its value is
//!   `-name=value` or the next argument (`-name value`, even one starting with `-`).
//! - A boolean flag takes a value only as `-name=VALUE`, in Go's `strconv.ParseBool`
//!   spellings (`1 t T TRUE true True 0 f F FALSE false False`); `-name VALUE` would make VALUE
//!   the command.
//! - Flags end at the first argument that is not one (a lone `-` is not one), or after `--`,
//!   which is dropped: everything after is COMMAND and its arguments, untouched.
//! - Repeatable flags (`--copy-up`, `--publish`/`-p`) accumulate, and a value with commas is
//!   several values (urfave's string slices); a flag given twice otherwise keeps the last.
//! - Errors are Go's words (`flag provided but not defined: -x`, `flag needs an argument:
//!   -mtu`, `invalid value "x" for flag -mtu: parse error`, `invalid boolean value "x" for
//!   -debug: parse error`, `bad flag syntax: ---x`).
//!
//! clap cannot take long flags with one dash nor stop where Go stops, so this is written out,
//! driven by one table ([`FLAGS`]) that the help text is printed from as well.

use std::ffi::OsString;

use crate::goflag::parse_bool;

/// What a flag's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    String,
    Int,
    /// Repeatable; commas separate values.
    Strings,
}

/// A section of the help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Misc,
    Mount,
    Network,
    LxcUserNic,
    Pasta,
    Slirp4netns,
    Vpnkit,
    Port,
    Process,
    State,
    SubId,
}

impl Category {
    pub const ALL: [Category; 11] = [
        Category::Misc,
        Category::Mount,
        Category::Network,
        Category::LxcUserNic,
        Category::Pasta,
        Category::Slirp4netns,
        Category::Vpnkit,
        Category::Port,
        Category::Process,
        Category::State,
        Category::SubId,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Category::Misc => "Misc",
            Category::Mount => "Mount",
            Category::Network => "Network",
            Category::LxcUserNic => "Network [lxc-user-nic]",
            Category::Pasta => "Network [pasta]",
            Category::Slirp4netns => "Network [slirp4netns]",
            Category::Vpnkit => "Network [vpnkit]",
            Category::Port => "Port",
            Category::Process => "Process",
            Category::State => "State",
            Category::SubId => "SubID",
        }
    }
}

/// One flag: its names (the first is its own), what it takes, where help lists it, what help
/// says, and the default help shows.
pub struct Flag {
    pub names: &'static [&'static str],
    pub kind: Kind,
    pub category: Category,
    pub usage: &'static str,
    pub default: Option<&'static str>,
}

const fn flag(
    names: &'static [&'static str],
    kind: Kind,
    category: Category,
    usage: &'static str,
    default: Option<&'static str>,
) -> Flag {
    Flag {
        names,
        kind,
        category,
        usage,
        default,
    }
}

use Category as C;
use Kind as K;

/// Every flag of rootlesskit v3, in help order within each category.
pub const FLAGS: &[Flag] = &[
    flag(&["debug"], K::Bool, C::Misc, "debug mode", Some("false")),
    flag(
        &["print-semver"],
        K::String,
        C::Misc,
        "print a version component as a decimal integer [major, minor, patch]",
        None,
    ),
    flag(&["help", "h"], K::Bool, C::Misc, "show help", Some("false")),
    flag(
        &["version", "v"],
        K::Bool,
        C::Misc,
        "print the version",
        Some("false"),
    ),
    flag(
        &["copy-up"],
        K::Strings,
        C::Mount,
        "mount a filesystem and copy-up the contents. e.g. \"--copy-up=/etc\" (typically required for non-host network)",
        None,
    ),
    flag(
        &["copy-up-mode"],
        K::String,
        C::Mount,
        "copy-up mode [tmpfs+symlink]",
        Some("\"tmpfs+symlink\""),
    ),
    flag(
        &["propagation"],
        K::String,
        C::Mount,
        "mount propagation [rprivate, private, rslave, slave, rshared, shared]",
        Some("\"rprivate\""),
    ),
    flag(
        &["net"],
        K::String,
        C::Network,
        "network driver [host, none, builtin, slirp4netns, pasta, vpnkit, gvisor-tap-vsock] (all but host and none are usernet's own network stack, in this process)",
        Some("\"host\""),
    ),
    flag(
        &["mtu"],
        K::Int,
        C::Network,
        "MTU for non-host network (default: 65520 for builtin, pasta, slirp4netns and gvisor-tap-vsock, 1500 for vpnkit)",
        Some("0"),
    ),
    flag(
        &["cidr"],
        K::String,
        C::Network,
        "CIDR for builtin, pasta, slirp4netns and gvisor-tap-vsock networks (default: 10.0.2.0/24)",
        None,
    ),
    flag(
        &["ifname"],
        K::String,
        C::Network,
        "Network interface name (default: tap0)",
        None,
    ),
    flag(
        &["disable-host-loopback"],
        K::Bool,
        C::Network,
        "prohibit connecting to 127.0.0.1:* on the host namespace",
        Some("false"),
    ),
    flag(
        &["ipv6"],
        K::Bool,
        C::Network,
        "enable IPv6 routing (fd00::/64). Unrelated to port forwarding. Supported for builtin, pasta and slirp4netns",
        Some("false"),
    ),
    flag(
        &["detach-netns"],
        K::Bool,
        C::Network,
        "detach network namespaces",
        Some("false"),
    ),
    flag(
        &["lxc-user-nic-binary"],
        K::String,
        C::LxcUserNic,
        "path of lxc-user-nic binary for --net=lxc-user-nic (not supported by usernet)",
        None,
    ),
    flag(
        &["lxc-user-nic-bridge"],
        K::String,
        C::LxcUserNic,
        "lxc-user-nic bridge name (not supported by usernet)",
        Some("\"lxcbr0\""),
    ),
    flag(
        &["pasta-binary"],
        K::String,
        C::Pasta,
        "path of pasta binary for --net=pasta (ignored: usernet serves it)",
        Some("\"pasta\""),
    ),
    flag(
        &["slirp4netns-binary"],
        K::String,
        C::Slirp4netns,
        "path of slirp4netns binary for --net=slirp4netns (ignored: usernet serves it)",
        Some("\"slirp4netns\""),
    ),
    flag(
        &["slirp4netns-sandbox"],
        K::String,
        C::Slirp4netns,
        "sandbox usernet's network process [auto, true, false]",
        Some("\"auto\""),
    ),
    flag(
        &["slirp4netns-seccomp"],
        K::String,
        C::Slirp4netns,
        "seccomp filter on usernet's network process [auto, true, false]",
        Some("\"auto\""),
    ),
    flag(
        &["vpnkit-binary"],
        K::String,
        C::Vpnkit,
        "path of VPNKit binary for --net=vpnkit (ignored: usernet serves it)",
        Some("\"vpnkit\""),
    ),
    flag(
        &["port-driver"],
        K::String,
        C::Port,
        "port driver for non-host network. [none, builtin, implicit (for pasta), slirp4netns, gvisor-tap-vsock] (all served by usernet's builtin driver)",
        Some("\"none\""),
    ),
    flag(
        &["publish", "p"],
        K::Strings,
        C::Port,
        "publish ports. e.g. \"127.0.0.1:8080:80/tcp\"",
        None,
    ),
    flag(
        &["source-ip-transparent"],
        K::Bool,
        C::Port,
        "preserve real client source IP using IP_TRANSPARENT (builtin port driver)",
        Some("true"),
    ),
    flag(
        &["pidns"],
        K::Bool,
        C::Process,
        "create a PID namespace",
        Some("false"),
    ),
    flag(
        &["cgroupns"],
        K::Bool,
        C::Process,
        "create a cgroup namespace",
        Some("false"),
    ),
    flag(
        &["utsns"],
        K::Bool,
        C::Process,
        "create a UTS namespace",
        Some("false"),
    ),
    flag(
        &["ipcns"],
        K::Bool,
        C::Process,
        "create an IPC namespace",
        Some("false"),
    ),
    flag(
        &["reaper"],
        K::String,
        C::Process,
        "enable process reaper. Requires --pidns. [auto,true,false]",
        Some("\"auto\""),
    ),
    flag(
        &["evacuate-cgroup2"],
        K::String,
        C::Process,
        "evacuate processes into the specified subgroup. Requires --pidns and --cgroupns",
        None,
    ),
    flag(
        &["pcap"],
        K::String,
        C::Network,
        "(usernet) capture every frame on the guest link to this pcap file (created, never overwritten)",
        None,
    ),
    flag(
        &["pcap-max-bytes"],
        K::String,
        C::Network,
        "(usernet) stop capturing once the --pcap file holds this many bytes (K, M, G suffixes)",
        Some("\"1G\""),
    ),
    flag(&["state-dir"], K::String, C::State, "state directory", None),
    flag(
        &["subid-source"],
        K::String,
        C::SubId,
        "the source of the subids. \"dynamic\" executes /usr/bin/getsubids. \"static\" reads /etc/{subuid,subgid}. [auto,dynamic,static]",
        Some("\"auto\""),
    ),
];

/// The flags as given, with rootlesskit's defaults for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub debug: bool,
    pub print_semver: Option<String>,
    pub help: bool,
    pub version: bool,
    pub copy_up: Vec<String>,
    pub copy_up_mode: String,
    pub propagation: String,
    pub net: String,
    pub mtu: i64,
    pub cidr: String,
    pub ifname: String,
    pub disable_host_loopback: bool,
    pub ipv6: bool,
    pub detach_netns: bool,
    pub port_driver: String,
    pub publish: Vec<String>,
    pub source_ip_transparent: bool,
    pub pidns: bool,
    pub cgroupns: bool,
    pub utsns: bool,
    pub ipcns: bool,
    pub reaper: String,
    pub evacuate_cgroup2: String,
    pub state_dir: String,
    pub subid_source: String,
    /// usernet's own: `--pcap FILE` and its cap, as `usernet run` takes them.
    pub pcap: String,
    pub pcap_max_bytes: String,
    /// `--slirp4netns-sandbox`, `--slirp4netns-seccomp`, when given.
    pub sandbox: Option<String>,
    pub seccomp: Option<String>,
    /// Flags for helper programs usernet does not run (`--slirp4netns-binary`,
    /// `--pasta-binary`...), as given: the flag and its value.
    pub unused: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debug: false,
            print_semver: None,
            help: false,
            version: false,
            copy_up: Vec::new(),
            copy_up_mode: "tmpfs+symlink".into(),
            propagation: "rprivate".into(),
            net: "host".into(),
            mtu: 0,
            cidr: String::new(),
            ifname: String::new(),
            disable_host_loopback: false,
            ipv6: false,
            detach_netns: false,
            port_driver: "none".into(),
            publish: Vec::new(),
            source_ip_transparent: true,
            pidns: false,
            cgroupns: false,
            utsns: false,
            ipcns: false,
            reaper: "auto".into(),
            evacuate_cgroup2: String::new(),
            state_dir: String::new(),
            subid_source: "auto".into(),
            pcap: String::new(),
            pcap_max_bytes: String::new(),
            sandbox: None,
            seccomp: None,
            unused: Vec::new(),
        }
    }
}

/// A flag's parsed value.
enum Value {
    Bool(bool),
    Text(String),
    Int(i64),
}

impl Options {
    fn set(&mut self, name: &'static str, value: Value) {
        let (b, text, int) = match value {
            Value::Bool(b) => (b, String::new(), 0),
            Value::Text(t) => (false, t, 0),
            Value::Int(i) => (false, String::new(), i),
        };
        let list = |l: &mut Vec<String>, t: String| {
            l.extend(t.split(',').map(str::to_string));
        };
        match name {
            "debug" => self.debug = b,
            "print-semver" => self.print_semver = Some(text),
            "help" => self.help = b,
            "version" => self.version = b,
            "copy-up" => list(&mut self.copy_up, text),
            "copy-up-mode" => self.copy_up_mode = text,
            "propagation" => self.propagation = text,
            "net" => self.net = text,
            "mtu" => self.mtu = int,
            "cidr" => self.cidr = text,
            "ifname" => self.ifname = text,
            "disable-host-loopback" => self.disable_host_loopback = b,
            "ipv6" => self.ipv6 = b,
            "detach-netns" => self.detach_netns = b,
            "slirp4netns-sandbox" => self.sandbox = Some(text),
            "slirp4netns-seccomp" => self.seccomp = Some(text),
            "port-driver" => self.port_driver = text,
            "publish" => list(&mut self.publish, text),
            "source-ip-transparent" => self.source_ip_transparent = b,
            "pidns" => self.pidns = b,
            "cgroupns" => self.cgroupns = b,
            "utsns" => self.utsns = b,
            "ipcns" => self.ipcns = b,
            "reaper" => self.reaper = text,
            "evacuate-cgroup2" => self.evacuate_cgroup2 = text,
            "state-dir" => self.state_dir = text,
            "subid-source" => self.subid_source = text,
            "pcap" => self.pcap = text,
            "pcap-max-bytes" => self.pcap_max_bytes = text,
            // The helper programs' paths and options: kept to say they go unused.
            other => {
                self.unused.retain(|(n, _)| *n != other);
                self.unused.push((other, text));
            }
        }
    }
}

/// The command line: the flags, and COMMAND with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub options: Options,
    pub command: Vec<OsString>,
}

/// A command line rootlesskit would refuse, in Go's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

/// Parse `argv` (its first element is the program name).
pub fn parse(argv: &[OsString]) -> Result<CommandLine, ArgError> {
    let mut options = Options::default();
    let mut i = 1;
    while let Some(arg) = argv.get(i) {
        let s = arg.to_string_lossy();
        if s.len() < 2 || !s.starts_with('-') {
            break;
        }
        let dashes = if s.starts_with("--") { 2 } else { 1 };
        if dashes == 2 && s.len() == 2 {
            i += 1;
            break;
        }
        let body = &s[dashes..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ArgError(format!("bad flag syntax: {s}")));
        }
        i += 1;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(flag) = FLAGS.iter().find(|f| f.names.contains(&name)) else {
            return Err(ArgError(format!("flag provided but not defined: -{name}")));
        };
        let value = match flag.kind {
            Kind::Bool => match inline {
                None => Value::Bool(true),
                Some(v) => Value::Bool(parse_bool(&v).ok_or_else(|| {
                    ArgError(format!(
                        "invalid boolean value {v:?} for -{name}: parse error"
                    ))
                })?),
            },
            kind => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = argv
                            .get(i)
                            .ok_or_else(|| ArgError(format!("flag needs an argument: -{name}")))?;
                        i += 1;
                        v.to_string_lossy().into_owned()
                    }
                };
                if kind == Kind::Int {
                    Value::Int(parse_int(&v).ok_or_else(|| {
                        ArgError(format!("invalid value {v:?} for flag -{name}: parse error"))
                    })?)
                } else {
                    Value::Text(v)
                }
            }
        };
        options.set(flag.names[0], value);
    }
    Ok(CommandLine {
        options,
        command: argv.get(i..).unwrap_or_default().to_vec(),
    })
}

/// Go's `strconv.ParseInt(s, 0, 64)`, as urfave's int flags use it: decimal, or `0x`, `0o`,
/// `0b` and leading-`0` octal, with an optional sign and `_` between digits.
fn parse_int(s: &str) -> Option<i64> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = rest.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let digits = digits.replace('_', "");
    let magnitude = i128::from_str_radix(&digits, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<CommandLine, ArgError> {
        let argv: Vec<OsString> = std::iter::once("rootlesskit")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(&argv)
    }

    fn command(cl: &CommandLine) -> Vec<&str> {
        cl.command.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn one_or_two_dashes_and_equals_or_the_next_argument() {
        let cl = parse_args(&[
            "-net=slirp4netns",
            "--mtu",
            "1500",
            "-cidr",
            "10.0.3.0/24",
            "--state-dir=/s",
            "sh",
            "-c",
            "true",
        ])
        .unwrap();
        assert_eq!(cl.options.net, "slirp4netns");
        assert_eq!(cl.options.mtu, 1500);
        assert_eq!(cl.options.cidr, "10.0.3.0/24");
        assert_eq!(cl.options.state_dir, "/s");
        assert_eq!(command(&cl), ["sh", "-c", "true"]);
    }

    #[test]
    fn booleans_take_a_value_only_after_equals() {
        let cl =
            parse_args(&["--pidns", "--disable-host-loopback=false", "--ipv6=1", "x"]).unwrap();
        assert!(cl.options.pidns && !cl.options.disable_host_loopback && cl.options.ipv6);
        // `--pidns true`: "true" is the command, as Go reads it.
        let cl = parse_args(&["--pidns", "true"]).unwrap();
        assert_eq!(command(&cl), ["true"]);
        // The last one wins.
        let cl = parse_args(&[
            "--disable-host-loopback",
            "--disable-host-loopback=false",
            "x",
        ])
        .unwrap();
        assert!(!cl.options.disable_host_loopback);
        assert!(
            parse_args(&["--source-ip-transparent=false", "x"])
                .is_ok_and(|c| !c.options.source_ip_transparent)
        );
    }

    #[test]
    fn flags_end_at_the_command_or_after_double_dash() {
        let cl = parse_args(&["--net=host", "--", "--weird", "--net=x"]).unwrap();
        assert_eq!(cl.options.net, "host");
        assert_eq!(command(&cl), ["--weird", "--net=x"]);
        let cl = parse_args(&["ls", "--debug"]).unwrap();
        assert!(!cl.options.debug);
        assert_eq!(command(&cl), ["ls", "--debug"]);
        let cl = parse_args(&["-", "x"]).unwrap();
        assert_eq!(command(&cl), ["-", "x"]);
        assert!(parse_args(&[]).unwrap().command.is_empty());
        // A value may start with a dash.
        let cl = parse_args(&["--state-dir", "-odd", "x"]).unwrap();
        assert_eq!(cl.options.state_dir, "-odd");
    }

    #[test]
    fn repeatable_flags_accumulate_and_split_on_commas() {
        let cl = parse_args(&[
            "--copy-up=/etc",
            "--copy-up",
            "/run,/var/lib",
            "-p",
            "127.0.0.1:8080:80/tcp",
            "--publish=:8081:81/udp",
            "x",
        ])
        .unwrap();
        assert_eq!(cl.options.copy_up, ["/etc", "/run", "/var/lib"]);
        assert_eq!(
            cl.options.publish,
            ["127.0.0.1:8080:80/tcp", ":8081:81/udp"]
        );
    }

    #[test]
    fn errors_are_gos() {
        for (args, want) in [
            (&["-foo"][..], "flag provided but not defined: -foo"),
            (&["--foo=1"], "flag provided but not defined: -foo"),
            (
                &["--debug=maybe"],
                "invalid boolean value \"maybe\" for -debug: parse error",
            ),
            (
                &["--mtu", "x"],
                "invalid value \"x\" for flag -mtu: parse error",
            ),
            (&["---net=host"], "bad flag syntax: ---net=host"),
            (&["-=x"], "bad flag syntax: -=x"),
            (&["--mtu"], "flag needs an argument: -mtu"),
        ] {
            assert_eq!(parse_args(args).unwrap_err().0, want, "{args:?}");
        }
    }

    #[test]
    fn help_and_version_have_short_names() {
        assert!(parse_args(&["-h"]).unwrap().options.help);
        assert!(parse_args(&["--help"]).unwrap().options.help);
        assert!(parse_args(&["-v"]).unwrap().options.version);
        assert!(parse_args(&["-version"]).unwrap().options.version);
        let cl = parse_args(&["--print-semver=major"]).unwrap();
        assert_eq!(cl.options.print_semver.as_deref(), Some("major"));
    }

    #[test]
    fn helper_program_flags_are_kept_as_unused() {
        let cl = parse_args(&[
            "--slirp4netns-binary=/a",
            "--slirp4netns-binary=/b",
            "--vpnkit-binary",
            "/v",
            "x",
        ])
        .unwrap();
        assert_eq!(
            cl.options.unused,
            [
                ("slirp4netns-binary", "/b".to_string()),
                ("vpnkit-binary", "/v".to_string())
            ]
        );
    }

    #[test]
    fn ints_parse_as_go_does() {
        assert_eq!(parse_int("1500"), Some(1500));
        assert_eq!(parse_int("0x10"), Some(16));
        assert_eq!(parse_int("010"), Some(8));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("1_000"), Some(1000));
        for bad in ["", "x", "1.5", "_1", "99999999999999999999", "0x"] {
            assert_eq!(parse_int(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_flag_has_a_setter_of_its_own() {
        // Any name `set` does not know would be filed as unused: only the helper programs'.
        for f in FLAGS {
            let mut o = Options::default();
            let value = match f.kind {
                Kind::Bool => Value::Bool(true),
                Kind::Int => Value::Int(1),
                _ => Value::Text("x".into()),
            };
            o.set(f.names[0], value);
            let helper = f.names[0].ends_with("-binary") || f.names[0] == "lxc-user-nic-bridge";
            assert_eq!(!o.unused.is_empty(), helper, "{}", f.names[0]);
        }
    }
}

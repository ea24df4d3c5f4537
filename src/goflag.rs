//! Command lines in the style of Go's `flag` package, for the personalities whose originals
//! are Go programs that parse with it (`rootlesskit-docker-proxy` directly, `rootlessctl`
//! through urfave/cli, which hands each command's arguments to a Go flag set).
//!
//! Go's rules, kept exactly because callers rely on them: a flag is `-name` or `--name`, its
//! value `-name=value` or `-name value` (a boolean flag takes only the `=` form: `-json`,
//! `-json=false`); parsing stops at the first argument that is not a flag, at a lone `-`, or
//! after `--`; `-h`/`-help` ask for help unless defined. Errors are Go's own texts
//! (`flag provided but not defined: -x`), which callers print before the usage.

use std::ffi::OsString;

/// Whether a flag takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `-name`, `-name=true|false` (Go's `strconv.ParseBool` spellings).
    Bool,
    /// `-name value`, `-name=value`.
    Value,
}

/// What a command line said: each flag given, in order, with its value (`"true"`/`"false"`
/// for booleans), and the arguments after the flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub flags: Vec<(String, String)>,
    pub rest: Vec<OsString>,
}

impl Parsed {
    /// The last value given for `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean flag's value (false when not given).
    pub fn is_set(&self, name: &str) -> bool {
        self.value(name) == Some("true")
    }
}

/// Why a command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// `-h`, `-help` (or `--` forms) where no such flag is defined.
    #[error("help requested")]
    Help,
    /// Go's message, e.g. `flag provided but not defined: -x`.
    #[error("{0}")]
    Invalid(String),
}

/// Parse `args` (without the program name) against `defs`, as Go's `FlagSet.Parse`.
pub fn parse(defs: &[(&str, Kind)], args: &[OsString]) -> Result<Parsed, FlagError> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let Some(arg) = args[i].to_str() else { break };
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        if arg == "--" {
            i += 1;
            break;
        }
        let name = arg.strip_prefix("--").unwrap_or(&arg[1..]);
        if name.is_empty() || name.starts_with('-') || name.starts_with('=') {
            return Err(FlagError::Invalid(format!("bad flag syntax: {arg}")));
        }
        i += 1;
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (name, None),
        };
        let Some(&(_, kind)) = defs.iter().find(|(n, _)| *n == name) else {
            if name == "help" || name == "h" {
                return Err(FlagError::Help);
            }
            return Err(FlagError::Invalid(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        let value = match (kind, inline) {
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => parse_bool(v)
                .ok_or_else(|| {
                    FlagError::Invalid(format!(
                        "invalid boolean value {v:?} for -{name}: parse error"
                    ))
                })?
                .to_string(),
            (Kind::Value, Some(v)) => v.to_string(),
            (Kind::Value, None) => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.to_str()
                        .ok_or_else(|| {
                            FlagError::Invalid(format!("invalid value for flag -{name}: not UTF-8"))
                        })?
                        .to_string()
                }
                None => {
                    return Err(FlagError::Invalid(format!(
                        "flag needs an argument: -{name}"
                    )));
                }
            },
        };
        parsed.flags.push((name.to_string(), value));
    }
    parsed.rest = args[i..].to_vec();
    Ok(parsed)
}

/// Go's `strconv.ParseBool` (the spellings rootlesskit's boolean flags, and `usernet run`'s,
/// take after `=`).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An integer flag's value as Go's `flag.Int` reads it (decimal, with an optional sign), or
/// Go's message.
pub fn int_value(name: &str, value: &str) -> Result<i64, FlagError> {
    value.parse().map_err(|_| {
        FlagError::Invalid(format!(
            "invalid value {value:?} for flag -{name}: parse error"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFS: &[(&str, Kind)] = &[
        ("json", Kind::Bool),
        ("socket", Kind::Value),
        ("host-port", Kind::Value),
    ];

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn single_and_double_dash_with_or_without_equals() {
        let p = parse(
            DEFS,
            &args(&[
                "-socket",
                "a",
                "--host-port=8080",
                "--json",
                "rest",
                "-json",
            ]),
        )
        .unwrap();
        assert_eq!(p.value("socket"), Some("a"));
        assert_eq!(p.value("host-port"), Some("8080"));
        assert!(p.is_set("json"));
        assert_eq!(p.rest, args(&["rest", "-json"]));
    }

    #[test]
    fn booleans_take_only_the_equals_form() {
        let p = parse(DEFS, &args(&["-json=false", "true"])).unwrap();
        assert!(!p.is_set("json"));
        assert_eq!(p.rest, args(&["true"]));
        assert_eq!(
            parse(DEFS, &args(&["-json=maybe"])),
            Err(FlagError::Invalid(
                "invalid boolean value \"maybe\" for -json: parse error".into()
            ))
        );
    }

    #[test]
    fn double_dash_and_lone_dash_end_the_flags() {
        assert_eq!(
            parse(DEFS, &args(&["--", "-json"])).unwrap().rest,
            args(&["-json"])
        );
        assert_eq!(
            parse(DEFS, &args(&["-", "-json"])).unwrap().rest,
            args(&["-", "-json"])
        );
    }

    #[test]
    fn go_error_texts() {
        let err = |a: &[&str]| parse(DEFS, &args(a)).unwrap_err();
        assert_eq!(
            err(&["-bogus"]),
            FlagError::Invalid("flag provided but not defined: -bogus".into())
        );
        assert_eq!(
            err(&["-socket"]),
            FlagError::Invalid("flag needs an argument: -socket".into())
        );
        assert_eq!(
            err(&["---x"]),
            FlagError::Invalid("bad flag syntax: ---x".into())
        );
        assert_eq!(err(&["-h"]), FlagError::Help);
        assert_eq!(err(&["--help"]), FlagError::Help);
        assert_eq!(
            int_value("host-port", "x"),
            Err(FlagError::Invalid(
                "invalid value \"x\" for flag -host-port: parse error".into()
            ))
        );
    }
}

//! `usernet flows` and `usernet stats`: clients of a running usernet's flow table and
//! counters, through `STATE_DIR/api.sock` (REST, `GET /v1/flows` and `/v1/stats`) or a
//! slirp4netns-style API socket (`--socket PATH`: `list_flows`, `get_stats`).
//!
//! Either server is believed only if it runs as us (or we are root), as for every client
//! command (see the parent module).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::de::DeserializeOwned;

use super::{ApiClient, connect, read_answer};
use crate::observe::{FlowTable, Stats};

/// Where the flow table and counters are asked.
pub enum Source {
    /// A state dir's `api.sock`.
    Rest(ApiClient),
    /// A slirp4netns-style API socket (`usernet attach --api-socket`, usernet as slirp4netns).
    Slirp(PathBuf),
}

impl Source {
    /// `--socket PATH` if given, else the state dir's `api.sock` (the flag, or the one running
    /// usernet, as for `usernet ports`).
    pub fn resolve(state_dir: Option<PathBuf>, socket: Option<PathBuf>) -> Result<Source> {
        Ok(match socket {
            Some(path) => Source::Slirp(path),
            None => Source::Rest(ApiClient::in_state_dir(&super::state_dir(state_dir)?)),
        })
    }

    pub fn flows(&self) -> Result<FlowTable> {
        match self {
            Source::Rest(api) => api.flows(),
            Source::Slirp(path) => slirp_call(path, "list_flows"),
        }
    }

    pub fn stats(&self) -> Result<Stats> {
        match self {
            Source::Rest(api) => api.stats(),
            Source::Slirp(path) => slirp_call(path, "get_stats"),
        }
    }
}

/// One request on a slirp4netns-style API socket; the value of its `return`.
fn slirp_call<T: DeserializeOwned>(path: &Path, execute: &str) -> Result<T> {
    let mut stream = connect(path, "is usernet serving its API there?")?;
    stream
        .write_all(format!("{{\"execute\":\"{execute}\"}}").as_bytes())
        .context("sending the request to the API")?;
    let answer = read_answer(&mut stream).context("reading the API's answer")?;
    #[derive(serde::Deserialize)]
    struct Desc {
        desc: String,
    }
    #[derive(serde::Deserialize)]
    struct Answer<T> {
        r#return: Option<T>,
        error: Option<Desc>,
    }
    let answer: Answer<T> = serde_json::from_slice(&answer).with_context(|| {
        format!(
            "{} did not answer as usernet does: {}",
            path.display(),
            String::from_utf8_lossy(&answer).trim()
        )
    })?;
    match (answer.r#return, answer.error) {
        (Some(value), _) => Ok(value),
        (None, Some(e)) if e.desc.contains("unknown execute") => bail!(
            "{} does not know {execute}: it is not usernet's (slirp4netns has no flow table)",
            path.display()
        ),
        (None, Some(e)) => Err(anyhow!("{}", e.desc)),
        (None, None) => bail!("{} answered neither a value nor an error", path.display()),
    }
}

/// `usernet flows`: the table (or its JSON) once, or, with `watch`, again every `watch` until
/// interrupted or the usernet goes away (an error then). With `--json --watch`, one JSON
/// object per line.
pub fn flows(source: &Source, json: bool, watch: Option<Duration>) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    loop {
        let table = source.flows()?;
        let text = if json {
            let mut line = serde_json::to_string(&table)?;
            line.push('\n');
            line
        } else {
            table.render()
        };
        let Some(every) = watch else {
            out.write_all(text.as_bytes())?;
            return Ok(0);
        };
        if !json {
            writeln!(out, "--- {}", humantime_now())?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        std::thread::sleep(every);
    }
}

/// `usernet stats`.
pub fn stats(source: &Source, json: bool) -> Result<String> {
    let stats = source.stats()?;
    Ok(if json {
        let mut s = serde_json::to_string_pretty(&stats)?;
        s.push('\n');
        s
    } else {
        stats.render()
    })
}

/// The wall-clock time, for the line between two tables of `--watch`.
fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

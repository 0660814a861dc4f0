//! Logs with `tracing`: `RUST_LOG`-style filters (default `info`), text or JSON
//! lines (`--log-json`: one JSON object per event, one event per line), always on
//! stderr.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

pub fn init(json: bool) {
    let (filter, bad) = match EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
    {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        // colours only for a person at a terminal, never in a log file
        b.with_ansi(std::io::stderr().is_terminal()).init();
    }
    if let Some(e) = bad {
        tracing::warn!(error = %e, "RUST_LOG is not a valid filter; logging at info");
    }
}

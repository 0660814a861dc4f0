//! Stopping a harness cleanly on Ctrl-C: the signal only raises a flag the
//! harness checks between steps, so its namespaces, agents and servers are
//! still torn down by their `Drop`s.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM only set a flag the harness checks between steps, so
/// everything is still torn down (the wrk or iperf3 running then gets the
/// terminal's SIGINT itself and fails the step). A handler, not SIG_IGN: exec
/// resets handlers, so the tools keep their default reaction.
pub fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// An error once SIGINT or SIGTERM has come (after [`catch_signals`]): the
/// harness returns it, dropping what it built on the way out.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

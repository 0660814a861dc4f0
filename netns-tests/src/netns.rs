//! Entering named network namespaces, both for child processes (`ip netns
//! exec`) and for code in this process (a thread that `setns`es).

use std::fs::File;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::command::{self, DEFAULT_TIMEOUT};

/// The first `ip netns add` on a machine sets up the shared `/run/netns`
/// mount; parallel tests racing on that can fail spuriously, so namespace
/// creation and deletion are serialized.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

pub(crate) fn create(ns: &str) -> Result<()> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    command::tool_ok("ip", &["netns", "add", ns])?;
    Ok(())
}

pub(crate) fn delete(ns: &str) -> Result<()> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    command::tool_ok("ip", &["netns", "del", ns])?;
    // per-namespace files iproute2 reads (the agent writes resolv.conf there)
    let etc = std::path::Path::new("/etc/netns").join(ns);
    if etc.exists() {
        let _ = std::fs::remove_dir_all(etc);
    }
    Ok(())
}

pub(crate) fn exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// Runs a command inside `ns`; a non-zero exit is returned, not an error,
/// because tests often assert on failure (e.g. "this must not be reachable").
pub fn exec(ns: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    command::run(&mut cmd, DEFAULT_TIMEOUT)
}

/// Like [`exec`] for commands that must succeed; returns stdout.
pub fn exec_ok(ns: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    command::run_ok(&mut cmd, DEFAULT_TIMEOUT)
}

/// Runs `f` with the network namespace of `ns`. A dedicated thread is used
/// because `setns(CLONE_NEWNET)` only affects the calling thread and we must
/// not move the test thread (or a pooled one) out of the host namespace.
/// Sockets keep the namespace they were created in, so they may be returned
/// and used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("failed to open {path}"))?;
    let ns_name = ns.to_string();
    let handle = thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns(CLONE_NEWNET) into {ns_name} failed"))?;
            drop(file);
            Ok(f())
        })
        .context("failed to spawn netns thread")?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(anyhow!("closure run in netns {ns} panicked: {msg}"))
        }
    }
}

//! Entering named network namespaces, both for child processes (`ip netns
//! exec`) and for code in this process (a thread that `setns`es).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

/// Like [`exec`], with a deadline of the caller's choosing (load generators
/// that run longer than setup commands may).
pub fn exec_timeout(ns: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    command::run(&mut cmd, timeout)
}

/// The processes (other than this one) whose network namespace is `ns`: what a
/// server started there left behind (a daemon's workers, say).
pub fn pids_in(ns: &str) -> Result<Vec<i32>> {
    let path = format!("/run/netns/{ns}");
    let want = std::fs::metadata(&path).with_context(|| format!("failed to stat {path}"))?;
    // A host node's name points at the machine's own namespace: "every process
    // in it" is every process on the machine.
    let own = std::fs::metadata("/proc/self/ns/net").context("failed to stat /proc/self/ns/net")?;
    anyhow::ensure!(
        (want.dev(), want.ino()) != (own.dev(), own.ino()),
        "{ns} is this process's own network namespace (a host node): refusing to list its processes"
    );
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("failed to list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // a process may exit while we look: skip what cannot be read
        let Ok(m) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if m.dev() == want.dev() && m.ino() == want.ino() && pid != me {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// SIGKILLs every process left in `ns` (see [`pids_in`]); returns how many.
pub fn kill_all_in(ns: &str) -> Result<usize> {
    let pids = pids_in(ns)?;
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    Ok(pids.len())
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

//! What was measured on, recorded with the figures.

use serde_json::{json, Value};
use std::process::Command;
use vxmesh_benches::cpu_model;

/// What was measured on: recorded with the figures, so a reader can tell
/// whether a rerun is on the same code, kernel and machine.
pub fn environment(workers: Option<u16>) -> Value {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| cpu_model(&t))
        .unwrap_or_else(|| "unknown".into());
    json!({
        "commit": commit,
        "date": date,
        "kernel": kernel,
        "machine": { "nproc": nproc, "cpu_model": model },
        // an agent's default is one worker per core
        "workers": workers.map_or(nproc, usize::from),
        "workers_default": workers.is_none(),
    })
}

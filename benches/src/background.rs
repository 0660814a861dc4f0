//! Servers the harnesses start in namespaces (iperf3 -s, nginx) and stop
//! whatever way the harness ends.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vxmesh_netns_tests::stop_children;

/// A server running in a namespace (`ip netns exec NS ...`), stopped with
/// SIGTERM (then SIGKILL after a grace period) and reaped when dropped.
pub struct Bg {
    child: Child,
    what: String,
}

impl Bg {
    /// Starts `args` in `ns`, its output thrown away, or appended to `log`.
    pub fn spawn(ns: &str, args: &[&str], log: Option<&std::path::Path>) -> Result<Bg> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd.stdin(Stdio::null());
        match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open {}", p.display()))?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let what = format!("{} in {ns}", args.join(" "));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Bg { child, what })
    }

    /// Fails if the server has already exited (it could not bind, say).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.what);
        }
        Ok(())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let grace = Duration::from_secs(3);
        if stop_children(std::slice::from_mut(&mut self.child), grace).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

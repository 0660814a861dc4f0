//! Running external commands (`ip`, `bridge`, `ping`, the vxmesh CLI) with a
//! deadline, so a wedged command fails the test instead of hanging CI.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Generous enough for any single setup or traffic command; only meant to
/// catch hangs.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Shell-like rendering so error messages can be pasted into a terminal.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, capturing stdout and stderr; kills it and errors
/// if it outlives `timeout`. A non-zero exit is not an error here.
pub(crate) fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to spawn `{desc}`"))?;
    // Drain both pipes concurrently so a chatty command cannot block on a
    // full pipe while we wait for it to exit.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("failed to wait for `{desc}`"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            bail!(
                "`{desc}` timed out after {timeout:?}; stderr: {}",
                stderr.trim()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Like [`run`] but a non-zero exit becomes an error carrying both streams,
/// which is what callers need to see why setup failed.
pub(crate) fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let output = run(cmd, timeout)?;
    check_ok(&describe(cmd), output)
}

pub(crate) fn check_ok(desc: &str, output: Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "`{desc}` failed ({}): stderr: {} stdout: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip`/`bridge` invocations are the bulk of setup; this keeps call sites to
/// one line each.
pub(crate) fn tool_ok(program: &str, args: &[&str]) -> Result<String> {
    run_ok(Command::new(program).args(args), DEFAULT_TIMEOUT)
}

/// SIGTERMs every child first, so they shut down in parallel, then SIGKILLs
/// whatever is left after `grace`. Always reaps, so no zombie outlives its
/// owner (agents, etcd, a harness's servers). Returns the pids that had to be
/// killed.
pub fn stop_children(children: &mut [Child], grace: Duration) -> Result<Vec<u32>> {
    for child in children.iter_mut() {
        if child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    let mut killed = Vec::new();
    for child in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                    let _ = child.wait();
                    killed.push(child.id());
                    break;
                }
                Err(e) => bail!("waiting for pid {}: {e}", child.id()),
            }
        }
    }
    Ok(killed)
}

//! The machine's Docker engine, for the tests of vxmesh as Docker's network and
//! IPAM driver: whether an engine answers, a tiny local test image (there is no
//! registry to pull from), a guard that removes every container and network a
//! test made however it ends, and a machine-wide lock so only one Docker test
//! runs at a time (the plugin socket `/run/docker/plugins/vxmesh.sock` is one
//! fixed path).
//!
//! A Docker test holds, in this order (so they drop in the reverse one):
//!
//! ```no_run
//! # use vxmesh_netns_tests::*;
//! # fn main() -> anyhow::Result<()> {
//! if skip_without_docker("my_test") {
//!     return Ok(());
//! }
//! let _lock = DockerLock::acquire()?; // released last: after the agent stopped
//! let mut t = Topology::new("my_test")?; // the agents, the host node
//! let d = DockerGuard::new(t.prefix()); // dropped first: while the plugin still answers
//! let image = ensure_test_image()?;
//! let host = t.add_host_node("host")?;
//! # Ok(()) }
//! ```
//!
//! What this engine (Docker 20.10 server, 28.x client, on this machine) was
//! checked to do, and the tests rely on:
//!
//! * `docker import` of a rootfs tarball with `--change 'CMD ["/bin/sh"]'` (and
//!   `LABEL`) makes a runnable image in a tenth of a second.
//! * Health checks: `docker run --health-cmd 'CMD' --health-interval 1s` works
//!   with the test image (the command runs with `/bin/sh -c`, busybox's), and
//!   `docker inspect` shows `.State.Health.Status` going `starting` →
//!   `healthy` within about a second, or `unhealthy` after `--health-retries`
//!   failures (with each probe's output in `.State.Health.Log`). The image
//!   itself carries no HEALTHCHECK, so containers run without health flags have
//!   none. (This engine's `docker import --change 'HEALTHCHECK CMD ...'` is in
//!   fact accepted too, but the tests do not depend on that.)
//! * User-defined bridge networks (`docker network create`) and `--label` on
//!   both containers and networks, with `--filter label=K=V` listing them.

mod guard;
mod image;

pub use guard::DockerGuard;
pub use image::ensure_test_image;

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::Flock;

use crate::command;
use crate::lock::file_lock;

/// The image [`ensure_test_image`] builds.
pub const TEST_IMAGE: &str = "vxmesh-test-busybox:1";
/// Label key on everything a [`DockerGuard`] creates; the value is its prefix.
pub const TEST_LABEL: &str = "vxmesh.test";
/// The lock file [`DockerLock`] holds.
pub const DOCKER_LOCK_PATH: &str = "/run/lock/vxmesh-docker-tests.lock";

const INFO_TIMEOUT: Duration = Duration::from_secs(5);
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for another Docker test (in any process) to finish.
const LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

/// What `docker info` said: the server version, or why no engine answered.
/// Asked once per process.
fn engine_status() -> &'static Result<String, String> {
    static STATUS: OnceLock<Result<String, String>> = OnceLock::new();
    STATUS.get_or_init(|| {
        let mut cmd = Command::new("docker");
        cmd.args(["info", "--format", "{{.ServerVersion}}"]);
        match command::run(&mut cmd, INFO_TIMEOUT) {
            Ok(out) => {
                let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() && !version.is_empty() {
                    Ok(version)
                } else {
                    Err(format!(
                        "`docker info` failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            }
            Err(e) => Err(format!("{e:#}")),
        }
    })
}

/// True when a Docker engine answers `docker info` within a few seconds.
pub fn docker_available() -> bool {
    engine_status().is_ok()
}

/// Why Docker tests are skipped here, or `None` when an engine answers.
pub fn docker_unavailable_reason() -> Option<String> {
    engine_status().as_ref().err().cloned()
}

/// For the top of a Docker test: when no engine answers, prints on stderr why
/// `test` is skipped (shown with `--nocapture`) and returns true; the test
/// should then return successfully.
pub fn skip_without_docker(test: &str) -> bool {
    match docker_unavailable_reason() {
        None => false,
        Some(why) => {
            eprintln!("SKIPPED {test}: no Docker engine answered `docker info` ({why})");
            true
        }
    }
}

/// Runs `docker ARGS`; a non-zero exit is an error carrying both streams.
/// Returns stdout without its trailing newline.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = command::run_ok(Command::new("docker").args(args), DOCKER_TIMEOUT)?;
    Ok(out.trim_end().to_string())
}

/// Runs `docker ARGS`; a non-zero exit is returned, not an error (for tests
/// that expect a command to fail).
pub fn docker_output(args: &[&str]) -> Result<Output> {
    command::run(Command::new("docker").args(args), DOCKER_TIMEOUT)
}

/// `docker exec CONTAINER ARGS`; a non-zero exit is returned, not an error.
pub fn exec_in(container: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("docker");
    cmd.args(["exec", container]).args(args);
    command::run(&mut cmd, DOCKER_TIMEOUT)
}

/// Like [`exec_in`] for commands that must succeed; returns stdout.
pub fn exec_in_ok(container: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["exec", container]).args(args);
    command::run_ok(&mut cmd, DOCKER_TIMEOUT)
}

/// `docker inspect OBJECT` (a container, network or image), its one element.
pub fn inspect(object: &str) -> Result<serde_json::Value> {
    let out = docker(&["inspect", object])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`docker inspect {object}` printed invalid JSON: {out}"))?;
    v.get(0)
        .cloned()
        .with_context(|| format!("`docker inspect {object}` returned nothing"))
}

/// The host PID of a running container's main process (what `nsenter -t` and
/// `/proc/PID/ns/net` want).
pub fn container_pid(name: &str) -> Result<u32> {
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", name])?
        .trim()
        .parse()
        .with_context(|| format!("container {name}: unreadable .State.Pid"))?;
    ensure!(pid != 0, "container {name} is not running");
    Ok(pid)
}

/// The IPv4 address Docker gave container `name` on `network`.
pub fn container_ip(name: &str, network: &str) -> Result<Ipv4Addr> {
    let v = inspect(name)?;
    let nets = &v["NetworkSettings"]["Networks"];
    let ip = nets[network]["IPAddress"].as_str().with_context(|| {
        let on: Vec<&String> = nets
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        format!("container {name} is not on network {network} (it is on {on:?})")
    })?;
    ip.parse()
        .with_context(|| format!("container {name} has no IPv4 address on {network}: {ip:?}"))
}

/// `.State.Health.Status` (`starting`, `healthy`, `unhealthy`), or `None` for a
/// container without a health check.
pub fn container_health(name: &str) -> Result<Option<String>> {
    let v = inspect(name)?;
    Ok(v["State"]["Health"]["Status"].as_str().map(str::to_string))
}

/// Polls until container `name` is `healthy`; the error shows the last probes.
pub fn wait_healthy(name: &str, within: Duration) -> Result<()> {
    let end = Instant::now() + within;
    loop {
        let v = inspect(name)?;
        let health = &v["State"]["Health"];
        match health["Status"].as_str() {
            Some("healthy") => return Ok(()),
            None => bail!("container {name} has no health check"),
            Some(status) if Instant::now() >= end => bail!(
                "container {name} still {status} after {within:?}; probes: {}",
                health["Log"]
            ),
            Some(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Only one Docker test runs at a time on the machine, across processes and
/// threads: the driver's socket path is fixed. Holding this is holding
/// `flock(/run/lock/vxmesh-docker-tests.lock)`; take it before the topology
/// whose agent serves the plugin, so it is released after that agent stopped.
pub struct DockerLock {
    _file: Flock<File>,
}

impl DockerLock {
    /// Waits (up to 20 minutes) for any other Docker test to finish.
    pub fn acquire() -> Result<DockerLock> {
        Ok(DockerLock {
            _file: file_lock(DOCKER_LOCK_PATH, "another Docker test", LOCK_WAIT)?,
        })
    }
}

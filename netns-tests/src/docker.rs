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

use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::command;

/// The image [`ensure_test_image`] builds.
pub const TEST_IMAGE: &str = "vxmesh-test-busybox:1";
/// Label key on everything a [`DockerGuard`] creates; the value is its prefix.
pub const TEST_LABEL: &str = "vxmesh.test";
/// The lock file [`DockerLock`] holds.
pub const DOCKER_LOCK_PATH: &str = "/run/lock/vxmesh-docker-tests.lock";

/// Label on the test image saying which rootfs recipe built it; bump
/// [`IMAGE_REVISION`] when the recipe changes so stale images are rebuilt.
const IMAGE_LABEL: &str = "vxmesh.test.image";
const IMAGE_REVISION: &str = "1";
const IMAGE_LOCK_PATH: &str = "/run/lock/vxmesh-test-image.lock";
/// The busybox applets the image links into /bin.
const APPLETS: &[&str] = &[
    "sh", "ping", "wget", "httpd", "nc", "ip", "sleep", "cat", "hostname", "nslookup", "ifconfig",
    "route", "echo", "true", "kill",
];

const INFO_TIMEOUT: Duration = Duration::from_secs(5);
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for another Docker test (in any process) to finish.
const LOCK_WAIT: Duration = Duration::from_secs(20 * 60);
const AT_EXIT_LOCK_WAIT: Duration = Duration::from_secs(60);

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

/// Takes an exclusive `flock` on `path`, waiting up to `wait` (saying once on
/// stderr who it waits for). Released when the returned value drops, or when
/// the process dies, so a crashed test never leaves it held.
pub(crate) fn file_lock(path: &str, what: &str, wait: Duration) -> Result<Flock<File>> {
    if let Some(dir) = Path::new(path).parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let end = Instant::now() + wait;
    let mut said = false;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {path}"))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                ensure!(
                    Instant::now() < end,
                    "{path} ({what}) still held after {wait:?}"
                );
                if !said {
                    eprintln!("vxmesh-netns-tests: waiting for {path} ({what})");
                    said = true;
                }
                thread::sleep(Duration::from_millis(200));
            }
            Err((_, e)) => bail!("flock {path}: {e}"),
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

/// Builds (or finds, already built) [`TEST_IMAGE`] and returns its name: a
/// ~2 MB image imported from a rootfs of Debian's busybox-static (`/bin/busybox`
/// with `sh`, `ping`, `wget`, `httpd`, `nc`, `ip`, `sleep`, `cat`, `hostname`,
/// `nslookup`, `ifconfig`, `route`, `echo`, `true` and `kill` linked to it,
/// `/etc/passwd` with root, empty `/www` and `/tmp`), `CMD ["/bin/sh"]`, no
/// health check of its own (give one with `docker run --health-cmd ...
/// --health-interval 1s`, see the module docs).
///
/// Safe to call from many threads and processes (a mutex and a file lock
/// serialize builders); cheap after the first call (one `docker image
/// inspect`). Call it while holding the [`DockerLock`]: the image is removed
/// when the process exits (under that lock, and only if no container uses it),
/// so each test run leaves no image behind.
pub fn ensure_test_image() -> Result<String> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _in_process = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let _across_processes = file_lock(IMAGE_LOCK_PATH, "building the test image", LOCK_WAIT)?;
    remove_image_at_exit();
    let label = format!("{{{{index .Config.Labels \"{IMAGE_LABEL}\"}}}}");
    let current = docker_output(&["image", "inspect", "--format", &label, TEST_IMAGE])?;
    if current.status.success() && String::from_utf8_lossy(&current.stdout).trim() == IMAGE_REVISION
    {
        return Ok(TEST_IMAGE.to_string());
    }
    build_test_image().with_context(|| format!("building {TEST_IMAGE}"))?;
    Ok(TEST_IMAGE.to_string())
}

fn build_test_image() -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no /bin/busybox: install Debian's busybox-static")?;
    let dir = PathBuf::from(format!(
        "/tmp/vxmesh-test-image-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let root = dir.join("rootfs");
        for sub in ["bin", "etc", "www", "tmp", "root"] {
            fs::create_dir_all(root.join(sub))?;
        }
        fs::copy(busybox, root.join("bin/busybox"))
            .with_context(|| format!("copying {}", busybox.display()))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        fs::write(root.join("etc/group"), "root:x:0:\n")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        let tar = dir.join("rootfs.tar");
        let (root_s, tar_s) = (root.display().to_string(), tar.display().to_string());
        command::tool_ok(
            "tar",
            &[
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "-C",
                &root_s,
                "-cf",
                &tar_s,
                ".",
            ],
        )?;
        let label = format!("LABEL {IMAGE_LABEL}={IMAGE_REVISION}");
        docker(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            "--change",
            &label,
            &tar_s,
            TEST_IMAGE,
        ])?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Registers (once per process) an exit hook that removes [`TEST_IMAGE`].
fn remove_image_at_exit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` that never unwinds.
        unsafe {
            libc::atexit(remove_test_image);
        }
    });
}

extern "C" fn remove_test_image() {
    let _ = std::panic::catch_unwind(|| {
        if std::env::var_os("VXMESH_KEEP_TEST_IMAGE").is_some() {
            return;
        }
        // Under the Docker lock, so another process's test never loses the
        // image between finding it and running it.
        let Ok(_lock) = file_lock(
            DOCKER_LOCK_PATH,
            "removing the test image at exit",
            AT_EXIT_LOCK_WAIT,
        ) else {
            eprintln!("vxmesh-netns-tests: left {TEST_IMAGE} (Docker test lock busy)");
            return;
        };
        let Ok(_image) = file_lock(
            IMAGE_LOCK_PATH,
            "removing the test image",
            AT_EXIT_LOCK_WAIT,
        ) else {
            return;
        };
        match docker_output(&["rmi", TEST_IMAGE]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                // gone already, or another process's container still uses it
                if !err.contains("No such image") && !err.contains("is being used") {
                    eprintln!(
                        "vxmesh-netns-tests: docker rmi {TEST_IMAGE}: {}",
                        err.trim()
                    );
                }
            }
            Err(e) => eprintln!("vxmesh-netns-tests: docker rmi {TEST_IMAGE}: {e:#}"),
        }
    });
}

/// Everything one test made in Docker: containers and networks it created (and
/// anything else carrying its label `vxmesh.test=PREFIX`), and netns names
/// pointing into containers. Dropping it removes them: the netns names, then
/// the containers (`docker rm -f`), then the networks, tolerating what is
/// already gone and logging other failures to stderr. Drop it before the
/// topology whose agent serves the driver (declare it after), since Docker asks
/// the driver to remove endpoints and networks.
pub struct DockerGuard {
    prefix: String,
    containers: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
    netns: Mutex<Vec<String>>,
}

impl DockerGuard {
    /// A guard for names starting `PREFIX-` (use the topology's prefix: it is
    /// unique per run).
    pub fn new(prefix: &str) -> DockerGuard {
        DockerGuard {
            prefix: prefix.to_string(),
            containers: Mutex::new(Vec::new()),
            networks: Mutex::new(Vec::new()),
            netns: Mutex::new(Vec::new()),
        }
    }

    /// A guard with a fresh unique prefix, for a test without a topology.
    pub fn for_test(test_name: &str) -> DockerGuard {
        DockerGuard::new(&crate::topology::unique_prefix(test_name))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `vxmesh.test=PREFIX`, for `--label` and `--filter label=`.
    pub fn label(&self) -> String {
        format!("{TEST_LABEL}={}", self.prefix)
    }

    /// The full Docker name for a test's short name: `PREFIX-SHORT`.
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Removes container `name` with the others (for one made some other way).
    pub fn track_container(&self, name: &str) {
        push_unique(&self.containers, name);
    }

    /// Removes network `name` with the others (for one made some other way).
    pub fn track_network(&self, name: &str) {
        push_unique(&self.networks, name);
    }

    /// `docker run -d --name PREFIX-SHORT --label vxmesh.test=PREFIX ARGS`
    /// (`ARGS` end with the image and command); returns the container's name.
    /// Tracked before it runs, so a half-created container is removed too.
    pub fn run(&self, short: &str, args: &[&str]) -> Result<String> {
        let name = self.name(short);
        self.track_container(&name);
        let label = self.label();
        let mut full = vec!["run", "-d", "--name", &name, "--label", &label];
        full.extend_from_slice(args);
        docker(&full)?;
        Ok(name)
    }

    /// `docker network create --label vxmesh.test=PREFIX ARGS PREFIX-SHORT`;
    /// returns the network's name.
    pub fn create_network(&self, short: &str, args: &[&str]) -> Result<String> {
        let name = self.name(short);
        self.track_network(&name);
        let label = self.label();
        let mut full = vec!["network", "create", "--label", &label];
        full.extend_from_slice(args);
        full.push(&name);
        docker(&full)?;
        Ok(name)
    }

    /// Names the network namespace of running container `container` as
    /// `/run/netns/CONTAINER` (so [`crate::exec`] and [`crate::in_netns`] work
    /// in it) and returns that name. The name is removed before the container:
    /// it would otherwise keep the namespace, and its interfaces, alive.
    pub fn attach_netns(&self, container: &str) -> Result<String> {
        let pid = container_pid(container)?.to_string();
        ensure!(
            !Path::new("/run/netns").join(container).exists(),
            "/run/netns/{container} already exists"
        );
        push_unique(&self.netns, container);
        command::tool_ok("ip", &["netns", "attach", container, &pid])?;
        Ok(container.to_string())
    }

    /// Containers and networks carrying this guard's label that still exist.
    pub fn leftovers(&self) -> Result<(Vec<String>, Vec<String>)> {
        let filter = format!("label={}", self.label());
        let containers = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])?;
        let networks = docker(&[
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ])?;
        let lines = |s: String| s.lines().map(str::to_string).collect::<Vec<_>>();
        Ok((lines(containers), lines(networks)))
    }

    /// Removes everything now (what `Drop` does); errors list what could not be
    /// removed.
    pub fn cleanup(&self) -> Result<()> {
        let mut failures = Vec::new();
        for ns in take(&self.netns) {
            if Path::new("/run/netns").join(&ns).exists() {
                if let Err(e) = command::tool_ok("ip", &["netns", "delete", &ns]) {
                    failures.push(format!("{e:#}"));
                }
            }
        }
        let (labelled_containers, labelled_networks) = self.leftovers().unwrap_or_else(|e| {
            failures.push(format!("listing labelled objects: {e:#}"));
            (Vec::new(), Vec::new())
        });
        let mut containers = take(&self.containers);
        for c in labelled_containers {
            if !containers.contains(&c) {
                containers.push(c);
            }
        }
        for c in containers.iter().rev() {
            if let Err(e) = remove(&["rm", "-f", "-v", c], "No such container") {
                failures.push(e);
            }
        }
        let mut networks = take(&self.networks);
        for n in labelled_networks {
            if !networks.contains(&n) {
                networks.push(n);
            }
        }
        for n in networks.iter().rev() {
            if let Err(e) = remove_network(n) {
                failures.push(e);
            }
        }
        ensure!(
            failures.is_empty(),
            "Docker cleanup of {}: {}",
            self.prefix,
            failures.join("; ")
        );
        Ok(())
    }
}

impl Drop for DockerGuard {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("vxmesh-netns-tests: {e:#}");
        }
    }
}

fn push_unique(list: &Mutex<Vec<String>>, name: &str) {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}

fn take(list: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner()))
}

/// `docker ARGS`, where an error mentioning `gone` means there was nothing to
/// remove.
fn remove(args: &[&str], gone: &str) -> Result<(), String> {
    match docker_output(args) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains(gone) {
                Ok(())
            } else {
                Err(format!("`docker {}`: {}", args.join(" "), err.trim()))
            }
        }
        Err(e) => Err(format!("{e:#}")),
    }
}

/// `docker network rm`, retried briefly while endpoints are still leaving.
fn remove_network(name: &str) -> Result<(), String> {
    let mut last = Ok(());
    for _ in 0..10 {
        last = remove(&["network", "rm", name], "not found");
        match &last {
            Err(e) if e.contains("active endpoints") => thread::sleep(Duration::from_millis(300)),
            _ => return last,
        }
    }
    last
}

//! Everything one test made in Docker, removed however the test ends.

use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Result};

use super::{container_pid, docker, docker_output, TEST_LABEL};
use crate::command;

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

//! Runs the compose file docs/docker.md shows (docs/docker-compose.yml) with
//! Debian's `docker-compose` (v1) against a Docker host whose agent is Docker's
//! network and IPAM driver, so the guide cannot rot: `up` makes the vxmesh
//! network and two services, `web` answers on port 8080 of every node (the Docker
//! host and two other nodes) to a client outside, `web` and `tasks.web` resolve
//! in `api`'s container (Docker's answer, and vxmesh's through `dns:`), a
//! namespace container on another node finds `web`'s VIP by name and reaches it,
//! and `down` leaves neither services, tasks nor the network behind.
//! Skipped, saying so, when no Docker engine answers (or no `docker-compose`).
//! Needs root.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use vxmesh_netns_tests::*;

/// The compose file the guide shows, relative to the workspace root.
const COMPOSE_FILE: &str = "docs/docker-compose.yml";
/// The network the compose file declares (`networks: mesh:`).
const COMPOSE_NETWORK: &str = "mesh";
/// The published port and the page `web` serves, as the compose file says.
const PUBLISHED: u16 = 8080;
const WEB_PAGE: &str = "hello from web (";
const API_PAGE: &str = "hello from api (";
const COMPOSE_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(20);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("netns-tests sits in the workspace")
        .to_path_buf()
}

/// One `docker-compose` project on the compose file; `down` on drop, while the
/// agent that is the driver still runs (declare it after the topology).
struct Compose {
    project: String,
    file: PathBuf,
    image: String,
    dir: PathBuf,
    down: bool,
}

impl Compose {
    /// Runs `docker-compose -p PROJECT -f FILE ARGS` with `IMAGE` set; the exit
    /// status is returned, not an error.
    fn run(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["--ansi", "never", "-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .env("IMAGE", &self.image)
            .current_dir(&self.dir);
        run_timeout(&mut cmd, &self.dir, COMPOSE_TIMEOUT)
    }

    /// Like [`Compose::run`] for what must succeed: stdout and stderr together
    /// (compose v1 reports progress on stderr).
    fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "`docker-compose {}` failed ({}):\n{text}",
            args.join(" "),
            out.status
        );
        Ok(text)
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn network(&self) -> String {
        format!("{}_{COMPOSE_NETWORK}", self.project)
    }

    fn down(&mut self) -> Result<String> {
        self.down = true;
        self.run_ok(&["down", "-v", "--remove-orphans", "-t", "2"])
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        match self.down() {
            Ok(_) => {}
            Err(e) => eprintln!("docker_compose: {e:#}"),
        }
    }
}

/// Runs `cmd` with its output in files under `dir` (no pipe to fill up), killed
/// after `timeout`.
fn run_timeout(cmd: &mut Command, dir: &Path, timeout: Duration) -> Result<Output> {
    let (out_path, err_path) = (dir.join("compose.stdout"), dir.join("compose.stderr"));
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot run {desc} (is docker-compose installed?)"))?;
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{desc} still running after {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: std::fs::read(&out_path)?,
        stderr: std::fs::read(&err_path)?,
    })
}

/// Polls `check` until it returns `Ok(Some(_))`, for up to `within`; the error
/// carries the last reason it gave.
fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let end = Instant::now() + within;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("not yet"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= end {
            bail!("{what}: still not so after {within:?} ({last})");
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The healthy backends of the virtual service whose VIP (or, for the routing
/// mesh, published port) matches, in `vxmesh lb ls` on `node`.
fn backends(lb: &Value, pick: impl Fn(&Value) -> bool) -> Vec<String> {
    lb.as_array()
        .into_iter()
        .flatten()
        .filter(|vs| pick(vs))
        .flat_map(|vs| vs["backends"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["healthy"].as_bool() != Some(false))
        .filter_map(|b| b["address"].as_str().map(str::to_string))
        .collect()
}

fn publishes(vs: &Value, port: u16) -> bool {
    let want = format!("{port}/tcp->");
    vs["published"].as_array().is_some_and(|p| {
        p.iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with(&want)))
    })
}

/// A command's stdout when it contains `want`; otherwise an error saying what
/// it printed, which [`wait_for`] reports if it never does.
fn answered(out: &Output, want: &str) -> Result<Option<String>> {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        stdout.contains(want),
        "{} printed {stdout:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Some(stdout))
}

fn service<'a>(services: &'a Value, name: &str) -> Option<&'a Value> {
    services
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"].as_str() == Some(name))
}

/// A failure panics (rather than returning an error) so the topology, dropped
/// while unwinding, prints the agents' logs.
#[test]
fn compose_file_from_the_guide() {
    if skip_without_docker("compose_file_from_the_guide") {
        return;
    }
    if which("docker-compose").is_none() {
        eprintln!("SKIPPED compose_file_from_the_guide: no docker-compose on PATH (scripts/install-deps.sh installs it)");
        return;
    }
    let started = Instant::now();
    // Dropped in reverse: compose down and the guard while the driver's agent
    // still runs, then the topology, then the lock.
    let _lock = DockerLock::acquire().unwrap();
    let mut t = Topology::new("docker_compose").unwrap();
    let d = DockerGuard::new(t.prefix());
    let image = ensure_test_image().unwrap();
    let host = t.add_host_node("host").unwrap();
    let n2 = t.add_node("n2").unwrap();
    let n3 = t.add_node("n3").unwrap();
    let client = t.add_outside_host("client").unwrap();
    let other = t.add_container("c2").unwrap();
    t.start_agent(&host, &["--docker-plugin", "--cleanup-on-exit"])
        .unwrap();
    t.start_agent(&n2, &[]).unwrap();
    t.start_agent(&n3, &[]).unwrap();
    let mut compose = Compose {
        project: t.prefix().to_string(),
        file: workspace_root().join(COMPOSE_FILE),
        image,
        dir: t.dir().to_path_buf(),
        down: false,
    };
    // Whatever compose could not remove, the guard does.
    d.track_container(&compose.container("web"));
    d.track_container(&compose.container("api"));
    d.track_network(&compose.network());
    if let Err(e) = check(&t, &d, &mut compose, &[host, n2, n3], &client, &other) {
        panic!("{e:#}");
    }
    println!("took {:?}", started.elapsed());
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

fn check(
    t: &Topology,
    d: &DockerGuard,
    compose: &mut Compose,
    nodes: &[Node],
    client: &Node,
    other: &str,
) -> Result<()> {
    let host = &nodes[0];
    let (web, net) = (compose.container("web"), compose.network());
    let up = compose.run_ok(&["up", "-d"])?;
    println!("$ docker-compose up -d\n{up}");
    let net_info = inspect(&net)?;
    assert_eq!(net_info["Driver"], "vxmesh", "{net_info}");
    assert_eq!(net_info["IPAM"]["Driver"], "vxmesh", "{net_info}");

    wait_healthy(&web, SETTLE)?;
    let web_ip = container_ip(&web, &net)?.to_string();
    println!("$ docker-compose ps\n{}", compose.run_ok(&["ps"])?);

    // Every node balances web's VIP and its published port over the container.
    for node in nodes {
        wait_for(
            &format!("web's task {web_ip} in node {}'s balancer", node.name),
            SETTLE,
            || {
                let lb = t.cli_json(node, &["lb", "ls"])?;
                let mesh = backends(&lb, |vs| publishes(vs, PUBLISHED));
                let ok = !mesh.is_empty() && !vip_backends(t, node, "web", &lb)?.is_empty();
                Ok(ok.then_some(()))
            },
        )?;
        let lb = t.cli_json(node, &["lb", "ls"])?;
        let tasks = vip_backends(t, node, "web", &lb)?;
        ensure!(
            tasks == [web_ip.clone()],
            "node {}: web's VIP is balanced over {tasks:?}, not web's container {web_ip}",
            node.name
        );
    }
    for cmd in [&["network", "ls"][..], &["service", "ls"], &["lb", "ls"]] {
        println!("$ vxmesh {}\n{}", cmd.join(" "), t.cli_ok(host, cmd)?);
    }

    // From outside, port 8080 of every node (the Docker host's too) is web.
    // (No `wget -T`: Debian's busybox 1.35 wget crashes with it.)
    for node in nodes {
        let url = format!("http://{}:{PUBLISHED}/", node.addr);
        let page = wait_for(&format!("{url} from the client"), SETTLE, || {
            let out = exec_timeout(
                &client.ns,
                &["busybox", "wget", "-qO-", &url],
                Duration::from_secs(5),
            )?;
            answered(&out, WEB_PAGE)
        })
        .with_context(|| firewall_report(t, host))?;
        println!("$ busybox wget -qO- {url}\n{page}");
    }

    // Names. Docker answers the names it knows (the compose services' and
    // containers' on this engine) and forwards the rest to the `dns:` server,
    // vxmesh at the gateway, which answers tasks.web; asked itself, vxmesh
    // answers web with the VIP.
    let vip = service_vip(t, host, "web", &net)?;
    let exec_api = |args: &[&str]| -> Result<String> {
        let mut full = vec!["exec", "-T", "api"];
        full.extend_from_slice(args);
        compose.run_ok(&full)
    };
    let gateway = "10.77.0.1";
    for (args, want) in [
        (&["nslookup", "web"][..], &web_ip),
        (&["nslookup", "tasks.web"], &web_ip),
        (&["nslookup", "web", gateway], &vip),
    ] {
        let out = exec_api(args)?;
        println!("$ docker-compose exec -T api {}\n{out}", args.join(" "));
        ensure!(
            out.lines().any(|l| l.trim() == format!("Address: {want}")),
            "`{}` in api does not answer {want}:\n{out}",
            args.join(" ")
        );
    }
    let page = exec_api(&["wget", "-qO-", "http://web/"])?;
    println!("$ docker-compose exec -T api wget -qO- http://web/\n{page}");
    ensure!(page.contains(WEB_PAGE), "web's page from api: {page}");
    let page = compose.run_ok(&["exec", "-T", "web", "wget", "-qO-", "http://api/"])?;
    ensure!(page.contains(API_PAGE), "api's page from web: {page}");

    // A container on another node (n2, no Docker there) on the same network
    // finds web by name through its own node's agent and reaches it via the VIP.
    let ep = t.cli_ok(
        &nodes[1],
        &["endpoint", "create", "--network", &net, "--netns", other],
    )?;
    let ep_id = ep.split_whitespace().next().unwrap_or_default().to_string();
    let answer = wait_for("web resolved on n2", SETTLE, || {
        let out = exec_timeout(
            other,
            &["busybox", "nslookup", "web", gateway],
            Duration::from_secs(5),
        )?;
        answered(&out, &format!("Address: {vip}"))
    })?;
    println!("n2$ busybox nslookup web {gateway}\n{answer}");
    let url = format!("http://{vip}/");
    let page = wait_for("web's VIP from n2", SETTLE, || {
        let out = exec_timeout(
            other,
            &["busybox", "wget", "-qO-", &url],
            Duration::from_secs(5),
        )?;
        answered(&out, WEB_PAGE)
    })?;
    println!("n2$ busybox wget -qO- {url}\n{page}");
    t.cli_ok(&nodes[1], &["endpoint", "rm", &ep_id])?;

    let down = compose.down()?;
    println!("$ docker-compose down\n{down}");
    for node in nodes {
        wait_for(
            &format!("node {} without the services and network", node.name),
            SETTLE,
            || {
                let services = t.cli_json(node, &["service", "ls"])?;
                let networks = t.cli_json(node, &["network", "ls"])?;
                let lb = t.cli_json(node, &["lb", "ls"])?;
                let left = service(&services, "web").is_some()
                    || service(&services, "api").is_some()
                    || networks
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|n| n["name"].as_str() == Some(net.as_str()))
                    || !backends(&lb, |vs| publishes(vs, PUBLISHED)).is_empty();
                Ok((!left).then_some(()))
            },
        )?;
    }
    println!(
        "$ vxmesh network ls\n{}",
        t.cli_ok(host, &["network", "ls"])?
    );
    let (containers, networks) = d.leftovers()?;
    ensure!(
        containers.is_empty() && networks.is_empty(),
        "left: {containers:?} {networks:?}"
    );
    ensure!(
        docker_output(&["network", "inspect", &net])?.status.code() != Some(0),
        "docker network {net} still exists"
    );
    Ok(())
}

/// The healthy backends of service `name`'s VIP(s) in `node`'s balancer.
fn vip_backends(t: &Topology, node: &Node, name: &str, lb: &Value) -> Result<Vec<String>> {
    let services = t.cli_json(node, &["service", "ls"])?;
    let Some(svc) = service(&services, name) else {
        return Ok(Vec::new());
    };
    let vips: Vec<String> = svc["vips"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(backends(lb, |vs| {
        vs["vip"]
            .as_str()
            .is_some_and(|v| vips.iter().any(|x| x == v))
    }))
}

/// Service `name`'s VIP on `network`.
fn service_vip(t: &Topology, node: &Node, name: &str, network: &str) -> Result<String> {
    let services = t.cli_json(node, &["service", "ls"])?;
    service(&services, name)
        .and_then(|s| s["vips"][network].as_str())
        .map(str::to_string)
        .with_context(|| format!("service {name} has no VIP on {network}: {services}"))
}

/// What the root namespace's firewall and the host agent's log say, for a
/// published port that does not answer on the Docker host.
fn firewall_report(t: &Topology, host: &Node) -> String {
    let run = |prog: &str, args: &[&str]| -> String {
        match Command::new(prog).args(args).output() {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("{prog}: {e}"),
        }
    };
    let log = t.agent_log(host);
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!(
        "iptables -S FORWARD / DOCKER-USER:\n{}{}\nnft list ruleset (vxmesh):\n{}\nhost agent log (last lines):\n{}",
        run("iptables", &["-S", "FORWARD"]),
        run("iptables", &["-S", "DOCKER-USER"]),
        run("nft", &["list", "ruleset"]),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

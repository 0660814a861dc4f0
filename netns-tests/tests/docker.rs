//! vxmesh as Docker's network and IPAM driver (issue 9), against the machine's
//! real engine: the Docker host's agent runs in the root namespace as one node
//! (`--docker-plugin`) on the test underlay, beside a namespace node and an
//! outside client. Skipped, saying so, where no engine answers.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use vxmesh_netns_tests::*;

/// An HTTP GET of `/` at `addr` from namespace `ns`: the body, or an error.
fn fetch(ns: &str, addr: SocketAddr) -> Result<String> {
    in_netns(ns, move || -> Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string())
    })?
}

/// The backends of service `name`'s VIP as node's `lb ls` shows them:
/// (address, healthy).
fn backends(t: &Topology, node: &Node, vip: &str) -> Result<Vec<(String, bool)>> {
    let lb = t.cli_json(node, &["lb", "ls"])?;
    Ok(lb
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["vip"] == vip)
        .flat_map(|v| v["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_string(),
                b["healthy"] == true,
            )
        })
        .collect())
}

fn vxmesh_network(t: &Topology, node: &Node, name: &str) -> Result<Option<serde_json::Value>> {
    let nets = t.cli_json(node, &["network", "ls"])?;
    Ok(nets
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .cloned())
}

/// Links in the root namespace whose name starts with `vx` and that belong to
/// this run's endpoints (the agent's TAPs are named vx + endpoint id).
fn root_taps_of(ids: &[String]) -> Result<Vec<String>> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(ids
        .iter()
        .map(|id| format!("vx{}", &id[..id.len().min(12)]))
        .filter(|tap| text.contains(&format!(" {tap}:")) || text.contains(&format!(" {tap}@")))
        .collect())
}

#[test]
fn docker_containers_join_vxmesh_networks_services_and_the_routing_mesh() -> Result<()> {
    if skip_without_docker("docker_containers_join_vxmesh_networks_services_and_the_routing_mesh") {
        return Ok(());
    }
    let _lock = DockerLock::acquire()?;
    let image = ensure_test_image()?;
    let mut t = Topology::new("docker")?;
    let r = scenario(&mut t, &image);
    if r.is_err() {
        // the topology prints its agents' logs only when a test panics
        for log in ["dock.log", "n2.log"] {
            let text = std::fs::read_to_string(t.dir().join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("----- {log} (last lines) -----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    r
}

/// The agent's TAP names (vx + 12 hex digits) in the root namespace.
fn root_vx_taps() -> Result<std::collections::BTreeSet<String>> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| {
            n.len() == 14 && n.starts_with("vx") && n[2..].chars().all(|c| c.is_ascii_hexdigit())
        })
        .collect())
}

fn scenario(t: &mut Topology, image: &str) -> Result<()> {
    let image = image.to_string();
    let taps_before = root_vx_taps()?;
    let host = t.add_host_node("dock")?;
    let n2 = t.add_node("n2")?;
    let client = t.add_outside_host("client")?;
    t.start_agent(&host, &["--docker-plugin", "--cleanup-on-exit"])?;
    t.start_agent(&n2, &[])?;
    let d = DockerGuard::new(t.prefix());
    // whoever connects to the plugin socket controls the node: 0660, root's group
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let sock = std::path::Path::new("/run/docker/plugins/vxmesh.sock");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !sock.exists() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let m = std::fs::metadata(sock)?;
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o7777, 0o660, "the plugin socket's mode");
        assert_eq!(m.gid(), 0);
    }

    // a Docker network is a vxmesh network of the same name, on every node
    let net = d.create_network(
        "net",
        &[
            "-d",
            "vxmesh",
            "--ipam-driver",
            "vxmesh",
            "--subnet",
            "10.78.0.0/24",
        ],
    )?;
    let seen = eventually(Duration::from_secs(10), || {
        Ok(vxmesh_network(t, &n2, &net)?.is_some())
    })?;
    ensure!(seen, "n2 never saw Docker's network {net}");
    let other = d.create_network(
        "other",
        &[
            "-d",
            "vxmesh",
            "--ipam-driver",
            "vxmesh",
            "--subnet",
            "10.79.0.0/24",
        ],
    )?;

    // a Docker container and a namespace container on n2 talk both ways
    let c2 = t.add_container("c2")?;
    let e2 = endpoint(t, &n2, &net, &c2, &[])?;
    let gw = "10.78.0.1";
    let d1 = d.run(
        "d1",
        &[
            "--network",
            &net,
            "--dns",
            gw,
            &image,
            "sh",
            "-c",
            "echo from-d1 > /www/index.html; exec httpd -f -p 80 -h /www",
        ],
    )?;
    let d1_ip = container_ip(&d1, &net)?;
    ensure!(
        d1_ip.octets()[..3] == [10, 78, 0],
        "Docker gave {d1_ip}, not an address of vxmesh's pool"
    );
    let out = exec_in(&d1, &["ping", "-c", "3", "-W", "2", &e2.ip])?;
    ensure!(out.status.success(), "d1 cannot ping c2: {out:?}");
    assert!(ping(&c2, &d1_ip.to_string(), 3, None)?, "c2 cannot ping d1");
    let _echo = tcp_echo_server(&c2, SocketAddr::new(e2.ip.parse()?, 7000))?;
    let said = exec_in_ok(
        &d1,
        &[
            "sh",
            "-c",
            &format!("echo over-tcp | nc -w 3 {} 7000", e2.ip),
        ],
    )?;
    assert_eq!(said.trim(), "over-tcp", "TCP from the Docker container");
    // egress: out through its own node (the Docker host), masqueraded to its
    // address, past Docker's FORWARD policy (DROP) by the agent's DOCKER-USER
    // accepts
    let _who = answer_server(
        &client.ns,
        SocketAddr::new(client.addr.into(), 7100),
        false,
        |peer| peer.ip().to_string(),
    )?;
    let seen = exec_in_ok(
        &d1,
        &[
            "sh",
            "-c",
            &format!("echo hi | nc -w 3 {} 7100", client.addr),
        ],
    )?;
    assert_eq!(
        seen.trim(),
        host.addr.to_string(),
        "the outside host sees d1 as its node"
    );
    assert_eq!(fetch(&c2, SocketAddr::new(d1_ip.into(), 80))?, "from-d1");

    // a labelled, health-checked container is a task: served through its
    // published port from every node and from the outside client
    let web = d.run(
        "web",
        &[
            "--network",
            &net,
            "--label",
            "vxmesh.service=web",
            "--label",
            "vxmesh.publish=8080:80",
            "--health-cmd",
            "wget -q -O /dev/null http://127.0.0.1/",
            "--health-interval",
            "1s",
            &image,
            "sh",
            "-c",
            "echo web-task > /www/index.html; exec httpd -f -p 80 -h /www",
        ],
    )?;
    let web_ip = container_ip(&web, &net)?.to_string();
    wait_healthy(&web, Duration::from_secs(20))?;
    let svc = t.cli_json(&n2, &["service", "inspect", "web"])?;
    let vip = svc["vips"][&net]
        .as_str()
        .context("service web has no VIP")?
        .to_string();
    let served = eventually(Duration::from_secs(10), || {
        Ok(backends(t, &n2, &vip)? == vec![(web_ip.clone(), true)])
    })?;
    ensure!(
        served,
        "web is not n2's healthy backend: {:?}",
        backends(t, &n2, &vip)?
    );
    for node in [&host, &n2] {
        let addr = SocketAddr::new(node.addr.into(), 8080);
        let got = eventually(Duration::from_secs(10), || {
            Ok(fetch(&client.ns, addr).is_ok_and(|b| b == "web-task"))
        })?;
        ensure!(got, "the published port does not answer on {}", node.name);
    }
    assert_eq!(
        fetch(&c2, SocketAddr::new(vip.parse()?, 80))?,
        "web-task",
        "the VIP from another node's namespace container"
    );
    // names: Docker's resolver forwards to vxmesh's at the gateway
    let looked = exec_in_ok(&d1, &["nslookup", "web"])?;
    assert!(
        looked.contains(&vip),
        "web did not resolve to its VIP: {looked}"
    );
    let looked = exec_in_ok(&d1, &["nslookup", "tasks.web"])?;
    assert!(looked.contains(&web_ip), "tasks.web: {looked}");
    let looked = exec_in_ok(&d1, &["nslookup", &format!("{}-c2", t.prefix())])?;
    assert!(looked.contains(&e2.ip), "c2's name: {looked}");

    // a health check that fails keeps a task out of the balancer
    let sick = d.run(
        "sick",
        &[
            "--network",
            &net,
            "--label",
            "vxmesh.service=web",
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            &image,
            "sleep",
            "300",
        ],
    )?;
    let sick_ip = container_ip(&sick, &net)?.to_string();
    let out = eventually(Duration::from_secs(15), || {
        Ok(backends(t, &n2, &vip)?.contains(&(sick_ip.clone(), false)))
    })?;
    ensure!(
        out,
        "an unhealthy container is served: {:?}",
        backends(t, &n2, &vip)?
    );

    // a container on an unrelated vxmesh network cannot reach the task
    let stranger = d.run("stranger", &["--network", &other, &image, "sleep", "300"])?;
    for dst in [&web_ip, &vip] {
        let out = exec_in(
            &stranger,
            // busybox's `wget -T` segfaults (Debian's 1.35): bound it with timeout
            &[
                "busybox",
                "timeout",
                "3",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{dst}/"),
            ],
        )?;
        ensure!(
            out.status.code() != Some(139) && out.status.signal().is_none(),
            "wget crashed instead of trying {dst}: {out:?}"
        );
        ensure!(
            !out.status.success(),
            "a container on another network reached {dst}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // the agent restarts with containers running: they stay connected
    t.stop_agent(&host)?;
    t.start_agent(&host, &["--docker-plugin", "--cleanup-on-exit"])?;
    let back = eventually(Duration::from_secs(15), || {
        ping(&c2, &d1_ip.to_string(), 1, None)
    })?;
    ensure!(back, "d1 unreachable after the agent restarted");
    let out = exec_in(&d1, &["ping", "-c", "2", "-W", "2", &e2.ip])?;
    ensure!(out.status.success(), "d1 cannot ping c2 after the restart");
    assert_eq!(fetch(&c2, SocketAddr::new(vip.parse()?, 80))?, "web-task");

    // killing the task takes it out of every node's balancer
    docker(&["kill", &web])?;
    let gone = eventually(Duration::from_secs(10), || {
        Ok(!backends(t, &n2, &vip)?.iter().any(|(a, _)| a == &web_ip))
    })?;
    ensure!(
        gone,
        "a killed container is still a backend: {:?}",
        backends(t, &n2, &vip)?
    );
    ensure!(
        fetch(&client.ns, SocketAddr::new(n2.addr.into(), 8080)).is_err(),
        "the published port still answers with no task"
    );

    // docker network rm leaves no link, rule or store entry behind
    let st = t.cli_json(&host, &["endpoint", "ls"])?;
    let ids: Vec<String> = st
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["network"] == net.as_str())
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();
    for c in [&d1, &web, &sick, &stranger] {
        docker(&["rm", "-f", c])?;
    }
    docker(&["network", "rm", &other])?;
    t.cli_ok(&n2, &["endpoint", "rm", &e2.id])?;
    t.cli_ok(&n2, &["service", "rm", "web"])?;
    docker(&["network", "rm", &net])?;
    let removed = eventually(Duration::from_secs(10), || {
        Ok(vxmesh_network(t, &n2, &net)?.is_none())
    })?;
    ensure!(removed, "docker network rm left vxmesh network {net}");
    let left = t.cli_json(&host, &["endpoint", "ls"])?;
    ensure!(
        !left
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["network"] == net.as_str()),
        "endpoints left in the store: {left}"
    );
    ensure!(
        root_taps_of(&ids)?.is_empty(),
        "TAPs left: {:?}",
        root_taps_of(&ids)?
    );
    t.stop_agent(&host)?;
    let rules = std::process::Command::new("iptables")
        .args(["-S", "DOCKER-USER"])
        .output()?;
    for dev in ["vxm-ingress", "vxm-egress"] {
        ensure!(
            !String::from_utf8_lossy(&rules.stdout).contains(dev),
            "the DOCKER-USER accept for {dev} outlived the agent"
        );
    }
    for (family, name) in [
        ("ip", "vxmesh"),
        ("ip6", "vxmesh"),
        ("inet", "vxmesh-egress"),
    ] {
        let table = std::process::Command::new("nft")
            .args(["list", "table", family, name])
            .output()?;
        ensure!(
            !table.status.success(),
            "the table {family} {name} outlived the agent"
        );
    }
    // TAPs are persistent: none of this run's may be left in the host's namespace
    let left: Vec<String> = root_vx_taps()?.difference(&taps_before).cloned().collect();
    ensure!(left.is_empty(), "TAPs left in the root namespace: {left:?}");
    Ok(())
}

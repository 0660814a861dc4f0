//! The README's demo: three nodes (network namespaces on one underlay bridge), one
//! vxmesh agent on each sharing one SQLite store, an overlay network across them,
//! containers on every node, and real traffic between them. Everything it makes
//! is removed when it ends, also on failure.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use vxmesh_netns_tests::*;

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

/// Runs a CLI command on `node`'s agent, showing it as a user would type it.
fn run(t: &Topology, node: &Node, args: &[&str]) -> Result<String> {
    println!("[{}]$ vxmesh {}", node.name, args.join(" "));
    let out = t.cli_ok(node, args)?;
    print!("{out}");
    Ok(out)
}

fn main() -> Result<()> {
    if !is_root() {
        anyhow::bail!("the demo makes network namespaces: run it as root");
    }
    let mut t = Topology::new("demo")?;
    say("Three nodes on one underlay (namespaces joined by a bridge), an agent on each");
    let nodes: Vec<Node> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| t.add_node(n))
        .collect::<Result<_>>()?;
    for n in &nodes {
        t.start_agent(n, &[])?;
        println!("agent {} up, underlay address {}", n.name, n.addr);
    }
    run(&t, &nodes[0], &["node", "ls"])?;

    say("An overlay network, created on node1, seen by every agent");
    run(
        &t,
        &nodes[0],
        &["network", "create", "demo", "--subnet", "10.40.0.0/24"],
    )?;
    run(&t, &nodes[2], &["network", "ls"])?;

    say("One container on each node, each given an interface on the overlay by its node's agent");
    let mut ips = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let c = t.add_container(&format!("c{}", i + 1))?;
        let out = run(
            &t,
            n,
            &["endpoint", "create", "--network", "demo", "--netns", &c],
        )?;
        let ip = out
            .split_whitespace()
            .nth(1)
            .context("endpoint create prints id and IP")?
            .to_string();
        ips.push((c, ip));
    }
    run(&t, &nodes[1], &["endpoint", "ls"])?;

    say("Traffic crosses: ping between containers on different nodes");
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        let (ns, _) = &ips[from];
        let (_, ip) = &ips[to];
        let ok = ping(ns, ip, 3, None)?;
        println!(
            "c{} -> c{} ({ip}): {}",
            from + 1,
            to + 1,
            if ok { "replies" } else { "NO REPLY" }
        );
        anyhow::ensure!(ok, "ping failed");
    }

    say("TCP: 8 MB through an echo server on node3, from a container on node1");
    let srv = tcp_echo_server(&ips[2].0, SocketAddr::new(ips[2].1.parse()?, 8080))?;
    let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    let back = tcp_roundtrip(
        &ips[0].0,
        srv.local_addr(),
        &payload,
        Duration::from_secs(60),
    )?;
    anyhow::ensure!(back == payload, "the echo came back changed");
    println!("8 MB there and back, intact");

    say("Bulk TCP for 3 s with iperf3, container on node1 -> container on node3");
    let iperf = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ips[2].0, "iperf3", "-s", "-1", "-B", &ips[2].1,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("iperf3 (apt-get install iperf3)")?;
    let _server = KillOnDrop(iperf);
    std::thread::sleep(Duration::from_millis(500));
    let out = exec_ok(&ips[0].0, &["iperf3", "-c", &ips[2].1, "-t", "3", "-J"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    println!("{:.2} Gbit/s over vxmesh, one TCP stream", bps / 1e9);

    say("A service: one VIP, three tasks (one per node), balanced on the client's node");
    run(
        &t,
        &nodes[0],
        &["service", "create", "hello", "--network", "demo"],
    )?;
    let mut task_servers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let ns = t.add_container(&format!("hello{}", i + 1))?;
        let out = run(
            &t,
            n,
            &[
                "endpoint",
                "create",
                "--network",
                "demo",
                "--netns",
                &ns,
                "--service",
                "hello",
            ],
        )?;
        let ip = out
            .split_whitespace()
            .nth(1)
            .context("endpoint create prints id and IP")?
            .to_string();
        task_servers.push(hello_server(
            &ns,
            SocketAddr::new(ip.parse()?, 8000),
            &format!("task on {}", n.name),
        )?);
    }
    println!("[c1]$ getent hosts hello   (the embedded DNS answers at the gateway)");
    print!("{}", exec_ok(&ips[0].0, &["getent", "hosts", "hello"])?);
    let vip: std::net::IpAddr = t.cli_json(&nodes[0], &["service", "inspect", "hello"])?["vips"]
        ["demo"]
        .as_str()
        .context("a VIP")?
        .parse()?;
    for _ in 0..6 {
        let (answer, from) = ask(&ips[0].0, SocketAddr::new(vip, 8000))?;
        println!("c1 -> {vip}:8000 answered by {answer} (reply from {from})");
    }
    run(&t, &nodes[0], &["lb", "ls"])?;

    say("The routing mesh: a port published on every node, served by a task on node3");
    run(
        &t,
        &nodes[0],
        &[
            "service",
            "create",
            "web",
            "--network",
            "demo",
            "--publish",
            "8080:80",
        ],
    )?;
    let web = t.add_container("web1")?;
    run(
        &t,
        &nodes[2],
        &[
            "endpoint",
            "create",
            "--network",
            "demo",
            "--netns",
            &web,
            "--service",
            "web",
        ],
    )?;
    let _web = who_server(&web, 80, "web task on node3")?;
    let client = t.add_outside_host("client")?;
    println!(
        "an outside client at {} (on the underlay, no agent) connects to every node:",
        client.addr
    );
    for n in &nodes {
        let to = SocketAddr::new(n.addr.into(), 8080);
        let answer = ask_retrying(&client.ns, to)?;
        println!("client -> {}:8080 ({}): {answer}", n.addr, n.name);
        anyhow::ensure!(
            answer.ends_with(&client.addr.to_string()),
            "the task did not see the client's address"
        );
    }
    let local = SocketAddr::from(([127, 0, 0, 1], 8080));
    println!("[node1]$ curl 127.0.0.1:8080   (from the node itself)");
    println!("{}", ask_retrying(&nodes[0].ns, local)?);
    run(&t, &nodes[0], &["lb", "ls"])?;

    say("A per-node policy: node1 rejects 8080, node2 and node3 keep serving it");
    run(
        &t,
        &nodes[1],
        &[
            "policy", "add", "--node", "node1", "--port", "8080", "--action", "reject",
        ],
    )?;
    run(&t, &nodes[1], &["policy", "ls"])?;
    std::thread::sleep(Duration::from_millis(500));
    for n in &nodes {
        let to = SocketAddr::new(n.addr.into(), 8080);
        let r = ask(&client.ns, to).map(|(a, _)| a);
        println!(
            "client -> {}:8080 ({}): {}",
            n.addr,
            n.name,
            match &r {
                Ok(a) => a.clone(),
                Err(e) => format!("refused ({e})"),
            }
        );
        anyhow::ensure!(r.is_err() == (n.name == "node1"), "policy not as expected");
    }

    say("The agent's counters on node1 (frames, VXLAN datagrams, drops by reason)");
    run(&t, &nodes[0], &["stats"])?;

    say("Cleaning up: agents stopped, namespaces and links removed");
    drop(srv);
    drop(t);
    println!("done");
    Ok(())
}

/// A task that tells each client who it is.
fn hello_server(ns: &str, addr: SocketAddr, name: &str) -> Result<AnswerServer> {
    let name = name.to_string();
    answer_server(ns, addr, false, move |_| name.clone())
}

/// A task (on every address of `ns`) that tells each client who it is and the
/// address it sees the client at.
fn who_server(ns: &str, port: u16, name: &str) -> Result<AnswerServer> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let name = name.to_string();
    answer_server(ns, addr, false, move |peer| {
        format!("answered by {name}, which sees the client as {}", peer.ip())
    })
}

/// [`ask`], retried for a few seconds while a change reaches every agent.
fn ask_retrying(ns: &str, to: SocketAddr) -> Result<String> {
    let mut last = None;
    for _ in 0..20 {
        match ask(ns, to) {
            Ok((a, _)) => return Ok(a),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")))
}

/// Connects from `ns` and returns what the server said and who replied.
fn ask(ns: &str, to: SocketAddr) -> Result<(String, SocketAddr)> {
    in_netns(ns, move || -> Result<(String, SocketAddr)> {
        let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        let peer = c.peer_addr()?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut c, &mut s)?;
        Ok((s, peer))
    })?
}

/// Stops a helper process (iperf3 server) however the demo ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

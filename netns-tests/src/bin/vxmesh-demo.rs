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
    if !nix_is_root() {
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

    say("The agent's counters on node1 (frames, VXLAN datagrams, drops by reason)");
    run(&t, &nodes[0], &["stats"])?;

    say("Cleaning up: agents stopped, namespaces and links removed");
    drop(srv);
    drop(t);
    println!("done");
    Ok(())
}

/// Stops a helper process (iperf3 server) however the demo ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

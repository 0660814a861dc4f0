//! End-to-end throughput, vxmesh beside the kernel, in one run on one machine.
//!
//! Builds two-node topologies (namespaces on one underlay bridge, MTU 1500) for
//! (a) vxmesh, (b) vxmesh encrypted, (c) the kernel's VXLAN + bridge and
//! (d) wireguard-go + the kernel's VXLAN, then runs iperf3 container to container
//! (TCP 1 stream, TCP 4 streams, UDP 1400 B), alternating the setups run by run so
//! drift hits all alike, and prints medians and ratios to (c). The machine is
//! noisy: only ratios taken in one run mean anything.
//!
//! Usage: netns-throughput [--runs N] [--secs S] [--json FILE] [--svg FILE]

use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use vxmesh_benches::{iperf3_gbps, median, parse_args, BarChart, Bg, Series};
use vxmesh_netns_tests::*;

const USAGE: &str =
    "netns-throughput [--runs N] [--secs S] [--workers N] [--json FILE] [--svg FILE]";

/// One setup: a client and a server container joined by some overlay.
struct Setup {
    key: &'static str,
    label: &'static str,
    client: String,
    server: String,
    server_ip: String,
}

const TESTS: [(&str, &str); 3] = [
    ("tcp1", "TCP, 1 stream"),
    ("tcp4", "TCP, 4 streams"),
    ("udp1400", "UDP, 1400 B"),
];

fn iperf(s: &Setup, test: &str, secs: u32) -> Result<f64> {
    iperf3_gbps(&s.client, &s.server_ip, test, secs)
        .map_err(|e| e.context(format!("iperf3 {test} over {}", s.label)))
}

fn main() -> Result<()> {
    let a = parse_args(USAGE)?;
    let mut t = Topology::new("bench")?;
    // (a) and (b): two vxmesh nodes
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    // the agents' own default (one worker per core each) unless told
    let workers = a.workers.map(|w| w.to_string());
    let args: Vec<&str> = match &workers {
        Some(w) => vec!["--workers", w],
        None => vec![],
    };
    t.start_agent(&n1, &args)?;
    t.start_agent(&n2, &args)?;
    t.cli_ok(
        &n1,
        &["network", "create", "plain", "--subnet", "10.61.0.0/24"],
    )?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "secure",
            "--encrypted",
            "--subnet",
            "10.62.0.0/24",
        ],
    )?;
    let mut setups = Vec::new();
    for (key, label, net) in [
        ("a", "vxmesh", "plain"),
        ("b", "vxmesh encrypted", "secure"),
    ] {
        let c = t.add_container(&format!("{key}c"))?;
        let s = t.add_container(&format!("{key}s"))?;
        t.cli_json(
            &n1,
            &["endpoint", "create", "--network", net, "--netns", &c],
        )?;
        let e = t.cli_json(
            &n2,
            &["endpoint", "create", "--network", net, "--netns", &s],
        )?;
        setups.push(Setup {
            key,
            label,
            client: c,
            server: s,
            server_ip: e["ips"][0].as_str().unwrap_or_default().to_string(),
        });
    }
    // (c): the kernel's VXLAN + bridge between two other nodes
    let k1 = t.add_outside_host("k1")?;
    let k2 = t.add_outside_host("k2")?;
    let (kc, ks) = (t.add_container("cc")?, t.add_container("cs")?);
    // kernel to kernel: offloads stay on, as on real hosts
    for (node, peer, ns, cidr) in [
        (&k1, k2.addr, &kc, "10.63.0.1/24"),
        (&k2, k1.addr, &ks, "10.63.0.2/24"),
    ] {
        KernelVxlanNode {
            node: node.clone(),
            vni: 7001,
            peers: vec![peer],
            container_ns: ns.clone(),
            container_cidr: cidr.into(),
            mtu: 1450,
            kernel_peers_only: true,
        }
        .setup()?;
    }
    setups.push(Setup {
        key: "c",
        label: "kernel VXLAN",
        client: kc,
        server: ks,
        server_ip: "10.63.0.2".into(),
    });
    // (d): wireguard-go + the kernel's VXLAN
    let w1 = t.add_outside_host("w1")?;
    let w2 = t.add_outside_host("w2")?;
    let (wc, ws) = (t.add_container("dc")?, t.add_container("ds")?);
    let (p1, pub1) = wg_keypair(&w1.ns)?;
    let (p2, pub2) = wg_keypair(&w2.ns)?;
    let (t1, t2) = (Ipv4Addr::new(100, 65, 0, 1), Ipv4Addr::new(100, 65, 0, 2));
    let peer = |public_key: &str, n: &Node, tunnel_addr| WgPeer {
        public_key: public_key.into(),
        endpoint: SocketAddr::new(n.addr.into(), 51820),
        tunnel_addr,
    };
    let _wg1 = WgVxlanHost {
        node: &w1,
        private_key: &p1,
        tunnel_addr: t1,
        peers: &[peer(&pub2, &w2, t2)],
        vni: 7002,
        container_ns: &wc,
        container_cidr: "10.64.0.1/24",
        mtu: 1370,
    }
    .start(t.dir())?;
    let _wg2 = WgVxlanHost {
        node: &w2,
        private_key: &p2,
        tunnel_addr: t2,
        peers: &[peer(&pub1, &w1, t1)],
        vni: 7002,
        container_ns: &ws,
        container_cidr: "10.64.0.2/24",
        mtu: 1370,
    }
    .start(t.dir())?;
    setups.push(Setup {
        key: "d",
        label: "wireguard-go + kernel VXLAN",
        client: wc,
        server: ws,
        server_ip: "10.64.0.2".into(),
    });

    let mut servers = Vec::new();
    for s in &setups {
        if !ping(&s.client, &s.server_ip, 3, None)? {
            bail!("{} does not carry traffic; not measuring it", s.label);
        }
        servers.push(Bg::spawn(
            &s.server,
            &["iperf3", "-s", "-B", &s.server_ip],
            None,
        )?);
    }
    std::thread::sleep(Duration::from_millis(500));

    let mut results: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for run in 0..a.runs {
        // rotate the order each run, so no setup always goes first
        for i in 0..setups.len() {
            let s = &setups[(i + run) % setups.len()];
            for (test, _) in TESTS {
                let g = iperf(s, test, a.secs)?;
                eprintln!(
                    "run {} {:<28} {:<8} {:6.2} Gbit/s",
                    run + 1,
                    s.label,
                    test,
                    g
                );
                results.entry((s.key, test)).or_default().push(g);
            }
        }
    }
    let mut med: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (k, v) in results.iter_mut() {
        med.insert(*k, median(v));
    }
    println!(
        "\nmedians of {} runs of {} s, Gbit/s (ratio to the kernel's VXLAN)",
        a.runs, a.secs
    );
    print!("{:<28}", "");
    for (_, name) in TESTS {
        print!("{name:>22}");
    }
    println!();
    let mut rows = Vec::new();
    for s in &setups {
        print!("{:<28}", s.label);
        let mut row = json!({ "setup": s.label, "key": s.key });
        for (test, _) in TESTS {
            let g = med[&(s.key, test)];
            let base = med[&("c", test)];
            let ratio = if base > 0.0 { g / base } else { 0.0 };
            print!("{:>14.2} ({:>4.2}x)", g, ratio);
            row[test] =
                json!({ "gbps": g, "ratio_to_kernel": ratio, "runs": results[&(s.key, test)] });
        }
        println!();
        rows.push(row);
    }
    let out = json!({ "runs": a.runs, "secs": a.secs, "results": rows });
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
    }
    if let Some(p) = &a.svg {
        std::fs::write(p, svg(&out))?;
    }
    drop(servers);
    Ok(())
}

/// A grouped bar chart: one group per test, one bar per setup, labelled with its
/// ratio to the kernel's VXLAN.
fn svg(v: &Value) -> String {
    let rows = v["results"].as_array().cloned().unwrap_or_default();
    BarChart {
        title: format!(
            "Container-to-container throughput, Gbit/s (median of {} runs; ratio to kernel VXLAN)",
            v["runs"]
        ),
        width: 760.0,
        groups: TESTS.iter().map(|(_, name)| name.to_string()).collect(),
        series: rows
            .iter()
            .map(|r| Series {
                name: r["setup"].as_str().unwrap_or("").to_string(),
                values: TESTS
                    .iter()
                    .map(|(t, _)| r[*t]["gbps"].as_f64().unwrap_or(0.0))
                    .collect(),
                labels: TESTS
                    .iter()
                    .map(|(t, _)| {
                        format!("{:.2}x", r[*t]["ratio_to_kernel"].as_f64().unwrap_or(0.0))
                    })
                    .collect(),
            })
            .collect(),
        reference: None,
        targets: Vec::new(),
    }
    .svg()
}

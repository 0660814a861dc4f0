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

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vxmesh_netns_tests::*;

struct Args {
    runs: usize,
    secs: u32,
    json: Option<String>,
    svg: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        runs: 3,
        secs: 5,
        json: None,
        svg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--runs" => a.runs = v()?.parse()?,
            "--secs" => a.secs = v()?.parse()?,
            "--json" => a.json = Some(v()?),
            "--svg" => a.svg = Some(v()?),
            "-h" | "--help" => {
                println!("netns-throughput [--runs N] [--secs S] [--json FILE] [--svg FILE]");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {k} (try --help)"),
        }
    }
    Ok(a)
}

/// One setup: a client and a server container joined by some overlay.
struct Setup {
    key: &'static str,
    label: &'static str,
    client: String,
    server: String,
    server_ip: String,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TESTS: [(&str, &str); 3] = [
    ("tcp1", "TCP, 1 stream"),
    ("tcp4", "TCP, 4 streams"),
    ("udp1400", "UDP, 1400 B"),
];

fn iperf(s: &Setup, test: &str, secs: u32) -> Result<f64> {
    let t = secs.to_string();
    let mut a = vec!["iperf3", "-c", s.server_ip.as_str(), "-t", t.as_str(), "-J"];
    match test {
        "tcp4" => a.extend(["-P", "4"]),
        "udp1400" => a.extend(["-u", "-b", "0", "-l", "1400"]),
        _ => {}
    }
    let out = exec(&s.client, &a)?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 {test} over {}: {e}", s.label);
    }
    let bps = if test == "udp1400" {
        let sum = &v["end"]["sum"];
        sum["bits_per_second"].as_f64().unwrap_or(0.0)
            * (1.0 - sum["lost_percent"].as_f64().unwrap_or(0.0) / 100.0)
    } else {
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
    };
    Ok(bps / 1e9)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn main() -> Result<()> {
    let a = args()?;
    let mut t = Topology::new("bench")?;
    // (a) and (b): two vxmesh nodes
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
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
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &s.server,
                "iperf3",
                "-s",
                "-B",
                &s.server_ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 (apt-get install iperf3)")?;
        servers.push(KillOnDrop(child));
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

/// A grouped bar chart: one group per test, one bar per setup, the kernel's VXLAN
/// as the reference line of each group.
fn svg(v: &Value) -> String {
    let rows = v["results"].as_array().cloned().unwrap_or_default();
    let colors = ["#2b6cb0", "#805ad5", "#718096", "#dd6b20"];
    let max = rows
        .iter()
        .flat_map(|r| {
            TESTS
                .iter()
                .map(move |(t, _)| r[*t]["gbps"].as_f64().unwrap_or(0.0))
        })
        .fold(1.0f64, f64::max);
    let (w, h, left, top, bottom) = (760.0, 360.0, 50.0, 40.0, 70.0);
    let plot_h = h - top - bottom;
    let group_w = (w - left - 20.0) / TESTS.len() as f64;
    let bar_w = group_w / (rows.len() as f64 + 1.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<text x="{left}" y="20" font-size="14" font-weight="bold">Container-to-container throughput, Gbit/s (median of {} runs; ratio to kernel VXLAN)</text>
"#,
        v["runs"]
    );
    for i in 0..=4 {
        let val = max * i as f64 / 4.0;
        let y = top + plot_h - plot_h * i as f64 / 4.0;
        s += &format!(
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e2e8f0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{val:.1}</text>
"##,
            w - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    for (g, (test, name)) in TESTS.iter().enumerate() {
        let gx = left + group_w * g as f64;
        for (i, r) in rows.iter().enumerate() {
            let val = r[*test]["gbps"].as_f64().unwrap_or(0.0);
            let ratio = r[*test]["ratio_to_kernel"].as_f64().unwrap_or(0.0);
            let bh = plot_h * val / max;
            let x = gx + bar_w * (i as f64 + 0.5);
            let y = top + plot_h - bh;
            s += &format!(
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{ratio:.2}x</text>
"#,
                bar_w * 0.9,
                colors[i % colors.len()],
                x + bar_w * 0.45,
                y - 3.0
            );
        }
        s += &format!(
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text>
"#,
            gx + group_w / 2.0,
            top + plot_h + 18.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let x = left + 180.0 * (i % 4) as f64;
        let y = h - 22.0;
        s += &format!(
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>
"#,
            y - 10.0,
            colors[i % colors.len()],
            x + 16.0,
            r["setup"].as_str().unwrap_or("")
        );
    }
    s + "</svg>\n"
}

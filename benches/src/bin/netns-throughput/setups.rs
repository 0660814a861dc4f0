//! The four setups: two vxmesh nodes (plain and encrypted networks), the
//! kernel's VXLAN + bridge, and wireguard-go under the kernel's VXLAN, each a
//! client and a server container.

use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddr};
use vxmesh_benches::endpoint_ip;
use vxmesh_netns_tests::*;

/// The setup every ratio is to: the kernel's VXLAN.
pub const KERNEL: &str = "c";
/// The encrypted setup, and what its CPU cost is also compared with.
pub const ENCRYPTED: &str = "b";
pub const WIREGUARD_GO: &str = "d";

/// One setup: a client and a server container joined by some overlay.
pub struct Setup {
    pub key: &'static str,
    pub label: &'static str,
    pub client: String,
    pub server: String,
    pub server_ip: String,
}

/// Builds every setup in `t` (agents with `--workers` when given, else their
/// default); the wireguard-go processes run until the returned guards drop.
pub fn build(t: &mut Topology, workers: Option<u16>) -> Result<(Vec<Setup>, Vec<WireguardGo>)> {
    // (a) and (b): two vxmesh nodes
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    // the agents' own default (one worker per core each) unless told
    let workers = workers.map(|w| w.to_string());
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
        endpoint_ip(t, &n1, net, &c, &[])?;
        let server_ip = endpoint_ip(t, &n2, net, &s, &[])?.to_string();
        setups.push(Setup {
            key,
            label,
            client: c,
            server: s,
            server_ip,
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
        key: KERNEL,
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
    let wg1 = WgVxlanHost {
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
    let wg2 = WgVxlanHost {
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
        key: WIREGUARD_GO,
        label: "wireguard-go + kernel VXLAN",
        client: wc,
        server: ws,
        server_ip: "10.64.0.2".into(),
    });
    Ok((setups, vec![wg1, wg2]))
}

//! The kernel's side: VXLAN + bridge between two node namespaces, the VIP as
//! nft DNAT in the client's namespace (kube-proxy's nftables mode), the
//! published port as nft DNAT on node 1 (Docker's ingress).

use anyhow::{ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use vxmesh_netns_tests::*;

use crate::side::{iperf3_server, nginx, Procs, Side, MTU, PUBLISHED, TASKS};

fn nft(t: &Topology, ns: &str, file: &str, rules: &str) -> Result<()> {
    let path = t.dir().join(file);
    std::fs::write(&path, rules)?;
    exec_ok(ns, &["nft", "-f", &path.display().to_string()])
        .with_context(|| format!("nft -f {} in {ns}:\n{rules}", path.display()))?;
    Ok(())
}

/// The kernel: VXLAN + bridge between k1 and k2, the VIP by nft in the client's
/// namespace, the published port by nft on k1.
pub fn kernel_side(t: &mut Topology, procs: &mut Procs, outside: &Node) -> Result<Side> {
    let k1 = t.add_outside_host("k1")?;
    let k2 = t.add_outside_host("k2")?;
    let client = t.add_container("kc")?;
    let tasks: Vec<String> = (1..=TASKS)
        .map(|i| t.add_container(&format!("kt{i}")))
        .collect::<Result<_>>()?;
    let bulk = t.add_container("kb")?;
    procs
        .sweep
        .extend([k1.ns.clone(), k2.ns.clone(), client.clone()]);
    procs.sweep.extend(tasks.iter().cloned());
    procs.sweep.push(bulk.clone());
    let net = |host: u8| Ipv4Addr::new(10, 72, 0, host);
    let task_ip = |i: usize| net(11 + i as u8);
    let (vip, bulk_vip, bulk_ip, node1_ip) = (net(100), net(101), net(14), net(254));
    for (node, peer, ns, cidr) in [
        (&k1, k2.addr, &client, format!("{}/24", net(1))),
        (&k2, k1.addr, &tasks[0], format!("{}/24", task_ip(0))),
    ] {
        KernelVxlanNode {
            node: node.clone(),
            vni: 7101,
            peers: vec![peer],
            container_ns: ns.clone(),
            container_cidr: cidr,
            mtu: MTU,
            kernel_peers_only: true,
        }
        .setup()?;
    }
    for (i, ns) in tasks.iter().enumerate().skip(1) {
        attach_to_bridge(
            &k2.ns,
            &format!("ck{i}"),
            ns,
            &format!("{}/24", task_ip(i)),
            MTU,
        )?;
    }
    attach_to_bridge(&k2.ns, "ckb", &bulk, &format!("{bulk_ip}/24"), MTU)?;
    // node 1 on the overlay itself, so it can forward the published port there
    exec_ok(
        &k1.ns,
        &["ip", "addr", "add", &format!("{node1_ip}/24"), "dev", "br0"],
    )?;
    exec_ok(&k1.ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    // Where br_netfilter is loaded (Docker hosts), frames crossing a bridge go
    // through the IP hooks too, so k1's conntrack (on for its published-port
    // table) would track every VIP connection a second time after the client's
    // namespace. Off, as a bridge that only carries overlay frames needs.
    if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        for node in [&k1, &k2] {
            exec_ok(
                &node.ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0",
                    "net.bridge.bridge-nf-call-arptables=0",
                ],
            )?;
        }
    }
    let map = (0..TASKS)
        .map(|i| format!("{i} : {}", task_ip(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let table = format!("{}_lb", t.prefix());
    // kube-proxy's nftables mode, reduced to what one service needs
    nft(
        t,
        &client,
        "kernel-vip.nft",
        &format!(
            "table ip {table} {{\n\
             \x20 chain output {{\n\
             \x20   type nat hook output priority -100; policy accept;\n\
             \x20   ip daddr {vip} tcp dport 80 dnat to numgen inc mod {TASKS} map {{ {map} }}\n\
             \x20   ip daddr {bulk_vip} tcp dport 5201 dnat to {bulk_ip}\n\
             \x20 }}\n\
             }}\n"
        ),
    )?;
    // Docker's ingress: DNAT on any node's address, masqueraded into the overlay
    nft(
        t,
        &k1.ns,
        "kernel-published.nft",
        &format!(
            "table ip {table} {{\n\
             \x20 chain prerouting {{\n\
             \x20   type nat hook prerouting priority -100; policy accept;\n\
             \x20   fib daddr type local tcp dport {PUBLISHED} dnat to numgen inc mod {TASKS} map {{ {map} }} : 80\n\
             \x20 }}\n\
             \x20 chain postrouting {{\n\
             \x20   type nat hook postrouting priority 100; policy accept;\n\
             \x20   oifname \"br0\" ct status dnat masquerade\n\
             \x20 }}\n\
             }}\n"
        ),
    )?;
    for (i, ns) in tasks.iter().enumerate() {
        let dir = t.dir().join(format!("nginx-k{}", i + 1));
        nginx(procs, ns, &dir, &format!("t{}", i + 1))?;
    }
    iperf3_server(procs, &bulk)?;
    for i in 0..TASKS {
        ensure!(
            ping(&client, &task_ip(i).to_string(), 2, None)?,
            "the kernel's overlay does not carry traffic to task {}",
            i + 1
        );
    }
    Ok(Side {
        key: "kernel",
        label: "kernel (nft DNAT + VXLAN)",
        client,
        outside: outside.ns.clone(),
        vip: SocketAddr::new(vip.into(), 80),
        published: SocketAddr::new(k1.addr.into(), PUBLISHED),
        bulk_vip,
        bulk_ip,
        node1: k1.ns,
    })
}

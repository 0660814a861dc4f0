//! vxmesh speaks standard VXLAN: a node running the Linux kernel's own VXLAN +
//! bridge on the same VNI, declared with --peer-vtep, exchanges ARP, ping and TCP
//! with a vxmesh endpoint both ways.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use vxmesh_netns_tests::*;

#[test]
fn kernel_vxlan_peer_interoperates() -> anyhow::Result<()> {
    let mut t = Topology::new("kvx")?;
    let n1 = t.add_node("n1")?;
    let k = t.add_outside_host("k")?;
    t.start_agent(&n1, &[])?;
    let peer = k.addr.to_string();
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "kv",
            "--subnet",
            "10.33.0.0/24",
            "--vni",
            "5001",
            "--peer-vtep",
            &peer,
        ],
    )?;
    let c1 = t.add_container("c1")?;
    let ck = t.add_container("ck")?;
    let e1 = endpoint(&t, &n1, "kv", &c1, &[])?;
    kernel_vxlan_setup(&k, 5001, &[n1.addr], &ck, "10.33.0.200/24", 1450)?;

    // both directions, the first packet of each needing ARP across the overlay
    assert!(ping(&c1, "10.33.0.200", 3, None)?, "vxmesh -> kernel VXLAN");
    assert!(ping(&ck, &e1.ip, 3, None)?, "kernel VXLAN -> vxmesh");
    assert!(ping(&ck, &e1.ip, 2, Some(1400))?, "1400-byte payload");
    assert!(
        ping(&c1, "10.33.0.200", 2, Some(1400))?,
        "1400-byte payload, back"
    );

    // ARP resolved on both sides to the real MACs
    let mac = vxmesh_dataplane_mac(&e1.mac);
    let neigh = exec_ok(&ck, &["ip", "neigh", "show", &e1.ip])?;
    assert!(
        neigh.contains(&mac),
        "kernel side resolved {}: {neigh}",
        e1.ip
    );
    let ck_mac = exec_ok(&ck, &["cat", "/sys/class/net/eth0/address"])?;
    let neigh = exec_ok(&c1, &["ip", "neigh", "show", "10.33.0.200"])?;
    assert!(
        neigh.contains(ck_mac.trim()),
        "vxmesh side resolved the kernel container: {neigh}"
    );

    // TCP both ways
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let srv = tcp_echo_server(&ck, "10.33.0.200:6000".parse()?)?;
    assert!(tcp_roundtrip(&c1, srv.local_addr(), &payload, Duration::from_secs(20))? == payload);
    let srv = tcp_echo_server(&c1, SocketAddr::new(e1.ip.parse()?, 6001))?;
    assert!(tcp_roundtrip(&ck, srv.local_addr(), &payload, Duration::from_secs(20))? == payload);

    // the agent learned the kernel container's MAC from the peer
    let stats = t.cli_json(&n1, &["stats"])?;
    assert!(stats["learned"].as_u64().unwrap_or(0) >= 1, "{stats}");
    Ok(())
}

fn vxmesh_dataplane_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

//! Two nodes, two networks, containers of both on both nodes: traffic flows within
//! a network, across nodes and within a node, over TAPs and veths; nothing crosses
//! between networks; a removed endpoint stops receiving.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use vxmesh_netns_tests::*;

#[test]
fn two_nodes_two_networks() -> anyhow::Result<()> {
    two_nodes_two_networks_on(StoreKind::Sqlite)
}

#[test]
fn two_nodes_two_networks_etcd() -> anyhow::Result<()> {
    two_nodes_two_networks_on(StoreKind::Etcd)
}

/// The agents share an etcd that speaks TLS only and requires their client
/// certificates (`etcds://`, `--store-ca/--store-cert/--store-key`).
#[test]
fn two_nodes_two_networks_etcd_tls() -> anyhow::Result<()> {
    two_nodes_two_networks_on(StoreKind::EtcdTls)
}

fn two_nodes_two_networks_on(store: StoreKind) -> anyhow::Result<()> {
    let mut t = Topology::with_store("overlay", store)?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "red", "--subnet", "10.31.0.0/24"],
    )?;
    // created through the other node: both agents share the store
    t.cli_ok(
        &n2,
        &[
            "network",
            "create",
            "blue",
            "--subnet",
            "10.32.0.0/24",
            "--vni",
            "777",
        ],
    )?;

    let r1 = t.add_container("r1")?;
    let r2 = t.add_container("r2")?;
    let r3 = t.add_container("r3")?;
    let b1 = t.add_container("b1")?;
    let b2 = t.add_container("b2")?;
    let er1 = endpoint(&t, &n1, "red", &r1, &[])?;
    let er2 = endpoint(&t, &n2, "red", &r2, &[])?;
    let eb1 = endpoint(&t, &n1, "blue", &b1, &[])?;
    let eb2 = endpoint(&t, &n2, "blue", &b2, &[])?;
    // r3 comes with its own veth; the agent reads the host end with AF_PACKET
    let host_end = format!("{}-v", t.prefix());
    exec_ok(
        &n1.ns,
        &[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "ceth", "netns", &r3,
        ],
    )?;
    let er3 = endpoint(&t, &n1, "red", &r3, &["--veth", &host_end])?;

    // the container side is set up as promised: name, MAC, MTU (1500 - 50), route
    let link = exec_ok(&r1, &["ip", "-j", "link", "show", "dev", "eth0"])?;
    let link: serde_json::Value = serde_json::from_str(&link)?;
    assert_eq!(link[0]["mtu"], 1450);
    assert!(exec_ok(&r1, &["ip", "route"])?.contains("default via 10.31.0.1"));
    assert!(
        exec_ok(&r3, &["ip", "link", "show", "dev", "eth0"]).is_ok(),
        "veth end renamed to eth0"
    );

    // within red: across nodes both ways, and within n1 between a TAP and a veth
    for (from, to) in [
        (&r1, &er2.ip),
        (&r2, &er1.ip),
        (&r3, &er2.ip),
        (&r1, &er3.ip),
        (&r2, &er3.ip),
    ] {
        assert!(ping(from, to, 3, None)?, "ping {from} -> {to}");
    }
    assert!(ping(&b1, &eb2.ip, 3, None)?, "blue across nodes");
    assert!(ping(&b2, &eb1.ip, 3, None)?, "blue across nodes, back");
    // 1400-byte payloads cross without fragmentation
    assert!(ping(&r1, &er2.ip, 2, Some(1400))?);
    assert!(ping(&b2, &eb1.ip, 2, Some(1400))?);

    // TCP across nodes, a megabyte both ways through an echo server
    let srv = tcp_echo_server(&r2, SocketAddr::new(er2.ip.parse()?, 5000))?;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let back = tcp_roundtrip(&r1, srv.local_addr(), &payload, Duration::from_secs(20))?;
    assert!(
        back == payload,
        "TCP payload came back changed ({} bytes)",
        back.len()
    );
    let back = tcp_roundtrip(&r3, srv.local_addr(), &payload, Duration::from_secs(20))?;
    assert!(back == payload, "TCP over the veth endpoint");
    // UDP across nodes with 1400-byte datagrams
    let usrv = udp_echo_server(&b2, SocketAddr::new(eb2.ip.parse()?, 5001))?;
    let dgram = vec![0xab; 1400];
    assert_eq!(
        udp_roundtrip(&b1, usrv.local_addr(), &dgram, Duration::from_secs(5))?,
        dgram
    );

    // nothing crosses between networks: not routed...
    assert!(
        !ping(&r1, &eb2.ip, 2, None)?,
        "red reached blue through the gateway"
    );
    assert!(
        !ping(&b1, &er1.ip, 2, None)?,
        "blue reached red through the gateway"
    );
    // ...and not switched, even for a frame aimed straight at the other network's MAC
    let b2_addr = eb2.ip.clone();
    let sink = in_netns(&b2, move || {
        let s = UdpSocket::bind((b2_addr.as_str(), 7777)).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        s
    })?;
    let leak = udp_frame(
        er1.mac,
        eb2.mac,
        octets(&er1.ip),
        octets(&eb2.ip),
        7777,
        b"from red",
    );
    send_raw_frames(&r1, "eth0", &[leak.clone(), leak])?;
    let mut buf = [0u8; 64];
    assert!(
        sink.recv_from(&mut buf).is_err(),
        "a red frame reached a blue endpoint"
    );
    // the same kind of frame within blue does arrive, so the probe itself works
    let ok = udp_frame(
        eb1.mac,
        eb2.mac,
        octets(&eb1.ip),
        octets(&eb2.ip),
        7777,
        b"from blue",
    );
    send_raw_frames(&b1, "eth0", &[ok])?;
    let (n, _) = sink.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"from blue");

    // listings, as tables and JSON
    let nets = t.cli_json(&n2, &["network", "ls"])?;
    let red = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "red")
        .unwrap();
    assert_eq!(red["endpoints"], 3);
    assert!(t.cli_ok(&n1, &["endpoint", "ls"])?.contains(&er2.id));
    let nodes = t.cli_json(&n1, &["node", "ls"])?;
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    let inspect = t.cli_ok(&n1, &["network", "inspect", "blue"])?;
    assert!(inspect.contains("\"vni\": 777"), "{inspect}");

    // an endpoint removed (through the other node's agent) stops receiving
    t.cli_ok(&n1, &["endpoint", "rm", &er2.id])?;
    let gone = eventually(Duration::from_secs(5), || {
        Ok(exec(&r2, &["ip", "link", "show", "dev", "eth0"])?
            .status
            .code()
            != Some(0))
    })?;
    assert!(gone, "r2's eth0 outlived its endpoint");
    assert!(
        !ping(&r1, &er2.ip, 2, None)?,
        "a removed endpoint still answers"
    );
    assert!(ping(&r1, &er3.ip, 2, None)?, "the others still talk");

    // a network with endpoints cannot be removed; an empty one can
    let busy = t.cli(&n1, &["network", "rm", "blue"])?;
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("endpoint"));
    t.cli_ok(&n1, &["endpoint", "rm", &eb1.id])?;
    t.cli_ok(&n2, &["endpoint", "rm", &eb2.id])?;
    t.cli_ok(&n1, &["network", "rm", "blue"])?;
    Ok(())
}

/// A restarted agent makes its endpoints' interfaces again (a TAP dies with the
/// process that held it) and traffic resumes without any user action.
#[test]
fn restarted_agent_reattaches_its_endpoints() -> anyhow::Result<()> {
    restarted_agent_reattaches_its_endpoints_on(StoreKind::Sqlite)
}

#[test]
fn restarted_agent_reattaches_its_endpoints_etcd() -> anyhow::Result<()> {
    restarted_agent_reattaches_its_endpoints_on(StoreKind::Etcd)
}

fn restarted_agent_reattaches_its_endpoints_on(store: StoreKind) -> anyhow::Result<()> {
    let mut t = Topology::with_store("restart", store)?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "r", "--subnet", "10.37.0.0/24"])?;
    let c1 = t.add_container("c1")?;
    let c2 = t.add_container("c2")?;
    let e1 = endpoint(&t, &n1, "r", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "r", &c2, &[])?;
    assert!(ping(&c1, &e2.ip, 3, None)?);
    t.stop_agent(&n2)?;
    assert!(
        !ping(&c1, &e2.ip, 2, None)?,
        "nothing answers while n2's agent is down"
    );
    t.start_agent(&n2, &[])?;
    let back = eventually(Duration::from_secs(10), || ping(&c1, &e2.ip, 1, None))?;
    assert!(back, "traffic did not resume after the restart");
    // same address and MAC as before: the store, not the agent, owns them
    let mac = exec_ok(&c2, &["cat", "/sys/class/net/eth0/address"])?;
    let want = e2
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(mac.trim(), want);
    assert!(ping(&c2, &e1.ip, 2, None)?);
    Ok(())
}

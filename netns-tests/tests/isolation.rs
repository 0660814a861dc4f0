//! Isolation (issue 7, point 4), with real traffic and the agents' drop counters,
//! covering what overlay.rs (frames between networks), bad_input.rs (garbage is
//! counted) and encrypted.rs (plain VXLAN for an encrypted VNI is counted) do not:
//!
//! - a container reaches neither another network's VIP (nothing reaches its
//!   task) nor, on `--internal` networks, the underlay: the other nodes, an
//!   outside host, its own node's underlay address, sandbox and published
//!   ports; a task reaches none of its node's addresses through its `ingress0`
//!   either. (Open networks reach the underlay through their node: egress,
//!   DESIGN.md packet path 5, tested in egress.rs);
//! - frames with a forged source MAC or IP (IPv4 and IPv6, unicast, broadcast,
//!   ARP, neighbour advertisements) are dropped, counted by reason, never show up
//!   on the wire of any other container, local or remote, and poison no
//!   neighbour cache, while the same frames sent honestly do arrive; nor does
//!   neighbour discovery hidden behind IPv6 extension headers or in fragments;
//! - a well-formed VXLAN datagram for a network's VNI from a host that is not a
//!   member (an outside host, or a cluster node with no endpoint on it), plain
//!   VXLAN for an encrypted network's VNI (from a member or not), and a member's
//!   datagram impersonating a local endpoint's MAC are dropped, counted, and their
//!   inner frames never reach the container they were aimed at.

mod common;

use common::*;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vxmesh_netns_tests::*;

/// A TCP server answering `name` to every connection, and how many it accepted.
fn counting_server(
    ns: &str,
    addr: SocketAddr,
    name: &str,
) -> anyhow::Result<(AnswerServer, Arc<AtomicUsize>)> {
    let n = Arc::new(AtomicUsize::new(0));
    let (name, count) = (name.to_string(), n.clone());
    let srv = answer_server(ns, addr, false, move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        name.clone()
    })?;
    Ok((srv, n))
}

/// What a TCP connection from `ns` to `dst` hears, or why it failed.
fn ask(ns: &str, dst: SocketAddr, timeout: Duration) -> anyhow::Result<Result<String, String>> {
    in_netns(ns, move || {
        let mut c = TcpStream::connect_timeout(&dst, timeout).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.to_string())?;
        Ok(s)
    })
}

/// Asks until `dst` answers (state spreads through the store), for up to 3 s.
fn answered(ns: &str, dst: SocketAddr) -> anyhow::Result<Result<String, String>> {
    let mut got = ask(ns, dst, Duration::from_secs(3))?;
    for _ in 0..10 {
        if got.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        got = ask(ns, dst, Duration::from_secs(3))?;
    }
    Ok(got)
}

/// UDP datagrams `payload` from `ns` (from `src`, or the address the route picks)
/// to each of `dsts`.
fn udp_to(
    ns: &str,
    src: Option<Ipv4Addr>,
    dsts: &[SocketAddr],
    payload: &[u8],
) -> anyhow::Result<()> {
    let (dsts, payload) = (dsts.to_vec(), payload.to_vec());
    in_netns(ns, move || -> anyhow::Result<()> {
        let s = UdpSocket::bind((src.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))?;
        for _ in 0..3 {
            for d in &dsts {
                // a send may fail once an ICMP error came back; what counts is
                // what arrives
                let _ = s.send_to(&payload, d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?
}

/// Pings every target from `ns` at once (optionally from source address `from`);
/// returns the targets that answered.
fn answering(ns: &str, from: Option<&str>, targets: &[String]) -> anyhow::Result<Vec<String>> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = targets
            .iter()
            .map(|dst| {
                s.spawn(move || -> anyhow::Result<Option<String>> {
                    let mut args = vec!["ping", "-c", "2", "-i", "0.2", "-W", "1"];
                    if let Some(f) = from {
                        args.extend(["-I", f]);
                    }
                    args.push(dst);
                    let ok = exec(ns, &args)?.status.success();
                    Ok(ok.then(|| dst.clone()))
                })
            })
            .collect();
        let mut out = Vec::new();
        for j in jobs {
            if let Some(d) = j.join().expect("ping thread")? {
                out.push(d);
            }
        }
        Ok(out)
    })
}

/// Connects to every target from `ns` at once; returns those that connected.
fn connecting(ns: &str, targets: &[SocketAddr]) -> anyhow::Result<Vec<(SocketAddr, String)>> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = targets
            .iter()
            .map(|dst| {
                let dst = *dst;
                s.spawn(move || ask(ns, dst, Duration::from_millis(1500)).map(|r| (dst, r)))
            })
            .collect();
        let mut out = Vec::new();
        for j in jobs {
            let (dst, r) = j.join().expect("connect thread")?;
            if let Ok(s) = r {
                out.push((dst, s));
            }
        }
        Ok(out)
    })
}

/// Every drop counter of `node`'s agent.
fn drops(t: &Topology, node: &Node) -> anyhow::Result<serde_json::Value> {
    // workers publish their counters every 100 ms: wait out one period so
    // the last frames sent are in
    std::thread::sleep(Duration::from_millis(250));
    Ok(t.cli_json(node, &["stats"])?["drops"].clone())
}

fn grew(before: &serde_json::Value, after: &serde_json::Value, reason: &str) -> u64 {
    after[reason]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before[reason].as_u64().unwrap_or(0))
}

#[test]
fn a_container_reaches_no_other_network_vip_nor_the_underlay_nor_its_node() -> anyhow::Result<()> {
    let mut t = Topology::new("iso-reach")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let x = t.add_outside_host("x")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    // internal: no egress, so nothing beyond the overlays may answer
    for (name, subnet) in [("a", "10.61.0.0/24"), ("b", "10.62.0.0/24")] {
        t.cli_ok(
            &n1,
            &["network", "create", name, "--subnet", subnet, "--internal"],
        )?;
    }
    let sa = t.cli_json(&n1, &["service", "create", "sa", "--network", "a"])?;
    let sb = t.cli_json(
        &n1,
        &[
            "service",
            "create",
            "sb",
            "--network",
            "b",
            "--publish",
            "8080:80",
        ],
    )?;
    let vip_a: IpAddr = sa["vips"]["a"].as_str().unwrap().parse()?;
    let vip_b: IpAddr = sb["vips"]["b"].as_str().unwrap().parse()?;
    let (ca, ta, tb) = (
        t.add_container("ca")?,
        t.add_container("ta")?,
        t.add_container("tb")?,
    );
    endpoint(&t, &n1, "a", &ca, &[])?;
    endpoint(&t, &n2, "a", &ta, &["--service", "sa"])?;
    let etb = endpoint(&t, &n2, "b", &tb, &["--service", "sb"])?;
    let any80 = SocketAddr::from(([0, 0, 0, 0], 80));
    let (_sa_srv, _) = counting_server(&ta, any80, "sa")?;
    let (_sb_srv, sb_conns) = counting_server(&tb, any80, "sb")?;
    // a listener on every underlay host (nodes and the outside one), TCP and UDP,
    // and a UDP one in the other network's task
    let (tcp_any, udp_any) = (
        SocketAddr::from(([0, 0, 0, 0], 9000)),
        SocketAddr::from(([0, 0, 0, 0], 9001)),
    );
    let mut servers = Vec::new();
    let mut sinks = Vec::new();
    for h in [&n1, &n2, &x] {
        servers.push(counting_server(&h.ns, tcp_any, &h.name)?);
        sinks.push((h.name.clone(), UdpSink::start(&h.ns, udp_any)?));
    }
    sinks.push(("tb".into(), UdpSink::start(&tb, udp_any)?));
    let nodes = t.cli_json(&n1, &["node", "ls"])?;
    let n1_ingress = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "n1"))
        .and_then(|n| n["ingress_ip"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no ingress_ip for n1 in {nodes}"))?
        .to_string();

    // the probes work: A's VIP answers ca, the routing mesh answers the outside
    // host on both nodes, and the node listeners answer on the underlay
    let got = answered(&ca, SocketAddr::new(vip_a, 80))?;
    assert_eq!(got, Ok("sa".to_string()), "a's VIP from a's container");
    for n in [&n1, &n2] {
        let got = answered(&x.ns, SocketAddr::new(n.addr.into(), 8080))?;
        assert_eq!(got, Ok("sb".to_string()), "{}:8080 from outside", n.name);
        assert_eq!(
            ask(
                &x.ns,
                SocketAddr::new(n.addr.into(), 9000),
                Duration::from_secs(3)
            )?,
            Ok(n.name.clone()),
            "{}'s own listener from the underlay",
            n.name
        );
    }
    let sb_seen = sb_conns.load(Ordering::SeqCst);
    let listeners_seen: Vec<usize> = servers
        .iter()
        .map(|(_, c)| c.load(Ordering::SeqCst))
        .collect();
    let before1 = drops(&t, &n1)?;
    let before2 = drops(&t, &n2)?;

    // from a's container: b's VIP (and b's task itself), every underlay address,
    // the own node's sandbox (kernel side) and ingress address
    let mut targets: Vec<String> = vec![
        vip_b.to_string(),
        etb.ip.clone(),
        n1.addr.to_string(),
        n2.addr.to_string(),
        x.addr.to_string(),
        "169.254.250.1".to_string(),
    ];
    targets.push(n1_ingress);
    let reached = answering(&ca, None, &targets)?;
    assert!(reached.is_empty(), "a's container pinged {reached:?}");
    let mut tcp_targets: Vec<SocketAddr> = targets
        .iter()
        .map(|a| SocketAddr::new(a.parse().unwrap(), 9000))
        .collect();
    tcp_targets.push(SocketAddr::new(vip_b, 80));
    tcp_targets.push(SocketAddr::new(etb.ip.parse()?, 80));
    // published ports answer at the nodes' addresses (the routing mesh), which
    // a container of an internal network has no way to reach (an open network's
    // would, through its node, as from outside)
    for n in [&n1, &n2] {
        tcp_targets.push(SocketAddr::new(n.addr.into(), 8080));
    }
    tcp_targets.push(SocketAddr::from(([169, 254, 250, 1], 8080)));
    let connected = connecting(&ca, &tcp_targets)?;
    assert!(
        connected.is_empty(),
        "a's container connected to {connected:?}"
    );
    let udp_targets: Vec<SocketAddr> = targets
        .iter()
        .map(|a| SocketAddr::new(a.parse().unwrap(), 9001))
        .collect();
    udp_to(&ca, None, &udp_targets, b"from-a-container")?;

    // from b's task, through its routing-mesh interface (source-routed to the
    // ingress gateway) and through eth0: none of its node's addresses, nor the
    // other node's
    let tb_ingress = ipv4_of(&tb, "ingress0")?;
    let node_targets: Vec<String> = [n2.addr, n1.addr, x.addr, Ipv4Addr::new(169, 254, 250, 1)]
        .iter()
        .map(ToString::to_string)
        .collect();
    let reached = answering(&tb, Some(&tb_ingress.to_string()), &node_targets)?;
    assert!(
        reached.is_empty(),
        "b's task pinged {reached:?} from ingress0"
    );
    let reached = answering(&tb, None, &node_targets)?;
    assert!(reached.is_empty(), "b's task pinged {reached:?} from eth0");
    let node_tcp: Vec<SocketAddr> = node_targets
        .iter()
        .map(|a| SocketAddr::new(a.parse().unwrap(), 9000))
        .collect();
    let connected = connecting(&tb, &node_tcp)?;
    assert!(connected.is_empty(), "b's task connected to {connected:?}");
    let node_udp: Vec<SocketAddr> = node_targets
        .iter()
        .map(|a| SocketAddr::new(a.parse().unwrap(), 9001))
        .collect();
    udp_to(&tb, Some(tb_ingress), &node_udp, b"from-task-ingress0")?;
    udp_to(&tb, None, &node_udp, b"from-task-eth0")?;

    std::thread::sleep(Duration::from_millis(500));
    for (name, sink) in &sinks {
        let got = sink.received();
        assert!(got.is_empty(), "UDP reached {name}: {got:?}");
    }
    for ((h, (_, conns)), seen) in [&n1, &n2, &x].iter().zip(&servers).zip(&listeners_seen) {
        assert_eq!(
            conns.load(Ordering::SeqCst),
            *seen,
            "a container's connection reached {}'s listener",
            h.name
        );
    }
    assert_eq!(
        sb_conns.load(Ordering::SeqCst),
        sb_seen,
        "b's task got a connection from a's container"
    );
    // every probe was stopped at the container's node: for want of a route
    // (inside the overlays) or of egress (internal networks)
    let (after1, after2) = (drops(&t, &n1)?, drops(&t, &n2)?);
    let stopped = |b, a| grew(b, a, "no_route") + grew(b, a, "internal");
    let (r1, r2) = (stopped(&before1, &after1), stopped(&before2, &after2));
    eprintln!("no_route + internal drops: n1 +{r1} (a's container), n2 +{r2} (b's task); targets {targets:?}");
    assert!(
        r1 >= targets.len() as u64 * 2,
        "n1 counted {r1} no_route/internal drops for a's container: {after1}"
    );
    assert!(
        r2 >= node_targets.len() as u64 * 2,
        "n2 counted {r2} no_route/internal drops for b's task: {after2}"
    );
    // and the probes still work afterwards
    assert_eq!(
        ask(&ca, SocketAddr::new(vip_a, 80), Duration::from_secs(3))?,
        Ok("sa".to_string())
    );
    Ok(())
}

/// Starts tcpdump on `ns`'s eth0, writing everything to `file`.
fn capture(t: &Topology, ns: &str, file: &str) -> anyhow::Result<(Bg, std::path::PathBuf)> {
    let path = t.dir().join(file);
    let bg = Bg::spawn(
        ns,
        &[
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-s",
            "0",
            "-w",
            path.to_str().unwrap(),
        ],
    )?;
    // tcpdump writes the file's header once it captures: wait for that rather
    // than guess (a busy machine took over a second once)
    let ready = eventually(Duration::from_secs(10), || {
        Ok(std::fs::metadata(&path).is_ok_and(|m| m.len() >= 24))
    })?;
    anyhow::ensure!(ready, "tcpdump in {ns} did not start capturing");
    Ok((bg, path))
}

/// The frames of a capture that carry `marker` anywhere.
fn frames_with(path: &std::path::Path, marker: &[u8]) -> anyhow::Result<usize> {
    let (frames, _) = read_pcap(path)?;
    Ok(frames.iter().filter(|f| contains(f, marker)).count())
}

/// An ARP request (op 1) or reply (op 2), broadcast, with `marker` in its padding.
fn arp_frame(
    eth_src: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_ip: [u8; 4],
    op: u16,
    marker: &[u8],
) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f.extend_from_slice(marker);
    f.resize(f.len().max(60), 0);
    f
}

/// The endpoint's IPv6 address, from `endpoint ls`.
fn v6_of(t: &Topology, node: &Node, ep: &Ep) -> anyhow::Result<std::net::Ipv6Addr> {
    let ls = t.cli_json(node, &["endpoint", "ls"])?;
    ls.as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == ep.id.as_str()))
        .and_then(|e| e["ips"].as_array())
        .and_then(|ips| {
            ips.iter()
                .filter_map(|i| i.as_str())
                .find(|i| i.contains(':'))
        })
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no IPv6 address for endpoint {} in {ls}", ep.id))
}

/// An Ethernet/IPv6/UDP frame.
fn udp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(40000, 7777)
        .write(&mut out, payload)
        .expect("frame fits");
    out
}

/// An unsolicited neighbour advertisement (override) from `src` to all nodes that
/// `target` is at `lladdr`, with `marker` in an option receivers ignore.
fn advertisement(
    eth_src: [u8; 6],
    lladdr: [u8; 6],
    src: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
    marker: &[u8],
) -> Vec<u8> {
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&lladdr);
    // an unknown option (type 200) of 16 bytes carrying the marker
    let mut opt = vec![200, 2];
    opt.extend_from_slice(marker);
    opt.resize(16, 0);
    body.extend_from_slice(&opt);
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(eth_src, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(
            src.octets(),
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            255,
        )
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 136,
            code_u8: 0,
            // override flag
            bytes5to8: [0x20, 0, 0, 0],
        })
        .write(&mut out, &body)
        .expect("frame fits");
    out
}

#[test]
fn forged_source_mac_and_ip_never_reach_another_container() -> anyhow::Result<()> {
    let mut t = Topology::new("iso-forge")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "f",
            "--subnet",
            "10.63.0.0/24",
            "--subnet",
            "fd63::/64",
        ],
    )?;
    let svc = t.cli_json(&n1, &["service", "create", "fs", "--network", "f"])?;
    let vip = octets(svc["vips"]["f"].as_str().unwrap());
    // c1 forges; c2 (other node) and c3 (same node) are the victims
    let (c1, c2, c3) = (
        t.add_container("c1")?,
        t.add_container("c2")?,
        t.add_container("c3")?,
    );
    let e1 = endpoint(&t, &n1, "f", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "f", &c2, &[])?;
    let e3 = endpoint(&t, &n1, "f", &c3, &[])?;
    let (v6_1, v6_2, v6_3) = (
        v6_of(&t, &n1, &e1)?,
        v6_of(&t, &n1, &e2)?,
        v6_of(&t, &n1, &e3)?,
    );
    // c2 knows c3's MAC for both its addresses (a later forged ARP or neighbour
    // advertisement must not change it)
    assert!(ping(&c2, &e3.ip, 2, None)?);
    assert!(ping(&c2, &v6_3.to_string(), 2, None)?);
    assert!(ping(&c1, &e2.ip, 1, None)?);
    std::thread::sleep(Duration::from_millis(1100)); // past the neighbour locktime
    let (mut cap2, pcap2) = capture(&t, &c2, "c2.pcap")?;
    let (mut cap3, pcap3) = capture(&t, &c3, "c3.pcap")?;
    std::thread::sleep(Duration::from_millis(1200));
    let before = drops(&t, &n1)?;

    let (ip1, ip2, ip3) = (octets(&e1.ip), octets(&e2.ip), octets(&e3.ip));
    let gw = [10, 63, 0, 1];
    let bcast = [0xff; 6];
    let stranger = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    // honest frames: the probe works, locally and across nodes
    let honest = vec![
        udp_frame(e1.mac, e2.mac, ip1, ip2, 7777, b"HONEST-TO-C2"),
        udp_frame(e1.mac, e3.mac, ip1, ip3, 7777, b"HONEST-TO-C3"),
        udp_frame(e1.mac, bcast, ip1, [10, 63, 0, 255], 7777, b"HONEST-BCAST"),
        udp6_frame(e1.mac, e2.mac, v6_1, v6_2, b"HONEST6-TO-C2"),
        udp6_frame(e1.mac, e3.mac, v6_1, v6_3, b"HONEST6-TO-C3"),
        // an unsolicited advertisement of c1's own address, to all nodes
        advertisement(e1.mac, e1.mac, v6_1, v6_1, b"HONEST-NA"),
    ];
    // forged source IP (another endpoint's, the gateway's, the VIP's, one
    // outside the network), unicast and broadcast
    let forged_ip = vec![
        udp_frame(e1.mac, e2.mac, ip3, ip2, 7777, b"FORGED-IP"),
        udp_frame(e1.mac, e3.mac, ip2, ip3, 7777, b"FORGED-IP"),
        udp_frame(e1.mac, e2.mac, gw, ip2, 7777, b"FORGED-IP"),
        udp_frame(e1.mac, e3.mac, vip, ip3, 7777, b"FORGED-IP"),
        udp_frame(e1.mac, e2.mac, [192, 168, 77, 2], ip2, 7777, b"FORGED-IP"),
        udp_frame(e1.mac, bcast, ip3, [10, 63, 0, 255], 7777, b"FORGED-IP"),
        // ARP claiming c3's address with c1's MAC (a gratuitous one and a request)
        arp_frame(e1.mac, e1.mac, ip3, ip3, 2, b"FORGED-IP"),
        arp_frame(e1.mac, e1.mac, ip3, ip2, 1, b"FORGED-IP"),
        // IPv6: another endpoint's source address; an advertisement of c3's
        // address with c1's MAC (from c1's own address)
        udp6_frame(e1.mac, e2.mac, v6_3, v6_2, b"FORGED-IP"),
        udp6_frame(e1.mac, e3.mac, v6_2, v6_3, b"FORGED-IP"),
        advertisement(e1.mac, e1.mac, v6_1, v6_3, b"FORGED-IP"),
    ];
    // forged source MAC (another endpoint's with its address too, a stranger's),
    // and an ARP whose sender MAC is not the frame's
    let forged_mac = vec![
        udp_frame(e3.mac, e2.mac, ip3, ip2, 7777, b"FORGED-MAC"),
        udp_frame(e2.mac, e3.mac, ip2, ip3, 7777, b"FORGED-MAC"),
        udp_frame(stranger, e2.mac, ip1, ip2, 7777, b"FORGED-MAC"),
        udp_frame(stranger, bcast, ip1, [10, 63, 0, 255], 7777, b"FORGED-MAC"),
        arp_frame(e1.mac, e3.mac, ip1, ip2, 1, b"FORGED-MAC"),
        arp_frame(e3.mac, e3.mac, ip3, ip3, 2, b"FORGED-MAC"),
        udp6_frame(e3.mac, e2.mac, v6_3, v6_2, b"FORGED-MAC"),
    ];
    for _ in 0..3 {
        send_raw_frames(&c1, "eth0", &honest)?;
        send_raw_frames(&c1, "eth0", &forged_ip)?;
        send_raw_frames(&c1, "eth0", &forged_mac)?;
    }
    std::thread::sleep(Duration::from_millis(800));
    cap2.stop();
    cap3.stop();

    assert!(
        frames_with(&pcap2, b"HONEST-TO-C2")? > 0,
        "the probe to c2 works"
    );
    assert!(
        frames_with(&pcap3, b"HONEST-TO-C3")? > 0,
        "the probe to c3 works"
    );
    assert!(
        frames_with(&pcap2, b"HONEST-BCAST")? > 0,
        "broadcast reaches c2"
    );
    assert!(
        frames_with(&pcap3, b"HONEST-BCAST")? > 0,
        "broadcast reaches c3"
    );
    for (who, p, probe) in [
        ("c2", &pcap2, &b"HONEST6-TO-C2"[..]),
        ("c3", &pcap3, b"HONEST6-TO-C3"),
    ] {
        assert!(frames_with(p, probe)? > 0, "the IPv6 probe to {who} works");
        assert!(
            frames_with(p, b"HONEST-NA")? > 0,
            "an honest neighbour advertisement reaches {who}"
        );
    }
    for (who, p) in [("c2", &pcap2), ("c3", &pcap3)] {
        for m in [&b"FORGED-IP"[..], b"FORGED-MAC"] {
            assert_eq!(
                frames_with(p, m)?,
                0,
                "{who} received a frame marked {}",
                String::from_utf8_lossy(m)
            );
        }
    }
    // c2 still has c3's real MAC for c3's address
    let neigh = exec_ok(&c2, &["ip", "neigh", "show", &e3.ip])?;
    let mac3 = e3
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        neigh.is_empty() || neigh.contains(&mac3),
        "c2's neighbour entry for c3 was poisoned: {neigh}"
    );
    let neigh = exec_ok(&c2, &["ip", "-6", "neigh", "show", &v6_3.to_string()])?;
    assert!(
        neigh.is_empty() || neigh.contains(&mac3),
        "c2's IPv6 neighbour entry for c3 was poisoned: {neigh}"
    );
    let after = drops(&t, &n1)?;
    let (ip_drops, mac_drops) = (
        grew(&before, &after, "spoofed_source_ip"),
        grew(&before, &after, "spoofed_source_mac"),
    );
    assert!(
        ip_drops >= 3 * forged_ip.len() as u64,
        "{ip_drops} spoofed_source_ip drops for {} forged frames: {after}",
        3 * forged_ip.len()
    );
    assert!(
        mac_drops >= 3 * forged_mac.len() as u64,
        "{mac_drops} spoofed_source_mac drops for {} forged frames: {after}",
        3 * forged_mac.len()
    );
    // the victims still talk to the forger
    assert!(ping(&c2, &e1.ip, 1, None)?);
    assert!(ping(&c3, &e1.ip, 1, None)?);
    Ok(())
}

/// A container hides neighbour discovery from the guard: router advertisements
/// (a default route and a prefix for every host on the network) behind
/// Destination Options and hop-by-hop headers or in an atomic fragment, an
/// advertisement of another endpoint's address behind Destination Options, its
/// own advertisement fragmented. None reaches another container, local or
/// remote; each is counted (`spoofed_source_ip` for what the guard refuses
/// wherever it sits, `ipv6_header_chain` for neighbour discovery in fragments);
/// the same container's honest advertisement, direct or behind Destination
/// Options, still arrives.
#[test]
fn neighbour_discovery_hidden_behind_extension_headers_never_reaches_another_container(
) -> anyhow::Result<()> {
    use vxmesh_dataplane::fuzzing::{
        ext_fragment, ext_options, icmpv6_frame, neighbor_advertisement_body,
        router_advertisement_body,
    };
    let mut t = Topology::new("iso-nd")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "h",
            "--subnet",
            "10.64.0.0/24",
            "--subnet",
            "fd64::/64",
        ],
    )?;
    let (c1, c2, c3) = (
        t.add_container("c1")?,
        t.add_container("c2")?,
        t.add_container("c3")?,
    );
    let e1 = endpoint(&t, &n1, "h", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "h", &c2, &[])?;
    let e3 = endpoint(&t, &n1, "h", &c3, &[])?;
    let (v6_1, v6_3) = (v6_of(&t, &n1, &e1)?, v6_of(&t, &n1, &e3)?);
    assert!(ping(&c1, &e2.ip, 2, None)?, "c1 reaches c2");
    let (mut cap2, pcap2) = capture(&t, &c2, "c2.pcap")?;
    let (mut cap3, pcap3) = capture(&t, &c3, "c3.pcap")?;
    let before = drops(&t, &n1)?;

    // `marker` in an option receivers ignore (type 200, 16 bytes)
    let marked = |mut body: Vec<u8>, marker: &[u8]| {
        let mut opt = vec![200, 2];
        opt.extend_from_slice(marker);
        opt.resize(16, 0);
        body.extend_from_slice(&opt);
        body
    };
    let ra = |m: &[u8]| marked(router_advertisement_body(), m);
    let na = |target: std::net::Ipv6Addr, m: &[u8]| {
        marked(neighbor_advertisement_body(&target.to_string(), e1.mac), m)
    };
    let dest = || (60u8, ext_options());
    let hbh = || (0u8, ext_options());
    let honest = vec![
        icmpv6_frame(e1.mac, 136, &na(v6_1, b"HONEST-NA"), &[]),
        icmpv6_frame(e1.mac, 136, &na(v6_1, b"HONEST-NA-DEST"), &[dest()]),
    ];
    let refused = vec![
        icmpv6_frame(e1.mac, 134, &ra(b"HIDDEN-ND"), &[dest()]),
        icmpv6_frame(e1.mac, 134, &ra(b"HIDDEN-ND"), &[hbh(), dest()]),
        icmpv6_frame(e1.mac, 136, &na(v6_3, b"HIDDEN-ND"), &[dest()]),
    ];
    let fragmented = vec![
        icmpv6_frame(
            e1.mac,
            134,
            &ra(b"HIDDEN-ND"),
            &[(44, ext_fragment(0, false))],
        ),
        icmpv6_frame(
            e1.mac,
            136,
            &na(v6_1, b"HIDDEN-ND"),
            &[(44, ext_fragment(0, true))],
        ),
    ];
    for _ in 0..3 {
        send_raw_frames(&c1, "eth0", &honest)?;
        send_raw_frames(&c1, "eth0", &refused)?;
        send_raw_frames(&c1, "eth0", &fragmented)?;
    }
    std::thread::sleep(Duration::from_millis(800));
    cap2.stop();
    cap3.stop();
    for (who, p) in [("c2", &pcap2), ("c3", &pcap3)] {
        for m in [&b"HONEST-NA"[..], b"HONEST-NA-DEST"] {
            assert!(
                frames_with(p, m)? > 0,
                "{who} got no honest advertisement marked {}",
                String::from_utf8_lossy(m)
            );
        }
        assert_eq!(
            frames_with(p, b"HIDDEN-ND")?,
            0,
            "{who} received neighbour discovery hidden behind extension headers"
        );
    }
    // no host took the advertised prefix or a route through c1
    for c in [&c2, &c3] {
        let routes = exec_ok(c, &["ip", "-6", "route", "show"])?;
        assert!(
            !routes.contains("2001:db8"),
            "{c} took the prefix: {routes}"
        );
    }
    let after = drops(&t, &n1)?;
    let spoofed = grew(&before, &after, "spoofed_source_ip");
    let chain = grew(&before, &after, "ipv6_header_chain");
    assert!(
        spoofed >= 3 * refused.len() as u64,
        "{spoofed} spoofed_source_ip drops for {} refused frames: {after}",
        3 * refused.len()
    );
    assert!(
        chain >= 3 * fragmented.len() as u64,
        "{chain} ipv6_header_chain drops for {} fragments: {after}",
        3 * fragmented.len()
    );
    Ok(())
}

/// A VXLAN datagram (I flag, `vni`) around `inner`.
fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let b = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, b[1], b[2], b[3], 0];
    d.extend_from_slice(inner);
    d
}

#[test]
fn vxlan_from_non_members_and_plaintext_for_encrypted_vnis_never_reach_a_container(
) -> anyhow::Result<()> {
    let mut t = Topology::new("iso-vx")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let n3 = t.add_node("n3")?;
    let x = t.add_outside_host("x")?;
    for n in [&n1, &n2, &n3] {
        t.start_agent(n, &[])?;
    }
    let p = t.cli_json(&n1, &["network", "create", "p", "--subnet", "10.64.0.0/24"])?;
    let s = t.cli_json(
        &n1,
        &[
            "network",
            "create",
            "s",
            "--encrypted",
            "--subnet",
            "10.65.0.0/24",
        ],
    )?;
    t.cli_ok(&n1, &["network", "create", "o", "--subnet", "10.66.0.0/24"])?;
    let (p_vni, s_vni) = (
        p["vni"].as_u64().unwrap() as u32,
        s["vni"].as_u64().unwrap() as u32,
    );
    // p and s span n1 and n2; n3 is a node of the cluster, but only on o
    let (p1, p2, s1, s2, o3) = (
        t.add_container("p1")?,
        t.add_container("p2")?,
        t.add_container("s1")?,
        t.add_container("s2")?,
        t.add_container("o3")?,
    );
    let ep1 = endpoint(&t, &n1, "p", &p1, &[])?;
    let ep2 = endpoint(&t, &n2, "p", &p2, &[])?;
    let es1 = endpoint(&t, &n1, "s", &s1, &[])?;
    let es2 = endpoint(&t, &n2, "s", &s2, &[])?;
    endpoint(&t, &n3, "o", &o3, &[])?;
    assert!(ping(&p2, &ep1.ip, 2, None)?, "plain network works");
    assert!(ping(&s2, &es1.ip, 2, None)?, "encrypted network works");
    let (mut capp, pcap_p) = capture(&t, &p1, "p1.pcap")?;
    let (mut caps, pcap_s) = capture(&t, &s1, "s1.pcap")?;
    std::thread::sleep(Duration::from_millis(1200));
    let before = drops(&t, &n1)?;

    let to_p1 = |marker: &[u8]| {
        vxlan(
            p_vni,
            &udp_frame(
                ep2.mac,
                ep1.mac,
                octets(&ep2.ip),
                octets(&ep1.ip),
                7777,
                marker,
            ),
        )
    };
    let to_s1 = |marker: &[u8]| {
        vxlan(
            s_vni,
            &udp_frame(
                es2.mac,
                es1.mac,
                octets(&es2.ip),
                octets(&es1.ip),
                7777,
                marker,
            ),
        )
    };
    let vtep = SocketAddr::new(n1.addr.into(), 4789);
    for _ in 0..3 {
        // from the member that really hosts the inner source: delivered (the probe)
        udp_send_raw(&n2.ns, vtep, &[to_p1(b"VX-FROM-MEMBER")])?;
        // the same datagram from an outside host, and from a node not on p
        udp_send_raw(&x.ns, vtep, &[to_p1(b"VX-FROM-OUTSIDER")])?;
        udp_send_raw(&n3.ns, vtep, &[to_p1(b"VX-FROM-NON-MEMBER-NODE")])?;
        // from the member, impersonating n1's own endpoint
        let inner = udp_frame(
            ep1.mac,
            ep1.mac,
            octets(&ep1.ip),
            octets(&ep1.ip),
            7777,
            b"VX-IMPERSONATING-LOCAL",
        );
        udp_send_raw(&n2.ns, vtep, &[vxlan(p_vni, &inner)])?;
        // plain VXLAN for the encrypted network, from its member and from outside
        udp_send_raw(&n2.ns, vtep, &[to_s1(b"VX-PLAIN-FOR-ENCRYPTED")])?;
        udp_send_raw(&x.ns, vtep, &[to_s1(b"VX-PLAIN-FOR-ENCRYPTED")])?;
    }
    std::thread::sleep(Duration::from_millis(800));
    capp.stop();
    caps.stop();

    assert!(
        frames_with(&pcap_p, b"VX-FROM-MEMBER")? > 0,
        "a member's datagram is delivered (the probe works)"
    );
    for m in [
        &b"VX-FROM-OUTSIDER"[..],
        b"VX-FROM-NON-MEMBER-NODE",
        b"VX-IMPERSONATING-LOCAL",
    ] {
        assert_eq!(
            frames_with(&pcap_p, m)?,
            0,
            "p1 received {}",
            String::from_utf8_lossy(m)
        );
    }
    assert_eq!(
        frames_with(&pcap_s, b"VX-PLAIN-FOR-ENCRYPTED")?,
        0,
        "plain VXLAN reached a container of the encrypted network"
    );
    let after = drops(&t, &n1)?;
    for (reason, at_least) in [
        ("not_member", 6),
        ("unencrypted", 6),
        ("spoofed_source_mac", 3),
    ] {
        let n = grew(&before, &after, reason);
        assert!(
            n >= at_least,
            "{n} {reason} drops, want {at_least}: {after}"
        );
    }
    // the networks still work
    assert!(ping(&p2, &ep1.ip, 1, None)?);
    assert!(ping(&s2, &es1.ip, 1, None)?);
    Ok(())
}

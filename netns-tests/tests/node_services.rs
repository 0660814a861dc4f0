//! Containers never reach the nodes' own services (issue 18, point 1;
//! DESIGN.md: a container is a tenant, not a node), attacked from where an
//! attacker sits: a container whose network has egress.
//!
//! Egress masquerades a container to its node's address, and every node takes
//! VXLAN from a member's address as that member's own. So a container that
//! writes a VXLAN datagram by hand (another network's VNI, a frame for that
//! network's container on another node) and sends it to the other node's port
//! 4789 would put its frame into a network it is not on. The test shows the
//! forged datagrams are well-formed, by sending them from the node itself
//! (the address masquerade would give them), where they are delivered; then
//! sends them from containers on a plain and on an encrypted network, aimed at
//! a plain network and at the routing mesh's `ingress` network, and sees none
//! arrive and the node count them (`node_service`). It also sees the node's
//! own TCP services (a server on the node, the agents' metrics) refused to
//! containers at every address the node has, while an outside host reaches
//! them and ordinary egress works. Both underlay families.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;
use vxmesh_netns_tests::*;

const MARK_PORT: u16 = 9999;

/// A VXLAN datagram (VNI `vni`) carrying an Ethernet/IPv4/UDP frame to
/// `MARK_PORT` with `marker` as its payload.
fn forged(vni: u32, inner: &Inner, marker: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&(vni << 8).to_be_bytes());
    d.extend_from_slice(&udp_frame(
        inner.src_mac,
        inner.dst_mac,
        inner.src.octets(),
        inner.dst.octets(),
        MARK_PORT,
        marker,
    ));
    d
}

/// Who the forged inner frame claims to be from and is for.
struct Inner {
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
}

/// The MAC and first IPv4 address of `dev` in `ns`.
fn iface(ns: &str, dev: &str) -> anyhow::Result<([u8; 6], Ipv4Addr)> {
    let ip = ipv4_of(ns, dev)?;
    let out = exec_ok(ns, &["ip", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let s = v[0]["address"].as_str().unwrap_or_default();
    let mut mac = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(p, 16)?;
    }
    Ok((mac, ip))
}

/// Sends each datagram three times from `ns` to `dst` (a later send may fail
/// once an ICMP error came back; what counts is what arrives).
fn send_from(ns: &str, dst: SocketAddr, datagrams: &[Vec<u8>]) -> anyhow::Result<()> {
    let datagrams = datagrams.to_vec();
    in_netns(ns, move || -> anyhow::Result<()> {
        let any: SocketAddr = match dst {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let s = UdpSocket::bind(any)?;
        for _ in 0..3 {
            for d in &datagrams {
                let _ = s.send_to(d, dst);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?
}

/// Whether a TCP connection from `ns` to `dst` is made within 1.5 s.
fn connects(ns: &str, dst: SocketAddr) -> anyhow::Result<bool> {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&dst, Duration::from_millis(1500)).is_ok()
    })
}

fn markers(sink: &UdpSink) -> Vec<String> {
    sink.received()
        .into_iter()
        .map(|(_, p)| String::from_utf8_lossy(&p).into_owned())
        .collect()
}

/// The packets the egress table's forward hook dropped, all its rules together.
fn table_drops(ns: &str) -> anyhow::Result<u64> {
    let out = exec_ok(
        ns,
        &["nft", "list", "chain", "inet", "vxmesh-egress", "forward"],
    )?;
    Ok(out
        .lines()
        .filter(|l| l.contains("drop"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "packets")?;
            w.get(i + 1)?.parse::<u64>().ok()
        })
        .sum())
}

/// `switch_guard`: false runs n1's agent with the test fault that leaves the
/// guard out of its switch, so that only the egress table stands.
fn attack(mut t: Topology, v6: bool, switch_guard: bool) -> anyhow::Result<()> {
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let x = t.add_outside_host("x")?;
    let metrics = |n: &Node| SocketAddr::new(n.underlay_addr(), 9464).to_string();
    let fault: &[(&str, &str)] = if switch_guard {
        &[]
    } else {
        &[("VXMESH_TEST_FAULT", "no-switch-guard")]
    };
    t.start_agent_with_env(&n1, &["--metrics-addr", &metrics(&n1)], fault)?;
    t.start_agent(&n2, &["--metrics-addr", &metrics(&n2)])?;
    // the attackers' networks (dual-stack, so IPv6 egress is open too) and
    // the target
    fn s6(v6: bool, s: &'static str) -> Vec<&'static str> {
        if v6 {
            vec!["--subnet", s]
        } else {
            vec![]
        }
    }
    let mut a = vec!["network", "create", "a", "--subnet", "10.91.0.0/24"];
    a.extend(s6(v6, "fd91::/64"));
    t.cli_ok(&n1, &a)?;
    let mut s = vec![
        "network",
        "create",
        "s",
        "--subnet",
        "10.92.0.0/24",
        "--encrypted",
    ];
    s.extend(s6(v6, "fd92::/64"));
    t.cli_ok(&n1, &s)?;
    t.cli_ok(&n1, &["network", "create", "b", "--subnet", "10.93.0.0/24"])?;
    t.cli_ok(
        &n1,
        &[
            "service",
            "create",
            "web",
            "--network",
            "b",
            "--publish",
            "18080:80",
        ],
    )?;
    let (att, atts, vb, bn1) = (
        t.add_container("att")?,
        t.add_container("atts")?,
        t.add_container("vb")?,
        t.add_container("bn1")?,
    );
    endpoint(&t, &n1, "a", &att, &[])?;
    endpoint(&t, &n1, "s", &atts, &[])?;
    // n1 is a member of b and of ingress: n2 takes their VXLAN from n1
    let ebn1 = endpoint(&t, &n1, "b", &bn1, &["--service", "web"])?;
    let evb = endpoint(&t, &n2, "b", &vb, &["--service", "web"])?;
    let vni = |net: &str| -> anyhow::Result<u32> {
        let v = t.cli_json(&n1, &["network", "inspect", net])?;
        Ok(v["vni"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no vni: {v}"))? as u32)
    };
    let (vni_b, vni_ingress) = (vni("b")?, vni("ingress")?);
    let (vb_ing_mac, vb_ing) = iface(&vb, "ingress0")?;
    let (bn1_ing_mac, bn1_ing) = iface(&bn1, "ingress0")?;
    let into_b = Inner {
        src_mac: ebn1.mac,
        src: ebn1.ip.parse()?,
        dst_mac: evb.mac,
        dst: evb.ip.parse()?,
    };
    let into_ingress = Inner {
        src_mac: bn1_ing_mac,
        src: bn1_ing,
        dst_mac: vb_ing_mac,
        dst: vb_ing,
    };
    let sink = UdpSink::start(&vb, (Ipv4Addr::UNSPECIFIED, MARK_PORT).into())?;
    let vtep2 = SocketAddr::new(n2.underlay_addr(), 4789);

    // the forged datagrams are real: from the node's own address they arrive
    // (the honest path is n1's agent itself; this is what masquerade makes)
    let honest = [
        forged(vni_b, &into_b, b"node-b"),
        forged(vni_ingress, &into_ingress, b"node-ingress"),
    ];
    let ok = eventually(Duration::from_secs(10), || {
        send_from(&n1.ns, vtep2, &honest)?;
        let got = markers(&sink);
        Ok(got.iter().any(|m| m == "node-b") && got.iter().any(|m| m == "node-ingress"))
    })?;
    assert!(
        ok,
        "the control failed: forged VXLAN from n1's own address was not delivered ({:?}), so the attack below would prove nothing",
        markers(&sink)
    );

    // the attack: the same datagrams from containers, through egress
    let before = dropped(&t, &n1, "node_service")?;
    let mut sent = 0;
    for (ns, tag) in [(&att, "plain"), (&atts, "encrypted")] {
        let d = [
            forged(vni_b, &into_b, format!("{tag}-b").as_bytes()),
            forged(
                vni_ingress,
                &into_ingress,
                format!("{tag}-ingress").as_bytes(),
            ),
        ];
        send_from(ns, vtep2, &d)?;
        // and to n2's WireGuard port, which takes handshakes by address too
        send_from(ns, SocketAddr::new(n2.underlay_addr(), 51820), &d[..1])?;
        sent += 3 * 3;
    }
    std::thread::sleep(Duration::from_millis(1500));
    let got = markers(&sink);
    assert!(
        got.iter().all(|m| m.starts_with("node-")),
        "a container's forged VXLAN reached another network: {got:?}"
    );
    if switch_guard {
        let counted = eventually(Duration::from_secs(3), || {
            Ok(dropped(&t, &n1, "node_service")? >= before + sent)
        })?;
        assert!(
            counted,
            "n1 counted {} node_service drops, {sent} datagrams were forged",
            dropped(&t, &n1, "node_service")? - before
        );
    } else {
        // the switch let them by: the kernel's table is what held
        assert_eq!(
            dropped(&t, &n1, "node_service")?,
            before,
            "the switch guarded"
        );
        let held = table_drops(&n1.ns)?;
        assert!(
            held >= sent,
            "the egress table dropped {held}, {sent} were forged"
        );
    }

    // the node's own TCP services, at every address it has: a server on the
    // node (on its underlay address and a second one), and the agents'
    // metrics; an outside host reaches them all, no container does
    let extra: IpAddr = if v6 {
        "2001:db8:99::1".parse()?
    } else {
        "10.99.99.1".parse()?
    };
    let plen = if v6 { "128" } else { "32" };
    exec_ok(
        &n1.ns,
        &["ip", "addr", "add", &format!("{extra}/{plen}"), "dev", "lo"],
    )?;
    let _srv = answer_server(
        &n1.ns,
        SocketAddr::new(
            if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            },
            7999,
        ),
        false,
        |_| "node".to_string(),
    )?;
    let node_targets = [
        SocketAddr::new(n1.underlay_addr(), 7999),
        SocketAddr::new(extra, 7999),
        metrics(&n1).parse()?,
        metrics(&n2).parse()?,
    ];
    // the outside host routes the extra address through n1
    exec_ok(
        &x.ns,
        &[
            "ip",
            "route",
            "add",
            &format!("{extra}/{plen}"),
            "via",
            &n1.underlay_addr().to_string(),
        ],
    )?;
    for dst in &node_targets {
        assert!(
            connects(&x.ns, *dst)?,
            "control: the outside host reaches {dst}"
        );
        for ns in [&att, &atts] {
            assert!(
                !connects(ns, *dst)?,
                "container {ns} reached the node's {dst}"
            );
        }
    }
    // ordinary egress goes on: an outside host's service, its port 4790
    let outside = SocketAddr::new(x.underlay_addr(), 7000);
    let _who = answer_server(&x.ns, outside, false, |_| "x".to_string())?;
    for ns in [&att, &atts] {
        assert!(connects(ns, outside)?, "egress from {ns} still works");
    }
    // a container's own WireGuard server outside is no node's: reached
    let wg_out = SocketAddr::new(x.underlay_addr(), 51820);
    let wg_sink = UdpSink::start(&x.ns, wg_out)?;
    send_from(&att, wg_out, &[b"to-my-own-wireguard".to_vec()])?;
    let reached = eventually(Duration::from_secs(3), || {
        Ok(markers(&wg_sink).iter().any(|m| m == "to-my-own-wireguard"))
    })?;
    assert!(
        reached,
        "a container's datagram to an outside WireGuard port"
    );
    // and the node still reaches its own containers (the replies come in
    // through the TAP the input hook guards)
    let att_ip = ipv4_of(&att, "eth0")?;
    let _web = answer_server(&att, (att_ip, 8081).into(), false, |_| "att".to_string())?;
    assert!(
        connects(&n1.ns, (att_ip, 8081).into())?,
        "n1 reaches its container {att_ip}"
    );
    Ok(())
}

#[test]
fn a_container_forges_no_vxlan_and_reaches_no_node_service_ipv4() -> anyhow::Result<()> {
    attack(Topology::new("nodesvc4")?, false, true)
}

#[test]
fn a_container_forges_no_vxlan_and_reaches_no_node_service_ipv6() -> anyhow::Result<()> {
    attack(Topology::with_underlay_v6("nodesvc6")?, true, true)
}

/// The kernel's layer alone (the switch's guard left out by a test fault):
/// what the switch would have refused, the egress table refuses.
#[test]
fn the_egress_table_alone_keeps_forged_vxlan_and_node_services_from_containers(
) -> anyhow::Result<()> {
    attack(Topology::new("nodesvct")?, false, false)
}

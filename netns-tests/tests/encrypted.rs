//! Encrypted networks: frames cross the underlay only inside WireGuard, beside a
//! plain network on the same nodes; forged, replayed, unknown-key and plaintext
//! datagrams are dropped and counted; keys rotate without losing packets; a stock
//! WireGuard peer (wireguard-go) with the kernel's VXLAN behind it interoperates,
//! and once removed from the store can no longer send.

mod common;

use common::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use vxmesh_netns_tests::*;

fn node_json(t: &Topology, via: &Node, name: &str) -> anyhow::Result<serde_json::Value> {
    let nodes = t.cli_json(via, &["node", "ls"])?;
    nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
        .ok_or_else(|| anyhow::anyhow!("node {name} not listed: {nodes}"))
}

#[test]
fn encrypted_beside_plain_and_bad_datagrams_counted() -> anyhow::Result<()> {
    let mut t = Topology::new("enc")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let x = t.add_outside_host("x")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    let sec = t.cli_json(
        &n1,
        &[
            "network",
            "create",
            "sec",
            "--encrypted",
            "--subnet",
            "10.41.0.0/24",
        ],
    )?;
    let pln = t.cli_json(
        &n1,
        &["network", "create", "pln", "--subnet", "10.42.0.0/24"],
    )?;
    let (sec_vni, pln_vni) = (
        sec["vni"].as_u64().unwrap() as u32,
        pln["vni"].as_u64().unwrap() as u32,
    );
    let s1 = t.add_container("s1")?;
    let s2 = t.add_container("s2")?;
    let p1 = t.add_container("p1")?;
    let p2 = t.add_container("p2")?;
    let es1 = endpoint(&t, &n1, "sec", &s1, &[])?;
    let es2 = endpoint(&t, &n2, "sec", &s2, &[])?;
    let ep1 = endpoint(&t, &n1, "pln", &p1, &[])?;
    let ep2 = endpoint(&t, &n2, "pln", &p2, &[])?;

    // MTU: 1500 - 50 (VXLAN) - 75 (inner IPv4/UDP, WireGuard header and tag, padding)
    let mtu = |ns: &str| -> anyhow::Result<String> {
        Ok(exec_ok(ns, &["cat", "/sys/class/net/eth0/mtu"])?
            .trim()
            .to_string())
    };
    assert_eq!(mtu(&s1)?, "1375");
    assert_eq!(mtu(&p1)?, "1450");

    // capture everything on the underlay while both networks carry marked traffic
    let pcap = t.dir().join("underlay.pcap");
    let ul = format!("{}-ul", t.prefix());
    let mut cap = Bg::spawn(
        &ul,
        &[
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "-s",
            "0",
            "-w",
            pcap.to_str().unwrap(),
            "udp",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(800));
    assert!(ping(&s1, &es2.ip, 3, None)?, "encrypted, across nodes");
    assert!(
        ping(&p1, &ep2.ip, 3, None)?,
        "plain, across nodes, same pair of nodes"
    );
    let secret = b"VXMESH-SECRET-PAYLOAD-0123456789".repeat(2000);
    let plain = b"VXMESH-PLAIN-PAYLOAD-9876543210".repeat(2000);
    let srv = tcp_echo_server(&s2, SocketAddr::new(es2.ip.parse()?, 7100))?;
    assert!(tcp_roundtrip(&s1, srv.local_addr(), &secret, Duration::from_secs(20))? == secret);
    let psrv = tcp_echo_server(&p2, SocketAddr::new(ep2.ip.parse()?, 7101))?;
    assert!(tcp_roundtrip(&p1, psrv.local_addr(), &plain, Duration::from_secs(20))? == plain);
    // a full-size packet across the encrypted network, and one too big for it
    assert!(
        ping(&s1, &es2.ip, 2, Some(1375 - 28))?,
        "a packet of exactly the MTU crosses"
    );
    exec_ok(&s1, &["ip", "link", "set", "dev", "eth0", "mtu", "1450"])?;
    let out = exec(
        &s1,
        &[
            "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", &es2.ip,
        ],
    )?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu = 1375") || text.contains("mtu=1375"),
        "no ICMP frag-needed with the MTU: {text}"
    );
    exec_ok(&s1, &["ip", "link", "set", "dev", "eth0", "mtu", "1375"])?;
    std::thread::sleep(Duration::from_millis(500));
    cap.stop();

    let (frames, udp) = read_pcap(&pcap)?;
    let vnis: std::collections::BTreeSet<u32> = udp
        .iter()
        .filter(|u| u.dport == 4789 && u.payload.len() >= 8)
        .map(|u| u32::from_be_bytes([0, u.payload[4], u.payload[5], u.payload[6]]))
        .collect();
    assert!(
        vnis.contains(&pln_vni),
        "the capture saw the plain network (the probe works)"
    );
    assert!(
        !vnis.contains(&sec_vni),
        "VXLAN of the encrypted network on the underlay"
    );
    assert!(
        frames.iter().any(|f| contains(f, b"VXMESH-PLAIN-PAYLOAD")),
        "plain payload visible: the probe works"
    );
    assert!(
        !frames.iter().any(|f| contains(f, b"VXMESH-SECRET-PAYLOAD")),
        "encrypted payload visible on the underlay"
    );
    let wg: Vec<&CapturedUdp> = udp.iter().filter(|u| u.dport == 51820).collect();
    assert!(
        wg.len() > 10,
        "the encrypted traffic went through WireGuard"
    );

    // replay a data message n1 sent to n2, from elsewhere; then a forged one
    let data = wg
        .iter()
        .rfind(|u| u.dst == n2.addr && u.payload.first() == Some(&4) && u.payload.len() > 100)
        .expect("a WireGuard data message to n2");
    let n2_wg = SocketAddr::new(n2.addr.into(), 51820);
    let before = t.cli_json(&n2, &["stats"])?;
    udp_send_raw(&x.ns, n2_wg, std::slice::from_ref(&data.payload))?;
    let mut forged = data.payload.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x55;
    // a counter far past anything seen, so it is the authentication tag that fails
    forged[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    udp_send_raw(&x.ns, n2_wg, &[forged, b"not wireguard at all".to_vec()])?;
    // a handshake from a key n2 does not know
    let mut stranger = vxmesh_dataplane::tunnel::Tunnels::new();
    let n2_pub = vxmesh_dataplane_key(&node_json(&t, &n1, "n2")?["public_key"])?;
    let mut init = Vec::new();
    stranger.configure(
        vxmesh_dataplane::tunnel::TunnelConfig {
            local_vtep: Ipv4Addr::new(100, 64, 9, 9),
            keys: vec![[7u8; 32]],
            preshared: None,
            peers: vec![vxmesh_dataplane::tunnel::TunnelPeer {
                vtep: Ipv4Addr::new(100, 64, 0, 2),
                endpoint: n2_wg,
                public: n2_pub,
            }],
        },
        std::time::Instant::now(),
        &mut |_, _| {},
    );
    let _ = stranger.send_to(Ipv4Addr::new(100, 64, 0, 2), &[0x45; 60], &mut |d, _| {
        init.push(d.to_vec())
    });
    udp_send_raw(&x.ns, n2_wg, &init)?;
    // plain VXLAN for the encrypted VNI, from a member node, straight to 4789
    let inner = udp_frame(
        es1.mac,
        es2.mac,
        octets(&es1.ip),
        octets(&es2.ip),
        9,
        b"in the clear",
    );
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&sec_vni.to_be_bytes()[1..]);
    vx.push(0);
    vx.extend_from_slice(&inner);
    udp_send_raw(&n1.ns, SocketAddr::new(n2.addr.into(), 4789), &[vx])?;

    let grew = |reason: &str| -> anyhow::Result<bool> {
        let was = before["drops"][reason].as_u64().unwrap_or(0);
        eventually(Duration::from_secs(3), || {
            Ok(dropped(&t, &n2, reason)? > was)
        })
    };
    for reason in [
        "tunnel_replay",
        "tunnel_auth",
        "tunnel_invalid",
        "tunnel_no_peer",
        "unencrypted",
    ] {
        assert!(
            grew(reason)?,
            "{reason} not counted: {}",
            t.cli_json(&n2, &["stats"])?["drops"]
        );
    }
    // and traffic goes on, on both networks
    assert!(ping(&s2, &es1.ip, 2, None)?);
    assert!(ping(&p2, &ep1.ip, 2, None)?);
    Ok(())
}

fn vxmesh_dataplane_key(v: &serde_json::Value) -> anyhow::Result<[u8; 32]> {
    use std::process::Command;
    // decode base64 with the same tool users have (no base64 crate in the harness)
    let s = v.as_str().ok_or_else(|| anyhow::anyhow!("no public key"))?;
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("printf %s '{s}' | base64 -d | od -An -tx1 -v"),
        ])
        .output()?;
    let bytes: Vec<u8> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("public key {s} is not 32 bytes"))
}

#[test]
fn key_rotation_loses_no_packets() -> anyhow::Result<()> {
    let mut t = Topology::new("rot")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    // one preshared key for the cluster, on top of the static keys
    let psk = t.dir().join("psk");
    std::fs::write(&psk, exec_ok(&n1.ns, &["wg", "genpsk"])?)?;
    let psk_path = psk.clone();
    let psk = psk.to_str().unwrap().to_string();
    // a preshared key others can read is refused, saying how to fix it
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&psk_path, std::fs::Permissions::from_mode(0o644))?;
    let e = t
        .start_agent(&n2, &["--preshared-key-file", &psk])
        .unwrap_err();
    assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
    std::fs::set_permissions(&psk_path, std::fs::Permissions::from_mode(0o600))?;
    // n1 also rotates on its own schedule, as Docker does every 12 h
    t.start_agent(
        &n1,
        &[
            "--key-rotation-interval",
            "3s",
            "--preshared-key-file",
            &psk,
        ],
    )?;
    t.start_agent(&n2, &["--preshared-key-file", &psk])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "sec",
            "--encrypted",
            "--subnet",
            "10.44.0.0/24",
        ],
    )?;
    let c1 = t.add_container("c1")?;
    let c2 = t.add_container("c2")?;
    let _e1 = endpoint(&t, &n1, "sec", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "sec", &c2, &[])?;
    assert!(ping(&c1, &e2.ip, 3, None)?);
    let key = |n: &str| -> anyhow::Result<String> {
        Ok(node_json(&t, &n1, n)?["public_key"]
            .as_str()
            .unwrap_or("")
            .to_string())
    };
    let (k1, k2) = (key("n1")?, key("n2")?);
    // 600 pings over 6 s; n2's key is rotated on request a second in, and n1's
    // scheduled rotation falls in the window too
    let c1c = c1.clone();
    let dst = e2.ip.clone();
    let pinger = std::thread::spawn(move || {
        ping_counts(&c1c, &dst, &["-c", "600", "-i", "0.01", "-W", "1"])
    });
    std::thread::sleep(Duration::from_secs(1));
    t.cli_ok(&n1, &["node", "rotate-key", "n2"])?;
    let (sent, got) = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("pinger panicked"))??;
    let (k1b, k2b) = (key("n1")?, key("n2")?);
    assert_ne!(k2, k2b, "n2's key was not rotated");
    assert_ne!(k1, k1b, "n1's scheduled rotation did not happen");
    println!("rotation: {sent} sent, {got} received, {} lost", sent - got);
    assert_eq!(sent, got, "packets lost during key rotation");
    // the private key is never in the store, logs or CLI output
    let secret = std::fs::read_to_string(t.dir().join("n2").join("node.key"))?;
    let dump = std::fs::read(t.dir().join("store.db"))?;
    assert!(
        !contains(&dump, secret.trim().as_bytes()),
        "private key in the store"
    );
    assert!(
        !t.agent_log(&n2).contains(secret.trim()),
        "private key in the log"
    );
    Ok(())
}

#[test]
fn wireguard_go_with_kernel_vxlan_interoperates() -> anyhow::Result<()> {
    let mut t = Topology::new("wgo")?;
    let n1 = t.add_node("n1")?;
    let k = t.add_outside_host("k")?;
    t.start_agent(&n1, &[])?;
    let c1 = t.add_container("c1")?;
    let ck = t.add_container("ck")?;
    let n1j = node_json(&t, &n1, "n1")?;
    let (n1_pub, n1_tun) = (
        n1j["public_key"].as_str().unwrap().to_string(),
        n1j["tunnel_addr"].as_str().unwrap().to_string(),
    );

    // the stock WireGuard peer: wireguard-go on wg0, the kernel's VXLAN over it
    let (k_priv, k_pub) = wg_keypair(&k.ns)?;
    let n1_peer = WgPeer {
        public_key: n1_pub.clone(),
        endpoint: SocketAddr::new(n1.addr.into(), 51820),
        tunnel_addr: n1_tun.parse()?,
    };
    let _wg = WgVxlanHost {
        node: &k,
        private_key: &k_priv,
        tunnel_addr: Ipv4Addr::new(100, 64, 255, 1),
        peers: std::slice::from_ref(&n1_peer),
        vni: 6001,
        container_ns: &ck,
        container_cidr: "10.43.0.200/24",
        mtu: 1370,
    }
    .start(t.dir())?;

    // vxmesh: the peer declared with its key and tunnel address, named by --peer-vtep
    let k_addr = k.addr.to_string();
    t.cli_ok(
        &n1,
        &[
            "node",
            "add",
            "k",
            "--advertise-addr",
            &k_addr,
            "--public-key",
            &k_pub,
            "--tunnel-addr",
            "100.64.255.1",
        ],
    )?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "wgn",
            "--encrypted",
            "--subnet",
            "10.43.0.0/24",
            "--vni",
            "6001",
            "--peer-vtep",
            "100.64.255.1",
        ],
    )?;
    let e1 = endpoint(&t, &n1, "wgn", &c1, &[])?;

    assert!(
        ping(&c1, "10.43.0.200", 5, None)?,
        "vxmesh -> wireguard-go + kernel VXLAN"
    );
    assert!(
        ping(&ck, &e1.ip, 3, None)?,
        "wireguard-go + kernel VXLAN -> vxmesh"
    );
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
    let srv = tcp_echo_server(&ck, "10.43.0.200:6100".parse()?)?;
    assert!(tcp_roundtrip(&c1, srv.local_addr(), &payload, Duration::from_secs(20))? == payload);
    let srv = tcp_echo_server(&c1, SocketAddr::new(e1.ip.parse()?, 6101))?;
    assert!(tcp_roundtrip(&ck, srv.local_addr(), &payload, Duration::from_secs(20))? == payload);
    let hs = exec_ok(&k.ns, &["wg", "show", "wg-k", "latest-handshakes"])?;
    assert!(
        hs.split_whitespace().nth(1).is_some_and(|t| t != "0"),
        "no handshake: {hs}"
    );

    // the peer's key removed from the store: it can no longer send into the network
    t.cli_ok(&n1, &["network", "rm", "wgn"]).ok();
    t.cli_ok(&n1, &["node", "rm", "k"])?;
    // (the agent applies the removal within a store poll; give it that long)
    let cut = eventually(Duration::from_secs(3), || Ok(!ping(&ck, &e1.ip, 1, None)?))?;
    assert!(cut, "a removed peer still gets through");
    let before = dropped(&t, &n1, "tunnel_no_peer")?;
    assert!(
        !ping(&ck, &e1.ip, 3, None)?,
        "a removed peer still gets through"
    );
    let counted = eventually(Duration::from_secs(2), || {
        Ok(dropped(&t, &n1, "tunnel_no_peer")? > before)
    })?;
    assert!(counted, "its datagrams were not counted");
    Ok(())
}

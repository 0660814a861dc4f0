//! An IPv6-only underlay: nodes advertise IPv6 addresses and no underlay link
//! has an IPv4 one. Plain networks cross it as VXLAN over IPv6 UDP, encrypted
//! ones as WireGuard over IPv6 UDP, every datagram with a correct, nonzero UDP
//! checksum (mandatory over IPv6), GSO runs included and also where the
//! sending device cannot finish checksums; the Linux kernel's own VXLAN over
//! IPv6 is a peer, with and without UDP checksums, and so is wireguard-go; the
//! routing mesh's ingress network crosses it too.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

/// 1500 (the underlay's MTU) - IPv6 40 - UDP 8 - VXLAN 8 - inner Ethernet 14.
const PLAIN_MTU: u32 = 1430;
/// PLAIN_MTU - WireGuard 75 (inner IPv4 + UDP 28, header and tag 32, padding 15).
const ENCRYPTED_MTU: u32 = 1355;

/// A UDP datagram over IPv6 seen in a capture.
struct Udp6 {
    src: Ipv6Addr,
    dport: u16,
    /// The checksum field as sent.
    checksum: u16,
    /// The checksum the datagram should carry (the pseudo-header over IPv6).
    want: u16,
    payload: Vec<u8>,
    fragmented: bool,
}

/// What a capture held: the UDP-over-IPv6 datagrams, and the source MACs of
/// the IPv4 and ARP frames (none from a node should be, on an IPv6-only
/// underlay; the test bridge itself sends IGMP when its ports come up).
struct Capture {
    udp6: Vec<Udp6>,
    ipv4_or_arp: Vec<String>,
}

/// Reads a classic pcap file of Ethernet frames (what `tcpdump -w` writes).
fn read_capture(path: &Path) -> Result<Capture> {
    let (frames, _) = read_pcap(path)?;
    let mut out = Capture {
        udp6: Vec::new(),
        ipv4_or_arp: Vec::new(),
    };
    for f in &frames {
        if f.len() >= 14 && matches!([f[12], f[13]], [0x08, 0x00] | [0x08, 0x06]) {
            out.ipv4_or_arp.push(
                f[6..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            );
            continue;
        }
        let Ok(p) = etherparse::SlicedPacket::from_ethernet(f) else {
            continue;
        };
        let (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Udp(u))) =
            (&p.net, &p.transport)
        else {
            continue;
        };
        let hdr = ip.header().to_header();
        let want = u
            .to_header()
            .calc_checksum_ipv6(&hdr, u.payload())
            .context("checksum")?;
        out.udp6.push(Udp6 {
            src: hdr.source.into(),
            dport: u.destination_port(),
            checksum: u.checksum(),
            want,
            payload: u.payload().to_vec(),
            fragmented: ip.is_payload_fragmented(),
        });
    }
    Ok(out)
}

/// Starts tcpdump on `ns`'s `ul0` for what the node receives (`-Q in`): those
/// datagrams left the underlay bridge through a port that finished their
/// checksums (see the test), so the bytes are what a wire would carry.
fn capture_in(t: &Topology, ns: &str, file: &str) -> Result<(Bg, std::path::PathBuf)> {
    capture(t, ns, "in", file)
}

/// `direction`: tcpdump's `-Q` (`in`, `out`). What a node sends is seen as it
/// left the socket: a GSO run is one frame, before the device cuts it.
fn capture(
    t: &Topology,
    ns: &str,
    direction: &str,
    file: &str,
) -> Result<(Bg, std::path::PathBuf)> {
    let path = t.dir().join(file);
    let bg = Bg::spawn(
        ns,
        &[
            "tcpdump",
            "-i",
            "ul0",
            "-Q",
            direction,
            "-U",
            "-s",
            "0",
            "-w",
            path.to_str().context("path")?,
        ],
    )?;
    // tcpdump needs a moment before it captures
    let end = Instant::now() + Duration::from_secs(5);
    while !path.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok((bg, path))
}

fn vni_of(payload: &[u8]) -> Option<u32> {
    (payload.len() >= 8 && payload[0] & 0x08 != 0)
        .then(|| u32::from_be_bytes([0, payload[4], payload[5], payload[6]]))
}

fn ul0_mac(ns: &str) -> Result<String> {
    Ok(exec_ok(ns, &["cat", "/sys/class/net/ul0/address"])?
        .trim()
        .to_string())
}

fn mtu(ns: &str) -> Result<u32> {
    Ok(exec_ok(ns, &["cat", "/sys/class/net/eth0/mtu"])?
        .trim()
        .parse()?)
}

fn vni(t: &Topology, node: &Node, net: &str) -> Result<u32> {
    let v = t.cli_json(node, &["network", "inspect", net])?;
    v["vni"]
        .as_u64()
        .map(|v| v as u32)
        .with_context(|| format!("no vni in {v}"))
}

/// `len` bytes through a TCP echo server and back; returns the seconds taken.
fn tcp_echo(from: &str, srv: SocketAddr, len: usize) -> Result<f64> {
    let payload: Vec<u8> = (0..len as u32).map(|i| (i * 7 % 251) as u8).collect();
    let start = Instant::now();
    let back = tcp_roundtrip(from, srv, &payload, Duration::from_secs(60))?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        back == payload,
        "TCP payload came back changed ({} of {len} bytes)",
        back.len()
    );
    Ok(secs)
}

fn stat(t: &Topology, node: &Node, key: &str) -> Result<u64> {
    let v = t.cli_json(node, &["stats"])?;
    v[key].as_u64().with_context(|| format!("no {key} in {v}"))
}

/// Checks every VXLAN and WireGuard datagram of a capture: sent by `from`,
/// not fragmented, with a nonzero checksum that is the right one. Returns
/// (VXLAN datagrams of `vni`, WireGuard datagrams, largest VXLAN payload).
fn check_datagrams(cap: &Capture, from: Ipv6Addr, vni: u32) -> Result<(usize, usize, usize)> {
    let (mut vx, mut wg, mut largest) = (0, 0, 0);
    for d in cap
        .udp6
        .iter()
        .filter(|d| d.dport == 4789 || d.dport == 51820)
    {
        ensure!(
            d.src == from,
            "a datagram to port {} from {}, not {from}",
            d.dport,
            d.src
        );
        ensure!(!d.fragmented, "a fragmented datagram to port {}", d.dport);
        ensure!(
            d.checksum != 0,
            "a datagram to port {} without a UDP checksum",
            d.dport
        );
        ensure!(
            d.checksum == d.want,
            "a datagram to port {} with UDP checksum {:#06x}, not {:#06x}",
            d.dport,
            d.checksum,
            d.want
        );
        if d.dport == 51820 {
            wg += 1;
        } else if vni_of(&d.payload) == Some(vni) {
            vx += 1;
            largest = largest.max(d.payload.len());
        }
    }
    Ok((vx, wg, largest))
}

#[test]
fn plain_and_encrypted_networks_over_an_ipv6_only_underlay() -> Result<()> {
    let mut t = Topology::with_underlay_v6("ulv6")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let (a1, a2) = (n1.addr6.context("v6")?, n2.addr6.context("v6")?);
    for n in [&n1, &n2] {
        let v4 = exec_ok(&n.ns, &["ip", "-4", "-o", "addr", "show", "dev", "ul0"])?;
        assert!(v4.trim().is_empty(), "IPv4 on {}'s underlay: {v4}", n.name);
    }
    // The bridge's ports toward the nodes finish UDP checksums in software
    // (cutting GSO runs first): a veth otherwise passes the sender's partial
    // checksum along, and the captures could not tell a right one.
    let ul = t.underlay_ns().to_string();
    for n in [&n1, &n2] {
        let port = t.underlay_port(n).context("underlay port")?.to_string();
        exec_ok(&ul, &["ethtool", "-K", &port, "tx", "off"])?;
    }
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    let nodes = t.cli_json(&n1, &["node", "ls"])?;
    let addrs: Vec<String> = nodes
        .as_array()
        .context("node ls")?
        .iter()
        .filter_map(|n| n["advertise_addr"].as_str().map(str::to_string))
        .collect();
    assert!(
        addrs.contains(&a1.to_string()) && addrs.contains(&a2.to_string()),
        "{nodes}"
    );
    assert_eq!(stat(&t, &n1, "endpoint_mtu")?, u64::from(PLAIN_MTU));

    t.cli_ok(
        &n1,
        &["network", "create", "pl", "--subnet", "10.61.0.0/24"],
    )?;
    t.cli_ok(
        &n2,
        &[
            "network",
            "create",
            "sec",
            "--subnet",
            "10.62.0.0/24",
            "--encrypted",
        ],
    )?;
    let (pl_vni, sec_vni) = (vni(&t, &n1, "pl")?, vni(&t, &n1, "sec")?);
    let c1 = t.add_container("c1")?;
    let c2 = t.add_container("c2")?;
    let s1 = t.add_container("s1")?;
    let s2 = t.add_container("s2")?;
    let e1 = endpoint(&t, &n1, "pl", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "pl", &c2, &[])?;
    let es1 = endpoint(&t, &n1, "sec", &s1, &[])?;
    let es2 = endpoint(&t, &n2, "sec", &s2, &[])?;
    // MTU: 1500 - 70 over IPv6 (- 75 more for WireGuard)
    assert_eq!(mtu(&c1)?, PLAIN_MTU);
    assert_eq!(mtu(&c2)?, PLAIN_MTU);
    assert_eq!(mtu(&s1)?, ENCRYPTED_MTU);

    let (mut cap1, pcap1) = capture_in(&t, &n1.ns, "n1-in.pcap")?;
    let (mut cap2, pcap2) = capture_in(&t, &n2.ns, "n2-in.pcap")?;
    let (mut out1, pcap_out1) = capture(&t, &n1.ns, "out", "n1-out.pcap")?;

    // plain: ping both ways, then packets of exactly the MTU (DF set), which
    // must cross whole: 1430 + 14 + 8 + 8 + 40 = 1500
    assert!(ping(&c1, &e2.ip, 3, None)?, "ping n1 -> n2 over IPv6");
    assert!(ping(&c2, &e1.ip, 3, None)?, "ping n2 -> n1 over IPv6");
    assert!(
        ping(&c1, &e2.ip, 3, Some(PLAIN_MTU - 28))?,
        "a packet of exactly the MTU, n1 -> n2"
    );
    assert!(
        ping(&c2, &e1.ip, 3, Some(PLAIN_MTU - 28))?,
        "a packet of exactly the MTU, n2 -> n1"
    );
    // TCP both ways: TSO super-frames from the TAPs leave as GSO runs
    let len = 4 << 20;
    let srv2 = tcp_echo_server(&c2, SocketAddr::new(e2.ip.parse()?, 5000))?;
    let secs = tcp_echo(&c1, srv2.local_addr(), len)?;
    eprintln!(
        "plain over IPv6, GSO: {} MiB each way in {secs:.2} s ({:.0} Mbit/s each way)",
        len >> 20,
        len as f64 * 8.0 / secs / 1e6
    );
    let srv1 = tcp_echo_server(&c1, SocketAddr::new(e1.ip.parse()?, 5001))?;
    tcp_echo(&c2, srv1.local_addr(), len)?;

    // encrypted: WireGuard over the IPv6 underlay
    assert!(ping(&s1, &es2.ip, 3, None)?, "encrypted ping over IPv6");
    assert!(ping(&s2, &es1.ip, 3, None)?, "encrypted ping back");
    assert!(
        ping(&s1, &es2.ip, 2, Some(ENCRYPTED_MTU - 28))?,
        "an encrypted packet of exactly the MTU"
    );
    let ssrv = tcp_echo_server(&s2, SocketAddr::new(es2.ip.parse()?, 5002))?;
    let secs = tcp_echo(&s1, ssrv.local_addr(), 1 << 20)?;
    eprintln!("encrypted over IPv6: 1 MiB each way in {secs:.2} s");

    // n1's own underlay device stops finishing checksums. Kernels before 6.11
    // refuse UDP GSO then (EIO) and the agent sends each datagram alone; later
    // ones checksum the run in software. Either way nothing is lost and the
    // checksums (checked below) are right.
    exec_ok(&n1.ns, &["ethtool", "-K", "ul0", "tx", "off"])?;
    let secs = tcp_echo(&c1, srv2.local_addr(), len)?;
    let fell_back = t.agent_log(&n1).contains("UDP GSO refused");
    eprintln!(
        "plain over IPv6, n1 without checksum offload: {} MiB each way in {secs:.2} s ({})",
        len >> 20,
        if fell_back {
            "the kernel refused GSO: sent one by one"
        } else {
            "GSO runs checksummed by the kernel in software"
        }
    );
    tcp_echo(&s1, ssrv.local_addr(), 1 << 20)?;
    assert!(ping(&c2, &e1.ip, 2, Some(PLAIN_MTU - 28))?);

    std::thread::sleep(Duration::from_millis(300));
    cap1.stop();
    cap2.stop();
    out1.stop();

    // what n2 received from n1, and n1 from n2
    let at2 = read_capture(&pcap2)?;
    let at1 = read_capture(&pcap1)?;
    let (vx12, wg12, big12) = check_datagrams(&at2, a1, pl_vni)?;
    let (vx21, wg21, big21) = check_datagrams(&at1, a2, pl_vni)?;
    eprintln!(
        "n1 -> n2: {vx12} VXLAN datagrams (largest {big12} B), {wg12} WireGuard; \
         n2 -> n1: {vx21} VXLAN (largest {big21} B), {wg21} WireGuard; \
         all with correct nonzero UDP checksums"
    );
    // 3 x 4 MiB of TCP payload went n1 -> n2 in 1378-byte segments at most
    assert!(
        vx12 > 3 * (4 << 20) / 1400,
        "{vx12} VXLAN datagrams n1 -> n2"
    );
    assert!(vx21 > 4 << 20 >> 11, "{vx21} VXLAN datagrams n2 -> n1");
    assert_eq!(
        (big12, big21),
        (PLAIN_MTU as usize + 14 + 8, PLAIN_MTU as usize + 14 + 8),
        "full-size frames cross whole"
    );
    assert!(wg12 > 100 && wg21 > 100, "WireGuard {wg12} / {wg21}");
    // n1 sent GSO runs: frames larger than the link's MTU as they left the
    // socket, each cut into datagrams whose checksums n2's capture checked
    let runs = read_capture(&pcap_out1)?
        .udp6
        .iter()
        .filter(|d| d.dport == 4789 && d.payload.len() > PLAIN_MTU as usize + 22)
        .count();
    eprintln!("n1 sent {runs} VXLAN GSO runs");
    assert!(runs > 10, "n1 sent {runs} GSO runs");
    // the encrypted network's VXLAN never shows on the underlay
    assert!(!at2
        .udp6
        .iter()
        .chain(&at1.udp6)
        .any(|d| d.dport == 4789 && vni_of(&d.payload) == Some(sec_vni)));
    let node_macs = [ul0_mac(&n1.ns)?, ul0_mac(&n2.ns)?];
    let v4: Vec<&String> = at1
        .ipv4_or_arp
        .iter()
        .chain(&at2.ipv4_or_arp)
        .filter(|m| node_macs.contains(m))
        .collect();
    assert!(
        v4.is_empty(),
        "IPv4 or ARP from a node on the IPv6 underlay: {v4:?}"
    );
    // the agents counted them as VXLAN sent and received
    let tx1 = stat(&t, &n1, "underlay_tx")?;
    let rx2 = stat(&t, &n2, "underlay_rx")?;
    assert!(
        tx1 >= vx12 as u64 && rx2 >= vx12 as u64,
        "{tx1} {rx2} {vx12}"
    );
    assert_eq!(dropped(&t, &n1, "tx_failed")?, 0);
    assert_eq!(dropped(&t, &n2, "tx_failed")?, 0);
    assert_eq!(dropped(&t, &n2, "not_member")?, 0);
    Ok(())
}

/// The Linux kernel's VXLAN over IPv6 is a static peer (`--peer-vtep` an IPv6
/// address): with UDP checksums (the kernel's default) and without them
/// (`udp6zerocsumtx`, which RFC 6935 allows tunnels and RFC 7348 says a VTEP
/// must accept).
#[test]
fn kernel_vxlan_over_ipv6_is_a_peer() -> Result<()> {
    let mut t = Topology::with_underlay_v6("kvx6")?;
    let n1 = t.add_node("n1")?;
    let k = t.add_outside_host("k")?;
    let kz = t.add_outside_host("kz")?;
    t.start_agent(&n1, &[])?;
    let (kaddr, kzaddr) = (
        k.underlay_addr().to_string(),
        kz.underlay_addr().to_string(),
    );
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "kv",
            "--subnet",
            "10.63.0.0/24",
            "--vni",
            "5006",
            "--peer-vtep",
            &kaddr,
            "--peer-vtep",
            &kzaddr,
        ],
    )?;
    let c1 = t.add_container("c1")?;
    let ck = t.add_container("ck")?;
    let ckz = t.add_container("ckz")?;
    let e1 = endpoint(&t, &n1, "kv", &c1, &[])?;
    let peers: Vec<IpAddr> = vec![n1.underlay_addr()];
    let kernel = |node: &Node, ns: &str, cidr: &str| KernelVxlanNode {
        node: node.clone(),
        vni: 5006,
        peers: Vec::new(),
        container_ns: ns.to_string(),
        container_cidr: cidr.to_string(),
        mtu: PLAIN_MTU,
        kernel_peers_only: false,
    };
    kernel(&k, &ck, "10.63.0.200/24").setup_with_peers(&peers, &[])?;
    kernel(&kz, &ckz, "10.63.0.201/24").setup_with_peers(&peers, &["udp6zerocsumtx"])?;
    let (mut cap, pcap) = capture_in(&t, &n1.ns, "n1-in.pcap")?;

    for (c, addr) in [(&ck, "10.63.0.200"), (&ckz, "10.63.0.201")] {
        assert!(ping(&c1, addr, 3, None)?, "vxmesh -> kernel {addr}");
        assert!(ping(c, &e1.ip, 3, None)?, "kernel {addr} -> vxmesh");
        assert!(
            ping(c, &e1.ip, 2, Some(PLAIN_MTU - 28))?,
            "a full-size packet from kernel {addr}"
        );
        assert!(
            ping(&c1, addr, 2, Some(PLAIN_MTU - 28))?,
            "a full-size packet to kernel {addr}"
        );
        let srv = tcp_echo_server(c, SocketAddr::new(addr.parse()?, 6000))?;
        tcp_echo(&c1, srv.local_addr(), 1 << 20)?;
    }
    let srv = tcp_echo_server(&c1, SocketAddr::new(e1.ip.parse()?, 6001))?;
    tcp_echo(&ck, srv.local_addr(), 1 << 20)?;
    tcp_echo(&ckz, srv.local_addr(), 1 << 20)?;
    std::thread::sleep(Duration::from_millis(300));
    cap.stop();

    // the probe is real: kz's datagrams came without checksums, k's with
    let got = read_capture(&pcap)?;
    let from = |a: &str, zero: bool| {
        got.udp6
            .iter()
            .filter(|d| d.dport == 4789 && d.src.to_string() == a && (d.checksum == 0) == zero)
            .count()
    };
    let (k_sum, k_zero, kz_sum, kz_zero) = (
        from(&kaddr, false),
        from(&kaddr, true),
        from(&kzaddr, false),
        from(&kzaddr, true),
    );
    eprintln!(
        "from the kernel: {k_sum} checksummed + {k_zero} zero; from udp6zerocsumtx: {kz_sum} + {kz_zero}"
    );
    assert!(k_sum > 100 && k_zero == 0, "{k_sum} {k_zero}");
    assert!(kz_zero > 100 && kz_sum == 0, "{kz_sum} {kz_zero}");
    let stats = t.cli_json(&n1, &["stats"])?;
    assert!(stats["learned"].as_u64().unwrap_or(0) >= 2, "{stats}");
    Ok(())
}

/// The routing mesh's ingress network crosses an IPv6 underlay too: a port
/// published on n1, asked on n1 itself and by an outside client at either
/// node's IPv6 address, reaches the task on n2 and answers.
#[test]
fn a_published_port_reaches_a_task_across_an_ipv6_underlay() -> Result<()> {
    let mut t = Topology::with_underlay_v6("ingv6")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "app", "--subnet", "10.64.0.0/24"],
    )?;
    t.cli_ok(
        &n1,
        &[
            "service",
            "create",
            "web",
            "--network",
            "app",
            "--publish",
            "8080:80",
        ],
    )?;
    let client = t.add_outside_host("client")?;
    let web = t.add_container("web1")?;
    endpoint(&t, &n2, "app", &web, &["--service", "web"])?;
    // IPv6 clients arrive on the task's IPv6 ingress address
    let _srv = answer_server(&web, "[::]:80".parse()?, false, |_| "web".into())?;
    let dst: SocketAddr = "127.0.0.1:8080".parse()?;
    let ask = || -> Result<bool> {
        let got = in_netns(&n1.ns, move || {
            use std::io::Read;
            let mut c = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            let mut s = String::new();
            c.read_to_string(&mut s).ok()?;
            Some(s)
        })?;
        Ok(got.as_deref() == Some("web"))
    };
    assert!(
        eventually(Duration::from_secs(10), ask)?,
        "n1:8080 did not reach the task on n2"
    );
    for _ in 0..5 {
        assert!(ask()?, "n1:8080 stopped answering");
    }
    // workers publish their counters every 100 ms: the asks above can all
    // finish inside one period
    assert!(
        eventually(Duration::from_secs(2), || Ok(stat(&t, &n1, "underlay_tx")?
            > 0
            && stat(&t, &n2, "underlay_rx")? > 0))?,
        "the published port's traffic did not cross the underlay"
    );
    // from outside, over the nodes' IPv6 addresses
    for n in [&n1, &n2] {
        let dst = SocketAddr::new(n.underlay_addr(), 8080);
        let ask = || -> Result<bool> {
            let got = in_netns(&client.ns, move || {
                use std::io::Read;
                let mut c =
                    std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2)).ok()?;
                c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                let mut s = String::new();
                c.read_to_string(&mut s).ok()?;
                Some(s)
            })?;
            Ok(got.as_deref() == Some("web"))
        };
        assert!(
            eventually(Duration::from_secs(10), ask)?,
            "{dst} did not answer the outside client"
        );
    }
    Ok(())
}

/// A stock WireGuard peer (wireguard-go, the kernel's VXLAN over its wg0)
/// reached over the IPv6 underlay: declared with `node add --advertise-addr`
/// an IPv6 address, its WireGuard endpoint is that address.
#[test]
fn a_wireguard_go_peer_over_ipv6() -> Result<()> {
    let mut t = Topology::with_underlay_v6("wgo6")?;
    let n1 = t.add_node("n1")?;
    let k = t.add_outside_host("k")?;
    t.start_agent(&n1, &[])?;
    let c1 = t.add_container("c1")?;
    let ck = t.add_container("ck")?;
    let nodes = t.cli_json(&n1, &["node", "ls"])?;
    let n1j = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "n1"))
        .context("n1 in node ls")?;
    let (n1_pub, n1_tun) = (
        n1j["public_key"].as_str().context("key")?.to_string(),
        n1j["tunnel_addr"].as_str().context("tunnel")?.to_string(),
    );
    let (k_priv, k_pub) = wg_keypair(&k.ns)?;
    let n1_peer = WgPeer {
        public_key: n1_pub,
        endpoint: SocketAddr::new(n1.underlay_addr(), 51820),
        tunnel_addr: n1_tun.parse()?,
    };
    let _wg = WgVxlanHost {
        node: &k,
        private_key: &k_priv,
        tunnel_addr: "100.64.255.1".parse()?,
        peers: std::slice::from_ref(&n1_peer),
        vni: 6006,
        container_ns: &ck,
        container_cidr: "10.65.0.200/24",
        // wg0's 1420 (1500 - IPv6 40 - UDP 8 - WireGuard 32) - VXLAN over IPv4 50
        mtu: 1370,
    }
    .start(t.dir())?;
    let k_addr = k.underlay_addr().to_string();
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
            "10.65.0.0/24",
            "--vni",
            "6006",
            "--peer-vtep",
            "100.64.255.1",
        ],
    )?;
    let e1 = endpoint(&t, &n1, "wgn", &c1, &[])?;
    assert!(ping(&c1, "10.65.0.200", 5, None)?, "vxmesh -> wireguard-go");
    assert!(ping(&ck, &e1.ip, 3, None)?, "wireguard-go -> vxmesh");
    let srv = tcp_echo_server(&ck, "10.65.0.200:6100".parse()?)?;
    tcp_echo(&c1, srv.local_addr(), 1 << 20)?;
    let srv = tcp_echo_server(&c1, SocketAddr::new(e1.ip.parse()?, 6101))?;
    tcp_echo(&ck, srv.local_addr(), 1 << 20)?;
    // wireguard-go saw n1 at its IPv6 address
    let eps = exec_ok(&k.ns, &["wg", "show", "wg-k", "endpoints"])?;
    assert!(
        eps.contains(&format!("[{}]:51820", n1.underlay_addr())),
        "{eps}"
    );
    Ok(())
}

//! Checks the harness itself, without any vxmesh agent, so a failure in the
//! real integration tests can be blamed on vxmesh rather than the plumbing.
//! Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vxmesh_netns_tests::{
    exec_ok, in_netns, kernel_vxlan_setup, ping, send_raw_frames, tcp_echo_server, tcp_roundtrip,
    udp_echo_server, udp_roundtrip, udp_send_raw, Topology,
};

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn assert_all_gone(namespaces: &[String], dir: &Path) {
    for ns in namespaces {
        assert!(!ns_exists(ns), "namespace {ns} survived Topology drop");
    }
    assert!(
        !dir.exists(),
        "test dir {} survived Topology drop",
        dir.display()
    );
}

#[test]
fn underlay_ping_and_cleanup() {
    let mut topo = Topology::new("harness_smoke").unwrap();
    let prefix = topo.prefix().to_string();
    assert!(prefix.len() == 8 && prefix.starts_with("vx"), "{prefix}");
    let n1 = topo.add_node("n1").unwrap();
    let n2 = topo.add_node("n2").unwrap();
    let c1 = topo.add_container("c1").unwrap();
    let c2 = topo.add_container("c2").unwrap();
    assert_eq!(n1.addr, Ipv4Addr::new(192, 168, 77, 1));
    assert_eq!(n2.addr, Ipv4Addr::new(192, 168, 77, 2));
    assert_eq!(c1, format!("{prefix}-c1"));

    assert!(ping(&n1.ns, &n2.addr.to_string(), 3, None).unwrap());
    assert!(ping(&n2.ns, &n1.addr.to_string(), 1, Some(1472)).unwrap());
    // DF set and one byte over the underlay MTU: must not get through.
    assert!(!ping(&n1.ns, &n2.addr.to_string(), 1, Some(1473)).unwrap());
    // Containers are isolated until something wires them up.
    assert!(!ping(&c1, &n1.addr.to_string(), 1, None).unwrap());
    let links = exec_ok(&c2, &["ip", "-o", "link"]).unwrap();
    assert_eq!(
        links.lines().count(),
        1,
        "container should only have lo: {links}"
    );

    let mut namespaces = vec![format!("{prefix}-ul"), n1.ns.clone(), n2.ns.clone(), c1, c2];
    namespaces
        .iter()
        .for_each(|ns| assert!(ns_exists(ns), "{ns}"));
    let dir: PathBuf = topo.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(topo);
    namespaces.dedup();
    assert_all_gone(&namespaces, &dir);
}

#[test]
fn cleanup_runs_when_test_panics() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut topo = Topology::new("harness_panic").unwrap();
        let n = topo.add_node("n1").unwrap();
        let c = topo.add_container("c1").unwrap();
        let ul = format!("{}-ul", topo.prefix());
        *seen.lock().unwrap() = Some((vec![ul, n.ns.clone(), c], topo.dir().to_path_buf()));
        panic!("deliberate panic to exercise Topology::drop");
    }));
    assert!(result.is_err());
    let (namespaces, dir) = seen.into_inner().unwrap().expect("topology was built");
    assert_all_gone(&namespaces, &dir);
}

#[test]
fn kernel_vxlan_and_traffic_helpers() {
    let mut topo = Topology::new("harness_kvx").unwrap();
    let n1 = topo.add_node("n1").unwrap();
    let n2 = topo.add_node("n2").unwrap();
    let c1 = topo.add_container("c1").unwrap();
    let c2 = topo.add_container("c2").unwrap();
    kernel_vxlan_setup(&n1, 4242, &[n2.addr], &c1, "10.20.0.1/24", 1450).unwrap();
    kernel_vxlan_setup(&n2, 4242, &[n1.addr], &c2, "10.20.0.2/24", 1450).unwrap();

    assert!(ping(&c1, "10.20.0.2", 3, None).unwrap());
    // 1450 - 28 bytes of IP+ICMP header is the largest unfragmented payload.
    assert!(ping(&c1, "10.20.0.2", 1, Some(1422)).unwrap());
    assert!(!ping(&c1, "10.20.0.2", 1, Some(1423)).unwrap());

    let timeout = Duration::from_secs(5);
    let tcp_addr: SocketAddr = "10.20.0.2:7000".parse().unwrap();
    let tcp = tcp_echo_server(&c2, tcp_addr).unwrap();
    assert_eq!(tcp.local_addr(), tcp_addr);
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    assert_eq!(tcp_roundtrip(&c1, tcp_addr, &big, timeout).unwrap(), big);
    assert_eq!(tcp_roundtrip(&c1, tcp_addr, b"", timeout).unwrap(), b"");

    let udp_addr: SocketAddr = "10.20.0.2:7001".parse().unwrap();
    let udp = udp_echo_server(&c2, udp_addr).unwrap();
    assert_eq!(
        udp_roundtrip(&c1, udp_addr, b"hello", timeout).unwrap(),
        b"hello"
    );
    udp_send_raw(&c1, udp_addr, &[b"a".to_vec(), b"b".to_vec()]).unwrap();
    // Nothing listens on this port: a roundtrip must fail, not hang.
    let closed: SocketAddr = "10.20.0.2:7002".parse().unwrap();
    assert!(udp_roundtrip(&c1, closed, b"x", Duration::from_millis(500)).is_err());
    drop((tcp, udp));
    // Dropping the server must really close the listener.
    assert!(tcp_roundtrip(&c1, tcp_addr, b"x", timeout).is_err());

    // A broadcast frame from c1 must reach c2's eth0 across the kernel VXLAN.
    let c2_mac = exec_ok(&c2, &["cat", "/sys/class/net/eth0/address"]).unwrap();
    let rx_before = rx_packets(&c2);
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]); // local experimental ethertype
    frame.resize(64, 0xab);
    send_raw_frames(&c1, "eth0", &[frame.clone(), frame]).unwrap();
    let mut arrived = false;
    for _ in 0..50 {
        if rx_packets(&c2) >= rx_before + 2 {
            arrived = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(arrived, "raw frames did not reach c2 ({})", c2_mac.trim());

    // Sockets created in a namespace stay there when used from this thread.
    let sock = in_netns(&c1, || std::net::UdpSocket::bind("10.20.0.1:0"))
        .unwrap()
        .unwrap();
    assert_eq!(
        sock.local_addr().unwrap().ip(),
        "10.20.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert!(in_netns("does-not-exist-ns", || ()).is_err());
}

fn rx_packets(ns: &str) -> u64 {
    exec_ok(ns, &["cat", "/sys/class/net/eth0/statistics/rx_packets"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The links of this process's (the root) namespace, by name.
fn root_links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn netns_inode(path: &str) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

#[test]
fn host_node_in_root_namespace_and_cleanup() {
    let before = root_links();
    let mut topo = Topology::new("harness_host").unwrap();
    let prefix = topo.prefix().to_string();
    let host = topo.add_host_node("host").unwrap();
    let n1 = topo.add_node("n1").unwrap();
    assert_eq!(host.addr, Ipv4Addr::new(192, 168, 77, 1));
    assert_eq!(n1.addr, Ipv4Addr::new(192, 168, 77, 2));
    assert_eq!(host.ns, format!("{prefix}-host"));
    assert!(topo.is_host_node(&host) && !topo.is_host_node(&n1));
    let link = topo.host_link().unwrap().to_string();
    assert_eq!(link, format!("{prefix}h"));
    assert!(link.len() <= 15, "{link}");
    assert!(topo.add_host_node("host2").is_err(), "one host node only");

    // The name is the root namespace itself, not a new one.
    assert_eq!(
        netns_inode(&format!("/run/netns/{}", host.ns)),
        netns_inode("/proc/self/ns/net")
    );
    assert!(root_links().contains(&link));
    let seen = exec_ok(&host.ns, &["ip", "-o", "addr", "show", "dev", &link]).unwrap();
    assert!(seen.contains("192.168.77.1/24"), "{seen}");

    assert!(ping(&n1.ns, &host.addr.to_string(), 2, None).unwrap());
    assert!(ping(&host.ns, &n1.addr.to_string(), 2, None).unwrap());
    assert!(ping(&host.ns, &n1.addr.to_string(), 1, Some(1472)).unwrap());
    // in_netns works there too (a socket on the root end's address).
    let sock = in_netns(&host.ns, || std::net::UdpSocket::bind("192.168.77.1:0"))
        .unwrap()
        .unwrap();
    assert_eq!(
        sock.local_addr().unwrap().ip(),
        std::net::IpAddr::from([192, 168, 77, 1])
    );
    drop(sock);

    // "Every process in the namespace" would be every process on the machine.
    assert!(vxmesh_netns_tests::pids_in(&host.ns).is_err());
    assert!(vxmesh_netns_tests::kill_all_in(&host.ns).is_err());
    assert!(!vxmesh_netns_tests::pids_in(&n1.ns).unwrap().contains(&1));

    let namespaces = vec![format!("{prefix}-ul"), n1.ns.clone(), host.ns.clone()];
    let dir = topo.dir().to_path_buf();
    drop(topo);
    assert_all_gone(&namespaces, &dir);
    let after = root_links();
    assert!(
        !after.iter().any(|l| l.starts_with(&prefix)),
        "a link of the topology survived: {after:?}"
    );
    // Only our own links went: the machine's (lo, its uplink, ...) are all there,
    // and its namespace is the one it was.
    for l in before.iter().filter(|l| !l.starts_with("veth")) {
        assert!(after.contains(l), "root link {l} disappeared: {after:?}");
    }
    let addrs = std::process::Command::new("ip")
        .args(["-o", "addr"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&addrs.stdout).contains("192.168.77.1/24"));
    assert!(!Path::new("/etc/netns").join(&namespaces[2]).exists());
}

#[test]
fn host_node_cleanup_runs_when_test_panics() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut topo = Topology::new("harness_host_panic").unwrap();
        let host = topo.add_host_node("host").unwrap();
        let link = topo.host_link().unwrap().to_string();
        *seen.lock().unwrap() = Some((host.ns, link, topo.dir().to_path_buf()));
        panic!("deliberate panic to exercise Topology::drop with a host node");
    }));
    assert!(result.is_err());
    let (ns, link, dir) = seen.into_inner().unwrap().expect("topology was built");
    assert_all_gone(&[ns], &dir);
    assert!(!root_links().contains(&link), "{link} survived");
}

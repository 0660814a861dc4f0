//! `vxmesh doctor` (issue 22, point 1): on a healthy two-node cluster (a
//! plain and an encrypted network, etcd) every check is ok and it exits 0;
//! then each thing a mesh needs is broken on purpose, and the doctor names it
//! and exits 1: VXLAN dropped by nftables on one node (both nodes' doctors
//! name the other), WireGuard dropped, the path's MTU lowered below what the
//! overlay needs (the path MTU and the fix named), a node's clock 5 s off (a
//! warning), a TAP and a table the agent owns removed, the store stopped. A
//! probe from an address that is no node's is not answered. And with no
//! agent to ask, the doctor says so as a failed check.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

/// `vxmesh doctor --format json` on `node`: its exit success and report.
fn doctor(t: &Topology, node: &Node) -> anyhow::Result<(bool, Value)> {
    let out = t.cli(node, &["doctor", "--format", "json"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("doctor printed no JSON ({e}): {text}"))?;
    Ok((out.status.success(), v))
}

/// The check named `name` in a report.
fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {v:#}"))
}

/// Checks whose status is not ok, as `status check: detail` lines.
fn not_ok(v: &Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] != "ok")
        .map(|c| format!("{} {}: {}", c["status"], c["check"], c["detail"]))
        .collect()
}

/// Asserts `name` has `status` and its detail (and fix) says each of `words`.
fn assert_check(v: &Value, name: &str, status: &str, words: &[&str]) {
    let c = check(v, name);
    assert_eq!(c["status"], status, "{name}: {c:#}");
    let text = format!("{} {}", c["detail"], c["fix"]);
    for w in words {
        assert!(text.contains(w), "{name} does not say {w:?}: {text}");
    }
}

/// An nftables table in `ns` that drops UDP to `port` coming in; removed on drop.
struct UdpDrop {
    ns: String,
    table: String,
}

impl UdpDrop {
    fn udp(ns: &str, port: u16, table: &str) -> anyhow::Result<UdpDrop> {
        let d = UdpDrop {
            ns: ns.into(),
            table: table.into(),
        };
        exec_ok(ns, &["nft", "add", "table", "inet", table])?;
        exec_ok(
            ns,
            &[
                "nft",
                "add",
                "chain",
                "inet",
                table,
                "in",
                "{ type filter hook input priority -10 ; }",
            ],
        )?;
        let port = port.to_string();
        exec_ok(
            ns,
            &[
                "nft", "add", "rule", "inet", table, "in", "udp", "dport", &port, "drop",
            ],
        )?;
        Ok(d)
    }
}

impl Drop for UdpDrop {
    fn drop(&mut self) {
        let _ = exec(&self.ns, &["nft", "delete", "table", "inet", &self.table]);
    }
}

#[test]
fn doctor_is_all_ok_on_a_healthy_mesh_and_names_what_breaks() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut t = Topology::with_store("doctor", StoreKind::Etcd)?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let stranger = t.add_outside_host("x")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "p", "--subnet", "10.61.0.0/24"])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "s",
            "--subnet",
            "10.62.0.0/24",
            "--encrypted",
        ],
    )?;
    let (c1, c2) = (t.add_container("c1")?, t.add_container("c2")?);
    let e1 = endpoint(&t, &n1, "p", &c1, &[])?;
    endpoint(&t, &n1, "s", &c1, &["--ifname", "eth1"])?;
    let e2 = endpoint(&t, &n2, "p", &c2, &[])?;
    let s2 = endpoint(&t, &n2, "s", &c2, &["--ifname", "eth1"])?;
    assert!(ping(&c1, &e2.ip, 2, None)?, "plain overlay");
    assert!(ping(&c1, &s2.ip, 2, None)?, "encrypted overlay");

    // healthy: every check ok on both nodes, exit 0
    for (me, other) in [(&n1, &n2), (&n2, &n1)] {
        let (ok, v) = doctor(&t, me)?;
        assert!(
            ok && not_ok(&v).is_empty(),
            "{}: {:#?}",
            me.name,
            not_ok(&v)
        );
        let o = &other.name;
        assert_check(&v, &format!("peer.{o}.vxlan"), "ok", &["both ways"]);
        assert_check(&v, &format!("peer.{o}.wireguard"), "ok", &["WireGuard"]);
        assert_check(&v, &format!("peer.{o}.mtu"), "ok", &["1500"]);
        assert_check(&v, &format!("peer.{o}.clock"), "ok", &["ms"]);
        for c in [
            "store.reachable",
            "store.rows",
            "store.nodes",
            "nft.ip.vxmesh",
            "nft.inet.vxmesh-egress",
            "tap.vxm-ingress",
            "tap.vxm-egress",
            "tap.endpoints",
            "underlay.mtu",
            "sockets.buffers",
            "drops",
        ] {
            assert_check(&v, c, "ok", &[]);
        }
    }
    // the table form: a line per check, and exit 0
    let table = t.cli_ok(&n1, &["doctor"])?;
    eprintln!("{table}");
    assert!(table.contains("ok    peer.n2.vxlan"), "{table}");
    assert!(
        table.contains("n1: ") && table.contains(" 0 fail"),
        "{table}"
    );

    // a probe from an address that is no node's is not answered (no
    // reflection off the agents), and counted
    let refused0 = dropped(&t, &n1, "probe_refused")?;
    assert_eq!(
        stranger_probe(&stranger, &n1)?,
        None,
        "a stranger was answered"
    );
    assert!(
        eventually(Duration::from_secs(2), || Ok(dropped(
            &t,
            &n1,
            "probe_refused"
        )? > refused0))?,
        "the stranger's probe was not counted"
    );

    // (a) VXLAN dropped on n2: both doctors name the other node, exit 1
    {
        let _drop = UdpDrop::udp(&n2.ns, 4789, "vxt_vxlan")?;
        for (me, other) in [(&n1, &n2), (&n2, &n1)] {
            let (ok, v) = doctor(&t, me)?;
            assert!(!ok, "{} exits 0 with VXLAN dropped", me.name);
            let o = &other.name;
            assert_check(&v, &format!("peer.{o}.vxlan"), "fail", &["udp/4789", o]);
            // WireGuard is another port: still through
            assert_check(&v, &format!("peer.{o}.wireguard"), "ok", &[]);
        }
        // and the table form says what to do
        let out = t.cli(&n1, &["doctor"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success());
        eprintln!("{text}");
        assert!(
            text.contains("fail  peer.n2.vxlan") && text.contains("fix: allow udp/4789"),
            "{text}"
        );
    }
    // (e) WireGuard dropped on n2: n1's doctor names the tunnel, VXLAN is fine
    {
        let _drop = UdpDrop::udp(&n2.ns, 51820, "vxt_wg")?;
        let (ok, v) = doctor(&t, &n1)?;
        assert!(!ok);
        assert_check(&v, "peer.n2.vxlan", "ok", &[]);
        assert_check(
            &v,
            "peer.n2.wireguard",
            "fail",
            &["udp/51820", "while plain VXLAN to it works"],
        );
    }
    // (b) the path narrower than the overlay needs: n2's port on the underlay
    // bridge at MTU 1400, so neither node sees it on its own interface
    let port = t.underlay_port(&n2).expect("n2's bridge port").to_string();
    let ul = t.underlay_ns().to_string();
    exec_ok(&ul, &["ip", "link", "set", &port, "mtu", "1400"])?;
    for (me, other) in [(&n1, &n2), (&n2, &n1)] {
        let (ok, v) = doctor(&t, me)?;
        assert!(!ok, "{} exits 0 with the path at 1400", me.name);
        let o = &other.name;
        assert_check(
            &v,
            &format!("peer.{o}.mtu"),
            "fail",
            &[
                &format!("path MTU to {o} is 1400"),
                "overlay MTU 1450 needs 1500",
                "to 1500",
                "lower the overlay MTU to 1350",
            ],
        );
        assert_check(&v, &format!("peer.{o}.vxlan"), "ok", &[]);
        assert_check(&v, &format!("peer.{o}.wireguard-mtu"), "fail", &[]);
    }
    eprintln!(
        "{}",
        String::from_utf8_lossy(&t.cli(&n1, &["doctor"])?.stdout)
    );
    exec_ok(&ul, &["ip", "link", "set", &port, "mtu", "1500"])?;

    // a node whose clock is 5 s ahead: a warning naming the offset
    t.stop_agent(&n2)?;
    t.start_agent(&n2, &["--test-heartbeat-skew-ms", "5000"])?;
    let mut v = Value::Null;
    let skewed = eventually(Duration::from_secs(10), || {
        v = doctor(&t, &n1)?.1;
        Ok(check(&v, "peer.n2.clock")["status"] == "warn")
    })?;
    assert!(skewed, "{:#}", check(&v, "peer.n2.clock"));
    let detail = check(&v, "peer.n2.clock")["detail"].as_str().unwrap_or("");
    let ms: i64 = detail
        .split_whitespace()
        .find_map(|w| w.strip_prefix('+').and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    assert!((4_900..=5_100).contains(&ms), "{detail}");

    // (d) a TAP and a table the agent owns removed on n1
    exec_ok(&c1, &["ip", "link", "del", "eth0"])?;
    exec_ok(&n1.ns, &["ip", "link", "del", "vxm-ingress"])?;
    exec_ok(&n1.ns, &["nft", "delete", "table", "inet", "vxmesh-egress"])?;
    let (ok, v) = doctor(&t, &n1)?;
    assert!(!ok);
    assert_check(
        &v,
        &format!("tap.endpoint.{}", e1.id),
        "fail",
        &["TAP", "eth0", "restart the agent"],
    );
    assert_check(&v, "tap.vxm-ingress", "fail", &["missing"]);
    assert_check(&v, "nft.inet.vxmesh-egress", "fail", &["missing"]);
    assert_check(&v, "nft.ip.vxmesh", "ok", &[]);

    // (c) the store stopped
    t.stop_etcd()?;
    let (ok, v) = doctor(&t, &n2)?;
    assert!(!ok);
    assert_check(&v, "store.reachable", "fail", &["etcd://", "etcdctl"]);
    // the peers are still probed, from the last state read
    assert_check(&v, "peer.n1.vxlan", "ok", &[]);
    eprintln!("doctor test took {:?}", started.elapsed());
    Ok(())
}

/// Sends a doctor's probe from `from` (its own VXLAN port, where an answer
/// would come) to `to`'s agent; the answer's length, if one comes in 1 s.
fn stranger_probe(from: &Node, to: &Node) -> anyhow::Result<Option<usize>> {
    let dst = std::net::SocketAddr::new(to.underlay_addr(), 4789);
    in_netns(&from.ns, move || -> anyhow::Result<Option<usize>> {
        let s = std::net::UdpSocket::bind("0.0.0.0:4789")?;
        let mut req = vec![0u8; 200];
        vxmesh_dataplane::wire::probe::emit_request(&mut req, 42)
            .ok_or_else(|| anyhow::anyhow!("probe does not fit"))?;
        s.send_to(&req, dst)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 2048];
        Ok(s.recv_from(&mut buf).ok().map(|(n, _)| n))
    })?
}

/// With no agent on the socket, the doctor still prints its report: one
/// failed check saying how to start one, and exit 1.
#[test]
fn doctor_without_an_agent_says_so_as_a_check() -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let sock = format!("unix:{}/none.sock", dir.display());
    let out = std::process::Command::new(vxmesh_bin())
        .args(["-H", &sock, "doctor"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("fail  agent") && text.contains("cannot reach the vxmesh agent"),
        "{text}"
    );
    assert!(text.contains("fix: start the agent"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("vxmesh-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

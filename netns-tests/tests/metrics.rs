//! `--metrics-addr` serves Prometheus text whose counters move with traffic:
//! global frames and drops, per network and per endpoint port packets and bytes
//! (with the right labels), conntrack setups, the balancer's backends, WireGuard
//! handshakes and rekeys, store reachability.

mod common;

use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use vxmesh_netns_tests::*;

fn value(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(metric) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of the series `name` whose labels are exactly `labels` (in any order).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (inner, v) = rest.split_once("} ")?;
        let mut got: Vec<String> = inner.split(',').map(str::to_string).collect();
        got.sort();
        (got == want).then(|| v.trim().parse().ok())?
    })
}

/// Every label set `name` has a series for.
fn label_sets(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|r| Some(r.split_once('}')?.0.to_string()))
        .collect()
}

/// Connects to `to` from `ns` and reads what the server writes.
fn ask(ns: &str, to: SocketAddr) -> anyhow::Result<String> {
    in_netns(ns, move || -> anyhow::Result<String> {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })?
}

#[test]
fn metrics_are_served_and_move_with_traffic() -> anyhow::Result<()> {
    let mut t = Topology::new("metrics")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let addr = SocketAddr::new(n1.addr.into(), 9464);
    let arg = addr.to_string();
    t.start_agent(&n1, &["--metrics-addr", &arg])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "m", "--subnet", "10.48.0.0/24"])?;
    let vni = t.cli_json(&n1, &["network", "inspect", "m"])?["vni"].to_string();
    let (c1, c2) = (t.add_container("c1")?, t.add_container("c2")?);
    let e1 = endpoint(&t, &n1, "m", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "m", &c2, &[])?;
    assert!(ping(&c1, &e2.ip, 2, None)?);
    std::thread::sleep(Duration::from_millis(300));
    let before = scrape(&n1.ns, addr)?;
    assert!(
        before.contains("HTTP/1.0 200") || before.contains("HTTP/1.1 200"),
        "{before}"
    );
    for m in [
        "vxmesh_drops_total{reason=\"not_member\"}",
        "vxmesh_conntrack_entries",
        "vxmesh_store_reachable 1",
        "vxmesh_store_invalid_rows 0",
        "vxmesh_endpoints_attached 1",
        "# HELP vxmesh_conntrack_setups Connections set up",
        "vxmesh_conntrack_lock_waits_total ",
        "vxmesh_drops_total{reason=\"socket_overflow\"} ",
    ] {
        assert!(before.contains(m), "{m} missing:\n{before}");
    }
    let rx0 = value(&before, "vxmesh_port_rx_frames_total").expect("port rx counter");
    let tx0 = value(&before, "vxmesh_underlay_tx_datagrams_total").expect("underlay tx counter");
    assert!(rx0 > 0.0 && tx0 > 0.0);

    // per network (name and VNI) and per endpoint port (network and endpoint id)
    let net = [("network", "m"), ("vni", vni.as_str())];
    let port = [("network", "m"), ("endpoint", e1.id.as_str())];
    let traffic = |text: &str| -> anyhow::Result<[f64; 8]> {
        let mut out = [0.0; 8];
        let names = [
            "vxmesh_network_rx_packets_total",
            "vxmesh_network_tx_packets_total",
            "vxmesh_network_rx_bytes_total",
            "vxmesh_network_tx_bytes_total",
            "vxmesh_endpoint_rx_packets_total",
            "vxmesh_endpoint_tx_packets_total",
            "vxmesh_endpoint_rx_bytes_total",
            "vxmesh_endpoint_tx_bytes_total",
        ];
        for (i, n) in names.iter().enumerate() {
            let labels: &[(&str, &str)] = if i < 4 { &net } else { &port };
            out[i] = series(text, n, labels)
                .ok_or_else(|| anyhow::anyhow!("no {n} {labels:?}:\n{text}"))?;
        }
        Ok(out)
    };
    let t0 = traffic(&before)?;
    // only this node's own ports have series (its endpoint, and the ingress
    // sandbox and egress TAP when it has them); the other node's endpoint has none
    let sets = label_sets(&before, "vxmesh_endpoint_rx_packets_total");
    assert!(
        sets.contains(&format!("network=\"m\",endpoint=\"{}\"", e1.id))
            && sets.iter().all(|l| l.contains(&e1.id)
                || l.contains("endpoint=\"ingress-sandbox\"")
                || l.contains("endpoint=\"egress\"")),
        "{sets:?}"
    );
    assert!(!before.contains(&e2.id), "n2's endpoint on n1:\n{before}");

    assert!(ping(&c1, &e2.ip, 5, None)?);
    let moved = eventually(Duration::from_secs(3), || {
        let after = scrape(&n1.ns, addr)?;
        let t1 = traffic(&after)?;
        // 5 requests out through the port and over the underlay, 5 replies back
        // (an ICMP echo of ping's default size is a 98-byte frame)
        let packets = [0, 1, 4, 5].iter().all(|&i| t1[i] >= t0[i] + 5.0);
        let bytes = [2, 3, 6, 7].iter().all(|&i| t1[i] >= t0[i] + 5.0 * 98.0);
        Ok(packets
            && bytes
            && value(&after, "vxmesh_port_rx_frames_total").unwrap_or(0.0) >= rx0 + 5.0
            && value(&after, "vxmesh_underlay_tx_datagrams_total").unwrap_or(0.0) >= tx0 + 5.0)
    })?;
    assert!(moved, "counters did not move:\n{}", scrape(&n1.ns, addr)?);

    // connections through a VIP: setups counted, the backend's connections and health
    let svc = t.cli_json(&n1, &["service", "create", "api", "--network", "m"])?;
    let vip: std::net::IpAddr = svc["vips"]["m"].as_str().unwrap().parse()?;
    let task = t.add_container("task")?;
    let et = endpoint(&t, &n2, "m", &task, &["--service", "api"])?;
    let _server = answer_server(&task, SocketAddr::new(et.ip.parse()?, 8080), false, |_| {
        "hi".to_string()
    })?;
    let setups0 = value(&before, "vxmesh_conntrack_setups_total").expect("setups counter");
    let up = eventually(Duration::from_secs(5), || {
        Ok(ask(&c1, SocketAddr::new(vip, 8080)).is_ok_and(|s| s == "hi"))
    })?;
    assert!(up, "the VIP never answered");
    for _ in 0..3 {
        assert_eq!(ask(&c1, SocketAddr::new(vip, 8080))?, "hi");
    }
    let text = scrape(&n1.ns, addr)?;
    let setups = value(&text, "vxmesh_conntrack_setups_total").unwrap_or(0.0);
    assert!(
        setups >= setups0 + 4.0,
        "setups {setups0} -> {setups}:\n{text}"
    );
    let of_backend = |name: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && l.contains(&format!("vip=\"{vip}\""))
                    && l.contains(&format!("backend=\"{}\"", et.ip))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        of_backend("vxmesh_lb_backend_healthy{"),
        1.0,
        "the backend's health:\n{text}"
    );
    // active + inactive: the connections just made are still tracked (closing)
    assert!(
        of_backend("vxmesh_lb_backend_connections{") >= 1.0,
        "no per-backend connections:\n{text}"
    );

    // an encrypted network: WireGuard handshakes, then a rekey when n2's key rotates
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "s",
            "--subnet",
            "10.48.1.0/24",
            "--encrypted",
        ],
    )?;
    let svni = t.cli_json(&n1, &["network", "inspect", "s"])?["vni"].to_string();
    let (s1, s2) = (t.add_container("s1")?, t.add_container("s2")?);
    endpoint(&t, &n1, "s", &s1, &[])?;
    let es2 = endpoint(&t, &n2, "s", &s2, &[])?;
    assert_eq!(
        value(&text, "vxmesh_tunnel_handshakes_total"),
        Some(0.0),
        "handshakes before any encrypted network:\n{text}"
    );
    let ok = eventually(Duration::from_secs(10), || ping(&s1, &es2.ip, 1, None))?;
    assert!(ok, "no ping across the encrypted network");
    // (worker counters are published every 100 ms)
    let counted = eventually(Duration::from_secs(3), || {
        let text = scrape(&n1.ns, addr)?;
        Ok(value(&text, "vxmesh_tunnel_handshakes_total").unwrap_or(0.0) >= 1.0)
    })?;
    let text = scrape(&n1.ns, addr)?;
    assert!(counted, "no handshake counted:\n{text}");
    let hs = value(&text, "vxmesh_tunnel_handshakes_total").unwrap_or(0.0);
    assert_eq!(value(&text, "vxmesh_tunnel_rekeys_total"), Some(0.0));
    let enc = [("network", "s"), ("vni", svni.as_str())];
    assert!(
        series(&text, "vxmesh_network_tx_packets_total", &enc).unwrap_or(0.0) >= 1.0
            && series(&text, "vxmesh_network_rx_packets_total", &enc).unwrap_or(0.0) >= 1.0,
        "the encrypted network's traffic:\n{text}"
    );
    // a handshake within seconds of the last is the ends' first initiations
    // crossing, not a rekey: let the first session settle
    std::thread::sleep(Duration::from_secs(6));
    t.cli_ok(&n1, &["node", "rotate-key", "n2"])?;
    let rekeyed = eventually(Duration::from_secs(15), || {
        let text = scrape(&n1.ns, addr)?;
        Ok(
            value(&text, "vxmesh_tunnel_rekeys_total").unwrap_or(0.0) >= 1.0
                && value(&text, "vxmesh_tunnel_handshakes_total").unwrap_or(0.0) > hs,
        )
    })?;
    assert!(rekeyed, "no rekey counted:\n{}", scrape(&n1.ns, addr)?);
    assert!(
        ping(&s1, &es2.ip, 2, None)?,
        "the new session carries traffic"
    );
    Ok(())
}

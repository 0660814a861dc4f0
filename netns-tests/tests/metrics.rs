//! `--metrics-addr` serves Prometheus text whose counters move with traffic.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use vxmesh_netns_tests::*;

fn scrape(ns: &str, addr: SocketAddr) -> anyhow::Result<String> {
    in_netns(ns, move || -> anyhow::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })?
}

fn value(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(metric) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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
    let (c1, c2) = (t.add_container("c1")?, t.add_container("c2")?);
    endpoint(&t, &n1, "m", &c1, &[])?;
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
        "vxmesh_endpoints_attached 1",
    ] {
        assert!(before.contains(m), "{m} missing:\n{before}");
    }
    let rx0 = value(&before, "vxmesh_port_rx_frames_total").expect("port rx counter");
    let tx0 = value(&before, "vxmesh_underlay_tx_datagrams_total").expect("underlay tx counter");
    assert!(rx0 > 0.0 && tx0 > 0.0);
    assert!(ping(&c1, &e2.ip, 5, None)?);
    let moved = eventually(Duration::from_secs(3), || {
        let after = scrape(&n1.ns, addr)?;
        Ok(
            value(&after, "vxmesh_port_rx_frames_total").unwrap_or(0.0) >= rx0 + 5.0
                && value(&after, "vxmesh_underlay_tx_datagrams_total").unwrap_or(0.0) >= tx0 + 5.0,
        )
    })?;
    assert!(moved, "counters did not move:\n{}", scrape(&n1.ns, addr)?);
    Ok(())
}

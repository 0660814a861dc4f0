//! Egress (DESIGN.md packet path 5, issue 10): a container reaches a host
//! outside every overlay (an underlay host that runs no vxmesh) through its own
//! node, masqueraded to that node's address, and the replies come back to it;
//! a container on an `--internal` network cannot get out while one on an
//! identical open network beside it can; after the agent stops with
//! `--cleanup-on-exit` no egress table, route or TAP is left.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vxmesh_netns_tests::*;

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

/// Asks until `dst` answers (state spreads through the store), for up to ~10 s.
fn answered(ns: &str, dst: SocketAddr) -> anyhow::Result<Result<String, String>> {
    let mut got = ask(ns, dst, Duration::from_secs(2))?;
    for _ in 0..10 {
        if got.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        got = ask(ns, dst, Duration::from_secs(2))?;
    }
    Ok(got)
}

/// A server on the outside host answering each connection with the address it
/// came from (what the outside world sees of a container), counting them.
fn who_server(ns: &str, addr: SocketAddr) -> anyhow::Result<(AnswerServer, Arc<AtomicUsize>)> {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let srv = answer_server(ns, addr, false, move |peer| {
        count.fetch_add(1, Ordering::SeqCst);
        peer.ip().to_string()
    })?;
    Ok((srv, n))
}

/// What is left of egress in a node's namespace: the table, the TAP, and any
/// route through it or to the overlay subnets.
fn leftovers(ns: &str, subnets: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    if exec(ns, &["nft", "list", "table", "inet", "vxmesh-egress"])?
        .status
        .success()
    {
        left.push("table inet vxmesh-egress".to_string());
    }
    if exec(ns, &["ip", "link", "show", "dev", "vxm-egress"])?
        .status
        .success()
    {
        left.push("link vxm-egress".to_string());
    }
    for family in ["-4", "-6"] {
        let routes = exec_ok(ns, &["ip", family, "route", "show", "table", "all"])?;
        for r in routes.lines() {
            if r.contains("vxm-egress") || subnets.iter().any(|s| r.starts_with(s)) {
                left.push(format!("route {r}"));
            }
        }
    }
    Ok(left)
}

#[test]
fn containers_reach_an_outside_host_through_their_own_node_but_not_from_internal_networks(
) -> anyhow::Result<()> {
    let mut t = Topology::new("egress")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let x = t.add_outside_host("x")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "open", "--subnet", "10.81.0.0/24"],
    )?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "closed",
            "--subnet",
            "10.82.0.0/24",
            "--internal",
        ],
    )?;
    let inspect = t.cli_json(&n1, &["network", "inspect", "closed"])?;
    assert_eq!(inspect["internal"], true, "{inspect}");
    let (c1, c2, ci) = (
        t.add_container("c1")?,
        t.add_container("c2")?,
        t.add_container("ci")?,
    );
    let ec1 = endpoint(&t, &n1, "open", &c1, &[])?;
    endpoint(&t, &n2, "open", &c2, &[])?;
    let eci = endpoint(&t, &n1, "closed", &ci, &[])?;

    let who = SocketAddr::new(x.addr.into(), 7000);
    let echo = SocketAddr::new(x.addr.into(), 7001);
    let (_who, seen) = who_server(&x.ns, who)?;
    let _echo = tcp_echo_server(&x.ns, echo)?;
    let _uecho = udp_echo_server(&x.ns, SocketAddr::new(x.addr.into(), 7002))?;

    // each container leaves through its own node: the outside host sees the
    // node's underlay address, never the container's
    assert_eq!(
        answered(&c1, who)?,
        Ok(n1.addr.to_string()),
        "c1 (on n1) as the outside host sees it"
    );
    assert_eq!(
        answered(&c2, who)?,
        Ok(n2.addr.to_string()),
        "c2 (on n2) as the outside host sees it"
    );
    assert!(ping(&c1, &x.addr.to_string(), 3, None)?, "c1 pings x");
    assert!(ping(&c2, &x.addr.to_string(), 3, None)?, "c2 pings x");
    // the replies come back whole, both ways large enough to be cut into
    // segments (TSO super-frames from the container, GRO ones from the kernel)
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for c in [&c1, &c2] {
        let back = tcp_roundtrip(c, echo, &payload, Duration::from_secs(15))?;
        assert!(
            back == payload,
            "echo from x to {c}: {} bytes back",
            back.len()
        );
    }
    let back = udp_roundtrip(
        &c1,
        SocketAddr::new(x.addr.into(), 7002),
        b"udp-out",
        Duration::from_secs(5),
    )?;
    assert_eq!(back, b"udp-out");
    // its own node is outside the overlays too
    assert!(ping(&c1, &n1.addr.to_string(), 2, None)?, "c1 pings n1");

    // the internal network's container, on the same node: nothing leaves
    let before = dropped(&t, &n1, "internal")?;
    let conns = seen.load(Ordering::SeqCst);
    assert!(
        ask(&ci, who, Duration::from_secs(2))?.is_err(),
        "ci connected out"
    );
    assert!(
        !ping(&ci, &x.addr.to_string(), 2, None)?,
        "ci pinged the outside host"
    );
    assert!(
        !ping(&ci, &n1.addr.to_string(), 2, None)?,
        "ci pinged its node"
    );
    assert_eq!(seen.load(Ordering::SeqCst), conns, "x heard from ci");
    assert!(
        dropped(&t, &n1, "internal")? > before,
        "n1 counted no internal drop"
    );
    // and the open network reaches the internal one no more through the
    // kernel than it does through the switch
    assert!(
        !ping(&c1, &eci.ip, 2, None)?,
        "c1 pinged ci on another network"
    );
    // ... while the open one still gets out (positive control, same node)
    assert_eq!(
        ask(&c1, who, Duration::from_secs(2))?,
        Ok(n1.addr.to_string())
    );

    // the outside host cannot come in: even with a route to the overlay
    // subnet through n1, nothing but replies enters the egress TAP
    exec_ok(
        &x.ns,
        &[
            "ip",
            "route",
            "add",
            "10.81.0.0/24",
            "via",
            &n1.addr.to_string(),
        ],
    )?;
    let srv = tcp_echo_server(&c1, SocketAddr::from(([0, 0, 0, 0], 7100)))?;
    let c1_ip: IpAddr = ec1.ip.parse()?;
    assert!(
        ask(&x.ns, SocketAddr::new(c1_ip, 7100), Duration::from_secs(2))?.is_err(),
        "x connected into c1"
    );
    assert!(!ping(&x.ns, &c1_ip.to_string(), 2, None)?, "x pinged c1");
    drop(srv);

    // a connection open across the restart below
    let mut held = in_netns(&c1, move || {
        TcpStream::connect_timeout(&echo, Duration::from_secs(3))
    })??;
    held.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = [0u8; 6];
    held.write_all(b"before")?;
    held.read_exact(&mut line)?;
    assert_eq!(&line, b"before");

    // a plain stop keeps the table (established connections keep their NAT)
    // but no route: they went with the TAP
    t.stop_agent(&n1)?;
    let left = leftovers(&n1.ns, &["10.81.", "10.82."])?;
    assert_eq!(left, ["table inet vxmesh-egress"], "after a plain stop");
    // a restart is idempotent: egress works again, one table, one route
    t.start_agent(&n1, &["--cleanup-on-exit"])?;
    assert_eq!(
        answered(&c1, who)?,
        Ok(n1.addr.to_string()),
        "after a restart"
    );
    let routes = exec_ok(&n1.ns, &["ip", "-4", "route", "show", "dev", "vxm-egress"])?;
    assert_eq!(
        routes
            .lines()
            .filter(|r| r.starts_with("10.81.0.0/24"))
            .count(),
        1,
        "{routes}"
    );
    assert!(
        !routes.contains("10.82."),
        "a route for the internal network: {routes}"
    );
    // the kernel kept the connection's NAT: it goes on where it was
    held.write_all(b"after!")?;
    held.read_exact(&mut line)?;
    assert_eq!(&line, b"after!", "the held connection after the restart");
    drop(held);
    // --cleanup-on-exit: nothing left
    t.stop_agent(&n1)?;
    let left = leftovers(&n1.ns, &["10.81.", "10.82."])?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

/// Gives `ns`'s underlay interface an IPv6 address (the harness's underlay is
/// IPv4 only): `fd77::N` for its `192.168.77.N`.
fn underlay_v6(n: &Node) -> anyhow::Result<Ipv6Addr> {
    let a = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(n.addr.octets()[3]));
    let cidr = format!("{a}/64");
    exec_ok(
        &n.ns,
        &["ip", "-6", "addr", "add", &cidr, "dev", "ul0", "nodad"],
    )?;
    Ok(a)
}

#[test]
fn dual_stack_containers_reach_an_outside_host_over_ipv6_too() -> anyhow::Result<()> {
    let mut t = Topology::new("egress6")?;
    let n1 = t.add_node("n1")?;
    let x = t.add_outside_host("x")?;
    let n1_v6 = underlay_v6(&n1)?;
    let x_v6 = underlay_v6(&x)?;
    t.start_agent(&n1, &["--cleanup-on-exit"])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "dual",
            "--subnet",
            "10.83.0.0/24",
            "--subnet",
            "fd83::/64",
        ],
    )?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "closed6",
            "--subnet",
            "fd84::/64",
            "--internal",
        ],
    )?;
    let (c, ci) = (t.add_container("c")?, t.add_container("ci")?);
    endpoint(&t, &n1, "dual", &c, &[])?;
    endpoint(&t, &n1, "closed6", &ci, &[])?;
    let who = SocketAddr::new(x_v6.into(), 7000);
    let (_who, seen) = who_server(&x.ns, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 7000))?;
    let _echo = tcp_echo_server(&x.ns, SocketAddr::new(x_v6.into(), 7001))?;

    assert_eq!(
        answered(&c, who)?,
        Ok(n1_v6.to_string()),
        "c as the outside host sees it over IPv6"
    );
    assert!(ping(&c, &x_v6.to_string(), 3, None)?, "c pings x over IPv6");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let back = tcp_roundtrip(
        &c,
        SocketAddr::new(x_v6.into(), 7001),
        &payload,
        Duration::from_secs(15),
    )?;
    assert!(back == payload, "IPv6 echo: {} bytes back", back.len());
    // and IPv4 from the same container
    let (_who4, _) = who_server(&x.ns, SocketAddr::new(x.addr.into(), 7003))?;
    assert_eq!(
        answered(&c, SocketAddr::new(x.addr.into(), 7003))?,
        Ok(n1.addr.to_string())
    );

    let conns = seen.load(Ordering::SeqCst);
    assert!(
        ask(&ci, who, Duration::from_secs(2))?.is_err(),
        "the internal network's container connected out over IPv6"
    );
    assert!(!ping(&ci, &x_v6.to_string(), 2, None)?, "ci pinged x");
    assert_eq!(seen.load(Ordering::SeqCst), conns, "x heard from ci");
    let routes = exec_ok(&n1.ns, &["ip", "-6", "route", "show", "dev", "vxm-egress"])?;
    assert!(routes.contains("fd83::/64"), "{routes}");
    assert!(!routes.contains("fd84::"), "internal: {routes}");

    t.stop_agent(&n1)?;
    let left = leftovers(&n1.ns, &["10.83.", "fd83:", "fd84:"])?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

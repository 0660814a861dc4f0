//! Dual-stack overlays: endpoints get an address of each family and talk over
//! IPv6 across nodes; a service gets a VIP of each family, balanced over tasks
//! on two nodes; DNS answers AAAA (and over IPv6 on an IPv6-only network);
//! published ports answer on the nodes' IPv6 addresses, keep the client's IPv6
//! address, and per-node policies take IPv6 CIDRs. The underlay is dual-stack:
//! each node and the outside client get an IPv6 address beside the harness's
//! IPv4 one, and the nodes advertise their IPv4 address.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;
use vxmesh_netns_tests::*;

/// The IPv6 underlay address given to a namespace beside its IPv4 one.
fn v6_of(n: &Node) -> Ipv6Addr {
    Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, u16::from(n.addr.octets()[3]))
}

fn add_underlay_v6(n: &Node) -> anyhow::Result<()> {
    let cidr = format!("{}/64", v6_of(n));
    exec_ok(
        &n.ns,
        &["ip", "-6", "addr", "add", &cidr, "dev", "ul0", "nodad"],
    )?;
    Ok(())
}

/// The addresses `getent` finds for `name` in `ns` (`ahostsv4` / `ahostsv6`).
fn lookup(ns: &str, db: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let out = exec(ns, &["getent", db, name])?;
    let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// An endpoint's addresses of each family, from `endpoint create`'s answer.
fn ips_of(v: &serde_json::Value) -> (String, String) {
    let ips: Vec<IpAddr> = v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    let v4 = ips.iter().find(|a| a.is_ipv4()).map(|a| a.to_string());
    let v6 = ips.iter().find(|a| a.is_ipv6()).map(|a| a.to_string());
    (v4.unwrap_or_default(), v6.unwrap_or_default())
}

#[test]
fn dual_stack_overlay_vips_dns_and_ingress() -> anyhow::Result<()> {
    let mut t = Topology::new("dual")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let client = t.add_outside_host("client")?;
    for n in [&n1, &n2, &client] {
        add_underlay_v6(n)?;
    }
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "ds",
            "--subnet",
            "10.66.0.0/24",
            "--subnet",
            "fd66::/64",
        ],
    )?;

    // endpoints get both families and talk IPv6 across nodes
    let c1 = t.add_container("c1")?;
    let c2 = t.add_container("c2")?;
    let e1 = t.cli_json(
        &n1,
        &["endpoint", "create", "--network", "ds", "--netns", &c1],
    )?;
    let e2 = t.cli_json(
        &n2,
        &["endpoint", "create", "--network", "ds", "--netns", &c2],
    )?;
    let (c1_v4, c1_v6) = ips_of(&e1);
    let (_, c2_v6) = ips_of(&e2);
    assert!(!c1_v4.is_empty() && !c1_v6.is_empty(), "dual-stack: {e1}");
    assert!(c2_v6.starts_with("fd66:"), "{e2}");
    assert!(ping(&c1, &c2_v6, 3, None)?, "IPv6 ping across nodes");
    let echo = tcp_echo_server(&c2, SocketAddr::new(c2_v6.parse()?, 7000))?;
    let got = tcp_roundtrip(
        &c1,
        echo.local_addr(),
        &vec![7u8; 200_000],
        Duration::from_secs(10),
    )?;
    assert_eq!(
        got.len(),
        200_000,
        "IPv6 TCP across nodes echoed everything"
    );

    // a service: a VIP of each family, tasks on both nodes
    let svc = t.cli_json(
        &n1,
        &[
            "service",
            "create",
            "web",
            "--network",
            "ds",
            "--publish",
            "8080:80",
        ],
    )?;
    let vip4: IpAddr = svc["vips"]["ds"].as_str().unwrap_or_default().parse()?;
    let vip6: IpAddr = svc["vips6"]["ds"].as_str().unwrap_or_default().parse()?;
    assert!(vip4.is_ipv4() && vip6.is_ipv6(), "{svc}");
    let mut servers = Vec::new();
    for (i, n) in [&n1, &n2].into_iter().enumerate() {
        let ns = t.add_container(&format!("t{}", i + 1))?;
        t.cli_json(
            n,
            &[
                "endpoint",
                "create",
                "--network",
                "ds",
                "--netns",
                &ns,
                "--service",
                "web",
            ],
        )?;
        // one dual-stack socket answers both families: its name and who asked
        let name = format!("task{}", i + 1);
        servers.push(answer_server(
            &ns,
            "[::]:80".parse()?,
            false,
            move |peer| format!("{name} {}", peer.ip()),
        )?);
    }

    // DNS: the service's name is both VIPs (A and AAAA)
    let mut want6 = vec![vip6.to_string()];
    want6.sort();
    assert!(
        eventually(Duration::from_secs(5), || Ok(lookup(
            &c1, "ahostsv6", "web"
        )? == want6))?,
        "AAAA web: {:?}",
        lookup(&c1, "ahostsv6", "web")?
    );
    assert_eq!(lookup(&c1, "ahostsv4", "web")?, vec![vip4.to_string()]);

    // the IPv6 VIP is balanced over both nodes' tasks, replies come from it
    let to_vip6 = SocketAddr::new(vip6, 80);
    let first = settles(&c1, to_vip6, |r| r.is_ok())?;
    assert!(first.is_ok(), "the IPv6 VIP answers: {first:?}");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let answer = ask(&c1, to_vip6)?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut words = answer.split_whitespace();
        let task = words.next().unwrap_or_default().to_string();
        assert_eq!(
            words.next(),
            Some(c1_v6.as_str()),
            "the task sees the client's own IPv6 address"
        );
        *seen.entry(task).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both tasks served the IPv6 VIP: {seen:?}");
    assert!(
        seen.values().all(|n| *n >= 5),
        "round robin over two tasks: {seen:?}"
    );
    let (answer, peer) = in_netns(&c1, move || -> anyhow::Result<(String, SocketAddr)> {
        let mut c = TcpStream::connect_timeout(&to_vip6, Duration::from_secs(2))?;
        let peer = c.peer_addr()?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok((s, peer))
    })??;
    assert_eq!(peer, to_vip6, "{answer} came from the VIP");
    let lb = t.cli_json(&n1, &["lb", "ls"])?;
    assert!(
        lb.to_string().contains(&vip6.to_string()),
        "lb ls shows the IPv6 virtual service: {lb}"
    );

    // the published port answers on both nodes' IPv6 addresses, over tasks on
    // both nodes, with the outside client's address kept
    for n in [&n1, &n2] {
        let at = SocketAddr::new(IpAddr::V6(v6_of(n)), 8080);
        let got = settles(&client.ns, at, |r| r.is_ok())?;
        assert!(got.is_ok(), "{} answers 8080 over IPv6: {got:?}", n.name);
        let mut tasks = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let a = ask(&client.ns, at)?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let mut w = a.split_whitespace();
            tasks.insert(w.next().unwrap_or_default().to_string());
            assert_eq!(
                w.next(),
                Some(v6_of(&client).to_string().as_str()),
                "the task sees the outside client's IPv6 address"
            );
        }
        assert_eq!(tasks.len(), 2, "{} spreads over both tasks", n.name);
    }
    // and over IPv4 as before
    let at4 = SocketAddr::new(IpAddr::V4(n2.addr), 8080);
    assert!(settles(&client.ns, at4, |r| r.is_ok())?.is_ok());

    // a policy with an IPv6 CIDR: n2 refuses the client's /64 over IPv6 only
    t.cli_ok(
        &n1,
        &[
            "policy",
            "add",
            "--node",
            "n2",
            "--port",
            "8080",
            "--action",
            "reject",
            "--from",
            "fd99::/64",
        ],
    )?;
    let at_n2 = SocketAddr::new(IpAddr::V6(v6_of(&n2)), 8080);
    let refused = settles(&client.ns, at_n2, |r| {
        *r == Err(ErrorKind::ConnectionRefused)
    })?;
    assert_eq!(
        refused,
        Err(ErrorKind::ConnectionRefused),
        "n2 rejects fd99::/64"
    );
    let at_n1 = SocketAddr::new(IpAddr::V6(v6_of(&n1)), 8080);
    assert!(ask(&client.ns, at_n1)?.is_ok(), "n1 has no such policy");
    assert!(
        ask(&client.ns, at4)?.is_ok(),
        "an IPv6 rule says nothing of IPv4 clients"
    );
    assert!(
        eventually(Duration::from_secs(5), || Ok(dropped(
            &t,
            &n2,
            "policy_reject"
        )? > 0))?,
        "n2 counted its refusals"
    );

    // an IPv6-only network: its containers ask DNS over IPv6
    t.cli_ok(&n1, &["network", "create", "six", "--subnet", "fd67::/64"])?;
    let c3 = t.add_container("c3")?;
    let c4 = t.add_container("c4")?;
    t.cli_json(
        &n1,
        &["endpoint", "create", "--network", "six", "--netns", &c3],
    )?;
    let e4 = t.cli_json(
        &n2,
        &["endpoint", "create", "--network", "six", "--netns", &c4],
    )?;
    let (_, c4_v6) = ips_of(&e4);
    let resolv = exec_ok(&c3, &["cat", "/etc/resolv.conf"])?;
    assert!(resolv.contains("nameserver fd67::1"), "{resolv}");
    assert!(
        eventually(Duration::from_secs(5), || Ok(
            lookup(&c3, "ahostsv6", &c4)? == vec![c4_v6.clone()]
        ))?,
        "c4 by name over IPv6 DNS: {:?}",
        lookup(&c3, "ahostsv6", &c4)?
    );
    assert!(ping(&c3, &c4_v6, 2, None)?);
    drop(servers);
    drop(echo);
    Ok(())
}

//! Service VIPs balanced on the client's node: three tasks on three nodes share
//! the connections made to the VIP; replies come from the VIP; `lb ls` and
//! `conntrack ls` show the virtual service and its connections; bad requests are
//! refused.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vxmesh_netns_tests::*;

/// A task that writes its name to each connection and closes it.
fn name_server(ns: &str, addr: SocketAddr, name: &str) -> anyhow::Result<AnswerServer> {
    let name = name.to_string();
    answer_server(ns, addr, false, move |_| name.clone())
}

/// Connects to `vip:port` from `ns` and returns what the server says, and the
/// address the reply came from.
fn ask(ns: &str, vip: SocketAddr) -> anyhow::Result<(String, SocketAddr)> {
    in_netns(ns, move || -> anyhow::Result<(String, SocketAddr)> {
        let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        let peer = c.peer_addr()?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok((s, peer))
    })?
}

#[test]
fn a_vip_balances_over_tasks_on_three_nodes() -> anyhow::Result<()> {
    a_vip_balances_over_tasks_on_three_nodes_on(StoreKind::Sqlite)
}

#[test]
fn a_vip_balances_over_tasks_on_three_nodes_etcd() -> anyhow::Result<()> {
    a_vip_balances_over_tasks_on_three_nodes_on(StoreKind::Etcd)
}

fn a_vip_balances_over_tasks_on_three_nodes_on(store: StoreKind) -> anyhow::Result<()> {
    let mut t = Topology::with_store("svc", store)?;
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| t.add_node(n))
        .collect::<anyhow::Result<_>>()?;
    for n in &nodes {
        t.start_agent(n, &[])?;
    }
    t.cli_ok(
        &nodes[0],
        &["network", "create", "web", "--subnet", "10.45.0.0/24"],
    )?;
    let svc = t.cli_json(&nodes[0], &["service", "create", "api", "--network", "web"])?;
    let vip: std::net::IpAddr = svc["vips"]["web"].as_str().unwrap().parse()?;
    let mut servers = Vec::new();
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let ns = t.add_container(&format!("t{}", i + 1))?;
        let e = endpoint(&t, n, "web", &ns, &["--service", "api"])?;
        servers.push(name_server(
            &ns,
            SocketAddr::new(e.ip.parse()?, 8080),
            &format!("task{}", i + 1),
        )?);
        tasks.push(e);
    }
    let client = t.add_container("client")?;
    endpoint(&t, &nodes[0], "web", &client, &[])?;
    assert!(
        ping(&client, &tasks[1].ip, 3, None)?,
        "the overlay works before the VIP is asked"
    );

    // 30 connections to the VIP: every task gets its share, every reply is from the VIP
    let target = SocketAddr::new(vip, 8080);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let (name, from) = ask(&client, target)?;
        assert_eq!(from, target, "a reply did not come from the VIP");
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "not every task was used: {seen:?}");
    assert!(seen.values().all(|&n| n >= 4), "uneven: {seen:?}");

    // UDP through the VIP: each task answers from its own echo server
    let mut udp = Vec::new();
    for (i, e) in tasks.iter().enumerate() {
        udp.push(udp_echo_server(
            &format!("{}-t{}", t.prefix(), i + 1),
            SocketAddr::new(e.ip.parse()?, 9090),
        )?);
    }
    let back = udp_roundtrip(
        &client,
        SocketAddr::new(vip, 9090),
        b"ping over udp",
        Duration::from_secs(5),
    )?;
    assert_eq!(back, b"ping over udp");

    // the balancer's view, ipvsadm-style, and the tracked connections
    let lb = t.cli_json(&nodes[0], &["lb", "ls"])?;
    let of = |lb: &serde_json::Value, vip: std::net::IpAddr| {
        lb.as_array()
            .and_then(|a| a.iter().find(|v| v["vip"] == vip.to_string()).cloned())
            .unwrap_or_default()
    };
    let vs = &of(&lb, vip);
    assert_eq!(vs["scheduler"], "rr");
    assert_eq!(vs["backends"].as_array().unwrap().len(), 3);
    let conns: u64 = vs["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["active"].as_u64().unwrap() + b["inactive"].as_u64().unwrap())
        .sum();
    assert!(conns >= 30, "lb ls counts {conns} connections: {lb}");
    assert!(t.cli_ok(&nodes[0], &["lb", "ls"])?.contains("FWM  256 rr"));
    assert!(
        t.cli_json(&nodes[0], &["conntrack", "ls"])?
            .as_array()
            .unwrap()
            .len()
            >= 30
    );
    let ls = t.cli_json(&nodes[1], &["service", "ls"])?;
    assert_eq!(ls[0]["tasks"], 3);
    assert!(t
        .cli_json(&nodes[0], &["conntrack", "ls"])?
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["proto"] == "udp"));

    // maglev: one flow, one task, whichever connection of it; lc: spread
    t.cli_ok(
        &nodes[0],
        &[
            "service",
            "create",
            "mg",
            "--network",
            "web",
            "--scheduler",
            "maglev",
        ],
    )?;
    let lc = t.cli_json(
        &nodes[0],
        &[
            "service",
            "create",
            "lc",
            "--network",
            "web",
            "--scheduler",
            "lc",
        ],
    )?;
    assert_eq!(lc["scheduler"], "lc");
    let mg = t.cli_json(&nodes[0], &["service", "inspect", "mg"])?;
    assert_eq!(mg["scheduler"], "maglev");

    // a task removed leaves the balancer
    t.cli_ok(&nodes[0], &["endpoint", "rm", &tasks[2].id])?;
    let gone = eventually(Duration::from_secs(3), || {
        let lb = t.cli_json(&nodes[0], &["lb", "ls"])?;
        Ok(of(&lb, vip)["backends"].as_array().map(|b| b.len()) == Some(2))
    })?;
    assert!(gone, "the removed task is still a backend");
    for _ in 0..10 {
        assert_ne!(ask(&client, target)?.0, "task3");
    }

    // bad requests are refused, and nothing half-made stays
    let o = t.cli(
        &nodes[0],
        &[
            "service",
            "create",
            "pub",
            "--network",
            "web",
            "--publish",
            "8080:80/sctp",
        ],
    )?;
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--publish"));
    let o = t.cli(&nodes[0], &["service", "rm", "api"])?;
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("task"));
    let stray = t.add_container("stray")?;
    let o = t.cli(
        &nodes[0],
        &[
            "endpoint",
            "create",
            "--network",
            "web",
            "--netns",
            &stray,
            "--service",
            "nosuch",
        ],
    )?;
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("no service named nosuch")
    );
    assert_eq!(
        t.cli_json(&nodes[0], &["service", "ls"])?
            .as_array()
            .unwrap()
            .len(),
        3,
        "api, mg and lc, nothing else"
    );
    Ok(())
}

/// The embedded DNS at the gateway: a service name is its VIP, `tasks.NAME` every
/// task (rotated), a container its namespace's name; containers' resolv.conf
/// points at it, so the system resolver finds them.
#[test]
fn service_names_resolve_in_containers() -> anyhow::Result<()> {
    let mut t = Topology::new("dns")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "d", "--subnet", "10.46.0.0/24"])?;
    let svc = t.cli_json(&n1, &["service", "create", "db", "--network", "d"])?;
    let vip = svc["vips"]["d"].as_str().unwrap().to_string();
    let t1 = t.add_container("t1")?;
    let t2 = t.add_container("t2")?;
    let e1 = endpoint(&t, &n1, "d", &t1, &["--service", "db"])?;
    let e2 = endpoint(&t, &n2, "d", &t2, &["--service", "db"])?;
    let c = t.add_container("c")?;
    endpoint(&t, &n2, "d", &c, &[])?;
    let resolv = exec_ok(&c, &["cat", "/etc/resolv.conf"])?;
    assert!(resolv.contains("nameserver 10.46.0.1"), "{resolv}");
    let hosts = |name: &str| -> anyhow::Result<Vec<String>> {
        let out = exec(&c, &["getent", "ahostsv4", name])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut ips: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect();
        ips.dedup();
        Ok(ips)
    };
    assert_eq!(hosts("db")?, vec![vip.clone()]);
    let mut tasks = hosts("tasks.db")?;
    tasks.sort();
    let mut want = vec![e1.ip.clone(), e2.ip.clone()];
    want.sort();
    assert_eq!(tasks, want);
    // the first answer rotates between queries (gethostbyname keeps the DNS
    // order; getaddrinfo re-sorts addresses, so it cannot show this)
    let firsts: std::collections::BTreeSet<String> = (0..6)
        .filter_map(|_| {
            let out = exec(&c, &["getent", "hosts", "tasks.db"]).ok()?;
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .map(String::from)
        })
        .collect();
    assert_eq!(firsts.len(), 2, "tasks.db is not rotated: {firsts:?}");
    assert_eq!(hosts(&t1)?, vec![e1.ip.clone()], "a container by its name");
    // dnsrr: no VIP; the name is every task
    let rr = t.cli_json(
        &n1,
        &[
            "service",
            "create",
            "cache",
            "--network",
            "d",
            "--endpoint-mode",
            "dnsrr",
        ],
    )?;
    assert!(rr["vips"].as_object().is_none_or(|v| v.is_empty()), "{rr}");
    let r1 = t.add_container("r1")?;
    let er = endpoint(&t, &n1, "d", &r1, &["--service", "cache"])?;
    let found = eventually(std::time::Duration::from_secs(3), || {
        Ok(hosts("cache")? == vec![er.ip.clone()])
    })?;
    assert!(found, "dnsrr name: {:?}", hosts("cache")?);
    assert!(hosts("nosuch.example")?.is_empty());
    let counted = eventually(std::time::Duration::from_secs(2), || {
        Ok(t.cli_json(&n2, &["stats"])?["dns_answers"]
            .as_u64()
            .unwrap_or(0)
            >= 5)
    })?;
    assert!(
        counted,
        "DNS answers not counted: {}",
        t.cli_json(&n2, &["stats"])?
    );
    Ok(())
}

/// A task whose health probe fails leaves the balancer and DNS on every node
/// (and comes back when it answers again).
#[test]
fn an_unhealthy_task_leaves_the_balancer_and_dns() -> anyhow::Result<()> {
    let mut t = Topology::new("health")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "h", "--subnet", "10.47.0.0/24"])?;
    let svc = t.cli_json(
        &n1,
        &[
            "service",
            "create",
            "hc",
            "--network",
            "h",
            "--health",
            "tcp:8080",
            "--health-interval",
            "300ms",
        ],
    )?;
    let vip: std::net::IpAddr = svc["vips"]["h"].as_str().unwrap().parse()?;
    let (t1, t2) = (t.add_container("t1")?, t.add_container("t2")?);
    let e1 = endpoint(&t, &n1, "h", &t1, &["--service", "hc"])?;
    let e2 = endpoint(&t, &n2, "h", &t2, &["--service", "hc"])?;
    let _s1 = name_server(&t1, SocketAddr::new(e1.ip.parse()?, 8080), "task1")?;
    let s2 = name_server(&t2, SocketAddr::new(e2.ip.parse()?, 8080), "task2")?;
    let c = t.add_container("c")?;
    endpoint(&t, &n1, "h", &c, &[])?;
    let target = SocketAddr::new(vip, 8080);
    let names = |n: usize| -> anyhow::Result<BTreeMap<String, usize>> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            *seen.entry(ask(&c, target)?.0).or_default() += 1;
        }
        Ok(seen)
    };
    assert_eq!(names(10)?.len(), 2, "both tasks serve while healthy");

    // task2 stops answering: out of the balancer (seen from n1) and of DNS
    drop(s2);
    let out = eventually(Duration::from_secs(5), || {
        let lb = t.cli_json(&n1, &["lb", "ls"])?;
        Ok(lb[0]["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["address"] == e2.ip && b["healthy"] == false))
    })?;
    assert!(
        out,
        "task2 still healthy: {}",
        t.cli_json(&n1, &["lb", "ls"])?
    );
    let seen = names(10)?;
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["task1"], "{seen:?}");
    let tasks = exec_ok(&c, &["getent", "ahostsv4", "tasks.hc"])?;
    assert!(!tasks.contains(&e2.ip) && tasks.contains(&e1.ip), "{tasks}");

    // back when it answers again
    let _s2 = name_server(&t2, SocketAddr::new(e2.ip.parse()?, 8080), "task2")?;
    let back = eventually(Duration::from_secs(5), || Ok(names(6)?.len() == 2))?;
    assert!(back, "task2 did not come back");
    Ok(())
}

/// A node that stops (its agent silent) loses its tasks from the other nodes'
/// balancers within seconds, and gets them back when it returns.
#[test]
fn a_stopped_node_leaves_the_balancers_and_comes_back() -> anyhow::Result<()> {
    a_stopped_node_leaves_the_balancers_and_comes_back_on(StoreKind::Sqlite)
}

#[test]
fn a_stopped_node_leaves_the_balancers_and_comes_back_etcd() -> anyhow::Result<()> {
    a_stopped_node_leaves_the_balancers_and_comes_back_on(StoreKind::Etcd)
}

fn a_stopped_node_leaves_the_balancers_and_comes_back_on(store: StoreKind) -> anyhow::Result<()> {
    let mut t = Topology::with_store("live", store)?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "l", "--subnet", "10.49.0.0/24"])?;
    t.cli_ok(&n1, &["service", "create", "s", "--network", "l"])?;
    let t2 = t.add_container("t2")?;
    let e2 = endpoint(&t, &n2, "l", &t2, &["--service", "s"])?;
    fn healthy(t: &Topology, n1: &Node, ip: &str, want: bool) -> anyhow::Result<bool> {
        let lb = t.cli_json(n1, &["lb", "ls"])?;
        Ok(lb[0]["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["address"] == ip && b["healthy"] == want))
    }
    fn status(t: &Topology, n1: &Node, name: &str) -> anyhow::Result<String> {
        let nodes = t.cli_json(n1, &["node", "ls"])?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == name)
            .map(|n| n["status"].to_string())
            .unwrap_or_default())
    }
    assert!(eventually(Duration::from_secs(3), || Ok(status(
        &t, &n1, "n2"
    )? == "\"up\""))?);
    assert!(healthy(&t, &n1, &e2.ip, true)?);
    t.stop_agent(&n2)?;
    let out = eventually(Duration::from_secs(8), || healthy(&t, &n1, &e2.ip, false))?;
    assert!(
        out,
        "n2's task still a healthy backend: {}",
        t.cli_json(&n1, &["lb", "ls"])?
    );
    assert_eq!(status(&t, &n1, "n2")?, "\"down\"");
    assert!(t.cli_ok(&n1, &["node", "ls"])?.contains("down"));
    t.start_agent(&n2, &[])?;
    assert!(
        eventually(Duration::from_secs(8), || healthy(&t, &n1, &e2.ip, true))?,
        "n2's task did not come back"
    );
    assert_eq!(status(&t, &n1, "n2")?, "\"up\"");
    Ok(())
}

/// Names the embedded DNS does not know go to the node's own resolvers, and the
/// answer comes back to the container from its gateway.
#[test]
fn unknown_names_are_forwarded_to_the_nodes_resolver() -> anyhow::Result<()> {
    forwarded_to_a_resolver_at(false)
}

/// The same with the node's only resolver at an IPv6 address.
#[test]
fn unknown_names_are_forwarded_to_an_ipv6_resolver() -> anyhow::Result<()> {
    forwarded_to_a_resolver_at(true)
}

fn forwarded_to_a_resolver_at(v6: bool) -> anyhow::Result<()> {
    let mut t = Topology::new(if v6 { "fwd6" } else { "fwd" })?;
    let n1 = t.add_node("n1")?;
    let up = t.add_outside_host("up")?;
    let up_ip: std::net::IpAddr = if v6 {
        // IPv6 beside the harness's IPv4 on the underlay, for these two only
        for (n, a) in [(&n1, "fd99::1/64"), (&up, "fd99::53/64")] {
            exec_ok(
                &n.ns,
                &["ip", "-6", "addr", "add", a, "dev", "ul0", "nodad"],
            )?;
        }
        "fd99::53".parse()?
    } else {
        up.addr.into()
    };
    // a resolver on the underlay that answers every A query with 192.0.2.123
    let upstream = SocketAddr::new(up_ip, 53);
    let sock = in_netns(&up.ns, move || std::net::UdpSocket::bind(upstream))??;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asked = queries.clone();
    let resolver = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !flag.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            asked.fetch_add(1, Ordering::SeqCst);
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80; // a response
            r[3] |= 0x80; // recursion available
            r[6..8].copy_from_slice(&1u16.to_be_bytes());
            r[8..12].copy_from_slice(&[0, 0, 0, 0]);
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 123]);
            let _ = sock.send_to(&r, from);
        }
    });
    t.set_node_resolver(&n1, Some(up_ip))?;
    t.start_agent(&n1, &[])?;
    t.cli_ok(&n1, &["network", "create", "f", "--subnet", "10.50.0.0/24"])?;
    let c = t.add_container("c")?;
    endpoint(&t, &n1, "f", &c, &[])?;
    let out = exec_ok(&c, &["getent", "ahostsv4", "www.example.test"])?;
    assert!(
        out.contains("192.0.2.123"),
        "not forwarded to {up_ip}: {out}"
    );
    // names it knows it still answers itself
    assert!(exec_ok(&c, &["getent", "ahostsv4", &c])?.contains("10.50.0."));
    // an --internal network forwards nothing: a name is data carried out
    // (Docker's CVE-2024-29018); its own names still resolve
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "i",
            "--subnet",
            "10.51.0.0/24",
            "--internal",
        ],
    )?;
    let ci = t.add_container("ci")?;
    endpoint(&t, &n1, "i", &ci, &[])?;
    let before = queries.load(Ordering::SeqCst);
    let out = exec(&ci, &["getent", "ahostsv4", "leak.example.test"])?;
    assert!(
        !out.status.success(),
        "an internal network's container resolved an outside name: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        queries.load(Ordering::SeqCst),
        before,
        "the node's resolver was asked for an internal network's name"
    );
    assert!(exec_ok(&ci, &["getent", "ahostsv4", &ci])?.contains("10.51.0."));
    stop.store(true, Ordering::Relaxed);
    resolver
        .join()
        .map_err(|_| anyhow::anyhow!("resolver thread panicked"))?;
    Ok(())
}

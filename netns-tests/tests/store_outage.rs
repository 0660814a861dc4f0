//! The store going away (issue 6, point 2): with etcd stopped, the dataplane keeps
//! forwarding on the last state (overlay and VIP), no node is declared down, and
//! the CLI says the store is unreachable; when etcd is back the agents resync. A
//! node cut off from etcd alone keeps forwarding too, and applies what the others
//! changed meanwhile once it can reach etcd again.

mod common;

use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

/// What a task at `vip:port` answers to a new connection from `ns`.
fn ask(ns: &str, vip: SocketAddr) -> anyhow::Result<String> {
    in_netns(ns, move || -> anyhow::Result<String> {
        let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })?
}

/// Whether `node`'s agent lists `ip` as a healthy backend.
fn backend_healthy(t: &Topology, node: &Node, ip: &str) -> anyhow::Result<bool> {
    let lb = t.cli_json(node, &["lb", "ls"])?;
    Ok(lb
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["backends"].as_array().into_iter().flatten())
        .any(|b| b["address"] == ip && b["healthy"] == true))
}

fn cli_err(t: &Topology, node: &Node, args: &[&str]) -> anyhow::Result<String> {
    let out = t.cli(node, args)?;
    anyhow::ensure!(
        !out.status.success(),
        "`vxmesh {}` succeeded while the store was unreachable",
        args.join(" ")
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn forwarding_goes_on_while_etcd_is_away_and_agents_resync() -> anyhow::Result<()> {
    let mut t = Topology::with_store("outage", StoreKind::Etcd)?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "o", "--subnet", "10.52.0.0/24"])?;
    let svc = t.cli_json(&n1, &["service", "create", "api", "--network", "o"])?;
    let vip: std::net::IpAddr = svc["vips"]["o"].as_str().unwrap().parse()?;
    let (c1, task) = (t.add_container("c1")?, t.add_container("task")?);
    let e1 = endpoint(&t, &n1, "o", &c1, &[])?;
    let et = endpoint(&t, &n2, "o", &task, &["--service", "api"])?;
    let _srv = answer_server(&task, SocketAddr::new(et.ip.parse()?, 8080), false, |_| {
        "from-task".to_string()
    })?;
    let target = SocketAddr::new(vip, 8080);
    assert!(ping(&c1, &et.ip, 2, None)?);
    assert_eq!(ask(&c1, target)?, "from-task");

    // etcd stops: past the 4 s liveness window, everything still forwards
    t.stop_etcd()?;
    let stopped = Instant::now();
    let e = cli_err(&t, &n1, &["network", "create", "x"])?;
    assert!(e.contains("is unreachable") && e.contains("etcd://"), "{e}");
    let e = cli_err(&t, &n2, &["network", "ls"])?;
    assert!(e.contains("is unreachable"), "{e}");
    while stopped.elapsed() < Duration::from_secs(7) {
        assert!(
            ping(&c1, &et.ip, 1, None)?,
            "the overlay stopped with the store"
        );
        assert_eq!(
            ask(&c1, target)?,
            "from-task",
            "the VIP stopped with the store"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        backend_healthy(&t, &n1, &et.ip)?,
        "a node was declared down because the store was: {}",
        t.cli_json(&n1, &["lb", "ls"])?
    );
    let stats = t.cli_json(&n1, &["stats"])?;
    assert_ne!(stats["store_reachable"], true, "{stats}");

    // etcd returns: the CLI works again and no node flaps down meanwhile
    t.start_etcd()?;
    assert!(
        eventually(Duration::from_secs(10), || Ok(t
            .cli(&n1, &["network", "ls"])?
            .status
            .success()))?,
        "the CLI did not recover with the store"
    );
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(6) {
        assert!(
            backend_healthy(&t, &n1, &et.ip)?,
            "n2 flapped down after the store came back: {}",
            t.cli_json(&n1, &["node", "ls"])?
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // n1 alone is cut off from etcd; n2 changes the state meanwhile
    let etcd = t.etcd_addr().unwrap().to_string();
    exec_ok(&n1.ns, &["ip", "route", "add", "blackhole", &etcd])?;
    assert!(
        eventually(Duration::from_secs(10), || Ok(!t
            .cli(&n1, &["network", "ls"])?
            .status
            .success()))?,
        "n1 still reaches etcd through a blackhole route"
    );
    let svc2 = t.cli_json(&n2, &["service", "create", "web", "--network", "o"])?;
    let vip2: std::net::IpAddr = svc2["vips"]["o"].as_str().unwrap().parse()?;
    let task2 = t.add_container("task2")?;
    let et2 = endpoint(&t, &n2, "o", &task2, &["--service", "web"])?;
    let _srv2 = answer_server(
        &task2,
        SocketAddr::new(et2.ip.parse()?, 8080),
        false,
        |_| "from-web".to_string(),
    )?;
    let target2 = SocketAddr::new(vip2, 8080);
    assert!(
        ping(&c1, &et.ip, 2, None)?,
        "n1 stopped forwarding when cut off"
    );
    assert_eq!(ask(&c1, target)?, "from-task");
    assert!(
        ask(&c1, target2).is_err(),
        "n1 balanced a VIP it cannot have heard of"
    );
    exec_ok(&n1.ns, &["ip", "route", "del", "blackhole", &etcd])?;
    let resynced = eventually(Duration::from_secs(15), || {
        Ok(ask(&c1, target2).is_ok_and(|s| s == "from-web"))
    })?;
    assert!(
        resynced,
        "n1 did not apply what changed while it was cut off"
    );
    assert!(ping(&c1, &e1.ip, 1, None)?);
    Ok(())
}

/// A key rotation while the store is away (issue 18, point 9): asked for with
/// the CLI, it fails saying the store is unreachable and changes nothing; a
/// scheduled one fails too and the agent keeps the key its peers know (on disk
/// and in use), so the encrypted network keeps forwarding; once etcd is back
/// the rotation happens.
#[test]
fn key_rotation_while_etcd_is_away_keeps_encrypted_networks_up() -> anyhow::Result<()> {
    let mut t = Topology::with_store("outrot", StoreKind::Etcd)?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    // n1 rotates on its own schedule, as Docker does every 12 h
    t.start_agent(&n1, &["--key-rotation-interval", "2s"])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "sec",
            "--encrypted",
            "--subnet",
            "10.53.0.0/24",
        ],
    )?;
    let (c1, c2) = (t.add_container("c1")?, t.add_container("c2")?);
    let e1 = endpoint(&t, &n1, "sec", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "sec", &c2, &[])?;
    assert!(ping(&c1, &e2.ip, 2, None)?);
    let key_file = t.dir().join("n1").join("node.key");

    t.stop_etcd()?;
    let e = cli_err(&t, &n1, &["node", "rotate-key", "n2"])?;
    assert!(e.contains("is unreachable"), "{e}");
    // a rotation that was under way when etcd stopped has settled by now
    std::thread::sleep(Duration::from_secs(4));
    let key = std::fs::read_to_string(&key_file)?;
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(8) {
        assert!(
            ping(&c1, &e2.ip, 1, None)? && ping(&c2, &e1.ip, 1, None)?,
            "the encrypted network stopped while a rotation could not reach the store"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        std::fs::read_to_string(&key_file)?,
        key,
        "n1 replaced its key while the store could not take the public one"
    );
    assert!(
        t.agent_log(&n1).contains("key rotation failed"),
        "n1 never tried to rotate during the outage"
    );

    t.start_etcd()?;
    assert!(
        eventually(Duration::from_secs(15), || Ok(std::fs::read_to_string(
            &key_file
        )? != key))?,
        "n1 did not rotate once etcd was back"
    );
    assert!(ping(&c1, &e2.ip, 2, None)? && ping(&c2, &e1.ip, 2, None)?);
    Ok(())
}

//! A short soak (issue 21, point 4; `netns-scale --soak 1h` is the long one):
//! tasks of a service come and go on one node while a client on another keeps
//! a connection open to each through the VIP. Every removed task must leave
//! both agents' balancers and the client node's conntrack (its open connection
//! included) within a few seconds, and after the churn the tables are back to
//! their size before it.

mod common;

use common::*;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

const CHURN: Duration = Duration::from_secs(25);
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// Every backend address `lb ls` lists for `vip`, healthy or not.
fn backends(t: &Topology, n: &Node, vip: IpAddr) -> anyhow::Result<Vec<String>> {
    let rows = t.cli_json(n, &["lb", "ls"])?;
    Ok(rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["vip"].as_str() == Some(vip.to_string().as_str()))
        .flat_map(|r| r["backends"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["address"].as_str().map(String::from))
        .collect())
}

/// Conntrack rows of `n` whose backend is `ip`.
fn entries_to(t: &Topology, n: &Node, ip: &str) -> anyhow::Result<usize> {
    let rows = t.cli_json(n, &["conntrack", "ls"])?;
    let prefix = format!("{ip}:");
    Ok(rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["backend"]
                .as_str()
                .is_some_and(|b| b.starts_with(&prefix))
        })
        .count())
}

/// Opens a connection from `ns` to `vip` until `want` answers (round robin
/// over the tasks), and keeps that one open.
fn connect_to(ns: &str, vip: SocketAddr, want: &str) -> anyhow::Result<Option<TcpStream>> {
    for _ in 0..20 {
        let c = in_netns(ns, move || -> anyhow::Result<(TcpStream, String)> {
            let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut b = [0u8; 64];
            let n = c.read(&mut b)?;
            Ok((c, String::from_utf8_lossy(&b[..n]).trim().to_string()))
        })??;
        if c.1 == want {
            return Ok(Some(c.0));
        }
    }
    Ok(None)
}

#[test]
fn churned_tasks_leave_no_backend_or_conntrack_entry_behind() -> anyhow::Result<()> {
    let mut t = Topology::new("soak")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "web", "--subnet", "10.62.0.0/24"],
    )?;
    let svc = t.cli_json(&n1, &["service", "create", "api", "--network", "web"])?;
    let vip: IpAddr = svc["vips"]["web"].as_str().unwrap().parse()?;
    let stay = t.add_container("stay")?;
    endpoint(&t, &n2, "web", &stay, &["--service", "api"])?;
    let _stay = answer_server(&stay, "0.0.0.0:80".parse()?, true, |_| "stay\n".into())?;
    let client = t.add_container("client")?;
    endpoint(&t, &n1, "web", &client, &[])?;
    let churn = t.add_container("churn")?;
    let dst = SocketAddr::new(vip, 80);
    assert!(
        connect_to(&client, dst, "stay")?.is_some(),
        "the VIP answers"
    );
    let base = (backends(&t, &n1, vip)?, backends(&t, &n2, vip)?);
    assert_eq!(base.0.len(), 1, "{base:?}");

    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < CHURN {
        rounds += 1;
        let ep = endpoint(&t, &n2, "web", &churn, &["--service", "api"])?;
        let srv = answer_server(&churn, "0.0.0.0:80".parse()?, true, |_| "churn\n".into())?;
        let open = connect_to(&client, dst, "churn")?;
        assert!(
            open.is_some(),
            "round {rounds}: the new task answers through the VIP"
        );
        assert!(
            entries_to(&t, &n1, &ep.ip)? > 0,
            "its connection is tracked"
        );
        t.cli_ok(&n2, &["endpoint", "rm", &ep.id])?;
        let gone = eventually(GONE_WITHIN, || {
            Ok(!backends(&t, &n1, vip)?.contains(&ep.ip)
                && !backends(&t, &n2, vip)?.contains(&ep.ip)
                && entries_to(&t, &n1, &ep.ip)? == 0)
        })?;
        assert!(
            gone,
            "round {rounds}: task {} ({}) still a backend or in conntrack {GONE_WITHIN:?} after its removal: n1 {:?}, n2 {:?}, {} entries",
            ep.id,
            ep.ip,
            backends(&t, &n1, vip)?,
            backends(&t, &n2, vip)?,
            entries_to(&t, &n1, &ep.ip)?
        );
        drop((open, srv));
    }
    assert!(rounds >= 3, "only {rounds} rounds in {CHURN:?}");
    assert_eq!(
        (backends(&t, &n1, vip)?, backends(&t, &n2, vip)?),
        base,
        "the balancers are back to the one task that stayed"
    );
    assert!(
        connect_to(&client, dst, "stay")?.is_some(),
        "and it still answers"
    );
    Ok(())
}

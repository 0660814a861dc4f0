//! Invalid rows in the store (issue 18, point 7): rows written behind the
//! agents' backs (one that does not parse, a network with another's VNI and an
//! endpoint on it, an endpoint on a network that does not exist) are left out
//! by every agent,
//! logged once and counted in `vxmesh stats`; the agents keep forwarding and
//! keep applying valid changes made after them.

mod common;

use anyhow::Context;
use common::*;
use std::process::Command;
use std::time::Duration;
use vxmesh_netns_tests::*;

/// Runs `sql` on the topology's SQLite store with the `sqlite3` shell.
fn sql(t: &Topology, sql: &str) -> anyhow::Result<String> {
    let db = t.dir().join("store.db");
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(&db)
        .arg(sql)
        .output()
        .context("cannot run sqlite3 (scripts/install-deps.sh installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn invalid_rows(t: &Topology, node: &Node) -> anyhow::Result<u64> {
    t.cli_json(node, &["stats"])?["invalid_rows"]
        .as_u64()
        .context("no invalid_rows in stats")
}

#[test]
fn agents_leave_invalid_rows_out_and_go_on() -> anyhow::Result<()> {
    let mut t = Topology::new("badrow")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "o", "--subnet", "10.54.0.0/24"])?;
    let (c1, c2) = (t.add_container("c1")?, t.add_container("c2")?);
    let _e1 = endpoint(&t, &n1, "o", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "o", &c2, &[])?;
    assert!(ping(&c1, &e2.ip, 2, None)?);
    assert_eq!(invalid_rows(&t, &n1)?, 0);

    // behind the agents' backs: a row that does not parse, a copy of o with
    // o's VNI (which would merge the two), an endpoint on no network
    let o = sql(
        &t,
        "SELECT value FROM objects WHERE kind = 'network' AND key = 'o'",
    )?;
    let mut dup: serde_json::Value = serde_json::from_str(o.trim())?;
    dup["name"] = "dup".into();
    dup["subnets"] = serde_json::json!(["10.55.0.0/24"]);
    dup["gateways"] = serde_json::json!(["10.55.0.1"]);
    dup["created"] = (dup["created"].as_u64().unwrap_or(0) + 1).into();
    let mut orphan: serde_json::Value = serde_json::from_str(
        sql(
            &t,
            &format!(
                "SELECT value FROM objects WHERE kind = 'endpoint' AND key = '{}'",
                e2.id
            ),
        )?
        .trim(),
    )?;
    // and one on dup, into a real namespace on n1: attached, it would put c5
    // on o's VNI, beside c2
    let c5 = t.add_container("c5")?;
    let mut merged = orphan.clone();
    merged["id"] = "00000000000000ef".into();
    merged["network"] = "dup".into();
    merged["node"] = "n1".into();
    merged["netns"] = c5.clone().into();
    merged["ips"] = serde_json::json!(["10.55.0.5"]);
    merged["mac"] = "02:00:00:00:55:05".into();
    orphan["id"] = "00000000000000ee".into();
    orphan["network"] = "missing".into();
    orphan["netns"] = "nowhere".into();
    sql(
        &t,
        &format!(
            "BEGIN;
             INSERT INTO objects (kind, key, value) VALUES ('network', 'garbage', '{{not json');
             INSERT INTO objects (kind, key, value) VALUES ('network', 'dup', '{dup}');
             INSERT INTO objects (kind, key, value) VALUES ('endpoint', '00000000000000ee', '{orphan}');
             INSERT INTO objects (kind, key, value) VALUES ('endpoint', '00000000000000ef', '{merged}');
             UPDATE meta SET v = v + 1 WHERE k = 'revision';
             COMMIT;"
        ),
    )?;
    for n in [&n1, &n2] {
        assert!(
            eventually(Duration::from_secs(5), || Ok(invalid_rows(&t, n)? == 4))?,
            "{} does not count the 4 invalid rows: {}",
            n.name,
            t.cli_json(n, &["stats"])?
        );
    }
    let text = t.cli_ok(&n1, &["stats"])?;
    assert!(
        text.contains("invalid_rows 4") && text.contains("network garbage"),
        "{text}"
    );
    let stats = t.cli_json(&n1, &["stats"])?;
    let why = stats["invalid"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["key"] == "dup")
        .map(|r| r["reason"].to_string())
        .unwrap_or_default();
    assert!(why.contains("already network o's"), "{stats}");
    // the endpoint on the left-out network got no interface
    std::thread::sleep(Duration::from_secs(1));
    let link = exec(&c5, &["ip", "link", "show", "eth0"])?;
    assert!(
        !link.status.success(),
        "an endpoint of a network with o's VNI was attached"
    );
    let nets = t.cli_ok(&n1, &["network", "ls"])?;
    assert!(!nets.contains("dup") && !nets.contains("garbage"), "{nets}");
    assert!(
        ping(&c1, &e2.ip, 2, None)?,
        "the overlay stopped with a bad row in the store"
    );

    // a valid change after them is applied on both nodes
    t.cli_ok(&n2, &["network", "create", "p", "--subnet", "10.56.0.0/24"])?;
    let (c3, c4) = (t.add_container("c3")?, t.add_container("c4")?);
    let _e3 = endpoint(&t, &n1, "p", &c3, &[])?;
    let e4 = endpoint(&t, &n2, "p", &c4, &[])?;
    assert!(
        ping(&c3, &e4.ip, 3, None)?,
        "a network created after the bad rows does not forward"
    );
    assert!(ping(&c1, &e2.ip, 1, None)?);
    // each agent said so once, not at every reload since
    for n in [&n1, &n2] {
        let log = t.agent_log(n);
        let said = log
            .lines()
            .filter(|l| l.contains("store row is invalid") && l.contains("garbage"))
            .count();
        assert_eq!(said, 1, "{}: logged {said} times:\n{log}", n.name);
    }
    Ok(())
}

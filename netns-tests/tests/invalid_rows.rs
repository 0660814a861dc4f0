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

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let digits: Vec<u32> = s
        .bytes()
        .filter_map(|b| B64.iter().position(|&x| x == b).map(|p| p as u32))
        .collect();
    let mut out = Vec::new();
    for c in digits.chunks(4) {
        let n = c
            .iter()
            .enumerate()
            .fold(0, |n, (i, d)| n | d << (18 - 6 * i));
        out.extend(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..c.len() - 1]);
    }
    out
}

/// One call to etcd's JSON gateway (`/v3/...`), from `node`'s namespace.
fn etcd_call(
    t: &Topology,
    node: &Node,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(t.etcd_addr().context("no etcd")?.into(), 2379);
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = in_netns(&node.ns, move || -> anyhow::Result<String> {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(req.as_bytes())?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })??;
    let json = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(json).with_context(|| format!("etcd answered {resp}"))
}

/// Reads and writes the store's rows behind the agents' backs.
struct Rows<'a> {
    t: &'a Topology,
    via: &'a Node,
}

impl Rows<'_> {
    fn get(&self, kind: &str, key: &str) -> anyhow::Result<serde_json::Value> {
        let text = match self.t.store_kind() {
            StoreKind::EtcdTls => anyhow::bail!("these tests write rows over plaintext etcd"),
            StoreKind::Sqlite => sql(
                self.t,
                &format!("SELECT value FROM objects WHERE kind = '{kind}' AND key = '{key}'"),
            )?,
            StoreKind::Etcd => {
                let r = etcd_call(
                    self.t,
                    self.via,
                    "/v3/kv/range",
                    serde_json::json!({"key": b64(format!("/vxmesh/state/{kind}/{key}").as_bytes())}),
                )?;
                let v = r["kvs"][0]["value"].as_str().context("no such row")?;
                String::from_utf8(unb64(v))?
            }
        };
        Ok(serde_json::from_str(text.trim())?)
    }

    /// Writes `rows` (kind, key, raw value) and then moves the revision.
    fn put(&self, rows: &[(&str, &str, String)]) -> anyhow::Result<()> {
        match self.t.store_kind() {
            StoreKind::EtcdTls => anyhow::bail!("these tests write rows over plaintext etcd"),
            StoreKind::Sqlite => {
                let mut q = String::from("BEGIN;");
                for (kind, key, value) in rows {
                    q += &format!(
                        "INSERT INTO objects (kind, key, value) VALUES ('{kind}', '{key}', '{value}');"
                    );
                }
                q += "UPDATE meta SET v = v + 1 WHERE k = 'revision'; COMMIT;";
                sql(self.t, &q)?;
            }
            StoreKind::Etcd => {
                for (kind, key, value) in rows {
                    etcd_call(
                        self.t,
                        self.via,
                        "/v3/kv/put",
                        serde_json::json!({
                            "key": b64(format!("/vxmesh/state/{kind}/{key}").as_bytes()),
                            "value": b64(value.as_bytes()),
                        }),
                    )?;
                }
                let rev = etcd_call(
                    self.t,
                    self.via,
                    "/v3/kv/range",
                    serde_json::json!({"key": b64(b"/vxmesh/state/revision")}),
                )?;
                let n: u64 = String::from_utf8(unb64(
                    rev["kvs"][0]["value"].as_str().context("no revision")?,
                ))?
                .parse()?;
                etcd_call(
                    self.t,
                    self.via,
                    "/v3/kv/put",
                    serde_json::json!({
                        "key": b64(b"/vxmesh/state/revision"),
                        "value": b64((n + 1).to_string().as_bytes()),
                    }),
                )?;
            }
        }
        Ok(())
    }
}

fn invalid_rows(t: &Topology, node: &Node) -> anyhow::Result<u64> {
    t.cli_json(node, &["stats"])?["invalid_rows"]
        .as_u64()
        .context("no invalid_rows in stats")
}

#[test]
fn agents_leave_invalid_rows_out_and_go_on() -> anyhow::Result<()> {
    leave_invalid_rows_out_on(StoreKind::Sqlite)
}

#[test]
fn agents_leave_invalid_rows_out_and_go_on_etcd() -> anyhow::Result<()> {
    leave_invalid_rows_out_on(StoreKind::Etcd)
}

fn leave_invalid_rows_out_on(store: StoreKind) -> anyhow::Result<()> {
    let mut t = Topology::with_store("badrow", store)?;
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
    let c5 = t.add_container("c5")?;
    let rows = Rows { t: &t, via: &n1 };
    let mut dup = rows.get("network", "o")?;
    dup["name"] = "dup".into();
    dup["subnets"] = serde_json::json!(["10.55.0.0/24"]);
    dup["gateways"] = serde_json::json!(["10.55.0.1"]);
    dup["created"] = (dup["created"].as_u64().unwrap_or(0) + 1).into();
    let mut orphan = rows.get("endpoint", &e2.id)?;
    // and one on dup, into a real namespace on n1: attached, it would put c5
    // on o's VNI, beside c2
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
    rows.put(&[
        ("network", "garbage", "{not json".to_string()),
        ("network", "dup", dup.to_string()),
        ("endpoint", "00000000000000ee", orphan.to_string()),
        ("endpoint", "00000000000000ef", merged.to_string()),
    ])?;
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

//! Flow logs (`vxmesh flows`) and policy audit mode, with real traffic: a TCP
//! connection through a service VIP is one record with its 5-tuple, service,
//! backend, translation, bytes both ways and its end (FIN); one refused by
//! the backend ends with RST, an unanswered UDP flow by idle expiry; a policy
//! drop is a drop record naming the policy; the filters, `--follow`, the
//! rotated JSON-lines file and the OTLP/JSON one; and an `--audit` policy lets
//! traffic through and logs what it would have done, where the same policy
//! enforced drops it.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

/// `vxmesh flows ARGS` on `n`, as JSON records.
fn flows(t: &Topology, n: &Node, args: &[&str]) -> Result<Vec<Value>> {
    let mut a = vec!["flows", "--limit", "1000"];
    a.extend_from_slice(args);
    let v = t.cli_json(n, &a)?;
    v.as_array()
        .cloned()
        .with_context(|| format!("flows gave no array: {v}"))
}

/// The record of `n` that `pick` selects, waiting for the agent to drain it.
fn record(t: &Topology, n: &Node, args: &[&str], pick: impl Fn(&Value) -> bool) -> Result<Value> {
    let mut found = None;
    eventually(Duration::from_secs(10), || {
        found = flows(t, n, args)?.into_iter().find(|r| pick(r));
        Ok(found.is_some())
    })?;
    found.with_context(|| {
        format!(
            "no such flow record on {} (flows {args:?}): {:?}",
            n.name,
            flows(t, n, args)
        )
    })
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Lines of a file, each parsed as JSON (all must parse).
fn json_lines(path: &std::path::Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// A TCP connection from `ns` to `dst` that sends `payload`, half-closes and
/// reads to the end; returns its source port (to find its record) and what
/// came back.
fn connect(ns: &str, dst: SocketAddr, payload: &[u8]) -> Result<(u16, Vec<u8>)> {
    let payload = payload.to_vec();
    in_netns(ns, move || -> Result<(u16, Vec<u8>)> {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        c.write_all(&payload)?;
        c.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        c.read_to_end(&mut back)?;
        Ok((c.local_addr()?.port(), back))
    })?
}

#[test]
fn flows_record_connections_drops_and_audited_policies() -> Result<()> {
    let mut t = Topology::new("flows")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let client = t.add_outside_host("client")?;
    let log = t.dir().join("n1-flows.jsonl");
    let otel = t.dir().join("n2-flows.otlp.jsonl");
    let log_s = log.display().to_string();
    let otel_s = otel.display().to_string();
    t.start_agent(
        &n1,
        &[
            "--flow-log",
            &log_s,
            "--flow-log-max-size",
            "4096",
            "--flow-log-keep",
            "2",
            "--test-conntrack-timeout-ms",
            "3000",
        ],
    )?;
    t.start_agent(&n2, &["--flow-log", &otel_s, "--flow-log-format", "otel"])?;
    t.cli_ok(
        &n1,
        &["network", "create", "app", "--subnet", "10.47.0.0/24"],
    )?;
    let svc = t.cli_json(
        &n1,
        &[
            "service",
            "create",
            "web",
            "--network",
            "app",
            "--publish",
            "8080:80",
        ],
    )?;
    let vip: IpAddr = svc["vips"]["app"].as_str().context("vip")?.parse()?;
    let web = t.add_container("web1")?;
    let task = endpoint(&t, &n2, "app", &web, &["--service", "web"])?;
    let _echo = tcp_echo_server(&web, SocketAddr::from(([0, 0, 0, 0], 80)))?;
    let c1 = t.add_container("c1")?;
    let me = endpoint(&t, &n1, "app", &c1, &[])?;
    ensure!(ping(&c1, &task.ip, 3, None)?, "the overlay works");

    // a TCP connection through the VIP: one record, whole
    let payload = vec![7u8; 3000];
    let (sport, back) = connect(&c1, SocketAddr::new(vip, 80), &payload)?;
    assert_eq!(back.len(), payload.len(), "echoed");
    let r = record(&t, &n1, &[], |r| r["sport"] == sport && r["event"] == "end")?;
    assert_eq!(r["network"], "app", "{r}");
    assert_eq!(r["proto"], "tcp");
    assert_eq!(r["src"], me.ip.as_str());
    assert_eq!(r["dst"], vip.to_string());
    assert_eq!(r["dport"], 80);
    assert_eq!(r["service"], "web");
    assert_eq!(r["backend"], task.id.as_str());
    assert_eq!(r["nat"], format!("{}:80", task.ip));
    assert_eq!(r["verdict"], "forwarded");
    assert_eq!(r["end"], "fin");
    for side in ["client", "backend"] {
        // the payload, and the headers of at least SYN, ACK and FIN
        assert!(num(&r["bytes"][side]) >= 3000 + 3 * 40, "{side}: {r}");
        assert!(num(&r["packets"][side]) >= 3, "{side}: {r}");
    }
    assert!(r["duration_ms"].is_u64(), "joined to its set-up: {r}");
    assert!(r["time"].as_str().is_some_and(|s| s.ends_with('Z')));

    // refused by the backend (nothing listens on 81): ended by RST
    let refused = connect(&c1, SocketAddr::new(vip, 81), b"x");
    assert!(refused.is_err(), "nothing listens on 81");
    let r = record(&t, &n1, &[], |r| r["dport"] == 81 && r["event"] == "end")?;
    assert_eq!(
        (r["end"].as_str(), r["dport"].as_u64()),
        (Some("rst"), Some(81))
    );
    assert!(num(&r["packets"]["backend"]) >= 1, "the RST: {r}");

    // an unanswered UDP flow: expired idle (the test agent's 3 s cap)
    let idle_from = Instant::now();
    udp_send_raw(&c1, SocketAddr::new(vip, 9999), &[b"anyone?".to_vec()])?;
    let r = record(&t, &n1, &["--service", "web"], |r| {
        r["proto"] == "udp" && r["dport"] == 9999 && r["event"] == "end"
    })?;
    assert_eq!(r["end"], "idle", "{r}");
    assert!(
        idle_from.elapsed() >= Duration::from_secs(3),
        "not before the timeout"
    );

    // --follow streams a new connection as it comes
    let mut follow = Command::new(vxmesh_bin())
        .args(["-H", &t.socket(&n1), "--format", "json"])
        .args(["flows", "--follow", "--network", "app"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = BufReader::new(follow.stdout.take().context("stdout")?);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let (followed, _) = connect(&c1, SocketAddr::new(vip, 80), b"followed")?;
    let mut streamed = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while streamed.len() < 2 && Instant::now() < until {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&l).with_context(|| l.clone())?;
            if v["sport"] == followed {
                streamed.push(v["event"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(streamed, ["open", "end"], "streamed as it happened");

    // ingress through n1: an audit drop policy lets the client in and says so
    let p = t.cli_json(
        &n1,
        &[
            "policy", "add", "--node", "n1", "--port", "8080", "--action", "drop", "--audit",
        ],
    )?;
    let audit_id = p["id"].as_str().context("id")?.to_string();
    assert_eq!(p["audit"], true);
    let ls = t.cli_ok(&n1, &["policy", "ls"])?;
    assert!(ls.contains("MODE") && ls.contains("audit"), "{ls}");
    let published = SocketAddr::new(IpAddr::V4(n1.addr), 8080);
    // the policy reaches the switch through the store: until the audit shows
    let mut audited = None;
    eventually(Duration::from_secs(10), || {
        let back = tcp_roundtrip(&client.ns, published, b"audit me", Duration::from_secs(3))
            .context("an audit policy must not drop")?;
        assert_eq!(back, b"audit me");
        audited = flows(&t, &n1, &["--verdict", "audit:drop"])?
            .into_iter()
            .next();
        Ok(audited.is_some())
    })?;
    let r = audited.context("no audit:drop record")?;
    assert_eq!(r["policy"], audit_id.as_str(), "{r}");
    assert_eq!(r["src"], client.addr.to_string());
    assert_eq!(
        (r["network"].as_str(), r["dport"].as_u64()),
        (Some("ingress"), Some(8080))
    );
    assert_eq!(r["service"], "web");
    assert_eq!(
        dropped(&t, &n1, "policy_drop")?,
        0,
        "audited: nothing dropped"
    );
    let stats = t.cli_json(&n1, &["stats"])?;
    assert!(num(&stats["policy_audited"]) >= 1, "{stats}");

    // the same policy enforced drops the connection, recorded with its id
    t.cli_ok(&n1, &["policy", "rm", &audit_id])?;
    let p = t.cli_json(
        &n1,
        &[
            "policy", "add", "--node", "n1", "--port", "8080", "--action", "drop",
        ],
    )?;
    let drop_id = p["id"].as_str().context("id")?.to_string();
    eventually(Duration::from_secs(10), || {
        Ok(tcp_roundtrip(&client.ns, published, b"x", Duration::from_secs(1)).is_err())
    })?;
    let r = record(&t, &n1, &["--verdict", "drop"], |r| {
        r["policy"] == drop_id.as_str()
    })?;
    assert_eq!(
        (r["event"].as_str(), r["reason"].as_str()),
        (Some("drop"), Some("policy_drop"))
    );
    assert_eq!(r["src"], client.addr.to_string());
    assert_eq!(r["dport"], 8080);

    // the filters: by verdict, network and service
    let drops = flows(&t, &n1, &["--verdict", "drop"])?;
    assert!(!drops.is_empty() && drops.iter().all(|r| r["verdict"] == "drop"));
    let app = flows(&t, &n1, &["--network", "app"])?;
    assert!(app.iter().any(|r| r["sport"] == sport));
    assert!(app.iter().all(|r| r["network"] == "app"), "{app:?}");
    let ingress = flows(&t, &n1, &["--network", "ingress"])?;
    assert!(!ingress.is_empty() && ingress.iter().all(|r| r["network"] == "ingress"));
    let web_flows = flows(&t, &n1, &["--service", "web"])?;
    assert!(web_flows.iter().any(|r| r["network"] == "ingress"));
    assert!(web_flows.iter().any(|r| r["network"] == "app"));
    assert!(flows(&t, &n1, &["--service", "nosuch"])?.is_empty());
    let table = t.cli_ok(&n1, &["flows", "--verdict", "drop"])?;
    assert!(
        table.contains("policy_drop") && table.contains(&format!("policy {drop_id}")),
        "{table}"
    );

    // the file: rotated past 4 KiB (two kept), every line a record
    let mut fillers = Vec::new();
    for _ in 0..10 {
        fillers.push(connect(&c1, SocketAddr::new(vip, 80), b"fill the file")?.0);
    }
    let rotated = t.dir().join("n1-flows.jsonl.1");
    ensure!(
        eventually(Duration::from_secs(10), || Ok(rotated.exists()))?,
        "no rotated file"
    );
    let mut in_files = Vec::new();
    for p in [&log, &rotated] {
        let size = std::fs::metadata(p)?.len();
        assert!(size <= 4096, "{} is {size} bytes", p.display());
        in_files.extend(json_lines(p)?);
    }
    assert!(!t.dir().join("n1-flows.jsonl.3").exists(), "two kept");
    assert!(in_files
        .iter()
        .all(|r| r["event"] == "end" || r["event"] == "drop"));
    assert!(in_files
        .iter()
        .any(|r| fillers.contains(&(num(&r["sport"]) as u16))));

    // n2 writes OTLP/JSON: a connection it balances (ingress on n2) is a log record
    let at_n2 = SocketAddr::new(IpAddr::V4(n2.addr), 8080);
    assert_eq!(
        tcp_roundtrip(&client.ns, at_n2, b"otel", Duration::from_secs(3))?,
        b"otel"
    );
    let mut logged = None;
    eventually(Duration::from_secs(10), || {
        let reqs = json_lines(&otel).unwrap_or_default();
        logged = reqs
            .iter()
            .flat_map(|q| q["resourceLogs"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeLogs"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["logRecords"].as_array().cloned().unwrap_or_default())
            .find(|l| {
                l["attributes"].as_array().is_some_and(|a| {
                    a.iter().any(|kv| {
                        kv["key"] == "vxmesh.flow.end" && kv["value"]["stringValue"] == "fin"
                    })
                })
            });
        Ok(logged.is_some())
    })?;
    let l = logged.context("no OTLP log record of an ended connection on n2")?;
    assert!(
        l["timeUnixNano"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{l}"
    );
    let attrs = l["attributes"].as_array().context("attributes")?;
    let attr = |k: &str| {
        attrs
            .iter()
            .find(|kv| kv["key"] == k)
            .map(|kv| kv["value"].clone())
    };
    assert_eq!(
        attr("vxmesh.flow.service"),
        Some(serde_json::json!({"stringValue": "web"}))
    );
    assert_eq!(
        attr("vxmesh.flow.dport"),
        Some(serde_json::json!({"intValue": "8080"}))
    );
    Ok(())
}

//! Restarts without loss (issue 7, point 1): TCP connections through a VIP and
//! through a published port exchange messages the whole time while the agents
//! of the client's node, the tasks' node and the ingress node are each stopped
//! and started again: persistent TAPs keep the containers' interfaces, and the
//! balancer's connections are saved on stop and restored on start, so every
//! connection stays with its task and its way back (on an encrypted network
//! too, after a new WireGuard handshake). Then an agent killed with
//! SIGKILL comes back without leaving stale interfaces or rules.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vxmesh_netns_tests::*;

/// A connection that sends a numbered line every 100 ms and checks each comes
/// back, until told to stop; counts the round trips.
struct Chatter {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<u64>>>,
    what: String,
}

impl Chatter {
    fn start(ns: &str, to: SocketAddr, what: &str) -> Result<Chatter> {
        let s = in_netns(ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })?
        .with_context(|| format!("{what}: connecting to {to}"))?;
        // long enough for a restart and TCP's backed-off retransmissions
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (flag, count, label) = (stop.clone(), done.clone(), what.to_string());
        let thread = std::thread::spawn(move || -> Result<u64> {
            let mut w = s.try_clone()?;
            let mut r = BufReader::new(s);
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let line = format!("{label} message {n}\n");
                w.write_all(line.as_bytes())
                    .with_context(|| format!("{label}: sending message {n}"))?;
                let mut back = String::new();
                r.read_line(&mut back)
                    .with_context(|| format!("{label}: waiting for message {n}"))?;
                ensure!(back == line, "{label}: sent {line:?}, got {back:?}");
                n += 1;
                count.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(n)
        });
        Ok(Chatter {
            stop,
            done,
            thread: Some(thread),
            what: what.to_string(),
        })
    }

    fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Waits until `more` further round trips have been made.
    fn advances(&self, more: u64, within: Duration) -> Result<()> {
        let want = self.count() + more;
        let ok = eventually(within, || Ok(self.count() >= want || !self.alive()))?;
        ensure!(
            ok && self.alive(),
            "{}: stuck at {} round trips",
            self.what,
            self.count()
        );
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().context("finished twice")?;
        t.join()
            .map_err(|_| anyhow::anyhow!("{} panicked", self.what))?
    }
}

impl Drop for Chatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn connections_survive_agent_restarts_on_every_node_of_their_path() -> Result<()> {
    let mut t = Topology::new("restart")?;
    let (n1, n2, n3) = (t.add_node("n1")?, t.add_node("n2")?, t.add_node("n3")?);
    let outside = t.add_outside_host("outside")?;
    for n in [&n1, &n2, &n3] {
        t.start_agent(n, &[])?;
    }
    t.cli_ok(&n1, &["network", "create", "r", "--subnet", "10.53.0.0/24"])?;
    let svc = t.cli_json(
        &n1,
        &[
            "service",
            "create",
            "echo",
            "--network",
            "r",
            "--publish",
            "7000:7000",
        ],
    )?;
    let vip: std::net::IpAddr = svc["vips"]["r"].as_str().context("vip")?.parse()?;
    // three tasks on n2, balanced round robin: were a restart to forget which
    // task a connection has, its packets would go to the first task, which
    // would reset two of the three
    let (mut servers, mut tasks) = (Vec::new(), Vec::new());
    for i in 1..=3 {
        let ns = t.add_container(&format!("task{i}"))?;
        let e = endpoint(&t, &n2, "r", &ns, &["--service", "echo"])?;
        // every address: ingress connections arrive at the task's ingress0
        servers.push(tcp_echo_server(&ns, "0.0.0.0:7000".parse()?)?);
        tasks.push(e.ip);
    }
    // an encrypted network too: its WireGuard sessions are not saved, so a
    // restart costs a handshake, not the connection
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "s",
            "--subnet",
            "10.54.0.0/24",
            "--encrypted",
        ],
    )?;
    let sec = t.cli_json(&n1, &["service", "create", "sec", "--network", "s"])?;
    let sec_vip: std::net::IpAddr = sec["vips"]["s"].as_str().context("vip")?.parse()?;
    let stask = t.add_container("stask")?;
    endpoint(&t, &n2, "s", &stask, &["--service", "sec"])?;
    servers.push(tcp_echo_server(&stask, "0.0.0.0:7100".parse()?)?);
    let c1 = t.add_container("c1")?;
    let kept = endpoint(&t, &n1, "r", &c1, &[])?;
    endpoint(&t, &n1, "s", &c1, &["--ifname", "eth1"])?;
    let c1b = t.add_container("c1b")?;
    let doomed = endpoint(&t, &n1, "r", &c1b, &[])?;

    let mut chats = Vec::new();
    for i in 0..3 {
        chats.push(Chatter::start(
            &c1,
            SocketAddr::new(vip, 7000),
            &format!("vip{i}"),
        )?);
    }
    chats.push(Chatter::start(
        &c1,
        SocketAddr::new(sec_vip, 7100),
        "encrypted",
    )?);
    let to = SocketAddr::new(n3.addr.into(), 7000);
    let published = eventually(Duration::from_secs(10), || {
        in_netns(&outside.ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
        })
    })?;
    ensure!(published, "the published port never answered on n3");
    for i in 0..3 {
        chats.push(Chatter::start(&outside.ns, to, &format!("ingress{i}"))?);
    }
    for c in &chats {
        c.advances(5, Duration::from_secs(10))?;
    }
    let conns = t.cli_json(&n1, &["conntrack", "ls"])?;
    ensure!(
        conns.as_array().map_or(0, |a| a.len()) >= 3,
        "n1 tracks no VIP connections: {conns}"
    );

    // client's node, tasks' node, ingress node: each stopped and started while
    // every connection keeps talking
    for node in [&n1, &n2, &n3] {
        t.stop_agent(node)?;
        std::thread::sleep(Duration::from_secs(1));
        t.start_agent(node, &[])?;
        let log = t.agent_log(node);
        ensure!(
            log.contains("connections restored from the last run"),
            "{} restored no connections",
            node.name
        );
        for c in &chats {
            c.advances(5, Duration::from_secs(40))
                .with_context(|| format!("after restarting {}'s agent", node.name))?;
        }
    }
    for c in chats {
        let n = c.finish()?;
        ensure!(n >= 20, "too few round trips: {n}");
    }

    // SIGKILL: no snapshot, no cleanup; an endpoint is removed meanwhile
    t.kill_agent(&n1)?;
    t.cli_ok(&n2, &["endpoint", "rm", &doomed.id])?;
    t.start_agent(&n1, &[])?;
    let gone = eventually(Duration::from_secs(10), || {
        Ok(!exec(&c1b, &["ip", "link", "show", "eth0"])?
            .status
            .success())
    })?;
    ensure!(gone, "the removed endpoint's TAP outlived the killed agent");
    let tables = exec_ok(&n1.ns, &["nft", "list", "tables"])?;
    ensure!(
        tables.matches("table ip vxmesh").count() == 1
            && tables.matches("table ip6 vxmesh").count() == 1,
        "n1's nftables tables after the restart: {tables}"
    );
    let links = exec_ok(&n1.ns, &["ip", "-o", "link", "show"])?;
    ensure!(
        links.matches("vxm-ingress").count() == 1,
        "n1's links after the restart: {links}"
    );
    assert!(
        ping(&c1, &tasks[0], 2, None)?,
        "the kept endpoint works after the killed agent came back"
    );
    let eps = t.cli_json(&n1, &["endpoint", "ls"])?;
    let ids: Vec<&str> = eps
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str())
        .collect();
    ensure!(
        ids.contains(&kept.id.as_str()) && !ids.contains(&doomed.id.as_str()),
        "store entries after the restart: {ids:?}"
    );
    Ok(())
}

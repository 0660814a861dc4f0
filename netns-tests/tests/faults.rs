//! Faults (issue 7, point 5), with real traffic:
//!
//! - a node's underlay cut and restored twice in the middle of TCP transfers
//!   (once as a pulled cable, the bridge port, once as the node's own link going
//!   down), on a plain and an encrypted network at once: both transfers stall
//!   while cut, resume, and deliver exactly the bytes sent;
//! - a task's node stopping: a published port entered through a third node fails
//!   over to the surviving task within seconds, and `lb ls` marks the stopped
//!   node's task; the same when the task's node is cut off the underlay while its
//!   agent runs on (and keeps beating through the shared store).
//!
//! - a dataplane worker dying (the test-only fault `VXMESH_TEST_FAULT`): the
//!   agent exits non-zero within seconds, saying which worker and why, having
//!   saved its connections; started again, it keeps the ports and a connection
//!   its balancer carried; without the fault it keeps running.
//!
//! The store going away (forwarding goes on) is store_outage.rs.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

/// The transfers' bytes: a deterministic pseudo-random stream (an LCG's top byte),
/// so the receiver can check every byte where it lands.
struct Stream(u64);

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream(seed)
    }

    fn next(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 56) as u8
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next();
        }
    }
}

/// FNV-1a over everything received, to compare with the sender's.
fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// What a receiver saw: bytes, hash, and the offset of the first byte that was
/// not the stream's.
#[derive(Debug)]
struct Received {
    bytes: usize,
    hash: u64,
    first_bad: Option<usize>,
}

/// A receiver in `ns` at `addr` for one connection; `progress` counts its bytes.
fn receiver(
    ns: &str,
    addr: SocketAddr,
    seed: u64,
    progress: Arc<AtomicUsize>,
) -> anyhow::Result<JoinHandle<anyhow::Result<Received>>> {
    let l = in_netns(ns, move || TcpListener::bind(addr))??;
    Ok(std::thread::spawn(move || -> anyhow::Result<Received> {
        let (mut c, _) = l.accept()?;
        // long enough for TCP to back off and retry across a 3 s cut
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut want = Stream::new(seed);
        let mut got = Received {
            bytes: 0,
            hash: FNV_START,
            first_bad: None,
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match c.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => anyhow::bail!("receiving at {addr} after {} bytes: {e}", got.bytes),
            };
            for (i, b) in buf[..n].iter().enumerate() {
                if got.first_bad.is_none() && *b != want.next() {
                    got.first_bad = Some(got.bytes + i);
                }
            }
            got.hash = fnv(got.hash, &buf[..n]);
            got.bytes += n;
            progress.store(got.bytes, Ordering::SeqCst);
        }
    }))
}

/// A sender in `ns` of `total` bytes of the stream to `dst`, paced (64 KiB every
/// `gap`) so the transfer is still going when the underlay is cut; returns the
/// hash of what it sent.
fn sender(
    ns: &str,
    dst: SocketAddr,
    seed: u64,
    total: usize,
    gap: Duration,
) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
    let c = in_netns(ns, move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })??;
    Ok(std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut c = c;
        c.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut s = Stream::new(seed);
        let mut hash = FNV_START;
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = buf.len().min(total - sent);
            s.fill(&mut buf[..n]);
            c.write_all(&buf[..n])
                .map_err(|e| anyhow::anyhow!("sending to {dst} after {sent} bytes: {e}"))?;
            hash = fnv(hash, &buf[..n]);
            sent += n;
            std::thread::sleep(gap);
        }
        c.shutdown(std::net::Shutdown::Write)?;
        Ok(hash)
    }))
}

/// Waits until `progress` reaches `at_least` bytes.
fn reaches(progress: &AtomicUsize, at_least: usize, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if progress.load(Ordering::SeqCst) >= at_least {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn an_underlay_cut_mid_transfer_stalls_it_and_it_resumes_with_identical_data() -> anyhow::Result<()>
{
    const TOTAL: usize = 6 << 20;
    const MB: usize = 1 << 20;
    let mut t = Topology::new("cut")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(&n1, &["network", "create", "p", "--subnet", "10.68.0.0/24"])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "s",
            "--encrypted",
            "--subnet",
            "10.69.0.0/24",
        ],
    )?;
    let (p1, p2, s1, s2) = (
        t.add_container("p1")?,
        t.add_container("p2")?,
        t.add_container("s1")?,
        t.add_container("s2")?,
    );
    let ep1 = endpoint(&t, &n1, "p", &p1, &[])?;
    let ep2 = endpoint(&t, &n2, "p", &p2, &[])?;
    endpoint(&t, &n1, "s", &s1, &[])?;
    let es2 = endpoint(&t, &n2, "s", &s2, &[])?;
    assert!(ping(&p1, &ep2.ip, 2, None)?);
    assert!(ping(&s1, &es2.ip, 2, None)?);

    // one transfer on each network, n1 -> n2
    let (pp, ps) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (pdst, sdst) = (
        SocketAddr::new(ep2.ip.parse()?, 6000),
        SocketAddr::new(es2.ip.parse()?, 6000),
    );
    let prx = receiver(&p2, pdst, 1, pp.clone())?;
    let srx = receiver(&s2, sdst, 2, ps.clone())?;
    let gap = Duration::from_millis(40);
    let ptx = sender(&p1, pdst, 1, TOTAL, gap)?;
    let stx = sender(&s1, sdst, 2, TOTAL, gap)?;

    // n2's underlay: the bridge's port (a pulled cable), then n2's own link
    let ul = format!("{}-ul", t.prefix());
    let port = format!("u{}", n2.addr.octets()[3]);
    let cuts: [(&str, &str, &str); 2] = [(&ul, &port, "bridge port"), (&n2.ns, "ul0", "ul0")];
    for (i, (ns, dev, what)) in cuts.iter().enumerate() {
        let mark = (i * 2 + 1) * MB;
        assert!(
            reaches(&pp, mark, Duration::from_secs(15))
                && reaches(&ps, mark, Duration::from_secs(15)),
            "the transfers did not reach {mark} bytes before cut {what} (plain {}, encrypted {})",
            pp.load(Ordering::SeqCst),
            ps.load(Ordering::SeqCst)
        );
        exec_ok(ns, &["ip", "link", "set", dev, "down"])?;
        let cut_at = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let (p_cut, s_cut) = (pp.load(Ordering::SeqCst), ps.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_secs(3).saturating_sub(cut_at.elapsed()));
        let (p_end, s_end) = (pp.load(Ordering::SeqCst), ps.load(Ordering::SeqCst));
        exec_ok(ns, &["ip", "link", "set", dev, "up"])?;
        assert_eq!(p_cut, p_end, "plain bytes crossed a cut {what}");
        assert_eq!(s_cut, s_end, "encrypted bytes crossed a cut {what}");
        let restored = Instant::now();
        assert!(
            reaches(&pp, p_end + MB / 2, Duration::from_secs(12)),
            "the plain transfer did not resume after {what} came back ({} bytes)",
            pp.load(Ordering::SeqCst)
        );
        assert!(
            reaches(&ps, s_end + MB / 2, Duration::from_secs(12)),
            "the encrypted transfer did not resume after {what} came back ({} bytes)",
            ps.load(Ordering::SeqCst)
        );
        eprintln!(
            "cut {what}: resumed within {:?} of the restore",
            restored.elapsed()
        );
    }

    for (name, tx, rx) in [("plain", ptx, prx), ("encrypted", stx, srx)] {
        let sent = tx.join().expect("sender thread")?;
        let got = rx.join().expect("receiver thread")?;
        assert_eq!(got.first_bad, None, "{name}: corrupted data: {got:?}");
        assert_eq!(got.bytes, TOTAL, "{name}: bytes lost or added");
        assert_eq!(got.hash, sent, "{name}: the hash of what arrived");
    }
    // and new traffic flows both ways
    assert!(ping(&p2, &ep1.ip, 1, None)?);
    assert!(ping(&s1, &es2.ip, 1, None)?);
    Ok(())
}

/// A task answering each connection with its name.
fn who_server(ns: &str, name: &str) -> anyhow::Result<AnswerServer> {
    let name = name.to_string();
    answer_server(ns, SocketAddr::from(([0, 0, 0, 0], 80)), false, move |_| {
        name.clone()
    })
}

/// Which task answers a new connection from `ns` to `dst` (Err: none did).
fn who(ns: &str, dst: SocketAddr, timeout: Duration) -> anyhow::Result<Result<String, String>> {
    in_netns(ns, move || {
        let mut c = TcpStream::connect_timeout(&dst, timeout).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.to_string())?;
        Ok(s)
    })
}

/// `address -> healthy` of every backend `node`'s `lb ls` shows.
fn backends(t: &Topology, node: &Node) -> anyhow::Result<Vec<(String, bool)>> {
    let lb = t.cli_json(node, &["lb", "ls"])?;
    Ok(lb
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_string(),
                b["healthy"] == true,
            )
        })
        .collect())
}

/// The task's address on the routing mesh (its `ingress0`, which the agent
/// attaches shortly after the endpoint).
fn ingress_addr(ns: &str) -> anyhow::Result<String> {
    let mut addr = None;
    eventually(Duration::from_secs(10), || {
        let out = exec(ns, &["ip", "-j", "-4", "addr", "show", "dev", "ingress0"])?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        addr = v[0]["addr_info"][0]["local"].as_str().map(str::to_string);
        Ok(addr.is_some())
    })?;
    addr.ok_or_else(|| anyhow::anyhow!("no ingress0 address in {ns} after 10 s"))
}

/// Answers (or errors) to connections, with when each was asked.
type Answers = Vec<(Duration, Result<String, String>)>;

/// Asks through `dst` until `n` answers in a row come from `want`; returns how
/// long that took from `since` (to the first of them) and what was answered
/// before, or everything answered.
fn all_from(
    ns: &str,
    dst: SocketAddr,
    want: &str,
    n: usize,
    since: Instant,
    within: Duration,
) -> anyhow::Result<Result<(Duration, Answers), Answers>> {
    let mut seen = Vec::new();
    let mut run = 0;
    let mut run_start = None;
    while since.elapsed() < within {
        let asked = since.elapsed();
        let got = who(ns, dst, Duration::from_secs(3))?;
        if got.as_deref() == Ok(want) {
            run += 1;
            run_start.get_or_insert(asked);
            if run == n {
                let start = run_start.unwrap();
                seen.retain(|(at, _)| *at < start);
                return Ok(Ok((start, seen)));
            }
        } else {
            run = 0;
            run_start = None;
        }
        seen.push((asked, got));
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Err(seen))
}

#[test]
fn a_published_port_fails_over_when_a_task_node_stops_or_is_cut_off() -> anyhow::Result<()> {
    let mut t = Topology::new("failover")?;
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| t.add_node(n))
        .collect::<anyhow::Result<_>>()?;
    let client = t.add_outside_host("client")?;
    for n in &nodes {
        t.start_agent(n, &[])?;
    }
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    t.cli_ok(
        n1,
        &["network", "create", "app", "--subnet", "10.70.0.0/24"],
    )?;
    t.cli_ok(
        n1,
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
    let (c2, c3) = (t.add_container("t2")?, t.add_container("t3")?);
    endpoint(&t, n2, "app", &c2, &["--service", "web"])?;
    endpoint(&t, n3, "app", &c3, &["--service", "web"])?;
    let _s2 = who_server(&c2, "t2")?;
    let _s3 = who_server(&c3, "t3")?;
    let (i2, i3) = (ingress_addr(&c2)?, ingress_addr(&c3)?);
    let via_n1 = SocketAddr::new(IpAddr::V4(n1.addr), 8080);

    // both tasks answer through n1, which runs none
    let both = |t: &Topology| -> anyhow::Result<bool> {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            if let Ok(s) = who(&client.ns, via_n1, Duration::from_secs(3))? {
                seen.insert(s);
            }
        }
        let b = backends(t, n1)?;
        Ok(seen.len() == 2 && b.contains(&(i2.clone(), true)) && b.contains(&(i3.clone(), true)))
    };
    assert!(
        eventually(Duration::from_secs(10), || both(&t))?,
        "both tasks did not answer through n1: {:?}",
        backends(&t, n1)?
    );

    // n3 is cut off the underlay with its agent running (it still beats through
    // the shared store file, so only the dataplane can tell): connections
    // through n1 go to t2 (passive health: t3's unanswered SYNs)
    let ul = format!("{}-ul", t.prefix());
    let port = format!("u{}", n3.addr.octets()[3]);
    exec_ok(&ul, &["ip", "link", "set", &port, "down"])?;
    let cut = Instant::now();
    let over = all_from(&client.ns, via_n1, "t2", 8, cut, Duration::from_secs(15));
    exec_ok(&ul, &["ip", "link", "set", &port, "up"])?;
    let took = over?.unwrap_or_else(|seen| {
        panic!("no failover to t2 within 15 s of n3 being cut off: {seen:?}")
    });
    let (took, before) = took;
    eprintln!("n3 cut off: every connection answered by t2 from {took:?} on; before: {before:?}");
    let failed = before.iter().filter(|(_, r)| r.is_err()).count();
    assert!(
        failed <= 2,
        "{failed} connections failed before the failover (n3 cut off): {before:?}"
    );
    assert!(took < Duration::from_secs(8), "failover took {took:?}");
    // reconnected, t3 serves again
    assert!(
        eventually(Duration::from_secs(20), || both(&t))?,
        "t3 did not come back after the cut: {:?}",
        backends(&t, n1)?
    );

    // n3's agent stops: its task leaves n1's balancer (liveness: 4 s) and every
    // new connection through n1 goes to t2
    t.stop_agent(n3)?;
    let stopped = Instant::now();
    let over = all_from(
        &client.ns,
        via_n1,
        "t2",
        8,
        stopped,
        Duration::from_secs(15),
    )?;
    let took = over.unwrap_or_else(|seen| {
        panic!("no failover to t2 within 15 s of n3's agent stopping: {seen:?}")
    });
    let (took, before) = took;
    eprintln!(
        "agent stopped: every connection answered by t2 from {took:?} on; before: {before:?}"
    );
    let failed = before.iter().filter(|(_, r)| r.is_err()).count();
    assert!(
        failed <= 2,
        "{failed} connections failed before the failover (agent stopped): {before:?}"
    );
    assert!(took < Duration::from_secs(8), "failover took {took:?}");
    let marked = eventually(Duration::from_secs(8), || {
        let b = backends(&t, n1)?;
        Ok(b.contains(&(i3.clone(), false)) && b.contains(&(i2.clone(), true)))
    })?;
    assert!(
        marked,
        "n1's balancer does not mark n3's task: {:?}",
        backends(&t, n1)?
    );
    Ok(())
}

/// The `connections=N` of the last log line saying `what` (0: no such line).
fn connections_logged(log: &str, what: &str) -> u64 {
    log.lines()
        .rev()
        .find(|l| l.contains(what))
        .and_then(|l| l.split("connections=").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends `msg` on `c` and reads it back.
fn echo_on(mut c: &TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    c.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back)?;
    anyhow::ensure!(back == msg, "sent {msg:?}, got {back:?}");
    Ok(())
}

#[test]
fn a_dead_dataplane_worker_stops_the_agent_and_the_restart_keeps_its_flows() -> anyhow::Result<()> {
    let mut t = Topology::new("deadwk")?;
    let (n1, n2) = (t.add_node("n1")?, t.add_node("n2")?);
    let workers = ["--workers", "2"];
    t.start_agent(&n1, &workers)?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "app", "--subnet", "10.71.0.0/24"],
    )?;
    t.cli_ok(&n1, &["service", "create", "echo", "--network", "app"])?;
    let task = t.add_container("task")?;
    endpoint(&t, &n2, "app", &task, &["--service", "echo"])?;
    let _echo = tcp_echo_server(&task, SocketAddr::from(([0, 0, 0, 0], 7)))?;
    let client = t.add_container("client")?;
    endpoint(&t, &n1, "app", &client, &[])?;
    let vip: IpAddr = t.cli_json(&n1, &["service", "inspect", "echo"])?["vips"]["app"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    // a connection n1's balancer carries (the client is n1's)
    let dst = SocketAddr::new(vip, 7);
    let mut held = None;
    eventually(Duration::from_secs(10), || {
        held = in_netns(&client, move || {
            TcpStream::connect_timeout(&dst, Duration::from_secs(2)).ok()
        })?;
        Ok(held.is_some())
    })?;
    let held = held.ok_or_else(|| anyhow::anyhow!("no connection to {dst}"))?;
    held.set_read_timeout(Some(Duration::from_secs(20)))?;
    echo_on(&held, b"before\n")?;

    // n1's agent again, with its last worker set to panic 4 s after start
    t.stop_agent(&n1)?;
    t.start_agent_with_env(
        &n1,
        &workers,
        &[("VXMESH_TEST_FAULT", "worker-panic-after=4000")],
    )?;
    let armed = Instant::now();
    let status = t.wait_agent_exit(&n1, Duration::from_secs(15))?;
    let log = t.agent_log(&n1);
    let run = &log[log
        .rfind("VXMESH_TEST_FAULT: this worker will panic")
        .unwrap_or(0)..];
    let status = status
        .unwrap_or_else(|| panic!("n1's agent still runs 15 s after its worker's fault:\n{run}"));
    eprintln!(
        "agent exited {status} {:?} after the start",
        armed.elapsed()
    );
    assert!(!status.success(), "exit status {status}");
    for why in [
        "dataplane worker 1 stopped",
        "injected fault",
        "connections saved for the next run",
    ] {
        assert!(run.contains(why), "the log does not say {why:?}:\n{run}");
    }
    assert!(
        connections_logged(run, "connections saved") >= 1,
        "the held connection was not saved:\n{run}"
    );
    assert!(
        t.wait_agent_exit(&n2, Duration::ZERO)?.is_none(),
        "n2's agent (no fault) stopped too"
    );

    // started again (as the service manager would): the client's port and the
    // connection n1 balanced are still there
    t.start_agent(&n1, &workers)?;
    echo_on(&held, b"after the restart\n")?;
    let log = t.agent_log(&n1);
    let run = &log[log.rfind("injected fault").unwrap_or(0)..];
    assert!(
        connections_logged(run, "connections restored from the last run") >= 1,
        "the restart did not restore the held connection:\n{run}"
    );
    // and without the fault it keeps running
    assert!(
        t.wait_agent_exit(&n1, Duration::from_secs(6))?.is_none(),
        "n1's agent stopped without a fault:\n{}",
        t.agent_log(&n1)
    );
    echo_on(&held, b"still\n")?;
    Ok(())
}

//! How the balancer behaves, with real connections: maglev sends one flow to
//! one task whichever node it enters by; lc sends new connections to the task
//! with the fewest open; ping and ICMP errors work through a VIP; a task that
//! refuses connections is taken out passively; removing a task resets the
//! connections it held at the client. A task whose interface is down while
//! its health probe (run inside its namespace) passes leaves the balancer
//! within 3 s of clients that give up before retransmitting a SYN.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::time::Duration;
use vxmesh_netns_tests::*;

/// A task that writes its name on each connection and keeps it open until
/// the client closes it.
fn hold_server(ns: &str, port: u16, name: &str) -> anyhow::Result<AnswerServer> {
    let addr = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
    let name = name.to_string();
    answer_server(ns, addr, true, move |_| name.clone())
}

/// Connects from `ns` (from source port `sport`, if given) and reads the
/// server's name; the connection stays open in the returned stream.
fn open(
    ns: &str,
    dst: SocketAddr,
    sport: Option<u16>,
) -> anyhow::Result<Result<(String, TcpStream), ErrorKind>> {
    in_netns(ns, move || {
        let mut c = match connect_from(dst, sport) {
            Ok(c) => c,
            Err(e) => return Err(e.kind()),
        };
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.kind())?;
        let mut b = [0u8; 64];
        let n = c.read(&mut b).map_err(|e| e.kind())?;
        Ok((String::from_utf8_lossy(&b[..n]).into_owned(), c))
    })
}

/// A TCP connection from a chosen source port (std cannot bind before
/// connecting); the connect is bounded by SO_SNDTIMEO.
fn connect_from(dst: SocketAddr, sport: Option<u16>) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket calls on a fresh fd we own (wrapped in TcpStream,
    // which closes it, right after creation).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if let Some(p) = sport {
            let local = sa(std::net::Ipv4Addr::UNSPECIFIED, p);
            if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let remote = sa(*dst.ip(), dst.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}

#[test]
fn schedulers_icmp_passive_health_and_resets_behave() -> anyhow::Result<()> {
    let mut t = Topology::new("lbb")?;
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| t.add_node(n))
        .collect::<anyhow::Result<_>>()?;
    let outside = t.add_outside_host("out")?;
    for n in &nodes {
        t.start_agent(n, &[])?;
    }
    t.cli_ok(
        &nodes[0],
        &["network", "create", "web", "--subnet", "10.47.0.0/24"],
    )?;
    for (svc, extra) in [
        (
            "mg",
            &["--scheduler", "maglev", "--publish", "7000:7000"][..],
        ),
        ("lc", &["--scheduler", "lc"][..]),
        ("pp", &[][..]),
    ] {
        let mut args = vec!["service", "create", svc, "--network", "web"];
        args.extend_from_slice(extra);
        t.cli_ok(&nodes[0], &args)?;
    }
    let vip = |svc: &str| -> anyhow::Result<IpAddr> {
        let v = t.cli_json(&nodes[0], &["service", "inspect", svc])?;
        Ok(v["vips"]["web"].as_str().unwrap_or_default().parse()?)
    };
    let (lc_vip, pp_vip) = (vip("lc")?, vip("pp")?);
    let mut servers = Vec::new();
    let mut lc_tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let ns = t.add_container(&format!("m{i}"))?;
        endpoint(&t, n, "web", &ns, &["--service", "mg"])?;
        servers.push(hold_server(&ns, 7000, &format!("mg{i}"))?);
        let ns = t.add_container(&format!("l{i}"))?;
        lc_tasks.push(endpoint(&t, n, "web", &ns, &["--service", "lc"])?);
        servers.push(hold_server(&ns, 80, &format!("lc{i}"))?);
    }
    // pp: p0 serves, p1 has nothing listening (its kernel answers RST)
    let p0 = t.add_container("p0")?;
    endpoint(&t, &nodes[1], "web", &p0, &["--service", "pp"])?;
    servers.push(hold_server(&p0, 80, "pp0")?);
    let p1 = t.add_container("p1")?;
    endpoint(&t, &nodes[2], "web", &p1, &["--service", "pp"])?;
    let client = t.add_container("client")?;
    endpoint(&t, &nodes[0], "web", &client, &[])?;

    // maglev: a flow (same client address and port) gets the same task whichever
    // node it comes in by, and different flows spread
    let mut tasks_seen = BTreeSet::new();
    for sport in 41000..41008u16 {
        let mut names = BTreeSet::new();
        for n in &nodes {
            let dst = SocketAddr::new(IpAddr::V4(n.addr), 7000);
            let mut got = open(&outside.ns, dst, Some(sport))?;
            for _ in 0..20 {
                if got.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
                got = open(&outside.ns, dst, Some(sport))?;
            }
            let (name, _c) =
                got.map_err(|e| anyhow::anyhow!("{}:7000 from {sport}: {e:?}", n.addr))?;
            names.insert(name);
        }
        if names.len() != 1 {
            for n in &nodes {
                eprintln!("{}: {}", n.name, t.cli_json(n, &["conntrack", "ls"])?);
            }
        }
        assert_eq!(names.len(), 1, "port {sport} went to {names:?}");
        tasks_seen.extend(names);
    }
    assert!(tasks_seen.len() >= 2, "maglev used only {tasks_seen:?}");

    // lc: with two connections held open, new ones go to the idle task
    let lc_dst = SocketAddr::new(lc_vip, 80);
    let (a, held_a) = open(&client, lc_dst, None)?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (b, _held_b) = open(&client, lc_dst, None)?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_ne!(a, b, "lc spread the first two");
    for _ in 0..4 {
        let (n, c) = open(&client, lc_dst, None)?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        drop(c);
        assert!(n != a && n != b, "lc sent a new connection to busy {n}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // ping through a VIP, and an ICMP error from a task reaches the client as
    // coming from the VIP (a connected UDP socket sees "refused")
    assert!(ping(&client, &lc_vip.to_string(), 2, None)?, "ping the VIP");
    let refused = in_netns(&client, move || -> std::io::Result<ErrorKind> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::new(lc_vip, 9999))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.send(b"anyone?")?;
        let mut b = [0u8; 16];
        Ok(match s.recv(&mut b) {
            Ok(_) => ErrorKind::Other,
            Err(e) => e.kind(),
        })
    })??;
    assert_eq!(refused, ErrorKind::ConnectionRefused);

    // passive health: the task that refuses is out after a few refusals
    let pp_dst = SocketAddr::new(pp_vip, 80);
    let mut refusals = 0;
    for _ in 0..12 {
        match open(&client, pp_dst, None)? {
            Ok((n, _)) => assert_eq!(n, "pp0"),
            Err(_) => refusals += 1,
        }
    }
    assert!(
        (1..=3).contains(&refusals),
        "{refusals} refusals: the refusing task was not taken out"
    );

    // removing a task resets the connections it held, at the client
    let victim = lc_tasks
        .iter()
        .zip(["lc0", "lc1", "lc2"])
        .find(|(_, n)| *n == a)
        .map(|(e, _)| e.id.clone())
        .unwrap();
    t.cli_ok(&nodes[0], &["endpoint", "rm", &victim])?;
    let mut held = held_a;
    let outcome = in_netns(&client, move || {
        held.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut b = [0u8; 8];
        match held.read(&mut b) {
            Ok(n) => Ok(n),
            Err(e) => Err(e.kind()),
        }
    })?;
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset), "held connection");
    Ok(())
}

/// One round of `n` connections at once from `ns` to `dst`, each given up
/// after `timeout`: which task answered each (Err: none did).
fn round(
    ns: &str,
    dst: SocketAddr,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Result<String, ErrorKind>>> {
    let tries: Vec<_> = (0..n)
        .map(|_| {
            let ns = ns.to_string();
            std::thread::spawn(move || {
                in_netns(&ns, move || {
                    let mut c = TcpStream::connect_timeout(&dst, timeout).map_err(|e| e.kind())?;
                    c.set_read_timeout(Some(Duration::from_secs(2)))
                        .map_err(|e| e.kind())?;
                    let mut b = [0u8; 64];
                    let got = c.read(&mut b).map_err(|e| e.kind())?;
                    Ok(String::from_utf8_lossy(&b[..got]).into_owned())
                })
            })
        })
        .collect();
    tries
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?
        })
        .collect()
}

#[test]
fn a_task_whose_interface_is_down_leaves_the_balancer_though_its_probe_passes() -> anyhow::Result<()>
{
    let mut t = Topology::new("lbdown")?;
    let (n1, n2) = (t.add_node("n1")?, t.add_node("n2")?);
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "web", "--subnet", "10.49.0.0/24"],
    )?;
    t.cli_ok(
        &n1,
        &[
            "service",
            "create",
            "hc",
            "--network",
            "web",
            "--health",
            "tcp:80",
            "--health-interval",
            "300ms",
        ],
    )?;
    let vip: IpAddr = t.cli_json(&n1, &["service", "inspect", "hc"])?["vips"]["web"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let dst = SocketAddr::new(vip, 80);
    let mut servers = Vec::new();
    let mut tasks = Vec::new();
    for (i, n) in [&n1, &n2].into_iter().enumerate() {
        let ns = t.add_container(&format!("h{i}"))?;
        tasks.push((
            ns.clone(),
            endpoint(&t, n, "web", &ns, &["--service", "hc"])?,
        ));
        servers.push(hold_server(&ns, 80, &format!("h{i}"))?);
    }
    let client = t.add_container("client")?;
    endpoint(&t, &n1, "web", &client, &[])?;
    let mut seen = BTreeSet::new();
    let both = eventually(Duration::from_secs(15), || {
        seen.extend(
            round(&client, dst, 4, Duration::from_secs(1))?
                .into_iter()
                .flatten(),
        );
        Ok(seen.len() == 2)
    })?;
    assert!(both, "both tasks did not answer through the VIP: {seen:?}");

    // h1's interface goes down: frames to it are lost, but its probe (to its
    // own address, from inside its namespace, over loopback) still passes
    let (dead_ns, dead) = &tasks[1];
    exec_ok(dead_ns, &["ip", "link", "set", "eth0", "down"])?;
    let down = std::time::Instant::now();
    // clients that give up after 1 s, when the SYN's first retransmit would
    // be due: passive health sees no retransmitted SYN from them
    let mut rounds = Vec::new();
    let mut clean = 0;
    while clean < 3 && down.elapsed() < Duration::from_secs(15) {
        let at = down.elapsed();
        let r = round(&client, dst, 6, Duration::from_millis(1000))?;
        if r.iter().all(|a| a.as_deref() == Ok("h0")) {
            clean += 1;
        } else {
            clean = 0;
        }
        rounds.push((at, r));
        std::thread::sleep(Duration::from_millis(300));
    }
    let first_clean = rounds
        .iter()
        .rposition(|(_, r)| !r.iter().all(|a| a.as_deref() == Ok("h0")))
        .map_or(0, |i| i + 1);
    eprintln!("rounds after the interface went down: {rounds:?}");
    let took = rounds.get(first_clean).map(|(at, _)| *at);
    assert!(
        clean == 3 && took.is_some_and(|t| t < Duration::from_secs(3)),
        "new connections still failed 3 s after h1's interface went down: {rounds:?}"
    );
    let lb = t.cli_json(&n1, &["lb", "ls"])?;
    let row = lb
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["address"].as_str() == Some(dead.ip.as_str()))
        .ok_or_else(|| anyhow::anyhow!("{} not in lb ls: {lb}", dead.ip))?;
    assert_eq!(row["ejected"], true, "lb ls: {row}");
    // it was passive health: the active probe still passes
    assert_eq!(row["healthy"], true, "lb ls: {row}");
    let text = t.cli_ok(&n1, &["lb", "ls"])?;
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("{}:0", dead.ip)) && l.ends_with("ejected")),
        "{text}"
    );
    Ok(())
}

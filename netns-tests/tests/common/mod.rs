//! Helpers the overlay tests share: creating endpoints through the CLI, reading an
//! agent's counters, building raw frames.

#![allow(dead_code)]

use anyhow::{Context, Result};
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::{exec, in_netns, Node, Topology};

pub struct Ep {
    pub id: String,
    pub ip: String,
    pub mac: [u8; 6],
}

/// `vxmesh endpoint create` on `node`'s agent; returns what it printed as JSON.
pub fn endpoint(
    t: &Topology,
    node: &Node,
    network: &str,
    netns: &str,
    extra: &[&str],
) -> Result<Ep> {
    let mut args = vec!["endpoint", "create", "--network", network, "--netns", netns];
    args.extend_from_slice(extra);
    let v = t.cli_json(node, &args)?;
    let mac = v["mac"].as_str().context("mac")?;
    let mut m = [0u8; 6];
    for (i, p) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16)?;
    }
    Ok(Ep {
        id: v["id"].as_str().context("id")?.to_string(),
        ip: v["ips"][0].as_str().context("ips")?.to_string(),
        mac: m,
    })
}

/// A drop counter of `node`'s agent, by reason.
pub fn dropped(t: &Topology, node: &Node, reason: &str) -> Result<u64> {
    let v = t.cli_json(node, &["stats"])?;
    v["drops"][reason]
        .as_u64()
        .with_context(|| format!("no drop counter {reason} in {v}"))
}

/// Polls `f` until it holds or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<bool> {
    let end = Instant::now() + within;
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An Ethernet/IPv4/UDP frame.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(40000, dport)
        .write(&mut out, payload)
        .expect("frame fits");
    out
}

pub fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>()
        .expect("an IPv4 address")
        .octets()
}

/// A UDP datagram seen in a capture.
pub struct CapturedUdp {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// Reads a classic pcap file (what `tcpdump -w` writes) of Ethernet frames and
/// returns every frame's bytes, and the IPv4/UDP datagrams among them.
pub fn read_pcap(path: &std::path::Path) -> Result<(Vec<Vec<u8>>, Vec<CapturedUdp>)> {
    let data = std::fs::read(path)?;
    anyhow::ensure!(data.len() >= 24, "pcap too short");
    let le = match data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => anyhow::bail!("not a pcap file"),
    };
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut frames = Vec::new();
    let mut udp = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(&data[off + 8..]) as usize;
        let start = off + 16;
        let Some(f) = data.get(start..start + incl) else {
            break;
        };
        if let Ok(p) = etherparse::SlicedPacket::from_ethernet(f) {
            if let (
                Some(etherparse::NetSlice::Ipv4(ip)),
                Some(etherparse::TransportSlice::Udp(u)),
            ) = (&p.net, &p.transport)
            {
                udp.push(CapturedUdp {
                    src: ip.header().source_addr(),
                    dst: ip.header().destination_addr(),
                    dport: u.destination_port(),
                    payload: u.payload().to_vec(),
                });
            }
        }
        frames.push(f.to_vec());
        off = start + incl;
    }
    Ok((frames, udp))
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `ping` and returns (transmitted, received).
pub fn ping_counts(ns: &str, dst: &str, args: &[&str]) -> Result<(u32, u32)> {
    let mut a = vec!["ping", "-q"];
    a.extend_from_slice(args);
    a.push(dst);
    let out = vxmesh_netns_tests::exec(ns, &a)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in {text}"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    Ok((nums[0], nums[1]))
}

/// A background process (tcpdump, wireguard-go) stopped with SIGTERM and reaped
/// however the test ends.
pub struct Bg(pub std::process::Child);

impl Bg {
    pub fn spawn(ns: &str, args: &[&str]) -> Result<Bg> {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {args:?}"))?;
        Ok(Bg(child))
    }

    /// SIGTERM, then wait (tcpdump flushes its file on SIGTERM).
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// What a connection from `ns` to `dst` hears: Ok(text), or the error kind.
pub fn ask(ns: &str, dst: SocketAddr) -> Result<Result<String, ErrorKind>> {
    in_netns(ns, move || {
        let mut c = match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(c) => c,
            Err(e) => return Err(e.kind()),
        };
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.kind())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.kind())?;
        Ok(s)
    })
}

/// Asks until the answer is as expected (changes propagate through the store).
pub fn settles(
    ns: &str,
    dst: SocketAddr,
    ok: impl Fn(&Result<String, ErrorKind>) -> bool,
) -> Result<Result<String, ErrorKind>> {
    let mut last = ask(ns, dst)?;
    for _ in 0..20 {
        if ok(&last) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        last = ask(ns, dst)?;
    }
    Ok(last)
}

/// Datagrams received: (from, payload).
pub type Datagrams = Vec<(SocketAddr, Vec<u8>)>;

/// A UDP socket in a namespace that keeps every datagram it receives.
pub struct UdpSink {
    got: Arc<Mutex<Datagrams>>,
    stop: Arc<AtomicBool>,
}

impl UdpSink {
    pub fn start(ns: &str, addr: SocketAddr) -> anyhow::Result<UdpSink> {
        let sock = in_netns(ns, move || UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    g.lock().unwrap().push((from, buf[..n].to_vec()));
                }
            }
        });
        Ok(UdpSink { got, stop })
    }

    pub fn received(&self) -> Datagrams {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The first IPv4 address on `dev` in `ns`, waiting for the agent to put it there.
pub fn ipv4_of(ns: &str, dev: &str) -> anyhow::Result<Ipv4Addr> {
    let mut addr = None;
    eventually(Duration::from_secs(10), || {
        let out = exec(ns, &["ip", "-j", "-4", "addr", "show", "dev", dev])?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        addr = v[0]["addr_info"][0]["local"]
            .as_str()
            .and_then(|a| a.parse().ok());
        Ok(addr.is_some())
    })?;
    addr.ok_or_else(|| anyhow::anyhow!("no IPv4 address on {dev} in {ns} after 10 s"))
}

/// A node's conntrack figures from `vxmesh stats`: (entries, max, setups, evicted).
pub fn conntrack(t: &Topology, n: &Node) -> anyhow::Result<[u64; 4]> {
    let v = t.cli_json(n, &["stats"])?;
    let c = &v["conntrack"];
    let get = |k: &str| {
        c[k].as_u64()
            .ok_or_else(|| anyhow::anyhow!("no conntrack {k}: {v}"))
    };
    Ok([
        get("entries")?,
        get("max")?,
        get("setups")?,
        get("evicted")?,
    ])
}

/// The response (status line, headers and body) to `GET /metrics` on an
/// agent's `--metrics-addr`, asked from inside `ns`.
pub fn scrape(ns: &str, addr: SocketAddr) -> Result<String> {
    in_netns(ns, move || -> Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })?
}

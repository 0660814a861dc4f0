//! Traffic generators and sinks that run inside namespaces. They use std
//! sockets created via [`in_netns`] rather than external tools (nc, socat) so
//! tests depend on nothing beyond iproute2 and ping, and get exact bytes back.

use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::command;
use crate::netns::in_netns;

/// How often server loops wake to notice they should stop; short so Drop
/// returns quickly, long enough not to burn CPU on a 2-core CI box.
const POLL: Duration = Duration::from_millis(50);

/// Whether `dst` answers ICMP echo from `ns`. Returns `Ok(false)` on loss so
/// tests can assert unreachability as easily as reachability. With `size`,
/// DF is set so an MTU problem shows up as loss instead of fragmentation.
pub fn ping(ns: &str, dst: &str, count: u32, size: Option<u32>) -> Result<bool> {
    let count_s = count.to_string();
    let mut args = vec!["ping"];
    if dst.parse::<Ipv6Addr>().is_ok() {
        args.push("-6");
    }
    args.extend(["-c", &count_s, "-W", "1", "-i", "0.2"]);
    let size_s = size.map(|s| s.to_string());
    if let Some(size_s) = &size_s {
        args.extend(["-s", size_s, "-M", "do"]);
    }
    args.push(dst);
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(&args);
    // ping bounds itself (-W per probe); the margin only guards against hangs.
    let limit = Duration::from_millis(u64::from(count) * 1200 + 10_000);
    let out = command::run(&mut cmd, limit)?;
    Ok(out.status.success())
}

/// A background echo service; dropping it stops its threads.
pub struct EchoServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// The bound address, useful when the caller asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn tcp_echo_server(ns: &str, addr: SocketAddr) -> Result<EchoServer> {
    let listener = in_netns(ns, move || TcpListener::bind(addr))?
        .with_context(|| format!("binding TCP {addr} in netns {ns}"))?;
    let local_addr = listener.local_addr()?;
    // Non-blocking accept lets the loop notice `stop` without needing a
    // wake-up connection (which might not even be routable from here).
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::Builder::new()
        .name(format!("tcp-echo-{local_addr}"))
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let flag = flag.clone();
                        let _ = thread::Builder::new()
                            .name("tcp-echo-conn".into())
                            .spawn(move || echo_tcp_conn(conn, &flag));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL / 5),
                    Err(_) => thread::sleep(POLL),
                }
            }
        })?;
    Ok(EchoServer {
        local_addr,
        stop,
        thread: Some(thread),
    })
}

fn echo_tcp_conn(mut conn: TcpStream, stop: &AtomicBool) {
    if conn.set_nonblocking(false).is_err() || conn.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Connects from inside `ns`, sends `payload`, half-closes and collects the
/// reply until EOF, all bounded by `timeout`.
pub fn tcp_roundtrip(
    ns: &str,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let payload = payload.to_vec();
    in_netns(ns, move || -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut conn = TcpStream::connect_timeout(&dst, timeout)
            .with_context(|| format!("TCP connect to {dst}"))?;
        conn.set_write_timeout(Some(timeout))?;
        // Write from another thread while this one reads: an echo larger than
        // both socket buffers would otherwise deadlock.
        let mut writer = conn.try_clone()?;
        let sent = thread::spawn(move || -> Result<()> {
            writer
                .write_all(&payload)
                .with_context(|| format!("TCP write to {dst}"))?;
            writer.shutdown(Shutdown::Write)?;
            Ok(())
        });
        let mut reply = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "TCP reply from {dst} incomplete after {timeout:?} ({} bytes)",
                reply.len()
            );
            conn.set_read_timeout(Some(left))?;
            match conn.read(&mut buf) {
                Ok(0) => {
                    sent.join()
                        .map_err(|_| anyhow::anyhow!("TCP writer to {dst} panicked"))??;
                    return Ok(reply);
                }
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("TCP read from {dst}"));
                }
            }
        }
    })?
    .with_context(|| format!("TCP roundtrip from netns {ns}"))
}

pub fn udp_echo_server(ns: &str, addr: SocketAddr) -> Result<EchoServer> {
    let sock = in_netns(ns, move || UdpSocket::bind(addr))?
        .with_context(|| format!("binding UDP {addr} in netns {ns}"))?;
    let local_addr = sock.local_addr()?;
    sock.set_read_timeout(Some(POLL))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::Builder::new()
        .name(format!("udp-echo-{local_addr}"))
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        })?;
    Ok(EchoServer {
        local_addr,
        stop,
        thread: Some(thread),
    })
}

/// Sends `payload` and returns the first datagram that comes back. The send
/// is repeated because the first packets through a fresh path are often
/// consumed by ARP/ND resolution and silently dropped.
pub fn udp_roundtrip(
    ns: &str,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    const ATTEMPTS: u32 = 5;
    let payload = payload.to_vec();
    in_netns(ns, move || -> Result<Vec<u8>> {
        let sock = UdpSocket::bind(unspecified_for(dst))?;
        sock.connect(dst)
            .with_context(|| format!("UDP connect to {dst}"))?;
        let per_try = timeout / ATTEMPTS;
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        let mut last_err = None;
        for _ in 0..ATTEMPTS {
            if let Err(e) = sock.send(&payload) {
                // ECONNREFUSED from an earlier ICMP unreachable surfaces
                // here; keep trying until the deadline like any other loss.
                last_err = Some(e);
            }
            let try_deadline = (Instant::now() + per_try).min(deadline);
            loop {
                let left = try_deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                sock.set_read_timeout(Some(left))?;
                match sock.recv(&mut buf) {
                    Ok(n) => return Ok(buf[..n].to_vec()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break
                    }
                    Err(e) => {
                        last_err = Some(e);
                        thread::sleep(POLL.min(left));
                    }
                }
            }
        }
        match last_err {
            Some(e) => bail!("no UDP reply from {dst} within {timeout:?} (last error: {e})"),
            None => bail!("no UDP reply from {dst} within {timeout:?}"),
        }
    })?
    .with_context(|| format!("UDP roundtrip from netns {ns}"))
}

pub fn udp_send_raw(ns: &str, dst: SocketAddr, payloads: &[Vec<u8>]) -> Result<()> {
    let payloads = payloads.to_vec();
    in_netns(ns, move || -> Result<()> {
        let sock = UdpSocket::bind(unspecified_for(dst))?;
        for p in &payloads {
            sock.send_to(p, dst)
                .with_context(|| format!("UDP send of {} bytes to {dst}", p.len()))?;
        }
        Ok(())
    })?
    .with_context(|| format!("UDP send from netns {ns}"))
}

fn unspecified_for(dst: SocketAddr) -> SocketAddr {
    let ip = match dst.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// Injects hand-built Ethernet frames, for tests of malformed or unusual
/// traffic that no socket API would produce.
pub fn send_raw_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    let frames = frames.to_vec();
    let ifname_owned = ifname.to_string();
    in_netns(ns, move || send_frames_here(&ifname_owned, &frames))?
        .with_context(|| format!("sending raw frames on {ifname} in netns {ns}"))
}

fn send_frames_here(ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    let c_name = std::ffi::CString::new(ifname)?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("if_nametoindex({ifname})"));
    }
    // Protocol 0: this socket only transmits, so it should not receive (and
    // buffer) every frame on the interface.
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET, SOCK_RAW)");
    }
    // SAFETY: fd is a freshly created, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a properly initialised sockaddr_ll and the length
    // passed matches its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bind to {ifname}"));
    }
    for (i, frame) in frames.iter().enumerate() {
        // SAFETY: the pointer/length pair describes `frame`'s live buffer.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("send of frame {i} ({} bytes)", frame.len()));
        }
        ensure!(
            n as usize == frame.len(),
            "short send of frame {i}: {n} of {} bytes",
            frame.len()
        );
    }
    Ok(())
}

/// A TCP server in `ns` that writes `answer(client address)` on each
/// connection (a task telling who it is, and whom it sees), then closes it, or
/// with `hold` keeps it open until the client closes it. Dropping it stops it
/// and closes the listener, so new connections are refused.
pub struct AnswerServer {
    stop: Arc<AtomicBool>,
}

impl Drop for AnswerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn answer_server(
    ns: &str,
    addr: SocketAddr,
    hold: bool,
    answer: impl Fn(SocketAddr) -> String + Send + 'static,
) -> Result<AnswerServer> {
    let l = in_netns(ns, move || TcpListener::bind(addr))?
        .with_context(|| format!("binding TCP {addr} in netns {ns}"))?;
    l.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    thread::Builder::new()
        .name(format!("answer-{addr}"))
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let msg = answer(peer);
                        if !hold {
                            let _ = c.write_all(msg.as_bytes());
                            continue;
                        }
                        let _ = thread::Builder::new().spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.write_all(msg.as_bytes());
                            let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                            let mut b = [0u8; 64];
                            while matches!(c.read(&mut b), Ok(n) if n > 0) {}
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
    Ok(AnswerServer { stop })
}

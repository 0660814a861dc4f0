//! The run-to-completion worker: one thread, one epoll set (mio) over the underlay
//! socket and every port fd. Each ready fd is read until empty (within a budget, for
//! fairness), each frame goes through the core and out again before the next is
//! read. The worker owns its switch (learned FDB, counters): no lock on the packet
//! path. The control plane talks to it through a command queue plus a waker, and
//! publishes state by swapping an `Arc` (arc-swap).

use crate::buf::{PacketBuf, Segmented};
use crate::counters::{Counters, DropReason};
use crate::io::dns_pending::DnsPending;
use crate::io::gso;
use crate::io::probe::{ProbeEvent, ProbeInbox, ProbeSend};
use crate::io::underlay::Underlay;
use crate::offload::coalesce::Coalescer;
use crate::offload::gather::{Gather, GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use crate::offload::segment;
use crate::offload::vnet::{self, VnetHdr};
use crate::switch::{Action, PortId, Switch, SwitchState};
use crate::traffic::Traffic;
use crate::tunnel::{Received, TunnelConfig, Tunnels};
use crate::wire::vxlan::VXLAN_HEADER_LEN;
use arc_swap::ArcSwap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAKER: Token = Token(0);
const UNDERLAY: Token = Token(1);
const WIREGUARD: Token = Token(2);
const DNS_FORWARD: Token = Token(3);
const FIRST_PORT_TOKEN: usize = 4;
/// How long a forwarded query waits for its answer.
const DNS_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// WireGuard's timers want a tick about this often.
const TUNNEL_TICK: Duration = Duration::from_millis(250);
/// Frames taken from one fd before looking at the others.
const BUDGET: usize = 64;
/// How often counters are copied out for the control plane.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How often worker 0 sweeps the connection table: expired entries go, and
/// SYNs unanswered for `lb::passive::SYN_RETRY_MS` count against their
/// backend, so a dead backend is out within about 1.3 s of three of them
/// (a sweep of a full table takes about 64 us, in 2 us slices).
const SWEEP_EVERY: Duration = Duration::from_millis(500);

enum Command {
    /// A port's fd for this worker; `read`: this worker reads it (else it only
    /// writes to it, e.g. a single-queue device another worker reads).
    AddPort {
        id: PortId,
        fd: OwnedFd,
        vnet: bool,
        read: bool,
        traffic: Traffic,
    },
    RemovePort(PortId),
    StateChanged,
    Tunnels(Box<TunnelConfig>),
    Trace(Option<crate::switch::tap::Tap>),
    /// Test-only (`VXMESH_TEST_FAULT`): panic at this time.
    PanicAt(Instant),
    /// Send a doctor's probe.
    Probe(ProbeSend),
    /// Test-only: report the wall clock this many ms off in probe answers.
    ClockSkew(i64),
    Stop,
}

/// The control plane's handle on a running worker.
pub struct WorkerHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    counters: Arc<Mutex<Counters>>,
    /// The agent's end of this worker's flow log (`None`: flow logs off).
    flows: Option<Mutex<crate::flowlog::FlowReader>>,
    /// Why the worker stopped, when it stopped without being told to (it
    /// panicked, or its poll failed): set once, by the worker's thread.
    exit: Arc<OnceLock<String>>,
    join: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// `state`: the state all workers switch by (see `Dataplane`). `wireguard`: the
    /// socket encrypted networks use, given to one worker only. `probes`: where
    /// answers to the doctor's probes go, shared by all workers.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        index: usize,
        state: Arc<ArcSwap<SwitchState>>,
        conntrack: Arc<Mutex<crate::conntrack::Conntrack>>,
        start: Instant,
        underlay: Underlay,
        wireguard: Option<std::net::UdpSocket>,
        limits: crate::io::dataplane::Limits,
        probes: Arc<Mutex<ProbeInbox>>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Mutex::new(Counters::default()));
        let mut switch = Switch::with_conntrack(limits.fdb_learned, conntrack);
        switch.set_lane(index);
        switch.set_flood_rate(limits.flood_rate);
        let flows = limits.flow_log.map(|cfg| {
            let (log, reader) = crate::flowlog::FlowLog::new(cfg);
            switch.set_flow_log(Some(log));
            Mutex::new(reader)
        });
        let mut w = Worker {
            poll,
            rx,
            underlay,
            ports: FxHashMap::default(),
            batch: GsoBatch::default(),
            gather: Gather::default(),
            wg_batch: GsoBatch::default(),
            coalescer: Coalescer::new(),
            co_port: None,
            rx_bufs: vec![vec![0u8; 65_536 + 4096]; gso::BATCH],
            underlay_dropped: 0,
            wg_dropped: 0,
            dns_sock: DnsSocket::bind()?,
            dns_pending: DnsPending::new(
                limits
                    .dns_forwards
                    .clamp(1, crate::io::dataplane::DNS_FORWARDS_LIMIT),
            ),
            dns_scratch: vec![0u8; 65_536],
            rx_meta: [gso::RecvMeta::default(); gso::BATCH],
            state: state.clone(),
            switch,
            index,
            published: counters.clone(),
            start,
            wg: wireguard,
            wg_gso: true,
            tunnels: Tunnels::new(),
            panic_at: None,
            probe_inbox: probes,
            clock_skew_ms: 0,
        };
        w.set_wall_clock();
        if let Some(wg) = &w.wg {
            wg.set_nonblocking(true)?;
            if let Err(e) = gso::enable_gro(wg) {
                tracing::warn!(error = %e, "UDP GRO unavailable on the WireGuard socket");
            }
            w.poll.registry().register(
                &mut SourceFd(&wg.as_raw_fd()),
                WIREGUARD,
                Interest::READABLE,
            )?;
        }
        w.dns_sock.sock.set_nonblocking(true)?;
        w.poll.registry().register(
            &mut SourceFd(&w.dns_sock.sock.as_raw_fd()),
            DNS_FORWARD,
            Interest::READABLE,
        )?;
        if let Err(e) = w.underlay.enable_gro() {
            tracing::warn!(error = %e, "UDP GRO unavailable: one datagram per read");
        }
        w.poll.registry().register(
            &mut SourceFd(&w.underlay.rx.as_raw_fd()),
            UNDERLAY,
            Interest::READABLE,
        )?;
        let exit = Arc::new(OnceLock::new());
        let exit_set = exit.clone();
        let join = std::thread::Builder::new()
            .name(format!("vxmesh-worker-{index}"))
            .spawn(move || {
                // a panic is caught only to be reported: the control plane
                // sees the worker gone and stops the agent (see
                // `Dataplane::stopped_worker`) rather than forward with one
                // worker fewer, its queues and sockets unread
                let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())) {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(p) => format!("panicked: {}", panic_message(p.as_ref())),
                };
                let _ = exit_set.set(why);
            })?;
        Ok(Self {
            tx,
            waker,
            counters,
            flows,
            exit,
            join: Some(join),
        })
    }

    fn send(&self, c: Command) {
        // A send fails only when the worker has exited; nothing is left to tell then.
        let _ = self.tx.send(c);
        let _ = self.waker.wake();
    }

    /// `vnet`: the fd is a TAP opened with `IFF_VNET_HDR` (see `tap::create_queues`).
    /// `traffic`: the port's counters, where this worker counts in its own lane.
    pub fn add_port(&self, id: PortId, fd: OwnedFd, vnet: bool, read: bool, traffic: Traffic) {
        self.send(Command::AddPort {
            id,
            fd,
            vnet,
            read,
            traffic,
        });
    }

    pub fn remove_port(&self, id: PortId) {
        self.send(Command::RemovePort(id));
    }

    /// Replaces the tunnels' peers and keys (the keys stay inside the worker).
    pub fn set_tunnels(&self, cfg: TunnelConfig) {
        self.send(Command::Tunnels(Box::new(cfg)));
    }

    /// Starts (`Some`) or stops a trace on this worker.
    pub fn trace(&self, tap: Option<crate::switch::tap::Tap>) {
        self.send(Command::Trace(tap));
    }

    /// Tells the worker the shared state was replaced (it prunes what it learned).
    pub fn state_changed(&self) {
        self.send(Command::StateChanged);
    }

    /// Why the worker stopped on its own (it panicked, or its poll failed);
    /// `None` while it runs.
    pub fn stopped(&self) -> Option<&str> {
        self.exit.get().map(String::as_str)
    }

    /// Test-only (`VXMESH_TEST_FAULT`): makes the worker panic, holding the
    /// connection table's lock, once `after` has passed.
    pub fn inject_panic(&self, after: Duration) {
        self.send(Command::PanicAt(Instant::now() + after));
    }

    /// Sends a doctor's probe; its answer (or why it could not leave) goes
    /// to the probe inbox.
    pub fn probe(&self, p: ProbeSend) {
        self.send(Command::Probe(p));
    }

    /// Test-only: probe answers carry the wall clock `ms` off.
    pub fn set_clock_skew(&self, ms: i64) {
        self.send(Command::ClockSkew(ms));
    }

    /// Moves up to `max` of the flow records this worker wrote into `out`.
    pub fn drain_flows(&self, out: &mut Vec<crate::flowlog::FlowEvent>, max: usize) {
        if let Some(Ok(mut r)) = self.flows.as_ref().map(|f| f.lock()) {
            r.drain_into(out, max);
        }
    }

    /// Counters as of the last publication (at most 100 ms old).
    pub fn counters(&self) -> Counters {
        self.counters.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.send(Command::Stop);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

struct Worker {
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    underlay: Underlay,
    ports: FxHashMap<PortId, Port>,
    /// Equal-sized VXLAN datagrams to one VTEP, waiting for one GSO send.
    batch: GsoBatch,
    /// Where a super-frame's segment headers are written for a gathering send.
    gather: Gather,
    /// The same for encrypted datagrams to one WireGuard peer.
    wg_batch: GsoBatch,
    /// Segments from the underlay for one port, waiting to be one TAP write.
    coalescer: Coalescer,
    co_port: Option<PortId>,
    /// One `recvmmsg`: up to `gso::BATCH` messages, each a GRO run of up to 64 KiB.
    rx_bufs: Vec<Vec<u8>>,
    /// The underlay and WireGuard sockets' overflow counts when last read.
    underlay_dropped: u32,
    wg_dropped: u32,
    /// Relays DNS queries for unknown names to the node's resolvers.
    dns_sock: DnsSocket,
    /// Forwarded queries by the id we gave them: who asked and their id, at
    /// most `--dns-forwards-max`, shared between the ports that ask.
    dns_pending: DnsPending<(crate::wire::udp_reply::UdpPeer, u16)>,
    dns_scratch: Vec<u8>,
    rx_meta: [gso::RecvMeta; gso::BATCH],
    state: Arc<ArcSwap<SwitchState>>,
    switch: Switch,
    published: Arc<Mutex<Counters>>,
    /// Shared by all workers, so conntrack timestamps agree.
    start: Instant,
    index: usize,
    wg: Option<std::net::UdpSocket>,
    /// Whether WireGuard runs still leave as one GSO send (see [`gso::send_run`]).
    wg_gso: bool,
    tunnels: Tunnels,
    /// Test-only: when to panic (see [`WorkerHandle::inject_panic`]).
    panic_at: Option<Instant>,
    /// Where answers to this node's probes go, for the doctor (all workers').
    probe_inbox: Arc<Mutex<ProbeInbox>>,
    /// Test-only: how far off the wall clock in probe answers is.
    clock_skew_ms: i64,
}

/// A panic's message, as `panic!` formatted it (a `&str` or a `String`).
fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A random 16-bit number (std's per-instance random hash keys as the source).
fn random_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u16
}

/// Sends one WireGuard datagram; a failed send counts, it never stops the worker.
fn send_wg(wg: &Option<std::net::UdpSocket>, c: &mut Counters, d: &[u8], to: std::net::SocketAddr) {
    match wg.as_ref().map(|s| s.send_to(d, to)) {
        Some(Ok(_)) => c.tunnel_tx += 1,
        _ => c.drop(DropReason::TxFailed),
    }
}

struct Port {
    fd: OwnedFd,
    vnet: bool,
    read: bool,
    /// Frames read from and written to the device.
    traffic: Traffic,
}

/// A run of datagrams for one `sendmsg` with `UDP_SEGMENT`: same destination,
/// same flow (so the same source socket), all `seg` bytes but possibly the last.
#[derive(Default)]
struct GsoBatch {
    buf: Vec<u8>,
    to: Option<std::net::SocketAddr>,
    hash: u32,
    seg: usize,
    count: usize,
    closed: bool,
}

impl GsoBatch {
    fn joins(&self, to: std::net::SocketAddr, hash: u32, len: usize) -> bool {
        self.count > 0
            && self.to == Some(to)
            && self.hash == hash
            && !self.closed
            && len <= self.seg
            && self.count < GSO_MAX_SEGMENTS
            && self.buf.len() + len <= GSO_MAX_BYTES
    }

    /// Adds a datagram; the caller has flushed if it does not join.
    fn add(&mut self, to: std::net::SocketAddr, hash: u32, d: &[u8]) {
        if self.count == 0 {
            self.to = Some(to);
            self.hash = hash;
            self.seg = d.len();
        }
        self.buf.extend_from_slice(d);
        self.count += 1;
        self.closed = d.len() < self.seg;
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.to = None;
        self.count = 0;
        self.closed = false;
    }
}

/// Sends what a WireGuard batch holds on the WireGuard socket (one GSO send
/// while `gso` holds; see [`gso::send_run`]).
fn flush_wg(b: &mut GsoBatch, wg: &Option<std::net::UdpSocket>, gso: &mut bool, c: &mut Counters) {
    let (Some(to), Some(sock)) = (b.to, wg.as_ref()) else {
        b.clear();
        return;
    };
    let r = if b.count == 1 {
        sock.send_to(&b.buf, to).map(|_| 1)
    } else {
        gso::send_run(sock, to, &b.buf, b.seg as u16, gso)
    };
    let sent = r.unwrap_or(0).min(b.count);
    c.tunnel_tx += sent as u64;
    for _ in sent..b.count {
        c.drop(DropReason::TxFailed);
    }
    b.clear();
}

/// Writes one frame to a port: with a `virtio_net_hdr` in front (one `writev`)
/// when the port is an offloading TAP. Counted in the port's traffic in `lane`.
fn write_frame(
    ports: &FxHashMap<PortId, Port>,
    c: &mut Counters,
    lane: usize,
    port: PortId,
    hdr: &VnetHdr,
    frame: &[u8],
) {
    let Some(p) = ports.get(&port) else {
        c.drop(DropReason::TxFailed);
        return;
    };
    let n = if p.vnet {
        let mut h = [0u8; vnet::LEN];
        hdr.emit(&mut h);
        let iov = [
            libc::iovec {
                iov_base: h.as_ptr() as *mut libc::c_void,
                iov_len: h.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the lengths given.
        unsafe { libc::writev(p.fd.as_raw_fd(), iov.as_ptr(), 2) }
    } else {
        // SAFETY: writing from a live slice of the length passed.
        unsafe { libc::write(p.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) }
    };
    if n < 0 {
        c.drop(DropReason::TxFailed);
    } else {
        c.port_tx += 1;
        p.traffic.tx(lane, 1, frame.len() as u64);
    }
}

/// The socket queries go to the node's resolvers from: one of both families
/// (IPv6, not IPv6-only) so resolvers of either are asked, or IPv4 alone on a
/// kernel without IPv6. Which one it is is known at bind, so sending asks no
/// syscall of it.
struct DnsSocket {
    sock: std::net::UdpSocket,
    dual: bool,
}

impl DnsSocket {
    fn bind() -> io::Result<Self> {
        let dual = || -> io::Result<std::net::UdpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
            s.set_only_v6(false)?;
            s.bind(&SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0).into())?;
            Ok(s.into())
        };
        match dual() {
            Ok(sock) => Ok(Self { sock, dual: true }),
            Err(_) => Ok(Self {
                sock: std::net::UdpSocket::bind("0.0.0.0:0")?,
                dual: false,
            }),
        }
    }

    /// Sends to `to`, an IPv4 resolver as an IPv4-mapped address from the
    /// dual-stack socket.
    fn send_to(&self, q: &[u8], to: SocketAddr) -> io::Result<usize> {
        let to = match to.ip() {
            IpAddr::V4(a) if self.dual => {
                SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), to.port())
            }
            _ => to,
        };
        self.sock.send_to(q, to)
    }

    /// Receives an answer, its source as the resolver was configured (an
    /// IPv4-mapped source back to IPv4).
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, src) = self.sock.recv_from(buf)?;
        Ok((n, SocketAddr::new(src.ip().to_canonical(), src.port())))
    }
}

/// A worker's receiving sockets.
#[derive(Clone, Copy)]
enum Rx {
    Underlay,
    WireGuard,
}

/// Adds to the `socket_overflow` drops what a socket dropped since `seen`, its
/// running count when last read (the newest datagram carries the highest).
fn count_overflow(meta: &[gso::RecvMeta], seen: &mut u32, c: &mut Counters) {
    if let Some(now) = meta.iter().map(|m| m.dropped).max() {
        let new = now.wrapping_sub(*seen);
        // a count that went down is an older datagram's (or a wrap long ago)
        if new > 0 && new < u32::MAX / 2 {
            c.drop_n(DropReason::SocketOverflow, u64::from(new));
            *seen = now;
        }
    }
}

fn token_of(p: PortId) -> Token {
    Token(p.0 as usize + FIRST_PORT_TOKEN)
}

impl Worker {
    /// Runs until told to stop (`Ok`), or until it cannot go on (`Err`: why).
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        let mut buf = PacketBuf::new();
        // where TSO super-frames are cut into segments
        let mut seg = PacketBuf::new();
        // fds that still had frames when their budget ran out
        let mut pending: Vec<Token> = Vec::new();
        let mut ready: Vec<Token> = Vec::with_capacity(256);
        let mut last_publish = Instant::now();
        let mut last_tick = Instant::now();
        let mut last_limiter_reset = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            let timeout = if pending.is_empty() {
                PUBLISH_EVERY
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("poll failed: {e}"));
                }
            }
            if self.panic_at.is_some_and(|t| Instant::now() >= t) {
                // as a bug in the packet path would: with the table locked
                let table = self.switch.conntrack();
                let _held = crate::conntrack::lock_counted(&table);
                panic!("injected fault (VXMESH_TEST_FAULT=worker-panic-after)");
            }
            ready.clear();
            ready.append(&mut pending);
            ready.extend(events.iter().map(|e| e.token()));
            ready.sort_unstable_by_key(|t| t.0);
            ready.dedup();
            for &t in &ready {
                let more = match t {
                    WAKER => {
                        if !self.commands() {
                            self.publish_counters();
                            return Ok(());
                        }
                        false
                    }
                    UNDERLAY => self.drain_underlay(&mut buf),
                    WIREGUARD => self.drain_wireguard(&mut buf),
                    DNS_FORWARD => self.drain_dns(&mut buf),
                    t => {
                        self.drain_port(PortId((t.0 - FIRST_PORT_TOKEN) as u32), &mut buf, &mut seg)
                    }
                };
                if more {
                    pending.push(t);
                }
            }
            if self.tunnels.is_enabled() && last_tick.elapsed() >= TUNNEL_TICK {
                let (wg, tunnels, c) = (&self.wg, &mut self.tunnels, &mut self.switch.counters);
                tunnels.tick(&mut |d, to| send_wg(wg, c, d, to));
                last_tick = Instant::now();
            }
            if last_limiter_reset.elapsed() >= Duration::from_secs(1) {
                self.tunnels.reset_rate_limiter();
                self.set_wall_clock();
                last_limiter_reset = Instant::now();
                let now = self.now_ms();
                self.dns_pending
                    .expire(now, DNS_FORWARD_TIMEOUT.as_millis() as u64);
            }
            if self.index == 0 && last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                let now = self.now_ms();
                let gone = self.switch.expire(now);
                self.send_resets(&gone, &mut buf);
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                self.publish_counters();
                last_publish = Instant::now();
            }
        }
    }

    fn publish_counters(&self) {
        if let Ok(mut c) = self.published.lock() {
            c.clone_from(&self.switch.counters);
            c.tunnel_handshakes = self.tunnels.handshakes();
            c.tunnel_rekeys = self.tunnels.rekeys();
        }
    }

    /// Applies queued commands; false when told to stop.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Command::AddPort {
                    id,
                    fd,
                    vnet,
                    read,
                    traffic,
                } => {
                    let r = if read {
                        self.poll.registry().register(
                            &mut SourceFd(&fd.as_raw_fd()),
                            token_of(id),
                            Interest::READABLE,
                        )
                    } else {
                        Ok(())
                    };
                    match r {
                        Ok(()) => {
                            self.ports.insert(
                                id,
                                Port {
                                    fd,
                                    vnet,
                                    read,
                                    traffic,
                                },
                            );
                        }
                        Err(e) => tracing::error!(port = id.0, error = %e, "cannot poll port"),
                    }
                }
                Command::RemovePort(id) => {
                    if let Some(p) = self.ports.remove(&id).filter(|p| p.read) {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut SourceFd(&p.fd.as_raw_fd()));
                    }
                }
                Command::StateChanged => {
                    let st = self.state.load();
                    let gone = self.switch.on_state(&st);
                    let mut buf = PacketBuf::new();
                    self.send_resets(&gone, &mut buf);
                }
                Command::Tunnels(cfg) => {
                    let (wg, tunnels, c) = (&self.wg, &mut self.tunnels, &mut self.switch.counters);
                    tunnels.configure(*cfg, &mut |d, to| send_wg(wg, c, d, to));
                    tracing::debug!(slots = tunnels.slots(), "tunnels configured");
                }
                Command::Trace(t) => self.switch.tap = t,
                Command::PanicAt(t) => self.panic_at = Some(t),
                Command::Probe(p) => self.send_probe(p),
                Command::ClockSkew(ms) => {
                    self.clock_skew_ms = ms;
                    self.set_wall_clock();
                }
                Command::Stop => return false,
            }
        }
        true
    }

    /// Resets both ends of connections whose entries went (expired, or their
    /// backend left), so neither waits on a connection nobody carries.
    fn send_resets(&mut self, gone: &[crate::conntrack::Entry], buf: &mut PacketBuf) {
        if gone.is_empty() {
            return;
        }
        let st = self.state.load_full();
        for e in gone {
            for to_client in [true, false] {
                let a = self.switch.reset(&st, e, to_client, buf);
                self.execute(a, buf);
            }
        }
        self.flush_batch();
        tracing::debug!(connections = gone.len(), "reset connections that went away");
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Tells the switch the wall clock at its clock's zero (again every
    /// second, so a stepped clock shows in probe answers).
    fn set_wall_clock(&mut self) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let at_zero = unix_ms
            .saturating_sub(self.now_ms())
            .saturating_add_signed(self.clock_skew_ms);
        self.switch.set_wall_clock(at_zero);
    }

    /// Sends a doctor's probe: plain from the underlay's probe socket, or
    /// through the tunnel. What stops it leaving goes to the inbox at once.
    fn send_probe(&mut self, p: ProbeSend) {
        let mut buf = PacketBuf::new();
        let len = p.len.clamp(crate::wire::probe::MIN_LEN, 65_000);
        if crate::wire::probe::emit_request(&mut buf.datagram_slot()[..len], p.id).is_none() {
            return;
        }
        buf.set_datagram_len(len);
        let failed = if p.secure {
            buf.pull_front(crate::wire::vxlan::VXLAN_HEADER_LEN);
            let r = self.send_secure(0, p.to, &mut buf);
            flush_wg(
                &mut self.wg_batch,
                &self.wg,
                &mut self.wg_gso,
                &mut self.switch.counters,
            );
            r.err()
                .map(|r| format!("the tunnel refused it ({})", r.as_str()))
        } else {
            self.underlay
                .send_probe(p.to, buf.data())
                .err()
                .map(|e| e.to_string())
        };
        if let Some(error) = failed {
            let e = ProbeEvent::SendFailed { id: p.id, error };
            if let Ok(mut inbox) = self.probe_inbox.lock() {
                inbox.push(e);
            }
        }
    }

    /// Reads the underlay until empty (within the budget). With UDP GRO one read
    /// holds a run of datagrams of one flow; consecutive TCP segments for one
    /// port are coalesced into one TAP write.
    fn drain_underlay(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        let mut more = true;
        for _ in 0..BUDGET / gso::BATCH {
            let Some(got) = self.read_batch(Rx::Underlay) else {
                more = false;
                break;
            };
            // one clock read per batch, not per datagram
            let now = self.now_ms();
            for m in 0..got {
                let meta = self.rx_meta[m];
                for d in meta.datagrams() {
                    buf.load_datagram(&self.rx_bufs[m][d]);
                    let a = self
                        .switch
                        .from_underlay(&st, meta.from.ip(), buf, now, false);
                    self.execute_received(a, buf);
                }
            }
            if self.emptied(got) {
                more = false;
                break;
            }
        }
        self.flush_coalescer();
        more
    }

    /// Reads one batch of `sock` into `rx_bufs`/`rx_meta`, counting what the
    /// socket dropped since the last read; `None` when it is empty (or failed).
    fn read_batch(&mut self, sock: Rx) -> Option<usize> {
        let (s, seen) = match sock {
            Rx::Underlay => (&self.underlay.rx, &mut self.underlay_dropped),
            Rx::WireGuard => (self.wg.as_ref()?, &mut self.wg_dropped),
        };
        let got = match gso::recv_many(s, &mut self.rx_bufs, &mut self.rx_meta) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "receive failed");
                }
                return None;
            }
        };
        count_overflow(&self.rx_meta[..got], seen, &mut self.switch.counters);
        Some(got)
    }

    /// Whether a batch of `got` emptied its socket: `recvmmsg` stopped short.
    /// A datagram that lands later raises a new edge, so there is no call to
    /// see EAGAIN (one syscall per wake-up saved when a wake-up brings one or two).
    fn emptied(&self, got: usize) -> bool {
        got < self.rx_bufs.len().min(gso::BATCH)
    }

    /// Executes the action for a frame from the underlay or a tunnel: deliveries to
    /// an offloading TAP go through the coalescer, anything else flushes it first
    /// (so nothing overtakes what it holds).
    fn execute_received(&mut self, a: Action<'_>, buf: &mut PacketBuf) {
        match a {
            Action::Deliver(p) if self.ports.get(&p).is_some_and(|p| p.vnet) => {
                self.coalesce(p, buf.data())
            }
            a => {
                self.flush_coalescer();
                self.execute(a, buf);
            }
        }
    }

    /// Adds a frame for `port` to the pending super-frame, or writes what is
    /// pending and starts anew.
    fn coalesce(&mut self, port: PortId, frame: &[u8]) {
        if self.co_port == Some(port) && self.coalescer.push(frame) {
            return;
        }
        self.flush_coalescer();
        if self.coalescer.push(frame) {
            self.co_port = Some(port);
        } else {
            write_frame(
                &self.ports,
                &mut self.switch.counters,
                self.index,
                port,
                &VnetHdr::default(),
                frame,
            );
        }
    }

    fn flush_coalescer(&mut self) {
        let Some(port) = self.co_port.take() else {
            return;
        };
        if let Some((h, frame)) = self.coalescer.take() {
            write_frame(
                &self.ports,
                &mut self.switch.counters,
                self.index,
                port,
                &h,
                frame,
            );
        }
    }

    /// Reads the WireGuard socket until empty (within the budget): with UDP GRO a
    /// read holds a run of one peer's datagrams, each decrypted in turn; runs of
    /// TCP segments for one port become one TAP write, as on the plain path.
    fn drain_wireguard(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        let mut more = true;
        for _ in 0..BUDGET / gso::BATCH {
            let Some(got) = self.read_batch(Rx::WireGuard) else {
                more = false;
                break;
            };
            let now = self.now_ms();
            for m in 0..got {
                let meta = self.rx_meta[m];
                for d in meta.datagrams() {
                    self.switch.counters.tunnel_rx += 1;
                    let (wg, tunnels, c) = (&self.wg, &mut self.tunnels, &mut self.switch.counters);
                    let r = tunnels.receive(
                        meta.from,
                        &self.rx_bufs[m][d],
                        buf.tunnel_slot(),
                        &mut |d, to| send_wg(wg, c, d, to),
                    );
                    match r {
                        Received::Vxlan { vtep, offset, len } => {
                            buf.set_tunnel_received(offset, len);
                            let a = self.switch.from_underlay(&st, vtep, buf, now, true);
                            self.execute_received(a, buf);
                        }
                        Received::Control => {}
                        Received::Drop(r) => self.switch.counters.drop(r),
                    }
                }
            }
            if self.emptied(got) {
                more = false;
                break;
            }
        }
        self.flush_coalescer();
        flush_wg(
            &mut self.wg_batch,
            &self.wg,
            &mut self.wg_gso,
            &mut self.switch.counters,
        );
        more
    }

    /// Encrypts the datagram in `buf` for `vtep` (a tunnel address) and sends
    /// it; what stops it is counted, and returned.
    fn send_secure(
        &mut self,
        hash: u32,
        vtep: std::net::IpAddr,
        buf: &mut PacketBuf,
    ) -> Result<(), DropReason> {
        let (std::net::IpAddr::V4(dst), local) = (vtep, self.tunnels.local_vtep()) else {
            self.switch.counters.drop(DropReason::TunnelNoPeer);
            return Err(DropReason::TunnelNoPeer);
        };
        let Some(packet) = buf.tunnel_packet(local, dst, hash) else {
            self.switch.counters.drop(DropReason::TooBig);
            return Err(DropReason::TooBig);
        };
        let (wg, tunnels, c, b, g) = (
            &self.wg,
            &mut self.tunnels,
            &mut self.switch.counters,
            &mut self.wg_batch,
            &mut self.wg_gso,
        );
        let r = tunnels.send_to(dst, packet, &mut |d, to| {
            if !b.joins(to, 0, d.len()) {
                flush_wg(b, wg, g, c);
            }
            b.add(to, 0, d);
        });
        if let Err(r) = r {
            c.drop(r);
        }
        r
    }

    /// Reads a port until empty (within the budget). An offloading TAP hands over
    /// TCP super-frames, which are cut into segments here and switched one by one;
    /// their datagrams to one VTEP leave in one GSO send.
    fn drain_port(&mut self, port: PortId, buf: &mut PacketBuf, seg: &mut PacketBuf) -> bool {
        let Some((fd, vnet)) = self.ports.get(&port).map(|p| (p.fd.as_raw_fd(), p.vnet)) else {
            return false;
        };
        let st = self.state.load();
        let mut more = true;
        // counted once per batch: no refcount or counter line touched per frame
        let (mut pkts, mut bytes) = (0u64, 0u64);
        for _ in 0..BUDGET {
            let slot = if vnet {
                buf.vnet_slot()
            } else {
                buf.frame_slot()
            };
            // SAFETY: reading into a live, writable slice of the length passed.
            let n = unsafe { libc::read(fd, slot.as_mut_ptr().cast(), slot.len()) };
            if n <= 0 {
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        tracing::debug!(port = port.0, error = %e, "port read failed");
                    }
                }
                more = false;
                break;
            }
            let n = n as usize;
            // as the device hands it over: a TSO super-frame is one packet
            pkts += 1;
            bytes += (if vnet { n.saturating_sub(vnet::LEN) } else { n }) as u64;
            let now = self.now_ms();
            if !vnet {
                buf.set_frame_len(n);
                let a = self.switch.from_port(&st, port, buf, now);
                self.execute(a, buf);
                continue;
            }
            let Some(h) = VnetHdr::parse(buf.vnet_header()).filter(|_| n >= vnet::LEN) else {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            };
            buf.set_frame_len(n - vnet::LEN);
            if !h.is_gso() {
                if h.flags & vnet::F_NEEDS_CSUM != 0 && !vnet::finish_checksum(buf.data_mut(), &h) {
                    self.switch.counters.drop(DropReason::Malformed);
                    continue;
                }
                let a = self.switch.from_port(&st, port, buf, now);
                self.execute(a, buf);
                continue;
            }
            let frame = buf.data();
            let size = usize::from(h.gso_size);
            if size == 0 {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            }
            if h.gso_type & !vnet::GSO_ECN == vnet::GSO_UDP_L4 {
                let Some(l4) = segment::parse_udp(frame) else {
                    self.switch.counters.drop(DropReason::Malformed);
                    continue;
                };
                for i in 0..segment::udp_count(frame, l4, size) {
                    let Some(len) =
                        segment::write_udp_segment(frame, l4, size, i, seg.frame_slot())
                    else {
                        break;
                    };
                    seg.set_frame_len(len);
                    let a = self.switch.from_port(&st, port, seg, now);
                    self.execute(a, seg);
                }
                continue;
            }
            let Some(t) = segment::parse_tcp(frame) else {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            };
            // switched once, as the kernel forwards a GSO skb; cut after
            buf.set_segmented(Some(Segmented {
                hdr_len: t.payload_off,
                mss: size,
            }));
            let a = self.switch.from_port(&st, port, buf, now);
            self.execute_segmented(a, buf, &t, size, seg);
        }
        if let Some(p) = self.ports.get(&port) {
            p.traffic.rx(self.index, pkts, bytes);
        }
        self.flush_batch();
        flush_wg(
            &mut self.wg_batch,
            &self.wg,
            &mut self.wg_gso,
            &mut self.switch.counters,
        );
        more
    }

    /// Carries out the core's action for a TCP super-frame: to a VTEP in the
    /// clear, its segments leave in gathering GSO sends (headers written
    /// beside it, payloads where they lie); any other way, it is cut into
    /// `seg` and each segment goes the way the super-frame was sent.
    fn execute_segmented(
        &mut self,
        a: Action<'_>,
        buf: &mut PacketBuf,
        t: &segment::TcpFrame,
        mss: usize,
        seg: &mut PacketBuf,
    ) {
        // the bytes before the frame: the VXLAN header where the core wrote one
        // (Encap, Flood to VTEPs); copied along either way, a Deliver never
        // reads them
        let vxlan: Option<[u8; VXLAN_HEADER_LEN]> = buf
            .datagram()
            .get(..VXLAN_HEADER_LEN)
            .and_then(|h| h.try_into().ok());
        match (a, vxlan) {
            (
                Action::Encap {
                    vtep,
                    flow_hash,
                    secure: false,
                },
                Some(vx),
            ) => {
                // what the batch holds went first (an ACK of the same flow, say)
                self.flush_batch();
                let (underlay, c) = (&self.underlay, &mut self.switch.counters);
                let done = self.gather.segments(&vx, buf.data(), t, mss, |r| {
                    let sent = underlay
                        .send_gso_gather(flow_hash, vtep, r.parts, 2, r.seg)
                        .unwrap_or(0)
                        .min(r.count);
                    c.underlay_tx += sent as u64;
                    for _ in sent..r.count {
                        c.drop(DropReason::TxFailed);
                    }
                });
                if done.is_none() {
                    self.cut_and_execute(a, buf, t, mss, seg, vxlan);
                }
            }
            (Action::Deliver(_) | Action::Encap { .. } | Action::Flood { .. }, _) => {
                self.cut_and_execute(a, buf, t, mss, seg, vxlan)
            }
            // a reply the core wrote over it (ICMP "too big"), a drop
            (a, _) => self.execute(a, buf),
        }
    }

    /// Cuts the switched super-frame into `seg` one segment at a time, each
    /// behind the same VXLAN header, and executes `a` for each.
    fn cut_and_execute(
        &mut self,
        a: Action<'_>,
        buf: &PacketBuf,
        t: &segment::TcpFrame,
        mss: usize,
        seg: &mut PacketBuf,
        vxlan: Option<[u8; VXLAN_HEADER_LEN]>,
    ) {
        let frame = buf.data();
        for i in 0..segment::count(frame, t, mss) {
            let Some(len) = segment::write_segment(frame, t, mss, i, seg.frame_slot()) else {
                break;
            };
            seg.set_frame_len(len);
            if let Some(vx) = vxlan {
                seg.set_vxlan_header(&vx);
            }
            self.execute(a, seg);
        }
    }

    fn write_port(&mut self, port: PortId, frame: &[u8]) {
        write_frame(
            &self.ports,
            &mut self.switch.counters,
            self.index,
            port,
            &VnetHdr::default(),
            frame,
        );
    }

    fn send_vtep(&mut self, hash: u32, vtep: std::net::IpAddr, datagram: &[u8]) {
        match self.underlay.send(hash, vtep, datagram) {
            Ok(()) => self.switch.counters.underlay_tx += 1,
            Err(_) => self.switch.counters.drop(DropReason::TxFailed),
        }
    }

    /// Queues a datagram for a GSO send, sending what is queued first when this
    /// one cannot join it.
    fn batch_push(&mut self, hash: u32, vtep: std::net::IpAddr, d: &[u8]) {
        let to = std::net::SocketAddr::new(vtep, crate::VXLAN_PORT);
        if !self.batch.joins(to, hash, d.len()) {
            self.flush_batch();
        }
        self.batch.add(to, hash, d);
    }

    fn flush_batch(&mut self) {
        let b = &mut self.batch;
        let Some(to) = b.to else { return };
        let r = if b.count == 1 {
            self.underlay.send(b.hash, to.ip(), &b.buf).map(|()| 1)
        } else {
            self.underlay
                .send_gso(b.hash, to.ip(), &b.buf, b.seg as u16)
        };
        let sent = r.unwrap_or(0).min(b.count);
        self.switch.counters.underlay_tx += sent as u64;
        for _ in sent..b.count {
            self.switch.counters.drop(DropReason::TxFailed);
        }
        b.clear();
    }

    fn execute(&mut self, a: Action<'_>, buf: &mut PacketBuf) {
        match a {
            Action::Deliver(p) | Action::Reply(p) => self.write_port(p, buf.data()),
            Action::Encap {
                vtep,
                flow_hash,
                secure: false,
            } => self.batch_push(flow_hash, vtep, buf.datagram()),
            Action::Encap {
                vtep,
                flow_hash,
                secure: true,
            } => {
                let _ = self.send_secure(flow_hash, vtep, buf);
            }
            Action::Flood {
                ports,
                skip,
                vteps,
                flow_hash,
                secure,
            } => {
                for p in ports.iter().filter(|p| Some(**p) != skip) {
                    self.write_port(*p, buf.data());
                }
                self.flush_batch();
                for v in vteps {
                    if secure {
                        let _ = self.send_secure(flow_hash, *v, buf);
                    } else {
                        self.send_vtep(flow_hash, *v, buf.datagram());
                    }
                }
            }
            Action::ForwardDns {
                port,
                peer,
                payload_off,
            } => self.forward_dns(port, peer, &buf.data()[payload_off.min(buf.len())..]),
            Action::ProbeReply {
                vtep,
                secure: false,
            } => match self.underlay.send_probe(vtep, buf.datagram()) {
                Ok(()) => self.switch.counters.underlay_tx += 1,
                Err(_) => self.switch.counters.drop(DropReason::TxFailed),
            },
            Action::ProbeReply { vtep, secure: true } => {
                let _ = self.send_secure(0, vtep, buf);
            }
            Action::ProbeAnswer(answer) => {
                let e = ProbeEvent::Answer {
                    answer,
                    at: Instant::now(),
                };
                if let Ok(mut inbox) = self.probe_inbox.lock() {
                    inbox.push(e);
                }
            }
            Action::Drop(_) => {}
        }
    }

    /// Sends a query to the node's first resolver under an id of our own.
    fn forward_dns(&mut self, port: PortId, peer: crate::wire::udp_reply::UdpPeer, query: &[u8]) {
        let st = self.state.load();
        let Some(up) = st.dns_upstream.first().copied() else {
            self.switch.counters.drop(DropReason::NoRoute);
            return;
        };
        if query.len() < 12 {
            self.switch.counters.drop(DropReason::Malformed);
            return;
        }
        // unpredictable ids, so an off-path host cannot guess which to forge
        let mut id = random_u16();
        while self.dns_pending.contains(id) {
            id = random_u16();
        }
        let orig = u16::from_be_bytes([query[0], query[1]]);
        let now = self.now_ms();
        match self.dns_pending.insert(id, port, now, (peer, orig)) {
            Ok(false) => {}
            // another port's oldest query gave up its slot: lost like a busy one
            Ok(true) => self.switch.counters.drop(DropReason::DnsBusy),
            Err(_) => {
                self.switch.counters.drop(DropReason::DnsBusy);
                return;
            }
        }
        let q = &mut self.dns_scratch[..query.len()];
        q.copy_from_slice(query);
        q[0..2].copy_from_slice(&id.to_be_bytes());
        if self.dns_sock.send_to(q, up).is_err() {
            self.dns_pending.remove(id);
            self.switch.counters.drop(DropReason::TxFailed);
        }
    }

    /// Answers from the node's resolvers, relayed to whoever asked (only from a
    /// configured resolver, and only for a query we sent).
    fn drain_dns(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        for _ in 0..BUDGET {
            let (n, src) = match self.dns_sock.recv_from(&mut self.dns_scratch) {
                Ok(r) => r,
                Err(_) => return false,
            };
            if n < 12 || !st.dns_upstream.contains(&src) {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            }
            let id = u16::from_be_bytes([self.dns_scratch[0], self.dns_scratch[1]]);
            let Some((port, (peer, orig))) = self.dns_pending.remove(id) else {
                continue; // late or unknown: the asker has given up
            };
            self.dns_scratch[0..2].copy_from_slice(&orig.to_be_bytes());
            match crate::wire::udp_reply::write(buf.frame_slot(), &peer, &self.dns_scratch[..n]) {
                Some(len) => {
                    buf.set_frame_len(len);
                    self.switch.counters.dns_answers += 1;
                    self.write_port(port, buf.data());
                }
                None => self.switch.counters.drop(DropReason::TooBig),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_overflow_counts_what_was_dropped_since_the_last_read() {
        let m = |dropped| gso::RecvMeta {
            dropped,
            ..Default::default()
        };
        let (mut seen, mut c) = (0, Counters::default());
        let count = |seen: &mut u32, c: &mut Counters, ms: &[gso::RecvMeta]| {
            count_overflow(ms, seen, c);
            c.dropped(DropReason::SocketOverflow)
        };
        assert_eq!(count(&mut seen, &mut c, &[m(0), m(0)]), 0);
        assert_eq!(count(&mut seen, &mut c, &[m(3), m(5)]), 5);
        assert_eq!(count(&mut seen, &mut c, &[m(5)]), 5, "no new drop");
        assert_eq!(count(&mut seen, &mut c, &[m(4), m(9)]), 9);
        assert_eq!(count(&mut seen, &mut c, &[]), 9);
        seen = u32::MAX - 1;
        assert_eq!(count(&mut seen, &mut c, &[m(2)]), 13, "across the wrap");
    }
}

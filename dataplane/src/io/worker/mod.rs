//! The run-to-completion worker: one thread, one epoll set (mio) over the underlay
//! socket and every port fd. Each ready fd is read until empty (within a budget, for
//! fairness), each frame goes through the core and out again before the next is
//! read. The worker owns its switch (learned FDB, counters): no lock on the packet
//! path. The control plane talks to it through a command queue plus a waker, and
//! publishes state by swapping an `Arc` (arc-swap).
//!
//! - [`transmit`]: frames from ports switched and sent on (super-frames
//!   gathered to the underlay, the tunnel, other ports);
//! - [`receive`]: underlay and WireGuard batches switched, TCP segments merged
//!   back for one TAP write;
//! - [`dns`]: the embedded DNS's forwarding to the node's resolvers;
//! - here: the handle, the command queue, the loop, and the doctor's probes.

mod dns;
mod receive;
mod transmit;

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

use dns::DnsSocket;
use transmit::{flush_wg, send_wg, write_frame, GsoBatch};

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

struct Port {
    fd: OwnedFd,
    vnet: bool,
    read: bool,
    /// Frames read from and written to the device.
    traffic: Traffic,
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
}

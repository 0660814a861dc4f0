//! The run-to-completion worker: one thread, one epoll set (mio) over the underlay
//! socket and every port fd. Each ready fd is read until empty (within a budget, for
//! fairness), each frame goes through the worker's [`Datapath`] and out again before
//! the next is read. The datapath does all the protocol work, sans-IO; the worker
//! only waits for readiness, makes the syscalls and owns the buffers and fds. The
//! control plane talks to it through a command queue plus a waker, and publishes
//! state by swapping an `Arc` (arc-swap).
//!
//! - [`transmit`]: the datapath's [`Sink`]: port writes, underlay and tunnel
//!   sends (GSO and gathering sends), DNS queries; and reading the ports;
//! - [`receive`]: reading the underlay and WireGuard sockets in batches
//!   (`recvmmsg`, UDP GRO);
//! - [`dns`]: the socket queries to the node's resolvers go from;
//! - here: the handle, the command queue, the loop and its timers.

mod dns;
mod receive;
mod transmit;

use crate::buf::PacketBuf;
use crate::counters::{Counters, DropReason};
use crate::datapath::{Datapath, Event, PortRead, Sink};
use crate::io::gso;
use crate::io::probe::{ProbeEvent, ProbeInbox, ProbeSend};
use crate::io::underlay::Underlay;
use crate::offload::vnet::{self, VnetHdr};
use crate::switch::{PortId, SwitchState};
use crate::traffic::Traffic;
use crate::tunnel::TunnelConfig;
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
use transmit::WorkerIo;

const WAKER: Token = Token(0);
const UNDERLAY: Token = Token(1);
const WIREGUARD: Token = Token(2);
const DNS_FORWARD: Token = Token(3);
const FIRST_PORT_TOKEN: usize = 4;
/// Frames taken from one fd before looking at the others.
const BUDGET: usize = 64;
/// How often counters are copied out for the control plane (and the wall
/// clock told to the datapath).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

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
        limits: crate::io::limits::Limits,
        probes: Arc<Mutex<ProbeInbox>>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Mutex::new(Counters::default()));
        let (flow_log, flows) = match limits.flow_log {
            Some(cfg) => {
                let (log, reader) = crate::flowlog::FlowLog::new(cfg);
                (Some(log), Some(Mutex::new(reader)))
            }
            None => (None, None),
        };
        let now = Instant::now();
        let dp = Datapath::new(
            crate::datapath::Config {
                lane: index,
                start,
                sweeper: index == 0,
                fdb_learned: limits.fdb_learned,
                flood_rate: limits.flood_rate,
                dns_forwards: limits
                    .dns_forwards
                    .clamp(1, crate::io::limits::DNS_FORWARDS_LIMIT),
                flow_log,
            },
            conntrack,
            state.load_full(),
            now,
        );
        let mut w = Worker {
            poll,
            rx,
            io: WorkerIo {
                ports: FxHashMap::default(),
                underlay,
                wg: wireguard,
                wg_gso: true,
                dns_sock: DnsSocket::bind()?,
                lane: index,
            },
            dp,
            rx_bufs: vec![vec![0u8; 65_536 + 4096]; gso::BATCH],
            underlay_dropped: 0,
            wg_dropped: 0,
            dns_scratch: vec![0u8; 65_536],
            rx_meta: [gso::RecvMeta::default(); gso::BATCH],
            state: state.clone(),
            published: counters.clone(),
            tap: None,
            panic_at: None,
            probe_inbox: probes,
            clock_skew_ms: 0,
        };
        w.set_wall_clock(now);
        if let Some(wg) = &w.io.wg {
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
        w.io.dns_sock.sock.set_nonblocking(true)?;
        w.poll.registry().register(
            &mut SourceFd(&w.io.dns_sock.sock.as_raw_fd()),
            DNS_FORWARD,
            Interest::READABLE,
        )?;
        if let Err(e) = w.io.underlay.enable_gro() {
            tracing::warn!(error = %e, "UDP GRO unavailable: one datagram per read");
        }
        w.poll.registry().register(
            &mut SourceFd(&w.io.underlay.rx.as_raw_fd()),
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
    /// The protocol work: everything read goes through it.
    dp: Datapath,
    /// The fds and sockets its transmits go out on.
    io: WorkerIo,
    /// One `recvmmsg`: up to `gso::BATCH` messages, each a GRO run of up to 64 KiB.
    rx_bufs: Vec<Vec<u8>>,
    /// The underlay and WireGuard sockets' overflow counts when last read.
    underlay_dropped: u32,
    wg_dropped: u32,
    /// Where answers from the node's resolvers are read.
    dns_scratch: Vec<u8>,
    rx_meta: [gso::RecvMeta; gso::BATCH],
    state: Arc<ArcSwap<SwitchState>>,
    published: Arc<Mutex<Counters>>,
    /// The queue of a running trace (the datapath takes the copies).
    tap: Option<crate::switch::tap::Tap>,
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
        // fds that still had frames when their budget ran out
        let mut pending: Vec<Token> = Vec::new();
        let mut ready: Vec<Token> = Vec::with_capacity(256);
        let mut last_publish = Instant::now();
        loop {
            let now = Instant::now();
            let timeout = if pending.is_empty() {
                let publish = (last_publish + PUBLISH_EVERY).saturating_duration_since(now);
                let due = self
                    .dp
                    .poll_timeout()
                    .map_or(publish, |t| t.saturating_duration_since(now));
                publish.min(due)
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
                let table = self.dp.conntrack();
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
                    UNDERLAY => self.drain(receive::Rx::Underlay, &mut buf),
                    WIREGUARD => self.drain(receive::Rx::WireGuard, &mut buf),
                    DNS_FORWARD => self.drain_dns(),
                    t => self.drain_port(PortId((t.0 - FIRST_PORT_TOKEN) as u32), &mut buf),
                };
                self.hand_on();
                if more {
                    pending.push(t);
                }
            }
            let now = Instant::now();
            if self.dp.poll_timeout().is_some_and(|t| now >= t) {
                self.dp.handle_timeout(now, &mut self.io);
                self.hand_on();
            }
            if now.saturating_duration_since(last_publish) >= PUBLISH_EVERY {
                self.set_wall_clock(now);
                self.publish_counters();
                last_publish = now;
            }
        }
    }

    /// Hands on what the datapath left for others: probe answers to the
    /// doctor's inbox, a trace's copies to its queue.
    fn hand_on(&mut self) {
        while let Some(e) = self.dp.poll_event() {
            match e {
                Event::ProbeAnswer { answer, at } => {
                    if let Ok(mut inbox) = self.probe_inbox.lock() {
                        inbox.push(ProbeEvent::Answer { answer, at });
                    }
                }
            }
        }
        while let Some(f) = self.dp.poll_traced() {
            if !self.tap.as_ref().is_some_and(|t| t.send(f)) {
                self.dp.switch_mut().counters.trace_lost += 1;
            }
        }
    }

    fn publish_counters(&self) {
        if let Ok(mut c) = self.published.lock() {
            self.dp.copy_counters(&mut c);
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
                            self.dp.add_port(id, vnet);
                            self.io.ports.insert(
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
                    self.dp.remove_port(id);
                    if let Some(p) = self.io.ports.remove(&id).filter(|p| p.read) {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut SourceFd(&p.fd.as_raw_fd()));
                    }
                }
                Command::StateChanged => {
                    let st = self.state.load_full();
                    self.dp.set_state(st, Instant::now(), &mut self.io);
                }
                Command::Tunnels(cfg) => self.dp.set_tunnels(*cfg, Instant::now(), &mut self.io),
                Command::Trace(t) => {
                    self.dp.set_trace(t.as_ref().map(|t| t.tracer()));
                    self.tap = t;
                }
                Command::PanicAt(t) => self.panic_at = Some(t),
                Command::Probe(p) => self.send_probe(p),
                Command::ClockSkew(ms) => {
                    self.clock_skew_ms = ms;
                    self.set_wall_clock(Instant::now());
                }
                Command::Stop => return false,
            }
        }
        true
    }

    /// Tells the datapath the wall clock (read here: the datapath reads no
    /// clock), so a stepped clock shows in probe answers.
    fn set_wall_clock(&mut self, now: Instant) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_add_signed(self.clock_skew_ms);
        self.dp.set_wall_clock(now, unix_ms);
    }

    /// Sends a doctor's probe; what stops it leaving goes to the inbox at once.
    fn send_probe(&mut self, p: ProbeSend) {
        if let Err(error) = self
            .dp
            .send_probe(p.id, p.to, p.len, p.secure, &mut self.io)
        {
            let e = ProbeEvent::SendFailed { id: p.id, error };
            if let Ok(mut inbox) = self.probe_inbox.lock() {
                inbox.push(e);
            }
        }
    }
}

//! The run-to-completion worker: one thread, one epoll set (mio) over the underlay
//! socket and every port fd. Each ready fd is read until empty (within a budget, for
//! fairness), each frame goes through the core and out again before the next is
//! read. The worker owns its switch (learned FDB, counters): no lock on the packet
//! path. The control plane talks to it through a command queue plus a waker, and
//! publishes state by swapping an `Arc` (arc-swap).

use crate::buf::PacketBuf;
use crate::counters::{Counters, DropReason};
use crate::io::underlay::Underlay;
use crate::switch::{Action, PortId, Switch, SwitchState};
use crate::tunnel::{Received, TunnelConfig, Tunnels};
use arc_swap::ArcSwap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAKER: Token = Token(0);
const UNDERLAY: Token = Token(1);
const WIREGUARD: Token = Token(2);
const FIRST_PORT_TOKEN: usize = 3;
/// WireGuard's timers want a tick about this often.
const TUNNEL_TICK: Duration = Duration::from_millis(250);
/// Frames taken from one fd before looking at the others.
const BUDGET: usize = 64;
/// How often counters are copied out for the control plane.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

enum Command {
    AddPort(PortId, OwnedFd),
    RemovePort(PortId),
    StateChanged,
    Tunnels(Box<TunnelConfig>),
    Stop,
}

/// The control plane's handle on a running worker.
pub struct WorkerHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    state: Arc<ArcSwap<SwitchState>>,
    counters: Arc<Mutex<Counters>>,
    join: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// `wireguard`: the socket encrypted networks use, if this node has a key.
    pub fn spawn(
        underlay: Underlay,
        wireguard: Option<std::net::UdpSocket>,
        max_learned: usize,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(ArcSwap::from_pointee(SwitchState::default()));
        let counters = Arc::new(Mutex::new(Counters::default()));
        let mut w = Worker {
            poll,
            rx,
            underlay,
            ports: FxHashMap::default(),
            state: state.clone(),
            switch: Switch::new(max_learned),
            published: counters.clone(),
            start: Instant::now(),
            wg: wireguard,
            tunnels: Tunnels::new(),
            wg_in: vec![0u8; 65_536],
        };
        if let Some(wg) = &w.wg {
            wg.set_nonblocking(true)?;
            w.poll.registry().register(
                &mut SourceFd(&wg.as_raw_fd()),
                WIREGUARD,
                Interest::READABLE,
            )?;
        }
        w.poll.registry().register(
            &mut SourceFd(&w.underlay.rx.as_raw_fd()),
            UNDERLAY,
            Interest::READABLE,
        )?;
        let join = std::thread::Builder::new()
            .name("vxmesh-worker".into())
            .spawn(move || w.run())?;
        Ok(Self {
            tx,
            waker,
            state,
            counters,
            join: Some(join),
        })
    }

    fn send(&self, c: Command) {
        // A send fails only when the worker has exited; nothing is left to tell then.
        let _ = self.tx.send(c);
        let _ = self.waker.wake();
    }

    pub fn add_port(&self, id: PortId, fd: OwnedFd) {
        self.send(Command::AddPort(id, fd));
    }

    pub fn remove_port(&self, id: PortId) {
        self.send(Command::RemovePort(id));
    }

    /// Replaces the tunnels' peers and keys (the keys stay inside the worker).
    pub fn set_tunnels(&self, cfg: TunnelConfig) {
        self.send(Command::Tunnels(Box::new(cfg)));
    }

    /// Makes `st` the state every following frame is switched by.
    pub fn publish(&self, st: SwitchState) {
        self.state.store(Arc::new(st));
        self.send(Command::StateChanged);
    }

    pub fn state(&self) -> Arc<SwitchState> {
        self.state.load_full()
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
    ports: FxHashMap<PortId, OwnedFd>,
    state: Arc<ArcSwap<SwitchState>>,
    switch: Switch,
    published: Arc<Mutex<Counters>>,
    start: Instant,
    wg: Option<std::net::UdpSocket>,
    tunnels: Tunnels,
    /// Encrypted datagrams are read here, then decrypted into a PacketBuf.
    wg_in: Vec<u8>,
}

/// Sends one WireGuard datagram; a failed send counts, it never stops the worker.
fn send_wg(wg: &Option<std::net::UdpSocket>, c: &mut Counters, d: &[u8], to: std::net::SocketAddr) {
    match wg.as_ref().map(|s| s.send_to(d, to)) {
        Some(Ok(_)) => c.tunnel_tx += 1,
        _ => c.drop(DropReason::TxFailed),
    }
}

fn token_of(p: PortId) -> Token {
    Token(p.0 as usize + FIRST_PORT_TOKEN)
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = PacketBuf::new();
        // fds that still had frames when their budget ran out
        let mut pending: Vec<Token> = Vec::new();
        let mut last_publish = Instant::now();
        let mut last_tick = Instant::now();
        let mut last_limiter_reset = Instant::now();
        loop {
            let timeout = if pending.is_empty() {
                PUBLISH_EVERY
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "worker poll failed; stopping");
                    return;
                }
            }
            let mut ready: Vec<Token> = std::mem::take(&mut pending);
            ready.extend(events.iter().map(|e| e.token()));
            ready.sort_unstable_by_key(|t| t.0);
            ready.dedup();
            for t in ready {
                let more = match t {
                    WAKER => {
                        if !self.commands() {
                            self.publish_counters();
                            return;
                        }
                        false
                    }
                    UNDERLAY => self.drain_underlay(&mut buf),
                    WIREGUARD => self.drain_wireguard(&mut buf),
                    t => self.drain_port(PortId((t.0 - FIRST_PORT_TOKEN) as u32), &mut buf),
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
                last_limiter_reset = Instant::now();
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
        }
    }

    /// Applies queued commands; false when told to stop.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Command::AddPort(id, fd) => {
                    let r = self.poll.registry().register(
                        &mut SourceFd(&fd.as_raw_fd()),
                        token_of(id),
                        Interest::READABLE,
                    );
                    match r {
                        Ok(()) => {
                            self.ports.insert(id, fd);
                        }
                        Err(e) => tracing::error!(port = id.0, error = %e, "cannot poll port"),
                    }
                }
                Command::RemovePort(id) => {
                    if let Some(fd) = self.ports.remove(&id) {
                        let _ = self
                            .poll
                            .registry()
                            .deregister(&mut SourceFd(&fd.as_raw_fd()));
                    }
                }
                Command::StateChanged => {
                    let st = self.state.load();
                    self.switch.prune_learned(&st);
                }
                Command::Tunnels(cfg) => {
                    let (wg, tunnels, c) = (&self.wg, &mut self.tunnels, &mut self.switch.counters);
                    tunnels.configure(*cfg, &mut |d, to| send_wg(wg, c, d, to));
                    tracing::debug!(slots = tunnels.slots(), "tunnels configured");
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn drain_underlay(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        for _ in 0..BUDGET {
            let (n, src) = match self.underlay.rx.recv_from(buf.datagram_slot()) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::debug!(error = %e, "underlay receive failed");
                    return false;
                }
            };
            buf.set_datagram_len(n);
            let now = self.now_ms();
            let a = self.switch.from_underlay(&st, src.ip(), buf, now, false);
            self.execute(a, buf);
        }
        true
    }

    fn drain_wireguard(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        for _ in 0..BUDGET {
            let Some(wg) = &self.wg else { return false };
            let (n, src) = match wg.recv_from(&mut self.wg_in) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return false,
            };
            self.switch.counters.tunnel_rx += 1;
            let (wg, tunnels, c) = (&self.wg, &mut self.tunnels, &mut self.switch.counters);
            let r = tunnels.receive(src, &self.wg_in[..n], buf.tunnel_slot(), &mut |d, to| {
                send_wg(wg, c, d, to)
            });
            match r {
                Received::Vxlan { vtep, offset, len } => {
                    buf.set_tunnel_received(offset, len);
                    let now = self.now_ms();
                    let a = self.switch.from_underlay(&st, vtep, buf, now, true);
                    self.execute(a, buf);
                }
                Received::Control => {}
                Received::Drop(r) => self.switch.counters.drop(r),
            }
        }
        true
    }

    /// Encrypts the datagram in `buf` for `vtep` (a tunnel address) and sends it.
    fn send_secure(&mut self, hash: u32, vtep: std::net::IpAddr, buf: &mut PacketBuf) {
        let (std::net::IpAddr::V4(dst), local) = (vtep, self.tunnels.local_vtep()) else {
            self.switch.counters.drop(DropReason::TunnelNoPeer);
            return;
        };
        let Some(packet) = buf.tunnel_packet(local, dst, hash) else {
            self.switch.counters.drop(DropReason::TooBig);
            return;
        };
        let (wg, tunnels, c) = (&self.wg, &mut self.tunnels, &mut self.switch.counters);
        if let Err(r) = tunnels.send_to(dst, packet, &mut |d, to| send_wg(wg, c, d, to)) {
            c.drop(r);
        }
    }

    fn drain_port(&mut self, port: PortId, buf: &mut PacketBuf) -> bool {
        let Some(fd) = self.ports.get(&port).map(|f| f.as_raw_fd()) else {
            return false;
        };
        let st = self.state.load();
        for _ in 0..BUDGET {
            let slot = buf.frame_slot();
            // SAFETY: reading into a live, writable slice of the length passed.
            let n = unsafe { libc::read(fd, slot.as_mut_ptr().cast(), slot.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    tracing::debug!(port = port.0, error = %e, "port read failed");
                }
                return false;
            }
            if n == 0 {
                return false;
            }
            buf.set_frame_len(n as usize);
            let now = self.now_ms();
            let a = self.switch.from_port(&st, port, buf, now);
            self.execute(a, buf);
        }
        true
    }

    fn write_port(&mut self, port: PortId, frame: &[u8]) {
        let Some(fd) = self.ports.get(&port) else {
            self.switch.counters.drop(DropReason::TxFailed);
            return;
        };
        // SAFETY: writing from a live slice of the length passed.
        let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            self.switch.counters.drop(DropReason::TxFailed);
        } else {
            self.switch.counters.port_tx += 1;
        }
    }

    fn send_vtep(&mut self, hash: u32, vtep: std::net::IpAddr, datagram: &[u8]) {
        match self.underlay.send(hash, vtep, datagram) {
            Ok(()) => self.switch.counters.underlay_tx += 1,
            Err(_) => self.switch.counters.drop(DropReason::TxFailed),
        }
    }

    fn execute(&mut self, a: Action<'_>, buf: &mut PacketBuf) {
        match a {
            Action::Deliver(p) | Action::Reply(p) => self.write_port(p, buf.data()),
            Action::Encap {
                vtep,
                flow_hash,
                secure: false,
            } => self.send_vtep(flow_hash, vtep, buf.datagram()),
            Action::Encap {
                vtep,
                flow_hash,
                secure: true,
            } => self.send_secure(flow_hash, vtep, buf),
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
                for v in vteps {
                    if secure {
                        self.send_secure(flow_hash, *v, buf);
                    } else {
                        self.send_vtep(flow_hash, *v, buf.datagram());
                    }
                }
            }
            Action::Drop(_) => {}
        }
    }
}

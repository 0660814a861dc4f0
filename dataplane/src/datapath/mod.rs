//! One worker's whole per-packet protocol work, sans-IO: a [`Datapath`] takes
//! frames read from ports, VXLAN and WireGuard datagrams from the underlay and
//! answers from the node's resolvers, with the time they came at, and turns
//! them into transmits handed to its caller's [`Sink`]. It makes no syscall
//! and reads no clock, so the worker (`io::worker`), the unit tests, the
//! benches and the fuzzer all drive this very code.
//!
//! Shaped like quinn-proto's `Connection`: events in (`handle_port_rx`,
//! `handle_underlay_rx`, `handle_tunnel_rx`, `handle_dns_rx`), transmits out
//! (through the sink, into the caller's sockets and fds, from the datapath's
//! own buffers), timers driven by the caller (`poll_timeout` says when,
//! `handle_timeout(now)` does what is due), and what the caller must hand on
//! polled (`poll_event`, `poll_traced`). Batching is the caller's: it calls
//! [`Datapath::flush`] after a batch of reads, which sends the GSO runs and
//! the coalesced super-frame the batch left.
//!
//! Transmits go to a sink rather than being polled out (quinn's
//! `poll_transmit`) because a TCP super-frame leaves as gathering sends whose
//! parts borrow both the frame where the read put it and headers written
//! beside it: handed over at once, nothing is copied into a transmit queue
//! and nothing is allocated per packet. The sink is a type parameter, so the
//! worker's syscalls are called directly, with no dynamic dispatch.
//! (boringtun's `Tunn` is the one piece that still reads a clock: its timers
//! have no call that takes one.)
//!
//! It owns: the [`Switch`] (learned FDB, flow cache, balancer, counters, flow
//! log) and the state it switches by; the offload handling (virtio-net
//! headers, checksum completion, UDP segmentation, the gather-or-cut decision
//! for TCP super-frames, receive coalescing); the WireGuard [`Tunnels`]; the
//! DNS relay's queries in flight; the doctor's probes; the timers of all.
//!
//! - [`port`]: frames from ports, and carrying out the switch's actions;
//! - [`receive`]: the underlay and the tunnel, and coalescing for the TAPs;
//! - [`dns`] and [`dns_pending`]: the relay to the node's resolvers;
//! - [`sink`]: the transmit interface and the GSO batches;
//! - [`timers`]: what runs on time rather than on packets.
//!
//! The connection table is shared by the workers and the control plane (see
//! [`crate::switch`]): its handle is given at construction and lent to the
//! switch, which locks it only on a flow-cache miss.

#![forbid(unsafe_code)]

pub mod dns_pending;

mod dns;
mod port;
mod receive;
mod sink;
mod timers;

#[cfg(test)]
mod tests;

pub use port::PortRead;
pub use sink::Sink;

use crate::buf::PacketBuf;
use crate::conntrack::Conntrack;
use crate::counters::Counters;
use crate::flowlog::FlowLog;
use crate::offload::coalesce::Coalescer;
use crate::offload::gather::Gather;
use crate::switch::tap::Tracer;
use crate::switch::{PortId, ProbeAnswer, Switch, SwitchState};
use crate::tunnel::{TunnelConfig, Tunnels};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dns::DnsRelay;
use sink::GsoBatch;
use timers::Timers;

/// How a datapath is set up (the agent's limits, this worker's place).
pub struct Config {
    /// This worker's index: its lane in the traffic counters.
    pub lane: usize,
    /// The clock's zero, shared by all workers so conntrack times agree.
    pub start: Instant,
    /// This worker sweeps the shared connection table (one worker does).
    pub sweeper: bool,
    /// MACs learned from static peers, at most.
    pub fdb_learned: usize,
    /// Each port's flood budget (`None`: unlimited).
    pub flood_rate: Option<crate::lb::limit::RateLimit>,
    /// DNS queries in flight to the node's resolvers, at most.
    pub dns_forwards: usize,
    /// This worker's flow log (`None`: off).
    pub flow_log: Option<FlowLog>,
}

/// What the caller must hand on (polled with [`Datapath::poll_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An answer to one of this node's probes arrived at `at`.
    ProbeAnswer { answer: ProbeAnswer, at: Instant },
}

/// Events waiting at most; a batch makes a few (probe answers are rate limited).
const EVENTS_MAX: usize = 1024;

/// One worker's datapath. See the module's documentation.
pub struct Datapath {
    state: Arc<SwitchState>,
    /// Where a super-frame is cut into segments when it cannot be gathered.
    seg: PacketBuf,
    /// Where the datapath writes frames of its own: resets, DNS answers, probes.
    scratch: PacketBuf,
    start: Instant,
    timers: Timers,
    core: Core,
}

/// Everything carrying out an action touches, apart from the state and the
/// buffers (so those can be borrowed beside it).
struct Core {
    switch: Switch,
    tunnels: Tunnels,
    /// The ports written to, and whether each takes virtio-net headers (then
    /// frames for it from other nodes are coalesced).
    ports: FxHashMap<PortId, bool>,
    /// Equal-sized VXLAN datagrams to one VTEP, waiting for one GSO send.
    batch: GsoBatch,
    /// The same for encrypted datagrams to one WireGuard peer.
    wg_batch: GsoBatch,
    /// Where a super-frame's segment headers are written for a gathering send.
    gather: Gather,
    /// Segments from the underlay for one port, waiting to be one write.
    coalescer: Coalescer,
    co_port: Option<PortId>,
    dns: DnsRelay,
    events: VecDeque<Event>,
    start: Instant,
}

/// Milliseconds since `start`: the switch's and the connection table's clock.
#[inline(always)]
fn ms_since(start: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(start).as_millis() as u64
}

impl Datapath {
    /// A datapath switching by `state`, tracking VIP connections in
    /// `conntrack` (shared with the other workers), its clock at `now`.
    pub fn new(
        cfg: Config,
        conntrack: Arc<Mutex<Conntrack>>,
        state: Arc<SwitchState>,
        now: Instant,
    ) -> Self {
        let mut switch = Switch::with_conntrack(cfg.fdb_learned, conntrack);
        switch.set_lane(cfg.lane);
        switch.set_flood_rate(cfg.flood_rate);
        switch.set_flow_log(cfg.flow_log);
        let _ = switch.on_state(&state);
        Self {
            state,
            seg: PacketBuf::new(),
            scratch: PacketBuf::new(),
            start: cfg.start,
            timers: Timers::new(now, cfg.sweeper),
            core: Core {
                switch,
                tunnels: Tunnels::new(),
                ports: FxHashMap::default(),
                batch: GsoBatch::default(),
                wg_batch: GsoBatch::default(),
                gather: Gather::default(),
                coalescer: Coalescer::new(),
                co_port: None,
                dns: DnsRelay::new(cfg.dns_forwards),
                events: VecDeque::with_capacity(16),
                start: cfg.start,
            },
        }
    }

    /// Milliseconds since the clock's zero at `now`.
    pub fn now_ms(&self, now: Instant) -> u64 {
        ms_since(self.start, now)
    }

    /// The switch (tests and benches look at its tables).
    pub fn switch(&self) -> &Switch {
        &self.core.switch
    }

    pub fn switch_mut(&mut self) -> &mut Switch {
        &mut self.core.switch
    }

    pub fn counters(&self) -> &Counters {
        &self.core.switch.counters
    }

    /// Copies the counters out for the control plane, with the tunnels'.
    pub fn copy_counters(&self, into: &mut Counters) {
        into.clone_from(&self.core.switch.counters);
        into.tunnel_handshakes = self.core.tunnels.handshakes();
        into.tunnel_rekeys = self.core.tunnels.rekeys();
    }

    /// The shared connection table's handle.
    pub fn conntrack(&self) -> Arc<Mutex<Conntrack>> {
        self.core.switch.conntrack()
    }

    pub fn tunnels(&self) -> &Tunnels {
        &self.core.tunnels
    }

    /// A port frames may be written to; `vnet`: it takes virtio-net headers.
    pub fn add_port(&mut self, port: PortId, vnet: bool) {
        self.core.ports.insert(port, vnet);
    }

    pub fn remove_port(&mut self, port: PortId) {
        if self.core.co_port == Some(port) {
            self.core.co_port = None;
            let _ = self.core.coalescer.take();
        }
        self.core.ports.remove(&port);
    }

    /// Switches by `state` from now on: what was learned of peers that left
    /// goes, and connections whose backend left are reset at both ends.
    pub fn set_state(&mut self, state: Arc<SwitchState>, now: Instant, io: &mut impl Sink) {
        self.state = state;
        let gone = self.core.switch.on_state(&self.state);
        self.send_resets(&gone, now, io);
    }

    /// Replaces the tunnels' peers and keys.
    pub fn set_tunnels(&mut self, cfg: TunnelConfig, now: Instant, io: &mut impl Sink) {
        let Core {
            tunnels, switch, ..
        } = &mut self.core;
        tunnels.configure(cfg, now, &mut |d, to| {
            receive::send_tunnel_one(io, &mut switch.counters, d, to)
        });
        tracing::debug!(slots = tunnels.slots(), "tunnels configured");
    }

    /// Starts (`Some`) or stops a trace.
    pub fn set_trace(&mut self, tracer: Option<Tracer>) {
        self.core.switch.tracer = tracer;
    }

    /// Tells the datapath the wall clock (Unix ms) at `now`, for probe
    /// answers (the caller tells it again now and then: a stepped clock shows).
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        let at_zero = unix_ms.saturating_sub(self.now_ms(now));
        self.core.switch.set_wall_clock(at_zero);
    }

    /// Sends what the last calls left batched: the coalesced super-frame,
    /// the VXLAN and WireGuard GSO runs. The caller calls it after each batch
    /// of reads (and transmits leave in the order they were made).
    pub fn flush(&mut self, io: &mut impl Sink) {
        self.core.flush_coalescer(io);
        self.core.flush_batch(io);
        self.core.flush_wg(io);
    }

    /// The next thing the caller must hand on, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// The next copy a running trace took, if any.
    pub fn poll_traced(&mut self) -> Option<Vec<u8>> {
        self.core.switch.tracer.as_mut()?.take()
    }

    /// Sends a doctor's probe of `len` bytes to `to`: plain, or through the
    /// tunnel when `secure` (then `to` is a tunnel address). `Err`: why it
    /// could not leave.
    pub fn send_probe(
        &mut self,
        id: u64,
        to: std::net::IpAddr,
        len: usize,
        secure: bool,
        io: &mut impl Sink,
    ) -> Result<(), String> {
        let buf = &mut self.scratch;
        let len = len.clamp(crate::wire::probe::MIN_LEN, 65_000);
        if crate::wire::probe::emit_request(&mut buf.datagram_slot()[..len], id).is_none() {
            return Ok(());
        }
        buf.set_datagram_len(len);
        if secure {
            buf.pull_front(crate::wire::vxlan::VXLAN_HEADER_LEN);
            let r = self.core.send_secure(0, to, buf, io);
            self.core.flush_wg(io);
            r.map_err(|r| format!("the tunnel refused it ({})", r.as_str()))
        } else {
            io.send_probe(to, buf.data()).map_err(|e| e.to_string())
        }
    }

    /// Resets both ends of connections whose entries went (expired, or their
    /// backend left), so neither waits on a connection nobody carries.
    fn send_resets(&mut self, gone: &[crate::conntrack::Entry], now: Instant, io: &mut impl Sink) {
        if gone.is_empty() {
            return;
        }
        let st = &*self.state;
        let buf = &mut self.scratch;
        for e in gone {
            for to_client in [true, false] {
                let a = self.core.switch.reset(st, e, to_client, buf);
                self.core.execute(st, a, buf, now, io);
            }
        }
        self.core.flush_batch(io);
        tracing::debug!(connections = gone.len(), "reset connections that went away");
    }
}

impl Core {
    fn push_event(&mut self, e: Event) {
        if self.events.len() < EVENTS_MAX {
            self.events.push_back(e);
        }
    }
}

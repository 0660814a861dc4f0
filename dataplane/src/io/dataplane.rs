//! The dataplane as the control plane sees it: one run-to-completion worker per
//! core, all switching by one shared state.
//!
//! - Plain networks: a TAP has one queue per worker (`IFF_MULTI_QUEUE`), and each
//!   worker has its own underlay socket on 4789 (`SO_REUSEPORT`). The kernel
//!   hashes a flow to one queue and one socket, so a flow stays on one worker and
//!   nothing is shared on the packet path but the read-only state.
//! - Encrypted networks: their TAPs have one queue, read by worker 0, which alone
//!   holds the WireGuard socket and every peer's `Tunn`. Per-peer ownership,
//!   without a lock; encryption does not spread over cores yet.
//! - Veths (AF_PACKET): read by worker 0; the others hold a duplicate fd to write.

pub use super::limits::{
    Limits, CONNTRACK_MAX, DNS_FORWARDS_LIMIT, DNS_FORWARDS_MAX, FDB_LEARNED_MAX, FLOOD_RATE,
};
use crate::counters::Counters;
use crate::io::underlay::Underlay;
use crate::io::worker::WorkerHandle;
use crate::switch::{PortId, SwitchState};
use crate::traffic::{Traffic, TrafficTotals};
use crate::tunnel::TunnelConfig;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::io;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::Mutex;

pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    state: Arc<ArcSwap<SwitchState>>,
    source_ports: Vec<u16>,
    conntrack: Arc<std::sync::Mutex<crate::conntrack::Conntrack>>,
    limits: Limits,
    /// Each port's and each network's traffic counters, made when the port is
    /// added or the network first published, kept until it goes (written by
    /// the control plane's tasks, read by every scrape: sharded, no one lock).
    port_traffic: DashMap<PortId, Traffic, rustc_hash::FxBuildHasher>,
    network_traffic: DashMap<u32, Traffic, rustc_hash::FxBuildHasher>,
    /// The workers' clock's zero (connection times are milliseconds since).
    start: std::time::Instant,
    /// Answers to the doctor's probes, from every worker.
    probes: Arc<Mutex<crate::io::probe::ProbeInbox>>,
    /// The sockets' buffers as the kernel granted them at start.
    buffers: Vec<SocketBuffers>,
}

/// One underlay socket's buffers, as the kernel granted them (bytes, its
/// bookkeeping share included: twice what was asked, when all was).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SocketBuffers {
    /// `vxlan` (a worker's receive socket) or `wireguard`.
    pub socket: &'static str,
    pub worker: usize,
    pub rcvbuf: usize,
    pub sndbuf: usize,
}

/// What the connection table holds and has done, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    pub entries: usize,
    /// The most it may hold (`--conntrack-max`).
    pub max: usize,
    /// Connections ever set up.
    pub created: u64,
    /// Connections pushed out by new ones while the table was full.
    pub evicted: u64,
    /// Times a worker waited for the table's lock.
    pub lock_waits: u64,
}

impl Dataplane {
    /// Starts `workers` workers on the underlay address `local`. Fails with
    /// `AddrInUse` if anything else already listens on the VXLAN port (the
    /// workers' `SO_REUSEPORT` sockets would otherwise share it silently).
    pub fn start(
        workers: usize,
        local: IpAddr,
        vxlan_port: u16,
        source_ports: usize,
        wireguard: Option<UdpSocket>,
        limits: Limits,
    ) -> io::Result<Self> {
        // the same kind of socket the workers bind (IPv6-only over IPv6), so
        // the probe fails exactly when theirs would share the port
        drop(crate::io::underlay::bind_udp(
            crate::io::underlay::any_of(local, vxlan_port),
            false,
        )?);
        let state = Arc::new(ArcSwap::from_pointee(SwitchState::default()));
        let mut table = crate::conntrack::Conntrack::new(limits.conntrack);
        table.set_flow_log(limits.flow_log.is_some());
        if let Some(ms) = limits.conntrack_timeout_cap_ms {
            table.set_timeout_cap(ms);
        }
        let conntrack = Arc::new(std::sync::Mutex::new(table));
        let start = std::time::Instant::now();
        let mut wireguard = wireguard;
        let mut handles = Vec::new();
        let mut ports = Vec::new();
        let probes = Arc::new(Mutex::new(crate::io::probe::ProbeInbox::default()));
        let mut buffers = Vec::new();
        if let Some((rcvbuf, sndbuf)) = wireguard
            .as_ref()
            .and_then(|w| crate::io::underlay::socket_buffers(w).ok())
        {
            buffers.push(SocketBuffers {
                socket: "wireguard",
                worker: 0,
                rcvbuf,
                sndbuf,
            });
        }
        for i in 0..workers.max(1) {
            let underlay = Underlay::bind(local, vxlan_port, source_ports)?;
            ports.extend(underlay.source_ports());
            if let Ok((rcvbuf, sndbuf)) = underlay.buffers() {
                buffers.push(SocketBuffers {
                    socket: "vxlan",
                    worker: i,
                    rcvbuf,
                    sndbuf,
                });
            }
            handles.push(WorkerHandle::spawn(
                i,
                state.clone(),
                conntrack.clone(),
                start,
                underlay,
                wireguard.take(),
                limits,
                probes.clone(),
            )?);
        }
        Ok(Self {
            conntrack,
            limits,
            workers: handles,
            state,
            source_ports: ports,
            port_traffic: DashMap::default(),
            network_traffic: DashMap::default(),
            start,
            probes,
            buffers,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The first worker that stopped without being told to, and why (its
    /// panic's message, or the error that stopped it). The dataplane forwards
    /// no more on what that worker read, so its owner should stop (and be
    /// restarted) rather than go on.
    pub fn stopped_worker(&self) -> Option<(usize, String)> {
        self.workers
            .iter()
            .enumerate()
            .find_map(|(i, w)| Some((i, w.stopped()?.to_string())))
    }

    /// Test-only fault injection (`VXMESH_TEST_FAULT=worker-panic-after=MS`):
    /// worker `index` panics, with the connection table locked, after `after`.
    #[doc(hidden)]
    pub fn inject_worker_panic(&self, index: usize, after: std::time::Duration) {
        if let Some(w) = self.workers.get(index) {
            w.inject_panic(after);
        }
    }

    /// Sends a doctor's probe (from worker 0, which also holds the tunnels);
    /// what becomes of it, [`Dataplane::take_probe_events`] tells.
    pub fn probe(&self, p: crate::io::probe::ProbeSend) {
        self.workers[0].probe(p);
    }

    /// The probe events whose probe `mine` says is its (see
    /// [`crate::io::probe::ProbeInbox::take`]).
    pub fn take_probe_events(
        &self,
        mine: impl Fn(u64) -> bool,
    ) -> Vec<crate::io::probe::ProbeEvent> {
        self.probes
            .lock()
            .map(|mut p| p.take(mine))
            .unwrap_or_default()
    }

    /// Test-only (`--test-heartbeat-skew-ms`): probe answers carry the wall
    /// clock `ms` off, as a node with a wrong clock would.
    #[doc(hidden)]
    pub fn set_test_clock_skew(&self, ms: i64) {
        for w in &self.workers {
            w.set_clock_skew(ms);
        }
    }

    /// The underlay sockets' buffers as the kernel granted them at start.
    pub fn socket_buffers(&self) -> &[SocketBuffers] {
        &self.buffers
    }

    pub fn source_ports(&self) -> &[u16] {
        &self.source_ports
    }

    /// `fds`: one per worker (a multi-queue TAP), or a single one that worker 0
    /// reads and the others write through a duplicate.
    pub fn add_port(&self, id: PortId, fds: Vec<OwnedFd>, vnet: bool) -> io::Result<()> {
        let traffic = Traffic::new(self.workers.len());
        self.port_traffic.insert(id, traffic.clone());
        if fds.len() == self.workers.len() {
            for (w, fd) in self.workers.iter().zip(fds) {
                w.add_port(id, fd, vnet, true, traffic.clone());
            }
            return Ok(());
        }
        let Some(fd) = fds.into_iter().next() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a port needs an fd",
            ));
        };
        for w in &self.workers[1..] {
            w.add_port(id, fd.try_clone()?, vnet, false, traffic.clone());
        }
        self.workers[0].add_port(id, fd, vnet, true, traffic);
        Ok(())
    }

    pub fn remove_port(&self, id: PortId) {
        self.port_traffic.remove(&id);
        for w in &self.workers {
            w.remove_port(id);
        }
    }

    /// Makes `st` the state every following frame is switched by, on every worker.
    /// Each network keeps its traffic counters from one state to the next.
    pub fn publish(&self, mut st: SwitchState) {
        let t = &self.network_traffic;
        t.retain(|vni, _| st.networks.contains_key(vni));
        for (vni, net) in st.networks.iter_mut() {
            net.traffic = t
                .entry(*vni)
                .or_insert_with(|| Traffic::new(self.workers.len()))
                .clone();
        }
        self.state.store(Arc::new(st));
        for w in &self.workers {
            w.state_changed();
        }
    }

    pub fn state(&self) -> Arc<SwitchState> {
        self.state.load_full()
    }

    /// The WireGuard peers and keys, for the worker that owns the tunnels.
    pub fn set_tunnels(&self, cfg: TunnelConfig) {
        self.workers[0].set_tunnels(cfg);
    }

    /// Starts a trace on every worker (each gets its own end of the queue), or
    /// stops it with `None`.
    pub fn trace(&self, tap: Option<crate::switch::tap::Tap>) {
        for w in &self.workers {
            w.trace(tap.clone());
        }
    }

    /// Each worker's counters, in worker order.
    pub fn worker_counters(&self) -> Vec<Counters> {
        self.workers.iter().map(|w| w.counters()).collect()
    }

    /// A copy of the tracked connections (for `conntrack ls` and `lb ls`, and
    /// the snapshot at exit). Also from a table a worker panicked holding (the
    /// agent then exits, and saves them first): each entry is whole, and
    /// [`crate::conntrack::Conntrack::restore`] checks each again.
    pub fn connections(&self) -> Vec<crate::conntrack::Entry> {
        self.conntrack
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .collect()
    }

    /// The backends passive health has taken out for now, as (zone, fwmark,
    /// address).
    pub fn ejected(&self) -> Vec<(u32, u32, IpAddr)> {
        let now = self.start.elapsed().as_millis() as u64;
        let c = self
            .conntrack
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.passive.out(now).collect()
    }

    /// Puts back connections an earlier run saved (see
    /// [`crate::conntrack::Conntrack::restore`]); returns how many.
    pub fn restore_connections(&self, saved: &[crate::conntrack::Entry]) -> usize {
        let now = self.start.elapsed().as_millis() as u64;
        let Ok(mut c) = self.conntrack.lock() else {
            return 0;
        };
        saved.iter().filter(|e| c.restore(e, now).is_some()).count()
    }

    /// Each port's frames in (read from it) and out (written to it), by port.
    pub fn port_traffic(&self) -> Vec<(PortId, TrafficTotals)> {
        self.port_traffic
            .iter()
            .map(|e| (*e.key(), e.value().totals()))
            .collect()
    }

    /// Each network's frames from (in) and to (out) other nodes, by VNI.
    pub fn network_traffic(&self) -> Vec<(u32, TrafficTotals)> {
        self.network_traffic
            .iter()
            .map(|e| (*e.key(), e.value().totals()))
            .collect()
    }

    /// Entries in the connection table, and connections set up and evicted so far.
    pub fn conntrack_stats(&self) -> ConntrackStats {
        self.conntrack
            .lock()
            .map(|c| ConntrackStats {
                entries: c.len(),
                max: self.limits.conntrack,
                created: c.created,
                evicted: c.evicted,
                lock_waits: c.lock_waits,
            })
            .unwrap_or_default()
    }

    /// Every worker's counters, summed (with the ends the connection table
    /// could not keep for the flow log among the records lost).
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for w in &self.workers {
            c.add(&w.counters());
        }
        c.flow_log_lost += self
            .conntrack
            .lock()
            .map(|t| t.flow_log_lost())
            .unwrap_or(0);
        c
    }

    /// Whether flow logs are on (`--flow-logs`).
    pub fn flow_logs(&self) -> bool {
        self.limits.flow_log.is_some()
    }

    /// Moves the flow records every worker wrote since the last call into
    /// `out` (at most `max` from each worker).
    pub fn drain_flows(&self, out: &mut Vec<crate::flowlog::FlowEvent>, max: usize) {
        for w in &self.workers {
            w.drain_flows(out, max);
        }
    }

    /// The instant the workers' clock counts milliseconds from (flow records'
    /// and connections' times).
    pub fn clock_start(&self) -> std::time::Instant {
        self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_worker_that_panics_is_reported_with_its_message_and_its_table_still_reads() {
        // a free port for the underlay (binds on all addresses, as the agent's do)
        let port = UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free UDP port");
        let limits = Limits {
            conntrack: 64,
            ..Limits::default()
        };
        let dp = Dataplane::start(2, [127, 0, 0, 1].into(), port, 1, None, limits)
            .expect("dataplane on loopback");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(dp.stopped_worker(), None, "both run");
        dp.inject_worker_panic(1, Duration::ZERO);
        let end = Instant::now() + Duration::from_secs(5);
        let mut stopped = None;
        while stopped.is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            stopped = dp.stopped_worker();
        }
        let (index, why) = stopped.expect("the panic is seen");
        assert_eq!(index, 1);
        assert!(why.contains("injected fault"), "{why}");
        // it panicked holding the connection table: what the agent saves on
        // its way out is still there to read
        assert!(dp.conntrack.is_poisoned());
        assert!(dp.connections().is_empty());
        assert!(dp.ejected().is_empty());
        // and stopping the rest does not hang on the dead one
        drop(dp);
    }
}

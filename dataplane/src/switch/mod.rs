//! The per-VNI L2 switch: a frame in, one [`Action`] out. One of the pieces
//! a worker's [`crate::datapath::Datapath`] drives (which carries the actions
//! out into transmits); here only the decision per frame.
//!
//! Stages over one buffer: parse and validate the source (anti-spoofing), answer
//! ARP/ND for known endpoints, look the destination up (control-plane FDB, then
//! learned FDB), then deliver locally, encapsulate to a VTEP or replicate;
//! connections to VIPs and through the routing mesh are balanced on the way.
//!
//! - [`port`]: frames from local ports (checks, neighbour answers, DNS, lookup);
//! - [`underlay`]: VXLAN datagrams from other nodes;
//! - [`balance`]: the load balancer (DNAT to a backend and back);
//! - [`ingress`]: the routing mesh's sandbox;
//! - [`egress`]: traffic leaving the overlays through the node;
//! - [`tuple`]: the 5-tuple conntrack keys on;
//! - [`reset`], [`probe`], [`fdb`], [`tap`], [`state`]: resets of connections
//!   that went, the doctor's probes, learned MACs, traces, the control plane's view.
//!
//! The connection table is shared by the workers (a connection's two
//! directions may reach different workers) and read by the control plane, so
//! it stays one table behind a mutex: the switch holds a handle to it, given
//! by its owner (the datapath's builder), and locks it only when this worker's
//! flow cache misses (a new or changing connection), never per established
//! packet. Everything else here belongs to one worker and takes no lock.

#![forbid(unsafe_code)]

mod balance;
mod egress;
mod fdb;
mod ingress;
mod port;
mod probe;
mod reset;
mod state;
pub mod tap;
mod tuple;
mod underlay;

pub use egress::{EgressLocal, EgressView, NodeGuard, Prefix, ENCAP_ANYWHERE, ENCAP_AT_NODES};
pub use fdb::{LearnedFdb, AGEING_MS};
pub use probe::{ProbeAnswer, ANSWER_RATE, PROBE_RATE};
pub use state::{
    policy_verdict, BackendView, IngressView, Location, NetworkView, PolicyAction, PolicyRule,
    PolicyVerdict, PortId, PortView, PublishedView, ServiceView, SwitchState,
};

use crate::buf::PacketBuf;
use crate::conntrack::cache::{FlowCache, Hit};
use crate::conntrack::touch::Wire;
use crate::conntrack::{Conntrack, Dir, Key};
use crate::counters::{Counters, DropReason};
use crate::flowlog::{FlowEvent, FlowLog, Kind, Verdict};
use crate::lb::nat::{self, Side};
use crate::lb::scheduler::{self, Scheduler};

use crate::wire::{dns, flow_hash::flow_hash, icmp_error, neighbor, tcp_rst, udp_reply, vxlan};
use crate::Mac;
use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use tuple::{addr_bits, five_tuple, ip_len, take_ends, untracked_reason, Seg};

/// What the driver must do with the buffer after the core has looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'s> {
    /// Write the frame to this local port.
    Deliver(PortId),
    /// Send the datagram (VXLAN header + frame, [`PacketBuf::datagram`]) to this VTEP.
    /// `flow_hash` picks the outer UDP source port. `secure`: only inside the tunnel.
    Encap {
        vtep: IpAddr,
        flow_hash: u32,
        secure: bool,
    },
    /// Write the frame to each of `ports` but `skip`, and the datagram to each of `vteps`.
    Flood {
        ports: &'s [PortId],
        skip: Option<PortId>,
        vteps: &'s [IpAddr],
        flow_hash: u32,
        secure: bool,
    },
    /// The core wrote an answer (ARP reply, NA) over the frame: write it back to this port.
    Reply(PortId),
    /// A DNS query (at `payload_off` in the frame) for a name the embedded DNS does
    /// not know: relay it to the node's resolvers and the answer back to `peer`.
    ForwardDns {
        port: PortId,
        peer: udp_reply::UdpPeer,
        payload_off: usize,
    },
    /// A doctor's probe from another node, turned into its answer in place:
    /// send the datagram ([`PacketBuf::datagram`]) back to `vtep`'s VXLAN
    /// port, through the tunnel when `secure` (see [`crate::wire::probe`]).
    ProbeReply { vtep: IpAddr, secure: bool },
    /// An answer to one of this node's probes: for the doctor that sent it.
    ProbeAnswer(ProbeAnswer),
    /// Counted already.
    Drop(DropReason),
}

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];

/// The switch of one worker: its learned FDB and counters. The desired state comes
/// in with each call, so a control-plane swap takes effect on the next frame.
pub struct Switch {
    learned: LearnedFdb,
    pub counters: Counters,
    /// Connections through VIPs: shared by the workers, since a connection's two
    /// directions may reach different workers.
    conntrack: Arc<Mutex<Conntrack>>,
    /// This worker's scheduler state per (VNI, fwmark), rebuilt on state changes.
    schedulers: FxHashMap<(u32, u32), Scheduler>,
    /// Scratch for the backends' view a scheduler picks from (no allocation
    /// per new connection).
    view: Vec<scheduler::Backend>,
    /// Established connections this worker translates without the lock.
    flows: FlowCache,
    /// A running `vxmesh trace`, if any.
    pub tracer: Option<tap::Tracer>,
    /// This worker's flow log (`None`: flow logs off; see [`crate::flowlog`]).
    flow_log: Option<FlowLog>,
    /// This worker's lane in the networks' [`crate::traffic::Traffic`] counters.
    lane: usize,
    /// Each port's budget of frames to replicate (`--flood-rate`); none: no limit.
    flood_budget: Option<crate::fair::PortRate<PortId>>,
    /// Doctor probes: budgets and the wall clock answers carry.
    probes: probe::Probes,
    /// Where multi-address DNS answers (`tasks.NAME`) start: moves on with
    /// each such answer this worker gives, so clients see the order rotate.
    dns_rotate: usize,
}

/// What lets a new connection in: the service it is for, and the policy that
/// decided it (for its flow record).
#[derive(Debug, Clone, Copy)]
struct Admitted {
    p: PublishedView,
    policy: u32,
    verdict: Verdict,
}

impl Admitted {
    /// Let in by the node's policies (`v.action` is accept): by which rule,
    /// and what an audit rule would have done instead.
    fn by_policy(p: PublishedView, v: PolicyVerdict) -> Self {
        let (policy, verdict) = match v.audit {
            Some((PolicyAction::Drop, id)) => (id, Verdict::AuditDrop),
            Some((PolicyAction::Reject, id)) => (id, Verdict::AuditReject),
            _ if v.rule != 0 => (v.rule, Verdict::Accept),
            _ => (0, Verdict::None),
        };
        Admitted { p, policy, verdict }
    }
}

impl Switch {
    pub fn new(max_learned: usize) -> Self {
        Self::with_conntrack(max_learned, Arc::new(Mutex::new(Conntrack::new(262_144))))
    }

    /// A switch that tracks VIP connections in `conntrack`, shared with other workers.
    pub fn with_conntrack(max_learned: usize, conntrack: Arc<Mutex<Conntrack>>) -> Self {
        let touches = conntrack
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .touches();
        Self {
            flows: FlowCache::new(touches),
            tracer: None,
            flow_log: None,
            learned: LearnedFdb::new(max_learned),
            counters: Counters::default(),
            conntrack,
            schedulers: FxHashMap::default(),
            view: Vec::new(),
            lane: 0,
            flood_budget: None,
            probes: probe::Probes::default(),
            dns_rotate: 0,
        }
    }

    /// Which lane of the traffic counters this switch writes: its worker's
    /// index (each lane has one writer).
    pub fn set_lane(&mut self, lane: usize) {
        self.lane = lane;
    }

    /// Writes flow records into `log` from now on (`None`: stops). The
    /// connection table's ends and per-connection counts are switched on
    /// for all workers by whoever owns it ([`Conntrack::set_flow_log`]).
    pub fn set_flow_log(&mut self, log: Option<FlowLog>) {
        self.flow_log = log;
    }

    /// Gives each port a budget of broadcast, multicast and unknown-unicast
    /// frames a second (`None`: unlimited); past it they are dropped
    /// (`flood_limited`).
    pub fn set_flood_rate(&mut self, limit: Option<crate::lb::limit::RateLimit>) {
        self.flood_budget = limit.map(crate::fair::PortRate::new);
    }

    /// The shared connection table (for `conntrack ls`, `lb ls` and expiry).
    pub fn conntrack(&self) -> Arc<Mutex<Conntrack>> {
        self.conntrack.clone()
    }

    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// Drops learned MACs whose VTEP is no longer a static peer of their VNI,
    /// and the flood budgets of ports that went.
    pub fn prune_learned(&mut self, st: &SwitchState) {
        if let Some(b) = &mut self.flood_budget {
            b.retain(|p| st.ports.contains_key(&p));
        }
        self.learned.retain(|vni, vtep| {
            st.networks
                .get(&vni)
                .is_some_and(|n| n.is_static_peer(vtep))
        });
    }

    /// Hands a copy of a frame on network `vni` to a running trace.
    #[inline]
    fn trace(&mut self, vni: u32, buf: &PacketBuf) {
        if let Some(t) = &mut self.tracer {
            if !t.offer(vni, buf.data()) {
                self.counters.trace_lost += 1;
            }
        }
    }

    /// Answers ARP request `arp` in place with `mac`, back out of `port`.
    fn answer_arp<'s>(
        &mut self,
        buf: &mut PacketBuf,
        arp: &neighbor::Arp,
        mac: Mac,
        port: PortId,
    ) -> Action<'s> {
        neighbor::write_arp_reply(buf.data_mut(), arp, mac);
        self.counters.neighbor_replies += 1;
        Action::Reply(port)
    }

    /// Answers neighbour solicitation `ns` in place with `mac`, back out of
    /// `port`; `None` when the advertisement does not fit the buffer.
    fn answer_solicitation<'s>(
        &mut self,
        buf: &mut PacketBuf,
        ns: &neighbor::Solicitation,
        mac: Mac,
        port: PortId,
    ) -> Option<Action<'s>> {
        let n = neighbor::write_advertisement(buf.frame_room(), ns, mac)?;
        if !buf.set_len(n) {
            return None;
        }
        self.counters.neighbor_replies += 1;
        Some(Action::Reply(port))
    }

    fn drop<'s>(&mut self, r: DropReason) -> Action<'s> {
        self.counters.drop(r);
        Action::Drop(r)
    }
}

/// The MAC the agent answers with for `ip`, if it knows it: an endpoint or the
/// gateway of the same network. Never for the asker's own address, so duplicate
/// address detection keeps working.
fn answer_for(net: &NetworkView, asker: &PortView, ip: IpAddr) -> Option<Mac> {
    if asker.ips.contains(&ip) {
        return None;
    }
    net.neighbors.get(&ip).copied()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_egress;
#[cfg(test)]
mod tests_flow_cache;
#[cfg(test)]
mod tests_flowlog;
#[cfg(test)]
mod tests_ingress;
#[cfg(test)]
mod tests_v6;

//! The per-VNI L2 switch: a frame in, one [`Action`] out.
//!
//! Stages over one buffer: parse and validate the source (anti-spoofing), answer
//! ARP/ND for known endpoints, look the destination up (control-plane FDB, then
//! learned FDB), then deliver locally, encapsulate to a VTEP or replicate. Later
//! stages (conntrack/NAT, encryption) slot in between lookup and output.

mod egress;
mod fdb;
mod probe;
mod reset;
mod state;
pub mod tap;

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
    pub tap: Option<tap::Tap>,
    /// This worker's flow log (`None`: flow logs off; see [`crate::flowlog`]).
    flow_log: Option<FlowLog>,
    /// This worker's lane in the networks' [`crate::traffic::Traffic`] counters.
    lane: usize,
    /// Each port's budget of frames to replicate (`--flood-rate`); none: no limit.
    flood_budget: Option<crate::fair::PortRate>,
    /// Doctor probes: budgets and the wall clock answers carry.
    probes: probe::Probes,
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

/// The IP packets and bytes the frame in `buf` makes on the wire (what flow
/// logs count; a super-frame's segments each have their own headers).
#[inline(always)]
fn ip_len(buf: &PacketBuf) -> Wire {
    let packets = buf.wire_frames();
    Wire {
        packets: packets as u32,
        bytes: buf.wire_bytes().saturating_sub(packets * ETH_HDR as u64) as u32,
    }
}

/// Moves the ends the connection table recorded (under its lock, held by the
/// caller) into this worker's flow log.
#[inline(always)]
fn take_ends(ct: &mut Conntrack, log: &mut Option<FlowLog>, c: &mut Counters) {
    if let Some(l) = log.as_mut() {
        ct.drain_log(|e| l.connection(e, c));
    }
}

/// Rotates multi-address DNS answers (`tasks.NAME`): one counter for the whole
/// process, so the order moves answer by answer whichever worker answers.
static DNS_ROTATE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What conntrack needs of a TCP segment: its flags, and where the sender's next
/// segment starts (to reset the connection with a sequence number it accepts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seg {
    flags: u8,
    seq_end: u32,
}

/// The 5-tuple of an IPv4 or IPv6 TCP/UDP/ICMP-echo frame, and its TCP details.
/// (Inlined: its result read back from the stack stalled the VIP path.) An IPv6
/// packet with extension headers has none (see [`untracked_reason`]).
#[inline(always)]
fn five_tuple(frame: &[u8], zone: u32) -> Option<(Key, Seg)> {
    if frame.get(12..14)? == ETHERTYPE_IPV6 {
        return five_tuple_v6(frame, zone);
    }
    let ip = frame.get(ETH_HDR..)?;
    if frame.get(12..14)? != ETHERTYPE_IPV4 || ip.len() < 20 {
        return None;
    }
    let ihl = crate::wire::ipv4::Packet::new_unchecked(ip).header_len();
    let proto = ip[9];
    if !matches!(proto, 1 | 6 | 17) || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let l4 = ip.get(ihl..ihl + 14.min(ip.len().saturating_sub(ihl)))?;
    if l4.len() < 4 {
        return None;
    }
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    l4_tuple(zone, proto, src, dst, l4, total.saturating_sub(ihl))
}

/// [`five_tuple`] of an IPv6 frame: TCP, UDP or ICMPv6 echo right after the
/// fixed header.
#[inline(always)]
fn five_tuple_v6(frame: &[u8], zone: u32) -> Option<(Key, Seg)> {
    let ip = frame.get(ETH_HDR..ETH_HDR + 40)?;
    let proto = ip[6];
    if !matches!(proto, 6 | 17 | 58) {
        return None;
    }
    let l4 = frame.get(ETH_HDR + 40..(ETH_HDR + 54).min(frame.len()))?;
    if l4.len() < 4 {
        return None;
    }
    let addr = |o: usize| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&ip[o..o + 16]);
        IpAddr::V6(b.into())
    };
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    l4_tuple(zone, proto, addr(8), addr(24), l4, payload)
}

/// The ports (or echo identifier) and TCP details of the L4 header `l4` (its
/// first 14 bytes at most) of a packet whose L4 part is `l4_len` bytes long.
#[inline(always)]
fn l4_tuple(
    zone: u32,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: &[u8],
    l4_len: usize,
) -> Option<(Key, Seg)> {
    if proto == 1 || proto == 58 {
        // echo: the identifier stands in for the client's port, as conntrack does
        let id = u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]);
        let (sport, dport) = match (proto, l4[0]) {
            (1, 8) | (58, 128) => (id, 0),
            (1, 0) | (58, 129) => (0, id),
            _ => return None,
        };
        let key = Key {
            zone,
            proto,
            src,
            dst,
            sport,
            dport,
        };
        return Some((key, Seg::default()));
    }
    let seg = match (proto, l4.get(4..14)) {
        (6, Some(t)) => {
            let flags = t[9];
            let payload = l4_len.saturating_sub(usize::from(t[8] >> 4) * 4) as u32;
            let used = payload + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
            Seg {
                flags,
                seq_end: u32::from_be_bytes([t[0], t[1], t[2], t[3]]).wrapping_add(used),
            }
        }
        _ => Seg::default(),
    };
    Some((
        Key {
            zone,
            proto,
            src,
            dst,
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
        },
        seg,
    ))
}

/// Why a frame the balancer would serve (one whose destination `ours`
/// accepts: a VIP, the ingress sandbox) has no 5-tuple: an IPv6 packet with
/// extension headers before its transport header (not translated, and counted
/// as such); anything else, and any frame not addressed to us (the kernel's
/// own multicast, a packet for egress), has no route here.
fn untracked_reason(frame: &[u8], ours: impl Fn(&IpAddr) -> bool) -> DropReason {
    let to_us = egress::addresses(frame).is_some_and(|(_, d)| ours(&d));
    match frame.get(12..14) {
        Some(t) if to_us && t == ETHERTYPE_IPV6 && nat::v6_transport(frame).is_none() => {
            DropReason::Ipv6ExtensionHeader
        }
        _ => DropReason::NoRoute,
    }
}

/// An address as a number, for schedulers that hash the client (`sh`).
#[inline]
fn addr_bits(a: IpAddr) -> u64 {
    match a {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64)
        }
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
            tap: None,
            flow_log: None,
            learned: LearnedFdb::new(max_learned),
            counters: Counters::default(),
            conntrack,
            schedulers: FxHashMap::default(),
            view: Vec::new(),
            lane: 0,
            flood_budget: None,
            probes: probe::Probes::default(),
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

    /// A DNS query to a gateway address: answered in place from the network's
    /// names. `None`: not a DNS query for the gateway.
    fn dns<'s>(
        &mut self,
        net: &NetworkView,
        port: PortId,
        buf: &mut PacketBuf,
        forward: bool,
        key: Key,
    ) -> Option<Action<'s>> {
        if key.proto != 17 || key.dport != 53 || !net.gateways.contains(&key.dst) {
            return None;
        }
        let f = buf.data();
        let payload_off = match key.dst {
            IpAddr::V4(_) => {
                ETH_HDR + crate::wire::ipv4::Packet::new_unchecked(&f[ETH_HDR..]).header_len() + 8
            }
            IpAddr::V6(_) => ETH_HDR + 40 + 8,
        };
        let client: Mac = crate::mac_at(f, 6);
        let peer = udp_reply::UdpPeer {
            client_mac: client,
            client_ip: key.src,
            client_port: key.sport,
            gateway_mac: net.gateway_mac,
            gateway_ip: key.dst,
            gateway_port: 53,
        };
        if forward && dns::is_unknown(f.get(payload_off..)?, |n| net.dns.contains_key(n)) {
            return Some(Action::ForwardDns {
                port,
                peer,
                payload_off,
            });
        }
        let rotate = DNS_ROTATE.load(std::sync::atomic::Ordering::Relaxed);
        let Some((resp, records)) =
            dns::answer(f.get(payload_off..)?, rotate, |n| net.dns.get(n).cloned())
        else {
            return Some(self.drop(DropReason::Malformed));
        };
        if records > 0 {
            DNS_ROTATE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Some(total) = udp_reply::write(buf.frame_room(), &peer, &resp) else {
            return Some(self.drop(DropReason::TooBig));
        };
        buf.set_len(total);
        self.counters.dns_answers += 1;
        Some(Action::Reply(port))
    }

    fn lock_conntrack(&self) -> std::sync::MutexGuard<'_, Conntrack> {
        crate::conntrack::lock_counted(&self.conntrack)
    }

    /// Picks a backend of virtual service `mark` on `net` for a new connection.
    /// `host_only`: only tasks on this node (`mode=host`).
    #[allow(clippy::too_many_arguments)]
    fn pick_backend(
        schedulers: &mut FxHashMap<(u32, u32), Scheduler>,
        view: &mut Vec<scheduler::Backend>,
        ct: &Conntrack,
        net: &NetworkView,
        mark: u32,
        host_only: bool,
        src: IpAddr,
        flow: u64,
        now_ms: u64,
    ) -> Result<(u32, IpAddr), DropReason> {
        let svc = net.services.get(&mark).ok_or(DropReason::NoBackend)?;
        let lc = svc.scheduler == scheduler::Kind::Lc;
        view.clear();
        view.extend(svc.backends.iter().enumerate().map(|(i, b)| {
            // a task without an address of the client's family cannot serve it
            let addr = b.addr_for(&src);
            scheduler::Backend {
                weight: b.weight,
                // only lc looks at the load; counting walks the table
                active: if lc {
                    ct.counts(net.vni, mark, i as u32).0
                } else {
                    0
                },
                healthy: b.healthy
                    && (b.local || !host_only)
                    && addr.is_some_and(|a| !ct.passive.is_out((net.vni, mark, a), now_ms)),
            }
        }));
        let sched = schedulers
            .get_mut(&(net.vni, mark))
            .ok_or(DropReason::NoBackend)?;
        let i = sched
            .pick(view, flow, addr_bits(src))
            .ok_or(DropReason::NoBackend)?;
        let b = svc.backends.get(i).ok_or(DropReason::NoBackend)?;
        let ip = b.addr_for(&src).ok_or(DropReason::NoBackend)?;
        Ok((i as u32, ip))
    }

    /// The backend (address, port, MAC) of a client's packet: its connection's,
    /// or for a new connection (once `admit` lets it in) one picked from the
    /// service `admit` names (whose tasks listen on its `target` port) and
    /// tracked from now on, all under one lock. A connection stuck on a backend
    /// passive health took out is picked anew. An established connection's
    /// packets are served from this worker's cache, without the lock.
    #[allow(clippy::too_many_arguments)]
    fn track_orig(
        &mut self,
        net: &NetworkView,
        key: Key,
        seg: Seg,
        len: Wire,
        admit: impl FnOnce() -> Result<Admitted, DropReason>,
        now_ms: u64,
    ) -> Result<Hit, DropReason> {
        if let Some(h) = self
            .flows
            .hit(&key, Dir::Orig, seg.flags, seg.seq_end, now_ms)
        {
            let h = *h;
            if self.flow_log.is_some() {
                self.flows.count(h.id, Dir::Orig, len);
            }
            return Ok(h);
        }
        // borrowed apart, so the table is locked without cloning its Arc per packet
        let Self {
            conntrack,
            schedulers,
            view,
            flow_log,
            counters,
            ..
        } = self;
        let mut ct = crate::conntrack::lock_counted(conntrack);
        let tracked = match ct.lookup(&key) {
            Some((id, Dir::Orig)) if ct.stalled(id, now_ms) => {
                ct.retire(id);
                None
            }
            Some((id, Dir::Orig)) => Some(id),
            _ => None,
        };
        let id = match tracked {
            Some(id) => id,
            None => {
                let Admitted { p, policy, verdict } = admit()?;
                let (i, ip) = Self::pick_backend(
                    schedulers,
                    view,
                    &ct,
                    net,
                    p.fwmark,
                    p.host_only,
                    key.src,
                    key.flow_hash(),
                    now_ms,
                )?;
                let reply = Key {
                    src: ip,
                    dst: key.src,
                    sport: p.target,
                    dport: key.sport,
                    ..key
                };
                if matches!(verdict, Verdict::AuditDrop | Verdict::AuditReject) {
                    counters.policy_audited += 1;
                }
                let id = ct.insert(key, reply, p.fwmark, i, seg.flags, now_ms);
                if let Some(l) = flow_log.as_mut() {
                    let open = FlowEvent {
                        kind: Kind::Open,
                        at_ms: now_ms,
                        key,
                        nat: Some((ip, p.target)),
                        service: p.fwmark,
                        policy,
                        verdict,
                        ..Default::default()
                    };
                    l.connection(open, counters);
                }
                id
            }
        };
        if flow_log.is_some() {
            ct.count(id, Dir::Orig, len);
        }
        ct.update(id, Dir::Orig, seg.flags, now_ms);
        if key.proto == 6 {
            ct.note_seq(id, Dir::Orig, seg.seq_end);
        }
        let (ip, port, _) = ct.translation(id, Dir::Orig).ok_or(DropReason::NoBackend)?;
        let gen = ct.cacheable(id, Dir::Orig);
        take_ends(&mut ct, flow_log, counters);
        drop(ct);
        let mac = *net.neighbors.get(&ip).ok_or(DropReason::NoBackend)?;
        let hit = Hit {
            mac,
            at: net.macs.get(&mac).copied(),
            ..Hit::new(id, Dir::Orig, ip, port)
        };
        Ok(self.flows.keep(key, gen, hit))
    }

    /// DNATs a new or tracked connection to a VIP to its backend (the client's
    /// node balances; no SNAT).
    #[inline(always)]
    fn balance(
        &mut self,
        net: &NetworkView,
        buf: &mut PacketBuf,
        now_ms: u64,
        tuple: Option<(Key, Seg)>,
    ) -> Result<Option<Location>, DropReason> {
        // no 5-tuple: to a VIP, say why; elsewhere (no_route) it may be egress's
        let Some((key, seg)) = tuple else {
            return Err(untracked_reason(buf.data(), |d| net.vips.contains_key(d)));
        };
        let mark = *net.vips.get(&key.dst).ok_or(DropReason::NoRoute)?;
        let service = Admitted {
            p: PublishedView {
                fwmark: mark,
                target: key.dport,
                host_only: false,
            },
            policy: 0,
            verdict: Verdict::None,
        };
        let len = ip_len(buf);
        let to = self.track_orig(net, key, seg, len, || Ok(service), now_ms)?;
        if !nat::rewrite(buf.data_mut(), Side::Dst, to.ip, key.dport) {
            return Err(DropReason::Malformed);
        }
        buf.data_mut()[0..6].copy_from_slice(&to.mac);
        Ok(to.at)
    }

    /// A reply of a balanced connection, about to be delivered to its client:
    /// rewrites its source back to the VIP (and the gateway MAC the client sent to).
    fn unbalance(&mut self, net: &NetworkView, buf: &mut PacketBuf, now_ms: u64) {
        // replies (and ICMP errors) come from a backend: look at the source
        // address before parsing anything else, which most frames then skip
        if net.backend_ips.is_empty() {
            return;
        }
        let f = buf.data();
        let src = if f.len() >= ETH_HDR + 20 && f[12..14] == ETHERTYPE_IPV4 {
            IpAddr::V4(Ipv4Addr::new(f[26], f[27], f[28], f[29]))
        } else if f.len() >= ETH_HDR + 40 && f[12..14] == ETHERTYPE_IPV6 {
            let mut b = [0u8; 16];
            b.copy_from_slice(&f[22..38]);
            IpAddr::V6(b.into())
        } else {
            return;
        };
        if !net.backend_ips.contains(&src) {
            return;
        }
        let Some((key, seg)) = five_tuple(buf.data(), net.vni) else {
            self.unbalance_icmp_error(net, buf);
            return;
        };
        let Some(to) = self.track_reply(key, seg, ip_len(buf), now_ms) else {
            return;
        };
        if nat::rewrite(buf.data_mut(), Side::Src, to.ip, to.port) {
            buf.data_mut()[6..12].copy_from_slice(&net.gateway_mac);
        }
    }

    /// A backend's packet of a tracked connection: the address and port it
    /// answers for (the VIP's, or the ingress sandbox's), and for a connection
    /// that came in through another node's ingress, that node's sandbox MAC
    /// (`via`). Served from this worker's cache once the connection is steady.
    /// (The cached path is inlined into each caller, so the key never goes
    /// through memory; the table's path is not.)
    #[inline(always)]
    fn track_reply(&mut self, key: Key, seg: Seg, len: Wire, now_ms: u64) -> Option<Hit> {
        if let Some(h) = self
            .flows
            .hit(&key, Dir::Reply, seg.flags, seg.seq_end, now_ms)
        {
            let h = *h;
            if self.flow_log.is_some() {
                self.flows.count(h.id, Dir::Reply, len);
            }
            return Some(h);
        }
        self.track_reply_in_table(key, seg, len, now_ms)
    }

    #[inline(never)]
    fn track_reply_in_table(&mut self, key: Key, seg: Seg, len: Wire, now_ms: u64) -> Option<Hit> {
        let Self {
            conntrack,
            flow_log,
            counters,
            ..
        } = self;
        let mut ct = crate::conntrack::lock_counted(conntrack);
        let Some((id, Dir::Reply)) = ct.lookup(&key) else {
            return None;
        };
        if flow_log.is_some() {
            ct.count(id, Dir::Reply, len);
        }
        ct.update(id, Dir::Reply, seg.flags, now_ms);
        if key.proto == 6 {
            ct.note_seq(id, Dir::Reply, seg.seq_end);
        }
        let (ip, port, via) = ct.translation(id, Dir::Reply)?;
        let gen = ct.cacheable(id, Dir::Reply);
        take_ends(&mut ct, flow_log, counters);
        drop(ct);
        let hit = Hit {
            via,
            ..Hit::new(id, Dir::Reply, ip, port)
        };
        Some(self.flows.keep(key, gen, hit))
    }

    /// An ICMP error a backend sent about a balanced connection (e.g. port
    /// unreachable for UDP): made to read as coming from the VIP about the
    /// packet the client sent, so the client's socket sees it.
    fn unbalance_icmp_error(&mut self, net: &NetworkView, buf: &mut PacketBuf) {
        let quoted = match nat::icmp_error_quote(buf.data()) {
            Some((proto, src, dst, sport, dport)) => (proto, src.into(), dst.into(), sport, dport),
            None => match nat::icmp6_error_quote(buf.data()) {
                Some((proto, src, dst, sport, dport)) => {
                    (proto, src.into(), dst.into(), sport, dport)
                }
                None => return,
            },
        };
        let (proto, src, dst, sport, dport): (u8, IpAddr, IpAddr, u16, u16) = quoted;
        if !net.backend_ips.contains(&dst) {
            return;
        }
        let reply = Key {
            zone: net.vni,
            proto,
            src: dst,
            dst: src,
            sport: dport,
            dport: sport,
        };
        let orig = {
            let ct = self.lock_conntrack();
            match ct.lookup(&reply) {
                Some((id, Dir::Reply)) => ct.translation(id, Dir::Reply),
                _ => None,
            }
        };
        let rewritten = match orig {
            Some((IpAddr::V4(vip), port, _)) => {
                nat::rewrite_icmp_error(buf.data_mut(), vip, vip, port)
            }
            Some((IpAddr::V6(vip), port, _)) => {
                nat::rewrite_icmp6_error(buf.data_mut(), vip, vip, port)
            }
            None => false,
        };
        if rewritten {
            buf.data_mut()[6..12].copy_from_slice(&net.gateway_mac);
        }
    }

    /// A frame the kernel wrote to the ingress sandbox: ARP for the sandbox
    /// address, or a connection to a published port (already DNATed by the node's
    /// nftables table, so its source is still the real client). New connections
    /// pass this node's policy, get a task, and go to it on the ingress network
    /// with the client's address kept.
    fn sandbox_in<'s>(
        &mut self,
        st: &'s SwitchState,
        ing: &'s IngressView,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        match [frame[12], frame[13]] {
            ETHERTYPE_ARP => {
                return match neighbor::parse_arp(frame) {
                    Some(arp) if arp.is_request && arp.target_ip == ing.sandbox_ip => {
                        self.answer_arp(buf, &arp, ing.sandbox_mac, ing.port)
                    }
                    Some(_) => self.drop(DropReason::NoRoute),
                    None => self.drop(DropReason::Malformed),
                }
            }
            ETHERTYPE_IPV4 => {}
            ETHERTYPE_IPV6 => {
                // the kernel resolving the IPv6 sandbox address
                if let Some(ns) = neighbor::parse_solicitation(frame) {
                    if Some(ns.target) != ing.sandbox_ip6 {
                        return self.drop(DropReason::NoRoute);
                    }
                    return self
                        .answer_solicitation(buf, &ns, ing.sandbox_mac, ing.port)
                        .unwrap_or_else(|| self.drop(DropReason::Malformed));
                }
            }
            _ => return self.drop(DropReason::UnsupportedEtherType),
        }
        let Some(net) = st.networks.get(&ing.vni) else {
            return self.drop(DropReason::UnknownVni);
        };
        let to_sandbox = |d: &IpAddr| match d {
            IpAddr::V4(a) => *a == ing.sandbox_ip,
            IpAddr::V6(a) => Some(*a) == ing.sandbox_ip6,
        };
        // the kernel's own IPv6 multicast (MLD behind a hop-by-hop header) is
        // no published port's business: no_route, not an extension header
        let Some((key, seg)) = five_tuple(frame, ing.vni) else {
            let why = untracked_reason(frame, to_sandbox);
            return self.drop(why);
        };
        if !to_sandbox(&key.dst) {
            return self.drop(DropReason::NoRoute);
        }
        // only a new connection is admitted: published here, ingress on (host-mode
        // ports are this node's own and stay), and this node's policy
        let admit = || {
            let p = *ing
                .published
                .get(&(key.proto, key.dport))
                .ok_or(DropReason::NotPublished)?;
            if !ing.enabled && !p.host_only {
                return Err(DropReason::IngressOff);
            }
            let v = policy_verdict(&ing.policies, key.proto, key.dport, key.src);
            match v.action {
                PolicyAction::Accept => {}
                PolicyAction::Drop => return Err(DropReason::PolicyDrop),
                PolicyAction::Reject => return Err(DropReason::PolicyReject),
            }
            // last, so only connections that would be served spend a token;
            // over the limit is dropped unanswered (a RST would answer spoofers)
            match &ing.rate_limit {
                Some(l) if !l.admit(key.src, now_ms) => Err(DropReason::IngressRateLimited),
                _ => Ok(Admitted::by_policy(p, v)),
            }
        };
        let len = ip_len(buf);
        let Hit {
            ip, port, mac, at, ..
        } = match self.track_orig(net, key, seg, len, admit, now_ms) {
            Ok(t) => t,
            // a port just unpublished or a node just closed is refused as the
            // closed port the kernel's table is about to make it, not left to
            // time out
            Err(
                r @ (DropReason::NotPublished | DropReason::IngressOff | DropReason::PolicyReject),
            ) => {
                // the refusal is written over the frame: recorded first
                self.log_drop(ing.vni, Some(ing), buf.data(), r, now_ms);
                return self.reject(ing, buf, r);
            }
            Err(r) => return self.drop(r),
        };
        if !nat::rewrite(buf.data_mut(), Side::Dst, ip, port) {
            return self.drop(DropReason::Malformed);
        }
        let f = buf.data_mut();
        f[0..6].copy_from_slice(&mac);
        f[6..12].copy_from_slice(&ing.sandbox_mac);
        self.send_to(net, at, buf)
    }

    /// Sends a frame already addressed to `mac` on `net`: to its local port, or
    /// over VXLAN to its node.
    fn send_to_mac<'s>(&mut self, net: &NetworkView, mac: Mac, buf: &mut PacketBuf) -> Action<'s> {
        self.send_to(net, net.macs.get(&mac).copied(), buf)
    }

    /// Sends a frame to where its destination MAC is (`None`: nowhere known).
    fn send_to<'s>(
        &mut self,
        net: &NetworkView,
        at: Option<Location>,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        match at {
            Some(Location::Local(p)) => Action::Deliver(p),
            Some(Location::Remote(v)) => self.encap(net, v, buf),
            None => self.drop(DropReason::NoBackend),
        }
    }

    /// Puts the frame in a VXLAN header for `vtep`, counted as out on `net`.
    #[inline(always)]
    fn encap<'s>(&mut self, net: &NetworkView, vtep: IpAddr, buf: &mut PacketBuf) -> Action<'s> {
        let flow_hash = flow_hash(buf.data());
        // a super-frame counts as the segments it leaves as
        let (frames, bytes) = (buf.wire_frames(), buf.wire_bytes());
        if !buf.write_vxlan_header(net.vni) {
            return self.drop(DropReason::TooBig);
        }
        net.traffic.tx(self.lane, frames, bytes);
        Action::Encap {
            vtep,
            flow_hash,
            secure: net.encrypted,
        }
    }

    /// Refuses a new ingress connection as a closed port would: RST for TCP,
    /// ICMP port unreachable for UDP, back through the sandbox to the client.
    fn reject<'s>(
        &mut self,
        ing: &IngressView,
        buf: &mut PacketBuf,
        why: DropReason,
    ) -> Action<'s> {
        let len = buf.len();
        let f = buf.data();
        let v6 = f.get(12..14) == Some(&ETHERTYPE_IPV6[..]);
        let tcp = if v6 {
            f.get(ETH_HDR + 6) == Some(&6)
        } else {
            f.get(ETH_HDR + 9) == Some(&6)
        };
        let n = match (tcp, v6.then_some(ing.sandbox_ip6).flatten()) {
            (true, _) => tcp_rst::write_refusal(buf.frame_room(), len, ing.sandbox_mac),
            (false, Some(ip6)) => {
                icmp_error::write_v6_port_unreachable(buf.frame_room(), len, ing.sandbox_mac, ip6)
            }
            (false, None) if !v6 => icmp_error::write_v4_port_unreachable(
                buf.frame_room(),
                len,
                ing.sandbox_mac,
                ing.sandbox_ip,
            ),
            (false, None) => None,
        };
        match n {
            Some(n) if buf.set_len(n) => {
                self.counters.drop(why);
                Action::Reply(ing.port)
            }
            _ => self.drop(why),
        }
    }

    /// A task's reply to a client that came in through ingress, sent to the
    /// ingress network's gateway: back to the ingress node it came through (its
    /// sandbox on this node, or another node's over VXLAN).
    fn ingress_reply<'s>(
        &mut self,
        ing: &'s IngressView,
        net: &NetworkView,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let Some((key, seg)) = five_tuple(buf.data(), net.vni) else {
            return self.drop(DropReason::NoRoute);
        };
        let Some(to) = self.track_reply(key, seg, ip_len(buf), now_ms) else {
            return self.drop(DropReason::NoRoute);
        };
        match to.via {
            Some(mac) => {
                buf.data_mut()[0..6].copy_from_slice(&mac);
                self.send_to_mac(net, mac, buf)
            }
            // balanced here: the client came in through this node's own sandbox
            None => self.send_to_sandbox(ing, buf, &to),
        }
    }

    /// A task's reply reaching the ingress node that balanced its connection:
    /// reverse-NATed to the sandbox address and published port, and written to
    /// the sandbox for the kernel to un-DNAT and route to the client.
    fn sandbox_out<'s>(
        &mut self,
        ing: &'s IngressView,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let Some((key, seg)) = five_tuple(buf.data(), ing.vni) else {
            return self.drop(DropReason::NoRoute);
        };
        match self.track_reply(key, seg, ip_len(buf), now_ms) {
            Some(to) => self.send_to_sandbox(ing, buf, &to),
            None => self.drop(DropReason::NoRoute),
        }
    }

    /// Writes a reply, translated back to the sandbox address and published
    /// port, to the sandbox.
    fn send_to_sandbox<'s>(
        &mut self,
        ing: &'s IngressView,
        buf: &mut PacketBuf,
        to: &Hit,
    ) -> Action<'s> {
        if !nat::rewrite(buf.data_mut(), Side::Src, to.ip, to.port) {
            return self.drop(DropReason::Malformed);
        }
        let f = buf.data_mut();
        f[0..6].copy_from_slice(&ing.host_mac);
        f[6..12].copy_from_slice(&ing.sandbox_mac);
        Action::Deliver(ing.port)
    }

    /// On a task's node: a connection arriving from another node's ingress with
    /// the client's address. Remembers that node, so the task's replies (which
    /// go to the ingress gateway) are sent back there rather than anywhere else.
    fn note_ingress_return(&mut self, ing: &IngressView, buf: &PacketBuf, now_ms: u64) {
        let f = buf.data();
        let smac: Mac = crate::mac_at(f, 6);
        if smac == ing.sandbox_mac || !ing.sandbox_macs.contains(&smac) {
            return;
        }
        let Some((key, seg)) = five_tuple(f, ing.vni) else {
            return;
        };
        let cached = self
            .flows
            .hit(&key, Dir::Orig, seg.flags, seg.seq_end, now_ms);
        // the client may come back through another node after a failover
        if cached.is_some_and(|h| h.via == Some(smac)) {
            return;
        }
        let mut ct = crate::conntrack::lock_counted(&self.conntrack);
        // a bare SYN starts a new connection, even on a tuple seen before
        let fresh = key.proto == 6 && seg.flags & 0x12 == 0x02;
        let id = match ct.lookup(&key) {
            Some((id, Dir::Orig)) if !fresh => id,
            // a packet to its own address and port (a LAND attack) has one key
            // for both directions: no connection (found by fuzzing); checked
            // only for a new one
            _ if !Conntrack::trackable(&key, &key.reversed()) => return,
            _ => ct.insert(key, key.reversed(), 0, 0, seg.flags, now_ms),
        };
        ct.set_via(id, smac);
        ct.update(id, Dir::Orig, seg.flags, now_ms);
        if key.proto == 6 {
            ct.note_seq(id, Dir::Orig, seg.seq_end);
        }
        let gen = ct.cacheable(id, Dir::Orig);
        // its insert may have ended another connection (evicted, replaced)
        take_ends(&mut ct, &mut self.flow_log, &mut self.counters);
        drop(ct);
        let hit = Hit {
            via: Some(smac),
            ..Hit::new(id, Dir::Orig, key.dst, key.dport)
        };
        self.flows.keep(key, gen, hit);
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
        if let Some(t) = &self.tap {
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

    /// A frame an endpoint (or the ingress sandbox) sent on its port. A drop
    /// is recorded in the flow log, when it is on, with the frame's 5-tuple.
    #[inline]
    pub fn from_port<'s>(
        &mut self,
        st: &'s SwitchState,
        port: PortId,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let a = self.switch_port(st, port, buf, now_ms);
        if let (Action::Drop(r), Some(_)) = (a, &self.flow_log) {
            self.log_port_drop(st, port, buf, r, now_ms);
        }
        a
    }

    /// Records a drop of a frame from `port` (whose network is its zone).
    #[cold]
    fn log_port_drop(
        &mut self,
        st: &SwitchState,
        port: PortId,
        buf: &PacketBuf,
        r: DropReason,
        now_ms: u64,
    ) {
        match st.ingress.as_ref().filter(|i| i.port == port) {
            Some(ing) => self.log_drop(ing.vni, Some(ing), buf.data(), r, now_ms),
            None => {
                if let Some(pv) = st.ports.get(&port) {
                    self.log_drop(pv.vni, None, buf.data(), r, now_ms);
                }
            }
        }
    }

    /// Records a drop of `frame` on network `zone` in the flow log (when on),
    /// if it has a 5-tuple; at ingress (`ing`), with the policy that refused it.
    #[cold]
    fn log_drop(
        &mut self,
        zone: u32,
        ing: Option<&IngressView>,
        frame: &[u8],
        r: DropReason,
        now_ms: u64,
    ) {
        let Some(log) = self.flow_log.as_mut() else {
            return;
        };
        let Some((key, _)) = five_tuple(frame, zone) else {
            return;
        };
        let (policy, verdict) = match (r, ing) {
            (DropReason::PolicyDrop | DropReason::PolicyReject, Some(ing)) => {
                let v = policy_verdict(&ing.policies, key.proto, key.dport, key.src);
                let verdict = match v.action {
                    PolicyAction::Drop => Verdict::Drop,
                    PolicyAction::Reject => Verdict::Reject,
                    PolicyAction::Accept => Verdict::Accept,
                };
                (v.rule, verdict)
            }
            _ => (0, Verdict::None),
        };
        let e = FlowEvent {
            kind: Kind::Drop(r),
            at_ms: now_ms,
            key,
            policy,
            verdict,
            packets: [1, 0],
            bytes: [frame.len().saturating_sub(ETH_HDR) as u64, 0],
            ..Default::default()
        };
        log.dropped(e, now_ms, &mut self.counters);
    }

    fn switch_port<'s>(
        &mut self,
        st: &'s SwitchState,
        port: PortId,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        self.counters.port_rx += 1;
        if let Some(ing) = st.ingress.as_ref().filter(|i| i.port == port) {
            self.trace(ing.vni, buf);
            return self.sandbox_in(st, ing, buf, now_ms);
        }
        if let Some(eg) = st.egress.as_ref().filter(|e| e.port == port) {
            return self.egress_in(eg, buf);
        }
        let Some(pv) = st.ports.get(&port) else {
            return self.drop(DropReason::UnknownPort);
        };
        self.trace(pv.vni, buf);
        let Some(net) = st.networks.get(&pv.vni) else {
            return self.drop(DropReason::UnknownVni);
        };
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        if frame[6..12] != pv.mac {
            return self.drop(DropReason::SpoofedSourceMac);
        }
        match [frame[12], frame[13]] {
            ETHERTYPE_ARP => {
                let Some(arp) = neighbor::parse_arp(frame) else {
                    return self.drop(DropReason::Malformed);
                };
                if arp.sender_mac != pv.mac {
                    return self.drop(DropReason::SpoofedSourceMac);
                }
                let sender = IpAddr::V4(arp.sender_ip);
                if !arp.sender_ip.is_unspecified() && !pv.ips.contains(&sender) {
                    return self.drop(DropReason::SpoofedSourceIp);
                }
                if arp.is_request {
                    if let Some(mac) = answer_for(net, pv, IpAddr::V4(arp.target_ip)) {
                        return self.answer_arp(buf, &arp, mac, port);
                    }
                }
            }
            ETHERTYPE_IPV4 => {
                let Ok(ip) = Ipv4HeaderSlice::from_slice(&frame[ETH_HDR..]) else {
                    return self.drop(DropReason::Malformed);
                };
                let src = ip.source_addr();
                if !src.is_unspecified() && !pv.ips.contains(&IpAddr::V4(src)) {
                    return self.drop(DropReason::SpoofedSourceIp);
                }
            }
            ETHERTYPE_IPV6 => {
                let Ok(ip) = Ipv6HeaderSlice::from_slice(&frame[ETH_HDR..]) else {
                    return self.drop(DropReason::Malformed);
                };
                let src = ip.source_addr();
                let link_local = src.segments()[0] & 0xffc0 == 0xfe80;
                if !src.is_unspecified() && !link_local && !pv.ips.contains(&IpAddr::V6(src)) {
                    return self.drop(DropReason::SpoofedSourceIp);
                }
                // neighbour discovery may only speak for this port's own
                // addresses, wherever in the header chain it sits
                if let Err(r) = neighbor::nd_check(frame, &pv.mac, &pv.ips) {
                    return self.drop(r);
                }
                if let Some(ns) = neighbor::parse_solicitation(frame) {
                    if let Some(mac) = answer_for(net, pv, IpAddr::V6(ns.target)) {
                        if let Some(a) = self.answer_solicitation(buf, &ns, mac, port) {
                            return a;
                        }
                    }
                }
            }
            // Anything else (VLAN tags, raw L2 protocols) could carry addresses the
            // checks above never see.
            _ => return self.drop(DropReason::UnsupportedEtherType),
        }
        if net.mtu > 0 && buf.wire_frame_max() > usize::from(net.mtu) + ETH_HDR {
            return self.too_big(net, port, buf);
        }
        let frame = buf.data();
        let dst: Mac = crate::mac_at(frame, 0);
        if dst[0] & 1 == 1 {
            return self.flood(net, Some(port), buf, now_ms);
        }
        if dst == net.gateway_mac {
            // parsed once for both: a DNS query to the gateway, or a VIP
            let tuple = five_tuple(buf.data(), net.vni);
            if let Some((key, _)) = tuple {
                let forward = !net.internal && !st.dns_upstream.is_empty();
                if let Some(a) = self.dns(net, port, buf, forward, key) {
                    return a;
                }
            }
            if let Some(ing) = st.ingress.as_ref().filter(|i| i.vni == net.vni) {
                return self.ingress_reply(ing, net, buf, now_ms);
            }
            // to the gateway: a service VIP (balanced here, on the client's node)
            // or, outside every overlay, something to route (egress, through
            // this node; asked only once it is no VIP, so VIPs pay nothing for it)
            // a client's frame, just balanced: never a reply to rewrite back
            return match self.balance(net, buf, now_ms, tuple) {
                Ok(at) => self.send_to(net, at, buf),
                Err(DropReason::NoRoute) => self.egress_or_no_route(st, net, buf),
                Err(r) => self.drop(r),
            };
        }
        let vtep = match net.macs.get(&dst) {
            Some(Location::Local(p)) if *p == port => {
                return self.drop(DropReason::NoLocalDestination)
            }
            Some(Location::Local(p)) => {
                let p = *p;
                self.unbalance(net, buf, now_ms);
                return Action::Deliver(p);
            }
            Some(Location::Remote(v)) => Some(*v),
            None => self.learned.lookup(net.vni, &dst, now_ms),
        };
        match vtep {
            Some(vtep) => self.encap(net, vtep, buf),
            None => self.flood(net, Some(port), buf, now_ms),
        }
    }

    /// Answers an oversized packet with ICMP "fragmentation needed" / "packet too
    /// big" from the gateway, so the sender lowers its path MTU.
    fn too_big<'s>(&mut self, net: &NetworkView, port: PortId, buf: &mut PacketBuf) -> Action<'s> {
        let len = buf.len();
        let is_v6 = buf.data()[12..14] == ETHERTYPE_IPV6;
        let gw = net.gateways.iter().find(|g| g.is_ipv6() == is_v6).copied();
        let n = match gw {
            Some(IpAddr::V4(g)) => {
                icmp_error::write_v4(buf.frame_room(), len, net.gateway_mac, g, net.mtu)
            }
            Some(IpAddr::V6(g)) => {
                icmp_error::write_v6(buf.frame_room(), len, net.gateway_mac, g, net.mtu)
            }
            None => None,
        };
        match n {
            Some(n) if buf.set_len(n) => {
                self.counters.drop(DropReason::TooBig);
                Action::Reply(port)
            }
            _ => self.drop(DropReason::TooBig),
        }
    }

    fn flood<'s>(
        &mut self,
        net: &'s NetworkView,
        skip: Option<PortId>,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        // a port's frames spend its own budget (frames from the underlay were
        // counted against their port on the node they came from)
        if let (Some(b), Some(p)) = (&mut self.flood_budget, skip) {
            if !b.admit(p, now_ms) {
                return self.drop(DropReason::FloodLimited);
            }
        }
        self.counters.flooded += 1;
        let flow_hash = flow_hash(buf.data());
        // Frames from the underlay are never sent back to it (split horizon).
        let vteps: &[IpAddr] = if skip.is_some() { &net.members } else { &[] };
        if !vteps.is_empty() {
            let (frames, bytes) = (buf.wire_frames(), buf.wire_bytes());
            if !buf.write_vxlan_header(net.vni) {
                return self.drop(DropReason::TooBig);
            }
            let n = vteps.len() as u64;
            net.traffic.tx(self.lane, n * frames, n * bytes);
        }
        Action::Flood {
            ports: &net.local_ports,
            skip,
            vteps,
            flow_hash,
            secure: net.encrypted,
        }
    }

    /// A VXLAN datagram (UDP payload) from VTEP `src`: plain from the underlay, or
    /// `secure` when it came out of a WireGuard tunnel (then `src` is the peer's
    /// tunnel address).
    pub fn from_underlay<'s>(
        &mut self,
        st: &'s SwitchState,
        src: IpAddr,
        buf: &mut PacketBuf,
        now_ms: u64,
        secure: bool,
    ) -> Action<'s> {
        self.counters.underlay_rx += 1;
        let vni = match vxlan::parse(buf.data()) {
            Ok(v) => v,
            Err(vxlan::VxlanError::Truncated) => return self.drop(DropReason::Malformed),
            Err(vxlan::VxlanError::NoVniFlag) => return self.drop(DropReason::BadVxlanHeader),
        };
        if vni == crate::wire::probe::PROBE_VNI {
            return self.probe(st, src, buf, now_ms, secure);
        }
        let Some(net) = st.networks.get(&vni) else {
            return self.drop(DropReason::UnknownVni);
        };
        if net.encrypted && !secure {
            return self.drop(DropReason::Unencrypted);
        }
        if !net.is_member(&src) {
            return self.drop(DropReason::NotMember);
        }
        buf.pull_front(vxlan::VXLAN_HEADER_LEN);
        net.traffic.rx(self.lane, 1, buf.len() as u64);
        self.trace(vni, buf);
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        let smac: Mac = crate::mac_at(frame, 6);
        let dst: Mac = crate::mac_at(frame, 0);
        if smac[0] & 1 == 1 {
            return self.drop(DropReason::Malformed);
        }
        match net.macs.get(&smac) {
            // A MAC the control plane placed elsewhere: someone is impersonating it.
            Some(Location::Local(_)) => return self.drop(DropReason::SpoofedSourceMac),
            Some(Location::Remote(v)) if *v != src => {
                return self.drop(DropReason::SpoofedSourceMac)
            }
            Some(Location::Remote(_)) => {}
            None if net.is_static_peer(&src) => match self.learned.learn(vni, smac, src, now_ms) {
                fdb::Learn::New => self.counters.learned += 1,
                fdb::Learn::Known => {}
                fdb::Learn::Full => self.counters.drop(DropReason::LearnedFdbFull),
            },
            None => {}
        }
        if dst[0] & 1 == 1 {
            return self.flood(net, None, buf, now_ms);
        }
        if let Some(ing) = st.ingress.as_ref().filter(|i| i.vni == vni) {
            if dst == ing.sandbox_mac {
                return self.sandbox_out(ing, buf, now_ms);
            }
            if matches!(net.macs.get(&dst), Some(Location::Local(_))) {
                self.note_ingress_return(ing, buf, now_ms);
            }
        }
        match net.macs.get(&dst) {
            Some(Location::Local(p)) => {
                let p = *p;
                self.unbalance(net, buf, now_ms);
                Action::Deliver(p)
            }
            _ => self.drop(DropReason::NoLocalDestination),
        }
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

//! The fuzz targets, and the sink that checks what the datapath sends.

use super::state::{ip, states};
use super::*;
use crate::buf::{PacketBuf, MAX_FRAME};
use crate::conntrack::Conntrack;
use crate::datapath::{Config, Datapath, Event, PortRead, Sink};
use crate::offload::gather::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use crate::offload::vnet::VnetHdr;
use crate::switch::{Location, PortId, SwitchState};
use crate::tunnel::{x25519, TunnelConfig, TunnelPeer, Tunnels};
use crate::wire::{dns, udp_reply, vxlan};
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- the checks

/// A sink that checks each transmit against the state: every port, VTEP
/// and datagram it names must be real. It keeps what went into the tunnel
/// when asked to (the WireGuard target plays the peer with it).
struct Checker<'a> {
    st: &'a SwitchState,
    tunnel: Option<Vec<Vec<u8>>>,
}

impl<'a> Checker<'a> {
    fn new(st: &'a SwitchState) -> Self {
        Self { st, tunnel: None }
    }

    fn keeping_tunnel(st: &'a SwitchState) -> Self {
        Self {
            st,
            tunnel: Some(Vec::new()),
        }
    }

    fn is_port(&self, p: &PortId) -> bool {
        self.st.ports.contains_key(p)
            || self.st.ingress.as_ref().is_some_and(|i| i.port == *p)
            || self.st.egress.as_ref().is_some_and(|e| e.port == *p)
    }

    /// A VXLAN datagram to `vtep`: its header right, its network known, the
    /// VTEP a member (or where the state places a MAC).
    fn vxlan_ok(&self, vtep: IpAddr, d: &[u8]) {
        let vni = vxlan::parse(d).expect("a datagram without its VXLAN header");
        assert!(
            self.st.networks.contains_key(&vni),
            "VXLAN to unknown VNI {vni}"
        );
        assert!(
            d.len() >= vxlan::VXLAN_HEADER_LEN + 14,
            "a datagram of {} bytes",
            d.len()
        );
        assert!(
            self.st.networks.values().any(
                |n| n.is_member(&vtep) || n.macs.values().any(|l| *l == Location::Remote(vtep))
            ),
            "encapsulated to {vtep}, no member"
        );
    }

    /// An event the datapath handed up.
    fn event(&self, e: Event) {
        match e {
            Event::ProbeAnswer { answer, .. } => {
                let nodes = if answer.secure {
                    &self.st.tunnel_nodes
                } else {
                    &self.st.nodes
                };
                assert!(
                    nodes.contains(&answer.from),
                    "an answer handed up from {}",
                    answer.from
                );
            }
        }
    }
}

/// How many datagrams of `seg` bytes (the last shorter) `len` bytes make.
fn run_count(len: usize, seg: usize) -> usize {
    if len <= seg {
        1
    } else {
        len.div_ceil(seg.max(1))
    }
}

impl Sink for Checker<'_> {
    fn write_port(&mut self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> bool {
        assert!(self.is_port(&port), "a frame written to {port:?}, no port");
        assert!(
            frame.len() >= 14 && frame.len() <= MAX_FRAME,
            "frame of {}",
            frame.len()
        );
        if hdr.is_gso() {
            assert!(hdr.gso_size > 0, "a super-frame with no segment size");
        }
        true
    }

    fn send_underlay(&mut self, _: u32, vtep: IpAddr, data: &[u8], seg: usize) -> usize {
        let n = run_count(data.len(), seg);
        for d in data.chunks(if n == 1 { data.len().max(1) } else { seg }) {
            self.vxlan_ok(vtep, d);
        }
        if n > 1 {
            assert!(n <= GSO_MAX_SEGMENTS && data.len() <= GSO_MAX_BYTES);
        }
        n
    }

    fn send_underlay_gather(
        &mut self,
        _: u32,
        vtep: IpAddr,
        parts: &[IoSlice<'_>],
        per: usize,
        seg: u16,
    ) -> usize {
        assert!(per > 0 && parts.len().is_multiple_of(per));
        let count = parts.len() / per;
        let bytes: usize = parts.iter().map(|p| p.len()).sum();
        assert!(count <= GSO_MAX_SEGMENTS);
        assert!(bytes <= GSO_MAX_BYTES && bytes <= count * usize::from(seg));
        for d in parts.chunks(per) {
            let whole: Vec<u8> = d.iter().flat_map(|p| p.iter().copied()).collect();
            self.vxlan_ok(vtep, &whole);
        }
        count
    }

    fn send_tunnel(&mut self, _: SocketAddr, data: &[u8], seg: usize) -> usize {
        let n = run_count(data.len(), seg);
        if let Some(t) = &mut self.tunnel {
            t.extend(
                data.chunks(if n == 1 { data.len().max(1) } else { seg })
                    .map(<[u8]>::to_vec),
            );
        }
        n
    }

    fn send_probe(&mut self, vtep: IpAddr, datagram: &[u8]) -> std::io::Result<()> {
        let p = crate::wire::probe::parse(datagram).expect("an answer that is no probe");
        if p.kind == crate::wire::probe::Kind::Reply {
            assert!(self.st.nodes.contains(&vtep), "a probe answered to {vtep}");
        }
        Ok(())
    }

    fn send_dns(&mut self, to: SocketAddr, query: &[u8]) -> bool {
        assert!(
            self.st.dns_upstream.contains(&to),
            "a query to {to}, no resolver"
        );
        assert!(query.len() >= 12);
        true
    }
}

// ---------------------------------------------------------------- the datapath

fn key(seed: u8) -> [u8; 32] {
    let mut k = [seed; 32];
    k[0] &= 248;
    k
}

fn public(k: [u8; 32]) -> [u8; 32] {
    x25519::PublicKey::from(&x25519::StaticSecret::from(k)).to_bytes()
}

/// Our underlay socket address, and the peer's.
pub const LOCAL_EP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
pub const PEER_EP: SocketAddr = SocketAddr::new(IpAddr::V4(NODE_B), 51820);

/// A node's tunnel to one peer: keys made from seeds `me` and `them`.
pub fn tunnel_config(
    local: Ipv4Addr,
    me: u8,
    peer: Ipv4Addr,
    peer_ep: SocketAddr,
    them: u8,
) -> TunnelConfig {
    TunnelConfig {
        local_vtep: local,
        keys: vec![key(me)],
        preshared: None,
        peers: vec![TunnelPeer {
            vtep: peer,
            endpoint: peer_ep,
            public: public(key(them)),
        }],
    }
}

/// A small datapath's setup, as a worker's but for its tables' sizes: it
/// sweeps the connection table, floods without a budget, logs no flows.
pub fn config(t0: Instant) -> Config {
    Config {
        lane: 0,
        start: t0,
        sweeper: true,
        fdb_learned: 64,
        flood_rate: None,
        dns_forwards: 16,
        flow_log: None,
    }
}

/// A datapath on `st` as a worker would run it (it sweeps the connection
/// table; a small one), every port of the state an offloading TAP (so
/// deliveries from the underlay coalesce), the tunnel to the peer set up.
fn datapath(st: &Arc<SwitchState>, t0: Instant) -> Datapath {
    let cfg = config(t0);
    let ct = Arc::new(Mutex::new(Conntrack::new(256)));
    let mut dp = Datapath::new(cfg, ct, st.clone(), t0);
    let ports = st.ports.keys().copied();
    let special = [
        st.ingress.as_ref().map(|i| i.port),
        st.egress.as_ref().map(|e| e.port),
    ];
    for p in ports.chain(special.into_iter().flatten()) {
        dp.add_port(p, true);
    }
    let mut chk = Checker::new(st);
    dp.set_tunnels(
        tunnel_config(TUN_LOCAL, 1, TUN_PEER, PEER_EP, 2),
        t0,
        &mut chk,
    );
    dp
}

// ---------------------------------------------------------------- the pipelines

const PORTS: [PortId; 8] = [SANDBOX, P_A, P_B, P_C, P_TASK, PortId(77), P_A, P_EGRESS];

fn vteps() -> [IpAddr; 8] {
    [
        IpAddr::V4(NODE_B),
        IpAddr::V4(STATIC_PEER),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        "2001:db8::2".parse().expect("v6"),
        IpAddr::V4(TUN_PEER),
        IpAddr::V4(NODE_B),
        IpAddr::V4(NODE_B),
        IpAddr::V4(STATIC_PEER),
    ]
}

/// A frame read from a port: `ctl & 7` picks the port, [`CTL_VNET`] says a
/// virtio-net header comes first (read as an offloading TAP's).
fn tap_record(
    dp: &mut Datapath,
    chk: &mut Checker<'_>,
    buf: &mut PacketBuf,
    ctl: u8,
    d: &[u8],
    now: Instant,
) {
    let port = PORTS[usize::from(ctl & 7)];
    let read = if ctl & CTL_VNET == 0 {
        let n = d.len().min(MAX_FRAME);
        buf.frame_slot()[..n].copy_from_slice(&d[..n]);
        PortRead::Frame(n)
    } else {
        let slot = buf.vnet_slot();
        let n = d.len().min(slot.len());
        slot[..n].copy_from_slice(&d[..n]);
        PortRead::Vnet(n)
    };
    dp.handle_port_rx(port, read, buf, now, chk);
}

/// A VXLAN datagram from the underlay: `ctl & 7` picks the sender, bit 3 says
/// it came out of the tunnel (as the datapath's switch would be told).
fn underlay_record(
    dp: &mut Datapath,
    chk: &mut Checker<'_>,
    buf: &mut PacketBuf,
    ctl: u8,
    d: &[u8],
    now: Instant,
) {
    let src = vteps()[usize::from(ctl & 7)];
    if ctl & 0x08 != 0 {
        // as the tunnel hands a decrypted datagram on
        buf.load_datagram(d);
        dp.handle_decrypted_rx(src, buf, now, chk);
        return;
    }
    dp.handle_underlay_rx(src, d, buf, now, chk);
}

/// Target `switch_tap`: frames read from the ports (endpoints' TAPs and the
/// ingress sandbox), records with [`CTL_OTHER_SIDE`] from the underlay.
pub fn switch_tap(data: &[u8]) {
    pipeline(data, false)
}

/// Target `switch_underlay`: VXLAN datagrams from the underlay, records with
/// [`CTL_OTHER_SIDE`] from the ports.
pub fn switch_underlay(data: &[u8]) {
    pipeline(data, true)
}

/// Each record into the datapath, `(ctl >> 4) & 7` seconds after the last,
/// its timers run; then time passes, the state changes (a backend leaves)
/// and the connections that went with it are reset at both ends; then the
/// table expires. Exercises the RSTs written from what the fuzzed frames
/// left tracked.
fn pipeline(data: &[u8], underlay: bool) {
    let (st, degraded) = states();
    let t0 = Instant::now();
    let mut dp = datapath(st, t0);
    let mut buf = PacketBuf::new();
    let mut chk = Checker::new(st);
    let mut now = t0 + Duration::from_secs(1);
    for (ctl, d) in records(data) {
        now += Duration::from_secs(u64::from((ctl >> 4) & 7));
        if underlay != (ctl & CTL_OTHER_SIDE != 0) {
            underlay_record(&mut dp, &mut chk, &mut buf, ctl, d, now);
        } else {
            dp.flush(&mut chk);
            tap_record(&mut dp, &mut chk, &mut buf, ctl, d, now);
        }
        dp.handle_timeout(now, &mut chk);
        while let Some(e) = dp.poll_event() {
            chk.event(e);
        }
    }
    dp.flush(&mut chk);
    let mut chk = Checker::new(degraded);
    dp.set_state(degraded.clone(), now, &mut chk);
    dp.handle_timeout(now + Duration::from_secs(3_600), &mut chk);
}

// ---------------------------------------------------------------- WireGuard

/// Target `wireguard`: the tunnel's receive path, then the switch. The first
/// byte picks what the rest is:
/// - `0`: a datagram to a node with a peer configured and no session;
/// - `1`: a datagram to a node in session with its peer;
/// - `2`: a packet the peer sends inside an established session (so it is
///   decrypted and checked as an inner IPv4/UDP/VXLAN packet, then switched);
/// - `3`: bytes XORed over a valid handshake initiation from the peer, then
///   the handshake carried on (the mask over the answer from byte 148 on).
pub fn wireguard(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (st, _) = states();
    let t0 = Instant::now();
    let mut me = datapath(st, t0);
    let mut peer = Tunnels::new();
    peer.configure(
        tunnel_config(TUN_PEER, 2, TUN_LOCAL, LOCAL_EP, 1),
        t0,
        &mut |_, _| {},
    );
    let mut buf = PacketBuf::new();
    match mode % 4 {
        0 => {
            deliver(&mut me, st, &mut buf, rest, t0);
        }
        1 => {
            handshake(&mut peer, &mut me, st, &mut buf, &[], t0);
            deliver(&mut me, st, &mut buf, rest, t0);
        }
        2 => {
            handshake(&mut peer, &mut me, st, &mut buf, &[], t0);
            let mut wire = Vec::new();
            let _ = peer.send_to(TUN_LOCAL, rest, &mut |d, _| wire.push(d.to_vec()));
            for d in wire {
                deliver(&mut me, st, &mut buf, &d, t0);
            }
        }
        _ => handshake(&mut peer, &mut me, st, &mut buf, rest, t0),
    }
}

/// One datagram from the peer's address into `me`, and whatever it decrypts
/// to through the switch. Returns what `me` sent back into the tunnel.
fn deliver(
    me: &mut Datapath,
    st: &SwitchState,
    buf: &mut PacketBuf,
    d: &[u8],
    now: Instant,
) -> Vec<Vec<u8>> {
    let mut chk = Checker::keeping_tunnel(st);
    me.handle_tunnel_rx(PEER_EP, d, buf, now, &mut chk);
    me.flush(&mut chk);
    chk.tunnel.unwrap_or_default()
}

/// The peer's handshake with `me` and a first data packet (a broadcast on the
/// encrypted network), `mask` XORed over the messages on the way.
fn handshake(
    peer: &mut Tunnels,
    me: &mut Datapath,
    st: &SwitchState,
    buf: &mut PacketBuf,
    mask: &[u8],
    now: Instant,
) {
    let mut first = PacketBuf::new();
    first.load_frame(&udp_frame(
        D,
        [0xff; 6],
        [10, 1, 0, 20],
        [10, 1, 0, 255],
        68,
        67,
        b"x",
    ));
    first.write_vxlan_header(SECURE_VNI);
    let packet = first
        .tunnel_packet(TUN_PEER, TUN_LOCAL, 7)
        .expect("tunnel packet")
        .to_vec();
    let mut to_me = Vec::new();
    let _ = peer.send_to(TUN_LOCAL, &packet, &mut |d, _| to_me.push(d.to_vec()));
    let mut mask = mask;
    // at most a few round trips: initiation, response, keepalive and data
    for _ in 0..4 {
        if to_me.is_empty() {
            break;
        }
        let mut to_peer = Vec::new();
        for mut d in to_me.drain(..) {
            let (m, rest) = mask.split_at(mask.len().min(148));
            xor(&mut d, m);
            mask = rest;
            to_peer.extend(deliver(me, st, buf, &d, now));
        }
        for mut d in to_peer {
            let (m, rest) = mask.split_at(mask.len().min(148));
            xor(&mut d, m);
            mask = rest;
            let mut out = vec![0u8; 2048];
            let _ = peer.receive(LOCAL_EP, &d, &mut out, now, &mut |d, _| {
                to_me.push(d.to_vec())
            });
        }
    }
}

fn xor(d: &mut [u8], mask: &[u8]) {
    for (b, m) in d.iter_mut().zip(mask) {
        *b ^= m;
    }
}

fn dns_table(n: &str) -> Option<Vec<IpAddr>> {
    let (st, _) = states();
    st.networks[&VNI].dns.get(n).cloned()
}

/// Target `dns`: a query (the UDP payload) to the embedded responder, its
/// answer parsed back and written as the reply frame; and the same bytes as a
/// resolver's answer relayed to a client.
pub fn dns(data: &[u8]) {
    let rotate = data.first().map_or(0, |b| usize::from(*b));
    let _ = dns::is_unknown(data, |n| dns_table(n).is_some());
    let peer = udp_reply::UdpPeer {
        client_mac: A,
        client_ip: ip("10.0.0.10"),
        client_port: 40000,
        gateway_mac: GW,
        gateway_ip: ip("10.0.0.1"),
        gateway_port: 53,
    };
    let mut room = vec![0u8; MAX_FRAME];
    if let Some((resp, records)) = dns::answer(data, rotate, dns_table) {
        let m = hickory_proto::op::Message::from_vec(&resp).expect("our answer parses");
        assert_eq!(m.answers.len(), records);
        assert_eq!(
            m.metadata.message_type,
            hickory_proto::op::MessageType::Response
        );
        assert_eq!(
            Some(m.metadata.id),
            data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
        );
        let n = udp_reply::write(&mut room, &peer, &resp).expect("an answer fits a frame");
        check_udp_frame(&room[..n], resp.len());
    }
    if let Some(n) = udp_reply::write(&mut room, &peer, data) {
        check_udp_frame(&room[..n], data.len());
    }
}

fn check_udp_frame(f: &[u8], payload: usize) {
    let p = etherparse::SlicedPacket::from_ethernet(f).expect("a reply frame that parses");
    match p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => assert_eq!(u.payload().len(), payload),
        other => panic!("a reply that is not UDP: {other:?}"),
    }
}

// ---------------------------------------------------------------- seeds

//! Entry points of the fuzz targets (`fuzz/`), written once here so that the
//! targets and the corpus replay test (`tests/fuzz_corpus.rs`) run the same code.
//! Each takes arbitrary bytes and must never panic; the checks below (an action
//! that names a port or VTEP the state does not have, a datagram without its
//! VXLAN header) panic on purpose, so that a wrong answer is a finding too.
//!
//! The pipelines call the sans-IO pieces in the order the worker
//! (`io::worker`) calls them: virtio-net header, checksum completion, UDP
//! segmentation, then [`Switch::from_port`] (a TCP super-frame switched once,
//! then gathered or cut); [`Switch::from_underlay`] and the receive coalescer;
//! [`Tunnels::receive`] then the switch.
//!
//! Not part of the crate's API.

use crate::buf::{PacketBuf, MAX_FRAME};
use crate::conntrack::Conntrack;
use crate::lb::scheduler::Kind;
use crate::offload::{coalesce::Coalescer, gather, segment, vnet};
use crate::switch::{
    Action, BackendView, EgressLocal, EgressView, IngressView, Location, NetworkView, PolicyAction,
    PolicyRule, PortId, PortView, Prefix, PublishedView, ServiceView, Switch, SwitchState,
};
use crate::tunnel::{x25519, Received, TunnelConfig, TunnelPeer, Tunnels};
use crate::wire::{dns, udp_reply, vxlan};
use crate::Mac;
use etherparse::PacketBuilder;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

// ---------------------------------------------------------------- the state

/// Endpoint MACs: A, B on the app network's local ports, R remote; C local on
/// the encrypted network, D behind the tunnel peer; TASK on the ingress network.
pub const A: Mac = [2, 0, 0, 0, 0, 0xa];
pub const B: Mac = [2, 0, 0, 0, 0, 0xb];
pub const R: Mac = [2, 0, 0, 0, 0, 0xc];
pub const C: Mac = [2, 0, 0, 0, 1, 0xa];
pub const D: Mac = [2, 0, 0, 0, 1, 0xd];
pub const GW: Mac = [2, 0x56, 0x58, 0, 0, 7];
pub const SGW: Mac = [2, 0x56, 0x58, 0, 0, 8];
pub const IGW: Mac = [2, 0x56, 0x58, 0, 0x0f, 0xff];
pub const HOST: Mac = [2, 0, 0, 0, 0xff, 1];
pub const SBOX: Mac = [2, 0, 0, 0, 0xff, 2];
pub const SBOX_B: Mac = [2, 0, 0, 0, 0xff, 3];
pub const TASK: Mac = [2, 0, 0, 0, 0xaa, 1];
pub const TASK_B: Mac = [2, 0, 0, 0, 0xbb, 1];

pub const VNI: u32 = 7;
pub const SECURE_VNI: u32 = 8;
pub const INGRESS_VNI: u32 = 4095;
pub const SANDBOX: PortId = PortId(0);
pub const P_A: PortId = PortId(1);
pub const P_B: PortId = PortId(2);
pub const P_C: PortId = PortId(3);
pub const P_TASK: PortId = PortId(5);
/// The egress TAP, and the kernel's and the agent's MACs on it.
pub const P_EGRESS: PortId = PortId(u32::MAX - 1);
pub const EGRESS_HOST: Mac = [2, 0, 0, 0, 0xee, 1];
pub const EGRESS_AGENT: Mac = [2, 0, 0, 0, 0xee, 2];
pub const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const STATIC_PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const VIP_LC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
pub const SANDBOX_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 250, 2);
pub const SANDBOX_IP6: &str = "fdff:ffff:ffff:fa::2";
/// The app network's IPv6 VIP (the same service as [`VIP`]).
pub const VIP6: &str = "fd00::100";
/// Tunnel addresses: this node, and the one WireGuard peer.
pub const TUN_LOCAL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub const TUN_PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn backend(ip: [u8; 4], healthy: bool, local: bool) -> BackendView {
    // the remote tasks are dual-stack (fd00::12, fd00:ff::20)
    let v6 = match ip {
        [10, 0, 0, 12] => Some("fd00::12".parse().expect("address")),
        [10, 255, 0, 20] => Some("fd00:ff::20".parse().expect("address")),
        _ => None,
    };
    BackendView {
        v4: Some(Ipv4Addr::from(ip)),
        v6,
        weight: 1,
        healthy,
        local,
    }
}

/// A node as the agent would install it: an app network (VNI 7: two local
/// endpoints, one remote, a static peer whose MACs are learned, VIPs balanced
/// round robin and least-connections, DNS names, an MTU), an encrypted network
/// (VNI 8, its member behind the WireGuard peer) and the routing mesh (VNI 4095:
/// the sandbox, a local and a remote task, three published ports, policies).
/// `degraded`: the same after a backend left and another went unhealthy (what
/// [`Switch::on_state`] reacts to by resetting connections).
pub fn state(degraded: bool) -> SwitchState {
    let mut st = SwitchState::default();
    // the app network
    let mut net = NetworkView {
        vni: VNI,
        mtu: 1450,
        gateway_mac: GW,
        gateways: vec![ip("10.0.0.1"), ip("fd00::1")],
        members: vec![
            IpAddr::V4(NODE_B),
            IpAddr::V4(STATIC_PEER),
            ip("2001:db8::2"),
        ],
        static_peers: vec![IpAddr::V4(STATIC_PEER)],
        local_ports: vec![P_A, P_B],
        ..Default::default()
    };
    net.macs.insert(A, Location::Local(P_A));
    net.macs.insert(B, Location::Local(P_B));
    net.macs.insert(R, Location::Remote(IpAddr::V4(NODE_B)));
    for (i, m) in [
        ("10.0.0.10", A),
        ("fd00::10", A),
        ("10.0.0.11", B),
        ("10.0.0.12", R),
        ("fd00::12", R),
        ("10.0.0.1", GW),
        ("fd00::1", GW),
        ("10.0.0.100", GW),
        ("10.0.0.101", GW),
        ("fd00::100", GW),
    ] {
        net.neighbors.insert(ip(i), m);
    }
    net.vips.insert(IpAddr::V4(VIP), 0x100);
    net.vips.insert(IpAddr::V4(VIP_LC), 0x101);
    net.vips.insert(ip(VIP6), 0x100);
    let mut rr = vec![backend([10, 0, 0, 11], true, true)];
    if !degraded {
        rr.push(backend([10, 0, 0, 12], true, false));
    }
    net.services.insert(
        0x100,
        ServiceView {
            scheduler: Kind::Rr,
            backends: rr,
        },
    );
    net.services.insert(
        0x101,
        ServiceView {
            scheduler: Kind::Lc,
            backends: vec![
                backend([10, 0, 0, 11], !degraded, true),
                backend([10, 0, 0, 12], true, false),
            ],
        },
    );
    net.backend_ips
        .extend([ip("10.0.0.11"), ip("10.0.0.12"), ip("fd00::12")]);
    net.dns.insert("api".into(), vec![IpAddr::V4(VIP)]);
    net.dns.insert(
        "tasks.api".into(),
        vec![ip("10.0.0.11"), ip("10.0.0.12"), ip("fd00::12")],
    );
    net.dns.insert("web".into(), vec![ip("fd00::12")]);
    st.networks.insert(VNI, net);
    st.ports.insert(
        P_A,
        PortView {
            vni: VNI,
            mac: A,
            ips: vec![ip("10.0.0.10"), ip("fd00::10")],
        },
    );
    st.ports.insert(
        P_B,
        PortView {
            vni: VNI,
            mac: B,
            ips: vec![ip("10.0.0.11")],
        },
    );
    // the encrypted network
    let mut sec = NetworkView {
        vni: SECURE_VNI,
        encrypted: true,
        gateway_mac: SGW,
        gateways: vec![ip("10.1.0.1")],
        members: vec![IpAddr::V4(TUN_PEER)],
        local_ports: vec![P_C],
        ..Default::default()
    };
    sec.macs.insert(C, Location::Local(P_C));
    sec.macs.insert(D, Location::Remote(IpAddr::V4(TUN_PEER)));
    for (i, m) in [("10.1.0.10", C), ("10.1.0.20", D), ("10.1.0.1", SGW)] {
        sec.neighbors.insert(ip(i), m);
    }
    st.networks.insert(SECURE_VNI, sec);
    st.ports.insert(
        P_C,
        PortView {
            vni: SECURE_VNI,
            mac: C,
            ips: vec![ip("10.1.0.10")],
        },
    );
    // the routing mesh
    let mut ing = NetworkView {
        vni: INGRESS_VNI,
        gateway_mac: IGW,
        gateways: vec![ip("10.255.0.1")],
        members: vec![IpAddr::V4(NODE_B)],
        local_ports: vec![P_TASK],
        ..Default::default()
    };
    ing.macs.insert(TASK, Location::Local(P_TASK));
    ing.macs
        .insert(TASK_B, Location::Remote(IpAddr::V4(NODE_B)));
    ing.macs
        .insert(SBOX_B, Location::Remote(IpAddr::V4(NODE_B)));
    for (i, m) in [
        ("10.255.0.10", TASK),
        ("10.255.0.20", TASK_B),
        ("fd00:ff::20", TASK_B),
        ("10.255.0.1", IGW),
    ] {
        ing.neighbors.insert(ip(i), m);
    }
    ing.services.insert(
        0x200,
        ServiceView {
            scheduler: Kind::Sh,
            backends: vec![
                backend([10, 255, 0, 10], true, true),
                backend([10, 255, 0, 20], !degraded, false),
            ],
        },
    );
    ing.backend_ips
        .extend([ip("10.255.0.10"), ip("10.255.0.20"), ip("fd00:ff::20")]);
    st.networks.insert(INGRESS_VNI, ing);
    st.ports.insert(
        P_TASK,
        PortView {
            vni: INGRESS_VNI,
            mac: TASK,
            ips: vec![ip("10.255.0.10")],
        },
    );
    let mut published = rustc_hash::FxHashMap::default();
    for (proto, port, target, host_only) in [
        (6, 8080, 80, false),
        (17, 5353, 53, false),
        (6, 9090, 80, true),
    ] {
        published.insert(
            (proto, port),
            PublishedView {
                fwmark: 0x200,
                target,
                host_only,
            },
        );
    }
    let rule = |proto, port, from: [u8; 4], prefix, action| PolicyRule {
        proto,
        port,
        from: Some((IpAddr::V4(Ipv4Addr::from(from)), prefix)),
        action,
        id: u32::from(port),
        audit: false,
    };
    st.ingress = Some(IngressView {
        port: SANDBOX,
        vni: INGRESS_VNI,
        host_mac: HOST,
        sandbox_ip: SANDBOX_IP,
        sandbox_ip6: Some(SANDBOX_IP6.parse().expect("address")),
        sandbox_mac: SBOX,
        sandbox_macs: [SBOX, SBOX_B].into_iter().collect(),
        enabled: true,
        published,
        policies: vec![
            rule(6, 8080, [203, 0, 113, 0], 24, PolicyAction::Drop),
            rule(6, 8080, [203, 0, 113, 7], 32, PolicyAction::Accept),
            rule(17, 5353, [198, 51, 100, 0], 24, PolicyAction::Reject),
            PolicyRule {
                proto: 6,
                port: 8080,
                from: Some((ip("2001:db8:bad::"), 48)),
                action: PolicyAction::Reject,
                id: 4,
                audit: false,
            },
            // weighed and logged, never applied
            PolicyRule {
                proto: 6,
                port: 8080,
                from: Some((IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)), 24)),
                action: PolicyAction::Drop,
                id: 5,
                audit: true,
            },
        ],
        rate_limit: None,
    });
    st.dns_upstream = vec!["192.0.2.53:53".parse().expect("resolver")];
    st.egress = Some(egress_view());
    // the other vxmesh node, whose doctor probes are answered
    st.nodes = vec![IpAddr::V4(NODE_B)];
    st.tunnel_nodes = vec![IpAddr::V4(TUN_PEER)];
    st
}

/// Egress: the app network leaves through the node (A's addresses come back),
/// the encrypted one is `--internal`.
fn egress_view() -> EgressView {
    let prefix = |a: &str, len| Prefix { addr: ip(a), len };
    let a = EgressLocal {
        port: P_A,
        vni: VNI,
        mac: A,
        gateway_mac: GW,
    };
    EgressView {
        port: P_EGRESS,
        host_mac: EGRESS_HOST,
        mac: EGRESS_AGENT,
        next_hop: Ipv4Addr::new(169, 254, 251, 2),
        next_hop6: "fe80::2".parse().expect("v6"),
        vnis: vec![VNI],
        overlays: vec![
            prefix("10.0.0.0", 24),
            prefix("fd00::", 64),
            prefix("10.1.0.0", 24),
            prefix("10.255.0.0", 16),
        ],
        local: [(ip("10.0.0.10"), a), (ip("fd00::10"), a)]
            .into_iter()
            .collect(),
        guard: crate::switch::NodeGuard {
            tunnel_ports: vec![crate::VXLAN_PORT],
            node_addrs: vec![ip("192.0.2.2"), ip("2001:db8::2")],
            node_udp_ports: vec![51820],
            service_ports: vec![2379, 9100],
        },
    }
}

fn states() -> &'static (SwitchState, SwitchState) {
    static S: OnceLock<(SwitchState, SwitchState)> = OnceLock::new();
    S.get_or_init(|| (state(false), state(true)))
}

/// A switch with its schedulers built for `st` and a small connection table.
fn switch(st: &SwitchState) -> Switch {
    let mut sw = Switch::with_conntrack(64, Arc::new(Mutex::new(Conntrack::new(256))));
    sw.on_state(st);
    sw
}

// ---------------------------------------------------------------- the checks

/// What a driver would do with `a`, checked against the state: every port,
/// VTEP and datagram it names must be real.
fn check_action(st: &SwitchState, a: &Action<'_>, buf: &mut PacketBuf) {
    let is_port = |p: &PortId| {
        st.ports.contains_key(p)
            || st.ingress.as_ref().is_some_and(|i| i.port == *p)
            || st.egress.as_ref().is_some_and(|e| e.port == *p)
    };
    let vxlan_ok = |buf: &PacketBuf| {
        let vni = vxlan::parse(buf.datagram()).expect("a datagram without its VXLAN header");
        assert!(st.networks.contains_key(&vni), "VXLAN to unknown VNI {vni}");
        assert_eq!(buf.datagram().len(), buf.len() + vxlan::VXLAN_HEADER_LEN);
    };
    match *a {
        Action::Deliver(p) | Action::Reply(p) => {
            assert!(is_port(&p), "{a:?} names no port");
            assert!(
                buf.len() >= 14 && buf.len() <= MAX_FRAME,
                "{a:?}: frame of {}",
                buf.len()
            );
        }
        Action::Encap { vtep, secure, .. } => {
            vxlan_ok(buf);
            assert!(
                st.networks
                    .values()
                    .any(|n| n.is_member(&vtep)
                        || n.macs.values().any(|l| *l == Location::Remote(vtep))),
                "encapsulated to {vtep}, no member"
            );
            // (None for a frame too big for the tunnel: the worker counts it)
            if let (true, IpAddr::V4(v)) = (secure, vtep) {
                let _ = buf.tunnel_packet(TUN_LOCAL, v, 1);
            }
        }
        Action::Flood {
            ports,
            skip,
            vteps,
            secure,
            ..
        } => {
            assert!(ports.iter().all(is_port));
            if let Some(s) = skip {
                assert!(is_port(&s));
            }
            if !vteps.is_empty() {
                vxlan_ok(buf);
                if secure {
                    let _ = buf.tunnel_packet(TUN_LOCAL, TUN_PEER, 1);
                }
            }
        }
        Action::ForwardDns {
            port, payload_off, ..
        } => {
            assert!(is_port(&port));
            assert!(payload_off <= buf.len(), "DNS payload past the frame");
        }
        Action::ProbeReply { vtep, secure } => {
            let nodes = if secure { &st.tunnel_nodes } else { &st.nodes };
            assert!(nodes.contains(&vtep), "a probe answered to {vtep}");
            let p = crate::wire::probe::parse(buf.datagram()).expect("an answer that is no probe");
            assert_eq!(p.kind, crate::wire::probe::Kind::Reply);
            if let (true, IpAddr::V4(v)) = (secure, vtep) {
                let _ = buf.tunnel_packet(TUN_LOCAL, v, 1);
            }
        }
        Action::ProbeAnswer(a) => {
            let nodes = if a.secure {
                &st.tunnel_nodes
            } else {
                &st.nodes
            };
            assert!(
                nodes.contains(&a.from),
                "an answer handed up from {}",
                a.from
            );
        }
        Action::Drop(_) => {}
    }
}

/// After the records: time passes, the state changes (a backend leaves), and
/// the connections that went with it are reset at both ends; then the table
/// expires. Exercises the RSTs written from what the fuzzed frames left tracked.
fn settle(sw: &mut Switch, now_ms: u64) {
    let (_, degraded) = states();
    let mut buf = PacketBuf::new();
    for e in sw.on_state(degraded) {
        for to_client in [true, false] {
            let a = sw.reset(degraded, &e, to_client, &mut buf);
            check_action(degraded, &a, &mut buf);
        }
    }
    let ct = sw.conntrack();
    let mut ct = ct.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    ct.expire(now_ms + 3_600_000, |_| {});
}

// ---------------------------------------------------------------- records

/// The pipeline targets' input: up to [`MAX_RECORDS`] records, each a control
/// byte, a big-endian u16 length and that many bytes (or what is left).
pub const MAX_RECORDS: usize = 16;

/// Splits `data` into (control byte, payload) records.
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 3 && out.len() < MAX_RECORDS {
        let ctl = data[0];
        let n = usize::from(u16::from_be_bytes([data[1], data[2]])).min(data.len() - 3);
        out.push((ctl, &data[3..3 + n]));
        data = &data[3 + n..];
    }
    out
}

/// Builds a pipeline input from records (for seeds and tests).
pub fn encode(records: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ctl, d) in records {
        out.push(*ctl);
        out.extend_from_slice(&(d.len().min(0xffff) as u16).to_be_bytes());
        out.extend_from_slice(&d[..d.len().min(0xffff)]);
    }
    out
}

/// Control byte bit: the record is a virtio-net header (10 bytes) and a frame.
pub const CTL_VNET: u8 = 0x08;
/// Control byte bit: the record comes in from the other side (a TAP-side
/// record in the underlay target and the other way round).
pub const CTL_OTHER_SIDE: u8 = 0x80;

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
/// virtio-net header comes first (then it is completed or segmented as the
/// worker does), `(ctl >> 4) & 7` seconds pass before it.
fn tap_record(
    sw: &mut Switch,
    st: &SwitchState,
    bufs: &mut [PacketBuf; 2],
    ctl: u8,
    d: &[u8],
    now: u64,
) {
    let port = PORTS[usize::from(ctl & 7)];
    let [buf, seg] = bufs;
    if ctl & CTL_VNET == 0 {
        buf.load_frame(d);
        let a = sw.from_port(st, port, buf, now);
        check_action(st, &a, buf);
        return;
    }
    let Some(h) = vnet::VnetHdr::parse(d) else {
        return;
    };
    buf.load_frame(&d[vnet::LEN..]);
    if !h.is_gso() {
        if h.flags & vnet::F_NEEDS_CSUM != 0 && !vnet::finish_checksum(buf.data_mut(), &h) {
            return;
        }
        let a = sw.from_port(st, port, buf, now);
        check_action(st, &a, buf);
        return;
    }
    let frame = buf.data();
    let size = usize::from(h.gso_size);
    if size == 0 {
        return;
    }
    if h.gso_type & !vnet::GSO_ECN == vnet::GSO_UDP_L4 {
        let Some(l4) = segment::parse_udp(frame) else {
            return;
        };
        for i in 0..segment::udp_count(frame, l4, size).min(64) {
            let Some(len) = segment::write_udp_segment(frame, l4, size, i, seg.frame_slot()) else {
                break;
            };
            seg.set_frame_len(len);
            let a = sw.from_port(st, port, seg, now);
            check_action(st, &a, seg);
        }
        return;
    }
    let Some(t) = segment::parse_tcp(frame) else {
        return;
    };
    // switched once, then cut: gathered for a VTEP in the clear, copied else
    buf.set_segmented(Some(crate::buf::Segmented {
        hdr_len: t.payload_off,
        mss: size,
    }));
    let a = sw.from_port(st, port, buf, now);
    check_action(st, &a, buf);
    let frame = buf.data();
    if let (Action::Encap { secure: false, .. }, Some(vx)) = (
        a,
        buf.datagram()
            .get(..8)
            .and_then(|h| <[u8; 8]>::try_from(h).ok()),
    ) {
        let _ = gather::Gather::default().segments(&vx, frame, &t, size, |r| {
            let bytes: usize = r.parts.iter().map(|p| p.len()).sum();
            assert!(r.parts.len() == 2 * r.count && r.count <= gather::GSO_MAX_SEGMENTS);
            assert!(bytes <= gather::GSO_MAX_BYTES && bytes <= r.count * usize::from(r.seg));
        });
        return;
    }
    for i in 0..segment::count(frame, &t, size).min(64) {
        if segment::write_segment(frame, &t, size, i, seg.frame_slot()).is_none() {
            break;
        }
    }
}

/// A VXLAN datagram from the underlay: `ctl & 7` picks the sender, bit 3 says
/// it came out of the tunnel; deliveries go through the receive coalescer.
#[allow(clippy::too_many_arguments)]
fn underlay_record(
    sw: &mut Switch,
    st: &SwitchState,
    buf: &mut PacketBuf,
    co: &mut Coalescer,
    ctl: u8,
    d: &[u8],
    now: u64,
) {
    let src = vteps()[usize::from(ctl & 7)];
    let secure = ctl & 0x08 != 0;
    buf.load_datagram(d);
    let a = sw.from_underlay(st, src, buf, now, secure);
    check_action(st, &a, buf);
    receive(co, &a, buf);
}

/// The worker's receive side: deliveries coalesce, anything else flushes.
fn receive(co: &mut Coalescer, a: &Action<'_>, buf: &PacketBuf) {
    if matches!(a, Action::Deliver(_)) {
        if co.push(buf.data()) {
            return;
        }
        flush(co);
        if co.push(buf.data()) {
            return;
        }
    }
    flush(co);
}

fn flush(co: &mut Coalescer) {
    if let Some((h, frame)) = co.take() {
        assert!(frame.len() <= MAX_FRAME);
        if h.is_gso() {
            assert!(h.gso_size > 0, "a super-frame with no segment size");
        }
    }
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

fn pipeline(data: &[u8], underlay: bool) {
    let (st, _) = states();
    let mut sw = switch(st);
    let mut bufs = [PacketBuf::new(), PacketBuf::new()];
    let mut co = Coalescer::new();
    let mut now = 1_000u64;
    for (ctl, d) in records(data) {
        now += u64::from((ctl >> 4) & 7) * 1_000;
        if underlay != (ctl & CTL_OTHER_SIDE != 0) {
            underlay_record(&mut sw, st, &mut bufs[0], &mut co, ctl, d, now);
        } else {
            flush(&mut co);
            tap_record(&mut sw, st, &mut bufs, ctl, d, now);
        }
    }
    flush(&mut co);
    settle(&mut sw, now);
}

// ---------------------------------------------------------------- WireGuard

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

fn tunnels(local: Ipv4Addr, me: u8, peer: Ipv4Addr, peer_ep: SocketAddr, them: u8) -> Tunnels {
    let mut t = Tunnels::new();
    t.configure(
        TunnelConfig {
            local_vtep: local,
            keys: vec![key(me)],
            preshared: None,
            peers: vec![TunnelPeer {
                vtep: peer,
                endpoint: peer_ep,
                public: public(key(them)),
            }],
        },
        &mut |_, _| {},
    );
    t
}

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
    let mut me = tunnels(TUN_LOCAL, 1, TUN_PEER, PEER_EP, 2);
    let mut peer = tunnels(TUN_PEER, 2, TUN_LOCAL, LOCAL_EP, 1);
    let mut sw = switch(st);
    let mut buf = PacketBuf::new();
    match mode % 4 {
        0 => {
            deliver(&mut me, &mut sw, st, &mut buf, rest);
        }
        1 => {
            handshake(&mut peer, &mut me, &mut sw, st, &mut buf, &[]);
            deliver(&mut me, &mut sw, st, &mut buf, rest);
        }
        2 => {
            handshake(&mut peer, &mut me, &mut sw, st, &mut buf, &[]);
            let mut wire = Vec::new();
            let _ = peer.send_to(TUN_LOCAL, rest, &mut |d, _| wire.push(d.to_vec()));
            for d in wire {
                deliver(&mut me, &mut sw, st, &mut buf, &d);
            }
        }
        _ => handshake(&mut peer, &mut me, &mut sw, st, &mut buf, rest),
    }
}

/// One datagram from the peer's address into `me`, and whatever it decrypts to
/// through the switch. Returns what `me` sent back.
fn deliver(
    me: &mut Tunnels,
    sw: &mut Switch,
    st: &SwitchState,
    buf: &mut PacketBuf,
    d: &[u8],
) -> Vec<Vec<u8>> {
    let mut back = Vec::new();
    let r = me.receive(PEER_EP, d, buf.tunnel_slot(), &mut |d, _| {
        back.push(d.to_vec())
    });
    if let Received::Vxlan { vtep, offset, len } = r {
        assert_eq!(vtep, IpAddr::V4(TUN_PEER));
        buf.set_tunnel_received(offset, len);
        let a = sw.from_underlay(st, vtep, buf, 1_000, true);
        check_action(st, &a, buf);
    }
    back
}

/// The peer's handshake with `me` and a first data packet (a broadcast on the
/// encrypted network), `mask` XORed over the messages on the way.
fn handshake(
    peer: &mut Tunnels,
    me: &mut Tunnels,
    sw: &mut Switch,
    st: &SwitchState,
    buf: &mut PacketBuf,
    mask: &[u8],
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
            to_peer.extend(deliver(me, sw, st, buf, &d));
        }
        for mut d in to_peer {
            let (m, rest) = mask.split_at(mask.len().min(148));
            xor(&mut d, m);
            mask = rest;
            let mut out = vec![0u8; 2048];
            let _ = peer.receive(LOCAL_EP, &d, &mut out, &mut |d, _| to_me.push(d.to_vec()));
        }
    }
}

fn xor(d: &mut [u8], mask: &[u8]) {
    for (b, m) in d.iter_mut().zip(mask) {
        *b ^= m;
    }
}

// ---------------------------------------------------------------- DNS

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

/// An IPv4/UDP frame.
pub fn udp_frame(
    src: Mac,
    dst: Mac,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4(sip, dip, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("frame");
    out
}

/// An IPv4/TCP frame with `flags` (SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04).
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    src: Mac,
    dst: Mac,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv4(sip, dip, 64)
        .tcp(sport, dport, 1000, 65535);
    let mut out = Vec::new();
    with_flags(b, flags)
        .write(&mut out, payload)
        .expect("frame");
    out
}

/// Sets SYN (0x02), ACK (0x10, acknowledging 1), FIN (0x01) and RST (0x04)
/// from `flags`.
fn with_flags(
    mut b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    flags: u8,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    b
}

/// [`tcp_frame`] over IPv6.
#[allow(clippy::too_many_arguments)]
pub fn tcp6_frame(
    src: Mac,
    dst: Mac,
    sip: &str,
    dip: &str,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv6(v6(sip), v6(dip), 64)
        .tcp(sport, dport, 1000, 65535);
    let mut out = Vec::new();
    with_flags(b, flags)
        .write(&mut out, payload)
        .expect("frame");
    out
}

fn arp_request(src: Mac, sip: [u8; 4], tip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tip);
    f
}

pub(crate) fn dns_query(id: u16, name: &str, aaaa: bool) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    let t = if aaaa {
        RecordType::AAAA
    } else {
        RecordType::A
    };
    m.add_query(Query::query(Name::from_str(name).expect("name"), t));
    m.to_vec().expect("query")
}

pub(crate) fn icmpv6_solicitation(src: Mac, sip: &str, target: &str) -> Vec<u8> {
    let sip: std::net::Ipv6Addr = sip.parse().expect("v6");
    let target: std::net::Ipv6Addr = target.parse().expect("v6");
    let t = target.octets();
    let dip = [
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    ];
    let dip = std::net::Ipv6Addr::new(
        dip[0], dip[1], dip[2], dip[3], dip[4], dip[5], dip[6], dip[7],
    );
    let mut body = Vec::new();
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&t);
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
        .ipv6(sip.octets(), dip.octets(), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut out, &body[4..])
        .expect("frame");
    out
}

/// An extension header of 8 bytes holding one PadN option: a hop-by-hop or
/// destination options header (its Next Header is filled in by [`icmpv6_frame`]).
pub fn ext_options() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A Fragment header at `offset` (in 8-byte units); offset 0 without `more`
/// is an atomic fragment.
pub fn ext_fragment(offset: u16, more: bool) -> Vec<u8> {
    let o = offset << 3 | u16::from(more);
    let mut f = vec![0, 0];
    f.extend_from_slice(&o.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x5e, 0xed]);
    f
}

/// An ICMPv6 message of type `kind` (`body`: what follows its 4-byte header)
/// from `src` at fe80::a to all-nodes, hop limit 255 as neighbour discovery
/// has it, behind the extension headers `exts` (protocol number and bytes;
/// each Next Header is filled in here), with a valid checksum: what a container
/// would send to hide a router advertisement from the guard.
pub fn icmpv6_frame(src: Mac, kind: u8, body: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let sip: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
    let dip: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 0, 255]);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&dip);
    f[20] = exts.first().map_or(58, |e| e.0);
    for (i, (_, h)) in exts.iter().enumerate() {
        let at = f.len();
        f.extend_from_slice(h);
        f[at] = exts.get(i + 1).map_or(58, |e| e.0);
    }
    let icmp_at = f.len();
    f.extend_from_slice(&[kind, 0, 0, 0]);
    f.extend_from_slice(body);
    let plen = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    // the pseudo-header (RFC 8200 8.1), then the message
    let icmp_len = (f.len() - icmp_at) as u32;
    let mut sum: u32 = 58 + (icmp_len >> 16) + (icmp_len & 0xffff);
    let mut words = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    words(&sip);
    words(&dip);
    words(&f[icmp_at..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[icmp_at + 2..icmp_at + 4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

/// A router advertisement's body after its ICMPv6 header: hop limit 64,
/// router lifetime 1800 s, then a prefix information option for 2001:db8::/64
/// (autoconfiguration on), which would give every host a route through the
/// sender.
pub fn router_advertisement_body() -> Vec<u8> {
    let mut b = vec![64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[
        3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x07, 0x08, 0, 0, 0, 0,
    ]);
    b.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b
}

/// A neighbour advertisement's body: override set, for `target` at `lladdr`
/// (a target link-layer address option).
pub fn neighbor_advertisement_body(target: &str, lladdr: Mac) -> Vec<u8> {
    let target: std::net::Ipv6Addr = target.parse().expect("v6");
    let mut b = vec![0x20, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[2, 1]);
    b.extend_from_slice(&lladdr);
    b
}

/// A VXLAN datagram of `frame` on `vni`.
pub fn datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::VXLAN_HEADER_LEN];
    vxlan::emit(&mut d, vni);
    d.extend_from_slice(frame);
    d
}

fn vnet_frame(h: vnet::VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; vnet::LEN];
    h.emit(&mut out);
    out.extend_from_slice(frame);
    out
}

/// Valid inputs for each target, by name: what the committed corpus started
/// from (`tests/fuzz_corpus.rs` writes them out with `--ignored`).
pub fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    let sip = [10, 0, 0, 10];
    let big = vec![0x5a; 3000];
    match target {
        "switch_tap" => {
            let syn = tcp_frame(A, GW, sip, VIP.octets(), 40000, 80, 0x02, b"");
            let ack = tcp_frame(A, GW, sip, VIP.octets(), 40000, 80, 0x10, b"GET /");
            let syn_ack = tcp_frame(R, GW, [10, 0, 0, 12], sip, 80, 40000, 0x12, b"");
            let fin = tcp_frame(A, GW, sip, VIP.octets(), 40000, 80, 0x11, b"");
            let tso = tcp_frame(A, R, sip, [10, 0, 0, 12], 40001, 80, 0x10, &big);
            let uso = udp_frame(A, R, sip, [10, 0, 0, 12], 40002, 53, &big);
            let csum = vnet::VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..Default::default()
            };
            let gso = |t, hdr_len| vnet::VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: t,
                hdr_len,
                gso_size: 1000,
                csum_start: 34,
                csum_offset: if t == vnet::GSO_UDP_L4 { 6 } else { 16 },
            };
            let in_syn = tcp_frame(
                HOST,
                SBOX,
                [198, 51, 100, 7],
                SANDBOX_IP.octets(),
                50000,
                8080,
                0x02,
                b"",
            );
            let in_denied = tcp_frame(
                HOST,
                SBOX,
                [203, 0, 113, 9],
                SANDBOX_IP.octets(),
                50001,
                8080,
                0x02,
                b"",
            );
            let in_udp = udp_frame(
                HOST,
                SBOX,
                [198, 51, 100, 9],
                SANDBOX_IP.octets(),
                50002,
                5353,
                b"q",
            );
            let task_reply = tcp_frame(
                TASK,
                IGW,
                [10, 255, 0, 10],
                [198, 51, 100, 7],
                80,
                50000,
                0x12,
                b"",
            );
            vec![
                (
                    "local_udp",
                    encode(&[(1, &udp_frame(A, B, sip, [10, 0, 0, 11], 1000, 2000, b"hi"))]),
                ),
                (
                    "remote_udp",
                    encode(&[(1, &udp_frame(A, R, sip, [10, 0, 0, 12], 1000, 2000, b"hi"))]),
                ),
                (
                    "arp_request",
                    encode(&[(1, &arp_request(A, sip, [10, 0, 0, 12]))]),
                ),
                (
                    "arp_sandbox",
                    encode(&[(
                        0,
                        &arp_request(HOST, [169, 254, 250, 1], SANDBOX_IP.octets()),
                    )]),
                ),
                (
                    "nd_solicitation",
                    encode(&[(1, &icmpv6_solicitation(A, "fd00::10", "fd00::12"))]),
                ),
                (
                    "ra_behind_dest_opts",
                    encode(&[(
                        1,
                        &icmpv6_frame(A, 134, &router_advertisement_body(), &[(60, ext_options())]),
                    )]),
                ),
                (
                    "ra_behind_hop_by_hop_and_dest_opts",
                    encode(&[(
                        1,
                        &icmpv6_frame(
                            A,
                            134,
                            &router_advertisement_body(),
                            &[(0, ext_options()), (60, ext_options())],
                        ),
                    )]),
                ),
                (
                    "ra_atomic_fragment",
                    encode(&[(
                        1,
                        &icmpv6_frame(
                            A,
                            134,
                            &router_advertisement_body(),
                            &[(44, ext_fragment(0, false))],
                        ),
                    )]),
                ),
                (
                    "na_fragmented",
                    encode(&[(
                        1,
                        &icmpv6_frame(
                            A,
                            136,
                            &neighbor_advertisement_body("fd00::10", A),
                            &[(44, ext_fragment(0, true))],
                        ),
                    )]),
                ),
                (
                    "na_forged_behind_dest_opts",
                    encode(&[(
                        1,
                        &icmpv6_frame(
                            A,
                            136,
                            &neighbor_advertisement_body("fd00::12", A),
                            &[(60, ext_options())],
                        ),
                    )]),
                ),
                (
                    "dns_known",
                    encode(&[(
                        1,
                        &udp_frame(
                            A,
                            GW,
                            sip,
                            [10, 0, 0, 1],
                            5353,
                            53,
                            &dns_query(9, "tasks.api.", false),
                        ),
                    )]),
                ),
                (
                    "dns_unknown",
                    encode(&[(
                        1,
                        &udp_frame(
                            A,
                            GW,
                            sip,
                            [10, 0, 0, 1],
                            5353,
                            53,
                            &dns_query(10, "example.org.", true),
                        ),
                    )]),
                ),
                (
                    "vip_connection",
                    encode(&[
                        (1, &syn),
                        (0x80 | 0x10, &datagram(VNI, &syn_ack)),
                        (1, &ack),
                        (0x11, &fin),
                    ]),
                ),
                (
                    "vip6_syn",
                    encode(&[(
                        1,
                        &tcp6_frame(A, GW, "fd00::10", VIP6, 40010, 80, 0x02, b""),
                    )]),
                ),
                (
                    "sandbox6",
                    encode(&[
                        (
                            0,
                            &icmpv6_solicitation(HOST, "fdff:ffff:ffff:fa::1", SANDBOX_IP6),
                        ),
                        (
                            0,
                            &tcp6_frame(
                                HOST,
                                SBOX,
                                "2001:db8::7",
                                SANDBOX_IP6,
                                50010,
                                8080,
                                0x02,
                                b"",
                            ),
                        ),
                    ]),
                ),
                (
                    "vip_lc",
                    encode(&[(1, &udp_frame(A, GW, sip, VIP_LC.octets(), 1000, 53, b"q"))]),
                ),
                (
                    "too_big",
                    encode(&[(
                        1,
                        &udp_frame(A, R, sip, [10, 0, 0, 12], 1000, 2000, &big[..1500]),
                    )]),
                ),
                (
                    "vnet_csum",
                    encode(&[(
                        1 | CTL_VNET,
                        &vnet_frame(csum, &udp_frame(A, B, sip, [10, 0, 0, 11], 1, 2, b"c")),
                    )]),
                ),
                (
                    "vnet_tso",
                    encode(&[(1 | CTL_VNET, &vnet_frame(gso(vnet::GSO_TCPV4, 54), &tso))]),
                ),
                (
                    "vnet_uso",
                    encode(&[(1 | CTL_VNET, &vnet_frame(gso(vnet::GSO_UDP_L4, 42), &uso))]),
                ),
                (
                    "ingress",
                    encode(&[
                        (0, &in_syn),
                        (4, &task_reply),
                        (0, &in_denied),
                        (0, &in_udp),
                    ]),
                ),
                (
                    "secure_broadcast",
                    encode(&[(3, &arp_request(C, [10, 1, 0, 10], [10, 1, 0, 99]))]),
                ),
                (
                    // out through the egress TAP, the kernel's neighbour
                    // questions and the reply back; the internal network's try
                    "egress",
                    encode(&[
                        (
                            1,
                            &tcp_frame(A, GW, sip, [192, 0, 2, 80], 40000, 80, 0x02, b""),
                        ),
                        (
                            7,
                            &arp_request(EGRESS_HOST, [169, 254, 251, 1], [169, 254, 251, 2]),
                        ),
                        (7, &icmpv6_solicitation(EGRESS_HOST, "fe80::1", "fe80::2")),
                        (
                            7,
                            &tcp_frame(
                                EGRESS_HOST,
                                EGRESS_AGENT,
                                [192, 0, 2, 80],
                                sip,
                                80,
                                40000,
                                0x12,
                                b"",
                            ),
                        ),
                        (
                            3,
                            &udp_frame(C, SGW, [10, 1, 0, 10], [192, 0, 2, 80], 1, 2, b"i"),
                        ),
                    ]),
                ),
            ]
        }
        "switch_underlay" => {
            let r = udp_frame(R, A, [10, 0, 0, 12], [10, 0, 0, 10], 2000, 1000, b"hi");
            let learned = udp_frame(
                [2, 9, 9, 9, 9, 9],
                A,
                [10, 0, 0, 77],
                [10, 0, 0, 10],
                1,
                2,
                b"k",
            );
            let seg = |seq: u32| {
                let mut f = tcp_frame(
                    R,
                    A,
                    [10, 0, 0, 12],
                    [10, 0, 0, 10],
                    80,
                    40000,
                    0x10,
                    &[7; 1000],
                );
                f[38..42].copy_from_slice(&seq.to_be_bytes());
                f
            };
            let from_b = tcp_frame(
                SBOX_B,
                TASK,
                [198, 51, 100, 7],
                [10, 255, 0, 10],
                50000,
                80,
                0x02,
                b"",
            );
            let task_reply = tcp_frame(
                TASK,
                IGW,
                [10, 255, 0, 10],
                [198, 51, 100, 7],
                80,
                50000,
                0x12,
                b"",
            );
            let to_sbox = tcp_frame(
                TASK_B,
                SBOX,
                [10, 255, 0, 20],
                [198, 51, 100, 7],
                80,
                50000,
                0x12,
                b"",
            );
            let probe = |kind: u8| {
                let mut d = vec![0u8; 200];
                crate::wire::probe::emit_request(&mut d, 77).expect("fits");
                if kind == 2 {
                    crate::wire::probe::make_reply(&mut d, 1_700_000_000_000);
                }
                d
            };
            vec![
                ("probe_request", encode(&[(0, &probe(1))])),
                ("probe_request_tunnel", encode(&[(0x0c, &probe(1))])),
                ("probe_reply", encode(&[(0, &probe(2))])),
                ("probe_stranger", encode(&[(2, &probe(1))])),
                ("deliver", encode(&[(0, &datagram(VNI, &r))])),
                (
                    "broadcast",
                    encode(&[(
                        0,
                        &datagram(VNI, &arp_request(R, [10, 0, 0, 12], [10, 0, 0, 10])),
                    )]),
                ),
                (
                    "learn_static_peer",
                    encode(&[(1, &datagram(VNI, &learned))]),
                ),
                ("not_member", encode(&[(2, &datagram(VNI, &r))])),
                ("v6_underlay", encode(&[(3, &datagram(VNI, &r))])),
                (
                    "coalesced",
                    encode(&[
                        (0, &datagram(VNI, &seg(1000))),
                        (0, &datagram(VNI, &seg(2000))),
                        (0, &datagram(VNI, &seg(3000))),
                    ]),
                ),
                (
                    "secure_plain_refused",
                    encode(&[(4, &datagram(SECURE_VNI, &r))]),
                ),
                (
                    "secure",
                    encode(&[(
                        4 | 8,
                        &datagram(
                            SECURE_VNI,
                            &udp_frame(D, C, [10, 1, 0, 20], [10, 1, 0, 10], 1, 2, b"s"),
                        ),
                    )]),
                ),
                (
                    "ingress_return",
                    encode(&[(0, &datagram(INGRESS_VNI, &from_b)), (0x84, &task_reply)]),
                ),
                (
                    "to_sandbox",
                    encode(&[
                        (
                            0x80,
                            &tcp_frame(
                                HOST,
                                SBOX,
                                [198, 51, 100, 7],
                                SANDBOX_IP.octets(),
                                50000,
                                8080,
                                0x02,
                                b"",
                            ),
                        ),
                        (0, &datagram(INGRESS_VNI, &to_sbox)),
                    ]),
                ),
            ]
        }
        "wireguard" => {
            let inner_frame = udp_frame(D, C, [10, 1, 0, 20], [10, 1, 0, 10], 1, 2, b"s");
            let mut p = PacketBuf::new();
            p.load_frame(&inner_frame);
            p.write_vxlan_header(SECURE_VNI);
            let inner_pkt = p
                .tunnel_packet(TUN_PEER, TUN_LOCAL, 3)
                .expect("packet")
                .to_vec();
            let mut bad_inner = inner_pkt.clone();
            bad_inner[22] ^= 0xff; // not to 4789
            let mut data = vec![4, 0, 0, 0];
            data.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            data.extend_from_slice(&[0; 48]);
            let mut init = vec![1, 0, 0, 0];
            init.resize(148, 0);
            let mode = |m: u8, rest: &[u8]| {
                let mut v = vec![m];
                v.extend_from_slice(rest);
                v
            };
            vec![
                ("raw_data", mode(0, &data)),
                ("raw_init", mode(0, &init)),
                ("session_data", mode(1, &data)),
                ("inner_vxlan", mode(2, &inner_pkt)),
                ("inner_not_vxlan", mode(2, &bad_inner)),
                ("handshake", mode(3, &[])),
                ("handshake_flip", mode(3, &[0, 0, 0, 0, 0, 0, 0, 0, 1])),
            ]
        }
        "dns" => vec![
            ("a_service", dns_query(1, "api.", false)),
            ("a_tasks", dns_query(2, "tasks.api.", false)),
            ("aaaa", dns_query(3, "web.", true)),
            ("unknown", dns_query(4, "example.org.", false)),
            ("upper", dns_query(5, "TASKS.API.", true)),
        ],
        _ => Vec::new(),
    }
}

/// A target: it takes any bytes.
pub type Target = fn(&[u8]);

/// The targets of this module, by name.
pub const TARGETS: [(&str, Target); 4] = [
    ("switch_tap", switch_tap),
    ("switch_underlay", switch_underlay),
    ("wireguard", wireguard),
    ("dns", dns),
];

/// A target's seeds, by name (each crate's `seeds`).
pub type Seeds = fn(&str) -> Vec<(&'static str, Vec<u8>)>;

/// Runs every target's seeds and every file of its committed corpus
/// (`corpus/TARGET/*`) through it: what the fuzzers kept stays checked on
/// stable, in `cargo test`, for both crates' targets.
pub fn replay_corpus(corpus: &std::path::Path, targets: &[(&str, Target)], seeds: Seeds) {
    for (name, run) in targets {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for (_, s) in &seeds {
            run(s);
        }
        let dir = corpus.join(name);
        let mut files = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.expect("entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            // a panic names the file, to reproduce with `cargo fuzz run NAME FILE`
            eprintln!("{}", path.display());
            run(&data);
            files += 1;
        }
        assert!(files >= seeds.len(), "{}: corpus missing", dir.display());
    }
}

/// Writes every target's seeds into `corpus/TARGET/seed-NAME`.
pub fn write_seeds(corpus: &std::path::Path, targets: &[(&str, Target)], seeds: Seeds) {
    for (name, _) in targets {
        let dir = corpus.join(name);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (seed, data) in seeds(name) {
            std::fs::write(dir.join(format!("seed-{seed}")), data).expect("seed");
        }
    }
}

//! The node the fuzz targets (and many unit tests) run against: its
//! endpoints, networks, services, ingress and egress, as the agent would
//! install them.

use crate::lb::scheduler::Kind;
use crate::switch::{
    BackendView, EgressLocal, EgressView, IngressView, Location, NetworkView, PolicyAction,
    PolicyRule, PortId, PortView, Prefix, PublishedView, ServiceView, SwitchState,
};
use crate::Mac;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

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

pub(super) fn ip(s: &str) -> IpAddr {
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

/// The state, and the same degraded (see [`state`]), built once.
pub(super) fn states() -> &'static (Arc<SwitchState>, Arc<SwitchState>) {
    static S: OnceLock<(Arc<SwitchState>, Arc<SwitchState>)> = OnceLock::new();
    S.get_or_init(|| (Arc::new(state(false)), Arc::new(state(true))))
}

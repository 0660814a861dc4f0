//! Egress through the core: a container's frame for outside every overlay goes
//! to the egress TAP (not from an `--internal` network), and what the kernel
//! writes back there reaches only local endpoints of networks with egress.

use super::*;
use crate::wire::build;
use crate::wire::neighbor::tests::{arp_request, solicitation};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Network "open" (VNI 10, 10.10.0.0/24 and fd10::/64) with a local endpoint
/// and a remote one; network "closed" (VNI 20, `--internal`, 10.20.0.0/24) with
/// a local endpoint and a VIP.
const OPEN: u32 = 10;
const CLOSED: u32 = 20;
const A: Mac = [2, 0, 0, 0, 0x10, 1];
const R: Mac = [2, 0, 0, 0, 0x10, 2];
const C: Mac = [2, 0, 0, 0, 0x20, 1];
const GW_OPEN: Mac = [2, 0x56, 0x58, 0, 0, 10];
const GW_CLOSED: Mac = [2, 0x56, 0x58, 0, 0, 20];
const HOST: Mac = [2, 0, 0, 0, 0xee, 1];
const AGENT: Mac = [2, 0, 0, 0, 0xee, 2];
const A_PORT: PortId = PortId(1);
const C_PORT: PortId = PortId(2);
const EGRESS: PortId = PortId(u32::MAX - 1);
const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(169, 254, 251, 2);
const OUTSIDE: [u8; 4] = [192, 0, 2, 80];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix {
        addr: ip(a),
        len: l.parse().unwrap(),
    }
}

fn state() -> SwitchState {
    let mut st = SwitchState::default();
    for (vni, gw, gw_mac, port, mac, ips) in [
        (
            OPEN,
            "10.10.0.1",
            GW_OPEN,
            A_PORT,
            A,
            vec![ip("10.10.0.10"), ip("fd10::10")],
        ),
        (
            CLOSED,
            "10.20.0.1",
            GW_CLOSED,
            C_PORT,
            C,
            vec![ip("10.20.0.10")],
        ),
    ] {
        let mut net = NetworkView {
            vni,
            gateway_mac: gw_mac,
            gateways: vec![ip(gw)],
            local_ports: vec![port],
            ..Default::default()
        };
        net.macs.insert(mac, Location::Local(port));
        for i in &ips {
            net.neighbors.insert(*i, mac);
        }
        st.networks.insert(vni, net);
        st.ports.insert(port, PortView { vni, mac, ips });
    }
    let open = st.networks.get_mut(&OPEN).unwrap();
    open.macs.insert(R, Location::Remote(ip("192.0.2.2")));
    open.neighbors.insert(ip("10.10.0.20"), R);
    let closed = st.networks.get_mut(&CLOSED).unwrap();
    closed.internal = true;
    closed
        .vips
        .insert(Ipv4Addr::new(10, 20, 0, 100).into(), 0x100);
    let mut local = FxHashMap::default();
    for a in ["10.10.0.10", "fd10::10"] {
        local.insert(
            ip(a),
            EgressLocal {
                port: A_PORT,
                vni: OPEN,
                mac: A,
                gateway_mac: GW_OPEN,
            },
        );
    }
    st.egress = Some(EgressView {
        port: EGRESS,
        host_mac: HOST,
        mac: AGENT,
        next_hop: NEXT_HOP,
        next_hop6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
        vnis: vec![OPEN],
        overlays: ["10.10.0.0/24", "fd10::/64", "10.20.0.0/24"]
            .iter()
            .map(|p| prefix(p))
            .collect(),
        local,
        guard: NodeGuard {
            tunnel_ports: vec![crate::VXLAN_PORT],
            node_addrs: vec![ip("192.0.2.2"), ip("2001:db8::2")],
            node_udp_ports: vec![51820],
            service_ports: vec![2379, 9100],
        },
    });
    st
}

fn tcp4(src: Mac, dst: Mac, sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let syn = build::tcp(40000, 80, 1, crate::wire::tcp::SYN);
    build::eth(src, dst).ipv4(sip, dip).tcp(syn, &[])
}

fn udp6(src: Mac, dst: Mac, sip: &str, dip: &str) -> Vec<u8> {
    let (s, d): (Ipv6Addr, Ipv6Addr) = (sip.parse().unwrap(), dip.parse().unwrap());
    build::eth(src, dst).ipv6(s, d).udp(40000, 53, b"q")
}

fn buf(frame: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::new();
    b.load_frame(frame);
    b
}

#[test]
fn a_packet_for_outside_leaves_through_the_egress_tap_addressed_to_the_kernel() {
    let st = state();
    let mut sw = Switch::new(16);
    let f = tcp4(A, GW_OPEN, [10, 10, 0, 10], OUTSIDE);
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::Deliver(EGRESS)
    );
    let out = b.data();
    assert_eq!(&out[0..6], &HOST, "to the kernel's side of the TAP");
    assert_eq!(&out[6..12], &AGENT);
    assert_eq!(
        &out[12..],
        &f[12..],
        "the packet itself is the kernel's to route"
    );
    // IPv6 as well
    let mut b = buf(&udp6(A, GW_OPEN, "fd10::10", "2001:db8::80"));
    assert_eq!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::Deliver(EGRESS)
    );
}

#[test]
fn an_internal_network_has_no_egress_but_keeps_its_vips() {
    let st = state();
    let mut sw = Switch::new(16);
    let mut b = buf(&tcp4(C, GW_CLOSED, [10, 20, 0, 10], OUTSIDE));
    assert_eq!(
        sw.from_port(&st, C_PORT, &mut b, 0),
        Action::Drop(DropReason::Internal)
    );
    assert_eq!(sw.counters.dropped(DropReason::Internal), 1);
    // a VIP is inside the overlay: balanced as before (no task: no backend)
    let mut b = buf(&tcp4(C, GW_CLOSED, [10, 20, 0, 10], [10, 20, 0, 100]));
    assert_eq!(
        sw.from_port(&st, C_PORT, &mut b, 0),
        Action::Drop(DropReason::NoBackend)
    );
}

#[test]
fn another_network_is_never_reached_through_the_kernel() {
    let st = state();
    let mut sw = Switch::new(16);
    // an internal network's endpoint, its VIP, and an address of the own subnet
    for dst in [[10, 20, 0, 10], [10, 20, 0, 100], [10, 10, 0, 99]] {
        let mut b = buf(&tcp4(A, GW_OPEN, [10, 10, 0, 10], dst));
        assert_eq!(
            sw.from_port(&st, A_PORT, &mut b, 0),
            Action::Drop(DropReason::NoRoute),
            "{dst:?}"
        );
    }
    // nor anything a router would not forward
    for dst in [
        [127, 0, 0, 1],
        [224, 0, 0, 5],
        [255, 255, 255, 255],
        [0, 0, 0, 0],
    ] {
        let mut b = buf(&tcp4(A, GW_OPEN, [10, 10, 0, 10], dst));
        assert_eq!(
            sw.from_port(&st, A_PORT, &mut b, 0),
            Action::Drop(DropReason::NoRoute),
            "{dst:?}"
        );
    }
}

#[test]
fn without_an_egress_tap_nothing_leaves() {
    let mut st = state();
    st.egress = None;
    let mut sw = Switch::new(16);
    let mut b = buf(&tcp4(A, GW_OPEN, [10, 10, 0, 10], OUTSIDE));
    assert_eq!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::Drop(DropReason::NoRoute)
    );
}

#[test]
fn replies_from_the_kernel_reach_local_endpoints_of_open_networks_only() {
    let st = state();
    let mut sw = Switch::new(16);
    let f = tcp4(HOST, AGENT, OUTSIDE, [10, 10, 0, 10]);
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, EGRESS, &mut b, 0),
        Action::Deliver(A_PORT)
    );
    let out = b.data();
    assert_eq!(&out[0..6], &A);
    assert_eq!(&out[6..12], &GW_OPEN, "from the gateway, as routed");
    assert_eq!(&out[12..], &f[12..]);
    let mut b = buf(&udp6(HOST, AGENT, "2001:db8::80", "fd10::10"));
    assert_eq!(
        sw.from_port(&st, EGRESS, &mut b, 0),
        Action::Deliver(A_PORT)
    );

    // an internal network's endpoint, a remote endpoint, an unknown address
    for dst in [[10, 20, 0, 10], [10, 10, 0, 20], [10, 10, 0, 77]] {
        let mut b = buf(&tcp4(HOST, AGENT, OUTSIDE, dst));
        assert_eq!(
            sw.from_port(&st, EGRESS, &mut b, 0),
            Action::Drop(DropReason::EgressNoEndpoint),
            "{dst:?}"
        );
    }
    // nothing from inside an overlay comes back in (no path between networks)
    let mut b = buf(&tcp4(HOST, AGENT, [10, 20, 0, 10], [10, 10, 0, 10]));
    assert_eq!(
        sw.from_port(&st, EGRESS, &mut b, 0),
        Action::Drop(DropReason::SpoofedSourceIp)
    );
    // the kernel's own multicast chatter, other EtherTypes, garbage
    let mut b = buf(&udp6(HOST, [0x33, 0x33, 0, 0, 0, 2], "fe80::1", "ff02::2"));
    assert_eq!(
        sw.from_port(&st, EGRESS, &mut b, 0),
        Action::Drop(DropReason::NoRoute)
    );
    let mut vlan = f.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    assert_eq!(
        sw.from_port(&st, EGRESS, &mut buf(&vlan), 0),
        Action::Drop(DropReason::UnsupportedEtherType)
    );
    assert_eq!(
        sw.from_port(&st, EGRESS, &mut buf(&f[..20]), 0),
        Action::Drop(DropReason::Malformed)
    );
}

#[test]
fn arp_and_solicitations_on_the_egress_tap_are_answered_for_the_next_hop_and_local_endpoints() {
    let st = state();
    let mut sw = Switch::new(16);
    for target in [NEXT_HOP.octets(), [10, 10, 0, 10]] {
        let mut b = buf(&arp_request(HOST, [169, 254, 251, 1], target));
        assert_eq!(sw.from_port(&st, EGRESS, &mut b, 0), Action::Reply(EGRESS));
        let arp = neighbor::parse_arp(b.data()).unwrap();
        assert!(!arp.is_request);
        assert_eq!(arp.sender_mac, AGENT);
        assert_eq!(arp.sender_ip, Ipv4Addr::from(target));
        assert_eq!(&b.data()[0..6], &HOST);
    }
    // not for an internal network's endpoint, nor anyone else
    for target in [[10, 20, 0, 10], [169, 254, 251, 3]] {
        let mut b = buf(&arp_request(HOST, [169, 254, 251, 1], target));
        assert_eq!(
            sw.from_port(&st, EGRESS, &mut b, 0),
            Action::Drop(DropReason::NoRoute)
        );
    }
    let me: Ipv6Addr = "fe80::1".parse().unwrap();
    for target in ["fe80::2", "fd10::10"] {
        let t: Ipv6Addr = target.parse().unwrap();
        let mut b = buf(&solicitation(HOST, me, t));
        assert_eq!(sw.from_port(&st, EGRESS, &mut b, 0), Action::Reply(EGRESS));
        let f = b.data();
        assert_eq!(&f[0..6], &HOST);
        assert_eq!(&f[6..12], &AGENT);
        assert_eq!(f[54], 136, "a neighbour advertisement");
    }
    let mut b = buf(&solicitation(HOST, me, "fe80::3".parse().unwrap()));
    assert_eq!(
        sw.from_port(&st, EGRESS, &mut b, 0),
        Action::Drop(DropReason::NoRoute)
    );
    assert_eq!(sw.counters.neighbor_replies, 4);
}

#[test]
fn prefixes_match_by_their_length() {
    let p = prefix("10.10.0.0/24");
    assert!(p.contains(&ip("10.10.0.255")));
    assert!(!p.contains(&ip("10.10.1.0")));
    assert!(!p.contains(&ip("fd10::1")));
    assert!(prefix("0.0.0.0/0").contains(&ip("203.0.113.9")));
    let p6 = prefix("fd10::/64");
    assert!(p6.contains(&ip("fd10::ffff")));
    assert!(!p6.contains(&ip("fd10:0:0:1::1")));
    assert!(prefix("::/0").contains(&ip("2001:db8::1")));
}

#[test]
fn an_ipv6_packet_with_extension_headers_still_leaves_by_egress() {
    // a fragment (Fragment header, 44) of a large UDP datagram to outside: not
    // the balancer's (it is no VIP), so egress takes it as it is
    let st = state();
    let mut sw = Switch::new(16);
    let mut f = udp6(A, GW_OPEN, "fd10::10", "2001:db8::80");
    let udp = f.split_off(14 + 40);
    f[14 + 6] = 44;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]);
    f.extend_from_slice(&udp);
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::Deliver(EGRESS)
    );
    assert_eq!(sw.counters.dropped(DropReason::Ipv6ExtensionHeader), 0);
}

/// A UDP datagram from A (IPv4 or IPv6, by `dip`) to `dip`:`dport`, carrying a
/// VXLAN header and an inner frame as a forger would write them.
fn udp_to(dip: &str, dport: u16) -> Vec<u8> {
    let payload = [
        0x08, 0, 0, 0, 0, 0, 0x2a, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let src = match ip(dip) {
        IpAddr::V4(_) => ip("10.10.0.10"),
        IpAddr::V6(_) => ip("fd10::10"),
    };
    build::eth(A, GW_OPEN)
        .ip(src, ip(dip))
        .udp(40000, dport, &payload)
}

fn tcp_to(dip: &str, dport: u16) -> Vec<u8> {
    let syn = build::tcp(40000, dport, 1, crate::wire::tcp::SYN);
    build::eth(A, GW_OPEN)
        .ipv4([10, 10, 0, 10], ip4(dip))
        .tcp(syn, &[])
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

#[test]
fn a_container_sends_no_tunnel_datagram_and_reaches_no_node_service_through_egress() {
    let st = state();
    let mut sw = Switch::new(16);
    // VXLAN to a node or anywhere else, WireGuard to a node, either family
    for (dst, port) in [
        ("192.0.2.2", crate::VXLAN_PORT),
        ("192.0.2.80", crate::VXLAN_PORT),
        ("192.0.2.2", 51820),
        ("2001:db8::2", crate::VXLAN_PORT),
        ("2001:db8::2", 51820),
    ] {
        let mut b = buf(&udp_to(dst, port));
        assert_eq!(
            sw.from_port(&st, A_PORT, &mut b, 0),
            Action::Drop(DropReason::NodeService),
            "{dst}:{port}"
        );
    }
    // the store and metrics at a node's address
    for port in [2379, 9100] {
        let mut b = buf(&tcp_to("192.0.2.2", port));
        assert_eq!(
            sw.from_port(&st, A_PORT, &mut b, 0),
            Action::Drop(DropReason::NodeService),
            "{port}"
        );
    }
    assert_eq!(sw.counters.dropped(DropReason::NodeService), 7);
    // IP-in-IP anywhere (a peer's fallback tunnel would unwrap it), GRE at a node
    for (dst, proto) in [("192.0.2.80", 4), ("192.0.2.2", 47)] {
        let mut f = tcp_to(dst, 80);
        f[14 + 9] = proto;
        let mut b = buf(&f);
        assert_eq!(
            sw.from_port(&st, A_PORT, &mut b, 0),
            Action::Drop(DropReason::NodeService),
            "{dst} proto {proto}"
        );
    }
    assert_eq!(sw.counters.dropped(DropReason::NodeService), 9);
    // ordinary egress goes on: other ports at a node, those ports elsewhere
    // (a container's own WireGuard server outside), GRE elsewhere
    let mut gre = tcp_to("192.0.2.80", 80);
    gre[14 + 9] = 47;
    for f in [
        udp_to("192.0.2.2", 53),
        udp_to("2001:db8::2", 4790),
        udp_to("2001:db8::77", 51820),
        tcp_to("192.0.2.2", 80),
        tcp_to("192.0.2.80", 2379),
        gre,
    ] {
        let mut b = buf(&f);
        assert_eq!(
            sw.from_port(&st, A_PORT, &mut b, 0),
            Action::Deliver(EGRESS)
        );
    }
}

#[test]
fn an_extension_header_does_not_hide_a_tunnel_port_and_a_later_fragment_is_the_kernels() {
    let st = state();
    let mut sw = Switch::new(16);
    // UDP to 4789 behind a Destination Options header (next header 60, 8 bytes)
    let plain = udp_to("2001:db8::2", crate::VXLAN_PORT);
    let mut f = plain[..14 + 40].to_vec();
    f[14 + 6] = 60;
    let plen = u16::from_be_bytes([f[14 + 4], f[14 + 5]]) + 8;
    f[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&plain[14 + 40..]);
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::Drop(DropReason::NodeService)
    );
    // the first fragment of an IPv4 datagram to 4789 carries its port: refused
    let mut f = udp_to("192.0.2.2", crate::VXLAN_PORT);
    f[14 + 6] = 0x20; // more fragments, offset 0
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::Drop(DropReason::NodeService)
    );
    // a later fragment has no port: the kernel reassembles and refuses it
    f[14 + 6] = 0x00;
    f[14 + 7] = 0x10;
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::Deliver(EGRESS)
    );
}

/// A DNS query from `from` (MAC, address) to its gateway `gw`.
fn dns_query(from: Mac, gw_mac: Mac, src: [u8; 4], gw: [u8; 4], name: &str) -> Vec<u8> {
    let q = build::dns_query(7, name, hickory_proto::rr::RecordType::A);
    build::eth(from, gw_mac).ipv4(src, gw).udp(40000, 53, &q)
}

#[test]
fn an_internal_network_forwards_no_dns_but_answers_its_own_names() {
    let mut st = state();
    st.dns_upstream = vec!["192.0.2.53:53".parse().unwrap()];
    st.networks
        .get_mut(&CLOSED)
        .unwrap()
        .dns
        .insert("db".to_string(), vec![ip("10.20.0.10")]);
    let mut sw = Switch::new(16);
    // an open network's unknown name goes to the node's resolvers
    let mut b = buf(&dns_query(
        A,
        GW_OPEN,
        [10, 10, 0, 10],
        [10, 10, 0, 1],
        "example.org",
    ));
    assert!(matches!(
        sw.from_port(&st, A_PORT, &mut b, 0),
        Action::ForwardDns { .. }
    ));
    // an internal network's is answered here (refused, as a name it does not
    // serve), never forwarded
    let mut b = buf(&dns_query(
        C,
        GW_CLOSED,
        [10, 20, 0, 10],
        [10, 20, 0, 1],
        "example.org",
    ));
    assert_eq!(sw.from_port(&st, C_PORT, &mut b, 0), Action::Reply(C_PORT));
    let m = hickory_proto::op::Message::from_vec(&b.data()[14 + 20 + 8..]).unwrap();
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused
    );
    // its own names still resolve
    let mut b = buf(&dns_query(
        C,
        GW_CLOSED,
        [10, 20, 0, 10],
        [10, 20, 0, 1],
        "db",
    ));
    assert_eq!(sw.from_port(&st, C_PORT, &mut b, 0), Action::Reply(C_PORT));
    let m = hickory_proto::op::Message::from_vec(&b.data()[14 + 20 + 8..]).unwrap();
    assert_eq!(m.answers.len(), 1);
}

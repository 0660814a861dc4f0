//! IPv6 through the balancer: a VIP of each family over dual-stack tasks, the
//! ingress sandbox over IPv6 (neighbour discovery, DNAT with the client's
//! address kept, policies and refusals), DNS over IPv6, and what is refused
//! with a counted reason (extension headers, a family the task lacks).

use super::*;
use crate::fuzzing::{
    dns_query, icmpv6_solicitation, state, tcp6_frame, A, GW, HOST, INGRESS_VNI, NODE_B, P_A, R,
    SANDBOX, SANDBOX_IP6, SBOX, TASK_B, VIP6, VNI,
};
use crate::wire::build;
use etherparse::{SlicedPacket, TransportSlice};
use std::net::Ipv6Addr;

fn buf(frame: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::new();
    b.load_frame(frame);
    b
}

fn datagram(vni: u32, frame: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::new();
    b.load_datagram(&crate::wire::build::datagram(vni, frame));
    b
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// (src, sport, dst, dport) of an IPv6 TCP/UDP frame, checking its L4 checksum.
fn ends(f: &[u8]) -> (Ipv6Addr, u16, Ipv6Addr, u16) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not ipv6")
    };
    let h = ip.header();
    let (s, d) = (h.source(), h.destination());
    let (sp, dp) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            assert_eq!(
                t.calc_checksum_ipv6(s, d).unwrap(),
                t.checksum(),
                "tcp checksum"
            );
            (t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => {
            let c = u
                .to_header()
                .calc_checksum_ipv6_raw(s, d, u.payload())
                .unwrap();
            assert_eq!(c, u.checksum(), "udp checksum");
            (u.source_port(), u.destination_port())
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let c = i.icmp_type().calc_checksum(s, d, i.payload()).unwrap();
            assert_eq!(c, i.checksum(), "icmpv6 checksum");
            (0, 0)
        }
        _ => panic!("not tcp/udp/icmpv6"),
    };
    (h.source_addr(), sp, h.destination_addr(), dp)
}

#[test]
fn an_ipv6_vip_goes_to_a_task_with_an_ipv6_address_and_back() {
    let st = state(false);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    // the VIP's tasks: B (IPv4 only, local) and R (dual-stack, remote); an
    // IPv6 client can only be sent to R, however round robin turns
    for sport in [40000, 40001, 40002] {
        let mut b = buf(&tcp6_frame(A, GW, "fd00::10", VIP6, sport, 80, 0x02, b""));
        let a = sw.from_port(&st, P_A, &mut b, 0);
        assert!(
            matches!(a, Action::Encap { vtep, .. } if vtep == IpAddr::V4(NODE_B)),
            "{a:?}"
        );
        let f = b.data();
        assert_eq!(&f[0..6], &R);
        assert_eq!(ends(f), (v6("fd00::10"), sport, v6("fd00::12"), 80));
    }
    // R's answer comes over the underlay and reaches A from the VIP
    let syn_ack = tcp6_frame(R, A, "fd00::12", "fd00::10", 80, 40000, 0x12, b"");
    let mut b = datagram(VNI, &syn_ack);
    assert_eq!(
        sw.from_underlay(&st, IpAddr::V4(NODE_B), &mut b, 0, false),
        Action::Deliver(P_A)
    );
    assert_eq!(ends(b.data()), (v6(VIP6), 80, v6("fd00::10"), 40000));
    assert_eq!(&b.data()[6..12], &GW);
    // the IPv4 VIP of the same service still uses both tasks
    let mut tasks = std::collections::BTreeSet::new();
    for sport in [41000, 41001] {
        let f =
            crate::fuzzing::tcp_frame(A, GW, [10, 0, 0, 10], [10, 0, 0, 100], sport, 80, 0x02, b"");
        let mut b = buf(&f);
        tasks.insert(format!("{:?}", sw.from_port(&st, P_A, &mut b, 0)));
    }
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let ct = sw.conntrack();
    let ct = ct.lock().unwrap();
    assert_eq!(ct.len(), 5);
    assert!(ct
        .iter()
        .any(|e| e.orig.dst == ip(VIP6) && e.reply.src == ip("fd00::12")));
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_vip_whose_tasks_lack_the_clients_family_has_no_backend() {
    let mut st = state(false);
    // only B (IPv4-only) is left behind the VIP
    let net = st.networks.get_mut(&VNI).unwrap();
    net.services.get_mut(&0x100).unwrap().backends.truncate(1);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let mut b = buf(&tcp6_frame(A, GW, "fd00::10", VIP6, 40000, 80, 0x02, b""));
    assert_eq!(
        sw.from_port(&st, P_A, &mut b, 0),
        Action::Drop(DropReason::NoBackend)
    );
}

/// `f` (an Ethernet/IPv6 frame) with an empty hop-by-hop options header put
/// before its transport header.
fn with_hop_by_hop(mut f: Vec<u8>) -> Vec<u8> {
    let l4 = f.split_off(14 + 40);
    let next = f[14 + 6];
    f[14 + 6] = 0;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&l4);
    f
}

#[test]
fn ipv6_extension_headers_before_transport_are_dropped_with_their_reason() {
    let st = state(false);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let f = with_hop_by_hop(tcp6_frame(A, GW, "fd00::10", VIP6, 40000, 80, 0x02, b""));
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, P_A, &mut b, 0),
        Action::Drop(DropReason::Ipv6ExtensionHeader)
    );
    assert_eq!(sw.counters.dropped(DropReason::Ipv6ExtensionHeader), 1);
    // the same to the sandbox's address
    let s = with_hop_by_hop(tcp6_frame(
        HOST,
        SBOX,
        "2001:db8::7",
        SANDBOX_IP6,
        50000,
        8080,
        0x02,
        b"",
    ));
    let mut b = buf(&s);
    assert_eq!(
        sw.from_port(&st, SANDBOX, &mut b, 0),
        Action::Drop(DropReason::Ipv6ExtensionHeader)
    );
    // the kernel's own multicast on the sandbox (MLD is sent behind a
    // hop-by-hop header) is no published port's: not counted as one
    let mut mld = with_hop_by_hop(tcp6_frame(
        HOST,
        [0x33, 0x33, 0, 0, 0, 0x16],
        "fdff:ffff:ffff:fa::1",
        "ff02::16",
        0,
        0,
        0,
        b"",
    ));
    mld[14 + 40] = 58;
    let mut b = buf(&mld);
    assert_eq!(
        sw.from_port(&st, SANDBOX, &mut b, 0),
        Action::Drop(DropReason::NoRoute)
    );
    assert_eq!(sw.counters.dropped(DropReason::Ipv6ExtensionHeader), 2);
}

#[test]
fn the_sandbox_answers_for_its_ipv6_address_and_keeps_ipv6_clients() {
    let st = state(false);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    // the kernel resolves the sandbox's IPv6 address
    let ns = icmpv6_solicitation(HOST, "fdff:ffff:ffff:fa::1", SANDBOX_IP6);
    let mut b = buf(&ns);
    assert_eq!(
        sw.from_port(&st, SANDBOX, &mut b, 0),
        Action::Reply(SANDBOX)
    );
    assert_eq!(&b.data()[6..12], &SBOX);
    // another address is nobody's here
    let ns = icmpv6_solicitation(HOST, "fdff:ffff:ffff:fa::1", "fdff:ffff:ffff:fa::3");
    let mut b = buf(&ns);
    assert_eq!(
        sw.from_port(&st, SANDBOX, &mut b, 0),
        Action::Drop(DropReason::NoRoute)
    );
    // a connection to 8080 over IPv6: only the dual-stack task (on node B)
    // can take it; the client's address is kept, the port becomes 80
    let syn = tcp6_frame(
        HOST,
        SBOX,
        "2001:db8::7",
        SANDBOX_IP6,
        50000,
        8080,
        0x02,
        b"",
    );
    let mut b = buf(&syn);
    let a = sw.from_port(&st, SANDBOX, &mut b, 0);
    assert!(
        matches!(a, Action::Encap { vtep, .. } if vtep == IpAddr::V4(NODE_B)),
        "{a:?}"
    );
    let f = b.data();
    assert_eq!(&f[0..6], &TASK_B);
    assert_eq!(&f[6..12], &SBOX);
    assert_eq!(ends(f), (v6("2001:db8::7"), 50000, v6("fd00:ff::20"), 80));
    // the task's reply comes back to this sandbox and leaves for the kernel
    // from the sandbox address and the published port
    let reply = tcp6_frame(
        TASK_B,
        SBOX,
        "fd00:ff::20",
        "2001:db8::7",
        80,
        50000,
        0x12,
        b"",
    );
    let mut b = datagram(INGRESS_VNI, &reply);
    assert_eq!(
        sw.from_underlay(&st, IpAddr::V4(NODE_B), &mut b, 0, false),
        Action::Deliver(SANDBOX)
    );
    assert_eq!(
        ends(b.data()),
        (v6(SANDBOX_IP6), 8080, v6("2001:db8::7"), 50000)
    );
    assert_eq!(&b.data()[0..6], &HOST);
}

#[test]
fn ipv6_policies_refuse_with_an_ipv6_rst_and_leave_ipv4_alone() {
    let st = state(false);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    // 2001:db8:bad::/48 is rejected on 8080
    let syn = tcp6_frame(
        HOST,
        SBOX,
        "2001:db8:bad::9",
        SANDBOX_IP6,
        50000,
        8080,
        0x02,
        b"",
    );
    let mut b = buf(&syn);
    assert_eq!(
        sw.from_port(&st, SANDBOX, &mut b, 0),
        Action::Reply(SANDBOX)
    );
    let p = SlicedPacket::from_ethernet(b.data()).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not tcp")
    };
    assert!(t.rst() && t.ack());
    assert_eq!(
        ends(b.data()),
        (v6(SANDBOX_IP6), 8080, v6("2001:db8:bad::9"), 50000)
    );
    assert_eq!(sw.counters.dropped(DropReason::PolicyReject), 1);
    // a neighbour of that /48 is not covered
    let syn = tcp6_frame(
        HOST,
        SBOX,
        "2001:db8:bae::9",
        SANDBOX_IP6,
        50001,
        8080,
        0x02,
        b"",
    );
    let mut b = buf(&syn);
    assert!(matches!(
        sw.from_port(&st, SANDBOX, &mut b, 0),
        Action::Encap { .. }
    ));
}

#[test]
fn an_unpublished_udp_port_over_ipv6_gets_icmpv6_port_unreachable() {
    let st = state(false);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let f = build::eth(HOST, SBOX)
        .ipv6(v6("2001:db8::7"), v6(SANDBOX_IP6))
        .udp(50000, 7777, b"q");
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, SANDBOX, &mut b, 0),
        Action::Reply(SANDBOX)
    );
    let p = SlicedPacket::from_ethernet(b.data()).unwrap();
    let Some(TransportSlice::Icmpv6(i)) = &p.transport else {
        panic!("not icmpv6: {:?}", p.transport)
    };
    assert_eq!(
        i.icmp_type(),
        etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port
        )
    );
    ends(b.data());
    assert_eq!(sw.counters.dropped(DropReason::NotPublished), 1);
}

#[test]
fn dns_over_ipv6_is_answered_from_the_ipv6_gateway() {
    let st = state(false);
    let mut sw = Switch::new(16);
    let f = build::eth(A, GW).ipv6(v6("fd00::10"), v6("fd00::1")).udp(
        5353,
        53,
        &dns_query(7, "web.", true),
    );
    let mut b = buf(&f);
    assert_eq!(sw.from_port(&st, P_A, &mut b, 0), Action::Reply(P_A));
    assert_eq!(ends(b.data()), (v6("fd00::1"), 53, v6("fd00::10"), 5353));
    let p = SlicedPacket::from_ethernet(b.data()).unwrap();
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        panic!("not udp")
    };
    let m = hickory_proto::op::Message::from_vec(u.payload()).unwrap();
    let got: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, vec!["fd00::12".to_string()]);
    assert_eq!(sw.counters.dns_answers, 1);
}

#[test]
fn an_oversized_ipv6_packet_gets_packet_too_big_from_the_ipv6_gateway() {
    let mut st = state(false);
    st.networks.get_mut(&VNI).unwrap().mtu = 1000;
    let mut sw = Switch::new(16);
    let f = build::eth(A, R)
        .ipv6(v6("fd00::10"), v6("fd00::12"))
        .udp(5000, 6000, &[0x5a; 1200]);
    let mut b = buf(&f);
    assert_eq!(sw.from_port(&st, P_A, &mut b, 0), Action::Reply(P_A));
    let p = SlicedPacket::from_ethernet(b.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not ipv6")
    };
    assert_eq!(ip.header().source_addr(), v6("fd00::1"), "from the gateway");
    assert_eq!(ip.header().destination_addr(), v6("fd00::10"));
    assert!(b.len() <= 14 + 1280, "within the minimum MTU");
    let Some(TransportSlice::Icmpv6(i)) = &p.transport else {
        panic!("not icmpv6")
    };
    assert_eq!(
        i.icmp_type(),
        etherparse::Icmpv6Type::PacketTooBig { mtu: 1000 }
    );
    ends(b.data());
    assert_eq!(sw.counters.dropped(DropReason::TooBig), 1);
}

#[test]
fn an_icmpv6_error_from_a_task_reaches_the_client_from_the_ipv6_vip() {
    let st = state(false);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    // UDP from A to the IPv6 VIP, port 53: balanced to R (fd00::12)
    let q = build::eth(A, GW)
        .ipv6(v6("fd00::10"), v6(VIP6))
        .udp(40000, 53, b"query");
    let mut b = buf(&q);
    assert!(matches!(
        sw.from_port(&st, P_A, &mut b, 0),
        Action::Encap { .. }
    ));
    // R answers with port unreachable, quoting what it got (to itself)
    let quoted = b.data()[14..].to_vec();
    let unreachable = crate::wire::icmpv6::Repr {
        msg_type: crate::wire::icmpv6::DST_UNREACHABLE,
        code: crate::wire::icmpv6::CODE_PORT_UNREACHABLE,
        rest_of_header: [0; 4],
    };
    let e = build::eth(R, A)
        .ipv6(v6("fd00::12"), v6("fd00::10"))
        .icmp(unreachable, &quoted);
    let mut b = datagram(VNI, &e);
    assert_eq!(
        sw.from_underlay(&st, IpAddr::V4(NODE_B), &mut b, 0, false),
        Action::Deliver(P_A)
    );
    let p = SlicedPacket::from_ethernet(b.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not ipv6")
    };
    assert_eq!(ip.header().source_addr(), v6(VIP6), "from the VIP");
    assert_eq!(&b.data()[6..12], &GW);
    ends(b.data());
    let Some(TransportSlice::Icmpv6(i)) = &p.transport else {
        panic!("not icmpv6")
    };
    let inner = etherparse::Ipv6HeaderSlice::from_slice(i.payload()).unwrap();
    assert_eq!(
        inner.destination_addr(),
        v6(VIP6),
        "about the packet A sent"
    );
}

//! The routing mesh's ingress path through the core: sandbox in, task out, and
//! the replies back through the node the client came in by.

use super::tests::{tcp_segment, ACK, RST, SYN};
use super::*;
use crate::wire::build;
use etherparse::{SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

pub(super) const IVNI: u32 = 4095;
pub(super) const HOST: Mac = [2, 0, 0, 0, 0xff, 1];
pub(super) const SBOX: Mac = [2, 0, 0, 0, 0xff, 2];
const SBOX_B: Mac = [2, 0, 0, 0, 0xff, 3];
const IGW: Mac = [2, 0x56, 0x58, 0, 0x0f, 0xff];
const TASK_A: Mac = [2, 0, 0, 0, 0xaa, 1];
const TASK_B: Mac = [2, 0, 0, 0, 0xbb, 1];
pub(super) const SANDBOX_PORT: PortId = PortId(0);
pub(super) const TASK_PORT: PortId = PortId(5);
const NODE_B: &str = "192.0.2.2";
pub(super) const CLIENT: [u8; 4] = [198, 51, 100, 7];
pub(super) const SBOX_IP: [u8; 4] = [169, 254, 250, 2];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Node A: a sandbox, one local task (10.255.0.10), one on node B (10.255.0.20);
/// 8080/tcp and 5353/udp go to 80 and 53 of service 0x100, 9090 is mode=host.
pub(super) fn node_a() -> SwitchState {
    let mut net = NetworkView {
        vni: IVNI,
        gateway_mac: IGW,
        gateways: vec![ip("10.255.0.1")],
        members: vec![ip(NODE_B)],
        local_ports: vec![TASK_PORT],
        ..Default::default()
    };
    net.macs.insert(TASK_A, Location::Local(TASK_PORT));
    net.macs.insert(TASK_B, Location::Remote(ip(NODE_B)));
    net.macs.insert(SBOX_B, Location::Remote(ip(NODE_B)));
    for (i, m) in [
        ("10.255.0.10", TASK_A),
        ("10.255.0.20", TASK_B),
        ("10.255.0.1", IGW),
    ] {
        net.neighbors.insert(ip(i), m);
    }
    net.services.insert(
        0x100,
        ServiceView {
            scheduler: crate::lb::scheduler::Kind::Rr,
            backends: vec![
                BackendView {
                    v4: Some(Ipv4Addr::new(10, 255, 0, 10)),
                    v6: None,
                    weight: 1,
                    healthy: true,
                    local: true,
                },
                BackendView {
                    v4: Some(Ipv4Addr::new(10, 255, 0, 20)),
                    v6: None,
                    weight: 1,
                    healthy: true,
                    local: false,
                },
            ],
        },
    );
    let mut st = SwitchState::default();
    st.networks.insert(IVNI, net);
    st.ports.insert(
        TASK_PORT,
        PortView {
            vni: IVNI,
            mac: TASK_A,
            ips: vec![ip("10.255.0.10")],
        },
    );
    let mut published = FxHashMap::default();
    for (proto, port, target, host_only) in [
        (6, 8080, 80, false),
        (17, 5353, 53, false),
        (6, 9090, 80, true),
    ] {
        published.insert(
            (proto, port),
            PublishedView {
                fwmark: 0x100,
                target,
                host_only,
            },
        );
    }
    st.ingress = Some(IngressView {
        port: SANDBOX_PORT,
        vni: IVNI,
        host_mac: HOST,
        sandbox_ip: Ipv4Addr::from(SBOX_IP),
        sandbox_ip6: None,
        sandbox_mac: SBOX,
        sandbox_macs: [SBOX, SBOX_B].into_iter().collect(),
        enabled: true,
        published,
        policies: Vec::new(),
        rate_limit: None,
    });
    st
}

pub(super) fn tcp(
    src: Mac,
    dst: Mac,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
) -> Vec<u8> {
    let flags = if syn { SYN } else { ACK };
    tcp_segment((src, dst), (sip, sport), (dip, dport), 100, flags, b"hello")
}

pub(super) fn udp(
    src: Mac,
    dst: Mac,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    build::eth(src, dst).ipv4(sip, dip).udp(sport, dport, b"q")
}

pub(super) fn buf(frame: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::new();
    b.load_frame(frame);
    b
}

fn datagram(frame: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::new();
    b.load_datagram(&build::datagram(IVNI, frame));
    b
}

/// (src ip, sport, dst ip, dport), checking both checksums on the way.
fn endpoints(f: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let p = SlicedPacket::from_ethernet(f).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    let h = ip.header();
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
    let (sp, dp) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let c = t
                .to_header()
                .calc_checksum_ipv4(&h.to_header(), t.payload())
                .unwrap();
            assert_eq!(c, t.checksum(), "tcp checksum");
            (t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => panic!("not tcp/udp"),
    };
    (h.source(), sp, h.destination(), dp)
}

#[test]
fn arp_for_the_sandbox_address_is_answered_on_the_sandbox() {
    let st = node_a();
    let mut sw = Switch::new(16);
    let req = crate::wire::neighbor::tests::arp_request(HOST, [169, 254, 250, 1], SBOX_IP);
    let mut b = buf(&req);
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Reply(SANDBOX_PORT)
    );
    assert_eq!(&b.data()[6..12], &SBOX);
}

#[test]
fn published_connections_keep_the_client_address_both_ways() {
    let st = node_a();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    // first connection: rr gives the local task, port 8080 -> 80
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40000, 8080, true));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Deliver(TASK_PORT)
    );
    assert_eq!(endpoints(b.data()), (CLIENT, 40000, [10, 255, 0, 10], 80));
    assert_eq!(&b.data()[0..12], &[TASK_A, SBOX].concat()[..]);
    // the local task answers the client through the ingress gateway
    let mut b = buf(&tcp(
        TASK_A,
        IGW,
        [10, 255, 0, 10],
        CLIENT,
        80,
        40000,
        false,
    ));
    assert_eq!(
        sw.from_port(&st, TASK_PORT, &mut b, 1),
        Action::Deliver(SANDBOX_PORT)
    );
    assert_eq!(endpoints(b.data()), (SBOX_IP, 8080, CLIENT, 40000));
    assert_eq!(&b.data()[0..12], &[HOST, SBOX].concat()[..]);
    // second connection: the task on node B, over VXLAN on the ingress VNI
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40001, 8080, true));
    let a = sw.from_port(&st, SANDBOX_PORT, &mut b, 2);
    assert!(
        matches!(a, Action::Encap { vtep, secure: false, .. } if vtep == ip(NODE_B)),
        "{a:?}"
    );
    assert_eq!(crate::wire::vxlan::parse(b.datagram()), Ok(IVNI));
    assert_eq!(endpoints(b.data()), (CLIENT, 40001, [10, 255, 0, 20], 80));
    // B sends the reply back to our sandbox MAC: reverse-NATed to the sandbox
    let mut d = datagram(&tcp(
        TASK_B,
        SBOX,
        [10, 255, 0, 20],
        CLIENT,
        80,
        40001,
        false,
    ));
    assert_eq!(
        sw.from_underlay(&st, ip(NODE_B), &mut d, 3, false),
        Action::Deliver(SANDBOX_PORT)
    );
    assert_eq!(endpoints(d.data()), (SBOX_IP, 8080, CLIENT, 40001));
    // a reply nothing tracked is not let out
    let mut d = datagram(&tcp(TASK_B, SBOX, [10, 255, 0, 20], CLIENT, 80, 1, false));
    assert_eq!(
        sw.from_underlay(&st, ip(NODE_B), &mut d, 3, false),
        Action::Drop(DropReason::NoRoute)
    );
}

#[test]
fn udp_is_published_too_and_host_mode_stays_on_this_node() {
    let st = node_a();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let mut targets = std::collections::BTreeSet::new();
    for sport in 0..4 {
        let mut b = buf(&udp(HOST, SBOX, CLIENT, SBOX_IP, 5000 + sport, 5353));
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0);
        let (_, _, dst, dport) = endpoints(b.data());
        assert_eq!(dport, 53);
        targets.insert(dst);
    }
    assert_eq!(targets.len(), 2, "both tasks serve an ingress port");
    for sport in 0..4 {
        let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 6000 + sport, 9090, true));
        assert_eq!(
            sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
            Action::Deliver(TASK_PORT),
            "mode=host: only the local task"
        );
    }
}

#[test]
fn policies_ingress_off_and_unpublished_ports_refuse_with_a_reason() {
    let mut st = node_a();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let ing = st.ingress.as_mut().unwrap();
    ing.policies = vec![
        PolicyRule {
            proto: 6,
            port: 8080,
            from: None,
            action: PolicyAction::Reject,
            id: 0,
            audit: false,
        },
        PolicyRule {
            proto: 6,
            port: 8080,
            from: Some((Ipv4Addr::new(198, 51, 100, 0).into(), 24)),
            action: PolicyAction::Accept,
            id: 0,
            audit: false,
        },
        PolicyRule {
            proto: 17,
            port: 5353,
            from: None,
            action: PolicyAction::Drop,
            id: 0,
            audit: false,
        },
    ];
    // the longer prefix accepts the client's network
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40000, 8080, true));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Deliver(TASK_PORT)
    );
    // anyone else gets a RST from the published address
    let mut b = buf(&tcp(
        HOST,
        SBOX,
        [203, 0, 113, 1],
        SBOX_IP,
        40000,
        8080,
        true,
    ));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Reply(SANDBOX_PORT)
    );
    assert_eq!(
        endpoints(b.data()),
        (SBOX_IP, 8080, [203, 0, 113, 1], 40000)
    );
    let mut b = buf(&udp(HOST, SBOX, CLIENT, SBOX_IP, 1, 5353));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Drop(DropReason::PolicyDrop)
    );
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 1, 7777, true));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Reply(SANDBOX_PORT),
        "a port just unpublished is closed, as the kernel's table will say"
    );
    assert_eq!(sw.counters.dropped(DropReason::NotPublished), 1);
    // ingress off: new connections refused, tracked ones go on
    st.ingress.as_mut().unwrap().enabled = false;
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40009, 8080, true));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Reply(SANDBOX_PORT),
        "refused with a RST"
    );
    assert_eq!(sw.counters.dropped(DropReason::IngressOff), 1);
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40000, 8080, false));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Deliver(TASK_PORT)
    );
    assert_eq!(sw.counters.dropped(DropReason::PolicyReject), 1);
}

#[test]
fn a_task_node_sends_replies_back_through_the_ingress_node() {
    // node A's state seen from node B's side: TASK_A is the local task, and a
    // connection arrives from node B's sandbox (SBOX_B, at NODE_B)
    let st = node_a();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let mut d = datagram(&tcp(
        SBOX_B,
        TASK_A,
        CLIENT,
        [10, 255, 0, 10],
        40000,
        80,
        true,
    ));
    assert_eq!(
        sw.from_underlay(&st, ip(NODE_B), &mut d, 0, false),
        Action::Deliver(TASK_PORT)
    );
    let mut b = buf(&tcp(
        TASK_A,
        IGW,
        [10, 255, 0, 10],
        CLIENT,
        80,
        40000,
        false,
    ));
    let a = sw.from_port(&st, TASK_PORT, &mut b, 1);
    assert!(
        matches!(a, Action::Encap { vtep, .. } if vtep == ip(NODE_B)),
        "{a:?}"
    );
    assert_eq!(&b.data()[0..6], &SBOX_B, "to the ingress node's sandbox");
    assert_eq!(endpoints(b.data()), ([10, 255, 0, 10], 80, CLIENT, 40000));
    // a reply to a client nobody brought in goes nowhere
    let mut b = buf(&tcp(TASK_A, IGW, [10, 255, 0, 10], CLIENT, 80, 1, false));
    assert_eq!(
        sw.from_port(&st, TASK_PORT, &mut b, 1),
        Action::Drop(DropReason::NoRoute)
    );
}

#[test]
fn policy_verdict_takes_the_longest_prefix() {
    let r = |from: [u8; 4], prefix, action| PolicyRule {
        proto: 6,
        port: 80,
        from: (prefix > 0).then(|| (Ipv4Addr::from(from).into(), prefix)),
        action,
        id: u32::from(prefix) + 1,
        audit: false,
    };
    let rules = [
        r([0, 0, 0, 0], 0, PolicyAction::Drop),
        r([10, 0, 0, 0], 8, PolicyAction::Accept),
        r([10, 1, 0, 0], 16, PolicyAction::Reject),
    ];
    let v = |a: [u8; 4], port| {
        let v = policy_verdict(&rules, 6, port, Ipv4Addr::from(a).into());
        assert_eq!(v.audit, None, "no audit rule");
        (v.action, v.rule)
    };
    assert_eq!(v([192, 0, 2, 1], 80), (PolicyAction::Drop, 1));
    assert_eq!(v([10, 2, 0, 1], 80), (PolicyAction::Accept, 9));
    assert_eq!(v([10, 1, 0, 1], 80), (PolicyAction::Reject, 17));
    assert_eq!(
        v([192, 0, 2, 1], 81),
        (PolicyAction::Accept, 0),
        "other ports"
    );
    assert_eq!(
        policy_verdict(&rules, 17, 80, Ipv4Addr::new(192, 0, 2, 1).into()).action,
        PolicyAction::Accept,
        "other protocols"
    );
}

#[test]
fn an_audit_rule_is_weighed_but_not_applied() {
    let rule = |from: Option<[u8; 4]>, action, id, audit| PolicyRule {
        proto: 6,
        port: 80,
        from: from.map(|a| (Ipv4Addr::from(a).into(), 24)),
        action,
        id,
        audit,
    };
    let at =
        |rules: &[PolicyRule], a: [u8; 4]| policy_verdict(rules, 6, 80, Ipv4Addr::from(a).into());
    // alone: the connection is accepted, and the audit says it would be dropped
    let rules = [rule(None, PolicyAction::Drop, 4, true)];
    let v = at(&rules, [192, 0, 2, 1]);
    assert_eq!((v.action, v.rule), (PolicyAction::Accept, 0));
    assert_eq!(v.audit, Some((PolicyAction::Drop, 4)));
    // beside an enforced drop of everyone, an audited allow-list says who
    // would get through
    let rules = [
        rule(None, PolicyAction::Drop, 1, false),
        rule(Some([192, 0, 2, 0]), PolicyAction::Accept, 2, true),
    ];
    let v = at(&rules, [192, 0, 2, 1]);
    assert_eq!((v.action, v.rule), (PolicyAction::Drop, 1));
    assert_eq!(v.audit, Some((PolicyAction::Accept, 2)));
    // where the audit rule agrees with what is done, or does not cover the
    // source, it says nothing
    assert_eq!(at(&rules, [198, 51, 100, 1]).audit, None);
    let rules = [
        rule(None, PolicyAction::Reject, 1, false),
        rule(Some([192, 0, 2, 0]), PolicyAction::Reject, 2, true),
    ];
    assert_eq!(at(&rules, [192, 0, 2, 1]).audit, None);
}

/// A TCP segment: a bare SYN (`syn`), or an ACK carrying `payload`; with
/// `syn` and a non-empty payload, a SYN-ACK.
fn seg(
    macs: (Mac, Mac),
    (sip, dip): ([u8; 4], [u8; 4]),
    (sport, dport): (u16, u16),
    seq: u32,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let (flags, payload) = match (syn, payload.is_empty()) {
        (true, true) => (SYN, payload),
        (true, false) => (SYN | ACK, &[][..]),
        (false, _) => (ACK, payload),
    };
    tcp_segment(macs, (sip, sport), (dip, dport), seq, flags, payload)
}

#[test]
fn connections_of_a_backend_that_leaves_are_reset_at_both_ends() {
    let mut st = node_a();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    // handshake through the sandbox to the local task, then data both ways
    let f = tcp_segment(
        (HOST, SBOX),
        (CLIENT, 40000),
        (SBOX_IP, 8080),
        1000,
        SYN,
        &[],
    );
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut buf(&f), 0),
        Action::Deliver(TASK_PORT)
    );
    let tip = [10, 255, 0, 10];
    let synack = seg((TASK_A, IGW), (tip, CLIENT), (80, 40000), 5000, true, b"-");
    assert_eq!(
        sw.from_port(&st, TASK_PORT, &mut buf(&synack), 1),
        Action::Deliver(SANDBOX_PORT)
    );
    let data = seg(
        (HOST, SBOX),
        (CLIENT, SBOX_IP),
        (40000, 8080),
        1001,
        false,
        b"GET",
    );
    sw.from_port(&st, SANDBOX_PORT, &mut buf(&data), 2);
    let answer = seg(
        (TASK_A, IGW),
        (tip, CLIENT),
        (80, 40000),
        5001,
        false,
        b"200 OK",
    );
    sw.from_port(&st, TASK_PORT, &mut buf(&answer), 3);
    // the task goes unhealthy: its connection is removed and reported once
    let ing_net = st.networks.get_mut(&IVNI).unwrap();
    ing_net.services.get_mut(&0x100).unwrap().backends[0].healthy = false;
    let gone = sw.on_state(&st);
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(sw.on_state(&st).is_empty(), "reported once");
    // the client hears a RST from the published address, at the sequence number
    // the task would have sent next; the task hears one from the client
    let mut b = PacketBuf::new();
    assert_eq!(
        sw.reset(&st, &gone[0], true, &mut b),
        Action::Deliver(SANDBOX_PORT)
    );
    assert_eq!(endpoints(b.data()), (SBOX_IP, 8080, CLIENT, 40000));
    let p = SlicedPacket::from_ethernet(b.data()).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not tcp")
    };
    assert!(t.rst());
    assert_eq!(t.sequence_number(), 5001 + 6);
    assert_eq!(&b.data()[0..6], &HOST);
    let mut b = PacketBuf::new();
    assert_eq!(
        sw.reset(&st, &gone[0], false, &mut b),
        Action::Deliver(TASK_PORT)
    );
    assert_eq!(endpoints(b.data()), (CLIENT, 40000, tip, 80));
    let p = SlicedPacket::from_ethernet(b.data()).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not tcp")
    };
    assert!(t.rst());
    assert_eq!(t.sequence_number(), 1001 + 3);
    assert_eq!(sw.counters.resets_sent, 2);
}

#[test]
fn a_task_that_refuses_new_connections_is_taken_out_passively() {
    let st = node_a();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let tip = [10, 255, 0, 10];
    let mut to_local = 0;
    // the local task answers every SYN with a RST; the remote one is fine
    for i in 0..12u16 {
        let syn = seg(
            (HOST, SBOX),
            (CLIENT, SBOX_IP),
            (41000 + i, 8080),
            7,
            true,
            &[],
        );
        let mut b = buf(&syn);
        if sw.from_port(&st, SANDBOX_PORT, &mut b, u64::from(i)) == Action::Deliver(TASK_PORT) {
            to_local += 1;
            let refusal = crate::wire::tcp::Repr {
                ack_number: 8,
                window: 0,
                ..build::tcp(80, 41000 + i, 0, RST | ACK)
            };
            let rst = build::eth(TASK_A, IGW).ipv4(tip, CLIENT).tcp(refusal, &[]);
            sw.from_port(&st, TASK_PORT, &mut buf(&rst), u64::from(i));
        }
    }
    assert_eq!(to_local, 3, "out after three refusals");
    // a client retransmitting its SYN to a silent backend is moved on
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let mut first = None;
    for (n, t) in [0u64, 1000, 3000, 7000].into_iter().enumerate() {
        let syn = seg((HOST, SBOX), (CLIENT, SBOX_IP), (42000, 8080), 9, true, &[]);
        let mut b = buf(&syn);
        let a = sw.from_port(&st, SANDBOX_PORT, &mut b, t);
        if n == 0 {
            first = Some(a);
        }
        let _ = (n, a);
    }
    // three unanswered SYNs to the first pick (the local task) took it out:
    // the fourth retransmission went elsewhere
    assert_eq!(first, Some(Action::Deliver(TASK_PORT)));
    let syn = seg((HOST, SBOX), (CLIENT, SBOX_IP), (42000, 8080), 9, true, &[]);
    let a = sw.from_port(&st, SANDBOX_PORT, &mut buf(&syn), 15000);
    assert!(matches!(a, Action::Encap { .. }), "{a:?}");
}

#[test]
fn after_a_failover_cached_replies_follow_the_client_to_its_new_ingress_node() {
    const SBOX_C: Mac = [2, 0, 0, 0, 0xff, 4];
    const NODE_C: &str = "192.0.2.3";
    let mut st = node_a();
    let net = st.networks.get_mut(&IVNI).unwrap();
    net.members.push(ip(NODE_C));
    net.macs.insert(SBOX_C, Location::Remote(ip(NODE_C)));
    st.ingress.as_mut().unwrap().sandbox_macs.insert(SBOX_C);
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let task = [10, 255, 0, 10];
    let from_client = |sbox, seq, syn, payload: &[u8]| {
        datagram(&seg(
            (sbox, TASK_A),
            (CLIENT, task),
            (40000, 80),
            seq,
            syn,
            payload,
        ))
    };
    let reply = |seq, syn, payload: &[u8]| {
        buf(&seg(
            (TASK_A, IGW),
            (task, CLIENT),
            (80, 40000),
            seq,
            syn,
            payload,
        ))
    };
    // established through node B's ingress; the task's replies go back there,
    // the later ones from the worker's cache
    let mut d = from_client(SBOX_B, 100, true, b"");
    sw.from_underlay(&st, ip(NODE_B), &mut d, 0, false);
    let mut b = reply(900, true, b"x");
    sw.from_port(&st, TASK_PORT, &mut b, 0);
    let mut d = from_client(SBOX_B, 101, false, b"");
    assert_eq!(
        sw.from_underlay(&st, ip(NODE_B), &mut d, 0, false),
        Action::Deliver(TASK_PORT)
    );
    for seq in [901, 906] {
        let mut b = reply(seq, false, b"hello");
        let a = sw.from_port(&st, TASK_PORT, &mut b, 1);
        assert!(
            matches!(a, Action::Encap { vtep, .. } if vtep == ip(NODE_B)),
            "{a:?}"
        );
    }
    // node B goes away; the client's next segment comes in through node C
    let mut d = from_client(SBOX_C, 101, false, b"more");
    assert_eq!(
        sw.from_underlay(&st, ip(NODE_C), &mut d, 2, false),
        Action::Deliver(TASK_PORT)
    );
    let mut b = reply(911, false, b"hello");
    let a = sw.from_port(&st, TASK_PORT, &mut b, 3);
    assert!(
        matches!(a, Action::Encap { vtep, .. } if vtep == ip(NODE_C)),
        "{a:?}"
    );
    assert_eq!(&b.data()[0..6], &SBOX_C);
}

#[test]
fn a_source_over_its_rate_is_dropped_and_its_connections_go_on() {
    use crate::lb::limit::{RateLimit, SourceLimiter};
    let mut st = node_a();
    let limit = RateLimit {
        per_sec: 10,
        burst: 3,
    };
    st.ingress.as_mut().unwrap().rate_limit = Some(Arc::new(SourceLimiter::new(limit)));
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let syn = |src: [u8; 4], sport: u16| buf(&tcp(HOST, SBOX, src, SBOX_IP, sport, 8080, true));
    let t0 = 10_000;
    let mut served = 0;
    for sport in 0..10 {
        match sw.from_port(&st, SANDBOX_PORT, &mut syn(CLIENT, 30_000 + sport), t0) {
            Action::Drop(DropReason::IngressRateLimited) => {}
            _ => served += 1,
        }
    }
    assert_eq!(served, 3, "the burst, then nothing");
    assert_eq!(sw.counters.dropped(DropReason::IngressRateLimited), 7);
    // a connection let in carries on: its packets never ask the limiter
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 30_000, 8080, false));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, t0 + 1),
        Action::Deliver(TASK_PORT)
    );
    // another client is not held back by this one
    let other = [198, 51, 100, 8];
    let a = sw.from_port(&st, SANDBOX_PORT, &mut syn(other, 1), t0 + 1);
    assert!(!matches!(a, Action::Drop(_)), "{a:?}");
    // 100 ms later the first may open one more (10/s)
    let a = sw.from_port(&st, SANDBOX_PORT, &mut syn(CLIENT, 31_000), t0 + 100);
    assert!(!matches!(a, Action::Drop(_)), "{a:?}");
    let a = sw.from_port(&st, SANDBOX_PORT, &mut syn(CLIENT, 31_001), t0 + 100);
    assert_eq!(a, Action::Drop(DropReason::IngressRateLimited));
    // refused by policy first: a dropped connection spends no token
    st.ingress.as_mut().unwrap().policies.push(PolicyRule {
        proto: 6,
        port: 8080,
        from: Some((Ipv4Addr::from([198, 51, 100, 9]).into(), 32)),
        action: PolicyAction::Drop,
        id: 0,
        audit: false,
    });
    sw.on_state(&st);
    for sport in 0..5 {
        let a = sw.from_port(&st, SANDBOX_PORT, &mut syn([198, 51, 100, 9], sport), t0);
        assert_eq!(a, Action::Drop(DropReason::PolicyDrop));
    }
    assert_eq!(sw.counters.dropped(DropReason::IngressRateLimited), 8);
}

#[test]
fn a_syn_flood_from_random_sources_leaves_the_table_at_its_bound() {
    let st = node_a();
    let ct = Arc::new(Mutex::new(Conntrack::new(256)));
    let mut sw = Switch::with_conntrack(16, ct.clone());
    sw.on_state(&st);
    // a real client's connection, established before the flood
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40_000, 8080, true));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 0),
        Action::Deliver(TASK_PORT)
    );
    let mut b = buf(&tcp_segment(
        (TASK_A, IGW),
        ([10, 255, 0, 10], 80),
        (CLIENT, 40_000),
        100,
        SYN | ACK,
        b"",
    ));
    assert_eq!(
        sw.from_port(&st, TASK_PORT, &mut b, 1),
        Action::Deliver(SANDBOX_PORT)
    );
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40_000, 8080, false));
    sw.from_port(&st, SANDBOX_PORT, &mut b, 2);
    let mut x: u32 = 7;
    for i in 0..20_000u64 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let src = (0xC612_0000 | (x >> 15)).to_be_bytes(); // 198.18.0.0/15
        let mut b = buf(&tcp(HOST, SBOX, src, SBOX_IP, x as u16, 8080, true));
        sw.from_port(&st, SANDBOX_PORT, &mut b, 3 + i / 20);
        assert!(ct.lock().unwrap().len() <= 256);
    }
    let c = ct.lock().unwrap();
    assert_eq!(c.len(), 256, "full, never past it");
    assert!(c.evicted >= 19_000, "{}", c.evicted);
    drop(c);
    // the established connection survived: half-open ones went first
    let mut b = buf(&tcp(HOST, SBOX, CLIENT, SBOX_IP, 40_000, 8080, false));
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut b, 2_000),
        Action::Deliver(TASK_PORT)
    );
    assert_eq!(endpoints(b.data()), (CLIENT, 40_000, [10, 255, 0, 10], 80));
}

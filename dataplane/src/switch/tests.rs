use super::*;
use crate::wire::build;
use crate::wire::neighbor::tests::{arp_request, solicitation};
use std::net::Ipv4Addr;

pub(super) const A: Mac = [2, 0, 0, 0, 0, 0xa];
pub(super) const B: Mac = [2, 0, 0, 0, 0, 0xb];
const R: Mac = [2, 0, 0, 0, 0, 0xc];
pub(super) const GW: Mac = [2, 0x56, 0x58, 0, 0, 7];
pub(super) const VNI: u32 = 7;

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn state() -> SwitchState {
    let mut net = NetworkView {
        vni: VNI,
        gateway_mac: GW,
        gateways: vec![ip("10.0.0.1")],
        members: vec![ip("192.0.2.2"), ip("192.0.2.9")],
        static_peers: vec![ip("192.0.2.9")],
        local_ports: vec![PortId(1), PortId(2)],
        ..Default::default()
    };
    net.macs.insert(A, Location::Local(PortId(1)));
    net.macs.insert(B, Location::Local(PortId(2)));
    net.macs.insert(R, Location::Remote(ip("192.0.2.2")));
    for (i, m) in [
        ("10.0.0.10", A),
        ("10.0.0.11", B),
        ("10.0.0.12", R),
        ("10.0.0.1", GW),
    ] {
        net.neighbors.insert(ip(i), m);
    }
    net.neighbors.insert(ip("fd00::12"), R);
    let mut st = SwitchState::default();
    st.networks.insert(VNI, net);
    st.ports.insert(
        PortId(1),
        PortView {
            vni: VNI,
            mac: A,
            ips: vec![ip("10.0.0.10"), ip("fd00::10")],
        },
    );
    st.ports.insert(
        PortId(2),
        PortView {
            vni: VNI,
            mac: B,
            ips: vec![ip("10.0.0.11")],
        },
    );
    st
}

fn udp(src: Mac, dst: Mac, sip: [u8; 4], dip: [u8; 4], len: usize) -> Vec<u8> {
    build::eth(src, dst)
        .ipv4(sip, dip)
        .udp(1000, 2000, &vec![0x5a; len])
}

pub(super) fn buf(frame: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::new();
    b.load_frame(frame);
    b
}

fn datagram(vni: u32, frame: &[u8]) -> PacketBuf {
    let mut b = PacketBuf::new();
    b.load_datagram(&build::datagram(vni, frame));
    b
}

#[test]
fn local_unicast_is_delivered() {
    let st = state();
    let mut sw = Switch::new(16);
    let f = udp(A, B, [10, 0, 0, 10], [10, 0, 0, 11], 100);
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Deliver(PortId(2))
    );
    assert_eq!(b.data(), &f[..]);
}

#[test]
fn remote_unicast_is_encapsulated_per_rfc7348() {
    let st = state();
    let mut sw = Switch::new(16);
    let f = udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12], 1400);
    let mut b = buf(&f);
    let a = sw.from_port(&st, PortId(1), &mut b, 0);
    assert!(matches!(a, Action::Encap { vtep, .. } if vtep == ip("192.0.2.2")));
    let d = b.datagram();
    assert_eq!(&d[..8], &[0x08, 0, 0, 0, 0, 0, 7, 0]);
    assert_eq!(&d[8..], &f[..]);
}

#[test]
fn broadcast_floods_to_other_ports_and_every_member() {
    let st = state();
    let mut sw = Switch::new(16);
    let f = arp_request(A, [10, 0, 0, 10], [10, 0, 0, 99]);
    let mut b = buf(&f);
    match sw.from_port(&st, PortId(1), &mut b, 0) {
        Action::Flood {
            ports, skip, vteps, ..
        } => {
            assert_eq!(ports, &[PortId(1), PortId(2)]);
            assert_eq!(skip, Some(PortId(1)));
            assert_eq!(vteps, &[ip("192.0.2.2"), ip("192.0.2.9")]);
        }
        a => panic!("{a:?}"),
    }
    assert_eq!(&b.datagram()[8..], &f[..]);
}

/// A container flooding broadcasts spends its own port's budget: past it
/// its frames are dropped and counted, while the other port's broadcasts and
/// both ports' unicast go on.
#[test]
fn a_broadcast_storm_from_one_port_spends_only_its_own_flood_budget() {
    let st = state();
    let mut sw = Switch::new(16);
    sw.set_flood_rate(Some(crate::lb::limit::RateLimit {
        per_sec: 100,
        burst: 50,
    }));
    let storm = arp_request(A, [10, 0, 0, 10], [10, 0, 0, 99]);
    let mut flooded = 0;
    for i in 0..10_000u64 {
        let mut b = buf(&storm);
        match sw.from_port(&st, PortId(1), &mut b, i / 10) {
            Action::Flood { .. } => flooded += 1,
            Action::Drop(DropReason::FloodLimited) => {}
            a => panic!("{a:?}"),
        }
    }
    // its burst, then 100 a second over the second the storm took
    assert!((140..=160).contains(&flooded), "{flooded} flooded");
    assert_eq!(
        sw.counters.dropped(DropReason::FloodLimited),
        10_000 - flooded
    );
    let mut b = buf(&arp_request(B, [10, 0, 0, 11], [10, 0, 0, 99]));
    assert!(matches!(
        sw.from_port(&st, PortId(2), &mut b, 1_000),
        Action::Flood { .. }
    ));
    let mut b = buf(&udp(A, B, [10, 0, 0, 10], [10, 0, 0, 11], 100));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 1_000),
        Action::Deliver(PortId(2))
    );
}

#[test]
fn arp_for_known_endpoint_and_gateway_is_answered() {
    let st = state();
    let mut sw = Switch::new(16);
    for (target, mac) in [([10, 0, 0, 12], R), ([10, 0, 0, 1], GW)] {
        let mut b = buf(&arp_request(A, [10, 0, 0, 10], target));
        assert_eq!(
            sw.from_port(&st, PortId(1), &mut b, 0),
            Action::Reply(PortId(1))
        );
        let rep = neighbor::parse_arp(b.data()).unwrap();
        assert!(!rep.is_request);
        assert_eq!(rep.sender_mac, mac);
        assert_eq!(rep.sender_ip, Ipv4Addr::from(target));
    }
    // a probe for its own address (duplicate address detection) is not answered
    let mut b = buf(&arp_request(A, [0, 0, 0, 0], [10, 0, 0, 10]));
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Flood { .. }
    ));
    assert_eq!(sw.counters.neighbor_replies, 2);
}

#[test]
fn neighbor_solicitation_for_known_endpoint_is_answered() {
    let st = state();
    let mut sw = Switch::new(16);
    let mut b = buf(&solicitation(
        A,
        "fd00::10".parse().unwrap(),
        "fd00::12".parse().unwrap(),
    ));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Reply(PortId(1))
    );
    assert_eq!(b.len(), 86);
    assert_eq!(&b.data()[6..12], &R);
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let st = state();
    let mut sw = Switch::new(16);
    let cases = [
        (
            udp(B, R, [10, 0, 0, 10], [10, 0, 0, 12], 10),
            DropReason::SpoofedSourceMac,
        ),
        (
            udp(A, R, [10, 0, 0, 11], [10, 0, 0, 12], 10),
            DropReason::SpoofedSourceIp,
        ),
        (
            arp_request(A, [10, 0, 0, 11], [10, 0, 0, 12]),
            DropReason::SpoofedSourceIp,
        ),
        (vec![1, 2, 3], DropReason::Malformed),
    ];
    for (f, why) in cases {
        let before = sw.counters.dropped(why);
        let mut b = buf(&f);
        assert_eq!(sw.from_port(&st, PortId(1), &mut b, 0), Action::Drop(why));
        assert_eq!(sw.counters.dropped(why), before + 1);
    }
    let mut vlan = udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12], 10);
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let mut b = buf(&vlan);
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Drop(DropReason::UnsupportedEtherType)
    );
    let mut b = buf(&udp(A, B, [10, 0, 0, 10], [10, 0, 0, 11], 10));
    assert_eq!(
        sw.from_port(&st, PortId(99), &mut b, 0),
        Action::Drop(DropReason::UnknownPort)
    );
}

#[test]
fn neighbour_discovery_cannot_speak_for_others() {
    use crate::wire::icmpv6;
    let st = state();
    let mut sw = Switch::new(16);
    let link_local: std::net::Ipv6Addr = "fe80::a".parse().unwrap();
    let all_nodes: std::net::Ipv6Addr = "ff02::1".parse().unwrap();
    let icmp = |msg_type, rest_of_header, data: &[u8]| {
        let m = icmpv6::Repr {
            msg_type,
            code: 0,
            rest_of_header,
        };
        build::eth(A, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(link_local, all_nodes)
            .ttl(255)
            .icmp(m, data)
    };
    let na = |target: &str, lladdr: Mac| {
        let mut payload = target
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        payload.extend_from_slice(&[2, 1]);
        payload.extend_from_slice(&lladdr);
        // override set, not solicited, no router
        icmp(icmpv6::NEIGHBOR_ADVERT, [0x20, 0, 0, 0], &payload)
    };
    // another endpoint's address: refused
    let mut b = buf(&na("fd00::12", A));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Drop(DropReason::SpoofedSourceIp)
    );
    // its own address but someone else's MAC in the option: refused
    let mut b = buf(&na("fd00::10", B));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Drop(DropReason::SpoofedSourceIp)
    );
    // its own address and MAC: flooded as usual
    let mut b = buf(&na("fd00::10", A));
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Flood { .. }
    ));
    // a router advertisement from a container: refused
    let ra = icmp(icmpv6::ROUTER_ADVERT, [64, 0, 7, 8], &[0u8; 8]);
    let mut b = buf(&ra);
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Drop(DropReason::SpoofedSourceIp)
    );
}

/// A container hides a router advertisement, a redirect or a forged
/// advertisement behind extension headers or in a fragment: the receiving host
/// still finds it (RFC 8200 has it walk the chain, RFC 6946 process an atomic
/// fragment alone), so the guard walks the chain too, and drops neighbour
/// discovery in any fragment (RFC 6980) and first fragments without their
/// upper-layer header (RFC 7112). Honest neighbour discovery still passes.
#[test]
fn neighbour_discovery_behind_extension_headers_is_judged() {
    use crate::fuzzing::{
        ext_fragment, ext_options, icmpv6_frame, neighbor_advertisement_body,
        router_advertisement_body,
    };
    let st = state();
    let mut sw = Switch::new(16);
    let ra = router_advertisement_body();
    let own_na = neighbor_advertisement_body("fd00::10", A);
    let forged_na = neighbor_advertisement_body("fd00::12", A);
    let other_mac_na = neighbor_advertisement_body("fd00::10", B);
    let dest = || (60u8, ext_options());
    let hbh = || (0u8, ext_options());
    let frag = |offset, more| (44u8, ext_fragment(offset, more));
    let mut past_fragment = ext_options();
    past_fragment[1] = 8; // 72 bytes: past the end of this first fragment
    let nine: Vec<_> = (0..9).map(|_| dest()).collect();
    let spoof = DropReason::SpoofedSourceIp;
    let chain = DropReason::Ipv6HeaderChain;
    let refused: Vec<(&str, Vec<u8>, DropReason)> = vec![
        (
            "RA behind destination options",
            icmpv6_frame(A, 134, &ra, &[dest()]),
            spoof,
        ),
        (
            "RA behind hop-by-hop and destination options",
            icmpv6_frame(A, 134, &ra, &[hbh(), dest()]),
            spoof,
        ),
        (
            "redirect behind destination options",
            icmpv6_frame(A, 137, &[0; 36], &[dest()]),
            spoof,
        ),
        (
            "NA for another's address behind destination options",
            icmpv6_frame(A, 136, &forged_na, &[dest()]),
            spoof,
        ),
        (
            "NA naming another's MAC behind hop-by-hop",
            icmpv6_frame(A, 136, &other_mac_na, &[hbh()]),
            spoof,
        ),
        (
            "RA in an atomic fragment",
            icmpv6_frame(A, 134, &ra, &[frag(0, false)]),
            chain,
        ),
        (
            "RA in a first fragment behind destination options",
            icmpv6_frame(A, 134, &ra, &[dest(), frag(0, true)]),
            chain,
        ),
        (
            "its own NA, fragmented",
            icmpv6_frame(A, 136, &own_na, &[frag(0, true)]),
            chain,
        ),
        (
            "a first fragment whose chain runs past it",
            icmpv6_frame(A, 134, &ra, &[frag(0, true), (60, past_fragment)]),
            chain,
        ),
        (
            "RA behind more headers than the guard walks",
            icmpv6_frame(A, 134, &ra, &nine),
            chain,
        ),
    ];
    for (what, f, why) in &refused {
        let before = sw.counters.dropped(*why);
        let mut b = buf(f);
        assert_eq!(
            sw.from_port(&st, PortId(1), &mut b, 0),
            Action::Drop(*why),
            "{what}"
        );
        assert_eq!(sw.counters.dropped(*why), before + 1, "{what}: counted");
    }
    // a first fragment without its ICMPv6 header cannot be judged
    let mut cut = icmpv6_frame(A, 128, &[], &[frag(0, true)]);
    cut.truncate(cut.len() - 4);
    cut[18..20].copy_from_slice(&8u16.to_be_bytes());
    let mut b = buf(&cut);
    assert_eq!(sw.from_port(&st, PortId(1), &mut b, 0), Action::Drop(chain));

    let passed: Vec<(&str, Vec<u8>)> = vec![
        ("its own NA", icmpv6_frame(A, 136, &own_na, &[])),
        (
            "its own NA behind destination options",
            icmpv6_frame(A, 136, &own_na, &[dest()]),
        ),
        (
            "an MLD report behind hop-by-hop (router alert)",
            icmpv6_frame(A, 143, &[0; 24], &[hbh()]),
        ),
        (
            "an echo request's first fragment",
            icmpv6_frame(A, 128, &[0; 60], &[frag(0, true)]),
        ),
        (
            "a later fragment",
            icmpv6_frame(A, 134, &ra, &[frag(8, false)]),
        ),
    ];
    for (what, f) in &passed {
        let mut b = buf(f);
        assert!(
            matches!(
                sw.from_port(&st, PortId(1), &mut b, 0),
                Action::Flood { .. }
            ),
            "{what}: flooded as usual"
        );
    }
    // an honest solicitation for a known endpoint is still answered
    let ns = solicitation(A, "fe80::a".parse().unwrap(), "fd00::12".parse().unwrap());
    let mut b = buf(&ns);
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Reply(PortId(1))
    );
}

#[test]
fn frames_for_the_gateway_have_no_route_yet() {
    let st = state();
    let mut sw = Switch::new(16);
    let mut b = buf(&udp(A, GW, [10, 0, 0, 10], [8, 8, 8, 8], 10));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Drop(DropReason::NoRoute)
    );
}

#[test]
fn underlay_datagrams_are_checked_then_delivered() {
    let st = state();
    let mut sw = Switch::new(16);
    let f = udp(R, A, [10, 0, 0, 12], [10, 0, 0, 10], 200);
    let mut b = datagram(VNI, &f);
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false),
        Action::Deliver(PortId(1))
    );
    assert_eq!(b.data(), &f[..]);

    let mut b = datagram(VNI, &f);
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.77"), &mut b, 0, false),
        Action::Drop(DropReason::NotMember)
    );
    let mut b = datagram(99, &f);
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false),
        Action::Drop(DropReason::UnknownVni)
    );
    let mut b = datagram(VNI, &f);
    b.data_mut()[0] = 0;
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false),
        Action::Drop(DropReason::BadVxlanHeader)
    );
    // R lives on 192.0.2.2: the static peer may not claim it
    let mut b = datagram(VNI, &f);
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.9"), &mut b, 0, false),
        Action::Drop(DropReason::SpoofedSourceMac)
    );
    let mut b = datagram(
        VNI,
        &udp(R, [2, 9, 9, 9, 9, 9], [10, 0, 0, 12], [10, 0, 0, 10], 20),
    );
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false),
        Action::Drop(DropReason::NoLocalDestination)
    );
}

#[test]
fn broadcast_from_underlay_goes_to_local_ports_only() {
    let st = state();
    let mut sw = Switch::new(16);
    let mut b = datagram(VNI, &arp_request(R, [10, 0, 0, 12], [10, 0, 0, 10]));
    match sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false) {
        Action::Flood {
            ports, skip, vteps, ..
        } => {
            assert_eq!(ports.len(), 2);
            assert_eq!(skip, None);
            assert!(vteps.is_empty());
        }
        a => panic!("{a:?}"),
    }
}

#[test]
fn macs_behind_static_peers_are_learned() {
    let st = state();
    let mut sw = Switch::new(16);
    let k: Mac = [2, 0x4b, 0, 0, 0, 1];
    // unknown unicast to K floods first
    let mut b = buf(&udp(A, k, [10, 0, 0, 10], [10, 0, 0, 200], 10));
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Flood { .. }
    ));
    // K speaks through the static peer, and is learned
    let mut b = datagram(VNI, &arp_request(k, [10, 0, 0, 200], [10, 0, 0, 10]));
    assert!(matches!(
        sw.from_underlay(&st, ip("192.0.2.9"), &mut b, 1, false),
        Action::Flood { .. }
    ));
    assert_eq!(sw.counters.learned, 1);
    let mut b = buf(&udp(A, k, [10, 0, 0, 10], [10, 0, 0, 200], 10));
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut b, 2),
        Action::Encap { vtep, .. } if vtep == ip("192.0.2.9")
    ));
    // a MAC from a vxmesh member is not learned (the control plane knows its own)
    let mut b = datagram(
        VNI,
        &arp_request([2, 7, 7, 7, 7, 7], [10, 0, 0, 201], [10, 0, 0, 10]),
    );
    sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 3, false);
    assert_eq!(sw.learned_len(), 1);
    // the peer is removed from the network: what it taught is forgotten
    let mut st2 = st.clone();
    st2.networks.get_mut(&VNI).unwrap().static_peers.clear();
    sw.prune_learned(&st2);
    assert_eq!(sw.learned_len(), 0);
}

proptest::proptest! {
    #[test]
    fn never_panics_on_any_input(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200), vxlan_hdr in proptest::bool::ANY) {
        let st = state();
        let mut sw = Switch::new(4);
        let mut b = PacketBuf::new();
        b.load_frame(&data);
        let _ = sw.from_port(&st, PortId(1), &mut b, 0);
        let mut d = data.clone();
        if vxlan_hdr && d.len() >= 8 { crate::wire::vxlan::emit(&mut d[..8], VNI); }
        b.load_datagram(&d);
        let _ = sw.from_underlay(&st, ip("192.0.2.9"), &mut b, 0, false);
        let mut b = PacketBuf::new();
        b.load_datagram(&d);
        let _ = sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false);
    }
}

#[test]
fn encrypted_networks_refuse_plain_vxlan_and_mark_sends_secure() {
    let mut st = state();
    st.networks.get_mut(&VNI).unwrap().encrypted = true;
    let mut sw = Switch::new(16);
    let f = udp(R, A, [10, 0, 0, 12], [10, 0, 0, 10], 20);
    let mut b = datagram(VNI, &f);
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false),
        Action::Drop(DropReason::Unencrypted)
    );
    let mut b = datagram(VNI, &f);
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, true),
        Action::Deliver(PortId(1))
    );
    let mut b = buf(&udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12], 20));
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Encap { secure: true, .. }
    ));
}

#[test]
fn oversized_packets_get_icmp_from_the_gateway() {
    let mut st = state();
    st.networks.get_mut(&VNI).unwrap().mtu = 1000;
    let mut sw = Switch::new(16);
    let mut f = udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12], 1200);
    f[14 + 6] |= 0x40; // DF
    let mut b = buf(&f);
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Reply(PortId(1))
    );
    let d = b.data();
    assert_eq!(&d[6..12], &GW);
    assert_eq!(&d[14 + 12..14 + 16], &[10, 0, 0, 1], "from the gateway");
    assert_eq!(&d[34..36], &[3, 4], "fragmentation needed");
    assert_eq!(u16::from_be_bytes([d[40], d[41]]), 1000);
    // within the MTU, it goes
    let mut b = buf(&udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12], 900));
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Encap { .. }
    ));
}

pub(super) const SYN: u8 = 0x02;
pub(super) const ACK: u8 = 0x10;
pub(super) const FIN: u8 = 0x01;
pub(super) const RST: u8 = 0x04;

/// The switch tests' one TCP frame builder: `flags` of [`SYN`], [`FIN`],
/// [`RST`], [`ACK`] (acknowledging 1), window 1000.
pub(super) fn tcp_segment(
    (src, dst): (Mac, Mac),
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    build::eth(src, dst)
        .ipv4(from.0, to.0)
        .tcp(build::tcp(from.1, to.1, seq, flags), payload)
}

/// A bare SYN, or an ACK carrying one byte.
fn tcp(
    src: Mac,
    dst: Mac,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
) -> Vec<u8> {
    let flags = if syn { SYN } else { ACK };
    tcp_segment((src, dst), (sip, sport), (dip, dport), 1, flags, b"x")
}

pub(super) fn with_vip() -> SwitchState {
    let mut st = state();
    let net = st.networks.get_mut(&VNI).unwrap();
    net.vips.insert(ip("10.0.0.100"), 0x100);
    net.backend_ips.extend([ip("10.0.0.11"), ip("10.0.0.12")]);
    net.neighbors.insert(ip("10.0.0.100"), GW);
    net.services.insert(
        0x100,
        ServiceView {
            scheduler: crate::lb::scheduler::Kind::Rr,
            backends: vec![
                BackendView {
                    v4: Some(Ipv4Addr::new(10, 0, 0, 11)),
                    v6: None,
                    weight: 1,
                    healthy: true,
                    local: false,
                },
                BackendView {
                    v4: Some(Ipv4Addr::new(10, 0, 0, 12)),
                    v6: None,
                    weight: 1,
                    healthy: true,
                    local: false,
                },
            ],
        },
    );
    st
}

fn ipv4_src_dst(f: &[u8]) -> ([u8; 4], [u8; 4]) {
    (f[26..30].try_into().unwrap(), f[30..34].try_into().unwrap())
}

#[test]
fn vip_connections_are_balanced_and_replies_come_from_the_vip() {
    let st = with_vip();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    // flow 1: the first backend, local on port 2
    let mut b = buf(&tcp(A, GW, [10, 0, 0, 10], [10, 0, 0, 100], 5000, 80, true));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Deliver(PortId(2))
    );
    assert_eq!(ipv4_src_dst(b.data()), ([10, 0, 0, 10], [10, 0, 0, 11]));
    assert_eq!(&b.data()[0..6], &B);
    let h = Ipv4HeaderSlice::from_slice(&b.data()[14..]).unwrap();
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
    // the same flow again sticks to its backend
    let mut b = buf(&tcp(
        A,
        GW,
        [10, 0, 0, 10],
        [10, 0, 0, 100],
        5000,
        80,
        false,
    ));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Deliver(PortId(2))
    );
    // B's reply reaches A from the VIP and the gateway MAC
    let mut b = buf(&tcp(B, A, [10, 0, 0, 11], [10, 0, 0, 10], 80, 5000, false));
    assert_eq!(
        sw.from_port(&st, PortId(2), &mut b, 0),
        Action::Deliver(PortId(1))
    );
    assert_eq!(ipv4_src_dst(b.data()), ([10, 0, 0, 100], [10, 0, 0, 10]));
    assert_eq!(&b.data()[6..12], &GW);
    // flow 2: round robin moves on to the remote backend
    let mut b = buf(&tcp(A, GW, [10, 0, 0, 10], [10, 0, 0, 100], 5001, 80, true));
    assert!(
        matches!(sw.from_port(&st, PortId(1), &mut b, 0), Action::Encap { vtep, .. } if vtep == ip("192.0.2.2"))
    );
    assert_eq!(&b.data()[0..6], &R);
    // its reply comes over the underlay and is rewritten before delivery
    let mut b = datagram(
        VNI,
        &tcp(R, A, [10, 0, 0, 12], [10, 0, 0, 10], 80, 5001, false),
    );
    assert_eq!(
        sw.from_underlay(&st, ip("192.0.2.2"), &mut b, 0, false),
        Action::Deliver(PortId(1))
    );
    assert_eq!(ipv4_src_dst(b.data()), ([10, 0, 0, 100], [10, 0, 0, 10]));
    assert_eq!(sw.conntrack().lock().unwrap().len(), 2);
}

#[test]
fn a_vip_without_healthy_backends_drops_with_a_reason() {
    let mut st = with_vip();
    let svc = st
        .networks
        .get_mut(&VNI)
        .unwrap()
        .services
        .get_mut(&0x100)
        .unwrap();
    for b in svc.backends.iter_mut() {
        b.healthy = false;
    }
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    let mut b = buf(&tcp(A, GW, [10, 0, 0, 10], [10, 0, 0, 100], 5000, 80, true));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Drop(DropReason::NoBackend)
    );
    // not a VIP: nothing routes yet
    let mut b = buf(&tcp(A, GW, [10, 0, 0, 10], [10, 0, 0, 99], 5000, 80, true));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Drop(DropReason::NoRoute)
    );
}

proptest::proptest! {
    /// The VIP, conntrack, NAT and DNS paths never panic either, whatever an
    /// endpoint sends to the gateway MAC or a backend sends back.
    #[test]
    fn lb_and_dns_paths_never_panic(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..120), proto in proptest::prop_oneof![proptest::strategy::Just(6u8), proptest::strategy::Just(17u8), proptest::num::u8::ANY], dport in proptest::prop_oneof![proptest::strategy::Just(53u16), proptest::strategy::Just(80u16), proptest::num::u16::ANY]) {
        let mut st = with_vip();
        st.networks.get_mut(&VNI).unwrap().dns.insert("api".into(), vec![ip("10.0.0.100")]);
        let mut sw = Switch::new(4);
        sw.on_state(&st);
        for dst_ip in [[10, 0, 0, 100], [10, 0, 0, 1]] {
            // a frame to the gateway MAC: Ethernet + IPv4 header (proto varies) + random rest
            let mut f = vec![0u8; 14 + 20];
            f[0..6].copy_from_slice(&GW);
            f[6..12].copy_from_slice(&A);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[14 + 9] = proto;
            f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 10]);
            f[14 + 16..14 + 20].copy_from_slice(&dst_ip);
            let mut l4 = vec![0u8; 4];
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
            f.extend_from_slice(&l4);
            f.extend_from_slice(&tail);
            let len = (f.len() - 14) as u16;
            f[14 + 2..14 + 4].copy_from_slice(&len.to_be_bytes());
            let mut b = buf(&f);
            let _ = sw.from_port(&st, PortId(1), &mut b, 0);
            // and the same bytes as a "reply" from a backend
            let mut r = f.clone();
            r[0..6].copy_from_slice(&A);
            r[6..12].copy_from_slice(&B);
            r[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 11]);
            r[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 10]);
            let mut b = buf(&r);
            let _ = sw.from_port(&st, PortId(2), &mut b, 0);
        }
    }
}

#[test]
fn network_traffic_counts_frames_to_and_from_other_nodes() {
    let mut st = state();
    let traffic = crate::traffic::Traffic::new(2);
    st.networks.get_mut(&VNI).unwrap().traffic = traffic.clone();
    let mut sw = Switch::new(16);
    sw.set_lane(1);
    // between two local ports: not the network's traffic with other nodes
    let f = udp(A, B, [10, 0, 0, 10], [10, 0, 0, 11], 100);
    sw.from_port(&st, PortId(1), &mut buf(&f), 0);
    assert_eq!(traffic.totals(), Default::default());
    // one frame to a remote MAC, one broadcast replicated to both members
    let f = udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12], 100);
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut buf(&f), 0),
        Action::Encap { .. }
    ));
    let arp = arp_request(A, [10, 0, 0, 10], [10, 0, 0, 99]);
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut buf(&arp), 0),
        Action::Flood { .. }
    ));
    let t = traffic.totals();
    assert_eq!((t.tx_packets, t.rx_packets), (3, 0));
    assert_eq!(t.tx_bytes, (f.len() + 2 * arp.len()) as u64);
    // from the underlay: counted once accepted from a member, never before
    let back = udp(R, A, [10, 0, 0, 12], [10, 0, 0, 10], 200);
    let a = sw.from_underlay(&st, ip("192.0.2.2"), &mut datagram(VNI, &back), 0, false);
    assert_eq!(a, Action::Deliver(PortId(1)));
    sw.from_underlay(&st, ip("192.0.2.77"), &mut datagram(VNI, &back), 0, false);
    let t = traffic.totals();
    assert_eq!((t.rx_packets, t.rx_bytes), (1, back.len() as u64));
    // a switch counts in its own lane only: a lane the counters lack takes nothing
    sw.set_lane(2);
    sw.from_port(&st, PortId(1), &mut buf(&f), 0);
    assert_eq!(traffic.totals(), t);
}

/// A TSO super-frame is switched once: the MTU applies to the segments it
/// becomes (headers + MSS), and the network counts those segments, as if
/// each had been switched alone.
#[test]
fn a_super_frame_is_judged_and_counted_by_its_segments() {
    let mut st = state();
    st.networks.get_mut(&VNI).unwrap().mtu = 1000;
    let traffic = crate::traffic::Traffic::new(1);
    st.networks.get_mut(&VNI).unwrap().traffic = traffic.clone();
    let mut sw = Switch::new(16);
    let payload = vec![7u8; 4 * 900 + 100];
    let f = tcp_segment(
        (A, R),
        ([10, 0, 0, 10], 40000),
        ([10, 0, 0, 12], 80),
        1,
        ACK,
        &payload,
    );
    let hdr_len = 14 + 20 + 20;
    let mut b = buf(&f);
    b.set_segmented(Some(crate::buf::Segmented { hdr_len, mss: 900 }));
    assert!(matches!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Encap { .. }
    ));
    let t = traffic.totals();
    assert_eq!(t.tx_packets, 5, "four full segments and one of 100 bytes");
    assert_eq!(t.tx_bytes, (f.len() + 4 * hdr_len) as u64);
    // the same bytes as one frame are too big for the network
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut buf(&f), 0),
        Action::Reply(PortId(1))
    );
    // and so are segments whose own size is over the MTU
    let mut b = buf(&f);
    b.set_segmented(Some(crate::buf::Segmented { hdr_len, mss: 1000 }));
    assert_eq!(
        sw.from_port(&st, PortId(1), &mut b, 0),
        Action::Reply(PortId(1))
    );
}

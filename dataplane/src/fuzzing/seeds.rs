//! The seeds of each target: valid inputs the committed corpus started from.

use super::*;
use crate::buf::PacketBuf;
use crate::offload::vnet;

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

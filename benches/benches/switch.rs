//! Criterion benches of the sans-IO per-packet core: one frame per iteration
//! through a pre-built `SwitchState`, reusing one `PacketBuf`.
//!
//! Every switch bench reloads the frame into the buffer each iteration (the core
//! rewrites it in place), so it includes one frame copy; `copy_only/*` measure just
//! that reload, to be subtracted. Run with `cargo bench -p vxmesh-benches`.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use etherparse::PacketBuilder;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use vxmesh_dataplane::wire::{flow_hash::flow_hash, vxlan};
use vxmesh_dataplane::{
    Action, Location, Mac, NetworkView, PacketBuf, PortId, PortView, Switch, SwitchState,
};

const A: Mac = [2, 0, 0, 0, 0, 0xa];
const B: Mac = [2, 0, 0, 0, 0, 0xb];
const R: Mac = [2, 0, 0, 0, 0, 0xc];
const GW: Mac = [2, 0x56, 0x58, 0, 0, 7];
const BCAST: Mac = [0xff; 6];
const VNI: u32 = 7;
/// UDP payload of the data frames: a 1442-byte Ethernet frame, 1450-byte datagram.
const PAYLOAD: usize = 1400;
const PORT_A: PortId = PortId(1);
const PORT_B: PortId = PortId(2);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The switch state of the core's unit tests (two local ports A and B, one remote
/// MAC R behind 192.0.2.2, a static peer), plus `extra_remote` remote MACs spread
/// over the two member VTEPs. Returns the state and the extra MACs.
fn state(extra_remote: usize) -> (SwitchState, Vec<Mac>) {
    let members = vec![ip("192.0.2.2"), ip("192.0.2.9")];
    let mut net = NetworkView {
        vni: VNI,
        gateway_mac: GW,
        gateways: vec![ip("10.0.0.1")],
        members: members.clone(),
        static_peers: vec![ip("192.0.2.9")],
        local_ports: vec![PORT_A, PORT_B],
        ..Default::default()
    };
    net.macs.insert(A, Location::Local(PORT_A));
    net.macs.insert(B, Location::Local(PORT_B));
    net.macs.insert(R, Location::Remote(ip("192.0.2.2")));
    for (i, m) in [
        ("10.0.0.10", A),
        ("10.0.0.11", B),
        ("10.0.0.12", R),
        ("10.0.0.1", GW),
    ] {
        net.neighbors.insert(ip(i), m);
    }
    let extra: Vec<Mac> = (0..extra_remote as u32)
        .map(|i| {
            let b = i.to_be_bytes();
            [0x02, 0x52, b[0], b[1], b[2], b[3]]
        })
        .collect();
    for (i, m) in extra.iter().enumerate() {
        net.macs
            .insert(*m, Location::Remote(members[i % members.len()]));
    }
    let mut st = SwitchState::default();
    st.networks.insert(VNI, net);
    st.ports.insert(
        PORT_A,
        PortView {
            vni: VNI,
            mac: A,
            ips: vec![ip("10.0.0.10"), ip("fd00::10")],
        },
    );
    st.ports.insert(
        PORT_B,
        PortView {
            vni: VNI,
            mac: B,
            ips: vec![ip("10.0.0.11")],
        },
    );
    (st, extra)
}

fn udp(src: Mac, dst: Mac, sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4(sip, dip, 64)
        .udp(1000, 2000)
        .write(&mut out, &[0x5a; PAYLOAD])
        .unwrap();
    out
}

fn arp_request(src_mac: Mac, src_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

fn datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::VXLAN_HEADER_LEN];
    vxlan::emit(&mut d, vni);
    d.extend_from_slice(frame);
    d
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g
}

/// Benches `from_port` on `frame` from port A, after checking it takes the
/// expected path.
fn bench_from_port(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    st: &SwitchState,
    frame: &[u8],
    expect: impl Fn(&Action) -> bool,
) {
    let mut sw = Switch::new(4096);
    let mut buf = PacketBuf::new();
    buf.load_frame(frame);
    let a = sw.from_port(st, PORT_A, &mut buf, 0);
    assert!(expect(&a), "{name}: unexpected action {a:?}");
    g.bench_function(name, |b| {
        b.iter(|| {
            buf.load_frame(frame);
            black_box(sw.from_port(st, PORT_A, black_box(&mut buf), 0))
        })
    });
}

fn baseline(c: &mut Criterion) {
    let data = udp(A, B, [10, 0, 0, 10], [10, 0, 0, 11]);
    let arp = arp_request(A, [10, 0, 0, 10], [10, 0, 0, 12]);
    let mut g = group(c, "copy_only");
    let mut buf = PacketBuf::new();
    for (name, f) in [("frame_1442B", &data), ("arp_42B", &arp)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.load_frame(black_box(f));
                black_box(&mut buf);
            })
        });
    }
    g.finish();

    let mut g = group(c, "flow_hash");
    g.bench_function("ipv4_udp_1442B", |b| b.iter(|| flow_hash(black_box(&data))));
    g.finish();
}

fn from_port(c: &mut Criterion) {
    let (st, _) = state(0);
    let mut g = group(c, "from_port");

    let f = udp(A, B, [10, 0, 0, 10], [10, 0, 0, 11]);
    bench_from_port(&mut g, "local_deliver", &st, &f, |a| {
        *a == Action::Deliver(PORT_B)
    });

    // The same frame without the per-iteration reload (delivery leaves the buffer
    // as it was): a lower bound that shows what the reload costs beyond `copy_only`.
    let mut sw = Switch::new(4096);
    let mut buf = PacketBuf::new();
    buf.load_frame(&f);
    assert_eq!(
        sw.from_port(&st, PORT_A, &mut buf, 0),
        Action::Deliver(PORT_B)
    );
    g.bench_function("local_deliver_no_reload", |b| {
        b.iter(|| black_box(sw.from_port(&st, PORT_A, black_box(&mut buf), 0)))
    });

    let f = udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12]);
    let vtep = ip("192.0.2.2");
    bench_from_port(
        &mut g,
        "encap_remote",
        &st,
        &f,
        |a| matches!(a, Action::Encap { vtep: v, .. } if *v == vtep),
    );

    let f = arp_request(A, [10, 0, 0, 10], [10, 0, 0, 12]);
    bench_from_port(&mut g, "arp_reply", &st, &f, |a| {
        *a == Action::Reply(PORT_A)
    });

    let f = udp(A, BCAST, [10, 0, 0, 10], [10, 0, 0, 255]);
    bench_from_port(
        &mut g,
        "flood_broadcast",
        &st,
        &f,
        |a| matches!(a, Action::Flood { ports, vteps, .. } if ports.len() == 2 && vteps.len() == 2),
    );

    // Many remote MACs: the destination changes every frame, round-robin over all
    // of them, so lookups walk the whole table (which outgrows the caches).
    for (name, n) in [
        ("encap_remote_1k_macs", 1_000),
        ("encap_remote_64k_macs", 65_536),
    ] {
        let (st, macs) = state(n);
        let f = udp(A, R, [10, 0, 0, 10], [10, 0, 0, 12]);
        let mut sw = Switch::new(4096);
        let mut buf = PacketBuf::new();
        for m in &macs {
            buf.load_frame(&f);
            buf.data_mut()[..6].copy_from_slice(m);
            let a = sw.from_port(&st, PORT_A, &mut buf, 0);
            assert!(
                matches!(a, Action::Encap { .. }),
                "{name}: unexpected action {a:?}"
            );
        }
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.load_frame(&f);
                buf.data_mut()[..6].copy_from_slice(&macs[i]);
                i += 1;
                if i == macs.len() {
                    i = 0;
                }
                black_box(sw.from_port(&st, PORT_A, black_box(&mut buf), 0))
            })
        });
    }
    g.finish();
}

fn from_underlay(c: &mut Criterion) {
    let (st, _) = state(0);
    let mut g = group(c, "from_underlay");
    let d = datagram(VNI, &udp(R, A, [10, 0, 0, 12], [10, 0, 0, 10]));
    let src = ip("192.0.2.2");
    let mut sw = Switch::new(4096);
    let mut buf = PacketBuf::new();
    buf.load_datagram(&d);
    let a = sw.from_underlay(&st, src, &mut buf, 0, false);
    assert_eq!(a, Action::Deliver(PORT_A));
    g.bench_function("decap_deliver", |b| {
        b.iter(|| {
            buf.load_datagram(&d);
            black_box(sw.from_underlay(&st, src, black_box(&mut buf), 0, false))
        })
    });
    g.finish();
}

/// A TCP super-frame of 44 MSS-sized segments, as a container's kernel hands the
/// TAP with TSO (64 KiB), and the same data as the segments GRO merges back.
fn super_frame() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(A, R)
        .ipv4([10, 0, 0, 10], [10, 0, 0, 12], 64)
        .tcp(40000, 5201, 1, 64000)
        .ack(1)
        .write(&mut out, &vec![0x5a; 44 * 1398])
        .expect("frame fits");
    out
}

/// Segmentation and coalescing, per 1398-byte segment (Elements = segments).
fn offload(c: &mut Criterion) {
    use vxmesh_dataplane::offload::{coalesce::Coalescer, segment};
    let f = super_frame();
    let t = segment::parse_tcp(&f).expect("TCP");
    let n = segment::count(&f, &t, 1398);
    assert_eq!(n, 44);
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Elements(n as u64));
    let mut out = vec![0u8; 2048];
    g.bench_function("segment_64k_into_44", |b| {
        b.iter(|| {
            for i in 0..n {
                black_box(segment::write_segment(black_box(&f), &t, 1398, i, &mut out));
            }
        })
    });
    let segs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let len = segment::write_segment(&f, &t, 1398, i, &mut out).expect("segment");
            out[..len].to_vec()
        })
        .collect();
    let mut co = Coalescer::new();
    g.bench_function("coalesce_44_into_64k", |b| {
        b.iter(|| {
            for s in &segs {
                assert!(co.push(black_box(s)));
            }
            black_box(co.take().map(|(h, f)| (h, f.len())))
        })
    });
    g.finish();
}

/// WireGuard encryption of one 1478-byte inner packet (a 1450-byte frame in
/// VXLAN in UDP/IPv4) on an established session.
fn wireguard(c: &mut Criterion) {
    use vxmesh_dataplane::tunnel::{inner, TunnelConfig, TunnelPeer, Tunnels};
    let va = Ipv4Addr::new(100, 64, 0, 1);
    let vb = Ipv4Addr::new(100, 64, 0, 2);
    let ep = |last| std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), 51820);
    let (ka, kb) = ([1u8; 32], [2u8; 32]);
    let public = |k: [u8; 32]| {
        vxmesh_dataplane::tunnel::x25519::PublicKey::from(
            &vxmesh_dataplane::tunnel::x25519::StaticSecret::from(k),
        )
        .to_bytes()
    };
    let cfg = |local, key, peer, peer_ep, peer_key| TunnelConfig {
        local_vtep: local,
        keys: vec![key],
        preshared: None,
        peers: vec![TunnelPeer {
            vtep: peer,
            endpoint: peer_ep,
            public: public(peer_key),
        }],
    };
    let mut a = Tunnels::new();
    let mut b = Tunnels::new();
    a.configure(cfg(va, ka, vb, ep(2), kb), &mut |_, _| {});
    b.configure(cfg(vb, kb, va, ep(1), ka), &mut |_, _| {});
    let mut packet = vec![0u8; inner::INNER_HEADER_LEN + 8 + 1450];
    assert!(inner::write(&mut packet, va, vb, 1, 8 + 1450));
    // handshake: A's first packet queues and initiates; B answers; A completes
    let mut wire: Vec<(Vec<u8>, bool)> = Vec::new();
    a.send_to(vb, &packet, &mut |d, _| wire.push((d.to_vec(), true)))
        .expect("send");
    let mut out = vec![0u8; 4096];
    for _ in 0..4 {
        let batch = std::mem::take(&mut wire);
        for (d, to_b) in batch {
            let (t, from, back) = if to_b {
                (&mut b, ep(1), false)
            } else {
                (&mut a, ep(2), true)
            };
            let _ = t.receive(from, &d, &mut out, &mut |r, _| {
                wire.push((r.to_vec(), back))
            });
        }
    }
    let mut g = group(c, "wireguard");
    g.throughput(Throughput::Bytes(packet.len() as u64));
    g.bench_function("encapsulate_1478B", |bch| {
        bch.iter(|| {
            a.send_to(vb, black_box(&packet), &mut |d, _| {
                black_box(d.len());
            })
            .expect("established session")
        })
    });
    g.finish();
}

/// The load balancer's per-packet pieces: a conntrack hit (1k and 1M flows), a
/// NAT rewrite with incremental checksums, a maglev lookup, a new-flow setup.
fn lb(c: &mut Criterion) {
    use vxmesh_dataplane::conntrack::{Conntrack, Dir, Key};
    use vxmesh_dataplane::lb::{maglev::Maglev, nat, scheduler};
    let key = |i: u32| Key {
        zone: 7,
        proto: 6,
        src: Ipv4Addr::from(0x0a00_0000 + (i >> 16)),
        dst: Ipv4Addr::new(10, 0, 0, 100),
        sport: (i & 0xffff) as u16,
        dport: 80,
    };
    let mut g = group(c, "lb");
    for flows in [1_000u32, 1_000_000] {
        let mut ct = Conntrack::new(flows as usize + 1);
        for i in 0..flows {
            let k = key(i);
            let r = Key {
                src: Ipv4Addr::new(10, 0, 1, 5),
                sport: 80,
                dst: k.src,
                dport: k.sport,
                ..k
            };
            ct.insert(k, r, 1, 0, 0x10, 0);
        }
        let mut i = 0u32;
        g.bench_function(format!("conntrack_hit_{flows}_flows"), |b| {
            b.iter(|| {
                i = (i + 7919) % flows;
                let (id, dir) = ct.lookup(black_box(&key(i))).expect("tracked");
                ct.update(id, dir, 0x10, 1);
                black_box(dir == Dir::Orig)
            })
        });
    }
    let mut f = udp(A, R, [10, 0, 0, 10], [10, 0, 0, 100]);
    g.bench_function("nat_rewrite_dst_1442B", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            let ip = if flip {
                Ipv4Addr::new(10, 0, 1, 5)
            } else {
                Ipv4Addr::new(10, 0, 0, 100)
            };
            black_box(nat::rewrite_v4(black_box(&mut f), nat::Side::Dst, ip, 8080))
        })
    });
    let names: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("10.0.1.{i}:80").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
    let m = Maglev::new(&refs, 65_537);
    let mut h = 0u64;
    g.bench_function("maglev_lookup_100_backends", |b| {
        b.iter(|| {
            h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
            black_box(m.lookup(black_box(h)))
        })
    });
    // a new flow: schedule, then track it (in a table that is full, so each
    // setup also evicts, as under a SYN flood)
    let backends: Vec<scheduler::Backend> = (0..3)
        .map(|_| scheduler::Backend {
            weight: 1,
            active: 0,
            healthy: true,
        })
        .collect();
    let mut sched = scheduler::Scheduler::new(scheduler::Kind::Rr, &[], 0);
    let mut ct = Conntrack::new(100_000);
    let mut n = 0u32;
    g.bench_function("new_flow_setup_full_table", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let k = key(n);
            let be = sched.pick(&backends, u64::from(n), 0).expect("a backend");
            let r = Key {
                src: Ipv4Addr::new(10, 0, 1, be as u8),
                sport: 80,
                dst: k.src,
                dport: k.sport,
                ..k
            };
            black_box(ct.insert(k, r, 1, be as u32, 0x02, u64::from(n)))
        })
    });
    g.finish();
    eprintln!(
        "conntrack entry: {} B in the slab + 2 index slots of {} B",
        std::mem::size_of::<Option<vxmesh_dataplane::conntrack::Entry>>(),
        std::mem::size_of::<(Key, (u32, Dir))>()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = baseline, from_port, from_underlay, offload, wireguard, lb
}
criterion_main!(benches);

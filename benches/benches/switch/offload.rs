//! The transmit side's offloads (segmentation, gather, checksum, coalescing) and WireGuard.

use super::*;

/// A TCP super-frame of 44 MSS-sized segments, as a container's kernel hands the
/// TAP with TSO (64 KiB), and the same data as the segments GRO merges back.
pub(super) fn super_frame() -> Vec<u8> {
    build::eth(A, R).ipv4([10, 0, 0, 10], [10, 0, 0, 12]).tcp(
        tcp_wire::Repr {
            window: 64_000,
            ..build::tcp(40000, 5201, 1, tcp_wire::ACK)
        },
        &vec![0x5a; 44 * 1398],
    )
}

/// Segmentation and coalescing, per 1398-byte segment (Elements = segments).
pub(super) fn offload(c: &mut Criterion) {
    use vxmesh_dataplane::offload::{coalesce::Coalescer, segment};
    let f = super_frame();
    let t = segment::parse_tcp(&f).expect("TCP");
    let n = segment::count(&f, &t, 1398);
    assert_eq!(n, 44);
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Elements(n as u64));
    let mut out = vec![0u8; 2048];
    // the one pass over each segment's payload both sides still make
    let payload = &f[f.len() - 1398..];
    g.bench_function("checksum_1398B_x44", |b| {
        b.iter(|| {
            for _ in 0..n {
                black_box(vxmesh_dataplane::wire::checksum::add(0, black_box(payload)));
            }
        })
    });
    g.bench_function("segment_64k_into_44", |b| {
        b.iter(|| {
            for i in 0..n {
                black_box(segment::write_segment(black_box(&f), &t, 1398, i, &mut out));
            }
        })
    });
    // the transmit side as it runs now: headers written, payloads left in place
    let mut gather = vxmesh_dataplane::offload::gather::Gather::default();
    let vx = [0x08, 0, 0, 0, 0, 0x10, 0, 0];
    g.bench_function("gather_64k_into_44", |b| {
        b.iter(|| {
            black_box(gather.segments(&vx, black_box(&f), &t, 1398, |r| {
                black_box(r.parts.len());
            }))
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
pub(super) fn wireguard(c: &mut Criterion) {
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
    a.configure(cfg(va, ka, vb, ep(2), kb), Instant::now(), &mut |_, _| {});
    b.configure(cfg(vb, kb, va, ep(1), ka), Instant::now(), &mut |_, _| {});
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
            let _ = t.receive(from, &d, &mut out, Instant::now(), &mut |r, _| {
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

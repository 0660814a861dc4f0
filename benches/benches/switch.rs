//! Criterion benches of the sans-IO per-packet core: one frame per iteration
//! through a pre-built `SwitchState`, reusing one `PacketBuf`.
//!
//! Every switch bench reloads the frame into the buffer each iteration (the core
//! rewrites it in place), so it includes one frame copy; `copy_only/*` measure just
//! that reload, to be subtracted. Run with `cargo bench -p vxmesh-benches`.
//!
//! `lb_path/*` time the load balancer through the whole `from_port` pipeline (VIP
//! DNAT on a conntrack hit, reverse NAT of a reply, new connections) against a
//! plain switched frame of the same size, and print what a conntrack entry costs
//! in memory (computed from the types, and measured with the counting allocator
//! below).
//!
//! `datapath/*` drive the worker's whole datapath through its offload paths
//! ([`datapath`]), the same code the workers, the unit tests and the fuzzer run.
//!
//! `hash_flood/*` time conntrack lookups and remove+insert with 2,048 keys
//! crafted to share one bucket under FxHash (the index's unkeyed hash until
//! issue 18) beside 2,048 random ones: with the keyed index the two cost the same.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use etherparse::PacketBuilder;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use vxmesh_dataplane::wire::{flow_hash::flow_hash, vxlan};

// beside this file, not in benches/ (which would make it a bench of its own)
#[path = "switch/datapath.rs"]
mod datapath;
use vxmesh_dataplane::{
    Action, BackendView, Location, Mac, NetworkView, PacketBuf, PortId, PortView, ServiceView,
    Switch, SwitchState,
};

/// The system allocator, counting live heap bytes while [`COUNTING`] is on (for
/// the conntrack memory figures; the benches themselves run with it off, where it
/// costs one relaxed load per allocation, and the timed paths hardly allocate).
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

fn count(delta: isize) {
    if COUNTING.load(Relaxed) {
        LIVE_BYTES.fetch_add(delta, Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counting beside it neither allocates nor touches the memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        // SAFETY: the caller's contract for this call is the system allocator's.
        unsafe { System.alloc(l) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        // SAFETY: the caller's contract for this call is the system allocator's.
        unsafe { System.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        // SAFETY: the caller's contract for this call is the system allocator's.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - l.size() as isize);
        // SAFETY: the caller's contract for this call is the system allocator's.
        unsafe { System.realloc(p, l, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

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
    // the one pass over each segment's payload both sides still make
    let payload = &f[f.len() - 1398..];
    g.bench_function("checksum_1398B_x44", |b| {
        b.iter(|| {
            for _ in 0..n {
                black_box(vxmesh_dataplane::offload::checksum::add(
                    0,
                    black_box(payload),
                ));
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

/// The load balancer's per-packet pieces: a conntrack hit (1k and 1M flows), a
/// NAT rewrite with incremental checksums, a maglev lookup, a new-flow setup.
fn lb(c: &mut Criterion) {
    use vxmesh_dataplane::conntrack::{Conntrack, Dir, Key};
    use vxmesh_dataplane::lb::{maglev::Maglev, nat, scheduler};
    let key = |i: u32| Key {
        zone: 7,
        proto: 6,
        src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i >> 16))),
        dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)),
        sport: (i & 0xffff) as u16,
        dport: 80,
    };
    let mut g = group(c, "lb");
    for flows in [1_000u32, 1_000_000] {
        let mut ct = Conntrack::new(flows as usize + 1);
        for i in 0..flows {
            let k = key(i);
            let r = Key {
                src: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 5)),
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
                src: IpAddr::V4(Ipv4Addr::new(10, 0, 1, be as u8)),
                sport: 80,
                dst: k.src,
                dport: k.sport,
                ..k
            };
            black_box(ct.insert(k, r, 1, be as u32, 0x02, u64::from(n)))
        })
    });
    g.finish();
}

/// The address, TCP port and fwmark of the VIP in [`with_vip`], its client (on
/// port A) and its first backend (on port B).
const VIP: [u8; 4] = [10, 0, 0, 100];
const FWMARK: u32 = 0x100;
const CLIENT: [u8; 4] = [10, 0, 0, 10];
const CLIENT_PORT: u16 = 40_000;
const BACKEND: [u8; 4] = [10, 0, 0, 11];
/// TCP payload of the `lb_path` data frames: a 118-byte Ethernet frame.
const LB_PAYLOAD: usize = 64;
/// `now_ms` for every `lb_path` frame: nothing expires or retries.
const NOW: u64 = 1;

/// [`state`] plus the load balancer of the core's unit tests: VIP 10.0.0.100
/// (fwmark 0x100, round robin) over 10.0.0.11 (on local port B) and 10.0.0.12
/// (remote MAC R, behind 192.0.2.2).
fn with_vip() -> SwitchState {
    let (mut st, _) = state(0);
    let net = st.networks.get_mut(&VNI).expect("network");
    net.vips.insert(IpAddr::V4(Ipv4Addr::from(VIP)), FWMARK);
    net.backend_ips.extend([
        IpAddr::V4(Ipv4Addr::from(BACKEND)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 12)),
    ]);
    net.neighbors.insert(IpAddr::from(VIP), GW);
    net.services.insert(
        FWMARK,
        ServiceView {
            scheduler: vxmesh_dataplane::lb::scheduler::Kind::Rr,
            backends: vec![
                BackendView {
                    v4: Some(Ipv4Addr::from(BACKEND)),
                    v6: None,
                    weight: 1,
                    healthy: true,
                    local: true,
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

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
}

/// An IPv4/TCP frame `from` (address, port) `to` (address, port).
fn tcp(
    src: Mac,
    dst: Mac,
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    flags: Flags,
    payload: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv4(from.0, to.0, 64)
        .tcp(from.1, to.1, 1000, 64_000);
    flags
        .set(b)
        .write(&mut out, &vec![0x5a; payload])
        .expect("frame");
    out
}

impl Flags {
    fn set(
        self,
        b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
        match self {
            Flags::Syn => b.syn(),
            Flags::SynAck => b.syn().ack(1),
            Flags::Ack => b.ack(1),
        }
    }
}

/// Whether an IPv4/TCP frame's IP header and TCP checksums are both right.
fn checksums_ok(f: &[u8]) -> bool {
    use etherparse::{Ipv4HeaderSlice, TcpHeaderSlice};
    let Ok(ip) = Ipv4HeaderSlice::from_slice(&f[14..]) else {
        return false;
    };
    let l4 = &f[14 + ip.slice().len()..];
    let Ok(t) = TcpHeaderSlice::from_slice(l4) else {
        return false;
    };
    ip.to_header().calc_header_checksum() == ip.header_checksum()
        && t.calc_checksum_ipv4(&ip, &l4[t.slice().len()..]).ok() == Some(t.checksum())
}

fn ipv4_src_dst(f: &[u8]) -> ([u8; 4], [u8; 4]) {
    (
        f[26..30].try_into().expect("4 bytes"),
        f[30..34].try_into().expect("4 bytes"),
    )
}

/// Times `from_port` on `frame` from `port`, reloading it each iteration (the
/// same closure for every `lb_path` frame bench, so they compare).
fn time_frame(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    sw: &mut Switch,
    st: &SwitchState,
    port: PortId,
    frame: &[u8],
) {
    let mut buf = PacketBuf::new();
    g.bench_function(name, |b| {
        b.iter(|| {
            buf.load_frame(frame);
            black_box(sw.from_port(st, port, black_box(&mut buf), NOW))
        })
    });
}

/// A switch on `st` with one connection from the client to the VIP, taken by the
/// backend on port B and Established (SYN, SYN-ACK, ACK through the pipeline).
/// Switches `sw` to writing flow records (as `--flow-logs on`), into a ring
/// of `ring` records; returns the reader (a bench drains it untimed).
fn flow_logged(sw: &mut Switch, ring: usize) -> vxmesh_dataplane::flowlog::FlowReader {
    use vxmesh_dataplane::flowlog::{FlowLog, FlowLogConfig};
    sw.conntrack().lock().expect("conntrack").set_flow_log(true);
    let (log, reader) = FlowLog::new(FlowLogConfig {
        ring,
        ..Default::default()
    });
    sw.set_flow_log(Some(log));
    reader
}

fn established(st: &SwitchState) -> Switch {
    use vxmesh_dataplane::conntrack::State;
    let mut sw = Switch::new(4096);
    sw.on_state(st);
    let to_vip = |flags| tcp(A, GW, (CLIENT, CLIENT_PORT), (VIP, 80), flags, 0);
    let mut buf = PacketBuf::new();
    for (port, f, expect) in [
        (PORT_A, to_vip(Flags::Syn), Action::Deliver(PORT_B)),
        (
            PORT_B,
            tcp(B, A, (BACKEND, 80), (CLIENT, CLIENT_PORT), Flags::SynAck, 0),
            Action::Deliver(PORT_A),
        ),
        (PORT_A, to_vip(Flags::Ack), Action::Deliver(PORT_B)),
    ] {
        buf.load_frame(&f);
        assert_eq!(sw.from_port(st, port, &mut buf, NOW), expect);
    }
    let ct = sw.conntrack();
    let ct = ct.lock().expect("conntrack");
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.iter().next().expect("entry").state, State::Established);
    drop(ct);
    sw
}

/// New connections' ports: the client's source port runs over 1024..=65535 and
/// the VIP port moves on each time it wraps, so no tuple comes back for billions
/// of connections.
fn new_flow_ports(i: u64) -> (u16, u16) {
    let sport = 1024 + (i % 64_512) as u16;
    let dport = 1 + ((i / 64_512) % 65_535) as u16;
    (sport, dport)
}

/// Writes connection `i`'s ports into a SYN to the VIP (loaded in `buf`). The TCP
/// checksum is left stale: the core does not check it, and the NAT updates it
/// incrementally either way.
fn set_new_flow_ports(buf: &mut PacketBuf, i: u64) {
    let (sport, dport) = new_flow_ports(i);
    let f = buf.data_mut();
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
}

/// Memory per conntrack entry: from the types, and measured (live heap bytes
/// with `n` connections in a table of the agent's size, [`CONNTRACK_MAX`]).
fn conntrack_memory() {
    use vxmesh_dataplane::conntrack::{Conntrack, Key};
    use vxmesh_dataplane::io::dataplane::CONNTRACK_MAX;
    let (slab, touch, slot) = Conntrack::entry_bytes();
    // hashbrown: one bucket of `slot` bytes and one control byte per index ref
    let index = 2 * (slot + 1);
    eprintln!(
        "conntrack entry: slab slot {slab} B + touch slot {touch} B + 2 index refs x \
         ({slot} B + 1 control byte) = {} B with no hash-table slack; \
         at hashbrown's 7/8 maximum load {:.0} B; just after the index doubles \
         (7/16 load) {:.0} B",
        slab + touch + index,
        (slab + touch) as f64 + index as f64 * 8.0 / 7.0,
        (slab + touch) as f64 + index as f64 * 16.0 / 7.0,
    );
    for n in [1_000u32, 100_000, 150_000, CONNTRACK_MAX as u32] {
        LIVE_BYTES.store(0, Relaxed);
        COUNTING.store(true, Relaxed);
        let mut ct = Conntrack::new(CONNTRACK_MAX);
        for i in 0..n {
            let orig = Key {
                zone: VNI,
                proto: 6,
                src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i >> 16))),
                dst: IpAddr::V4(Ipv4Addr::from(VIP)),
                sport: (i & 0xffff) as u16,
                dport: 80,
            };
            let reply = Key {
                src: IpAddr::V4(Ipv4Addr::from(BACKEND)),
                dst: orig.src,
                sport: 80,
                dport: orig.sport,
                ..orig
            };
            ct.insert(orig, reply, FWMARK, 0, 0x02, 0);
        }
        let bytes = LIVE_BYTES.load(Relaxed);
        COUNTING.store(false, Relaxed);
        assert_eq!(ct.len(), n as usize);
        eprintln!(
            "conntrack measured: {n} connections in Conntrack::new({CONNTRACK_MAX}): \
             {bytes} B of heap, {:.1} B per connection",
            bytes as f64 / f64::from(n)
        );
        drop(ct);
    }
}

/// The load balancer's per-packet path through the real pipeline
/// (`Switch::from_port`), next to a plain switched frame of the same size.
fn lb_path(c: &mut Criterion) {
    use vxmesh_dataplane::conntrack::{Key, State};
    use vxmesh_dataplane::io::dataplane::CONNTRACK_MAX;
    conntrack_memory();
    let plain = state(0).0;
    let st = with_vip();
    let mut g = group(c, "lb_path");

    // the reload alone, to subtract
    let data = tcp(
        A,
        B,
        (CLIENT, CLIENT_PORT),
        (BACKEND, 80),
        Flags::Ack,
        LB_PAYLOAD,
    );
    assert_eq!(data.len(), 118);
    let mut buf = PacketBuf::new();
    g.bench_function("copy_only_118B", |b| {
        b.iter(|| {
            buf.load_frame(black_box(&data));
            black_box(&mut buf);
        })
    });

    // 1. the baseline: client to its peer's MAC, plain L2 (no VIP on the network),
    // and the same frame on the network with the VIP (a backend's address is the
    // destination, so delivery also checks whether it is a reply to rewrite)
    for (name, s) in [
        ("switched_frame", &plain),
        ("switched_frame_vip_network", &st),
    ] {
        let mut sw = Switch::new(4096);
        sw.on_state(s);
        buf.load_frame(&data);
        assert_eq!(
            sw.from_port(s, PORT_A, &mut buf, NOW),
            Action::Deliver(PORT_B)
        );
        assert_eq!(buf.data(), &data[..], "{name}: left as it was");
        time_frame(&mut g, name, &mut sw, s, PORT_A, &data);
    }

    // 2. the client's next segment to the VIP: conntrack hit, DNAT to the backend
    let to_vip = tcp(
        A,
        GW,
        (CLIENT, CLIENT_PORT),
        (VIP, 80),
        Flags::Ack,
        LB_PAYLOAD,
    );
    assert_eq!(to_vip.len(), data.len());
    let mut sw = established(&st);
    buf.load_frame(&to_vip);
    assert_eq!(
        sw.from_port(&st, PORT_A, &mut buf, NOW),
        Action::Deliver(PORT_B)
    );
    let f = buf.data();
    assert_eq!(&f[0..6], &B);
    assert_eq!(ipv4_src_dst(f), (CLIENT, BACKEND));
    assert!(checksums_ok(f), "vip_tracked: checksums");
    time_frame(&mut g, "vip_tracked", &mut sw, &st, PORT_A, &to_vip);

    // 3. the backend's reply: conntrack hit on the reply key, reverse NAT
    let reply = tcp(
        B,
        A,
        (BACKEND, 80),
        (CLIENT, CLIENT_PORT),
        Flags::Ack,
        LB_PAYLOAD,
    );
    buf.load_frame(&reply);
    assert_eq!(
        sw.from_port(&st, PORT_B, &mut buf, NOW),
        Action::Deliver(PORT_A)
    );
    let f = buf.data();
    assert_eq!(&f[6..12], &GW);
    assert_eq!(ipv4_src_dst(f), (VIP, CLIENT));
    assert!(checksums_ok(f), "vip_reply: checksums");
    time_frame(&mut g, "vip_reply", &mut sw, &st, PORT_B, &reply);
    // 2-3 with flow logs on: the same connection, counted both ways
    let mut logged = established(&st);
    let _reader = flow_logged(&mut logged, 4096);
    time_frame(
        &mut g,
        "vip_tracked_flow_log",
        &mut logged,
        &st,
        PORT_A,
        &to_vip,
    );
    time_frame(
        &mut g,
        "vip_reply_flow_log",
        &mut logged,
        &st,
        PORT_B,
        &reply,
    );
    {
        let ct = logged.conntrack();
        let ct = ct.lock().expect("conntrack");
        let e = ct.iter().next().expect("entry");
        let (id, _) = ct.lookup(&e.orig).expect("tracked");
        let (packets, _) = ct.touches()[id as usize].counts();
        assert!(packets[0] > 1 && packets[1] > 1, "counted: {packets:?}");
    }
    {
        let ct = sw.conntrack();
        let ct = ct.lock().expect("conntrack");
        assert_eq!(ct.len(), 1, "still one connection");
        assert_eq!(ct.iter().next().expect("entry").state, State::Established);
    }

    // 4. new connections: a SYN on a new tuple per iteration (scheduled round
    // robin, so half go to the local backend and half are encapsulated to the
    // remote one), in the agent's table size
    let syn = tcp(A, GW, (CLIENT, 0), (VIP, 0), Flags::Syn, 0);
    let key = |i: u64| {
        let (sport, dport) = new_flow_ports(i);
        Key {
            zone: VNI,
            proto: 6,
            src: IpAddr::V4(Ipv4Addr::from(CLIENT)),
            dst: IpAddr::V4(Ipv4Addr::from(VIP)),
            sport,
            dport,
        }
    };
    let vtep = ip("192.0.2.2");
    let new_flow = |sw: &mut Switch, buf: &mut PacketBuf, i: u64| {
        buf.load_frame(&syn);
        set_new_flow_ports(buf, i);
        let a = sw.from_port(&st, PORT_A, black_box(buf), NOW);
        black_box(a)
    };

    // 4a. with room: the table holds 131,072 to 196,608 of its 262,144
    // connections (the oldest are retired between timed runs), so none is evicted;
    // and the same with flow logs on (a set-up and an end record per connection,
    // the ring drained between timed runs as the agent would)
    const LIVE: u64 = 131_072;
    const CHUNK: u64 = 65_536;
    for (name, logs) in [("vip_new_flow", false), ("vip_new_flow_flow_log", true)] {
        let mut sw = Switch::new(4096);
        sw.on_state(&st);
        let mut reader = logs.then(|| flow_logged(&mut sw, 4 * CHUNK as usize));
        let mut drained = Vec::new();
        let ct = sw.conntrack();
        let mut i = 0u64;
        for _ in 0..LIVE {
            let a = new_flow(&mut sw, &mut buf, i);
            let want_local = i & 1 == 0;
            assert!(
                if want_local {
                    a == Action::Deliver(PORT_B)
                } else {
                    matches!(a, Action::Encap { vtep: v, .. } if v == vtep)
                },
                "new flow {i}: unexpected action {a:?}"
            );
            i += 1;
        }
        if let Some(r) = reader.as_mut() {
            r.drain_into(&mut drained, usize::MAX);
        }
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let t = Instant::now();
                    for _ in 0..n {
                        new_flow(&mut sw, &mut buf, i);
                        i += 1;
                    }
                    timed += t.elapsed();
                    left -= n;
                    // untimed: the oldest connections go, back to LIVE
                    let mut ct = ct.lock().expect("conntrack");
                    for j in i - LIVE - n..i - LIVE {
                        let (id, _) = ct.lookup(&key(j)).expect("tracked");
                        ct.retire(id);
                        // their end records (written by the sweep, in the
                        // agent), not timed here
                        ct.drain_log(|_| {});
                    }
                    if let Some(r) = reader.as_mut() {
                        drained.clear();
                        r.drain_into(&mut drained, usize::MAX);
                    }
                }
                timed
            })
        });
        {
            let ct = ct.lock().expect("conntrack");
            assert_eq!(ct.evicted, 0, "{name}: nothing evicted");
            assert_eq!(ct.len() as u64, LIVE, "{name}: every SYN a new entry");
            let c = &sw.counters;
            assert_eq!(
                c.flow_log_lost + ct.flow_log_lost(),
                0,
                "{name}: no record lost"
            );
            assert_eq!(c.flow_log_sampled, 0, "{name}: none sampled");
        }
    }

    // 4b. a full table: every new connection evicts one (a SYN flood)
    let mut sw = Switch::new(4096);
    sw.on_state(&st);
    let ct = sw.conntrack();
    let mut i = 0u64;
    while i < CONNTRACK_MAX as u64 {
        new_flow(&mut sw, &mut buf, i);
        i += 1;
    }
    assert_eq!(ct.lock().expect("conntrack").evicted, 0);
    g.bench_function("vip_new_flow_full_table", |b| {
        b.iter(|| {
            new_flow(&mut sw, &mut buf, i);
            i += 1;
        })
    });
    {
        let ct = ct.lock().expect("conntrack");
        assert_eq!(ct.len(), CONNTRACK_MAX);
        assert_eq!(
            ct.evicted,
            i - CONNTRACK_MAX as u64,
            "vip_new_flow_full_table: every SYN a new entry"
        );
    }
    // 4c. the once-a-second expiry sweep of that full table, nothing due: the
    // conntrack lock is held for all of it, so new flows on every worker wait
    g.bench_function("expire_sweep_full_table", |b| {
        b.iter(|| {
            let mut ct = ct.lock().expect("conntrack");
            assert_eq!(ct.expire(NOW, |_| ()), 0);
        })
    });
    // ... and one slice of it, what the worker's sweep holds the lock for now
    g.bench_function("expire_slice", |b| {
        use vxmesh_dataplane::conntrack::EXPIRE_SLICE;
        b.iter(|| {
            let mut ct = ct.lock().expect("conntrack");
            assert_eq!(ct.expire_slots(NOW, 0, EXPIRE_SLICE, |_| ()).0, 0);
        })
    });
    ingress_path(&mut g);
    ipv6_vip_path(&mut g);
    g.finish();
}

/// The IPv6 VIP fd00::100 of the same service: 10.0.0.11 (port B) is
/// dual-stack as fd00::11, so IPv6 clients all go to it.
fn with_vip6() -> SwitchState {
    let mut st = with_vip();
    let net = st.networks.get_mut(&VNI).expect("network");
    let vip6: IpAddr = "fd00::100".parse().expect("v6");
    let b6: std::net::Ipv6Addr = "fd00::11".parse().expect("v6");
    net.vips.insert(vip6, FWMARK);
    net.neighbors.insert(vip6, GW);
    net.neighbors.insert(IpAddr::V6(b6), B);
    net.backend_ips.extend([IpAddr::V6(b6)]);
    if let Some(svc) = net.services.get_mut(&FWMARK) {
        svc.backends[0].v6 = Some(b6);
    }
    if let Some(p) = st.ports.get_mut(&PORT_B) {
        p.ips.push(IpAddr::V6(b6));
    }
    st
}

/// An IPv6/TCP frame `from` (address, port) `to` (address, port).
fn tcp6(
    src: Mac,
    dst: Mac,
    from: (&str, u16),
    to: (&str, u16),
    flags: Flags,
    payload: usize,
) -> Vec<u8> {
    let a = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv6(a(from.0), a(to.0), 64)
        .tcp(from.1, to.1, 1000, 64_000);
    flags
        .set(b)
        .write(&mut out, &vec![0x5a; payload])
        .expect("frame");
    out
}

/// `vip6_tracked` and `vip6_reply`: `vip_tracked` and `vip_reply` through the
/// IPv6 VIP (138-byte frames: the same payload behind a 40-byte header).
fn ipv6_vip_path(g: &mut BenchmarkGroup<'_, WallTime>) {
    let st = with_vip6();
    let mut sw = Switch::new(4096);
    sw.on_state(&st);
    let mut buf = PacketBuf::new();
    let (client, vip, task) = (
        ("fd00::10", CLIENT_PORT),
        ("fd00::100", 80),
        ("fd00::11", 80),
    );
    for (from, f) in [
        (PORT_A, tcp6(A, GW, client, vip, Flags::Syn, 0)),
        (PORT_B, tcp6(B, A, task, client, Flags::SynAck, 0)),
        (PORT_A, tcp6(A, GW, client, vip, Flags::Ack, 0)),
    ] {
        buf.load_frame(&f);
        let to = if from == PORT_A { PORT_B } else { PORT_A };
        assert_eq!(sw.from_port(&st, from, &mut buf, NOW), Action::Deliver(to));
    }
    let to_vip = tcp6(A, GW, client, vip, Flags::Ack, LB_PAYLOAD);
    assert_eq!(to_vip.len(), 138);
    buf.load_frame(&to_vip);
    assert_eq!(
        sw.from_port(&st, PORT_A, &mut buf, NOW),
        Action::Deliver(PORT_B)
    );
    let octets = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    assert_eq!(&buf.data()[38..54], &octets("fd00::11"));
    time_frame(g, "vip6_tracked", &mut sw, &st, PORT_A, &to_vip);
    let reply = tcp6(B, A, task, client, Flags::Ack, LB_PAYLOAD);
    buf.load_frame(&reply);
    assert_eq!(
        sw.from_port(&st, PORT_B, &mut buf, NOW),
        Action::Deliver(PORT_A)
    );
    assert_eq!(&buf.data()[22..38], &octets("fd00::100"));
    time_frame(g, "vip6_reply", &mut sw, &st, PORT_B, &reply);
}

const IVNI: u32 = 4095;
const HOST: Mac = [2, 0, 0, 0, 0xff, 1];
const SBOX: Mac = [2, 0, 0, 0, 0xff, 2];
const IGW: Mac = [2, 0x56, 0x58, 0, 0x0f, 0xff];
const TASK: Mac = [2, 0, 0, 0, 0xaa, 1];
const SANDBOX_PORT: PortId = PortId(0);
const TASK_PORT: PortId = PortId(5);
const OUTSIDE: [u8; 4] = [198, 51, 100, 7];
const SBOX_IP: [u8; 4] = [169, 254, 250, 2];
const TASK_IP: [u8; 4] = [10, 255, 0, 10];

/// A node with ingress: port 8080 published (fwmark 0x200) to a task on this
/// node listening on 80.
fn with_ingress() -> SwitchState {
    use vxmesh_dataplane::switch::{IngressView, PublishedView};
    let mut net = NetworkView {
        vni: IVNI,
        gateway_mac: IGW,
        gateways: vec![ip("10.255.0.1")],
        local_ports: vec![TASK_PORT],
        ..Default::default()
    };
    net.macs.insert(TASK, Location::Local(TASK_PORT));
    net.neighbors.insert(IpAddr::from(TASK_IP), TASK);
    net.neighbors.insert(ip("10.255.0.1"), IGW);
    net.services.insert(
        0x200,
        ServiceView {
            scheduler: vxmesh_dataplane::lb::scheduler::Kind::Rr,
            backends: vec![BackendView {
                v4: Some(Ipv4Addr::from(TASK_IP)),
                v6: None,
                weight: 1,
                healthy: true,
                local: true,
            }],
        },
    );
    let mut st = SwitchState::default();
    st.networks.insert(IVNI, net);
    st.ports.insert(
        TASK_PORT,
        PortView {
            vni: IVNI,
            mac: TASK,
            ips: vec![IpAddr::from(TASK_IP)],
        },
    );
    let mut ing = IngressView {
        port: SANDBOX_PORT,
        vni: IVNI,
        host_mac: HOST,
        sandbox_ip: Ipv4Addr::from(SBOX_IP),
        sandbox_ip6: None,
        sandbox_mac: SBOX,
        sandbox_macs: [SBOX].into_iter().collect(),
        enabled: true,
        published: Default::default(),
        policies: Vec::new(),
        rate_limit: None,
    };
    ing.published.insert(
        (6, 8080),
        PublishedView {
            fwmark: 0x200,
            target: 80,
            host_only: false,
        },
    );
    st.ingress = Some(ing);
    st
}

/// The ingress path on an established connection from an outside client: its
/// segment from the sandbox to the task (policy passed, DNAT to the task, the
/// client's address kept), and the task's answer back into the sandbox.
fn ingress_path(g: &mut BenchmarkGroup<'_, WallTime>) {
    let st = with_ingress();
    let mut sw = Switch::new(4096);
    sw.on_state(&st);
    let in_seg = |flags, len| tcp(HOST, SBOX, (OUTSIDE, 40_000), (SBOX_IP, 8080), flags, len);
    let out_seg = |flags, len| tcp(TASK, IGW, (TASK_IP, 80), (OUTSIDE, 40_000), flags, len);
    let mut buf = PacketBuf::new();
    for (port, f, to) in [
        (SANDBOX_PORT, in_seg(Flags::Syn, 0), TASK_PORT),
        (TASK_PORT, out_seg(Flags::SynAck, 0), SANDBOX_PORT),
        (SANDBOX_PORT, in_seg(Flags::Ack, 0), TASK_PORT),
    ] {
        buf.load_frame(&f);
        assert_eq!(sw.from_port(&st, port, &mut buf, NOW), Action::Deliver(to));
    }
    let inbound = in_seg(Flags::Ack, LB_PAYLOAD);
    buf.load_frame(&inbound);
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut buf, NOW),
        Action::Deliver(TASK_PORT)
    );
    assert_eq!(ipv4_src_dst(buf.data()), (OUTSIDE, TASK_IP), "client kept");
    assert_eq!(&buf.data()[0..6], &TASK);
    assert!(checksums_ok(buf.data()), "ingress_tracked: checksums");
    time_frame(g, "ingress_tracked", &mut sw, &st, SANDBOX_PORT, &inbound);

    let answer = out_seg(Flags::Ack, LB_PAYLOAD);
    buf.load_frame(&answer);
    assert_eq!(
        sw.from_port(&st, TASK_PORT, &mut buf, NOW),
        Action::Deliver(SANDBOX_PORT)
    );
    assert_eq!(ipv4_src_dst(buf.data()), (SBOX_IP, OUTSIDE));
    assert_eq!(&buf.data()[0..12], &[HOST, SBOX].concat()[..]);
    assert!(checksums_ok(buf.data()), "ingress_reply: checksums");
    time_frame(g, "ingress_reply", &mut sw, &st, TASK_PORT, &answer);
    let ct = sw.conntrack();
    let ct = ct.lock().expect("conntrack");
    assert_eq!(ct.len(), 1, "ingress: one connection");
}

/// A client's connection to a service at ingress (zone 4095, to
/// 10.255.0.10:443) from `host` of 198.18.0.0/15 and `sport`.
fn client_key(host: u32, sport: u16) -> vxmesh_dataplane::conntrack::Key {
    vxmesh_dataplane::conntrack::Key {
        zone: 4095,
        proto: 6,
        src: IpAddr::V4(Ipv4Addr::from(0xc612_0000 + host)),
        dst: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 10)),
        sport,
        dport: 443,
    }
}

/// `n` keys an attacker computes offline to share one bucket under FxHash
/// (the conntrack index's hash until it was keyed): their hashes agree in the
/// low 16 bits, where hashbrown takes the bucket of a table of up to 65,536.
fn fx_colliding_keys(n: usize) -> Vec<vxmesh_dataplane::conntrack::Key> {
    use std::hash::BuildHasher;
    let mut out = Vec::with_capacity(n);
    'hosts: for host in 1..0x2_0000 {
        for sport in 1024..=u16::MAX {
            let k = client_key(host, sport);
            if rustc_hash::FxBuildHasher.hash_one(k) & 0xffff == 0 {
                out.push(k);
                if out.len() == n {
                    break 'hosts;
                }
            }
        }
    }
    out
}

/// Conntrack insert and lookup with keys crafted to collide under FxHash
/// beside as many ordinary ones: with a keyed index the two cost the same;
/// with an unkeyed one the crafted keys share one probe sequence.
fn hash_flood(c: &mut Criterion) {
    use vxmesh_dataplane::conntrack::{Conntrack, Key};
    const N: usize = 2048;
    let colliding = fx_colliding_keys(N);
    assert_eq!(colliding.len(), N);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let random: Vec<Key> = (0..N)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            client_key((x >> 40) as u32 & 0x1_ffff, (x as u16) | 1024)
        })
        .collect();
    let reply = |k: &Key| Key {
        src: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 20)),
        sport: 8080,
        dst: k.src,
        dport: k.sport,
        ..*k
    };
    let mut g = group(c, "hash_flood");
    for (name, keys) in [("colliding", &colliding), ("random", &random)] {
        let mut ct = Conntrack::new(2 * N);
        for k in keys.iter() {
            ct.insert(*k, reply(k), 1, 0, 0x02, 0);
        }
        assert_eq!(ct.len(), N, "{name}: every key a connection");
        let mut i = 0;
        g.bench_function(format!("{name}_lookup_{N}"), |b| {
            b.iter(|| {
                i = (i + 1) % N;
                black_box(ct.lookup(black_box(&keys[i])))
            })
        });
        g.bench_function(format!("{name}_remove_insert_{N}"), |b| {
            b.iter(|| {
                i = (i + 1) % N;
                let k = &keys[i];
                let (id, _) = ct.lookup(k).expect("tracked");
                ct.retire(id);
                black_box(ct.insert(*k, reply(k), 1, 0, 0x02, 0))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = baseline, from_port, from_underlay, offload, datapath::datapath, wireguard, lb, lb_path, hash_flood
}
criterion_main!(benches);

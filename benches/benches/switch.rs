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
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use vxmesh_dataplane::wire::build::{self, arp_request, datagram};
use vxmesh_dataplane::wire::{flow_hash::flow_hash, tcp as tcp_wire};

// beside this file, not in benches/ (which would make it a bench of its own)
#[path = "switch/datapath.rs"]
mod datapath;
#[path = "switch/offload.rs"]
mod offload;
use offload::*;
#[path = "switch/lb.rs"]
mod lb;
use lb::*;
#[path = "switch/lb_path.rs"]
mod lb_path;
use lb_path::*;
#[path = "switch/ingress.rs"]
mod ingress;
use ingress::*;
#[path = "switch/hash_flood.rs"]
mod hash_flood;
use hash_flood::*;
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
    build::eth(src, dst)
        .ipv4(sip, dip)
        .udp(1000, 2000, &[0x5a; PAYLOAD])
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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = baseline, from_port, from_underlay, offload, datapath::datapath, wireguard, lb, lb_path, hash_flood
}
criterion_main!(benches);

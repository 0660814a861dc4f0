//! The balancer's first steps, its frames and states, and the connection table's memory.

use super::*;

/// The load balancer's per-packet pieces: a conntrack hit (1k and 1M flows), a
/// NAT rewrite with incremental checksums, a maglev lookup, a new-flow setup.
pub(super) fn lb(c: &mut Criterion) {
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
pub(super) const VIP: [u8; 4] = [10, 0, 0, 100];
pub(super) const FWMARK: u32 = 0x100;
pub(super) const CLIENT: [u8; 4] = [10, 0, 0, 10];
pub(super) const CLIENT_PORT: u16 = 40_000;
pub(super) const BACKEND: [u8; 4] = [10, 0, 0, 11];
/// TCP payload of the `lb_path` data frames: a 118-byte Ethernet frame.
pub(super) const LB_PAYLOAD: usize = 64;
/// `now_ms` for every `lb_path` frame: nothing expires or retries.
pub(super) const NOW: u64 = 1;

/// [`state`] plus the load balancer of the core's unit tests: VIP 10.0.0.100
/// (fwmark 0x100, round robin) over 10.0.0.11 (on local port B) and 10.0.0.12
/// (remote MAC R, behind 192.0.2.2).
pub(super) fn with_vip() -> SwitchState {
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
pub(super) enum Flags {
    Syn,
    SynAck,
    Ack,
}

/// An IPv4/TCP frame `from` (address, port) `to` (address, port).
pub(super) fn tcp(
    src: Mac,
    dst: Mac,
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    flags: Flags,
    payload: usize,
) -> Vec<u8> {
    build::eth(src, dst)
        .ipv4(from.0, to.0)
        .tcp(flags.header(from.1, to.1), &vec![0x5a; payload])
}

impl Flags {
    /// The TCP header of these flags (sequence 1000, window 64,000; an ACK
    /// acknowledges 1).
    pub(super) fn header(self, src_port: u16, dst_port: u16) -> tcp_wire::Repr {
        let flags = match self {
            Flags::Syn => tcp_wire::SYN,
            Flags::SynAck => tcp_wire::SYN | tcp_wire::ACK,
            Flags::Ack => tcp_wire::ACK,
        };
        tcp_wire::Repr {
            window: 64_000,
            ..build::tcp(src_port, dst_port, 1000, flags)
        }
    }
}

/// Whether an IPv4/TCP frame's IP header and TCP checksums are both right.
pub(super) fn checksums_ok(f: &[u8]) -> bool {
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

pub(super) fn ipv4_src_dst(f: &[u8]) -> ([u8; 4], [u8; 4]) {
    (
        f[26..30].try_into().expect("4 bytes"),
        f[30..34].try_into().expect("4 bytes"),
    )
}

/// Times `from_port` on `frame` from `port`, reloading it each iteration (the
/// same closure for every `lb_path` frame bench, so they compare).
pub(super) fn time_frame(
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
pub(super) fn flow_logged(sw: &mut Switch, ring: usize) -> vxmesh_dataplane::flowlog::FlowReader {
    use vxmesh_dataplane::flowlog::{FlowLog, FlowLogConfig};
    sw.conntrack().lock().expect("conntrack").set_flow_log(true);
    let (log, reader) = FlowLog::new(FlowLogConfig {
        ring,
        ..Default::default()
    });
    sw.set_flow_log(Some(log));
    reader
}

pub(super) fn established(st: &SwitchState) -> Switch {
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
pub(super) fn new_flow_ports(i: u64) -> (u16, u16) {
    let sport = 1024 + (i % 64_512) as u16;
    let dport = 1 + ((i / 64_512) % 65_535) as u16;
    (sport, dport)
}

/// Writes connection `i`'s ports into a SYN to the VIP (loaded in `buf`). The TCP
/// checksum is left stale: the core does not check it, and the NAT updates it
/// incrementally either way.
pub(super) fn set_new_flow_ports(buf: &mut PacketBuf, i: u64) {
    let (sport, dport) = new_flow_ports(i);
    let f = buf.data_mut();
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
}

/// Memory per conntrack entry: from the types, and measured (live heap bytes
/// with `n` connections in a table of the agent's size, [`CONNTRACK_MAX`]).
pub(super) fn conntrack_memory() {
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

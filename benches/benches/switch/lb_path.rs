//! A VIP's whole path: new connections, established ones, expiry, IPv6.

use super::*;

/// The load balancer's per-packet path through the real pipeline
/// (`Switch::from_port`), next to a plain switched frame of the same size.
pub(super) fn lb_path(c: &mut Criterion) {
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
pub(super) fn with_vip6() -> SwitchState {
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
pub(super) fn tcp6(
    src: Mac,
    dst: Mac,
    from: (&str, u16),
    to: (&str, u16),
    flags: Flags,
    payload: usize,
) -> Vec<u8> {
    let a = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6");
    build::eth(src, dst)
        .ipv6(a(from.0), a(to.0))
        .tcp(flags.header(from.1, to.1), &vec![0x5a; payload])
}

/// `vip6_tracked` and `vip6_reply`: `vip_tracked` and `vip_reply` through the
/// IPv6 VIP (138-byte frames: the same payload behind a 40-byte header).
pub(super) fn ipv6_vip_path(g: &mut BenchmarkGroup<'_, WallTime>) {
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

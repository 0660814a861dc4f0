//! The worker's whole datapath (`vxmesh_dataplane::datapath::Datapath`), driven
//! as the worker drives it, through a sink that only counts what would leave
//! (no syscalls): the offload paths end to end, per 1398-byte segment
//! (Elements = segments).
//!
//! - `port_to_underlay_64k`: a 64 KiB TCP super-frame read from a TAP with
//!   its virtio-net header, switched once to a remote endpoint and gathered
//!   into 44 VXLAN datagrams (headers beside it, payloads in place);
//! - `underlay_to_port_44`: its 44 segments from the underlay, switched one
//!   by one and merged into one TAP write.

use super::*;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use vxmesh_dataplane::conntrack::Conntrack;
use vxmesh_dataplane::datapath::{Config, Datapath, PortRead, Sink};
use vxmesh_dataplane::offload::{segment, vnet};

/// Counts what the datapath hands over, touching every byte count once.
#[derive(Default)]
struct Count {
    datagrams: usize,
    writes: usize,
}

impl Sink for Count {
    fn write_port(&mut self, _: PortId, _: &vnet::VnetHdr, frame: &[u8]) -> bool {
        self.writes += 1;
        black_box(frame.len());
        true
    }

    fn send_underlay(&mut self, _: u32, _: IpAddr, data: &[u8], seg: usize) -> usize {
        let n = data.len().div_ceil(seg.max(1)).max(1);
        self.datagrams += n;
        n
    }

    fn send_underlay_gather(
        &mut self,
        _: u32,
        _: IpAddr,
        parts: &[IoSlice<'_>],
        per: usize,
        _: u16,
    ) -> usize {
        let n = parts.len() / per.max(1);
        self.datagrams += n;
        black_box(parts.iter().map(|p| p.len()).sum::<usize>());
        n
    }

    fn send_tunnel(&mut self, _: std::net::SocketAddr, _: &[u8], _: usize) -> usize {
        1
    }

    fn send_probe(&mut self, _: IpAddr, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn send_dns(&mut self, _: std::net::SocketAddr, _: &[u8]) -> bool {
        true
    }
}

fn datapath_on(st: SwitchState, t0: Instant) -> Datapath {
    let cfg = Config {
        lane: 0,
        start: t0,
        sweeper: false,
        fdb_learned: 1024,
        flood_rate: None,
        dns_forwards: 64,
        flow_log: None,
    };
    let ct = Arc::new(Mutex::new(Conntrack::new(1024)));
    let mut dp = Datapath::new(cfg, ct, Arc::new(st), t0);
    dp.add_port(PORT_A, true);
    dp.add_port(PORT_B, true);
    dp
}

pub(super) fn datapath(c: &mut Criterion) {
    let (st, _) = state(0);
    let t0 = Instant::now();
    let mut dp = datapath_on(st, t0);
    let f = super_frame();
    let t = segment::parse_tcp(&f).expect("TCP");
    let n = segment::count(&f, &t, 1398);
    let hdr = vnet::VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        hdr_len: t.payload_off as u16,
        gso_size: 1398,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut read = vec![0u8; vnet::LEN + f.len()];
    hdr.emit(&mut read[..vnet::LEN]);
    read[vnet::LEN..].copy_from_slice(&f);
    let mut g = c.benchmark_group("datapath");
    g.throughput(Throughput::Elements(n as u64));
    let mut buf = PacketBuf::new();
    let mut io = Count::default();
    // the read lands in the buffer each time (as the TAP's read would)
    let load = |buf: &mut PacketBuf| {
        buf.vnet_slot()[..read.len()].copy_from_slice(&read);
        PortRead::Vnet(read.len())
    };
    let r = load(&mut buf);
    dp.handle_port_rx(PORT_A, r, &mut buf, t0, &mut io);
    dp.flush(&mut io);
    assert_eq!(io.datagrams, n, "gathered: a datagram a segment");
    g.bench_function("port_to_underlay_64k", |b| {
        b.iter(|| {
            let r = load(&mut buf);
            dp.handle_port_rx(PORT_A, r, black_box(&mut buf), t0, &mut io);
            dp.flush(&mut io);
        })
    });
    let mut out = vec![0u8; 2048];
    let flip = |s: &[u8]| {
        // the same segments the other way: R's to A
        let mut s = s.to_vec();
        s[0..6].copy_from_slice(&A);
        s[6..12].copy_from_slice(&R);
        datagram(VNI, &s)
    };
    let segs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let len = segment::write_segment(&f, &t, 1398, i, &mut out).expect("segment");
            flip(&out[..len])
        })
        .collect();
    let from = ip("192.0.2.2");
    io.writes = 0;
    for s in &segs {
        dp.handle_underlay_rx(from, s, &mut buf, t0, &mut io);
    }
    dp.flush(&mut io);
    assert_eq!(io.writes, 1, "coalesced: one write");
    g.bench_function("underlay_to_port_44", |b| {
        b.iter(|| {
            for s in &segs {
                dp.handle_underlay_rx(from, black_box(s), &mut buf, t0, &mut io);
            }
            dp.flush(&mut io);
        })
    });
    g.finish();
}

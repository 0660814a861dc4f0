//! The datapath end to end, one case per path, through a sink that records
//! what would have left (the node of [`crate::fuzzing::state`]).

use super::*;
use crate::fuzzing::*;
use crate::offload::segment;
use crate::offload::vnet::{self, VnetHdr};
use crate::wire::vxlan;
use crate::Mac;
use etherparse::PacketBuilder;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Everything the datapath asked to send, copied.
#[derive(Default)]
struct Recorder {
    ports: Vec<(PortId, VnetHdr, Vec<u8>)>,
    /// (VTEP, datagrams, whether they came as one gathering send)
    underlay: Vec<(IpAddr, Vec<Vec<u8>>, bool)>,
    tunnel: Vec<(SocketAddr, Vec<u8>)>,
    dns: Vec<(SocketAddr, Vec<u8>)>,
}

fn split(data: &[u8], seg: usize) -> Vec<Vec<u8>> {
    if data.len() <= seg {
        return vec![data.to_vec()];
    }
    data.chunks(seg).map(<[u8]>::to_vec).collect()
}

impl Sink for Recorder {
    fn write_port(&mut self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> bool {
        self.ports.push((port, *hdr, frame.to_vec()));
        true
    }

    fn send_underlay(&mut self, _: u32, vtep: IpAddr, data: &[u8], seg: usize) -> usize {
        let d = split(data, seg);
        let n = d.len();
        self.underlay.push((vtep, d, false));
        n
    }

    fn send_underlay_gather(
        &mut self,
        _: u32,
        vtep: IpAddr,
        parts: &[IoSlice<'_>],
        per: usize,
        _: u16,
    ) -> usize {
        let d: Vec<Vec<u8>> = parts
            .chunks(per)
            .map(|p| p.iter().flat_map(|s| s.iter().copied()).collect())
            .collect();
        let n = d.len();
        self.underlay.push((vtep, d, true));
        n
    }

    fn send_tunnel(&mut self, to: SocketAddr, data: &[u8], seg: usize) -> usize {
        let d = split(data, seg);
        let n = d.len();
        self.tunnel.extend(d.into_iter().map(|d| (to, d)));
        n
    }

    fn send_probe(&mut self, _: IpAddr, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn send_dns(&mut self, to: SocketAddr, query: &[u8]) -> bool {
        self.dns.push((to, query.to_vec()));
        true
    }
}

fn datapath(t0: Instant) -> Datapath {
    let cfg = config(t0);
    let ct = Arc::new(Mutex::new(Conntrack::new(1024)));
    let mut dp = Datapath::new(cfg, ct, Arc::new(state(false)), t0);
    for p in [P_A, P_B, P_C] {
        dp.add_port(p, true);
    }
    dp
}

/// An IPv4/TCP ACK from `src` to `dst` (10.0.0.x addresses) with `seq`.
fn tcp_seg(src: (Mac, u8), dst: (Mac, u8), seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4([10, 0, 0, src.1], [10, 0, 0, dst.1], 64)
        .tcp(40000, 5201, seq, 65535)
        .ack(1)
        .write(&mut out, payload)
        .expect("frame");
    out
}

#[test]
fn a_tcp_super_frame_to_a_remote_endpoint_leaves_gathered_in_vxlan() {
    let t0 = Instant::now();
    let mut dp = datapath(t0);
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
    let frame = tcp_seg((A, 10), (R, 12), 1000, &payload);
    let t = segment::parse_tcp(&frame).expect("TCP");
    let mss = 1398;
    let hdr = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        hdr_len: t.payload_off as u16,
        gso_size: mss as u16,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut buf = PacketBuf::new();
    let slot = buf.vnet_slot();
    hdr.emit(&mut slot[..vnet::LEN]);
    slot[vnet::LEN..vnet::LEN + frame.len()].copy_from_slice(&frame);
    let mut io = Recorder::default();
    dp.handle_port_rx(
        P_A,
        PortRead::Vnet(vnet::LEN + frame.len()),
        &mut buf,
        t0,
        &mut io,
    );
    dp.flush(&mut io);

    let n = segment::count(&frame, &t, mss);
    assert_eq!(n, payload.len().div_ceil(mss));
    let sent: Vec<&Vec<u8>> = io.underlay.iter().flat_map(|(_, d, _)| d).collect();
    assert_eq!(sent.len(), n, "one datagram a segment");
    assert!(io
        .underlay
        .iter()
        .all(|(v, _, gathered)| *v == IpAddr::V4(NODE_B) && *gathered));
    let mut out = vec![0u8; 2048];
    for (i, d) in sent.iter().enumerate() {
        assert_eq!(vxlan::parse(d), Ok(VNI));
        let len = segment::write_segment(&frame, &t, mss, i, &mut out).expect("segment");
        assert_eq!(&d[vxlan::VXLAN_HEADER_LEN..], &out[..len], "segment {i}");
    }
    assert_eq!(dp.counters().underlay_tx, n as u64);
    assert!(io.ports.is_empty());
}

#[test]
fn tcp_segments_from_the_underlay_reach_a_tap_as_one_super_frame() {
    let t0 = Instant::now();
    let mut dp = datapath(t0);
    let mut io = Recorder::default();
    let mut buf = PacketBuf::new();
    let mss = 1000;
    let segments: Vec<Vec<u8>> = (0..8u32)
        .map(|i| {
            tcp_seg(
                (R, 12),
                (A, 10),
                5000 + i * mss,
                &vec![i as u8; mss as usize],
            )
        })
        .collect();
    for s in &segments {
        dp.handle_underlay_rx(IpAddr::V4(NODE_B), &datagram(VNI, s), &mut buf, t0, &mut io);
    }
    assert!(io.ports.is_empty(), "held until the batch ends");
    dp.flush(&mut io);

    assert_eq!(io.ports.len(), 1, "one write");
    let (port, hdr, frame) = &io.ports[0];
    assert_eq!(*port, P_A);
    assert!(hdr.is_gso());
    assert_eq!(usize::from(hdr.gso_size), mss as usize);
    assert_eq!(frame.len(), 54 + 8 * mss as usize);
    for (i, chunk) in frame[54..].chunks(mss as usize).enumerate() {
        assert!(chunk.iter().all(|b| *b == i as u8), "segment {i} in order");
    }
    assert_eq!(dp.counters().port_tx, 1);
}

#[test]
fn a_frame_goes_through_the_tunnel_and_back_on_the_clock_it_is_given() {
    // a clock far from the process's: nothing in the datapath reads its own
    let t0 = Instant::now() + Duration::from_secs(86_400);
    let mut dp = datapath(t0);
    let mut io = Recorder::default();
    dp.set_tunnels(
        tunnel_config(TUN_LOCAL, 1, TUN_PEER, PEER_EP, 2),
        t0,
        &mut io,
    );
    assert_eq!(
        dp.poll_timeout(),
        Some(t0 + crate::tunnel::TICK),
        "the tunnels' tick"
    );
    let mut peer = Tunnels::new();
    peer.configure(
        tunnel_config(TUN_PEER, 2, TUN_LOCAL, LOCAL_EP, 1),
        t0,
        &mut |_, _| {},
    );
    // C (local, encrypted network) to D (behind the peer): the first packet
    // starts the handshake and waits for it
    let frame = udp_frame(C, D, [10, 1, 0, 10], [10, 1, 0, 20], 7000, 7001, b"secret");
    let mut buf = PacketBuf::new();
    buf.load_frame(&frame);
    let n = buf.len();
    dp.handle_port_rx(P_C, PortRead::Frame(n), &mut buf, t0, &mut io);
    dp.flush(&mut io);
    let init = io.tunnel.pop().expect("a handshake initiation");
    assert_eq!(init.0, PEER_EP);
    let mut wire = Vec::new();
    let mut out = vec![0u8; 65_536];
    let _ = peer.receive(LOCAL_EP, &init.1, &mut out, t0, &mut |d, _| {
        wire.push(d.to_vec())
    });
    let t1 = t0 + Duration::from_millis(10);
    for d in wire.drain(..) {
        dp.handle_tunnel_rx(PEER_EP, &d, &mut buf, t1, &mut io);
    }
    dp.flush(&mut io);
    // the keepalive that confirms the session, then the queued packet
    let mut inner = None;
    for (_, d) in io.tunnel.drain(..) {
        if let crate::tunnel::Received::Vxlan { offset, len, .. } =
            peer.receive(LOCAL_EP, &d, &mut out, t1, &mut |_, _| {})
        {
            inner = Some(out[offset..offset + len].to_vec());
        }
    }
    let inner = inner.expect("the frame came out of the tunnel");
    assert_eq!(vxlan::parse(&inner), Ok(SECURE_VNI));
    assert_eq!(&inner[vxlan::VXLAN_HEADER_LEN..], &frame[..]);
    assert_eq!(dp.tunnels().handshakes(), 1);

    // and D answers C through the tunnel
    let back = udp_frame(D, C, [10, 1, 0, 20], [10, 1, 0, 10], 7001, 7000, b"reply");
    let mut pb = PacketBuf::new();
    pb.load_frame(&back);
    pb.write_vxlan_header(SECURE_VNI);
    let packet = pb
        .tunnel_packet(TUN_PEER, TUN_LOCAL, 1)
        .expect("inner")
        .to_vec();
    let _ = peer.send_to(TUN_LOCAL, &packet, &mut |d, _| wire.push(d.to_vec()));
    for d in wire.drain(..) {
        dp.handle_tunnel_rx(PEER_EP, &d, &mut buf, t1, &mut io);
    }
    dp.flush(&mut io);
    assert_eq!(io.ports.len(), 1);
    assert_eq!((io.ports[0].0, &io.ports[0].2[..]), (P_C, &back[..]));

    // the tunnels' timers run when they are due, on the given clock
    let tx = dp.counters().tunnel_tx;
    dp.handle_timeout(t1 + Duration::from_secs(30), &mut io);
    assert!(dp.counters().tunnel_tx >= tx);
    assert_eq!(
        dp.poll_timeout(),
        Some(t1 + Duration::from_secs(30) + crate::tunnel::TICK)
    );
}

#[test]
fn a_relayed_dns_query_times_out_on_the_datapaths_timer() {
    let t0 = Instant::now();
    let mut dp = datapath(t0);
    let mut io = Recorder::default();
    let mut buf = PacketBuf::new();
    let resolver: SocketAddr = "192.0.2.53:53".parse().unwrap();
    let ask = |dp: &mut Datapath, io: &mut Recorder, buf: &mut PacketBuf, id, now| {
        let q = dns_query(id, "example.org.", false);
        buf.load_frame(&udp_frame(
            A,
            GW,
            [10, 0, 0, 10],
            [10, 0, 0, 1],
            40000,
            53,
            &q,
        ));
        let n = buf.len();
        dp.handle_port_rx(P_A, PortRead::Frame(n), buf, now, io);
        let (to, sent) = io.dns.pop().expect("relayed");
        assert_eq!(to, resolver);
        sent
    };
    // answered in time: back to the asker, under its own id
    let mut sent = ask(&mut dp, &mut io, &mut buf, 0x1234, t0);
    assert_eq!(&sent[2..], &dns_query(0x1234, "example.org.", false)[2..]);
    dp.handle_dns_rx(resolver, &mut sent, &mut io);
    let (port, _, frame) = io.ports.pop().expect("answered");
    assert_eq!(port, P_A);
    assert_eq!(&frame[42..44], &0x1234u16.to_be_bytes());

    // not answered within 5 s: the timer gives up on it, a late answer is dropped
    let mut sent = ask(&mut dp, &mut io, &mut buf, 0x4321, t0);
    let due = dp.poll_timeout().expect("a timer");
    assert!(due <= t0 + Duration::from_secs(1));
    dp.handle_timeout(t0 + Duration::from_secs(4), &mut io);
    dp.handle_timeout(t0 + Duration::from_secs(6), &mut io);
    dp.handle_dns_rx(resolver, &mut sent, &mut io);
    assert!(io.ports.is_empty(), "the late answer went nowhere");
    assert_eq!(dp.counters().dns_answers, 1);
}

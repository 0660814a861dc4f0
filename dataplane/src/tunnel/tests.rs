use super::*;
use std::collections::VecDeque;

/// The clock the tunnels are given (a test's own; nothing here waits).
fn now() -> Instant {
    Instant::now()
}

const VA: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const VB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

fn ep(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), 51820)
}

fn key(seed: u8) -> [u8; 32] {
    let mut k = [seed; 32];
    k[0] &= 248;
    k
}

fn public(k: [u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(k)).to_bytes()
}

/// Two nodes and the wire between them: datagrams queue up and are delivered
/// by `pump`, so tests can also replay, forge or drop them.
struct Net {
    a: Tunnels,
    b: Tunnels,
    wire: VecDeque<(Vec<u8>, SocketAddr, SocketAddr)>,
    got_a: Vec<Vec<u8>>,
    got_b: Vec<Vec<u8>>,
    drops: Vec<DropReason>,
}

fn cfg(
    local: Ipv4Addr,
    keys: &[[u8; 32]],
    peer: Ipv4Addr,
    peer_ep: SocketAddr,
    peer_key: [u8; 32],
) -> TunnelConfig {
    TunnelConfig {
        local_vtep: local,
        keys: keys.to_vec(),
        preshared: None,
        peers: vec![TunnelPeer {
            vtep: peer,
            endpoint: peer_ep,
            public: public(peer_key),
        }],
    }
}

fn vxlan_packet(src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; inner::INNER_HEADER_LEN + body.len()];
    assert!(inner::write(&mut p, src, dst, 1, body.len()));
    p[inner::INNER_HEADER_LEN..].copy_from_slice(body);
    p
}

impl Net {
    fn new() -> Self {
        let mut n = Net {
            a: Tunnels::new(),
            b: Tunnels::new(),
            wire: VecDeque::new(),
            got_a: vec![],
            got_b: vec![],
            drops: vec![],
        };
        let mut q = Vec::new();
        n.a.configure(
            cfg(VA, &[key(1)], VB, ep(2), key(2)),
            now(),
            &mut |d, to| q.push((d.to_vec(), ep(1), to)),
        );
        n.b.configure(
            cfg(VB, &[key(2)], VA, ep(1), key(1)),
            now(),
            &mut |d, to| q.push((d.to_vec(), ep(2), to)),
        );
        n.wire.extend(q);
        n
    }

    fn send_a(&mut self, body: &[u8]) {
        let p = vxlan_packet(VA, VB, body);
        let w = &mut self.wire;
        if let Err(r) = self
            .a
            .send_to(VB, &p, &mut |d, to| w.push_back((d.to_vec(), ep(1), to)))
        {
            self.drops.push(r);
        }
    }

    fn send_b(&mut self, body: &[u8]) {
        let p = vxlan_packet(VB, VA, body);
        let w = &mut self.wire;
        if let Err(r) = self
            .b
            .send_to(VA, &p, &mut |d, to| w.push_back((d.to_vec(), ep(2), to)))
        {
            self.drops.push(r);
        }
    }

    fn deliver(&mut self, d: &[u8], from: SocketAddr, to: SocketAddr) {
        let mut out = vec![0u8; 2048];
        let (t, got, me) = if to == ep(1) {
            (&mut self.a, &mut self.got_a, ep(1))
        } else {
            (&mut self.b, &mut self.got_b, ep(2))
        };
        let w = &mut self.wire;
        match t.receive(from, d, &mut out, now(), &mut |d, dst| {
            w.push_back((d.to_vec(), me, dst))
        }) {
            Received::Vxlan { offset, len, .. } => got.push(out[offset..offset + len].to_vec()),
            Received::Control => {}
            Received::Drop(r) => self.drops.push(r),
        }
    }

    fn pump(&mut self) {
        while let Some((d, from, to)) = self.wire.pop_front() {
            self.deliver(&d, from, to);
        }
    }
}

#[test]
fn handshake_then_data_both_ways() {
    let mut n = Net::new();
    n.send_a(b"hello b");
    n.pump();
    n.send_b(b"hello a");
    n.pump();
    assert_eq!(
        n.got_b,
        vec![b"hello b".to_vec()],
        "queued during the handshake, then delivered"
    );
    assert_eq!(n.got_a, vec![b"hello a".to_vec()]);
    assert!(n.drops.is_empty(), "{:?}", n.drops);
}

#[test]
fn replayed_forged_and_unknown_are_dropped_by_reason() {
    let mut n = Net::new();
    n.send_a(b"one");
    n.pump();
    // capture a data message on the wire
    n.send_a(b"two");
    let (d, from, to) = n.wire.pop_front().unwrap();
    n.deliver(&d, from, to);
    n.deliver(&d, from, to);
    assert_eq!(n.drops, vec![DropReason::TunnelReplay]);
    n.send_a(b"three");
    let (mut forged, from, to) = n.wire.pop_front().unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    n.deliver(&forged, from, to);
    assert_eq!(n.drops.last(), Some(&DropReason::TunnelAuth));
    // a stranger's handshake: its key is no peer of B
    let mut stranger = Tunnels::new();
    let mut q = vec![];
    stranger.configure(
        cfg(Ipv4Addr::new(100, 64, 0, 9), &[key(9)], VB, ep(2), key(2)),
        now(),
        &mut |_, _| {},
    );
    stranger
        .send_to(
            VB,
            &vxlan_packet(Ipv4Addr::new(100, 64, 0, 9), VB, b"x"),
            &mut |d, _| q.push(d.to_vec()),
        )
        .unwrap();
    n.deliver(&q[0], ep(9), ep(2));
    assert_eq!(n.drops.last(), Some(&DropReason::TunnelNoPeer));
    n.deliver(&[4, 0, 0, 0, 1, 2, 3], ep(9), ep(2));
    assert_eq!(n.got_b, vec![b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn inner_source_must_be_the_peer() {
    let mut n = Net::new();
    let p = vxlan_packet(Ipv4Addr::new(100, 64, 0, 77), VB, b"spoof");
    let w = &mut n.wire;
    n.a.send_to(VB, &p, &mut |d, to| w.push_back((d.to_vec(), ep(1), to)))
        .unwrap();
    n.pump();
    assert!(n.got_b.is_empty());
    assert_eq!(n.drops, vec![DropReason::TunnelNotAllowed]);
}

#[test]
fn a_removed_peer_can_no_longer_send() {
    let mut n = Net::new();
    n.send_a(b"before");
    n.pump();
    n.b.configure(
        TunnelConfig {
            peers: vec![],
            ..cfg(VB, &[key(2)], VA, ep(1), key(1))
        },
        now(),
        &mut |_, _| {},
    );
    n.send_a(b"after");
    n.pump();
    assert_eq!(n.got_b, vec![b"before".to_vec()]);
    assert_eq!(n.drops, vec![DropReason::TunnelNoPeer]);
}

#[test]
fn key_rotation_loses_nothing() {
    let mut n = Net::new();
    let mut sent = 0u32;
    let mut step = |n: &mut Net| {
        sent += 1;
        n.send_a(&sent.to_be_bytes());
        n.send_b(&sent.to_be_bytes());
        n.pump();
    };
    for _ in 0..5 {
        step(&mut n);
    }
    // A rotates: it keeps accepting with the old key, and publishes the new one
    let mut q = vec![];
    n.a.configure(
        cfg(VA, &[key(3), key(1)], VB, ep(2), key(2)),
        now(),
        &mut |d, to| q.push((d.to_vec(), ep(1), to)),
    );
    n.wire.extend(q);
    for _ in 0..5 {
        step(&mut n); // B has not seen the new key yet
    }
    // B learns A's new public key from the store
    let mut q = vec![];
    n.b.configure(
        cfg(VB, &[key(2)], VA, ep(1), key(3)),
        now(),
        &mut |d, to| q.push((d.to_vec(), ep(2), to)),
    );
    n.wire.extend(q);
    for _ in 0..5 {
        step(&mut n);
    }
    // A forgets the old key
    n.a.configure(cfg(VA, &[key(3)], VB, ep(2), key(2)), now(), &mut |_, _| {});
    for _ in 0..5 {
        step(&mut n);
    }
    // Every data packet arrived, in order. (Both ends initiating at the very start
    // makes one handshake response each arrive unexpected: WireGuard's normal
    // race, no data involved.)
    let want: Vec<Vec<u8>> = (1..=20u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(n.got_a, want, "lost or reordered at A");
    assert_eq!(n.got_b, want, "lost or reordered at B");
    assert!(
        n.drops.iter().all(|d| *d == DropReason::TunnelInvalid),
        "rotation dropped messages: {:?}",
        n.drops
    );
    assert_eq!(n.a.slots(), 1);
    // B keeps the superseded old-key session for packets still in flight; `tick`
    // retires it RETIRE_AFTER after the new session came up.
    assert_eq!(n.b.slots(), 2);
}

#[test]
fn peers_added_after_keys_work() {
    // as the agent does it: keys first with no peers, then peers as they appear
    let mut a = Tunnels::new();
    let mut b = Tunnels::new();
    let none = |v: Ipv4Addr, k: [u8; 32]| TunnelConfig {
        local_vtep: v,
        keys: vec![k],
        preshared: None,
        peers: vec![],
    };
    a.configure(none(VA, key(1)), now(), &mut |_, _| {});
    b.configure(none(VB, key(2)), now(), &mut |_, _| {});
    a.configure(cfg(VA, &[key(1)], VB, ep(2), key(2)), now(), &mut |_, _| {});
    b.configure(cfg(VB, &[key(2)], VA, ep(1), key(1)), now(), &mut |_, _| {});
    let mut n = Net {
        a,
        b,
        wire: VecDeque::new(),
        got_a: vec![],
        got_b: vec![],
        drops: vec![],
    };
    n.send_a(b"x");
    n.pump();
    n.send_b(b"y");
    n.pump();
    assert!(n.drops.is_empty(), "{:?}", n.drops);
    assert_eq!(n.got_b, vec![b"x".to_vec()]);
}

#[test]
fn a_flood_of_handshakes_gets_cookies_not_work() {
    let mut n = Net::new();
    // B's side of the tunnel, driven directly so it can re-send initiations at will
    let mut b = Tunn::new(
        StaticSecret::from(key(2)),
        PublicKey::from(public(key(1))),
        None,
        None,
        77,
        None,
    );
    let mut buf = vec![0u8; 256];
    let (mut cookies, mut under_load) = (0, 0);
    for _ in 0..(HANDSHAKE_RATE_LIMIT * 2) {
        let TunnResult::WriteToNetwork(init) = b.format_handshake_initiation(&mut buf, true) else {
            panic!("no initiation")
        };
        let init = init.to_vec();
        let mut out = vec![0u8; 2048];
        let mut replies = vec![];
        if let Received::Drop(DropReason::TunnelUnderLoad) =
            n.a.receive(ep(2), &init, &mut out, now(), &mut |d, _| {
                replies.push(d.len())
            })
        {
            under_load += 1;
        }
        cookies += replies.iter().filter(|l| **l == 64).count();
    }
    assert!(
        under_load >= HANDSHAKE_RATE_LIMIT as usize / 2,
        "only {under_load} refused under load"
    );
    assert_eq!(
        cookies, under_load,
        "every refused handshake got a cookie reply"
    );
}

#[test]
fn handshakes_and_rekeys_are_counted() {
    let mut n = Net::new();
    // here the rotation follows the first handshake at once; the window that
    // tells crossing initiations from a rekey is seconds long
    n.a.crossing_window = Duration::ZERO;
    n.b.crossing_window = Duration::ZERO;
    n.send_a(b"one");
    n.pump();
    n.send_b(b"two");
    n.pump();
    // A initiated and B answered: one handshake each, nothing replaced
    assert_eq!((n.a.handshakes(), n.a.rekeys()), (1, 0));
    assert_eq!((n.b.handshakes(), n.b.rekeys()), (1, 0));
    for _ in 0..3 {
        n.send_a(b"data");
        n.send_b(b"data");
        n.pump();
    }
    assert_eq!(
        (n.a.handshakes(), n.b.handshakes()),
        (1, 1),
        "data is no handshake"
    );
    // A rotates its key and B learns it: B starts a handshake with the new key
    // while both still hold the old session, so on both ends it is a rekey
    n.a.configure(
        cfg(VA, &[key(3), key(1)], VB, ep(2), key(2)),
        now(),
        &mut |_, _| {},
    );
    let mut q = vec![];
    n.b.configure(
        cfg(VB, &[key(2)], VA, ep(1), key(3)),
        now(),
        &mut |d, to| q.push((d.to_vec(), ep(2), to)),
    );
    n.wire.extend(q);
    n.pump();
    assert_eq!((n.a.handshakes(), n.a.rekeys()), (2, 1));
    assert_eq!((n.b.handshakes(), n.b.rekeys()), (2, 1));
    assert!(n.drops.is_empty(), "{:?}", n.drops);
}

#[test]
fn crossing_first_initiations_are_no_rekey() {
    let mut n = Net::new();
    // both ends start a handshake before either hears from the other
    n.send_a(b"one");
    n.send_b(b"two");
    n.pump();
    assert_eq!(n.got_b, vec![b"one".to_vec()]);
    assert_eq!(n.got_a, vec![b"two".to_vec()]);
    // each answered the other's initiation (here over and over: a queued packet
    // with no session yet starts another), yet nothing replaced a settled session
    assert!(n.a.handshakes() >= 2 && n.b.handshakes() >= 2);
    assert_eq!((n.a.rekeys(), n.b.rekeys()), (0, 0));
    // with no window, the same crossing would read as rekeys
    let mut n = Net::new();
    n.a.crossing_window = Duration::ZERO;
    n.send_a(b"one");
    n.send_b(b"two");
    n.pump();
    assert!(n.a.rekeys() > 0);
}

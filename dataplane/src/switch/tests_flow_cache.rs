//! The workers' flow caches over the shared connection table: what they serve
//! without the table's lock, what they leave to it, and what the table still
//! learns from cached packets.

use super::tests::{buf, ip, tcp_segment, with_vip, A, ACK, B, FIN, GW, SYN};
use super::*;
use crate::conntrack::State;
use std::sync::mpsc;
use std::time::Duration;

const CLIENT: [u8; 4] = [10, 0, 0, 10];
const VIP: [u8; 4] = [10, 0, 0, 100];
const BACKEND: [u8; 4] = [10, 0, 0, 11];

/// A TCP segment with `len` bytes of payload.
fn seg(
    src: Mac,
    dst: Mac,
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    seq: u32,
    flags: u8,
    len: usize,
) -> Vec<u8> {
    tcp_segment((src, dst), from, to, seq, flags, &vec![0x5a; len])
}

fn to_vip(seq: u32, flags: u8, len: usize) -> Vec<u8> {
    seg(A, GW, (CLIENT, 5000), (VIP, 80), seq, flags, len)
}

fn from_backend(seq: u32, flags: u8, len: usize) -> Vec<u8> {
    seg(B, A, (BACKEND, 80), (CLIENT, 5000), seq, flags, len)
}

/// Two workers over one table: `client` gets the client's packets, `server`
/// the backend's, as two queues of a multi-queue TAP may. The connection is
/// established at time 0 (SYN, SYN-ACK, ACK).
fn two_workers(st: &SwitchState) -> (Arc<Mutex<Conntrack>>, Switch, Switch) {
    let ct = Arc::new(Mutex::new(Conntrack::new(64)));
    let mut client = Switch::with_conntrack(16, ct.clone());
    let mut server = Switch::with_conntrack(16, ct.clone());
    client.on_state(st);
    server.on_state(st);
    let mut b = buf(&to_vip(100, SYN, 0));
    assert_eq!(
        client.from_port(st, PortId(1), &mut b, 0),
        Action::Deliver(PortId(2))
    );
    let mut b = buf(&from_backend(900, SYN | ACK, 0));
    assert_eq!(
        server.from_port(st, PortId(2), &mut b, 0),
        Action::Deliver(PortId(1))
    );
    let mut b = buf(&to_vip(101, ACK, 0));
    assert_eq!(
        client.from_port(st, PortId(1), &mut b, 0),
        Action::Deliver(PortId(2))
    );
    assert_eq!(
        ct.lock().unwrap().iter().next().unwrap().state,
        State::Established
    );
    (ct, client, server)
}

/// Sends `frame` from `port` through `sw` on another thread while this one
/// holds the table's lock: whether it got through within `wait` (it cannot if
/// it needs the table). The lock is then released and the switch returned.
fn through_while_locked(
    ct: &Arc<Mutex<Conntrack>>,
    mut sw: Switch,
    st: &SwitchState,
    port: PortId,
    frame: Vec<u8>,
    now_ms: u64,
    wait: Duration,
) -> (bool, Switch) {
    let guard = ct.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    let st = st.clone();
    let worker = std::thread::spawn(move || {
        let mut b = buf(&frame);
        let a = format!("{:?}", sw.from_port(&st, port, &mut b, now_ms));
        tx.send(a).unwrap();
        sw
    });
    let through = rx.recv_timeout(wait).is_ok();
    drop(guard);
    let sw = worker.join().unwrap();
    (through, sw)
}

#[test]
fn established_packets_pass_while_another_worker_holds_the_table() {
    let st = with_vip();
    let (ct, client, server) = two_workers(&st);
    let waits = || ct.lock().unwrap().lock_waits;
    let waits0 = waits();
    // the client's data, served from its worker's cache
    let (through, _client) = through_while_locked(
        &ct,
        client,
        &st,
        PortId(1),
        to_vip(101, ACK, 100),
        1,
        Duration::from_secs(10),
    );
    assert!(through, "a cached client packet needed the table's lock");
    assert_eq!(waits(), waits0);
    // the first reply after the handshake is not cached yet: it needs the table
    let (through, server) = through_while_locked(
        &ct,
        server,
        &st,
        PortId(2),
        from_backend(901, ACK, 50),
        2,
        Duration::from_millis(300),
    );
    assert!(!through, "an uncached reply went through without the table");
    // (it waited, and counted it; conntrack's tests check that count)
    let waits1 = waits();
    // after it, the replies are cached too
    let (through, _) = through_while_locked(
        &ct,
        server,
        &st,
        PortId(2),
        from_backend(951, ACK, 50),
        3,
        Duration::from_secs(10),
    );
    assert!(through, "a cached reply needed the table's lock");
    assert_eq!(waits(), waits1, "cached packets never wait");
}

#[test]
fn cached_packets_keep_the_connection_alive_and_its_reset_numbers_current() {
    let st = with_vip();
    let (ct, mut client, mut server) = two_workers(&st);
    let mut b = buf(&from_backend(901, ACK, 0));
    server.from_port(&st, PortId(2), &mut b, 1);
    // well into the connection's life, only cached packets
    for (t, seq) in [(500_000, 101), (600_000, 201)] {
        let mut b = buf(&to_vip(seq, ACK, 100));
        assert_eq!(
            client.from_port(&st, PortId(1), &mut b, t),
            Action::Deliver(PortId(2))
        );
        assert_eq!(&b.data()[30..34], &BACKEND);
        let mut b = buf(&from_backend(901 + seq, ACK, 10));
        assert_eq!(
            server.from_port(&st, PortId(2), &mut b, t),
            Action::Deliver(PortId(1))
        );
        assert_eq!(&b.data()[26..30], &VIP);
    }
    let mut ct = ct.lock().unwrap();
    let e = ct.iter().next().unwrap();
    assert_eq!(e.last_ms, 600_000);
    assert_eq!(e.next_seq, [301, 901 + 201 + 10]);
    // 900 s after the last packet, not after the handshake
    assert_eq!(ct.expire(1_000_000, |_| {}), 0);
    assert_eq!(ct.len(), 1);
}

#[test]
fn a_connection_the_table_dropped_is_not_served_from_a_cache() {
    let st = with_vip();
    let (ct, mut client, _server) = two_workers(&st);
    let mut b = buf(&to_vip(101, ACK, 100));
    assert_eq!(
        client.from_port(&st, PortId(1), &mut b, 1),
        Action::Deliver(PortId(2))
    );
    // worker 0's expiry removes the idle connection (and resets both ends)
    let mut gone = 0;
    assert_eq!(ct.lock().unwrap().expire(901_000 + 1, |_| gone += 1), 1);
    assert_eq!(gone, 1);
    // the client's next packet is scheduled anew: round robin's next backend,
    // the remote one, not the cached local one
    let mut b = buf(&to_vip(201, ACK, 100));
    assert!(matches!(
        client.from_port(&st, PortId(1), &mut b, 901_002),
        Action::Encap { vtep, .. } if vtep == ip("192.0.2.2")
    ));
    assert_eq!(ct.lock().unwrap().len(), 1);
}

#[test]
fn a_state_change_seen_by_another_worker_sends_the_next_packet_to_the_table() {
    let st = with_vip();
    let (ct, mut client, mut server) = two_workers(&st);
    let mut b = buf(&to_vip(101, ACK, 100));
    client.from_port(&st, PortId(1), &mut b, 1);
    // the backend closes its side, through the other worker
    let mut b = buf(&from_backend(901, FIN | ACK, 0));
    assert_eq!(
        server.from_port(&st, PortId(2), &mut b, 2),
        Action::Deliver(PortId(1))
    );
    assert_eq!(
        ct.lock().unwrap().iter().next().unwrap().state,
        State::FinWait
    );
    // the client's cached copy is stale: its next packet needs the table
    let (through, mut client) = through_while_locked(
        &ct,
        client,
        &st,
        PortId(1),
        to_vip(201, ACK, 0),
        3,
        Duration::from_millis(300),
    );
    assert!(
        !through,
        "a packet of a connection that changed state was served from a cache"
    );
    // and the client's FIN finishes the connection in the table
    let mut b = buf(&to_vip(201, FIN | ACK, 0));
    client.from_port(&st, PortId(1), &mut b, 4);
    assert_eq!(
        ct.lock().unwrap().iter().next().unwrap().state,
        State::TimeWait
    );
}

#[test]
fn a_state_change_empties_the_cache_even_for_connections_that_stay() {
    const B2: Mac = [2, 0, 0, 0, 0, 0xd];
    let st = with_vip();
    let (ct, mut client, _server) = two_workers(&st);
    let mut b = buf(&to_vip(101, ACK, 100));
    assert_eq!(
        client.from_port(&st, PortId(1), &mut b, 1),
        Action::Deliver(PortId(2))
    );
    // the backend's address, still serving, now answers at another MAC behind
    // another node
    let mut moved = st.clone();
    let net = moved.networks.values_mut().next().unwrap();
    net.neighbors.insert(IpAddr::from(BACKEND), B2);
    net.macs.insert(B2, Location::Remote(ip("192.0.2.2")));
    assert!(client.on_state(&moved).is_empty(), "the connection stays");
    assert_eq!(ct.lock().unwrap().len(), 1);
    let mut b = buf(&to_vip(201, ACK, 100));
    let a = client.from_port(&moved, PortId(1), &mut b, 2);
    assert!(
        matches!(a, Action::Encap { vtep, .. } if vtep == ip("192.0.2.2")),
        "{a:?}"
    );
    assert_eq!(&b.data()[0..6], &B2);
}

/// A client's ACK to a VIP for no connection the table holds (forged, or one
/// an agent restarted without its snapshot carried) is forwarded but tracked
/// half-open: neither it nor the client's next segments make the entry
/// established or cached; the backend's acknowledgement does.
#[test]
fn a_segment_without_syn_to_a_vip_is_half_open_until_the_backend_answers() {
    let st = with_vip();
    let ct = Arc::new(Mutex::new(Conntrack::new(64)));
    let mut client = Switch::with_conntrack(16, ct.clone());
    let mut server = Switch::with_conntrack(16, ct.clone());
    client.on_state(&st);
    server.on_state(&st);
    let state = || ct.lock().unwrap().iter().next().map(|e| e.state);
    for (seq, now) in [(101, 0), (201, 1), (301, 2)] {
        let mut b = buf(&to_vip(seq, ACK, 100));
        assert_eq!(
            client.from_port(&st, PortId(1), &mut b, now),
            Action::Deliver(PortId(2))
        );
        assert_eq!(state(), Some(State::SynRecv), "after the client's {seq}");
    }
    assert_eq!(ct.lock().unwrap().len(), 1);
    // nothing cached: the client's segment still needs the table
    assert!(
        !through_while_locked(
            &ct,
            client,
            &st,
            PortId(1),
            to_vip(401, ACK, 100),
            3,
            Duration::from_millis(200)
        )
        .0
    );
    let mut b = buf(&from_backend(900, ACK, 0));
    assert_eq!(
        server.from_port(&st, PortId(2), &mut b, 3),
        Action::Deliver(PortId(1))
    );
    assert_eq!(state(), Some(State::Established));
}

use super::state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use super::*;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;

fn key(sport: u16) -> Key {
    Key {
        zone: 7,
        proto: 6,
        src: Ipv4Addr::new(10, 0, 0, 2).into(),
        dst: Ipv4Addr::new(10, 0, 0, 100).into(),
        sport,
        dport: 80,
    }
}

fn reply_of(k: &Key) -> Key {
    Key {
        src: Ipv4Addr::new(10, 0, 0, 5).into(),
        sport: 8080,
        dst: k.src,
        dport: k.sport,
        ..*k
    }
}

fn open(ct: &mut Conntrack, sport: u16, now: u64) -> u32 {
    let k = key(sport);
    let id = ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, now);
    ct.update(id, Dir::Reply, TCP_SYN | TCP_ACK, now);
    ct.update(id, Dir::Orig, TCP_ACK, now);
    id
}

#[test]
fn found_from_both_directions_and_follows_tcp() {
    let mut ct = Conntrack::new(16);
    let k = key(1000);
    let id = ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, 0);
    assert_eq!(ct.lookup(&k), Some((id, Dir::Orig)));
    assert_eq!(ct.lookup(&reply_of(&k)), Some((id, Dir::Reply)));
    assert_eq!(ct.get(id).unwrap().state, State::SynSent);
    ct.update(id, Dir::Reply, TCP_SYN | TCP_ACK, 1);
    assert_eq!(ct.get(id).unwrap().state, State::SynRecv);
    ct.update(id, Dir::Orig, TCP_ACK, 2);
    assert_eq!(ct.get(id).unwrap().state, State::Established);
    ct.update(id, Dir::Orig, TCP_FIN | TCP_ACK, 3);
    assert_eq!(ct.get(id).unwrap().state, State::FinWait);
    ct.update(id, Dir::Reply, TCP_FIN | TCP_ACK, 4);
    assert_eq!(ct.get(id).unwrap().state, State::TimeWait);
    assert_eq!(ct.counts(7, 1, 0), (0, 1));
}

/// A sweep in slices (the lock given up between them) expires what one whole
/// sweep would, whatever is inserted between slices.
#[test]
fn a_sweep_in_slices_expires_what_a_whole_one_does() {
    let fill = |ct: &mut Conntrack| {
        for p in 1..=100u16 {
            // odd ports established at 0 (idle past 900 s), even ones busy
            let id = open(ct, p, 0);
            if p % 2 == 0 {
                ct.update(id, Dir::Orig, TCP_ACK, 900_000);
            }
        }
    };
    let mut whole = Conntrack::new(256);
    fill(&mut whole);
    let mut all = vec![];
    assert_eq!(whole.expire(901_000, |e| all.push(e.orig.sport)), 50);

    let mut sliced = Conntrack::new(256);
    fill(&mut sliced);
    let (mut from, mut got, mut n, mut slices) = (Some(0), vec![], 0, 0);
    while let Some(first) = from {
        let (k, next) = sliced.expire_slots(901_000, first, 7, |e| got.push(e.orig.sport));
        n += k;
        from = next;
        slices += 1;
        if slices == 3 {
            open(&mut sliced, 500, 900_000); // a new connection mid-sweep stays
        }
    }
    assert_eq!(slices, 15, "100 slots in slices of 7");
    assert_eq!((n, got), (50, all), "the same connections, reset alike");
    assert_eq!(sliced.len(), 51);
    assert!(sliced.lookup(&key(500)).is_some());
    assert_eq!(sliced.expire_slots(901_000, 1_000, 7, |_| ()), (0, None));
}

#[test]
fn timeouts_follow_state_and_established_ones_get_reset() {
    let mut ct = Conntrack::new(16);
    let est = open(&mut ct, 1, 0);
    let k = key(2);
    ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, 0); // half-open
    let mut resets = vec![];
    assert_eq!(
        ct.expire(31_000, |e| resets.push(e.orig.sport)),
        1,
        "the SYN wait is short"
    );
    assert!(resets.is_empty(), "a half-open entry needs no RST");
    assert!(ct.get(est).is_some());
    assert_eq!(ct.expire(901_000, |e| resets.push(e.orig.sport)), 1);
    assert_eq!(
        resets,
        vec![1],
        "an idle established connection is reset, not blackholed"
    );
    assert!(ct.is_empty());
}

#[test]
fn a_full_table_evicts_half_open_before_established() {
    let mut ct = Conntrack::new(10);
    for p in 0..5 {
        open(&mut ct, p, 0);
    }
    for p in 5..10 {
        let k = key(p);
        ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, 10);
    }
    // a flood of new SYNs: the table stays bounded and the established survive
    for p in 100..1000 {
        let k = key(p);
        ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, 20 + u64::from(p));
        assert!(ct.len() <= 10);
    }
    for p in 0..5 {
        assert!(
            ct.lookup(&key(p)).is_some(),
            "established connection {p} evicted"
        );
    }
    assert!(ct.evicted >= 890);
}

#[test]
fn removing_a_backend_resets_its_live_connections() {
    let mut ct = Conntrack::new(16);
    open(&mut ct, 1, 0);
    let k = key(2);
    let id = ct.insert(k, reply_of(&k), 1, 1, TCP_SYN, 0);
    ct.update(id, Dir::Reply, TCP_SYN | TCP_ACK, 0);
    ct.update(id, Dir::Orig, TCP_ACK, 0);
    let mut resets = vec![];
    assert_eq!(ct.remove_backend(1, 1, |e| resets.push(e.orig.sport)), 1);
    assert_eq!(resets, vec![2]);
    assert_eq!(ct.len(), 1);
    assert!(ct.lookup(&reply_of(&k)).is_none());
}

#[test]
fn a_new_syn_on_a_finished_tuple_starts_a_fresh_connection() {
    let mut ct = Conntrack::new(4);
    let id = open(&mut ct, 7, 0);
    ct.update(id, Dir::Orig, TCP_FIN | TCP_ACK, 1);
    ct.update(id, Dir::Reply, TCP_FIN | TCP_ACK, 2);
    assert_eq!(ct.get(id).unwrap().state, State::TimeWait);
    ct.update(id, Dir::Orig, TCP_SYN, 3);
    assert_eq!(
        ct.get(id).unwrap().state,
        State::SynSent,
        "not left with TIME_WAIT's short timeout"
    );
}

#[test]
fn a_later_connection_on_the_same_tuple_replaces_the_earlier() {
    let mut ct = Conntrack::new(8);
    let k1 = key(1);
    let r = reply_of(&k1);
    ct.insert(k1, r, 1, 0, TCP_SYN, 0);
    let k2 = Key {
        dst: Ipv4Addr::new(10, 0, 0, 101).into(),
        ..k1
    }; // same client port, another VIP, same backend: one 4-tuple at the backend
    let b = ct.insert(k2, r, 2, 0, TCP_SYN, 0);
    assert_eq!(ct.len(), 1, "the stale connection went");
    assert_eq!(ct.lookup(&k1), None);
    assert_eq!(ct.lookup(&r), Some((b, Dir::Reply)));
    ct.remove_backend(1, 0, |_| {});
    assert_eq!(
        ct.lookup(&r),
        Some((b, Dir::Reply)),
        "the later entry kept its reply key"
    );
}

#[test]
fn udp_is_unreplied_then_replied() {
    let mut ct = Conntrack::new(4);
    let k = Key {
        proto: 17,
        ..key(53)
    };
    let id = ct.insert(k, reply_of(&k), 1, 0, 0, 0);
    assert_eq!(ct.get(id).unwrap().state, State::Unreplied);
    ct.update(id, Dir::Reply, 0, 1);
    assert_eq!(ct.get(id).unwrap().state, State::Replied);
    assert_eq!(
        ct.expire(60_000, |_| {}),
        0,
        "a replied UDP flow lives longer"
    );
}

proptest::proptest! {
    #[test]
    fn bounded_and_consistent_under_any_sequence(
        ops in proptest::collection::vec((0u16..64, 0u8..0x20, proptest::bool::ANY, 0u64..2_000_000), 1..300)
    ) {
        let mut ct = Conntrack::new(16);
        for (p, flags, reply, t) in ops {
            let k = key(p);
            match ct.lookup(&k) {
                Some((id, _)) => ct.update(id, if reply { Dir::Reply } else { Dir::Orig }, flags, t),
                None => { ct.insert(k, reply_of(&k), 1, u32::from(p % 3), flags, t); }
            }
            proptest::prop_assert!(ct.len() <= 16);
            if p % 7 == 0 { ct.expire(t, |_| {}); }
            // every entry is findable from both directions, and nothing else is indexed
            for e in ct.iter() {
                proptest::prop_assert!(ct.lookup(&e.orig).is_some() && ct.lookup(&e.reply).is_some());
            }
            proptest::prop_assert_eq!(ct.index.len(), 2 * ct.len());
            // the per-backend counts agree with a walk of the table
            for b in 0..3 {
                let walk = ct.iter().filter(|e| e.backend == b).fold((0, 0), |(a, i), e| {
                    if e.state == State::Established { (a + 1, i) } else { (a, i + 1) }
                });
                proptest::prop_assert_eq!(ct.counts(7, 1, b), walk);
            }
        }
    }
}

#[test]
fn only_steady_connections_are_cacheable_and_any_change_moves_the_generation() {
    let mut ct = Conntrack::new(16);
    let k = key(1000);
    let id = ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, 0);
    assert_eq!(ct.cacheable(id, Dir::Orig), None, "half-open");
    ct.update(id, Dir::Reply, TCP_SYN | TCP_ACK, 1);
    ct.update(id, Dir::Orig, TCP_ACK, 2);
    let gen = ct.cacheable(id, Dir::Orig).expect("established");
    assert_eq!(ct.cacheable(id, Dir::Reply), Some(gen));
    // a packet that changes nothing keeps it
    ct.update(id, Dir::Orig, TCP_ACK, 3);
    assert_eq!(ct.cacheable(id, Dir::Orig), Some(gen));
    // a FIN changes the state: the generation moves and FinWait is not cached
    ct.update(id, Dir::Reply, TCP_FIN | TCP_ACK, 4);
    assert_eq!(ct.cacheable(id, Dir::Orig), None);
    assert_ne!(ct.touches()[id as usize].gen(), gen);
    // UDP: the client's packets before an answer, both ways after
    let u = Key {
        proto: 17,
        ..key(2000)
    };
    let uid = ct.insert(u, reply_of(&u), 1, 0, 0, 5);
    assert!(ct.cacheable(uid, Dir::Orig).is_some());
    assert_eq!(ct.cacheable(uid, Dir::Reply), None);
    let before = ct.touches()[uid as usize].gen();
    ct.update(uid, Dir::Reply, 0, 6);
    assert_ne!(ct.cacheable(uid, Dir::Reply), None);
    assert_ne!(ct.touches()[uid as usize].gen(), before);
    // removal moves it too, and a reused slot does not come back to it
    let gen = ct.touches()[uid as usize].gen();
    ct.retire(uid);
    let again = ct.insert(u, reply_of(&u), 1, 0, 0, 7);
    assert_eq!(again, uid);
    assert!(ct.touches()[uid as usize].gen() != gen);
}

#[test]
fn setups_count_every_connection_created_and_stay_when_entries_go() {
    let mut ct = Conntrack::new(2);
    for p in 1000..1005 {
        open(&mut ct, p, 0);
    }
    // a new connection reusing a finished one's tuple is a setup too
    open(&mut ct, 1004, 1);
    assert_eq!(ct.created, 6);
    assert_eq!(ct.len(), 2);
    assert_eq!(ct.evicted, 3);
    ct.expire(u64::MAX / 2, |_| {});
    assert_eq!(ct.created, 6, "a counter, not a gauge");
}

#[test]
fn a_restored_table_holds_what_the_saved_one_did() {
    let mut ct = Conntrack::new(64);
    let a = open(&mut ct, 1000, 10);
    ct.note_seq(a, Dir::Orig, 111);
    ct.note_seq(a, Dir::Reply, 222);
    ct.set_via(a, [2, 0, 0, 0, 0, 9]);
    let k = key(2000);
    ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, 10); // half-open
    let saved: Vec<Entry> = ct.iter().collect();
    // a new run: another clock, an empty table
    let mut back = Conntrack::new(64);
    for e in &saved {
        back.restore(e, 5);
    }
    assert_eq!(back.len(), 2);
    for e in &saved {
        let (id, dir) = back.lookup(&e.orig).expect("original direction found");
        assert_eq!(dir, Dir::Orig);
        assert_eq!(back.lookup(&e.reply), Some((id, Dir::Reply)));
        let r = back.get(id).unwrap();
        assert_eq!((r.state, r.via, r.next_seq), (e.state, e.via, e.next_seq));
        assert_eq!((r.service, r.backend, r.last_ms), (e.service, e.backend, 5));
    }
    // the load the lc scheduler reads is the same
    assert_eq!(back.counts(7, 1, 0), ct.counts(7, 1, 0));
    assert_eq!(back.counts(7, 1, 0), (1, 1));
    // a (hand-edited) entry whose directions are one key is refused
    let land = Key {
        src: Ipv4Addr::new(10, 0, 0, 2).into(),
        dst: Ipv4Addr::new(10, 0, 0, 2).into(),
        sport: 80,
        dport: 80,
        ..key(0)
    };
    let bad = Entry {
        orig: land,
        reply: land,
        ..saved[0]
    };
    assert_eq!(back.restore(&bad, 5), None);
    assert_eq!(back.len(), 2);
}

/// An IPv6 connection from `client` (an index into a few /64s and hosts) to
/// `addressed`, answered by `backend`.
fn v6_key(client: u16, sport: u16, addressed: u8) -> Key {
    let c = std::net::Ipv6Addr::new(0x2001, 0xdb8, client >> 8, 0, 0, 0, 0, client & 0xff);
    let a = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100 + u16::from(addressed));
    Key {
        zone: 7,
        proto: 6,
        src: c.into(),
        dst: a.into(),
        sport,
        dport: 80,
    }
}

proptest::proptest! {
    /// IPv6 connections are found from both directions whatever the mix, keys
    /// that differ only in their upper 96 bits (the /64 or the prefix) are
    /// different connections, and the index holds two refs per entry.
    #[test]
    fn ipv6_connections_are_found_both_ways(
        ops in proptest::collection::vec((0u16..0x300, 0u16..8, 0u8..3, 0u8..4), 1..200)
    ) {
        let mut ct = Conntrack::new(64);
        for (i, (client, sport, addressed, backend)) in ops.iter().enumerate() {
            let k = v6_key(*client, *sport, *addressed);
            let b = std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, u16::from(*backend));
            let r = Key { src: b.into(), sport: 8080, dst: k.src, dport: k.sport, ..k };
            let id = ct.insert(k, r, 1, u32::from(*backend), TCP_SYN, i as u64);
            proptest::prop_assert_eq!(ct.lookup(&k), Some((id, Dir::Orig)));
            proptest::prop_assert_eq!(ct.lookup(&r), Some((id, Dir::Reply)));
            proptest::prop_assert!(ct.len() <= 64);
            for e in ct.iter() {
                proptest::prop_assert!(ct.lookup(&e.orig).is_some() && ct.lookup(&e.reply).is_some());
                proptest::prop_assert!(e.orig.src.is_ipv6() && e.reply.src.is_ipv6());
            }
            proptest::prop_assert_eq!(ct.index.len(), 2 * ct.len());
        }
    }
}

#[test]
fn ipv6_keys_differing_only_in_their_prefix_or_family_are_distinct() {
    let mut ct = Conntrack::new(8);
    let a = v6_key(0x0101, 1, 0);
    // the same low 32 bits (what the first hash word takes) in another /48
    let b = Key {
        src: "2001:db9:1::1".parse().unwrap(),
        ..a
    };
    assert_eq!(
        match (a.src, b.src) {
            (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(x) as u32, u128::from(y) as u32),
            _ => unreachable!(),
        },
        (0x1, 0x1)
    );
    // an IPv4 client whose address is the IPv6 one's low bits
    let c = Key {
        src: Ipv4Addr::new(0, 0, 0, 1).into(),
        dst: Ipv4Addr::new(0, 0, 1, 0).into(),
        ..a
    };
    let reply = |k: &Key| Key {
        src: if k.src.is_ipv6() {
            "fd00::1:0:0:0:5".parse().unwrap()
        } else {
            Ipv4Addr::new(10, 0, 0, 5).into()
        },
        sport: 8080,
        dst: k.src,
        dport: k.sport,
        ..*k
    };
    let ids: Vec<u32> = [a, b, c]
        .iter()
        .map(|k| ct.insert(*k, reply(k), 1, 0, TCP_SYN, 0))
        .collect();
    assert_eq!(ct.len(), 3, "three connections");
    for (k, id) in [a, b, c].iter().zip(&ids) {
        assert_eq!(ct.lookup(k), Some((*id, Dir::Orig)));
    }
    assert_ne!(
        a.flow_hash(),
        b.flow_hash(),
        "the prefix reaches the flow hash"
    );
}

#[test]
fn ipv4_records_stay_40_bytes_and_mixed_families_are_refused() {
    // IPv6 addresses live beside the slab, so IPv4 connections cost what they did
    assert_eq!(Conntrack::entry_bytes().0, 40);
    let k = v6_key(1, 1, 0);
    let r4 = Key {
        src: Ipv4Addr::new(10, 0, 0, 5).into(),
        sport: 8080,
        dst: k.src,
        dport: k.sport,
        ..k
    };
    assert!(
        !Conntrack::trackable(&k, &r4),
        "an IPv4 backend for an IPv6 client"
    );
    let mut ct = Conntrack::new(4);
    let saved = Entry {
        orig: k,
        reply: r4,
        service: 1,
        backend: 0,
        state: State::Established,
        last_ms: 0,
        next_seq: [0, 0],
        via: None,
    };
    assert_eq!(ct.restore(&saved, 0), None, "a hand-edited snapshot");
    assert!(ct.is_empty());
}

/// A lock taken while another thread holds it is counted in the table; one
/// taken freely is not.
#[test]
fn waiting_for_the_lock_is_counted() {
    use std::sync::{mpsc, Arc, Mutex};
    let t = Arc::new(Mutex::new(Conntrack::new(16)));
    drop(super::lock_counted(&t));
    assert_eq!(t.lock().unwrap().lock_waits, 0, "a free lock");
    let held = t.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    let other = {
        let t = t.clone();
        std::thread::spawn(move || {
            tx.send(()).unwrap();
            super::lock_counted(&t).lock_waits
        })
    };
    rx.recv().unwrap();
    // the other thread is at the lock, or about to be: let it find it held
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(held);
    assert_eq!(other.join().unwrap(), 1);
}

/// Keys a client computes offline to share one bucket of a table hashed with
/// FxHash (the index's hash before it was keyed): from 198.51.100.0/24 to a
/// service, it keeps the source ports whose keys agree in the low 12 bits of
/// the hash, the bits hashbrown takes a bucket from (in a table of 4,096).
fn fx_colliding_keys(n: usize) -> Vec<Key> {
    let mut out = Vec::with_capacity(n);
    for host in 1..=254u8 {
        for sport in 1024..=u16::MAX {
            let k = Key {
                zone: 4095,
                proto: 6,
                src: Ipv4Addr::new(198, 51, 100, host).into(),
                dst: Ipv4Addr::new(10, 255, 0, 10).into(),
                sport,
                dport: 443,
            };
            if rustc_hash::FxBuildHasher.hash_one(k) & 0xfff == 0 {
                out.push(k);
                if out.len() == n {
                    return out;
                }
            }
        }
    }
    out
}

/// The most keys that share one bucket of 4,096 under `hash`.
fn max_bucket(keys: &[Key], hash: impl Fn(&Key) -> u64) -> usize {
    let mut buckets = vec![0usize; 4096];
    for k in keys {
        buckets[(hash(k) & 0xfff) as usize] += 1;
    }
    buckets.into_iter().max().unwrap_or(0)
}

/// Hash flooding: keys crafted to collide under an unkeyed hash spread over
/// the index like any others, because its hash has a key drawn per process.
/// (Counted, not timed: the criterion group `hash_flood` times it.)
#[test]
fn keys_crafted_to_collide_spread_over_the_index() {
    let keys = fx_colliding_keys(512);
    assert_eq!(keys.len(), 512);
    // the attack is real: under FxHash all 512 share one bucket
    assert_eq!(
        max_bucket(&keys, |k| rustc_hash::FxBuildHasher.hash_one(k)),
        512
    );
    let mut ct = Conntrack::new(1024);
    for k in &keys {
        ct.insert(*k, reply_of(k), 1, 0, TCP_SYN, 0);
    }
    // 512 keys over 4,096 buckets: a handful share one at most (more than 8
    // has odds below 1e-10 for keys the hash cannot tell from random ones)
    let worst = max_bucket(&keys, |k| ct.index.hash(k));
    assert!(
        worst <= 8,
        "{worst} crafted keys share a bucket of the index"
    );
    for k in &keys {
        assert!(ct.lookup(k).is_some(), "{k:?} tracked");
    }
}

#[test]
fn a_syn_left_unanswered_counts_once_against_its_backend_when_the_sweep_sees_it() {
    use crate::lb::passive::{MAX_FAILS, SYN_RETRY_MS};
    let backend = (7, 1, IpAddr::from(Ipv4Addr::new(10, 0, 0, 5)));
    let syn = |ct: &mut Conntrack, sport: u16, now: u64| {
        let k = key(sport);
        ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, now)
    };
    let mut ct = Conntrack::new(64);
    // a client that gives up before retransmitting (a connect timeout under 1 s)
    syn(&mut ct, 1000, 0);
    ct.expire(SYN_RETRY_MS - 1, |_| {});
    assert!(!ct.passive.is_out(backend, SYN_RETRY_MS), "not yet overdue");
    for (i, sport) in (1001..1000 + u16::from(MAX_FAILS)).enumerate() {
        // the sweep sees the first one again and again: it counts once
        ct.expire(SYN_RETRY_MS + 10 * i as u64, |_| {});
        syn(&mut ct, sport, SYN_RETRY_MS + 10 * i as u64);
    }
    assert!(
        !ct.passive.is_out(backend, 5_000),
        "only the first was overdue at the sweeps so far"
    );
    ct.expire(5_000, |_| {});
    assert!(
        ct.passive.is_out(backend, 5_000),
        "the last one counted too"
    );
    assert_eq!(ct.passive.ejections, 1);

    // a SYN the sweep counted and the client then retransmits counts once,
    // and the retransmitted one counts on its own
    let mut ct = Conntrack::new(64);
    let id = syn(&mut ct, 2000, 0);
    ct.expire(900, |_| {});
    ct.update(id, Dir::Orig, TCP_SYN, 1_000);
    ct.expire(1_100, |_| {});
    assert!(!ct.passive.is_out(backend, 1_100), "one failure, not two");
    ct.expire(1_900, |_| {});
    syn(&mut ct, 2001, 2_000);
    ct.expire(2_900, |_| {});
    assert!(
        ct.passive.is_out(backend, 2_900),
        "three SYNs went unanswered"
    );

    // answered ones (or a RST, counted when it comes) and connections nothing
    // balanced (service 0) never count as unanswered
    let mut ct = Conntrack::new(64);
    for sport in 3000..3010 {
        open(&mut ct, sport, 0);
        let k = key(sport + 100);
        ct.insert(k, reply_of(&k), 0, 0, TCP_SYN, 0);
    }
    ct.expire(20_000, |_| {});
    assert!(!ct.passive.is_out(backend, 20_000));
    assert_eq!(ct.passive.ejections, 0);
}

/// A UDP flow from `client` (last octet) and port `sport` to the VIP, answered.
fn udp_flow(ct: &mut Conntrack, client: u8, sport: u16, now: u64) -> u32 {
    let k = Key {
        proto: 17,
        src: Ipv4Addr::new(10, 0, 0, client).into(),
        ..key(sport)
    };
    let id = ct.insert(k, reply_of(&k), 1, 0, 0, now);
    ct.update(id, Dir::Reply, 0, now);
    id
}

/// A TCP connection from `client`, established.
fn tcp_conn(ct: &mut Conntrack, client: u8, sport: u16, now: u64) -> Key {
    let k = Key {
        src: Ipv4Addr::new(10, 0, 0, client).into(),
        ..key(sport)
    };
    let id = ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, now);
    ct.update(id, Dir::Reply, TCP_SYN | TCP_ACK, now);
    ct.update(id, Dir::Orig, TCP_ACK, now);
    assert_eq!(ct.get(id).unwrap().state, State::Established);
    k
}

/// One client opening answered UDP flows as fast as it can (each one as live
/// as a TCP connection) turns over its own entries: the other client's
/// connections, older than all of its, stay; and the other's new connections
/// take the abuser's entries, not each other's.
#[test]
fn a_client_over_its_share_evicts_its_own_entries_first() {
    let mut ct = Conntrack::new(64);
    let victim: Vec<Key> = (0..5).map(|p| tcp_conn(&mut ct, 3, 1000 + p, 0)).collect();
    for p in 0..5_000u16 {
        udp_flow(&mut ct, 2, 20_000 + p, 10 + u64::from(p));
        assert!(ct.len() <= 64);
    }
    assert!(ct.evicted >= 5_000 - 64);
    for k in &victim {
        assert!(
            ct.lookup(k).is_some(),
            "the victim's {} was evicted",
            k.sport
        );
    }
    assert_eq!(ct.held_by(&victim[0]), 5);
    // the victim's new connections, into the full table: the abuser pays
    let more: Vec<Key> = (0..20)
        .map(|p| tcp_conn(&mut ct, 3, 2000 + p, 6_000))
        .collect();
    assert_eq!(ct.len(), 64);
    for k in victim.iter().chain(&more) {
        assert!(
            ct.lookup(k).is_some(),
            "the victim's {} was evicted",
            k.sport
        );
    }
    let abuser = Key {
        src: Ipv4Addr::new(10, 0, 0, 2).into(),
        ..key(0)
    };
    assert_eq!(ct.held_by(&abuser), 64 - 25);
}

/// The share holds with many clients too: three quiet clients' connections
/// survive a flood from a fourth, and then a SYN flood from many addresses
/// (one entry each, every one within its share), which takes half-open
/// entries and the over-share client's first. (A table of 640: a share is
/// at least 10 entries, what each quiet client stays under.)
#[test]
fn every_client_within_its_share_keeps_its_connections() {
    let mut ct = Conntrack::new(640);
    let quiet: Vec<Key> = (3..6)
        .flat_map(|c| (0..8).map(move |p| (c, 3000 + p)))
        .map(|(c, p)| tcp_conn(&mut ct, c, p, 0))
        .collect();
    for p in 0..5_000u16 {
        udp_flow(&mut ct, 2, 20_000 + p, 1 + u64::from(p));
    }
    for k in &quiet {
        assert!(ct.lookup(k).is_some(), "{k:?} was evicted");
    }
    for p in 0..5_000u16 {
        let k = Key {
            src: Ipv4Addr::new(10, 1, (p >> 8) as u8, p as u8).into(),
            ..key(p)
        };
        ct.insert(k, reply_of(&k), 1, 0, TCP_SYN, 10_000 + u64::from(p));
        assert!(ct.len() <= 640);
    }
    for k in &quiet {
        assert!(ct.lookup(k).is_some(), "{k:?} was evicted by the SYN flood");
    }
}

/// A TCP segment without SYN for no known connection (a stray or forged ACK)
/// makes a half-open entry, never an established one: the client's segments
/// do not confirm it, only the backend's acknowledgement does; a backend that
/// knows nothing of it answers with a RST, which closes it.
#[test]
fn a_segment_without_syn_is_half_open_until_the_backend_answers() {
    let mut ct = Conntrack::new(16);
    let k = key(1000);
    let id = ct.insert(k, reply_of(&k), 1, 0, TCP_ACK, 0);
    assert_eq!(ct.get(id).unwrap().state, State::SynRecv);
    assert_eq!(ct.counts(7, 1, 0), (0, 1), "not counted as active");
    ct.update(id, Dir::Orig, TCP_ACK, 1);
    ct.update(id, Dir::Orig, TCP_ACK | TCP_FIN, 2);
    assert_eq!(
        ct.get(id).unwrap().state,
        State::SynRecv,
        "the client alone"
    );
    assert_eq!(ct.cacheable(id, Dir::Orig), None);
    assert_eq!(ct.expire(31_000, |_| {}), 1, "a half-open timeout");
    // the backend had the connection (an agent restarted without its
    // snapshot): its ACK confirms it
    let id = ct.insert(k, reply_of(&k), 1, 0, TCP_ACK, 40_000);
    ct.update(id, Dir::Reply, TCP_ACK, 40_001);
    assert_eq!(ct.get(id).unwrap().state, State::Established);
    assert_eq!(ct.counts(7, 1, 0), (1, 0));
    // a backend that knows nothing of it resets it
    let k2 = key(1001);
    let id2 = ct.insert(k2, reply_of(&k2), 1, 0, TCP_ACK, 40_000);
    ct.update(id2, Dir::Reply, TCP_RST | TCP_ACK, 40_001);
    assert_eq!(ct.get(id2).unwrap().state, State::Close);
    // a restored entry is as trusted as when it was saved
    let saved = Entry {
        state: State::SynRecv,
        ..ct.get(id).unwrap()
    };
    let mut back = Conntrack::new(16);
    let r = back.restore(&saved, 0).unwrap();
    back.update(r, Dir::Orig, TCP_ACK, 1);
    assert_eq!(back.get(r).unwrap().state, State::Established);
}

/// A flood of forged ACKs into a full table displaces no established
/// connection (the entries it makes are half-open).
#[test]
fn a_flood_of_stray_acks_evicts_no_established_connection() {
    let mut ct = Conntrack::new(32);
    let real: Vec<Key> = (0..8).map(|p| tcp_conn(&mut ct, 3, 100 + p, 0)).collect();
    for p in 0..5_000u16 {
        let k = Key {
            src: Ipv4Addr::new(10, 2, (p >> 8) as u8, p as u8).into(),
            ..key(p)
        };
        let id = ct.insert(k, reply_of(&k), 1, 0, TCP_ACK, 10 + u64::from(p));
        ct.update(id, Dir::Orig, TCP_ACK, 10 + u64::from(p));
        assert!(ct.len() <= 32);
    }
    for k in &real {
        assert!(ct.lookup(k).is_some(), "{} evicted by stray ACKs", k.sport);
    }
    assert!(ct
        .iter()
        .all(|e| e.state != State::Established || e.orig.src == real[0].src));
}

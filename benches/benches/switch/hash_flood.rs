//! Keys crafted to collide under an unkeyed hash, against the keyed one.

use super::*;

/// A client's connection to a service at ingress (zone 4095, to
/// 10.255.0.10:443) from `host` of 198.18.0.0/15 and `sport`.
pub(super) fn client_key(host: u32, sport: u16) -> vxmesh_dataplane::conntrack::Key {
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
pub(super) fn fx_colliding_keys(n: usize) -> Vec<vxmesh_dataplane::conntrack::Key> {
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
pub(super) fn hash_flood(c: &mut Criterion) {
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

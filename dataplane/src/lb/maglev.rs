//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of a
//! prime size M, filled by each backend's permutation in turn, so every backend
//! owns ~M/N slots and removing one moves little beyond its own slots.

/// The default table size: prime, and > 100 x the backends a service is expected
/// to have, which keeps the imbalance under 1%.
pub const DEFAULT_SIZE: usize = 65_537;

pub struct Maglev {
    table: Vec<u32>,
}

fn hash(s: &[u8], seed: u64) -> u64 {
    // FNV-1a, seeded: two independent hashes of a backend's name.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in s {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 29)
}

impl Maglev {
    /// Builds the table for `backends` (stable names, e.g. "10.0.0.5:80"); `size`
    /// must be prime. An empty backend list gives an empty table.
    pub fn new(backends: &[&[u8]], size: usize) -> Self {
        let n = backends.len();
        if n == 0 || size == 0 {
            return Self { table: Vec::new() };
        }
        let m = size as u64;
        let perm: Vec<(u64, u64)> = backends
            .iter()
            .map(|b| (hash(b, 1) % m, hash(b, 2) % (m - 1) + 1))
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = perm[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Self { table }
    }

    /// The backend index for a flow hash.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(flow_hash % self.table.len() as u64) as usize] as usize)
    }

    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250).into_bytes())
            .collect()
    }

    fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
        v.iter().map(|b| b.as_slice()).collect()
    }

    #[test]
    fn shares_are_within_one_percent_of_even() {
        for n in [3usize, 10, 100] {
            let b = names(n);
            let m = Maglev::new(&refs(&b), DEFAULT_SIZE);
            let mut count = vec![0usize; n];
            for &i in m.table() {
                count[i as usize] += 1;
            }
            let even = DEFAULT_SIZE as f64 / n as f64;
            for c in count {
                let off = (c as f64 - even).abs() / even;
                assert!(
                    off < 0.01,
                    "{n} backends: a share is {:.2}% off even",
                    off * 100.0
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_little_beyond_its_own_slots() {
        let b = names(10);
        let before = Maglev::new(&refs(&b), DEFAULT_SIZE);
        let mut fewer = b.clone();
        let gone = fewer.remove(4);
        let after = Maglev::new(&refs(&fewer), DEFAULT_SIZE);
        let name_of = |t: &Maglev, bs: &[Vec<u8>], s: usize| bs[t.table()[s] as usize].clone();
        let mut moved_others = 0;
        for s in 0..DEFAULT_SIZE {
            let was = name_of(&before, &b, s);
            if was != gone && was != name_of(&after, &fewer, s) {
                moved_others += 1;
            }
        }
        // the paper reports a few percent; well under a tenth of the table here
        let share = moved_others as f64 / DEFAULT_SIZE as f64;
        assert!(
            share < 0.05,
            "{:.1}% of slots moved between surviving backends",
            share * 100.0
        );
    }

    proptest::proptest! {
        #[test]
        fn every_slot_is_a_backend(n in 1usize..20, h in proptest::num::u64::ANY) {
            let b = names(n);
            let m = Maglev::new(&refs(&b), 251);
            proptest::prop_assert!(m.table().iter().all(|&i| (i as usize) < n));
            proptest::prop_assert!(m.lookup(h).unwrap() < n);
        }
    }
}

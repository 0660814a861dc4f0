//! Schedulers as IPVS names them: which backend a new flow goes to.

use super::maglev::Maglev;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Round robin.
    Rr,
    /// Weighted round robin (smooth: weights interleave instead of bursting).
    Wrr,
    /// Least connections (active connections per unit of weight).
    Lc,
    /// Source hashing: one client address, one backend.
    Sh,
    /// Maglev consistent hashing of the flow.
    Maglev,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "rr" => Kind::Rr,
            "wrr" => Kind::Wrr,
            "lc" => Kind::Lc,
            "sh" => Kind::Sh,
            "maglev" => Kind::Maglev,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rr => "rr",
            Kind::Wrr => "wrr",
            Kind::Lc => "lc",
            Kind::Sh => "sh",
            Kind::Maglev => "maglev",
        }
    }
}

/// What a scheduler sees of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub weight: u32,
    pub active: u32,
    pub healthy: bool,
}

/// A scheduler's state for one virtual service. The backend list it is asked
/// about must be the one the maglev table was built for.
pub struct Scheduler {
    kind: Kind,
    next: usize,
    current: Vec<i64>,
    maglev: Option<Maglev>,
}

impl Scheduler {
    /// `names`: stable backend names, for the maglev table (unhealthy backends are
    /// left out of it by the caller rebuilding on health changes).
    pub fn new(kind: Kind, names: &[&[u8]], table_size: usize) -> Self {
        let maglev = (kind == Kind::Maglev).then(|| Maglev::new(names, table_size));
        Self {
            kind,
            next: 0,
            current: vec![0; names.len()],
            maglev,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Picks a backend for a new flow, or `None` when no backend is healthy.
    /// `flow_hash` hashes the 5-tuple, `src_hash` the client address.
    pub fn pick(&mut self, b: &[Backend], flow_hash: u64, src_hash: u64) -> Option<usize> {
        let n = b.len();
        if n == 0 || !b.iter().any(|x| x.healthy && x.weight > 0) {
            return None;
        }
        let ok = |i: usize| b[i].healthy && b[i].weight > 0;
        match self.kind {
            Kind::Rr => {
                for k in 0..n {
                    let i = (self.next + k) % n;
                    if ok(i) {
                        self.next = i + 1;
                        return Some(i);
                    }
                }
                None
            }
            Kind::Wrr => {
                self.current.resize(n, 0);
                let total: i64 = (0..n)
                    .filter(|&i| ok(i))
                    .map(|i| i64::from(b[i].weight))
                    .sum();
                let mut best: Option<usize> = None;
                for i in (0..n).filter(|&i| ok(i)) {
                    self.current[i] += i64::from(b[i].weight);
                    if best.is_none_or(|j| self.current[i] > self.current[j]) {
                        best = Some(i);
                    }
                }
                let j = best?;
                self.current[j] -= total;
                Some(j)
            }
            Kind::Lc => (0..n)
                .filter(|&i| ok(i))
                // active/weight compared without division: a*wb < b*wa
                .min_by(|&x, &y| {
                    (u64::from(b[x].active) * u64::from(b[y].weight))
                        .cmp(&(u64::from(b[y].active) * u64::from(b[x].weight)))
                }),
            Kind::Sh => {
                let healthy: usize = (0..n).filter(|&i| ok(i)).count();
                let k = (src_hash % healthy as u64) as usize;
                (0..n).filter(|&i| ok(i)).nth(k)
            }
            Kind::Maglev => {
                let i = self.maglev.as_ref()?.lookup(flow_hash)?;
                // a table built for an older backend list may name one past the end
                if i < n && ok(i) {
                    Some(i)
                } else {
                    // not yet rebuilt without it: fall back to the next healthy one
                    (1..n).map(|k| (i + k) % n).find(|&j| ok(j))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .map(|&w| Backend {
                weight: w,
                active: 0,
                healthy: true,
            })
            .collect()
    }

    fn counts(s: &mut Scheduler, b: &[Backend], picks: usize) -> Vec<usize> {
        let mut c = vec![0; b.len()];
        for k in 0..picks as u64 {
            let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            c[s.pick(b, h, h >> 7).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn rr_gives_each_its_turn_and_skips_the_unhealthy() {
        let mut b = up(&[1, 1, 1]);
        let mut s = Scheduler::new(Kind::Rr, &[], 0);
        assert_eq!(counts(&mut s, &b, 300), vec![100, 100, 100]);
        b[1].healthy = false;
        assert_eq!(counts(&mut s, &b, 300), vec![150, 0, 150]);
    }

    #[test]
    fn wrr_follows_weights_interleaved() {
        let b = up(&[5, 1, 1]);
        let mut s = Scheduler::new(Kind::Wrr, &[], 0);
        let seq: Vec<usize> = (0..7).map(|_| s.pick(&b, 0, 0).unwrap()).collect();
        // the sequence nginx documents for weights 5, 1, 1: the light ones are
        // spread through the cycle, not left to its end
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&mut s, &b, 700), vec![500, 100, 100]);
    }

    #[test]
    fn lc_picks_the_least_loaded_per_weight() {
        let mut b = up(&[1, 1, 2]);
        b[0].active = 5;
        b[1].active = 2;
        b[2].active = 3; // 1.5 per unit of weight
        let mut s = Scheduler::new(Kind::Lc, &[], 0);
        assert_eq!(s.pick(&b, 0, 0), Some(2));
        b[2].active = 6;
        assert_eq!(s.pick(&b, 0, 0), Some(1));
    }

    #[test]
    fn sh_pins_a_client_and_maglev_a_flow() {
        let b = up(&[1, 1, 1]);
        let mut s = Scheduler::new(Kind::Sh, &[], 0);
        let first = s.pick(&b, 1, 42);
        assert!((0..10).all(|f| s.pick(&b, f, 42) == first));
        let names: Vec<Vec<u8>> = (0..3).map(|i| vec![i]).collect();
        let refs: Vec<&[u8]> = names.iter().map(|v| v.as_slice()).collect();
        let mut m = Scheduler::new(Kind::Maglev, &refs, 251);
        let f = m.pick(&b, 12345, 0);
        assert!((0..10).all(|_| m.pick(&b, 12345, 0) == f));
        let c = counts(&mut m, &b, 30_000);
        assert!(c.iter().all(|&x| x > 9_000), "{c:?}");
    }

    #[test]
    fn a_maglev_table_older_than_the_backend_list_never_panics() {
        // built for 3 backends, asked with 2 (the state moved on before the
        // worker rebuilt its schedulers)
        let names: Vec<Vec<u8>> = (0..3).map(|i| vec![i]).collect();
        let refs: Vec<&[u8]> = names.iter().map(|v| v.as_slice()).collect();
        let mut m = Scheduler::new(Kind::Maglev, &refs, 251);
        let b = up(&[1, 1]);
        for h in 0..2_000u64 {
            assert!(m.pick(&b, h, 0).is_some_and(|i| i < 2));
        }
    }

    #[test]
    fn nothing_healthy_picks_nothing() {
        let mut b = up(&[1, 1]);
        b[0].healthy = false;
        b[1].healthy = false;
        for k in [Kind::Rr, Kind::Wrr, Kind::Lc, Kind::Sh, Kind::Maglev] {
            let names: Vec<&[u8]> = vec![b"a", b"b"];
            assert_eq!(Scheduler::new(k, &names, 251).pick(&b, 1, 1), None, "{k:?}");
        }
    }
}

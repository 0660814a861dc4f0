//! Per-source rate limits for new connections at ingress (the routing mesh's
//! published ports): a token bucket per client address, so one address (or a
//! few) opening connections as fast as it can cannot fill the connection table
//! or starve the tasks for everyone else.
//!
//! The buckets are a fixed array, allocated once, indexed by a keyed hash of
//! the source address: memory is bounded whatever the sources (a flood from
//! random addresses only spreads over the same array), nothing is allocated or
//! locked per connection, and the workers share it through relaxed atomics.
//! Each bucket is one word, the GCRA form of a token bucket (the time at which
//! the bucket would be full again, its "theoretical arrival time"), so a check
//! is one load and one compare-and-swap. Two addresses that hash to one bucket
//! share its rate; with [`BUCKETS`] buckets that happens to a given pair once in
//! 65,536, and a random-source flood adds to each bucket only its share of the
//! flood (a 100,000 connections/s flood: about 1.5/s a bucket).
//!
//! Only a connection about to be created asks (the switch's admission of a new
//! ingress flow, after the node's policies): established connections never
//! reach it.

use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets in the table (a power of two): 512 KiB of atomics.
pub const BUCKETS: usize = 1 << 16;

/// A rate and burst, as `--ingress-rate-limit N/s[,burst=B]` writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// New connections per second a source may open, sustained.
    pub per_sec: u32,
    /// How many it may open at once after a quiet while (at least 1).
    pub burst: u32,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `N/s`, `N` (per second) and `N/s,burst=B`; the burst defaults to N (a
    /// second's worth).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("{s:?}: {why} (write N/s or N/s,burst=B, e.g. 100/s,burst=200)");
        let mut parts = s.split(',');
        let rate = parts.next().unwrap_or("").trim();
        let rate = rate.strip_suffix("/s").unwrap_or(rate);
        let per_sec: u32 = rate
            .parse()
            .map_err(|_| bad("the rate is not a whole number of connections per second"))?;
        if per_sec == 0 {
            return Err(bad("the rate must be at least 1/s"));
        }
        let mut burst = per_sec;
        for p in parts {
            match p.trim().split_once('=') {
                Some(("burst", b)) => {
                    burst = b
                        .parse()
                        .ok()
                        .filter(|b| *b >= 1)
                        .ok_or_else(|| bad("burst is not a whole number of at least 1"))?;
                }
                _ => return Err(bad(&format!("unknown part {p:?}"))),
            }
        }
        Ok(RateLimit { per_sec, burst })
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s,burst={}", self.per_sec, self.burst)
    }
}

/// One token bucket's arithmetic in GCRA form: a bucket is one word, the time
/// (ns of the dataplane's clock) at which it would be full again. The one
/// place the step is written, for every bucket of the dataplane: per source
/// address ([`SourceLimiter`]), per port ([`crate::fair::PortRate`]), the flow
/// log's drop records ([`crate::flowlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one event takes out of a bucket, and a bucket's depth, in ns.
    interval_ns: u64,
    depth_ns: u64,
}

impl Gcra {
    pub fn new(limit: RateLimit) -> Self {
        let interval_ns = 1_000_000_000 / u64::from(limit.per_sec.max(1));
        Self {
            interval_ns,
            depth_ns: interval_ns.saturating_mul(u64::from(limit.burst.max(1))),
        }
    }

    /// The bucket's next value if one more event at `now_ms` fits in a bucket
    /// now at `tat`; `None`: over the rate.
    #[inline]
    pub fn next(&self, tat: u64, now_ms: u64) -> Option<u64> {
        let now = now_ms.saturating_mul(1_000_000);
        let next = tat.max(now).saturating_add(self.interval_ns);
        (next - now <= self.depth_ns).then_some(next)
    }

    /// [`Self::next`] on a bucket of one owner: taken if it fits.
    #[inline]
    pub fn admit(&self, tat: &mut u64, now_ms: u64) -> bool {
        match self.next(*tat, now_ms) {
            Some(n) => {
                *tat = n;
                true
            }
            None => false,
        }
    }
}

/// One bucket with its own state, for what a worker limits for everyone
/// alike (drop records, answers to doctor probes).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    gcra: Gcra,
    tat: u64,
}

impl Bucket {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            gcra: Gcra::new(limit),
            tat: 0,
        }
    }

    /// Whether one more may pass at `now_ms` (counted if so).
    #[inline]
    pub fn admit(&mut self, now_ms: u64) -> bool {
        self.gcra.admit(&mut self.tat, now_ms)
    }
}

/// The table of buckets, shared by every worker (put in the ingress view).
pub struct SourceLimiter {
    limit: RateLimit,
    /// Per bucket: when it would be full again, in ns of the dataplane's clock.
    tat: Box<[AtomicU64]>,
    gcra: Gcra,
    /// The hash's key (odd): another on every agent, so nobody can pick
    /// addresses that share a victim's bucket.
    key: u64,
}

impl SourceLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self::with_key(limit, random_odd())
    }

    /// With a given hash key (tests).
    pub fn with_key(limit: RateLimit, key: u64) -> Self {
        Self {
            limit,
            tat: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            gcra: Gcra::new(limit),
            key: key | 1,
        }
    }

    #[inline]
    fn bucket(&self, src: IpAddr) -> &AtomicU64 {
        // an IPv6 client is limited by its /64: one host holds a whole one, and
        // would otherwise get a bucket per address it cares to use
        let bits = match src {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => (u128::from(a) >> 64) as u64 ^ (1 << 63),
        };
        let h = (bits ^ self.key.rotate_left(32)).wrapping_mul(self.key);
        // the top bits of a multiplicative hash are the well-mixed ones
        &self.tat[(h >> (64 - BUCKETS.trailing_zeros())) as usize]
    }

    /// Whether `src` may open one more connection at `now_ms` (and if so, it
    /// is counted against its bucket).
    #[inline]
    pub fn admit(&self, src: IpAddr, now_ms: u64) -> bool {
        let b = self.bucket(src);
        let mut tat = b.load(Ordering::Relaxed);
        loop {
            let Some(next) = self.gcra.next(tat, now_ms) else {
                return false;
            };
            match b.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }

    /// Bytes the table takes (all allocated up front).
    pub fn bytes(&self) -> usize {
        self.tat.len() * std::mem::size_of::<AtomicU64>()
    }
}

/// Compared by what it limits, not by the buckets' contents.
impl PartialEq for SourceLimiter {
    fn eq(&self, o: &Self) -> bool {
        self.limit == o.limit
    }
}

impl Eq for SourceLimiter {}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceLimiter({})", self.limit)
    }
}

/// An odd random 64-bit number (std's per-instance random hash keys as the source).
fn random_odd() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lim(per_sec: u32, burst: u32) -> SourceLimiter {
        SourceLimiter::with_key(RateLimit { per_sec, burst }, 0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn specs_parse() {
        let p = |s: &str| s.parse::<RateLimit>();
        assert_eq!(
            p("100/s"),
            Ok(RateLimit {
                per_sec: 100,
                burst: 100
            })
        );
        assert_eq!(
            p("50"),
            Ok(RateLimit {
                per_sec: 50,
                burst: 50
            })
        );
        assert_eq!(
            p("10/s,burst=40"),
            Ok(RateLimit {
                per_sec: 10,
                burst: 40
            })
        );
        for bad in [
            "",
            "0/s",
            "x/s",
            "10/m",
            "10/s,burst=0",
            "10/s,bust=3",
            "-1/s",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(p("10/s,burst=x").unwrap_err().contains("burst"));
        assert_eq!(
            p("7/s,burst=9").unwrap().to_string().parse::<RateLimit>(),
            p("7/s,burst=9")
        );
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = lim(10, 5);
        let a = Ipv4Addr::new(192, 0, 2, 1).into();
        let t0 = 1_000;
        assert_eq!((0..20).filter(|_| l.admit(a, t0)).count(), 5, "the burst");
        assert!(!l.admit(a, t0 + 50), "a tenth of a second not yet gone");
        assert!(l.admit(a, t0 + 100), "one more after 100 ms (10/s)");
        assert!(!l.admit(a, t0 + 100));
        // a second later: 10 more earned, but never more than the burst
        assert_eq!((0..20).filter(|_| l.admit(a, t0 + 1_100)).count(), 5);
        // another source is not limited by this one
        assert_eq!(
            (0..5)
                .filter(|_| l.admit(Ipv4Addr::new(192, 0, 2, 2).into(), t0))
                .count(),
            5
        );
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        let l = lim(1, 2);
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.admit(a("2001:db8:1:2::1"), 0));
        assert!(l.admit(a("2001:db8:1:2::ffff"), 0));
        assert!(
            !l.admit(a("2001:db8:1:2:aaaa::3"), 0),
            "same /64, burst spent"
        );
        assert!(l.admit(a("2001:db8:1:3::1"), 0), "another /64 has its own");
    }

    #[test]
    fn at_the_start_of_the_clock_a_full_burst() {
        let l = lim(1, 3);
        let a = Ipv4Addr::new(198, 51, 100, 7).into();
        assert_eq!((0..10).filter(|_| l.admit(a, 0)).count(), 3);
    }

    /// Sources an attacker found to share a victim's bucket (by brute force,
    /// knowing the key) share it under that key only: with the key each agent
    /// draws at start, nobody can pick them beforehand. Counted, not timed.
    #[test]
    fn sources_sharing_a_bucket_under_one_key_do_not_under_another() {
        let known = lim(1, 1);
        let other = SourceLimiter::with_key(
            RateLimit {
                per_sec: 1,
                burst: 1,
            },
            0x517c_c1b7_2722_0a95,
        );
        let victim: IpAddr = Ipv4Addr::new(198, 51, 100, 7).into();
        let attackers: Vec<IpAddr> = (0u32..)
            .map(|i| IpAddr::from(Ipv4Addr::from(0xc612_0000 + i))) // 198.18.0.0/15
            .filter(|a| std::ptr::eq(known.bucket(*a), known.bucket(victim)))
            .take(16)
            .collect();
        assert_eq!(attackers.len(), 16);
        // under the key they were found with, they spend the victim's burst
        assert!(known.admit(attackers[0], 0));
        assert!(!known.admit(victim, 0), "the victim shares the bucket");
        let shared = attackers
            .iter()
            .filter(|a| std::ptr::eq(other.bucket(**a), other.bucket(victim)))
            .count();
        assert_eq!(
            shared, 0,
            "{shared} of them share the victim's bucket under another key"
        );
        for a in &attackers {
            other.admit(*a, 0);
        }
        assert!(other.admit(victim, 0), "the victim keeps its own bucket");
    }

    #[test]
    fn memory_is_fixed_whatever_the_sources() {
        let l = lim(1, 1);
        let before = l.bytes();
        let mut x: u32 = 1;
        for i in 0..300_000u64 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            l.admit(Ipv4Addr::from(x).into(), i / 100);
        }
        assert_eq!(l.bytes(), before);
        assert_eq!(before, BUCKETS * 8);
    }

    proptest! {
        /// However connections arrive, a source never gets more than its
        /// burst plus its rate over the time that passed.
        #[test]
        fn never_more_than_burst_plus_rate(
            per_sec in 1u32..5_000,
            burst in 1u32..500,
            steps in proptest::collection::vec((0u64..50, 1usize..40), 1..100),
        ) {
            let l = lim(per_sec, burst);
            let a = Ipv4Addr::new(203, 0, 113, 9).into();
            let (mut now, mut admitted) = (5_000u64, 0u64);
            let start = now;
            for (dt, tries) in steps {
                now += dt;
                admitted += (0..tries).filter(|_| l.admit(a, now)).count() as u64;
                let allowed = u64::from(burst)
                    + (now - start) * u64::from(per_sec) / 1_000
                    + 1;
                prop_assert!(admitted <= allowed, "{admitted} > {allowed}");
            }
        }
    }
}

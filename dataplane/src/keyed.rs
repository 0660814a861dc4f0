//! The hash for tables whose keys a remote party picks: connections (client
//! addresses and ports), the flow caches, MACs learned from the underlay.
//!
//! An unkeyed hash (FxHash, which these tables used) lets anyone who knows the
//! code compute, offline, keys that all land in one bucket of the table; a
//! few thousand such connections turn every lookup into a walk past all of
//! them (hash flooding). Here the hash is foldhash keyed with 128 bits drawn
//! once per process from the OS's random source (through std's `RandomState`,
//! whose keys come from `getrandom`): the same keys spread differently on every
//! agent and after every restart, so no set of keys can be computed to collide.
//!
//! foldhash rather than std's SipHash: it is about as fast as FxHash on the
//! 16-24 bytes of a connection key (one 64x64-bit multiply per 16 bytes),
//! where SipHash costs several times that on every packet. Its claim is the one
//! needed here, resistance to collisions chosen without the key; it does not
//! claim to hide the key from someone who measures the table's timing for
//! long, which would take far more than a flood of chosen keys.
//!
//! The key is drawn when the first table is made, never per packet, so the
//! per-packet core makes no syscall for it.

#![forbid(unsafe_code)]

use foldhash::fast::{FoldHasher, SeedableRandomState};
use foldhash::SharedSeed;
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// The process's key: a per-hasher seed and foldhash's shared seed.
fn key() -> &'static (u64, SharedSeed) {
    static KEY: OnceLock<(u64, SharedSeed)> = OnceLock::new();
    KEY.get_or_init(|| {
        // each RandomState holds 128 random bits from the OS; two of them
        // give the two seeds 64 random bits each
        let a = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        let b = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        (a, SharedSeed::from_u64(b))
    })
}

/// A `BuildHasher` with the process's random key.
#[derive(Clone, Copy, Debug)]
pub struct Keyed(SeedableRandomState);

impl Default for Keyed {
    fn default() -> Self {
        let (seed, shared) = key();
        Keyed(SeedableRandomState::with_seed(*seed, shared))
    }
}

impl BuildHasher for Keyed {
    type Hasher = FoldHasher;

    #[inline(always)]
    fn build_hasher(&self) -> FoldHasher {
        self.0.build_hasher()
    }
}

/// A `HashMap` with the process's random key.
pub type KeyedHashMap<K, V> = std::collections::HashMap<K, V, Keyed>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_a_process_and_not_a_constant() {
        let (a, b) = (Keyed::default(), Keyed::default());
        assert_eq!(
            a.hash_one(42u64),
            b.hash_one(42u64),
            "one key for every table"
        );
        // not foldhash's fixed seed (what an attacker could compute with)
        let fixed = foldhash::fast::FixedState::default();
        assert_ne!(a.hash_one(42u64), fixed.hash_one(42u64));
        assert_ne!(key().0, 0);
    }
}

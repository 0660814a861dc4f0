//! Connection tracking for the load balancer: one entry per connection, found
//! from either direction, with TCP state-aware timeouts and a hard size limit.
//!
//! Entries live in a slab indexed by two keys (the client's view, and the
//! backend's reply after NAT). When the table is full, a new connection evicts
//! the oldest entry among a sample, preferring ones not live (a TCP connection
//! not established, a UDP flow never answered), so a SYN flood displaces
//! half-open entries before real connections.
//!
//! Each client (a zone's source address: a container, or an outside client at
//! ingress) has a share of the table ([`crate::fair`]): when the table is full,
//! a client holding its share or more evicts its own entries, never another's,
//! and the others' new connections evict the entries of whoever is over their
//! share first. So one container opening flows as fast as it can turns its own
//! entries over, while the connections of the others stay.
//!
//! A TCP segment without SYN for a connection the table does not hold is picked
//! up mid-stream (an agent restarted without its snapshot must not cut the
//! connections it carried), but not as an established connection: it waits, as
//! a half-open entry with a short timeout, until the backend answers it. A flood
//! of stray ACKs then takes no more than a SYN flood does.
//!
//! What every packet writes (last seen, next sequence numbers) lives beside the
//! slab in [`touch`] slots, so that workers can serve established connections
//! from their own [`cache`] without the table's lock.

#![forbid(unsafe_code)]

pub mod cache;
mod conn;
mod ended;
mod evict;
mod expire;
mod index;
mod key;
mod state;
pub mod touch;

use evict::random_keys;
pub use expire::{expire_in_slices, lock_counted, EXPIRE_SLICE};
pub use key::Key;
pub use state::{timeout_ms, Dir, Entry, State};
use state::{TCP_FIN, TCP_RST, TCP_SYN};

use conn::{Conn, Six};
pub use ended::{EndReason, Ended};
use index::{Index, Ref};
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::sync::Arc;
use touch::Touch;

pub struct Conntrack {
    index: Index,
    slab: Vec<Option<Conn>>,
    /// IPv6 connections' addresses, by slot (grown to the highest slot an IPv6
    /// connection took; a slot's entry is read only while its record says IPv6).
    six: Vec<Six>,
    touch: Arc<[Touch]>,
    /// Connections per (zone, service, backend): [active, inactive].
    load: FxHashMap<(u32, u32, u32), [u32; 2]>,
    free: Vec<u32>,
    max: usize,
    cursor: usize,
    /// Which client holds which entries ([`crate::fair`]), by a keyed hash of
    /// (zone, client address).
    owners: crate::fair::Owners<u64>,
    /// The owners' hash keys (odd), random on each start: nobody can choose
    /// addresses whose owners collide with a victim's.
    owner_key: [u64; 3],
    /// A share's floor ([`crate::fair::SHARE_FLOOR_DIV`]).
    share_floor: usize,
    pub evicted: u64,
    /// Connections ever inserted (new connections set up, for a rate).
    pub created: u64,
    /// Times a worker found the table locked by another and waited
    /// ([`lock_counted`]): how contended the one lock of new connections is.
    pub lock_waits: u64,
    /// How backends answer new connections (see [`crate::lb::passive`]).
    pub passive: crate::lb::passive::PassiveHealth,
    /// Connections' ends for the flow log (`None`: flow logs off), waiting
    /// for the worker that holds the lock to move them to its ring
    /// ([`Self::drain_log`]).
    log: Option<EndLog>,
    /// The latest time the table was told of, for ends no packet brought.
    now_ms: u64,
    /// The longest any connection stays idle, whatever its state's timeout
    /// (tests: `--test-conntrack-timeout-ms`); `u64::MAX`: the timeouts.
    timeout_cap_ms: u64,
}

/// Ends recorded under the table's lock, in a buffer allocated once.
struct EndLog {
    pending: Vec<Ended>,
    /// Ends the buffer had no room for.
    lost: u64,
}

/// Ends the table holds for the workers, at most: what one sweep's slice
/// (bounded by [`EXPIRE_SLICE`]) can end, drained after each.
const END_LOG: usize = EXPIRE_SLICE;

/// The reply direction's key as the table keeps it: the backend's end (`reply`'s
/// source) answering `orig`.
#[inline]
fn reply_key(orig: &Key, reply: &Key) -> Key {
    Key {
        src: reply.src,
        sport: reply.sport,
        ..orig.reversed()
    }
}

/// The key a ref of the index stands for.
#[inline]
fn key_of(slab: &[Option<Conn>], six: &[Six], r: Ref) -> Option<Key> {
    let c = slab.get(r.id() as usize)?.as_ref()?;
    let s = six_of(six, c, r.id());
    Some(match r.dir() {
        Dir::Orig => c.orig(s),
        Dir::Reply => c.reply(s),
    })
}

/// Slot `id`'s IPv6 addresses, when its connection is an IPv6 one.
#[inline]
fn six_of<'a>(six: &'a [Six], c: &Conn, id: u32) -> Option<&'a Six> {
    if c.is_v6() {
        six.get(id as usize)
    } else {
        None
    }
}

impl Conntrack {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            index: Index::default(),
            slab: Vec::new(),
            six: Vec::new(),
            touch: touch::slots(max),
            load: FxHashMap::default(),
            free: Vec::new(),
            max,
            cursor: 0,
            owners: Default::default(),
            owner_key: random_keys(),
            share_floor: crate::fair::share_floor(max),
            evicted: 0,
            created: 0,
            lock_waits: 0,
            passive: Default::default(),
            log: None,
            now_ms: 0,
            timeout_cap_ms: u64::MAX,
        }
    }

    /// Caps every state's idle timeout at `ms` (tests that watch connections
    /// expire without waiting for the real timeouts).
    pub fn set_timeout_cap(&mut self, ms: u64) {
        self.timeout_cap_ms = ms;
    }

    /// Starts (or stops) recording connections' ends for the flow log, and
    /// counting packets and bytes per connection.
    pub fn set_flow_log(&mut self, on: bool) {
        self.log = on.then(|| EndLog {
            pending: Vec::with_capacity(END_LOG),
            lost: 0,
        });
    }

    pub fn flow_log(&self) -> bool {
        self.log.is_some()
    }

    /// Ends the table could not keep for a worker to take (its buffer full).
    pub fn flow_log_lost(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.lost)
    }

    /// Counts a packet of `len` bytes of connection `id` from `dir`'s side.
    #[inline]
    pub fn count(&self, id: u32, dir: Dir, len: touch::Wire) {
        if let Some(t) = self.touch.get(id as usize) {
            t.count(dir as usize, len);
        }
    }

    /// Hands the ends recorded since the last call to `to`, oldest first.
    #[inline]
    pub fn drain_log(&mut self, mut to: impl FnMut(Ended)) {
        if let Some(l) = self.log.as_mut().filter(|l| !l.pending.is_empty()) {
            for e in l.pending.drain(..) {
                to(e);
            }
        }
    }

    /// Records the end of slot `id`'s connection `c` (a return path, service
    /// 0, is the ingress node's to record).
    #[cold]
    fn log_end(&mut self, id: u32, c: &Conn, why: EndReason) {
        if c.service == 0 {
            return;
        }
        let e = self.entry(id, c);
        let (packets, bytes) = self.touch[id as usize].counts();
        let at_ms = self.now_ms;
        if let Some(l) = self.log.as_mut() {
            if l.pending.len() < END_LOG {
                l.pending.push(Ended {
                    entry: e,
                    why,
                    packets,
                    bytes,
                    at_ms,
                });
            } else {
                l.lost += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    /// What one connection takes, by part, in bytes: its slab slot, its touch
    /// slot (allocated for every possible entry up front), and each of its two
    /// index refs (plus one control byte each, and the hash table's slack).
    pub fn entry_bytes() -> (usize, usize, usize) {
        (
            std::mem::size_of::<Option<Conn>>(),
            std::mem::size_of::<Touch>(),
            std::mem::size_of::<Ref>(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lookup(&self, k: &Key) -> Option<(u32, Dir)> {
        let (slab, six) = (&self.slab, &self.six);
        self.index
            .find(k, |r| key_of(slab, six, r))
            .map(|r| (r.id(), r.dir()))
    }

    /// The slots workers write without the lock (for their caches).
    pub fn touches(&self) -> Arc<[Touch]> {
        self.touch.clone()
    }

    fn entry(&self, id: u32, c: &Conn) -> Entry {
        let t = &self.touch[id as usize];
        let s = six_of(&self.six, c, id);
        Entry {
            orig: c.orig(s),
            reply: c.reply(s),
            service: c.service,
            backend: c.backend,
            state: c.state,
            last_ms: t.last_ms(),
            next_seq: [t.next_seq(0), t.next_seq(1)],
            via: c.via(),
        }
    }

    /// What a packet of connection `id` in direction `dir` is translated to:
    /// the backend's address and port for the client's packets, the address
    /// and port the client addressed for the backend's; and the way back
    /// through another node's ingress. What the switch needs of [`Self::get`]
    /// for every new or uncached packet, without copying both keys.
    #[inline]
    pub fn translation(&self, id: u32, dir: Dir) -> Option<(IpAddr, u16, Option<crate::Mac>)> {
        let c = self.slab.get(id as usize)?.as_ref()?;
        let s = six_of(&self.six, c, id);
        let (ip, port) = match dir {
            Dir::Orig => {
                let r = c.reply(s);
                (r.src, r.sport)
            }
            Dir::Reply => {
                let o = c.orig(s);
                (o.dst, o.dport)
            }
        };
        Some((ip, port, c.via()))
    }

    pub fn get(&self, id: u32) -> Option<Entry> {
        let c = self.slab.get(id as usize)?.as_ref()?;
        Some(self.entry(id, c))
    }

    pub fn iter(&self) -> impl Iterator<Item = Entry> + '_ {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some(self.entry(i as u32, c.as_ref()?)))
    }

    /// The generation under which a worker may cache connection `id` for its
    /// packets in direction `dir`: when such packets (without SYN, FIN or RST)
    /// cannot change its state. See [`cache`].
    pub fn cacheable(&self, id: u32, dir: Dir) -> Option<u32> {
        let c = self.slab.get(id as usize)?.as_ref()?;
        let steady = match c.state {
            State::Established | State::Replied => true,
            State::Unreplied => dir == Dir::Orig,
            _ => false,
        };
        steady.then(|| self.touch[id as usize].gen())
    }

    /// Records a new connection; evicts one first when the table is full.
    /// `reply` is what the backend sends back: only its source (the backend's
    /// address and port) is taken, the rest answers `orig` by construction, so
    /// the keys indexed are always the ones the entry rebuilds.
    pub fn insert(
        &mut self,
        orig: Key,
        reply: Key,
        service: u32,
        backend: u32,
        tcp_flags: u8,
        now_ms: u64,
    ) -> u32 {
        let reply = reply_key(&orig, &reply);
        self.now_ms = now_ms;
        debug_assert!(
            Self::trackable(&orig, &reply),
            "one key both ways, or mixed families (see Conntrack::trackable)"
        );
        // a 4-tuple belongs to one live connection: whatever held either key
        // before (a finished connection whose client reuses its port, now
        // through another node or VIP) is stale
        for k in [orig, reply] {
            if let Some((id, _)) = self.lookup(&k) {
                self.discard(id, EndReason::Replaced);
            }
        }
        let owner = self.owner_of(&orig);
        if self.len() >= self.max {
            self.evict_for(owner);
        }
        let picked = orig.proto == 6 && tcp_flags & TCP_SYN == 0;
        let state = match orig.proto {
            6 if !picked => State::SynSent,
            // picked up mid-stream (e.g. after a restart without a snapshot):
            // half-open until the backend answers
            6 => State::SynRecv,
            _ => State::Unreplied,
        };
        self.created += 1;
        let (mut e, addrs6) = Conn::new(orig, reply, service, backend, state);
        e.set_picked(picked);
        tally(&mut self.load, &e, state == State::Established, 1);
        let id = match self.free.pop() {
            Some(id) => {
                self.slab[id as usize] = Some(e);
                id
            }
            None => {
                self.slab.push(Some(e));
                (self.slab.len() - 1) as u32
            }
        };
        if let Some(a) = addrs6 {
            if self.six.len() <= id as usize {
                self.six
                    .resize(id as usize + 1, [std::net::Ipv6Addr::UNSPECIFIED; 3]);
            }
            self.six[id as usize] = a;
        }
        self.touch[id as usize].reset(now_ms);
        self.owners.link(id, owner);
        let (slab, six) = (&self.slab, &self.six);
        self.index
            .insert(&orig, Ref::new(id, Dir::Orig), |r| key_of(slab, six, r));
        self.index
            .insert(&reply, Ref::new(id, Dir::Reply), |r| key_of(slab, six, r));
        id
    }

    /// Marks a connection as one whose replies go back through the ingress node
    /// with sandbox MAC `via`.
    pub fn set_via(&mut self, id: u32, via: crate::Mac) {
        if let Some(Some(e)) = self.slab.get_mut(id as usize) {
            if e.via() != Some(via) {
                e.set_via(via);
                // replies cached with the old way back must not use it
                self.touch[id as usize].bump();
            }
        }
    }

    /// Whether a connection from `orig` answered from `reply`'s source can be
    /// tracked: not when its two directions are one key (a packet from an
    /// address and port to themselves, a LAND packet), which the index would
    /// hold twice, nor when its addresses mix families (which no packet has,
    /// but a hand-edited snapshot could). Callers check it before
    /// [`Conntrack::insert`].
    pub fn trackable(orig: &Key, reply: &Key) -> bool {
        // one family throughout, or the record could not give the keys back
        let family = orig.src.is_ipv6();
        orig.dst.is_ipv6() == family
            && reply.src.is_ipv6() == family
            && reply_key(orig, reply) != *orig
    }

    /// Puts back a connection an earlier run of the agent saved when it stopped
    /// (so a restart loses no connection): its state, its way back and each
    /// side's next sequence number, last seen `now_ms` (the saved times were on
    /// the earlier run's clock).
    /// A saved entry whose two directions are one key (which no live connection
    /// has: the index would hold the key twice) is refused.
    pub fn restore(&mut self, e: &Entry, now_ms: u64) -> Option<u32> {
        if !Self::trackable(&e.orig, &e.reply) {
            return None;
        }
        let id = self.insert(e.orig, e.reply, e.service, e.backend, 0, now_ms);
        self.created = self.created.saturating_sub(1);
        if let Some(Some(c)) = self.slab.get_mut(id as usize) {
            let was = c.state == State::Established;
            // saved by the agent itself: as trusted as when it was saved
            c.set_picked(false);
            c.state = e.state;
            if let Some(v) = e.via {
                c.set_via(v);
            }
            let is = c.state == State::Established;
            if was != is {
                tally(&mut self.load, c, was, -1);
                tally(&mut self.load, c, is, 1);
            }
        }
        if let Some(t) = self.touch.get(id as usize) {
            for (side, seq) in e.next_seq.iter().enumerate() {
                t.set_next_seq(side, *seq);
            }
        }
        Some(id)
    }

    /// Whether a connection still waiting for its backend's answer should be
    /// scheduled again, because passive health took that backend out.
    pub fn stalled(&self, id: u32, now_ms: u64) -> bool {
        self.slab
            .get(id as usize)
            .and_then(Option::as_ref)
            .is_some_and(|e| {
                let ip = e.backend_ip(six_of(&self.six, e, id));
                e.state == State::SynSent && self.passive.is_out((e.zone(), e.service, ip), now_ms)
            })
    }

    /// Removes one entry (a stalled connection about to be scheduled anew).
    pub fn retire(&mut self, id: u32) -> Option<Entry> {
        self.remove(id, EndReason::Replaced)
    }

    fn remove(&mut self, id: u32, why: EndReason) -> Option<Entry> {
        let c = *self.slab.get(id as usize)?.as_ref()?;
        let e = self.entry(id, &c);
        self.unlink(id, &c, why);
        Some(e)
    }

    /// Removes slot `id`'s connection `c` without making a copy of it (an
    /// eviction, a stale holder of a key: nobody looks at what went).
    fn unlink(&mut self, id: u32, c: &Conn, why: EndReason) {
        if self.log.is_some() && !ended::already_ended(c.state) {
            self.log_end(id, c, why);
        }
        let s = six_of(&self.six, c, id);
        self.index.remove(&c.orig(s), Ref::new(id, Dir::Orig));
        self.index.remove(&c.reply(s), Ref::new(id, Dir::Reply));
        tally(&mut self.load, c, c.state == State::Established, -1);
        self.owners.unlink(id);
        self.slab[id as usize] = None;
        self.touch[id as usize].bump();
        self.free.push(id);
    }

    /// [`Self::unlink`] by slot.
    fn discard(&mut self, id: u32, why: EndReason) {
        if let Some(Some(c)) = self.slab.get(id as usize).copied() {
            self.unlink(id, &c, why);
        }
    }

    /// Active (established) and inactive connections of one backend of
    /// service `service` in `zone`, as `ipvsadm -Ln` shows them: kept as the
    /// table changes, since `lc` asks for every backend on every new connection.
    pub fn counts(&self, zone: u32, service: u32, backend: u32) -> (u32, u32) {
        self.load
            .get(&(zone, service, backend))
            .map_or((0, 0), |[a, i]| (*a, *i))
    }
}

/// Moves connection `c`'s count (active if `established`) by `delta`; a
/// backend with no connections left is forgotten, so the map stays as small as
/// the set of busy backends.
fn tally(load: &mut FxHashMap<(u32, u32, u32), [u32; 2]>, c: &Conn, established: bool, delta: i32) {
    let key = (c.zone(), c.service, c.backend);
    let n = load.entry(key).or_default();
    let slot = &mut n[usize::from(!established)];
    *slot = slot.saturating_add_signed(delta);
    if *n == [0, 0] {
        load.remove(&key);
    }
}

#[cfg(test)]
mod tests;

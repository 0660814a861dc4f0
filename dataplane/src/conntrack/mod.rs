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

pub mod cache;
mod conn;
mod index;
pub mod touch;

use crate::flowlog::{self, EndReason, FlowEvent};
use conn::{Conn, Six};
use index::{Index, Ref};
use rustc_hash::FxHashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use touch::Touch;

/// A 5-tuple in a zone (the network's VNI; ingress has its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub zone: u32,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Key {
    /// A hash of the flow's addresses, protocol and ports only, the same on
    /// every node (no MACs, no seed): consistent schedulers (maglev) then send
    /// a flow to the same task whichever node it enters by.
    pub fn flow_hash(&self) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(K).rotate_left(29);
        let mut h = mix(0, addr_pair(&self.src, &self.dst));
        if let (IpAddr::V6(s), IpAddr::V6(d)) = (self.src, self.dst) {
            h = mix(h, high_words(s, d));
        }
        h = mix(
            h,
            u64::from(self.sport) << 24 | u64::from(self.dport) << 8 | u64::from(self.proto),
        );
        h ^ (h >> 32)
    }

    pub fn reversed(&self) -> Key {
        Key {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }
}

/// Both addresses in one word: an IPv4 pair whole, an IPv6 pair by the low 32
/// bits of each (the interface identifiers, where flows differ most; the rest is
/// [`high_words`]). A mixed pair never forms a key (both ends are one family).
#[inline(always)]
fn addr_pair(src: &IpAddr, dst: &IpAddr) -> u64 {
    let low = |a: &IpAddr| match a {
        IpAddr::V4(a) => u32::from(*a),
        IpAddr::V6(a) => u128::from(*a) as u32,
    };
    u64::from(low(src)) << 32 | u64::from(low(dst))
}

/// The upper 96 bits of an IPv6 pair, folded into one word.
#[inline(always)]
fn high_words(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr) -> u64 {
    let (s, d) = (u128::from(src) >> 32, u128::from(dst) >> 32);
    (s as u64)
        ^ ((s >> 64) as u64).rotate_left(17)
        ^ (d as u64).rotate_left(31)
        ^ ((d >> 64) as u64).rotate_left(47)
}

/// Two words instead of a field at a time: the key is hashed for every packet
/// of a tracked connection. (The zone is a 24-bit VNI, so the protocol fits above
/// it; equal keys still hash equally, which is all `Eq` needs.)
impl Hash for Key {
    #[inline(always)]
    fn hash<H: Hasher>(&self, h: &mut H) {
        match (&self.src, &self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.write_u64(u64::from(u32::from(*s)) << 32 | u64::from(u32::from(*d)))
            }
            (s, d) => {
                h.write_u64(addr_pair(s, d));
                if let (IpAddr::V6(s), IpAddr::V6(d)) = (s, d) {
                    h.write_u64(high_words(*s, *d));
                }
            }
        }
        h.write_u64(
            (u64::from(self.zone) ^ u64::from(self.proto) << 24) << 32
                | u64::from(self.sport) << 16
                | u64::from(self.dport),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    TimeWait,
    Close,
    /// UDP/ICMP before a reply, and after.
    Unreplied,
    Replied,
}

/// Timeouts in milliseconds, by state; IPVS's defaults where it has them,
/// but a shorter SYN wait.
pub fn timeout_ms(s: State, proto: u8) -> u64 {
    match (s, proto) {
        (State::SynSent | State::SynRecv, _) => 30_000,
        (State::Established, _) => 900_000,
        (State::FinWait | State::TimeWait, _) => 120_000,
        (State::Close, _) => 10_000,
        (State::Unreplied, _) => 30_000,
        (State::Replied, 17) => 180_000,
        (State::Replied, _) => 30_000,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Orig = 0,
    Reply = 1,
}

/// A copy of one connection, as the table and its touch slot hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Key,
    pub reply: Key,
    /// The virtual service (fwmark) and backend index that took the connection.
    pub service: u32,
    pub backend: u32,
    pub state: State,
    pub last_ms: u64,
    /// TCP: the sequence number each side sends next (client, backend), so the
    /// agent can reset both ends with numbers they accept.
    pub next_seq: [u32; 2],
    /// On a task's node, for a connection that came in through another node's
    /// ingress with the client's own address: that node's sandbox MAC, where the
    /// replies go back to. (`service` is 0 for these: nothing was balanced here.)
    pub via: Option<crate::Mac>,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// Entries looked at to choose one to evict.
const EVICTION_SAMPLE: usize = 32;
/// Oldest entries of its own a client over its share looks at to pick the one
/// it evicts, when the sample holds none of its entries.
const OWN_OLDEST: usize = 4;

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
    pending: Vec<FlowEvent>,
    /// Ends the buffer had no room for.
    lost: u64,
}

/// Ends the table holds for the workers, at most: what one sweep's slice
/// (bounded by [`EXPIRE_SLICE`]) can end, drained after each.
const END_LOG: usize = EXPIRE_SLICE;

/// Locks the table, counting in it a lock that had to be waited for (another
/// worker held it). A worker that panicked mid-update leaves a table that is
/// still consistent entry by entry: keep balancing rather than stop everywhere.
pub fn lock_counted(t: &std::sync::Mutex<Conntrack>) -> std::sync::MutexGuard<'_, Conntrack> {
    use std::sync::{PoisonError, TryLockError};
    match t.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            let mut g = t.lock().unwrap_or_else(PoisonError::into_inner);
            g.lock_waits += 1;
            g
        }
    }
}

/// Slots of the table swept per hold of its lock (bench
/// `lb_path/expire_slice`).
pub const EXPIRE_SLICE: usize = 8192;

/// Expires the table's due entries a slice at a time ([`Conntrack::expire_slots`]),
/// the lock given up between slices so that other workers' new connections
/// wait for one slice, not for the whole table. `each_slice` sees the table
/// after each slice, still locked (to take the ends it recorded).
pub fn expire_in_slices(
    t: &std::sync::Mutex<Conntrack>,
    now_ms: u64,
    mut on_reset: impl FnMut(&Entry),
    mut each_slice: impl FnMut(&mut Conntrack),
) {
    let mut from = Some(0);
    while let Some(first) = from {
        let mut ct = lock_counted(t);
        from = ct
            .expire_slots(now_ms, first, EXPIRE_SLICE, &mut on_reset)
            .1;
        each_slice(&mut ct);
    }
}

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
    pub fn drain_log(&mut self, mut to: impl FnMut(FlowEvent)) {
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
        let counts = self.touch[id as usize].counts();
        let now = self.now_ms;
        if let Some(l) = self.log.as_mut() {
            if l.pending.len() < END_LOG {
                l.pending.push(FlowEvent::end(&e, why, counts, now));
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

    /// Notes a packet of a tracked connection: state and last-seen time.
    pub fn update(&mut self, id: u32, dir: Dir, tcp_flags: u8, now_ms: u64) {
        let Some(Some(e)) = self.slab.get_mut(id as usize) else {
            return;
        };
        self.now_ms = now_ms;
        let t = &self.touch[id as usize];
        let before = (e.state, e.fins());
        let last_ms = t.last_ms();
        t.seen(now_ms);
        let backend_ip = e.backend_ip(six_of(&self.six, e, id));
        Self::step(
            e,
            backend_ip,
            &mut self.passive,
            last_ms,
            dir,
            tcp_flags,
            now_ms,
        );
        if (e.state, e.fins()) != before {
            t.bump();
            if let Some(why) = self
                .log
                .as_ref()
                .and(flowlog::event::ended_by(before.0, e.state))
            {
                let c = *e;
                self.log_end(id, &c, why);
            }
            let Some(Some(e)) = self.slab.get_mut(id as usize) else {
                return;
            };
            let (was, is) = (
                before.0 == State::Established,
                e.state == State::Established,
            );
            if was != is {
                tally(&mut self.load, e, was, -1);
                tally(&mut self.load, e, is, 1);
            }
        }
    }

    /// Moves a connection's state on for one packet (`last_ms`: when the one
    /// before it was seen).
    fn step(
        e: &mut Conn,
        backend_ip: IpAddr,
        passive: &mut crate::lb::passive::PassiveHealth,
        last_ms: u64,
        dir: Dir,
        tcp_flags: u8,
        now_ms: u64,
    ) {
        if e.proto == 6 && e.service != 0 && e.state == State::SynSent {
            // how the backend answers a new connection says whether it is alive
            let backend = (e.zone(), e.service, backend_ip);
            match dir {
                Dir::Reply if tcp_flags & TCP_RST != 0 => passive.failed(backend, now_ms),
                Dir::Reply if tcp_flags & TCP_SYN != 0 => passive.answered(backend),
                Dir::Orig
                    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                        && now_ms.saturating_sub(last_ms) >= crate::lb::passive::SYN_RETRY_MS =>
                {
                    // the SYN before this one went unanswered, unless the
                    // sweep already counted it; this one is yet to count
                    if !e.syn_counted() {
                        passive.failed(backend, now_ms);
                    }
                    e.set_syn_counted(false);
                }
                _ => {}
            }
        }
        if e.proto != 6 {
            if dir == Dir::Reply {
                e.state = State::Replied;
            }
            return;
        }
        if e.picked() {
            // only the backend's acknowledgement confirms a connection picked
            // up mid-stream; the client's segments (which anyone can send)
            // leave it half-open
            if dir == Dir::Reply && tcp_flags & (TCP_ACK | TCP_RST) == TCP_ACK {
                e.set_picked(false);
                e.state = State::Established;
            } else if tcp_flags & TCP_RST == 0 {
                return;
            }
        }
        if tcp_flags & TCP_RST != 0 {
            e.state = State::Close;
            return;
        }
        // a new connection reusing the tuple of a finished one starts over
        let fresh_syn = dir == Dir::Orig && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if fresh_syn && matches!(e.state, State::TimeWait | State::Close | State::FinWait) {
            e.state = State::SynSent;
            e.set_fins(false, false);
            return;
        }
        if tcp_flags & TCP_FIN != 0 {
            let (o, r) = e.fins();
            let (o, r) = (o || dir == Dir::Orig, r || dir == Dir::Reply);
            e.set_fins(o, r);
            e.state = if o && r {
                State::TimeWait
            } else {
                State::FinWait
            };
            return;
        }
        e.state = match (e.state, dir) {
            (State::SynSent, Dir::Reply)
                if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK =>
            {
                State::SynRecv
            }
            (State::SynRecv, Dir::Orig) if tcp_flags & TCP_ACK != 0 => State::Established,
            (s, _) => s,
        };
    }

    /// Notes where a TCP side's next segment starts (its sequence number plus
    /// the length this segment used up).
    pub fn note_seq(&mut self, id: u32, dir: Dir, seq_end: u32) {
        if let Some(t) = self.touch.get(id as usize) {
            t.set_next_seq(dir as usize, seq_end);
        }
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
        if self.log.is_some() && !flowlog::event::already_ended(c.state) {
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

    /// The client a connection is counted against: its zone and source
    /// address (anti-spoofing makes that a container's own), hashed with this
    /// run's key.
    /// A keyed multiplicative hash, as the ingress rate limiter's (a hash per
    /// new connection: SipHash cost a tenth of a new flow's setup): for IPv4
    /// a bijection of (zone, address), so two IPv4 clients never share a
    /// count; an IPv6 address is folded in two keyed rounds.
    #[inline]
    fn owner_of(&self, orig: &Key) -> u64 {
        let [k0, k1, k2] = self.owner_key;
        let zone = u64::from(orig.zone);
        match orig.src {
            IpAddr::V4(a) => ((zone << 32 | u64::from(u32::from(a))) ^ k0).wrapping_mul(k1),
            IpAddr::V6(a) => {
                let v = u128::from(a);
                let low = (v as u64 ^ k0).wrapping_mul(k1).rotate_left(32);
                (low ^ (v >> 64) as u64 ^ zone.rotate_left(40)).wrapping_mul(k2)
            }
        }
    }

    /// Entries the client of `orig` (its zone and source address) holds.
    pub fn held_by(&self, orig: &Key) -> usize {
        self.owners.count(&self.owner_of(orig))
    }

    /// Makes room in the full table for a new connection of `owner`. An owner
    /// holding its share or more gives up one of its own entries (the least
    /// live and oldest of those in the sample, or of its oldest few if the
    /// sample holds none); any other
    /// takes, from a sample of the table, a half-open entry first, then one of
    /// an owner over its share, then the oldest. O(1): a sample of
    /// [`EVICTION_SAMPLE`] slots and [`OWN_OLDEST`] of the owner's list.
    fn evict_for(&mut self, owner: u64) {
        let (max, floor) = (self.max, self.share_floor);
        let share = self.owners.share(max, floor, &owner);
        let greedy = self.owners.count(&owner) >= share;
        let n = self.slab.len();
        // (live?, owner within its share?, last seen, slot): smallest goes
        let rank = |this: &Self, i: usize| {
            let e = this.slab[i].as_ref()?;
            let live = matches!(e.state, State::Established | State::Replied);
            let (o, held) = this.owners.of_slot(i as u32)?;
            if greedy && o != owner {
                return None;
            }
            Some((live, held < share, this.touch[i].last_ms(), i as u32))
        };
        let mut best: Option<(bool, bool, u64, u32)> = None;
        let mut seen = 0;
        let mut k = 0;
        while seen < EVICTION_SAMPLE && k < n {
            let i = (self.cursor + k) % n;
            k += 1;
            if self.slab[i].is_some() {
                seen += 1;
                if let Some(r) = rank(self, i) {
                    if best.is_none_or(|b| r < b) {
                        best = Some(r);
                    }
                }
            }
        }
        self.cursor = (self.cursor + k) % n.max(1);
        // the sample holds none of its own (it holds little of the table):
        // its oldest few
        if greedy && best.is_none() {
            for i in self.owners.oldest(&owner).take(OWN_OLDEST) {
                if let Some(r) = rank(self, i as usize) {
                    if best.is_none_or(|b| r < b) {
                        best = Some(r);
                    }
                }
            }
        }
        if let Some((_, _, _, id)) = best {
            self.discard(id, EndReason::Evicted);
            self.evicted += 1;
        }
    }

    /// Whether resetting a TCP entry's ends is due when it goes: it carried data
    /// both ways or still could (not yet closed), so someone may be waiting on it.
    pub fn wants_reset(e: &Entry) -> bool {
        e.orig.proto == 6
            && matches!(
                e.state,
                State::SynRecv | State::Established | State::FinWait
            )
    }

    /// Removes expired entries; established TCP ones are handed to `on_reset` so
    /// both ends can be told (a RST) instead of being silently blackholed.
    pub fn expire(&mut self, now_ms: u64, on_reset: impl FnMut(&Entry)) -> usize {
        self.expire_slots(now_ms, 0, usize::MAX, on_reset).0
    }

    /// [`Self::expire`] over at most `count` slots from `first`: a sweep of a
    /// full table in slices, so that the lock is given up between them (a whole
    /// sweep of 262,144 slots held it for 0.05–0.8 ms in netns-lb, during which
    /// every other worker's new connections waited). Returns how many expired, and the
    /// slot to go on from (`None`: the sweep reached the end).
    pub fn expire_slots(
        &mut self,
        now_ms: u64,
        first: usize,
        count: usize,
        mut on_reset: impl FnMut(&Entry),
    ) -> (usize, Option<usize>) {
        let end = first.saturating_add(count).min(self.slab.len());
        self.now_ms = now_ms;
        let mut n = 0;
        for id in first.min(end) as u32..end as u32 {
            let last_ms = self.touch[id as usize].last_ms();
            self.count_unanswered(id, last_ms, now_ms);
            let expired = self.slab[id as usize].as_ref().is_some_and(|e| {
                now_ms.saturating_sub(last_ms)
                    > timeout_ms(e.state, e.proto).min(self.timeout_cap_ms)
            });
            if expired {
                if let Some(e) = self.remove(id, EndReason::Idle) {
                    if e.orig.proto == 6 && e.state == State::Established {
                        on_reset(&e);
                    }
                    n += 1;
                }
            }
        }
        (n, (end < self.slab.len()).then_some(end))
    }

    /// Counts a failure of the backend of connection `id` when the client's
    /// last SYN (at `last_ms`) has gone unanswered for
    /// [`crate::lb::passive::SYN_RETRY_MS`] and was not counted yet. A client
    /// with a connect timeout under a second never retransmits (the first
    /// retransmit is at 1 s), so without this its connections to a dead
    /// backend would never count, and the backend would stay in.
    #[inline]
    fn count_unanswered(&mut self, id: u32, last_ms: u64, now_ms: u64) {
        let Some(Some(c)) = self.slab.get_mut(id as usize) else {
            return;
        };
        if c.proto != 6
            || c.service == 0
            || c.state != State::SynSent
            || c.syn_counted()
            || now_ms.saturating_sub(last_ms) < crate::lb::passive::SYN_RETRY_MS
        {
            return;
        }
        c.set_syn_counted(true);
        let backend = (c.zone(), c.service, c.backend_ip(six_of(&self.six, c, id)));
        self.passive.failed(backend, now_ms);
    }

    /// Removes every entry `pick` selects and returns them.
    pub fn remove_where(&mut self, pick: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        let ids: Vec<u32> = self
            .slab
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let e = self.entry(i as u32, c.as_ref()?);
                pick(&e).then_some(i as u32)
            })
            .collect();
        ids.into_iter()
            .filter_map(|id| self.remove(id, EndReason::BackendGone))
            .collect()
    }

    /// Removes every connection of a backend that left (removed or unhealthy),
    /// handing the live TCP ones to `on_reset`.
    pub fn remove_backend(
        &mut self,
        service: u32,
        backend: u32,
        mut on_reset: impl FnMut(&Entry),
    ) -> usize {
        let gone = self.remove_where(|e| e.service == service && e.backend == backend);
        for e in gone
            .iter()
            .filter(|e| e.orig.proto == 6 && !matches!(e.state, State::Close | State::TimeWait))
        {
            on_reset(e);
        }
        gone.len()
    }

    /// Forgets every connection of service `service` in `zone` to backend `ip`
    /// (it went unhealthy or away). Its clients' next packets are scheduled anew,
    /// and for TCP the new backend answers the stray segment with a RST.
    pub fn forget_backend(&mut self, zone: u32, service: u32, ip: IpAddr) -> usize {
        self.remove_where(|e| e.orig.zone == zone && e.service == service && e.reply.src == ip)
            .len()
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

/// Three odd random 64-bit numbers (std's per-instance random hash keys as
/// the source).
fn random_keys() -> [u64; 3] {
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    [1u64, 2, 3].map(|i| {
        let mut h = s.build_hasher();
        h.write_u64(i);
        h.finish() | 1
    })
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

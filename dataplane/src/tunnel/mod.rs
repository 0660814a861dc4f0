//! WireGuard tunnels between nodes, for encrypted networks.
//!
//! One [`Tunn`] (boringtun's Noise state machine) per peer and key pair, kept in
//! a table indexed the way WireGuard routes packets: by the receiver index the
//! peer echoes back (our slot index in the upper 24 bits), and for handshake
//! initiations by the static key the initiator proves. A peer can have more than
//! one slot while keys rotate: the old slot keeps its session until the new one
//! has completed a handshake, so a rotation loses no packets.
//!
//! What travels inside is standard VXLAN-in-UDP-in-IPv4 between the nodes'
//! tunnel addresses, so a stock WireGuard peer with the kernel's VXLAN behind it
//! interoperates.

#![forbid(unsafe_code)]

pub mod inner;

/// The curve25519 types, re-exported so the control plane builds no second copy.
pub use boringtun::x25519;

use crate::counters::DropReason;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Handshake initiations a node answers per second before it asks for cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How long a superseded slot lingers after its successor has a session, for
/// packets already in flight under the old keys.
const RETIRE_AFTER: Duration = Duration::from_secs(10);
/// The longest an old-key session outlives its peer's rotation.
const SUPERSEDED_GRACE: Duration = Duration::from_secs(120);
/// A handshake this soon after the last one with the same peer is the two ends'
/// initiations crossing (WireGuard's normal race), not a rekey. (WireGuard itself
/// retries a handshake after 5 s and rekeys after 120 s.)
const CROSSING_WINDOW: Duration = Duration::from_secs(5);

/// A peer as the control plane describes it.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelPeer {
    /// The peer's address inside the tunnel (its VTEP for encrypted networks).
    pub vtep: Ipv4Addr,
    /// Where its WireGuard socket listens on the underlay.
    pub endpoint: SocketAddr,
    pub public: [u8; 32],
}

/// Everything the tunnels need; the private keys never leave the agent process.
#[derive(Clone)]
pub struct TunnelConfig {
    pub local_vtep: Ipv4Addr,
    /// Our static keys: the current one first, then older ones still accepted
    /// while peers catch up with a rotation.
    pub keys: Vec<[u8; 32]>,
    pub preshared: Option<[u8; 32]>,
    pub peers: Vec<TunnelPeer>,
}

struct Slot {
    vtep: Ipv4Addr,
    endpoint: SocketAddr,
    peer_public: [u8; 32],
    local_public: [u8; 32],
    tunn: Box<Tunn>,
    created: Instant,
    established: Option<Instant>,
    /// When this slot last completed a handshake.
    handshake_at: Option<Instant>,
    /// When the peer's key changed under this slot.
    superseded: Option<Instant>,
}

/// What a received datagram turned out to be.
pub enum Received {
    /// A VXLAN datagram from `vtep` is now at the front of the buffer's tunnel slot;
    /// `offset..offset+len` of it is the VXLAN datagram.
    Vxlan {
        vtep: IpAddr,
        offset: usize,
        len: usize,
    },
    /// Handled inside (handshake, keepalive, cookie); replies were sent.
    Control,
    Drop(DropReason),
}

enum RouteErr {
    /// A cookie reply of this length is in the cookie buffer.
    Cookie(usize),
    Drop(DropReason),
}

pub struct Tunnels {
    local_vtep: Ipv4Addr,
    keys: Vec<(StaticSecret, PublicKey)>,
    preshared: Option<[u8; 32]>,
    peers: Vec<TunnelPeer>,
    slots: FxHashMap<u32, Slot>,
    next_index: u32,
    limiter: Arc<RateLimiter>,
    scratch: Vec<u8>,
    handshakes: u64,
    rekeys: u64,
    /// [`CROSSING_WINDOW`]; tests shorten it.
    crossing_window: Duration,
}

/// How often [`Tunnels::tick`] wants to run: WireGuard's timers are checked
/// at this granularity.
pub const TICK: Duration = Duration::from_millis(250);

/// WireGuard message types (the first byte; the next three are zero).
const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_DATA: u8 = 4;

fn classify(e: &WireGuardError) -> DropReason {
    use WireGuardError::*;
    match e {
        InvalidMac | InvalidAeadTag | WrongKey | InvalidTai64nTimestamp | WrongTai64nTimestamp => {
            DropReason::TunnelAuth
        }
        DuplicateCounter | InvalidCounter => DropReason::TunnelReplay,
        WrongIndex | NoCurrentSession => DropReason::TunnelNoPeer,
        UnderLoad => DropReason::TunnelUnderLoad,
        other => {
            tracing::debug!(error = ?other, "invalid WireGuard message");
            DropReason::TunnelInvalid
        }
    }
}

impl Default for Tunnels {
    fn default() -> Self {
        Self::new()
    }
}

impl Tunnels {
    pub fn new() -> Self {
        let k = StaticSecret::from([0u8; 32]);
        let p = PublicKey::from(&k);
        Self {
            local_vtep: Ipv4Addr::UNSPECIFIED,
            keys: Vec::new(),
            preshared: None,
            peers: Vec::new(),
            slots: FxHashMap::default(),
            next_index: 1,
            limiter: Arc::new(RateLimiter::new(&p, HANDSHAKE_RATE_LIMIT)),
            scratch: vec![0u8; 65_536 + 256],
            handshakes: 0,
            rekeys: 0,
            crossing_window: CROSSING_WINDOW,
        }
    }

    pub fn local_vtep(&self) -> Ipv4Addr {
        self.local_vtep
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Handshakes completed: this node answered a peer's initiation, or had its
    /// own answered; either way both ends hold new session keys.
    pub fn handshakes(&self) -> u64 {
        self.handshakes
    }

    /// The handshakes of [`Tunnels::handshakes`] that replaced a session the peer
    /// already had (WireGuard's periodic rekey, or a static key's rotation): the
    /// last handshake with that peer was at least [`CROSSING_WINDOW`] earlier.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// Number of live sessions slots (for counters and tests).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Applies a new configuration: slots for new peers or new keys are made,
    /// slots whose peer or keys are gone are dropped (their packets then fail),
    /// and a new slot next to an established one starts its handshake at once.
    /// `now`: the caller's clock (slots remember when they were made and
    /// superseded; see [`Tunnels::tick`]).
    pub fn configure(
        &mut self,
        cfg: TunnelConfig,
        now: Instant,
        send: &mut dyn FnMut(&[u8], SocketAddr),
    ) {
        self.local_vtep = cfg.local_vtep;
        self.preshared = cfg.preshared;
        let keys: Vec<(StaticSecret, PublicKey)> = cfg
            .keys
            .iter()
            .map(|k| {
                let s = StaticSecret::from(*k);
                let p = PublicKey::from(&s);
                (s, p)
            })
            .collect();
        if keys.first().map(|k| k.1) != self.keys.first().map(|k| k.1) {
            if let Some((_, p)) = keys.first() {
                self.limiter = Arc::new(RateLimiter::new(p, HANDSHAKE_RATE_LIMIT));
            }
        }
        self.keys = keys;
        self.peers = cfg.peers;
        let local: Vec<[u8; 32]> = self.keys.iter().map(|k| k.1.to_bytes()).collect();
        let peers = &self.peers;
        self.slots.retain(|_, s| {
            let Some(p) = peers.iter().find(|p| p.vtep == s.vtep) else {
                return false; // peer removed: its packets fail from now on
            };
            if p.public != s.peer_public {
                // The peer rotated its key: an established session carries traffic
                // until the new one is up (see `tick`); anything else goes.
                if s.established.is_none() {
                    return false;
                }
                s.superseded.get_or_insert(now);
            }
            local.contains(&s.local_public)
        });
        let Some((cur_secret, cur_public)) = self.keys.first().cloned() else {
            self.slots.clear();
            return;
        };
        for p in self.peers.clone() {
            for s in self.slots.values_mut().filter(|s| s.vtep == p.vtep) {
                s.endpoint = p.endpoint;
            }
            let current = self.slots.values().any(|s| {
                s.vtep == p.vtep
                    && s.peer_public == p.public
                    && s.local_public == cur_public.to_bytes()
            });
            if current {
                continue;
            }
            let index = self.next_index;
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            let mut tunn = Box::new(Tunn::new(
                cur_secret.clone(),
                PublicKey::from(p.public),
                self.preshared,
                None,
                index,
                Some(self.limiter.clone()),
            ));
            // The peer rotated: its old-key slot carries traffic meanwhile; start
            // the new handshake now instead of on the next packet. (When it is our
            // own key that changed, the peer cannot know it yet: it initiates once
            // it has read our new key from the store.)
            let peer_rotated = self
                .slots
                .values()
                .any(|s| s.vtep == p.vtep && s.established.is_some() && s.peer_public != p.public);
            if peer_rotated {
                if let TunnResult::WriteToNetwork(pkt) =
                    tunn.format_handshake_initiation(&mut self.scratch, false)
                {
                    send(pkt, p.endpoint);
                }
            }
            self.slots.insert(
                index,
                Slot {
                    vtep: p.vtep,
                    endpoint: p.endpoint,
                    peer_public: p.public,
                    local_public: cur_public.to_bytes(),
                    tunn,
                    created: now,
                    established: None,
                    handshake_at: None,
                    superseded: None,
                },
            );
        }
    }

    /// The slot to send to `vtep` through: the newest with a session, else the
    /// newest (whose first packet starts a handshake).
    fn pick(&self, vtep: Ipv4Addr) -> Option<u32> {
        let mut best: Option<(&u32, &Slot)> = None;
        for (i, s) in self.slots.iter().filter(|(_, s)| s.vtep == vtep) {
            let better = match best {
                None => true,
                Some((_, b)) => {
                    (s.established.is_some(), s.created) > (b.established.is_some(), b.created)
                }
            };
            if better {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| *i)
    }

    /// Encrypts one inner packet (IPv4/UDP/VXLAN) for `vtep` and hands the
    /// datagram to `send`.
    pub fn send_to(
        &mut self,
        vtep: Ipv4Addr,
        packet: &[u8],
        send: &mut dyn FnMut(&[u8], SocketAddr),
    ) -> Result<(), DropReason> {
        let Some(idx) = self.pick(vtep) else {
            tracing::debug!(%vtep, slots = ?self.slots.values().map(|s| s.vtep).collect::<Vec<_>>(), "no tunnel to this VTEP");
            return Err(DropReason::TunnelNoPeer);
        };
        let slot = self.slots.get_mut(&idx).ok_or(DropReason::TunnelNoPeer)?;
        if self.scratch.len() < packet.len() + 148 {
            return Err(DropReason::TooBig);
        }
        match slot.tunn.encapsulate(packet, &mut self.scratch) {
            TunnResult::WriteToNetwork(d) => {
                send(d, slot.endpoint);
                Ok(())
            }
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, %vtep, "tunnel send failed");
                Err(classify(&e))
            }
            other => {
                tracing::trace!(result = ?other, %vtep, "queued until the handshake completes");
                Ok(())
            }
        }
    }

    /// Finds the slot a datagram belongs to: by receiver index, or for a handshake
    /// initiation by the initiator's static key (after the rate limiter, so a
    /// flood of initiations costs cookies, not Diffie-Hellman).
    fn route(&self, src: SocketAddr, datagram: &[u8], cookie: &mut [u8]) -> Result<u32, RouteErr> {
        let packet = match self.limiter.verify_packet(Some(src.ip()), datagram, cookie) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(c)) => return Err(RouteErr::Cookie(c.len())),
            Err(TunnResult::Err(e)) => return Err(RouteErr::Drop(classify(&e))),
            Err(_) => return Err(RouteErr::Drop(DropReason::TunnelInvalid)),
        };
        let idx = match packet {
            Packet::HandshakeInit(h) => {
                let found = self.keys.iter().find_map(|(s, p)| {
                    parse_handshake_anon(s, p, &h)
                        .ok()
                        .map(|half| (half.peer_static_public, p.to_bytes()))
                });
                let Some((peer, local)) = found else {
                    return Err(RouteErr::Drop(DropReason::TunnelAuth));
                };
                self.slots
                    .iter()
                    .filter(|(_, s)| s.peer_public == peer && s.local_public == local)
                    .max_by_key(|(_, s)| s.created)
                    .map(|(i, _)| *i)
            }
            Packet::HandshakeResponse(h) => Some(h.receiver_idx >> 8),
            Packet::PacketCookieReply(h) => Some(h.receiver_idx >> 8),
            Packet::PacketData(h) => Some(h.receiver_idx >> 8),
        };
        match idx {
            Some(i) if self.slots.contains_key(&i) => Ok(i),
            _ => Err(RouteErr::Drop(DropReason::TunnelNoPeer)),
        }
    }

    /// Decrypts a datagram from `src` into `out` (the buffer's tunnel slot);
    /// `now` (the caller's clock) dates a completed handshake.
    pub fn receive(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        now: Instant,
        send: &mut dyn FnMut(&[u8], SocketAddr),
    ) -> Received {
        let mut cookie = [0u8; 64];
        let idx = match self.route(src, datagram, &mut cookie) {
            Ok(i) => i,
            Err(RouteErr::Cookie(n)) => {
                // Under load: answer with a cookie instead of doing the handshake.
                send(&cookie[..n], src);
                return Received::Drop(DropReason::TunnelUnderLoad);
            }
            Err(RouteErr::Drop(r)) => return Received::Drop(r),
        };
        let local_vtep = self.local_vtep;
        // a handshake message (never data, so the scan stays off the data path):
        // when the last handshake with that peer was, for counting rekeys
        let kind = datagram.first().copied().unwrap_or(0);
        let last_handshake = match (kind, self.slots.get(&idx)) {
            (MSG_INIT | MSG_RESPONSE, Some(me)) => self
                .slots
                .values()
                .filter(|s| s.vtep == me.vtep)
                .filter_map(|s| s.handshake_at)
                .max(),
            _ => None,
        };
        let crossing_window = self.crossing_window;
        let Some(slot) = self.slots.get_mut(&idx) else {
            return Received::Drop(DropReason::TunnelNoPeer);
        };
        let res = slot.tunn.decapsulate(Some(src.ip()), datagram, out);
        let out_len = match res {
            TunnResult::Done => return Received::Control,
            TunnResult::Err(e) => return Received::Drop(classify(&e)),
            TunnResult::WriteToNetwork(d) => {
                // an initiation answered with a response, or a response answered
                // with the keepalive that confirms it (not a cookie reply)
                let done = matches!(
                    (kind, d.first().copied()),
                    (MSG_INIT, Some(MSG_RESPONSE)) | (MSG_RESPONSE, Some(MSG_DATA))
                );
                if done {
                    self.handshakes += 1;
                    self.rekeys += u64::from(
                        last_handshake.is_some_and(|t| now.duration_since(t) >= crossing_window),
                    );
                    slot.handshake_at = Some(now);
                }
                send(d, slot.endpoint);
                // Packets queued while the handshake ran go out now.
                while let TunnResult::WriteToNetwork(d) =
                    slot.tunn.decapsulate(None, &[], &mut self.scratch)
                {
                    send(d, slot.endpoint);
                }
                note_session(slot, now);
                return Received::Control;
            }
            TunnResult::WriteToTunnelV4(p, from) => {
                if IpAddr::V4(from) != IpAddr::V4(slot.vtep) {
                    return Received::Drop(DropReason::TunnelNotAllowed);
                }
                p.len()
            }
            TunnResult::WriteToTunnelV6(..) => return Received::Drop(DropReason::TunnelNotAllowed),
        };
        note_session(slot, now);
        let vtep = IpAddr::V4(slot.vtep);
        match inner::strip(&out[..out_len], local_vtep, slot.vtep) {
            Some(offset) => Received::Vxlan {
                vtep,
                offset,
                len: out_len - offset,
            },
            None => Received::Drop(DropReason::TunnelNotAllowed),
        }
    }

    /// Drives handshakes, rekeys and keepalives (call every [`TICK`]), and
    /// retires slots that a newer session has replaced. (boringtun's `Tunn`
    /// keeps its own clock for its timers: it has no call that takes one.)
    pub fn tick(&mut self, now: Instant, send: &mut dyn FnMut(&[u8], SocketAddr)) {
        for slot in self.slots.values_mut() {
            if let TunnResult::WriteToNetwork(d) = slot.tunn.update_timers(&mut self.scratch) {
                send(d, slot.endpoint);
            }
            note_session(slot, now);
        }
        let newest: Vec<(Ipv4Addr, Instant, Instant)> = self
            .slots
            .values()
            .filter_map(|s| s.established.map(|e| (s.vtep, s.created, e)))
            .collect();
        self.slots.retain(|_, s| {
            let replaced = newest.iter().any(|(v, created, est)| {
                *v == s.vtep && *created > s.created && now.duration_since(*est) > RETIRE_AFTER
            });
            let stale = s
                .superseded
                .is_some_and(|t| now.duration_since(t) > SUPERSEDED_GRACE);
            !replaced && !stale
        });
    }

    /// Resets the handshake rate limiter's window (call every second).
    pub fn reset_rate_limiter(&self) {
        self.limiter.reset_count();
    }
}

fn note_session(slot: &mut Slot, now: Instant) {
    if slot.established.is_none() && slot.tunn.stats().0.is_some() {
        slot.established = Some(now);
    }
}

#[cfg(test)]
mod tests;

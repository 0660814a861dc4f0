//! A connection's state and what moves it: TCP flags seen each way (a
//! simplified version of the kernel's conntrack), and the idle timeout each
//! state allows.

use super::conn::Conn;
use super::{six_of, tally, Conntrack, Key};
use std::net::IpAddr;

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

pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_RST: u8 = 0x04;
pub(super) const TCP_ACK: u8 = 0x10;

impl Conntrack {
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
                .and(super::ended::ended_by(before.0, e.state))
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
}

//! What the doctor asks of the workers (send a probe) and what they hand back
//! (answers, failed sends), across threads: the answer to a probe arrives on
//! whichever worker's socket the kernel picks.

use crate::switch::ProbeAnswer;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One probe to send (see [`crate::wire::probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSend {
    /// The node's underlay address, or its tunnel address when `secure`.
    pub to: IpAddr,
    pub secure: bool,
    pub id: u64,
    /// The datagram's size (UDP payload of the VXLAN datagram), at least
    /// [`crate::wire::probe::MIN_LEN`].
    pub len: usize,
}

/// What became of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// Its answer arrived, at `at`.
    Answer { answer: ProbeAnswer, at: Instant },
    /// It could not leave this node: the kernel's error (`EMSGSIZE`: larger
    /// than the outgoing interface's MTU), or why the tunnel refused it.
    SendFailed { id: u64, error: String },
}

impl ProbeEvent {
    pub fn id(&self) -> u64 {
        match self {
            ProbeEvent::Answer { answer, .. } => answer.id,
            ProbeEvent::SendFailed { id, .. } => *id,
        }
    }
}

/// Events waiting for their doctor; bounded, and what nobody took goes after
/// [`ProbeInbox::KEEP`].
#[derive(Debug, Default)]
pub struct ProbeInbox {
    events: VecDeque<(Instant, ProbeEvent)>,
}

impl ProbeInbox {
    /// Events held at most: past it the oldest goes.
    pub const MAX: usize = 4096;
    /// How long an event waits to be taken.
    pub const KEEP: Duration = Duration::from_secs(30);

    pub fn push(&mut self, e: ProbeEvent) {
        if self.events.len() >= Self::MAX {
            self.events.pop_front();
        }
        self.events.push_back((Instant::now(), e));
    }

    /// Takes the events whose probe `mine` says is its, and forgets stale ones.
    pub fn take(&mut self, mine: impl Fn(u64) -> bool) -> Vec<ProbeEvent> {
        let now = Instant::now();
        let mut out = Vec::new();
        self.events.retain(|(t, e)| {
            if mine(e.id()) {
                out.push(e.clone());
                return false;
            }
            now.duration_since(*t) < Self::KEEP
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_doctor_takes_its_own_and_the_inbox_stays_bounded() {
        let mut inbox = ProbeInbox::default();
        for id in 0..(ProbeInbox::MAX as u64 + 10) {
            inbox.push(ProbeEvent::SendFailed {
                id,
                error: String::new(),
            });
        }
        assert_eq!(inbox.events.len(), ProbeInbox::MAX);
        assert!(inbox.take(|id| id < 10).is_empty(), "the oldest went");
        let mine = inbox.take(|id| id == 10 || id == 11);
        assert_eq!(
            mine.iter().map(ProbeEvent::id).collect::<Vec<_>>(),
            [10, 11]
        );
        assert_eq!(inbox.events.len(), ProbeInbox::MAX - 2);
    }
}

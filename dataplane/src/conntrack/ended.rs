//! A connection's end as the table records it for the flow log: why, and
//! what it carried. The flow log (above) turns these into its records, so the
//! table knows nothing of the log's format.

use super::{Entry, State};

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Both sides sent FIN.
    Fin,
    /// Either side sent RST.
    Rst,
    /// Nothing seen for its state's timeout.
    Idle,
    /// Pushed out of the full table by a new connection.
    Evicted,
    /// Its backend left (removed, or taken out as unhealthy).
    BackendGone,
    /// Its 4-tuple was taken by a new connection, or it was scheduled anew.
    Replaced,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::Idle => "idle",
            EndReason::Evicted => "evicted",
            EndReason::BackendGone => "backend_gone",
            EndReason::Replaced => "replaced",
        }
    }
}

/// One connection's end, recorded under the table's lock for the worker that
/// holds it to take ([`super::Conntrack::drain_log`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub entry: Entry,
    pub why: EndReason,
    /// Packets and bytes (IP length), from the client and from the backend.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub at_ms: u64,
}

/// How a connection's state change ends it, if it does: the first moment both
/// sides have sent FIN, or either RST.
pub(super) fn ended_by(before: State, after: State) -> Option<EndReason> {
    let done = |s| matches!(s, State::TimeWait | State::Close);
    if done(before) {
        return None;
    }
    match after {
        State::TimeWait => Some(EndReason::Fin),
        State::Close => Some(EndReason::Rst),
        _ => None,
    }
}

/// Whether a connection removed from the table in state `s` has had its end
/// recorded already ([`ended_by`]).
pub(super) fn already_ended(s: State) -> bool {
    matches!(s, State::TimeWait | State::Close)
}

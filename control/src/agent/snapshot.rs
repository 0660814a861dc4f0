//! What an agent keeps across a restart beside the store, in its data dir:
//! - `conntrack.json`: the balancer's connections, written when the agent stops
//!   and read back (then removed) when it starts, so a connection through a VIP
//!   or a published port goes on with the same backend and way back. A killed
//!   agent writes none; its connections are picked up mid-stream instead.
//! - `ports.json`: the endpoints this node has an interface for, rewritten on
//!   every change. Interfaces are persistent TAPs, so an endpoint removed while
//!   the agent was down (or killed) would leave its TAP behind; a starting
//!   agent deletes those of endpoints the store no longer has here.

use super::Agent;
use crate::state::Endpoint;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;
use vxmesh_dataplane::conntrack::{Entry, Key, State};

pub const CONNTRACK_FILE: &str = "conntrack.json";
pub const PORTS_FILE: &str = "ports.json";

/// A connection key as the snapshot writes it (serde's remote derive: the
/// dataplane crate has no serde).
#[derive(Serialize, Deserialize)]
#[serde(remote = "Key")]
struct KeyDef {
    zone: u32,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

#[derive(Serialize, Deserialize)]
struct SavedConn {
    #[serde(with = "KeyDef")]
    orig: Key,
    #[serde(with = "KeyDef")]
    reply: Key,
    service: u32,
    backend: u32,
    state: String,
    next_seq: [u32; 2],
    via: Option<[u8; 6]>,
}

const STATES: [(State, &str); 8] = [
    (State::SynSent, "syn_sent"),
    (State::SynRecv, "syn_recv"),
    (State::Established, "established"),
    (State::FinWait, "fin_wait"),
    (State::TimeWait, "time_wait"),
    (State::Close, "close"),
    (State::Unreplied, "unreplied"),
    (State::Replied, "replied"),
];

/// Writes the connections to `dir/conntrack.json` (replacing it whole).
pub fn save_connections(dir: &Path, entries: &[Entry]) -> std::io::Result<usize> {
    let saved: Vec<SavedConn> = entries
        .iter()
        .map(|e| SavedConn {
            orig: e.orig,
            reply: e.reply,
            service: e.service,
            backend: e.backend,
            state: STATES
                .iter()
                .find(|(s, _)| *s == e.state)
                .map(|(_, n)| n.to_string())
                .unwrap_or_default(),
            next_seq: e.next_seq,
            via: e.via,
        })
        .collect();
    write_whole(&dir.join(CONNTRACK_FILE), &serde_json::to_vec(&saved)?)?;
    Ok(saved.len())
}

/// Reads and removes `dir/conntrack.json`: the connections it held (none if it
/// is missing or unreadable, which is logged; a restart then picks connections
/// up mid-stream).
pub fn take_connections(dir: &Path) -> Vec<Entry> {
    let path = dir.join(CONNTRACK_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    let _ = std::fs::remove_file(&path);
    let saved: Vec<SavedConn> = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable connection snapshot");
            return Vec::new();
        }
    };
    saved
        .iter()
        .filter_map(|c| {
            let state = STATES.iter().find(|(_, n)| *n == c.state)?.0;
            Some(Entry {
                orig: c.orig,
                reply: c.reply,
                service: c.service,
                backend: c.backend,
                state,
                last_ms: 0,
                next_seq: c.next_seq,
                via: c.via,
            })
        })
        .collect()
}

/// Records the endpoints with an interface here.
pub fn save_ports(dir: &Path, eps: &[&Endpoint]) {
    let path = dir.join(PORTS_FILE);
    let r = serde_json::to_vec(eps)
        .map_err(std::io::Error::other)
        .and_then(|b| write_whole(&path, &b));
    if let Err(e) = r {
        tracing::warn!(file = %path.display(), error = %e, "cannot record this node's interfaces");
    }
}

/// The endpoints an earlier run had interfaces for.
pub fn recorded_ports(dir: &Path) -> Vec<Endpoint> {
    std::fs::read(dir.join(PORTS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes a file so a crash leaves either the old or the new one.
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Agent {
    /// Saves the balancer's connections for the next run (on a clean stop).
    pub fn save_connections(&self) {
        let entries = self.worker.connections();
        match save_connections(&self.data_dir, &entries) {
            Ok(n) => tracing::info!(connections = n, "connections saved for the next run"),
            Err(e) => tracing::warn!(error = %e, "cannot save the connections"),
        }
    }

    /// Puts back the connections the last run saved.
    pub fn restore_connections(&self) {
        let saved = take_connections(&self.data_dir);
        if !saved.is_empty() {
            let n = self.worker.restore_connections(&saved);
            tracing::info!(connections = n, "connections restored from the last run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_come_back_as_they_were_saved_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let k = |sport| Key {
            zone: 9,
            proto: 6,
            src: std::net::Ipv4Addr::new(10, 0, 0, 2).into(),
            dst: std::net::Ipv4Addr::new(10, 0, 0, 100).into(),
            sport,
            dport: 80,
        };
        let entries: Vec<Entry> = STATES
            .iter()
            .enumerate()
            .map(|(i, (state, _))| Entry {
                orig: k(1000 + i as u16),
                reply: Key {
                    src: std::net::Ipv4Addr::new(10, 0, 0, 5).into(),
                    ..k(1000 + i as u16).reversed()
                },
                service: 3,
                backend: i as u32,
                state: *state,
                last_ms: 0,
                next_seq: [i as u32, 7],
                via: (i % 2 == 0).then_some([2, 0, 0, 0, 0, i as u8]),
            })
            .collect();
        assert_eq!(save_connections(dir.path(), &entries).unwrap(), 8);
        assert_eq!(take_connections(dir.path()), entries);
        assert!(
            take_connections(dir.path()).is_empty(),
            "a snapshot is used once"
        );
        std::fs::write(dir.path().join(CONNTRACK_FILE), b"{not json").unwrap();
        assert!(take_connections(dir.path()).is_empty());
    }
}

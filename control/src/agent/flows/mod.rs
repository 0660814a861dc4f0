//! `vxmesh flows`: the agent's side of flow logs. A thread drains every
//! worker's ring ([`vxmesh_dataplane::flowlog`]) every [`DRAIN_EVERY`],
//! names what the records hold (network, service, backend task), joins each
//! connection's end to its set-up (one record per connection, with the policy
//! that let it in and how long it lasted), keeps the last [`HISTORY`] for
//! `vxmesh flows`, streams them to `vxmesh flows --follow`, and writes them to
//! `--flow-log PATH` when asked ([`export`]).

pub mod export;
pub mod record;

use record::{Filter, FlowRecord, Names};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vxmesh_dataplane::conntrack::Key;
use vxmesh_dataplane::flowlog::{FlowEvent, Kind};

/// How often the workers' rings are drained.
pub const DRAIN_EVERY: Duration = Duration::from_millis(150);
/// Records (ended connections and drops) kept for `vxmesh flows`: a few MiB
/// at most (a record with its names is some hundreds of bytes), so a flood
/// of connections costs the agent bounded memory (`flood.rs`).
pub const HISTORY: usize = 4096;
/// Connections set up and not ended yet, kept to join their ends to, at most
/// (and never more than the connection table holds: see [`Flows::new`]).
pub const OPEN_MAX: usize = 65_536;
/// An open connection not heard of for this long is forgotten (past the
/// longest timeout of the connection table, 15 minutes: its end was lost).
const OPEN_FORGET_MS: u64 = 16 * 60 * 1000;
/// Records taken from one worker per drain, at most (a ring's size).
const DRAIN_MAX: usize = 1 << 16;
/// Records in flight to each `--follow` reader; a slower reader misses some
/// (and is told how many).
const FOLLOW_QUEUE: usize = 4096;

/// Where flow records are written (`--flow-log PATH`, and its size, count
/// and format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub path: PathBuf,
    pub max_size: u64,
    pub keep: usize,
    pub format: export::Format,
}

/// What the agent keeps of flow records.
pub struct Flows {
    book: Mutex<Book>,
    /// Open connections kept at most: no more than the connection table
    /// holds, since an open one without its entry ended unseen (its end
    /// lost to a full ring under a flood).
    open_max: usize,
    follow: tokio::sync::broadcast::Sender<Arc<FlowRecord>>,
}

#[derive(Default)]
struct Book {
    history: VecDeque<FlowRecord>,
    open: FxHashMap<Key, FlowRecord>,
}

impl Default for Flows {
    fn default() -> Self {
        Self::new(OPEN_MAX)
    }
}

impl Flows {
    /// `conntrack_max`: the connection table's size (`--conntrack-max`).
    pub fn new(conntrack_max: usize) -> Self {
        Flows {
            book: Mutex::default(),
            open_max: conntrack_max.clamp(1, OPEN_MAX),
            follow: tokio::sync::broadcast::channel(FOLLOW_QUEUE).0,
        }
    }

    /// The last `limit` records `f` matches, oldest first: connections ended
    /// and packets dropped, and connections still open (`event: open`).
    pub fn list(&self, f: &Filter, limit: usize) -> Vec<FlowRecord> {
        let Ok(b) = self.book.lock() else {
            return Vec::new();
        };
        let mut out: Vec<FlowRecord> = b
            .history
            .iter()
            .chain(b.open.values())
            .filter(|r| f.matches(r))
            .cloned()
            .collect();
        out.sort_by_key(|r| r.time_unix_ms);
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
        out
    }

    /// Every record from now on, as it comes (set-ups, ends and drops).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<FlowRecord>> {
        self.follow.subscribe()
    }

    /// Takes in one drain's events (`epoch_ms`: the wall-clock time of the
    /// workers' clock's zero); returns the records to write out: connections
    /// ended, whole, and drops.
    pub fn ingest(
        &self,
        events: &mut [FlowEvent],
        names: &Names<'_>,
        epoch_ms: u64,
    ) -> Vec<FlowRecord> {
        // rings are per worker: a connection's set-up and end may come from
        // two of them, so the drain is put in time order (set-ups first)
        events.sort_by_key(|e| (e.at_ms, !matches!(e.kind, Kind::Open)));
        let mut done = Vec::new();
        let Ok(mut b) = self.book.lock() else {
            return done;
        };
        let now = epoch_ms + events.last().map_or(0, |e| e.at_ms);
        b.open
            .retain(|_, r| now.saturating_sub(r.time_unix_ms) < OPEN_FORGET_MS);
        for e in events.iter() {
            let mut r = names.record(e, epoch_ms + e.at_ms);
            match e.kind {
                Kind::Open => {
                    if b.open.len() < self.open_max {
                        b.open.insert(e.key, r.clone());
                    }
                    let _ = self.follow.send(Arc::new(r));
                    continue;
                }
                Kind::End(_) => {
                    if let Some(o) = b.open.remove(&e.key) {
                        r.duration_ms = Some(r.time_unix_ms.saturating_sub(o.time_unix_ms));
                        r.policy = o.policy.or(r.policy);
                        r.verdict = o.verdict;
                        r.backend = r.backend.or(o.backend);
                    }
                }
                Kind::Drop(_) => {}
            }
            if b.history.len() >= HISTORY {
                b.history.pop_front();
            }
            b.history.push_back(r.clone());
            let _ = self.follow.send(Arc::new(r.clone()));
            done.push(r);
        }
        done
    }
}

/// Drains the workers' rings into `agent`'s flow log every [`DRAIN_EVERY`],
/// and writes what it takes to `export`'s file, if any, for as long as the
/// process runs.
pub fn spawn(agent: Arc<super::Agent>, export: Option<ExportConfig>) -> std::io::Result<()> {
    let Some(flows) = agent.flows.clone() else {
        return Ok(());
    };
    let mut file = match &export {
        Some(e) => Some((
            export::Rotating::open(&e.path, e.max_size, e.keep)?,
            e.format,
        )),
        None => None,
    };
    std::thread::Builder::new()
        .name("vxmesh-flows".into())
        .spawn(move || {
            let mut events = Vec::new();
            let mut failing = false;
            loop {
                std::thread::sleep(DRAIN_EVERY);
                events.clear();
                agent.worker.drain_flows(&mut events, DRAIN_MAX);
                if events.is_empty() {
                    continue;
                }
                let st = agent.last_state();
                let epoch_ms = epoch_of(agent.worker.clock_start());
                let done = flows.ingest(&mut events, &Names { st: &st }, epoch_ms);
                if let Some((f, format)) = file.as_mut() {
                    let r = export::lines(&done, *format, &agent.node)
                        .iter()
                        .try_for_each(|l| f.write_line(l));
                    match r {
                        Err(e) if !failing => {
                            tracing::error!(error = %e, "cannot write the flow log file; records go on to `vxmesh flows` only until it works again");
                            failing = true;
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                }
            }
        })?;
    Ok(())
}

/// The wall-clock time, in ms since the Unix epoch, of `start`.
fn epoch_of(start: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(start.elapsed().as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterState;
    use vxmesh_dataplane::flowlog::{EndReason, Verdict};

    /// A flood of connections whose ends are lost (a full ring) and of ended
    /// ones leaves the book at its bounds: the history at [`HISTORY`], the
    /// open ones at the connection table's size.
    #[test]
    fn a_flood_of_records_leaves_the_book_at_its_bounds() {
        let flows = Flows::new(100);
        let st = ClusterState::default();
        let names = Names { st: &st };
        let mut events: Vec<FlowEvent> = (0..20_000u32)
            .map(|i| FlowEvent {
                at_ms: u64::from(i),
                key: vxmesh_dataplane::conntrack::Key {
                    zone: 1,
                    proto: 6,
                    src: std::net::IpAddr::from([10, 0, 0, 1]),
                    dst: std::net::IpAddr::from([10, 0, 0, 2]),
                    sport: (i / 2) as u16,
                    // the ends are other connections': every set-up's end lost
                    dport: 80 + (i % 2) as u16,
                },
                kind: if i % 2 == 0 {
                    Kind::Open
                } else {
                    Kind::End(EndReason::Evicted)
                },
                ..Default::default()
            })
            .collect();
        flows.ingest(&mut events, &names, 1_000);
        let b = flows.book.lock().unwrap();
        assert_eq!(b.history.len(), HISTORY);
        assert_eq!(b.open.len(), 100);
    }

    #[test]
    fn an_end_is_joined_to_its_set_up_across_workers() {
        let flows = Flows::default();
        let st = ClusterState::default();
        let names = Names { st: &st };
        let mut follow = flows.subscribe();
        let open = FlowEvent {
            at_ms: 10,
            policy: 3,
            verdict: Verdict::AuditDrop,
            ..Default::default()
        };
        let end = FlowEvent {
            kind: Kind::End(EndReason::Fin),
            at_ms: 10,
            packets: [3, 2],
            ..Default::default()
        };
        // the end drained first (another worker's ring), at the same time
        let done = flows.ingest(&mut [end, open], &names, 1_000);
        assert_eq!(done.len(), 1);
        let r = &done[0];
        assert_eq!(
            (r.event.as_str(), r.verdict.as_str()),
            ("end", "audit:drop")
        );
        assert_eq!(r.policy.as_deref(), Some("3"));
        assert_eq!(r.duration_ms, Some(0));
        assert_eq!(r.time_unix_ms, 1_010);
        assert_eq!(follow.try_recv().unwrap().event, "open");
        assert_eq!(follow.try_recv().unwrap().event, "end");
        // one record for the connection, no open one left
        assert_eq!(flows.list(&Filter::default(), 100).len(), 1);
        let still = FlowEvent {
            at_ms: 20,
            ..Default::default()
        };
        assert!(flows.ingest(&mut [still], &names, 1_000).is_empty());
        let all = flows.list(&Filter::default(), 100);
        assert_eq!(
            all.iter().map(|r| r.event.as_str()).collect::<Vec<_>>(),
            ["end", "open"]
        );
        assert_eq!(
            flows.list(&Filter::default(), 1)[0].event,
            "open",
            "the last"
        );
    }
}

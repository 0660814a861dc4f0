//! The embedded store: one SQLite file, shareable by every agent on a machine.
//!
//! Objects are JSON values keyed by (kind, name); a `revision` counter moves on every
//! commit. Writes use `BEGIN IMMEDIATE`, which takes SQLite's write lock up front,
//! so the read-check-write of an allocation cannot interleave with another agent's.
//! SQLite has no cross-process notification, so `wait_change` polls the counter
//! (one indexed read every 50 ms).

use super::{Snapshot, Store, StoreError, UpdateError};
use crate::state::{ClusterState, StateError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let describe = format!("sqlite:{}", path.display());
        let err = |e: &dyn std::fmt::Display| StoreError::Unreachable {
            store: describe.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| err(&e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| err(&e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS objects (
                 kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                 PRIMARY KEY (kind, key));
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
                          INSERT OR IGNORE INTO meta (k, v) VALUES ('revision', 0);
             CREATE TABLE IF NOT EXISTS heartbeats (node TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);",
        )
        .map_err(|e| err(&e))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unreachable {
            store: self.describe(),
            reason: e.to_string(),
        }
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            reason: e.to_string(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| self.unreachable("connection lock poisoned"))
    }

    fn read(&self, conn: &Connection) -> Result<Snapshot, StoreError> {
        let revision: i64 = conn
            .query_row("SELECT v FROM meta WHERE k = 'revision'", [], |r| r.get(0))
            .map_err(|e| self.unreachable(e))?;
        let mut stmt = conn
            .prepare_cached("SELECT kind, key, value FROM objects")
            .map_err(|e| self.unreachable(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.unreachable(e))?;
        let mut st = ClusterState::default();
        for row in rows {
            let (kind, key, value) = row.map_err(|e| self.unreachable(e))?;
            match kind.as_str() {
                "network" => put(&mut st.networks, key, &value).map_err(|e| self.corrupt(e))?,
                "node" => put(&mut st.nodes, key, &value).map_err(|e| self.corrupt(e))?,
                "endpoint" => put(&mut st.endpoints, key, &value).map_err(|e| self.corrupt(e))?,
                "service" => put(&mut st.services, key, &value).map_err(|e| self.corrupt(e))?,
                "policy" => put(&mut st.policies, key, &value).map_err(|e| self.corrupt(e))?,
                // Kinds from a newer version are kept on disk and ignored here.
                _ => {}
            }
        }
        Ok(Snapshot {
            revision: revision as u64,
            state: st,
        })
    }
}

fn put<T: DeserializeOwned>(
    map: &mut BTreeMap<String, T>,
    key: String,
    value: &str,
) -> Result<(), String> {
    let v = serde_json::from_str(value).map_err(|e| format!("object {key}: {e}"))?;
    map.insert(key, v);
    Ok(())
}

/// Writes the difference between two maps of one kind; true if anything changed.
fn write_diff<T: Serialize + PartialEq>(
    tx: &rusqlite::Transaction<'_>,
    kind: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> Result<bool, String> {
    let mut changed = false;
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let json = serde_json::to_string(v).map_err(|e| e.to_string())?;
            tx.execute(
                "INSERT INTO objects (kind, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                params![kind, k, json],
            )
            .map_err(|e| e.to_string())?;
            changed = true;
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        tx.execute(
            "DELETE FROM objects WHERE kind = ?1 AND key = ?2",
            params![kind, k],
        )
        .map_err(|e| e.to_string())?;
        changed = true;
    }
    Ok(changed)
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.lock()?;
        self.read(&conn)
    }

    fn update(
        &self,
        f: &mut dyn FnMut(&mut ClusterState) -> Result<(), StateError>,
    ) -> Result<u64, UpdateError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.unreachable(e))?;
        let snap = self.read(&tx)?;
        let mut next = snap.state.clone();
        f(&mut next)?;
        let mut changed = false;
        let w = |r: Result<bool, String>| r.map_err(|e| self.unreachable(e));
        changed |= w(write_diff(
            &tx,
            "network",
            &snap.state.networks,
            &next.networks,
        ))?;
        changed |= w(write_diff(&tx, "node", &snap.state.nodes, &next.nodes))?;
        changed |= w(write_diff(
            &tx,
            "endpoint",
            &snap.state.endpoints,
            &next.endpoints,
        ))?;
        changed |= w(write_diff(
            &tx,
            "service",
            &snap.state.services,
            &next.services,
        ))?;
        changed |= w(write_diff(
            &tx,
            "policy",
            &snap.state.policies,
            &next.policies,
        ))?;
        let mut rev = snap.revision;
        if changed {
            rev += 1;
            tx.execute(
                "UPDATE meta SET v = ?1 WHERE k = 'revision'",
                params![rev as i64],
            )
            .map_err(|e| self.unreachable(e))?;
        }
        tx.commit().map_err(|e| self.unreachable(e))?;
        Ok(rev)
    }

    fn wait_change(&self, since: u64, timeout: Duration) -> Result<u64, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let rev: Option<i64> = {
                let conn = self.lock()?;
                conn.query_row("SELECT v FROM meta WHERE k = 'revision'", [], |r| r.get(0))
                    .optional()
                    .map_err(|e| self.unreachable(e))?
            };
            let rev = rev.unwrap_or(0) as u64;
            if rev != since || Instant::now() >= deadline {
                return Ok(rev);
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn heartbeat(&self, node: &str) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO heartbeats (node, at_ms) VALUES (?1, ?2)
             ON CONFLICT (node) DO UPDATE SET at_ms = excluded.at_ms",
            params![node, now],
        )
        .map_err(|e| self.unreachable(e))?;
        Ok(())
    }

    fn heartbeats(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT node, at_ms FROM heartbeats")
            .map_err(|e| self.unreachable(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.unreachable(e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (n, at) = row.map_err(|e| self.unreachable(e))?;
            out.insert(n, at.max(0) as u64);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ops, EndpointSpec, NetworkSpec, Node};
    use crate::store::transact;
    use std::sync::Arc;

    fn node(name: &str, addr: &str) -> Node {
        Node::new(name, addr.parse().unwrap())
    }

    #[test]
    fn commits_all_or_nothing_and_bumps_revision() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(s.load().unwrap().revision, 0);
        let spec = NetworkSpec {
            name: "a".into(),
            ..Default::default()
        };
        let n = transact(&s, |st| ops::create_network(st, &spec)).unwrap();
        assert_eq!(s.load().unwrap().revision, 1);
        assert_eq!(s.load().unwrap().state.networks["a"], n);
        // a failing operation leaves no trace
        let r = s.update(&mut |st| {
            st.networks.clear();
            Err(StateError::Invalid("no".into()))
        });
        assert!(matches!(r, Err(UpdateError::State(_))));
        let snap = s.load().unwrap();
        assert_eq!(snap.revision, 1);
        assert_eq!(snap.state.networks.len(), 1);
        // a no-op does not move the revision
        s.update(&mut |_| Ok(())).unwrap();
        assert_eq!(s.load().unwrap().revision, 1);
    }

    #[test]
    fn two_openers_of_one_file_never_hand_out_one_address_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let a = Arc::new(SqliteStore::open(&path).unwrap());
        transact(&*a, |st| {
            ops::upsert_node(st, node("n1", "192.0.2.1"))?;
            ops::upsert_node(st, node("n2", "192.0.2.2"))?;
            ops::create_network(
                st,
                &NetworkSpec {
                    name: "a".into(),
                    ..Default::default()
                },
            )
        })
        .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let s = SqliteStore::open(&path).unwrap();
                    for i in 0..10 {
                        let spec = EndpointSpec {
                            network: "a".into(),
                            netns: format!("ns{t}-{i}"),
                            ..Default::default()
                        };
                        transact(&s, |st| {
                            ops::create_endpoint(
                                st,
                                &spec,
                                if t % 2 == 0 { "n1" } else { "n2" },
                                format!("{t}-{i}"),
                                crate::state::ipam::random_mac,
                            )
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = a.load().unwrap().state;
        let mut ips: Vec<_> = st.endpoints.values().flat_map(|e| e.ips.clone()).collect();
        assert_eq!(ips.len(), 40);
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 40, "an address was handed out twice");
    }

    #[test]
    fn wait_change_sees_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let a = SqliteStore::open(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        let rev = a.load().unwrap().revision;
        assert_eq!(a.wait_change(rev, Duration::from_millis(100)).unwrap(), rev);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            transact(&b, |st| ops::upsert_node(st, node("n9", "192.0.2.9"))).unwrap();
        });
        let new = a.wait_change(rev, Duration::from_secs(10)).unwrap();
        assert!(new > rev);
        t.join().unwrap();
    }

    #[test]
    fn unreachable_and_bad_urls_are_clear_errors() {
        let e = crate::store::open("sqlite:/proc/vxmesh/nope.db")
            .err()
            .unwrap();
        assert!(e.to_string().contains("unreachable"), "{e}");
        let e = crate::store::open("mysql://x").err().unwrap();
        assert!(e.to_string().contains("sqlite:PATH"), "{e}");
    }
}

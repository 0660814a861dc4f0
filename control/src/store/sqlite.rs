//! The embedded store: one SQLite file, shareable by every agent on a machine.
//!
//! Objects are JSON values keyed by (kind, name); a `revision` counter moves on every
//! commit. Writes use `BEGIN IMMEDIATE`, which takes SQLite's write lock up front,
//! so the read-check-write of an allocation cannot interleave with another agent's.
//! SQLite has no cross-process notification, so `wait_change` polls the counter
//! (one indexed read every 50 ms).

use super::{changes, Change, Snapshot, Store, StoreError, UpdateError};
use crate::state::validate::InvalidRow;
use crate::state::{ClusterState, StateError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
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
        // As bytes: a row a hand edit left unreadable (not text, not UTF-8) is
        // one invalid row, not a failed read.
        let text = |r: &rusqlite::Row<'_>, i| -> rusqlite::Result<Result<String, String>> {
            Ok(match r.get_ref(i)?.as_bytes_or_null() {
                Ok(Some(b)) => String::from_utf8(b.to_vec()).map_err(|_| "it is not UTF-8".into()),
                _ => Err("it is not text".into()),
            })
        };
        let rows = stmt
            .query_map([], |r| Ok((text(r, 0)?, text(r, 1)?, text(r, 2)?)))
            .map_err(|e| self.unreachable(e))?;
        let mut good = Vec::new();
        let mut unreadable = Vec::new();
        for row in rows {
            match row.map_err(|e| self.unreachable(e))? {
                (Ok(kind), Ok(key), Ok(value)) => good.push((kind, key, value)),
                (kind, key, value) => {
                    let reason = [&kind, &key, &value]
                        .into_iter()
                        .find_map(|x| x.as_ref().err().cloned())
                        .unwrap_or_default();
                    unreadable.push(InvalidRow::new(
                        &kind.unwrap_or_else(|_| "?".into()),
                        &key.unwrap_or_else(|_| "?".into()),
                        reason,
                    ));
                }
            }
        }
        let mut snap = Snapshot::from_rows(
            revision as u64,
            good.iter()
                .map(|(k, key, v)| (k.as_str(), key.clone(), v.as_str())),
        );
        snap.invalid.extend(unreadable);
        snap.invalid.sort();
        Ok(snap)
    }
}

/// Writes one commit's changes; true if there were any.
fn write(tx: &rusqlite::Transaction<'_>, changes: &[Change]) -> Result<bool, String> {
    for c in changes {
        match c {
            Change::Put { kind, key, json } => tx.execute(
                "INSERT INTO objects (kind, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                params![kind, key, json],
            ),
            Change::Delete { kind, key } => tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            ),
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(!changes.is_empty())
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
        let diff = changes(&snap.state, &next).map_err(|e| self.corrupt(e))?;
        let changed = write(&tx, &diff).map_err(|e| self.unreachable(e))?;
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

    fn heartbeat(&self, node: &str, beat: u64) -> Result<(), StoreError> {
        let now = i64::try_from(beat).unwrap_or(i64::MAX);
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

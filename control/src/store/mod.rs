//! Where the desired state lives. One trait, so the rest of the control plane does
//! not care whether it is SQLite (embedded; agents on one machine share a file) or,
//! later, etcd. A store only has to load the state, apply a change atomically
//! (all of it or none, serialised against every other writer, on any node), and
//! say when the state changed.

pub mod sqlite;

use crate::state::{ClusterState, StateError};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {store} is unreachable: {reason}")]
    Unreachable { store: String, reason: String },
    #[error("store {store} holds data this version cannot read: {reason}")]
    Corrupt { store: String, reason: String },
    #[error("unsupported --store {0:?}: use sqlite:PATH (etcd:// comes with the cluster store)")]
    BadUrl(String),
}

#[derive(Debug, Error)]
pub enum UpdateError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The state at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub state: ClusterState,
}

pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Runs `f` on the current state and commits what it changed, atomically and
    /// serialised against every other writer; commits nothing if `f` fails.
    /// Returns the new revision.
    fn update(
        &self,
        f: &mut dyn FnMut(&mut ClusterState) -> Result<(), StateError>,
    ) -> Result<u64, UpdateError>;

    /// Blocks until the revision differs from `since` or `timeout` passes; returns
    /// the revision then.
    fn wait_change(&self, since: u64, timeout: Duration) -> Result<u64, StoreError>;

    /// What to print in errors and logs (never secrets).
    fn describe(&self) -> String;

    /// Records that `node`'s agent is alive now. Kept apart from the revisioned
    /// state: heartbeats must not make every agent reload everything.
    fn heartbeat(&self, node: &str) -> Result<(), StoreError>;

    /// Every node's last heartbeat, in Unix milliseconds.
    fn heartbeats(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError>;
}

/// Runs an operation that returns a value inside [`Store::update`].
pub fn transact<T>(
    store: &dyn Store,
    mut f: impl FnMut(&mut ClusterState) -> Result<T, StateError>,
) -> Result<T, UpdateError> {
    let mut out = None;
    store.update(&mut |st| {
        out = Some(f(st)?);
        Ok(())
    })?;
    out.ok_or_else(|| {
        UpdateError::Store(StoreError::Corrupt {
            store: store.describe(),
            reason: "update committed without running".into(),
        })
    })
}

/// Opens the store an agent's `--store` names.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.into()));
        }
        return Ok(Box::new(sqlite::SqliteStore::open(std::path::Path::new(
            path,
        ))?));
    }
    Err(StoreError::BadUrl(url.into()))
}

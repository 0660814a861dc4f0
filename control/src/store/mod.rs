//! Where the desired state lives. One trait, so the rest of the control plane does
//! not care whether it is SQLite (embedded; agents on one machine share a file) or
//! etcd (clusters that span machines). A store only has to load the state, apply a
//! change atomically (all of it or none, serialised against every other writer, on
//! any node), and say when the state changed.
//!
//! Both stores keep one object per (kind, name), as JSON, and a revision counter
//! that moves by one on every commit that changed something; [`Snapshot::from_rows`]
//! and [`changes`] are the one codec between [`ClusterState`] and those objects.
//! Reading checks every object as the write path would have (see
//! [`crate::state::validate`]): a bad row is left out and listed, never fatal.

#![forbid(unsafe_code)]

pub mod etcd;
pub mod sqlite;
#[cfg(test)]
mod tests;

use crate::state::validate::InvalidRow;
use crate::state::{ClusterState, StateError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {store} is unreachable: {reason} (check that it runs and this node reaches it, then retry)")]
    Unreachable { store: String, reason: String },
    #[error("store {store} holds data this version cannot read: {reason}")]
    Corrupt { store: String, reason: String },
    #[error("unsupported --store {0:?}: use sqlite:PATH, etcd://HOST:PORT[,HOST:PORT] or etcds://HOST:PORT[,HOST:PORT]")]
    BadUrl(String),
    /// The store's settings do not fit together, or a file they name cannot be read.
    #[error("--store {store}: {reason}")]
    Config { store: String, reason: String },
    /// Plaintext etcd beyond this machine, without `--store-insecure`.
    #[error(
        "--store {0} is plaintext etcd on a non-loopback address: anyone on the path \
         can read the cluster state and rewrite it (nodes' addresses and WireGuard \
         keys included). Use \
         etcds://HOST:PORT with --store-ca, --store-cert and --store-key (see \
         docs/operations.md, \"Securing the etcd store\"), or pass --store-insecure \
         on a network you trust"
    )]
    Insecure(String),
    #[error("store {store} refused the change: {reason}")]
    Refused { store: String, reason: String },
    /// The store would not let this agent in (credentials, permissions).
    #[error("store {store} refused this agent: {reason}")]
    Denied { store: String, reason: String },
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
    /// The valid rows only (see [`crate::state::validate`]).
    pub state: ClusterState,
    /// The rows left out of `state`, and why, in a stable order.
    pub invalid: Vec<InvalidRow>,
}

impl Snapshot {
    /// Builds a snapshot from every stored row, valid or not: a row that does
    /// not parse, or that the write path would have refused, is left out of the
    /// state and listed, so one bad row neither fails every read (and with it
    /// every later change) nor reaches the dataplane.
    pub fn from_rows<'a>(
        revision: u64,
        rows: impl IntoIterator<Item = (&'a str, String, &'a str)>,
    ) -> Snapshot {
        let mut state = ClusterState::default();
        let mut invalid = Vec::new();
        for (kind, key, value) in rows {
            if let Err(reason) = objects(&mut state, kind, key.clone(), value) {
                invalid.push(InvalidRow::new(kind, &key, reason));
            }
        }
        invalid.extend(crate::state::validate::sanitize(&mut state));
        invalid.sort();
        Snapshot {
            revision,
            state,
            invalid,
        }
    }
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

    /// Records that `node`'s agent is alive now, as the value `beat` (its Unix
    /// ms, made to move on every beat). Kept apart from the revisioned state:
    /// heartbeats must not make every agent reload everything. Readers judge
    /// liveness by the value changing, never by comparing it with their clock.
    fn heartbeat(&self, node: &str, beat: u64) -> Result<(), StoreError>;

    /// Every node's last heartbeat value.
    fn heartbeats(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError>;

    /// The error for a store that could not be reached (or answer).
    fn unreachable(&self, e: impl std::fmt::Display) -> StoreError
    where
        Self: Sized,
    {
        StoreError::Unreachable {
            store: self.describe(),
            reason: e.to_string(),
        }
    }

    /// The error for stored data this version cannot read.
    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError
    where
        Self: Sized,
    {
        StoreError::Corrupt {
            store: self.describe(),
            reason: e.to_string(),
        }
    }
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

/// One stored object's change, as a commit writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        kind: &'static str,
        key: String,
        json: String,
    },
    Delete {
        kind: &'static str,
        key: String,
    },
}

/// What turns `old` into `new`, object by object (nothing for what did not change).
pub fn changes(old: &ClusterState, new: &ClusterState) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    diff_kind(&mut out, "network", &old.networks, &new.networks)?;
    diff_kind(&mut out, "node", &old.nodes, &new.nodes)?;
    diff_kind(&mut out, "endpoint", &old.endpoints, &new.endpoints)?;
    diff_kind(&mut out, "service", &old.services, &new.services)?;
    diff_kind(&mut out, "policy", &old.policies, &new.policies)?;
    Ok(out)
}

fn diff_kind<T: Serialize + PartialEq>(
    out: &mut Vec<Change>,
    kind: &'static str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> Result<(), String> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let json = serde_json::to_string(v).map_err(|e| format!("{kind} {k}: {e}"))?;
            out.push(Change::Put {
                kind,
                key: k.clone(),
                json,
            });
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(Change::Delete {
            kind,
            key: k.clone(),
        });
    }
    Ok(())
}

/// Puts one stored object into `st`. Kinds from a newer version are ignored (and
/// kept in the store); an object that does not parse is an error saying why.
fn objects(st: &mut ClusterState, kind: &str, key: String, value: &str) -> Result<(), String> {
    fn put<T: DeserializeOwned>(
        map: &mut BTreeMap<String, T>,
        key: String,
        value: &str,
    ) -> Result<(), String> {
        let v = serde_json::from_str(value).map_err(|e| format!("it does not parse: {e}"))?;
        map.insert(key, v);
        Ok(())
    }
    match kind {
        "network" => put(&mut st.networks, key, value),
        "node" => put(&mut st.nodes, key, value),
        "endpoint" => put(&mut st.endpoints, key, value),
        "service" => put(&mut st.services, key, value),
        "policy" => put(&mut st.policies, key, value),
        _ => Ok(()),
    }
}

/// How to reach a networked store safely: the `--store-*` flags. Only etcd uses
/// them; SQLite is a local file and takes none.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// The CA that signed etcd's server certificate (PEM); needed for etcds://.
    pub ca: Option<std::path::PathBuf>,
    /// This agent's client certificate and its key (PEM), for etcd's
    /// `--client-cert-auth`; both or neither.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// An etcd user and password, for etcd with `auth enable`; both or neither.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Allow plaintext etcd:// to a non-loopback address.
    pub insecure: bool,
}

/// Never prints the password.
impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl StoreOptions {
    fn any_etcd_setting(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some() || self.user.is_some()
    }
}

/// Opens the store `url` names with no `--store-*` settings (SQLite, or etcd on
/// loopback).
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default())
}

/// Opens the store an agent's `--store` names, with its `--store-*` settings.
pub fn open_with(url: &str, opts: &StoreOptions) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.into()));
        }
        if opts.any_etcd_setting() {
            return Err(StoreError::Config {
                store: url.into(),
                reason: "--store-ca, --store-cert, --store-key and --store-user are for etcd; \
                         SQLite is a local file"
                    .into(),
            });
        }
        return Ok(Box::new(sqlite::SqliteStore::open(std::path::Path::new(
            path,
        ))?));
    }
    if url.starts_with("etcd://") || url.starts_with("etcds://") {
        return Ok(Box::new(etcd::EtcdStore::open_with(url, opts)?));
    }
    Err(StoreError::BadUrl(url.into()))
}

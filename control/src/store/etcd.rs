//! The cluster store: etcd (`--store etcds://HOST:PORT[,HOST:PORT]`, or plaintext
//! `etcd://`), for agents on machines that share no file.
//!
//! The store holds every node's WireGuard public key and address, and whoever
//! writes to it steers traffic, so beyond loopback it is spoken to over TLS
//! (`etcds://`, the CA in `--store-ca`) with this agent's client certificate
//! (`--store-cert`, `--store-key`, for etcd's `--client-cert-auth`) and, where
//! etcd has `auth enable`, a user and password. Plaintext to another machine is
//! refused unless `--store-insecure` says the network is trusted ([`connect`]).
//!
//! Layout under `/vxmesh/`:
//! - `state/KIND/NAME`: one JSON object each, as SQLite keeps them;
//! - `state/revision`: the commit counter ([`Snapshot::revision`]), moved by one in
//!   the same transaction as every commit that changed something;
//! - `heartbeat/NODE`: the node's last heartbeat (Unix ms), attached to a lease the
//!   agent keeps alive, so a stopped agent's record goes by itself.
//!
//! A commit is optimistic: read the state (one range read, so one revision), apply
//! the change, then write it in a transaction that holds only if `state/revision`
//! was not modified since the read; otherwise read again and retry. Every writer on
//! every node moves that one key, so commits are serialised as SQLite's
//! `BEGIN IMMEDIATE` serialises them, and two CLI calls on two nodes cannot hand out
//! one address or VNI twice.
//!
//! Changes are followed with a watch on `state/revision`, never by polling. The
//! watch resumes from the etcd revision after the last event it saw; after a
//! reconnect the counter is read again first, so a change made while the watch was
//! down (or compacted away) is still seen, and since a reader always reloads the
//! whole state at one revision nothing is applied twice.
//!
//! etcd-client is async; the [`Store`] trait is blocking (the agent calls it from
//! blocking threads). The store owns a small runtime on a thread of its own and
//! blocks on it, so it works from any thread that is not itself async.

mod connect;

use super::{changes, Change, Snapshot, Store, StoreError, StoreOptions, UpdateError};
use crate::state::validate::InvalidRow;
use crate::state::{ClusterState, StateError};
pub(crate) use connect::endpoints;
use connect::{check_plaintext, connect_options, explain, reason};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

const STATE: &str = "/vxmesh/state/";
const REVISION: &str = "/vxmesh/state/revision";
const HEARTBEAT: &str = "/vxmesh/heartbeat/";
/// How long a heartbeat record outlives its agent. Liveness is judged on the
/// heartbeat value changing; the lease only clears a dead agent's record away.
const LEASE_TTL_S: i64 = 10;
/// Connecting and each request give up after these, so a CLI call during an
/// outage says "unreachable" promptly instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent writers retry a lost race this many times before giving up.
const MAX_ATTEMPTS: u32 = 64;
/// etcd refuses a transaction of more than `--max-txn-ops` (default 128)
/// operations; a bigger change is refused here with a clear reason.
const MAX_TXN_OPS: usize = 128;

/// What the watcher knows of the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watched {
    /// Not connected yet, or the connection was lost (the reason).
    Down(String),
    Counter(u64),
}

/// The lease this agent's heartbeats hang on.
struct Lease {
    id: i64,
    keeper: etcd_client::LeaseKeeper,
    replies: etcd_client::LeaseKeepAliveStream,
}

pub struct EtcdStore {
    url: String,
    /// etcds://, for what errors say.
    tls: bool,
    client: Client,
    rt: tokio::runtime::Handle,
    /// Dropping it stops the runtime's thread.
    _stop: tokio::sync::oneshot::Sender<()>,
    watched: watch::Receiver<Watched>,
    lease: tokio::sync::Mutex<Option<Lease>>,
}

impl EtcdStore {
    /// Parses `etcd[s]://H:P[,H:P]`, checks the settings and starts following
    /// the counter. Does not fail when etcd is down (calls will say so), except
    /// with a user, whose password etcd must check first; fails on a malformed
    /// URL, settings that do not fit it, or a certificate file it cannot read.
    pub fn open_with(url: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        let eps = endpoints(url)?;
        check_plaintext(url, &eps, opts.insecure)?;
        let options = connect_options(url, &eps, opts)?;
        let (rt_tx, rt_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let describe = url.to_string();
        std::thread::Builder::new()
            .name("vxmesh-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("vxmesh-etcd-rt")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = rt_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = rt_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| StoreError::Unreachable {
                store: describe.clone(),
                reason: format!("cannot start the etcd client thread: {e}"),
            })?;
        let rt = rt_rx
            .recv()
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| StoreError::Unreachable {
                store: describe.clone(),
                reason,
            })?;
        // Connecting only sets up the channel, so etcd being down shows at the
        // first call; with a user it also logs in, so then it shows here.
        let client = rt
            .block_on(Client::connect(&eps.urls, Some(options)))
            .map_err(|e| explain(&describe, eps.tls, e))?;
        let (tx, watched) = watch::channel(Watched::Down("not connected yet".into()));
        rt.spawn(follow_counter(client.clone(), eps.tls, tx));
        Ok(Self {
            url: describe,
            tls: eps.tls,
            client,
            rt,
            _stop: stop,
            watched,
            lease: tokio::sync::Mutex::new(None),
        })
    }

    /// The error for a failed etcd call.
    fn fail(&self, e: etcd_client::Error) -> StoreError {
        explain(&self.url, self.tls, e)
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The state at one etcd revision, and the mod revision of the counter key
    /// (0 when no commit was ever made), which a commit's transaction compares.
    async fn read(&self) -> Result<(Snapshot, i64), StoreError> {
        let mut c = self.client.clone();
        let resp = c
            .get(STATE, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail(e))?;
        let (mut revision, mut counter_mod) = (0, 0);
        let mut rows = Vec::new();
        let mut unreadable = Vec::new();
        for kv in resp.kvs() {
            if kv.key() == REVISION.as_bytes() {
                let value = kv.value_str().map_err(|e| self.corrupt(e))?;
                revision = value
                    .parse()
                    .map_err(|_| self.corrupt(format!("{REVISION} holds {value:?}")))?;
                counter_mod = kv.mod_revision();
                continue;
            }
            let key = String::from_utf8_lossy(kv.key());
            let Some((kind, name)) = key
                .strip_prefix(STATE)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            match kv.value_str() {
                Ok(v) => rows.push((kind.to_string(), name.to_string(), v)),
                Err(_) => unreadable.push(InvalidRow::new(kind, name, "it is not UTF-8")),
            }
        }
        let mut snap = Snapshot::from_rows(
            revision,
            rows.iter().map(|(k, n, v)| (k.as_str(), n.clone(), *v)),
        );
        snap.invalid.extend(unreadable);
        snap.invalid.sort();
        Ok((snap, counter_mod))
    }

    /// One attempt at a commit: `Ok(None)` when another writer got in first.
    async fn try_commit(
        &self,
        f: &mut dyn FnMut(&mut ClusterState) -> Result<(), StateError>,
    ) -> Result<Option<u64>, UpdateError> {
        let (snap, counter_mod) = self.read().await?;
        let mut next = snap.state.clone();
        f(&mut next)?;
        let diff = changes(&snap.state, &next).map_err(|e| self.corrupt(e))?;
        if diff.is_empty() {
            return Ok(Some(snap.revision));
        }
        if diff.len() + 1 > MAX_TXN_OPS {
            return Err(StoreError::Refused {
                store: self.describe(),
                reason: format!(
                    "the change touches {} objects, more than one etcd transaction takes \
                     ({MAX_TXN_OPS}); make it in smaller steps",
                    diff.len()
                ),
            }
            .into());
        }
        let rev = snap.revision + 1;
        let mut ops: Vec<TxnOp> = diff
            .iter()
            .map(|c| match c {
                Change::Put { kind, key, json } => {
                    TxnOp::put(format!("{STATE}{kind}/{key}"), json.as_str(), None)
                }
                Change::Delete { kind, key } => TxnOp::delete(format!("{STATE}{kind}/{key}"), None),
            })
            .collect();
        ops.push(TxnOp::put(REVISION, rev.to_string(), None));
        let unchanged = if counter_mod == 0 {
            Compare::version(REVISION, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(REVISION, CompareOp::Equal, counter_mod)
        };
        let mut c = self.client.clone();
        let resp = c
            .txn(Txn::new().when([unchanged]).and_then(ops))
            .await
            .map_err(|e| self.fail(e))?;
        Ok(resp.succeeded().then_some(rev))
    }

    async fn beat(&self, node: &str, beat: u64) -> Result<(), etcd_client::Error> {
        let mut lease = self.lease.lock().await;
        let r = self.beat_with(node, beat, &mut lease).await;
        if r.is_err() {
            // The lease's stream may be broken with the connection: start afresh.
            *lease = None;
        }
        r
    }

    async fn beat_with(
        &self,
        node: &str,
        beat: u64,
        lease: &mut Option<Lease>,
    ) -> Result<(), etcd_client::Error> {
        let mut c = self.client.clone();
        // Refresh the lease; a lease etcd forgot (expired in an outage) is replaced.
        let alive = match lease.as_mut() {
            Some(l) => {
                l.keeper.keep_alive().await?;
                matches!(l.replies.message().await?, Some(r) if r.ttl() > 0)
            }
            None => false,
        };
        if !alive {
            let id = c.lease_grant(LEASE_TTL_S, None).await?.id();
            let (keeper, replies) = c.lease_keep_alive(id).await?;
            *lease = Some(Lease {
                id,
                keeper,
                replies,
            });
        }
        let id = lease.as_ref().map(|l| l.id).unwrap_or_default();
        c.put(
            format!("{HEARTBEAT}{node}"),
            beat.to_string(),
            Some(PutOptions::new().with_lease(id)),
        )
        .await?;
        Ok(())
    }
}

/// Keeps `tx` at the counter's latest value while etcd answers, and `Down` while
/// it does not; reconnects forever.
async fn follow_counter(mut client: Client, tls: bool, tx: watch::Sender<Watched>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        let reason = match follow_once(&mut client, &tx).await {
            Ok(()) => "the watch ended".to_string(),
            Err(Followed::Etcd(e)) => reason(tls, &e),
            Err(Followed::Counter(e)) => e,
        };
        tx.send_replace(Watched::Down(reason.clone()));
        tracing::debug!(reason = %reason, "etcd watch lost; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Why following the counter stopped.
enum Followed {
    Etcd(etcd_client::Error),
    /// The counter holds something else than a number.
    Counter(String),
}

impl From<etcd_client::Error> for Followed {
    fn from(e: etcd_client::Error) -> Self {
        Followed::Etcd(e)
    }
}

async fn follow_once(client: &mut Client, tx: &watch::Sender<Watched>) -> Result<(), Followed> {
    let resp = client.get(REVISION, None).await?;
    let header_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let counter = match resp.kvs().first() {
        Some(kv) => parse_counter(kv.value()).map_err(Followed::Counter)?,
        None => 0,
    };
    tx.send_replace(Watched::Counter(counter));
    let mut stream = client
        .watch(
            REVISION,
            Some(WatchOptions::new().with_start_revision(header_rev + 1)),
        )
        .await?;
    while let Some(msg) = stream.message().await? {
        if msg.canceled() {
            return Err(Followed::Counter(format!(
                "watch canceled: {}",
                msg.cancel_reason()
            )));
        }
        for ev in msg.events() {
            if ev.event_type() == EventType::Put {
                if let Some(kv) = ev.kv() {
                    let counter = parse_counter(kv.value()).map_err(Followed::Counter)?;
                    tx.send_replace(Watched::Counter(counter));
                }
            }
        }
    }
    Ok(())
}

fn parse_counter(v: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{REVISION} holds {:?}", String::from_utf8_lossy(v)))
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.block_on(self.read()).map(|(s, _)| s)
    }

    fn update(
        &self,
        f: &mut dyn FnMut(&mut ClusterState) -> Result<(), StateError>,
    ) -> Result<u64, UpdateError> {
        for attempt in 0..MAX_ATTEMPTS {
            if let Some(rev) = self.block_on(self.try_commit(f))? {
                return Ok(rev);
            }
            // Lost a race: back off a little (more each time, with jitter) and redo.
            let ms = 1 + rand::random::<u64>() % (2 + u64::from(attempt) * 4);
            std::thread::sleep(Duration::from_millis(ms));
        }
        Err(StoreError::Refused {
            store: self.describe(),
            reason: format!("{MAX_ATTEMPTS} attempts lost to concurrent writers; try again"),
        }
        .into())
    }

    fn wait_change(&self, since: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut rx = self.watched.clone();
        self.block_on(async {
            let waited = tokio::time::timeout(timeout, async {
                loop {
                    match &*rx.borrow_and_update() {
                        Watched::Counter(c) if *c > since => return Ok(*c),
                        _ => {}
                    }
                    if rx.changed().await.is_err() {
                        return Err(self.unreachable("the watch stopped"));
                    }
                }
            })
            .await;
            match waited {
                Ok(r) => r,
                Err(_) => match &*rx.borrow() {
                    Watched::Counter(c) => Ok(*c),
                    Watched::Down(reason) => Err(self.unreachable(reason)),
                },
            }
        })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    fn heartbeat(&self, node: &str, beat: u64) -> Result<(), StoreError> {
        // The keep-alive is a stream, which the request timeout does not cover:
        // bound the whole beat, and start the lease afresh after one that hung.
        self.block_on(async {
            match tokio::time::timeout(REQUEST_TIMEOUT, self.beat(node, beat)).await {
                Ok(r) => r.map_err(|e| self.fail(e)),
                Err(_) => {
                    *self.lease.lock().await = None;
                    Err(self.unreachable("the lease keep-alive did not answer"))
                }
            }
        })
    }

    fn heartbeats(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut c = self.client.clone();
        let resp = self
            .block_on(c.get(HEARTBEAT, Some(GetOptions::new().with_prefix())))
            .map_err(|e| self.fail(e))?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let (Ok(key), Ok(v)) = (kv.key_str(), kv.value_str()) else {
                continue;
            };
            if let (Some(node), Ok(at)) = (key.strip_prefix(HEARTBEAT), v.parse()) {
                out.insert(node.to_string(), at);
            }
        }
        Ok(out)
    }
}

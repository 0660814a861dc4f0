//! The node's WireGuard static key: made on first start, kept in the data dir
//! with mode 0600, never logged, printed or stored anywhere else. Only the public
//! half goes to the store.
//!
//! A rotation ([`rotate`]) never lets the dataplane use a key that a crash or a
//! store outage could lose: the new key is written (and synced) beside the old
//! one, its public half is committed to the store, and only then does it become
//! `node.key` and the key the tunnels use. A store that cannot be reached leaves
//! the old key on disk, in the store and in use.

use crate::state::ops;
use crate::store::{self, Store};
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use x25519_dalek::{PublicKey, StaticSecret};

/// How long the previous key is still accepted after a rotation, while peers
/// read the new public key from the store and handshake again.
pub const PREVIOUS_KEY_GRACE: Duration = Duration::from_secs(120);

pub struct KeyRing {
    path: PathBuf,
    current: [u8; 32],
    previous: Option<([u8; 32], Instant)>,
    /// A rotation's new key, on disk as `node.key.next` until the store has
    /// its public half.
    pending: Option<[u8; 32]>,
}

fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

pub fn public_of(k: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*k)).to_bytes()
}

/// Refuses a secret file others can read: `what` names it in the error.
pub fn check_private_mode(path: &Path, what: &str, fix: &str) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{what} {} is readable or writable by its group or others (mode {mode:o}): {fix}",
            path.display()
        );
    }
    Ok(())
}

/// Reads `--preshared-key-file`: a base64 key in a file only its owner reads.
pub fn read_preshared(path: &Path) -> anyhow::Result<[u8; 32]> {
    let what = "--preshared-key-file";
    check_private_mode(path, what, "chmod 600 it")?;
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| ops::decode_key(&s))
        .with_context(|| {
            format!(
                "{what} {}: not a readable base64 WireGuard key (wg genpsk makes one)",
                path.display()
            )
        })
}

/// Makes `path` hold `k`, whole or not at all: a temporary file of mode 0600,
/// synced, renamed over it, and the directory synced so the rename survives a
/// crash.
fn write_private(path: &Path, k: &[u8; 32]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    writeln!(f, "{}", crate::state::ops::encode_key(k))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

impl KeyRing {
    /// Loads `DATA_DIR/node.key`, or makes it.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("node.key");
        let next = next_path(&path);
        if next.exists() {
            // A rotation the agent did not finish: the store may or may not have
            // its public key, but start-up registers the key loaded here anyway.
            tracing::info!(file = %next.display(), "discarding an unfinished key rotation");
            let _ = std::fs::remove_file(&next);
        }
        let current = match std::fs::read_to_string(&path) {
            Ok(s) => {
                check_private_mode(
                    &path,
                    "the node key",
                    "chmod 600 it, or remove it to get a new key",
                )?;
                crate::state::ops::decode_key(&s)
                    .with_context(|| format!("{} does not hold a WireGuard key", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = clamp(rand::random());
                write_private(&path, &k)?;
                k
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self {
            path,
            current,
            previous: None,
            pending: None,
        })
    }

    pub fn public(&self) -> [u8; 32] {
        public_of(&self.current)
    }

    /// Makes the next key and writes it (synced) as `node.key.next`; nothing
    /// uses it yet. Returns its public half.
    pub fn prepare(&mut self) -> anyhow::Result<[u8; 32]> {
        let next = clamp(rand::random());
        write_private(&next_path(&self.path), &next)?;
        self.pending = Some(next);
        Ok(public_of(&next))
    }

    /// The prepared key becomes `node.key` and the current one; the old one
    /// stays accepted for [`PREVIOUS_KEY_GRACE`].
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let next = self.pending.context("no key rotation under way")?;
        std::fs::rename(next_path(&self.path), &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        sync_dir(&self.path)?;
        self.pending = None;
        self.previous = Some((self.current, Instant::now()));
        self.current = next;
        Ok(())
    }

    /// Drops the prepared key: the current one stays, on disk and in use.
    pub fn abandon(&mut self) {
        if self.pending.take().is_some() {
            let _ = std::fs::remove_file(next_path(&self.path));
        }
    }

    /// Prepares and commits at once, with no store in between (tests).
    #[cfg(test)]
    pub fn rotate(&mut self) -> anyhow::Result<()> {
        self.prepare()?;
        self.commit()
    }

    /// The keys the tunnels accept now: current first.
    pub fn active(&mut self) -> Vec<[u8; 32]> {
        if self
            .previous
            .is_some_and(|(_, t)| t.elapsed() > PREVIOUS_KEY_GRACE)
        {
            self.previous = None;
        }
        std::iter::once(self.current)
            .chain(self.previous.map(|(k, _)| k))
            .collect()
    }

    /// Whether a previous key is still held (the tunnels must be told when it expires).
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }
}

fn next_path(path: &Path) -> PathBuf {
    path.with_extension("key.next")
}

/// Replaces this node's static key, in the one order that cannot cut its
/// encrypted networks: new key on disk, then its public half in the store
/// (with `key_epoch`, as [`crate::state::ops::request_rotation`] asked), then
/// in use. Fails, with nothing changed, when the store cannot take it. Blocks
/// (disk and store): call it off the async threads.
pub fn rotate(
    ring: &Mutex<KeyRing>,
    store: &dyn Store,
    node: &str,
    requested: Option<u64>,
) -> Result<(), super::AgentError> {
    use super::AgentError;
    let poisoned = || AgentError::Keys("key lock poisoned".into());
    let public = {
        let mut k = ring.lock().map_err(|_| poisoned())?;
        k.prepare()
            .map_err(|e| AgentError::Keys(format!("cannot write the new key: {e:#}")))?
    };
    let public = ops::encode_key(&public);
    let committed = store::transact(store, |st| {
        let n = st.nodes.get_mut(node).ok_or_else(|| {
            crate::state::StateError::NotFound(format!("node {node} is not registered"))
        })?;
        n.public_key = Some(public.clone());
        n.key_epoch = requested.unwrap_or(0).max(n.key_epoch + 1);
        Ok(())
    });
    let mut k = ring.lock().map_err(|_| poisoned())?;
    match committed {
        Ok(()) => k.commit().map_err(|e| {
            AgentError::Keys(format!(
                "the store has the new public key but it cannot be put in place: {e:#}"
            ))
        }),
        Err(e) => {
            k.abandon();
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_with_mode_600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyRing::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = KeyRing::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn rotation_keeps_the_old_key_active_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = KeyRing::load_or_create(dir.path()).unwrap();
        let before = r.public();
        r.rotate().unwrap();
        assert_ne!(r.public(), before);
        assert_eq!(r.active().len(), 2);
        let again = KeyRing::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.public(),
            r.public(),
            "the new key is what a restart loads"
        );
    }

    #[test]
    fn a_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::load_or_create(dir.path()).unwrap();
        let p = dir.path().join("node.key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyRing::load_or_create(dir.path()).err().unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn a_preshared_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("psk");
        std::fs::write(&p, format!("{}\n", ops::encode_key(&[7; 32]))).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_preshared(&p).unwrap_err().to_string();
            assert!(
                e.contains("--preshared-key-file") && e.contains("chmod 600"),
                "{mode:o}: {e}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_preshared(&p).unwrap(), [7; 32]);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_preshared(&p).unwrap(), [7; 32]);
        let e = read_preshared(&dir.path().join("none")).unwrap_err();
        assert!(format!("{e:#}").contains("--preshared-key-file"), "{e:#}");
    }

    fn registered(dir: &Path, public: [u8; 32]) -> crate::store::sqlite::SqliteStore {
        let s = crate::store::sqlite::SqliteStore::open(&dir.join("s.db")).unwrap();
        store::transact(&s, |st| {
            let mut n = crate::state::Node::new("n1", "192.0.2.1".parse().unwrap());
            n.public_key = Some(ops::encode_key(&public));
            st.nodes.insert("n1".into(), n);
            Ok(())
        })
        .unwrap();
        s
    }

    fn stored_key(s: &dyn Store) -> String {
        s.load().unwrap().state.nodes["n1"]
            .public_key
            .clone()
            .unwrap()
    }

    /// While the store commits the new public key, the new private key is
    /// already on disk (mode 0600) and the tunnels still use the old one;
    /// after, the new key is `node.key`, in use, and in the store.
    #[test]
    fn the_new_key_is_on_disk_and_in_the_store_before_it_is_used() {
        struct Watching {
            inner: crate::store::sqlite::SqliteStore,
            ring: std::sync::Arc<Mutex<KeyRing>>,
            dir: PathBuf,
            old: [u8; 32],
        }
        impl Store for Watching {
            fn load(&self) -> Result<crate::store::Snapshot, crate::store::StoreError> {
                self.inner.load()
            }
            fn update(
                &self,
                f: &mut dyn FnMut(
                    &mut crate::state::ClusterState,
                ) -> Result<(), crate::state::StateError>,
            ) -> Result<u64, crate::store::UpdateError> {
                let next = std::fs::metadata(self.dir.join("node.key.next")).unwrap();
                assert_eq!(next.permissions().mode() & 0o777, 0o600);
                let ring = self.ring.lock().unwrap();
                assert_eq!(ring.public(), self.old, "switched before the store had it");
                drop(ring);
                let on_disk = std::fs::read_to_string(self.dir.join("node.key")).unwrap();
                assert_eq!(public_of(&ops::decode_key(&on_disk).unwrap()), self.old);
                self.inner.update(f)
            }
            fn wait_change(
                &self,
                since: u64,
                t: Duration,
            ) -> Result<u64, crate::store::StoreError> {
                self.inner.wait_change(since, t)
            }
            fn describe(&self) -> String {
                self.inner.describe()
            }
            fn heartbeat(&self, n: &str, b: u64) -> Result<(), crate::store::StoreError> {
                self.inner.heartbeat(n, b)
            }
            fn heartbeats(
                &self,
            ) -> Result<std::collections::BTreeMap<String, u64>, crate::store::StoreError>
            {
                self.inner.heartbeats()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let ring = std::sync::Arc::new(Mutex::new(KeyRing::load_or_create(dir.path()).unwrap()));
        let old = ring.lock().unwrap().public();
        let s = Watching {
            inner: registered(dir.path(), old),
            ring: ring.clone(),
            dir: dir.path().to_path_buf(),
            old,
        };
        rotate(&ring, &s, "n1", Some(3)).unwrap();
        let new = ring.lock().unwrap().public();
        assert_ne!(new, old);
        assert_eq!(stored_key(&s), ops::encode_key(&new));
        assert_eq!(s.load().unwrap().state.nodes["n1"].key_epoch, 3);
        assert_eq!(
            ring.lock().unwrap().active().len(),
            2,
            "old key still accepted"
        );
        assert!(!dir.path().join("node.key.next").exists());
        let again = KeyRing::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public(), new, "a restart loads the new key");
    }

    /// A store that cannot be reached: the rotation fails with the store's
    /// error, and the old key stays on disk, in the store and in use.
    #[test]
    fn a_store_failure_leaves_the_old_key_on_disk_and_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Mutex::new(KeyRing::load_or_create(dir.path()).unwrap());
        let old = ring.lock().unwrap().public();
        registered(dir.path(), old);
        // nothing listens there
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = crate::store::open(&format!("etcd://127.0.0.1:{port}")).unwrap();
        let e = rotate(&ring, &*down, "n1", Some(1)).unwrap_err();
        assert!(e.to_string().contains("is unreachable"), "{e}");
        assert_eq!(ring.lock().unwrap().public(), old);
        assert_eq!(ring.lock().unwrap().active().len(), 1, "no second key");
        assert!(!dir.path().join("node.key.next").exists());
        let again = KeyRing::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public(), old, "the old key is still node.key");
        // and a node the store does not know refuses too, with nothing changed
        let s = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        assert!(rotate(&ring, &s, "nobody", None).is_err());
        assert_eq!(ring.lock().unwrap().public(), old);
        assert_eq!(stored_key(&s), ops::encode_key(&old));
    }

    /// A crash between writing the next key and putting it in place: the next
    /// start discards it and keeps the old key.
    #[test]
    fn an_unfinished_rotation_is_discarded_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = KeyRing::load_or_create(dir.path()).unwrap();
        let old = r.public();
        r.prepare().unwrap();
        drop(r);
        let again = KeyRing::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public(), old);
        assert!(!dir.path().join("node.key.next").exists());
    }
}

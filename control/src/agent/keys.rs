//! The node's WireGuard static key: made on first start, kept in the data dir
//! with mode 0600, never logged, printed or stored anywhere else. Only the public
//! half goes to the store.

use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vxmesh_dataplane::tunnel::x25519::{PublicKey, StaticSecret};

/// How long the previous key is still accepted after a rotation, while peers
/// read the new public key from the store and handshake again.
pub const PREVIOUS_KEY_GRACE: Duration = Duration::from_secs(120);

pub struct KeyRing {
    path: PathBuf,
    current: [u8; 32],
    previous: Option<([u8; 32], Instant)>,
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
    Ok(())
}

impl KeyRing {
    /// Loads `DATA_DIR/node.key`, or makes it.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("node.key");
        let current = match std::fs::read_to_string(&path) {
            Ok(s) => {
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    anyhow::bail!(
                        "{} is readable by others (mode {mode:o}): chmod 600 it, or remove it to get a new key",
                        path.display()
                    );
                }
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
        })
    }

    pub fn public(&self) -> [u8; 32] {
        public_of(&self.current)
    }

    /// Replaces the key; the old one stays accepted for [`PREVIOUS_KEY_GRACE`].
    pub fn rotate(&mut self) -> anyhow::Result<()> {
        let next = clamp(rand::random());
        write_private(&self.path, &next)?;
        self.previous = Some((self.current, Instant::now()));
        self.current = next;
        Ok(())
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
}

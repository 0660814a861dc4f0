//! The agent's unix sockets (the API's and the Docker plugin's): bound so that
//! only root and one group can ever connect, since whoever connects controls
//! the node. Below the API and the Docker driver, which both bind one.

#![forbid(unsafe_code)]

/// Mode of the agent's sockets: its owner (root) and its group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// Binds a unix socket at `path` that only root and `group` (default: the
/// agent's own group) can ever connect to. Connecting needs write permission,
/// and a socket is created with whatever mode the umask leaves, so it is bound
/// in a fresh directory of mode 0700, given mode 0660 and its group there, and
/// only then renamed into place: at no moment is it reachable more openly.
/// (A umask would do too, but it is the whole process's, and other threads
/// create files meanwhile.) Replaces whatever was at `path`.
pub fn bind_private(
    path: &std::path::Path,
    group: Option<u32>,
) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let private = dir.join(format!(
        ".{}.{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    let inner = private.join("s");
    let made = (|| -> anyhow::Result<std::os::unix::net::UnixListener> {
        let l = std::os::unix::net::UnixListener::bind(&inner)?;
        std::os::unix::fs::chown(&inner, None, group)
            .with_context(|| format!("cannot give {} to group {group:?}", path.display()))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        // rename(2) replaces a stale socket at `path` atomically
        std::fs::rename(&inner, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    made
}

/// `--socket-group`: a group name, or a number.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => anyhow::bail!("--socket-group {name}: no such group (getent group lists them)"),
        Err(e) => anyhow::bail!("--socket-group {name}: cannot look it up: {e}"),
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// The socket is 0660 and of the group asked for, and nothing is left
    /// beside it; a stale file at the path is replaced.
    #[test]
    fn sockets_are_0660_of_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("a.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "stale").unwrap();
        // a group the process may give files to: its own, or any when root
        let gid = if nix::unistd::geteuid().is_root() {
            1
        } else {
            nix::unistd::getegid().as_raw()
        };
        let l = bind_private(&path, Some(gid)).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o7777, SOCKET_MODE);
        assert_eq!(m.gid(), gid);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a.sock")]);
        // and it answers at its final path
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(l);
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        let e = group_id("no-such-group-vxmesh").unwrap_err().to_string();
        assert!(e.contains("no such group"), "{e}");
    }
}

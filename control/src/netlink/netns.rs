//! Work done inside another network namespace, on a thread of its own (see the
//! module above: `setns` moves only the calling thread, and this one ends
//! after, so no thread of the runtime changes namespace).

use super::NetlinkError;
use std::path::Path;

/// Runs `f` on a new thread inside the namespace at `netns`, and waits for it
/// without blocking the runtime.
pub async fn run_in<T, F>(netns: &Path, f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetlinkError> + Send + 'static,
{
    let path = netns.to_path_buf();
    let entered = |source| NetlinkError::Netns {
        path: path.clone(),
        source,
    };
    let ns = std::fs::File::open(&path).map_err(entered)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vxmesh-netns".into())
        .spawn(move || {
            let r = match nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => Ok(f()),
                Err(e) => Err(std::io::Error::from(e)),
            };
            let _ = tx.send(r);
        })
        .map_err(entered)?;
    match rx.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(entered(e)),
        Err(_) => Err(entered(std::io::Error::other(
            "the namespace's thread panicked",
        ))),
    }
}

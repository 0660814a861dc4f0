//! Machine-wide locks between test processes: a `flock` on a file under
//! /run/lock, for what only one test may hold at a time (the Docker plugin's
//! fixed socket, the root namespace's underlay address, the test image).

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Takes an exclusive `flock` on `path`, waiting up to `wait` (saying once on
/// stderr who it waits for). Released when the returned value drops, or when
/// the process dies, so a crashed test never leaves it held.
pub(crate) fn file_lock(path: &str, what: &str, wait: Duration) -> Result<Flock<File>> {
    if let Some(dir) = Path::new(path).parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let end = Instant::now() + wait;
    let mut said = false;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {path}"))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                ensure!(
                    Instant::now() < end,
                    "{path} ({what}) still held after {wait:?}"
                );
                if !said {
                    eprintln!("vxmesh-netns-tests: waiting for {path} ({what})");
                    said = true;
                }
                thread::sleep(Duration::from_millis(200));
            }
            Err((_, e)) => bail!("flock {path}: {e}"),
        }
    }
}

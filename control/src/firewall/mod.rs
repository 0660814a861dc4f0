//! The node's packet filter: the agent's own nftables tables (`nft`), and the
//! one rule it needs in Docker's iptables firewall (`docker_user`). Both are
//! driven through their programs (nftables' JSON or batch input is the stable
//! interface `nft` offers; no Rust crate speaks nf_tables netlink without
//! linking libnftnl), so their answers are read as exit statuses and JSON,
//! never by matching their text.

#![forbid(unsafe_code)]

pub mod docker_user;
pub mod nft;

use std::io;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("cannot run {program} (is it installed?): {source}")]
    Spawn {
        program: &'static str,
        source: io::Error,
    },
    /// The program ran and refused; `message` is its stderr, for the log.
    #[error("{program} refused ({status}): {message}")]
    Refused {
        program: &'static str,
        status: std::process::ExitStatus,
        message: String,
    },
    #[error("cannot read {program}'s JSON: {0}", program = "nft")]
    Json(#[from] serde_json::Error),
}

/// Runs `program ARGS` with `stdin` on its standard input; its stdout, or
/// [`FirewallError::Refused`] with its exit status.
async fn run(program: &'static str, args: &[&str], stdin: &str) -> Result<String, FirewallError> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let spawn = |source| FirewallError::Spawn { program, source };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).await.map_err(spawn)?;
    }
    let out = child.wait_with_output().await.map_err(spawn)?;
    if !out.status.success() {
        return Err(FirewallError::Refused {
            program,
            status: out.status,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

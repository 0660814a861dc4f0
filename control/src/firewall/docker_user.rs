//! The accept rules the routing mesh and egress need in Docker's
//! `DOCKER-USER` chain (see `docker::engine::forwarding`).
//!
//! Why iptables and not an nftables rule of the agent's own: Docker's
//! `FORWARD` chain drops by policy, and in nftables a packet dropped by any
//! base chain on a hook is dropped, whatever another table accepted; so the
//! accept has to be inside Docker's chain, and Docker keeps that chain
//! through iptables (legacy x_tables or iptables-nft; on the first, nft
//! cannot reach it at all, and on the second, rules written by nft into
//! iptables-nft's tables can make them unreadable to Docker's own
//! iptables). The answer is read from iptables' exit status alone.

use super::{run, FirewallError};

/// Whether `-C` found the rule: exit 0 yes, 1 no (or no such chain).
async fn has(rule: &[&str]) -> Result<bool, FirewallError> {
    match run("iptables", &[&["-w", "5", "-C"][..], rule].concat(), "").await {
        Ok(_) => Ok(true),
        Err(FirewallError::Refused { status, .. }) if status.code() == Some(1) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Puts (`on`) or takes away the accepts of forwarded traffic in and out of
/// each of `devices` at the head of `DOCKER-USER`, if not so already. A host
/// without Docker's firewall (no such chain) is told in the debug log.
pub async fn forwarding(devices: &[&str], on: bool) {
    for (dev, dir) in devices.iter().flat_map(|d| [(*d, "-i"), (*d, "-o")]) {
        let rule = ["DOCKER-USER", dir, dev, "-j", "ACCEPT"];
        let r = match (on, has(&rule).await) {
            (true, Ok(false)) => Some("-I"),
            (false, Ok(true)) => Some("-D"),
            (_, Ok(_)) => None,
            (_, Err(e)) => {
                tracing::debug!(rule = ?rule, on, error = %e, "no DOCKER-USER chain to change (no Docker firewall here)");
                continue;
            }
        };
        let Some(op) = r else { continue };
        if let Err(e) = run("iptables", &[&["-w", "5", op][..], &rule[..]].concat(), "").await {
            tracing::debug!(rule = ?rule, on, error = %e, "no DOCKER-USER chain to change (no Docker firewall here)");
        }
    }
}

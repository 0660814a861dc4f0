//! Link plumbing through iproute2 (`ip`) and util-linux (`nsenter`), the tools every
//! Linux host has: moving a TAP into a container namespace, naming it, addressing
//! it, routing through the gateway. Each call is one process, off the packet path.

use std::path::Path;
use thiserror::Error;
use tokio::process::Command;

#[derive(Debug, Error)]
pub enum PlumbError {
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source} (is iproute2/util-linux/ethtool installed?)")]
    Spawn { cmd: String, source: std::io::Error },
}

impl PlumbError {
    /// Whether the tool said the object already exists (an idempotent add).
    /// Whether the kernel refused an IPv6 address because IPv6 is off on the
    /// device (Docker turns it off in containers of IPv4-only networks).
    pub fn ipv6_disabled(&self) -> bool {
        matches!(self, PlumbError::Failed { stderr, .. } if stderr.contains("IPv6 is disabled"))
    }

    pub fn exists(&self) -> bool {
        // iproute2 says "Address already assigned" for an IPv4 address an
        // interface already has (a reopened, persistent TAP keeps its own).
        matches!(self, PlumbError::Failed { stderr, .. }
            if stderr.contains("File exists") || stderr.contains("already assigned"))
    }
}

async fn run(program: &str, args: &[&str]) -> Result<String, PlumbError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| PlumbError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(PlumbError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` in the agent's own namespace.
pub async fn ip(args: &[&str]) -> Result<String, PlumbError> {
    run("ip", args).await
}

/// `ip ARGS` inside the namespace at `netns`.
pub async fn ip_in(netns: &Path, args: &[&str]) -> Result<String, PlumbError> {
    let net = format!("--net={}", netns.display());
    let mut a = vec![net.as_str(), "ip"];
    a.extend_from_slice(args);
    run("nsenter", &a).await
}

/// `ethtool ARGS` inside the namespace at `netns`.
pub async fn ethtool_in(netns: &Path, args: &[&str]) -> Result<String, PlumbError> {
    let net = format!("--net={}", netns.display());
    let mut a = vec![net.as_str(), "ethtool"];
    a.extend_from_slice(args);
    run("nsenter", &a).await
}

/// Whether this kernel has IPv6 at all (not booted with `ipv6.disable=1`):
/// without it, IPv6 addresses, routes and nftables hooks are skipped, and
/// IPv4 goes on alone.
pub fn host_has_ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// Turns IPv6 on for interface `dev` inside the namespace at `netns` (its
/// `disable_ipv6` sysctl, which is per namespace: written from a shell that
/// nsenter put in it).
pub async fn enable_ipv6_in(netns: &Path, dev: &str) -> Result<(), PlumbError> {
    if !dev
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(PlumbError::Failed {
            cmd: format!("enable IPv6 on {dev:?}"),
            stderr: "not an interface name".into(),
        });
    }
    let net = format!("--net={}", netns.display());
    let script = format!("echo 0 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    run("nsenter", &[net.as_str(), "sh", "-c", &script])
        .await
        .map(|_| ())
}

/// What the kernel says of one of this namespace's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressState {
    /// Usable: sockets can bind it and send from it.
    Ready,
    /// IPv6 duplicate address detection still runs (about a second after the
    /// address is added or its link comes up); it cannot be bound yet.
    Tentative,
    /// Duplicate address detection found another host with it.
    DadFailed,
}

/// The state of `addr` among the agent's namespace's addresses (`None`: not one).
pub async fn address_state(addr: std::net::IpAddr) -> Result<Option<AddressState>, PlumbError> {
    let out = ip(&["-j", "addr", "show"]).await?;
    let links: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let want = addr.to_string();
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["addr_info"].as_array())
        .flatten()
        .find(|a| a["local"].as_str() == Some(want.as_str()))
        .map(|a| {
            if a["dadfailed"].as_bool() == Some(true) {
                AddressState::DadFailed
            } else if a["tentative"].as_bool() == Some(true) {
                AddressState::Tentative
            } else {
                AddressState::Ready
            }
        }))
}

/// The MTU of the interface that holds `addr` in the agent's namespace.
pub async fn mtu_of_address(addr: std::net::IpAddr) -> Result<Option<u32>, PlumbError> {
    let out = ip(&["-j", "addr", "show"]).await?;
    let links: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let want = addr.to_string();
    Ok(links.as_array().into_iter().flatten().find_map(|l| {
        let has = l["addr_info"]
            .as_array()?
            .iter()
            .any(|a| a["local"].as_str() == Some(want.as_str()));
        has.then(|| l["mtu"].as_u64().map(|m| m as u32)).flatten()
    }))
}

/// `nft -j list table FAMILY TABLE`: the table as nftables holds it, JSON.
pub async fn nft_list_table(family: &str, table: &str) -> Result<String, PlumbError> {
    run("nft", &["-j", "list", "table", family, table]).await
}

/// `nft -f -` with `script` on its stdin: one transaction, applied whole or
/// not at all.
pub async fn nft(script: &str) -> Result<(), PlumbError> {
    use tokio::io::AsyncWriteExt;
    let cmd = "nft -f -".to_string();
    let spawn = |source| PlumbError::Spawn {
        cmd: cmd.clone(),
        source,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(spawn)?;
    }
    let out = child.wait_with_output().await.map_err(spawn)?;
    if !out.status.success() {
        return Err(PlumbError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

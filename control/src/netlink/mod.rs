//! The node's links, addresses, routes, rules, per-namespace sysctls and
//! offloads, spoken to the kernel directly: rtnetlink (what `ip` itself sends),
//! `/proc/sys/net` and the `SIOCETHTOOL` ioctl. Nothing here runs a program, so
//! a failure is the kernel's errno ([`NetlinkError`]), never another tool's
//! stderr read back, and the agent needs no iproute2, util-linux or ethtool.
//!
//! # Namespaces
//!
//! A netlink socket belongs, for its whole life, to the network namespace that
//! was current when it was created, whichever thread later reads or writes it.
//! `setns(CLONE_NEWNET)` moves only the calling thread, so for a container's
//! namespace a thread of our own enters it, creates the socket (registered with
//! the agent's tokio runtime), and ends ([`netns::run_in`]); the socket then
//! speaks for that namespace from any of the runtime's threads. The same
//! short-lived thread writes the namespace's `/proc/sys/net` files (they show
//! the namespace of whoever opens them) and makes its ethtool ioctls (the
//! socket's namespace picks the device). No runtime thread ever changes
//! namespace.
//!
//! Unsafe code is denied here but in [`ethtool`], the one ioctl.

#![deny(unsafe_code)]

mod addr;
mod error;
mod ethtool;
mod link;
mod netns;
mod route;
#[cfg(test)]
mod tests;

pub use addr::{address_state, mtu_of_address, Address, AddressState};
pub use error::NetlinkError;
pub use link::{Link, LinkChange};
pub use route::Route;

use std::path::{Path, PathBuf};

/// One rtnetlink connection, in the agent's namespace or in another.
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// The namespace the socket was made in; `None`: the agent's own.
    netns: Option<PathBuf>,
}

impl Netlink {
    /// A connection in the agent's own namespace.
    pub fn here() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            netns: None,
        })
    }

    /// A connection inside the namespace at `netns` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`): its socket is made on a thread in that namespace.
    pub async fn in_netns(netns: &Path) -> Result<Netlink, NetlinkError> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = netns::run_in(netns, move || {
            // AsyncFd registers the socket with the runtime's reactor, which
            // needs the runtime's context on this thread
            let _enter = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
            Ok((conn, handle))
        })
        .await?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            netns: Some(netns.to_path_buf()),
        })
    }

    /// Writes `value` to `/proc/sys/net/KEY` of this connection's namespace.
    pub async fn set_sysctl(&self, key: &str, value: &str) -> Result<(), NetlinkError> {
        let (key, value) = (key.to_string(), value.to_string());
        match &self.netns {
            None => sysctl(&key, &value),
            Some(ns) => netns::run_in(ns, move || sysctl(&key, &value)).await,
        }
    }

    /// Turns IPv6 on for interface `dev` (its `disable_ipv6`, which Docker sets
    /// in containers of IPv4-only networks).
    pub async fn enable_ipv6(&self, dev: &str) -> Result<(), NetlinkError> {
        link::check_name(dev)?;
        self.set_sysctl(&format!("ipv6/conf/{dev}/disable_ipv6"), "0")
            .await
    }

    /// `ethtool -K DEV tx off tso off gso off`: no checksum, TCP segmentation
    /// or generic segmentation offload on `dev`.
    pub async fn offloads_off(&self, dev: &str) -> Result<(), NetlinkError> {
        link::check_name(dev)?;
        let name = dev.to_string();
        let off = move || {
            ethtool::offloads_off(&name)
                .map_err(|source| NetlinkError::Offload { dev: name, source })
        };
        match &self.netns {
            None => off(),
            Some(ns) => netns::run_in(ns, off).await,
        }
    }

    /// Where this connection speaks, for messages.
    fn place(&self) -> String {
        match &self.netns {
            None => String::new(),
            Some(p) => format!(" in {}", p.display()),
        }
    }
}

/// Writes `value` to `/proc/sys/net/KEY` of the calling thread's namespace
/// (the agent's own, on any of its runtime's threads).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetlinkError> {
    let path = format!("/proc/sys/net/{key}");
    std::fs::write(&path, value).map_err(|source| NetlinkError::Sysctl { path, source })
}

/// Whether this kernel has IPv6 at all (not booted with `ipv6.disable=1`):
/// without it, IPv6 addresses, routes and nftables hooks are skipped, and
/// IPv4 goes on alone.
pub fn host_has_ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

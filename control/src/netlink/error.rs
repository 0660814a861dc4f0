//! What can go wrong between the agent and the kernel, as values the callers
//! can branch on (by errno), with the operation named for the log.

use std::io;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("cannot enter network namespace {}: {source}", path.display())]
    Netns { path: PathBuf, source: io::Error },
    #[error("cannot open a netlink socket: {0}")]
    Socket(io::Error),
    #[error("no interface {0}")]
    NoLink(String),
    #[error("{0:?} is not an interface name")]
    BadName(String),
    #[error("{0:?} is not a MAC address")]
    BadMac(String),
    /// The kernel refused a request: its errno.
    #[error("{what}: {source}")]
    Kernel { what: String, source: io::Error },
    /// IPv6 is off on the device (`disable_ipv6`): the kernel's `EACCES` to an
    /// IPv6 address.
    #[error("{what}: IPv6 is disabled on the device")]
    Ipv6Disabled { what: String },
    /// An answer that is not netlink as the kernel speaks it.
    #[error("{what}: {detail}")]
    Protocol { what: String, detail: String },
    #[error("cannot set {path}: {source}")]
    Sysctl { path: String, source: io::Error },
    #[error("cannot turn offloads off on {dev}: {source}")]
    Offload { dev: String, source: io::Error },
}

impl NetlinkError {
    /// The kernel's errno, for a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the object is there already (an idempotent add).
    pub fn exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// Whether IPv6 is off on the device the address was for.
    pub fn ipv6_disabled(&self) -> bool {
        matches!(self, NetlinkError::Ipv6Disabled { .. })
    }

    /// Whether what was asked for is not there (no such device, route or
    /// address).
    pub fn not_found(&self) -> bool {
        matches!(self, NetlinkError::NoLink(_))
            || matches!(
                self.errno(),
                Some(libc::ENODEV | libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL)
            )
    }

    /// The error of request `what`, from rtnetlink's.
    pub(super) fn of(what: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
        let what = what.into();
        match e {
            rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => NetlinkError::Kernel {
                what,
                source: m.to_io(),
            },
            other => NetlinkError::Protocol {
                what,
                detail: other.to_string(),
            },
        }
    }
}

//! Interfaces: looked up by name or index, listed, made (veth pairs), changed
//! (MAC, MTU, up or down, name, namespace) and deleted.

use super::{Netlink, NetlinkError};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{LinkUnspec, LinkVeth};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use vxmesh_dataplane::Mac;

/// An interface as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The driver's kind (`tun` for TAPs, `veth`...); `None` for devices
    /// made by no rtnetlink driver (a NIC, `lo`).
    pub kind: Option<InfoKind>,
    /// `IFLA_LINK`: a veth's peer's index, in the peer's namespace.
    pub link_index: Option<u32>,
}

impl Link {
    /// A TUN or TAP device (the agent's TAPs are `tun` to the kernel).
    pub fn is_tun(&self) -> bool {
        self.kind == Some(InfoKind::Tun)
    }

    fn from_message(m: LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            link_index: None,
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Address(b) => l.mac = b.try_into().ok(),
                LinkAttribute::Mtu(m) => l.mtu = Some(m),
                LinkAttribute::Link(i) => l.link_index = Some(i),
                LinkAttribute::LinkInfo(infos) => {
                    l.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        l
    }
}

/// What to change of an interface, applied in one request (as `ip link set
/// dev DEV address A mtu M up` does). A MAC is taken as text (`02:42:..`) and
/// checked when applied.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    mac: Option<String>,
    mtu: Option<u32>,
    up: Option<bool>,
    name: Option<String>,
    netns: Option<PathBuf>,
}

impl LinkChange {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = Some(mac.to_string());
        self
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    pub fn up(mut self) -> Self {
        self.up = Some(true);
        self
    }
    pub fn down(mut self) -> Self {
        self.up = Some(false);
        self
    }
    pub fn rename(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    /// Moves the interface into the namespace at `netns`.
    pub fn netns(mut self, netns: &Path) -> Self {
        self.netns = Some(netns.to_path_buf());
        self
    }
}

/// As `ip link set` would spell it, for messages.
impl std::fmt::Display for LinkChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.netns {
            write!(f, " netns {}", p.display())?;
        }
        if let Some(n) = &self.name {
            write!(f, " name {n}")?;
        }
        if let Some(m) = &self.mac {
            write!(f, " address {m}")?;
        }
        if let Some(m) = self.mtu {
            write!(f, " mtu {m}")?;
        }
        match self.up {
            Some(true) => write!(f, " up"),
            Some(false) => write!(f, " down"),
            None => Ok(()),
        }
    }
}

/// Checks `name` is one the kernel takes (1-15 bytes, no `/`, no space), so
/// it may also be put in a `/proc/sys` path.
pub(super) fn check_name(name: &str) -> Result<(), NetlinkError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetlinkError::BadName(name.to_string()))
    }
}

impl Netlink {
    /// The interface named `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        check_name(name)?;
        let req = self.handle.link().get().match_name(name.to_string());
        self.one(req, || format!("read interface {name}{}", self.place()))
            .await
    }

    /// The interface with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let req = self.handle.link().get().match_index(index);
        self.one(req, || format!("read interface {index}{}", self.place()))
            .await
    }

    async fn one(
        &self,
        req: rtnetlink::LinkGetRequest,
        what: impl Fn() -> String,
    ) -> Result<Option<Link>, NetlinkError> {
        match req.execute().try_next().await {
            Ok(m) => Ok(m.map(Link::from_message)),
            Err(e) => match NetlinkError::of(what(), e) {
                e if e.not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Every interface of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(Link::from_message)
            .try_collect()
            .await
            .map_err(|e| NetlinkError::of(format!("list interfaces{}", self.place()), e))
    }

    /// The interface named `name`, or [`NetlinkError::NoLink`].
    pub async fn require(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::NoLink(format!("{name}{}", self.place())))
    }

    /// Applies `change` to interface `name`.
    pub async fn set_link(&self, name: &str, change: LinkChange) -> Result<(), NetlinkError> {
        let index = self.require(name).await?.index;
        let what = || format!("set interface {name}{}:{change}", self.place());
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mac) = &change.mac {
            let m = vxmesh_dataplane::parse_mac(mac)
                .ok_or_else(|| NetlinkError::BadMac(mac.clone()))?;
            b = b.address(m.to_vec());
        }
        if let Some(mtu) = change.mtu {
            b = b.mtu(mtu);
        }
        if let Some(n) = &change.name {
            check_name(n)?;
            b = b.name(n.clone());
        }
        // held open until the kernel has answered
        let ns = match &change.netns {
            Some(p) => Some(
                std::fs::File::open(p).map_err(|source| NetlinkError::Netns {
                    path: p.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        if let Some(f) = &ns {
            b = b.setns_by_fd(f.as_raw_fd());
        }
        b = match change.up {
            Some(true) => b.up(),
            Some(false) => b.down(),
            None => b,
        };
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| NetlinkError::of(what(), e))
    }

    /// Deletes interface `name` ([`NetlinkError::NoLink`] if there is none).
    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        let index = self.require(name).await?.index;
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| NetlinkError::of(format!("delete interface {name}{}", self.place()), e))
    }

    /// Makes a veth pair, `name` and `peer`, both here.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        check_name(name)?;
        check_name(peer)?;
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|e| NetlinkError::of(format!("add veth {name}/{peer}{}", self.place()), e))
    }
}

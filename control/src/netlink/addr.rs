//! Addresses: listed with their duplicate-address-detection state, added,
//! deleted; and the two questions the agent asks of its own namespace's.

use super::{Netlink, NetlinkError};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use std::net::IpAddr;

/// What the kernel says of one of a namespace's addresses.
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

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The interface's index.
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub state: AddressState,
}

impl Address {
    fn from_message(m: &AddressMessage) -> Option<Address> {
        let mut local = None;
        let mut address = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                // the full set; the header holds only its first byte
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        // IFA_LOCAL is the address itself (IFA_ADDRESS a point-to-point peer's);
        // IPv6 addresses have IFA_ADDRESS only
        let addr = local.or(address)?;
        let state = if flags.contains(AddressFlags::Dadfailed) {
            AddressState::DadFailed
        } else if flags.contains(AddressFlags::Tentative) {
            AddressState::Tentative
        } else {
            AddressState::Ready
        };
        Some(Address {
            index: m.header.index,
            addr,
            prefix_len: m.header.prefix_len,
            state,
        })
    }
}

impl Netlink {
    async fn address_messages(&self) -> Result<Vec<AddressMessage>, NetlinkError> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::of(format!("list addresses{}", self.place()), e))
    }

    /// Every address of the namespace.
    pub async fn addresses(&self) -> Result<Vec<Address>, NetlinkError> {
        let msgs = self.address_messages().await?;
        Ok(msgs.iter().filter_map(Address::from_message).collect())
    }

    /// Adds `addr/prefix_len` to interface `dev`; `nodad`: usable at once, no
    /// duplicate address detection (IPv6). An address the interface has
    /// already is [`NetlinkError::exists`]; IPv6 off on the interface,
    /// [`NetlinkError::Ipv6Disabled`].
    pub async fn add_address(
        &self,
        dev: &str,
        addr: IpAddr,
        prefix_len: u8,
        nodad: bool,
    ) -> Result<(), NetlinkError> {
        let index = self.require(dev).await?.index;
        let what = format!("add {addr}/{prefix_len} to {dev}{}", self.place());
        let mut req = self.handle.address().add(index, addr, prefix_len);
        if nodad {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req
            .execute()
            .await
            .map_err(|e| NetlinkError::of(what.clone(), e))
        {
            // the kernel's answer when the device's disable_ipv6 is set
            Err(e) if addr.is_ipv6() && e.errno() == Some(libc::EACCES) => {
                Err(NetlinkError::Ipv6Disabled { what })
            }
            r => r,
        }
    }

    /// Removes `addr` from interface `dev` ([`NetlinkError::not_found`] if it
    /// has not got it).
    pub async fn del_address(&self, dev: &str, addr: IpAddr) -> Result<(), NetlinkError> {
        let index = self.require(dev).await?.index;
        let what = format!("delete {addr} from {dev}{}", self.place());
        let msg = self
            .address_messages()
            .await?
            .into_iter()
            .find(|m| {
                m.header.index == index && Address::from_message(m).is_some_and(|a| a.addr == addr)
            })
            .ok_or_else(|| NetlinkError::Kernel {
                what: what.clone(),
                source: std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
            })?;
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::of(what, e))
    }
}

/// The state of `addr` among the agent's namespace's addresses (`None`: not one).
pub async fn address_state(addr: IpAddr) -> Result<Option<AddressState>, NetlinkError> {
    let all = Netlink::here()?.addresses().await?;
    Ok(all.into_iter().find(|a| a.addr == addr).map(|a| a.state))
}

/// The MTU of the interface that holds `addr` in the agent's namespace.
pub async fn mtu_of_address(addr: IpAddr) -> Result<Option<u32>, NetlinkError> {
    let nl = Netlink::here()?;
    let Some(index) = nl
        .addresses()
        .await?
        .into_iter()
        .find(|a| a.addr == addr)
        .map(|a| a.index)
    else {
        return Ok(None);
    };
    Ok(nl.link_by_index(index).await?.and_then(|l| l.mtu))
}

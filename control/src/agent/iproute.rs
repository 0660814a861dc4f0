//! The agent's questions about its own namespace's interfaces, answered by
//! [`crate::netlink`] (rtnetlink, no `ip` process); kept under this name so
//! the agent's paths to them hold.

pub use crate::netlink::{address_state, host_has_ipv6, mtu_of_address, AddressState};

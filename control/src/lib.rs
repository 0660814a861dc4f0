//! vxmesh's control plane: the desired state and its stores, IPAM, the agent that
//! reconciles the dataplane with the store, its API, and the CLI.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cni;
pub mod docker;
pub mod firewall;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod netlink;
pub mod state;
pub mod store;

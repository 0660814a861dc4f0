//! vxmesh's control plane: the desired state and its stores, IPAM, the agent that
//! reconciles the dataplane with the store, its API, and the CLI.
//!
//! Layers, each using only those below it: `state` (the desired state and its
//! operations) and `store`; `agent` (this node, made to match the state);
//! `api::server` and `docker` (what callers ask of the agent); `daemon` (the
//! composition root wiring those together); `cli` (which runs the daemon or
//! talks to it through `api::client`).

pub mod agent;
pub mod api;
pub mod api_types;
pub mod cli;
pub mod cni;
pub mod daemon;
pub mod docker;
pub mod firewall;
/// The fuzz targets' entry points (parsers of store rows, API bodies and
/// CNI input): for `fuzz/` and the corpus replay test only (feature
/// `fuzzing`), not the library's API.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod logging;
pub mod netlink;
pub mod sockets;
pub mod state;
pub mod store;

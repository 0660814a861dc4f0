//! Desired state, the same whichever store holds it, and the operations that change
//! it. Every check (names, clashes, IPAM) lives here once, so the SQLite and etcd
//! stores only have to make `update` atomic.

pub mod ingress;
pub mod ipam;
pub mod model;
pub mod ops;
pub mod services;
pub mod validate;

pub use model::{ClusterState, Endpoint, Network, Node, Policy, PublishedPort, Service};
pub use ops::{EndpointSpec, NetworkSpec, StateError};

//! Desired state, the same whichever store holds it, and the operations that change
//! it. Every check (names, clashes, IPAM) lives here once, so the SQLite and etcd
//! stores only have to make `update` atomic.
//!
//! Its modules form layers, each using only those below it:
//! - [`model`]: the objects; [`error`]: what an operation refuses;
//! - [`names`]: valid names and keys; [`mesh`]: the routing mesh's fixed names
//!   and read-only questions; [`ipam`]: which addresses, subnets and VNIs are free;
//! - [`networks`]: networks and the endpoints on them;
//! - [`ingress`]: keeps the routing mesh in step (its network, sandboxes, the
//!   tasks' ingress endpoints) and the nodes' policies;
//! - [`ops`] (nodes, removing endpoints; re-exports what is below, so callers
//!   name one module) and [`services`];
//! - [`validate`]: the check of rows read back from a store.

#![forbid(unsafe_code)]

pub mod error;
pub mod ingress;
pub mod ipam;
pub mod mesh;
pub mod model;
pub mod names;
pub mod networks;
pub mod ops;
pub mod services;
pub mod validate;

pub use error::StateError;
pub use model::{ClusterState, Endpoint, Network, Node, Policy, PublishedPort, Service};
pub use networks::{EndpointSpec, NetworkSpec};

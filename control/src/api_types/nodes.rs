//! `/v1/nodes`: the cluster's nodes, as stored and as this agent sees them
//! (up or down); `POST` declares an [`ExternalNode`], `POST NAME/update`
//! takes a [`NodeUpdate`]; they, `DELETE` and `POST NAME/rotate-key` answer
//! the [`Node`].

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

pub use crate::state::Node;

/// Whether a node is alive, as this agent judges from heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Up,
    Down,
    /// A WireGuard peer that runs no vxmesh: it sends no heartbeat.
    External,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
            NodeStatus::External => "external",
        }
    }
}

/// A row of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeListing {
    #[serde(flatten)]
    pub node: Node,
    pub status: NodeStatus,
    /// Since its heartbeat last changed, on this agent's clock; null: never seen.
    pub heartbeat_age_ms: Option<u64>,
}

/// `POST /v1/nodes` (`node add`): a WireGuard peer that runs no vxmesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalNode {
    pub name: String,
    pub advertise_addr: IpAddr,
    pub public_key: String,
    pub tunnel_addr: Ipv4Addr,
    pub wg_port: Option<u16>,
}

impl ExternalNode {
    /// The node to store: it never takes ingress traffic (it runs no balancer).
    pub fn node(self) -> Node {
        let mut node = Node::new(&self.name, self.advertise_addr);
        node.public_key = Some(self.public_key);
        node.tunnel_addr = Some(self.tunnel_addr);
        node.wg_port = self.wg_port;
        node.ingress = false;
        node
    }
}

/// `POST /v1/nodes/NAME/update` (`node update --ingress on|off`); nothing
/// asked: the node as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdate {
    #[serde(default)]
    pub ingress: Option<bool>,
}

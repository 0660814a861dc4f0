//! `/v1/networks`: `POST` takes a [`NetworkSpec`] and answers the [`Network`]
//! made, as `DELETE` answers the one removed.

use serde::{Deserialize, Serialize};

pub use crate::state::{Endpoint, Network, NetworkSpec};

/// A row of `GET /v1/networks`: the network and how many endpoints it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkListing {
    #[serde(flatten)]
    pub network: Network,
    pub endpoints: usize,
}

/// `GET /v1/networks/NAME`: the network and its endpoints, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInspect {
    #[serde(flatten)]
    pub network: Network,
    pub endpoints: Vec<Endpoint>,
}

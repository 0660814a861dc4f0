//! `/v1/services`: `POST` takes a [`ServiceSpec`], `POST NAME/update` a
//! [`ServiceUpdate`]; both, and `DELETE`, answer the [`Service`].

use serde::{Deserialize, Serialize};

pub use crate::state::services::ServiceSpec;
pub use crate::state::{Endpoint, Service};

/// A row of `GET /v1/services`: the service and how many tasks it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceListing {
    #[serde(flatten)]
    pub service: Service,
    pub tasks: usize,
}

/// `GET /v1/services/NAME`: the service and its tasks (endpoints), whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInspect {
    #[serde(flatten)]
    pub service: Service,
    pub tasks: Vec<Endpoint>,
}

/// `POST /v1/services/NAME/update` (`service update --publish-add/--publish-rm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    #[serde(default)]
    pub publish_add: Vec<String>,
    #[serde(default)]
    pub publish_rm: Vec<String>,
}

//! `/v1/endpoints`: `POST` takes an [`EndpointSpec`]; `GET` lists, and `POST`
//! and `DELETE` answer, [`Endpoint`]s as stored.

pub use crate::state::{Endpoint, EndpointSpec};

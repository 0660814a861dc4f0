//! `/v1/policies`: `POST` takes a [`PolicySpec`]; `GET` lists, and `POST` and
//! `DELETE` answer, [`Policy`]s as stored.

pub use crate::state::ingress::PolicySpec;
pub use crate::state::Policy;

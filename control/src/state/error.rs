//! What an operation on the state refuses, in the three ways the API answers
//! (400, 404, 409). At the bottom of `state`, so every operation and IPAM can
//! return it without depending on one another.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

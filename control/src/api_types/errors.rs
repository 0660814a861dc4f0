//! What every failed call answers, with its HTTP status.

use serde::{Deserialize, Serialize};

/// The body of every error answer: a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

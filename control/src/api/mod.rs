//! The agent's HTTP API on a unix socket: JSON in, JSON out. The CLI is its client.

pub mod client;
mod flows;
pub mod server;

/// The body of every error answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

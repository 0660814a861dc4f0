//! The agent's HTTP API on a unix socket: JSON in, JSON out, as the types of
//! [`crate::api_types`]. The CLI and the CNI plugin are its clients.

#![forbid(unsafe_code)]

mod answer;
pub mod client;
mod flows;
mod local;
pub mod server;

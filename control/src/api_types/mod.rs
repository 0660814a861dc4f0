//! The agent's API as types: every request body and every answer of
//! `/v1/...`, shared by the server (`api::server`), its clients (the CLI, the
//! CNI plugin) and the agent's listings that fill them, one file per resource.
//!
//! It sits below the agent and the API (it needs only `state`'s model and
//! specs): the agent builds its listings as these types without depending on
//! the server, which would close a circle if they lived in `api/`.
//!
//! The JSON is the contract, not the Rust: scripts read `--format json`, which
//! prints what the API answers. Field names, nesting, null versus absent and
//! numbers versus strings are pinned by the round-trip tests in `tests.rs`:
//! documents written by the agent before these types existed read into them
//! and write back unchanged.

#![forbid(unsafe_code)]

pub mod conntrack;
pub mod doctor;
pub mod endpoints;
pub mod errors;
pub mod flows;
pub mod lb;
pub mod networks;
pub mod nodes;
pub mod policies;
pub mod services;
pub mod stats;
pub mod trace;

#[cfg(test)]
mod tests;

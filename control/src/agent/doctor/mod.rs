//! `vxmesh doctor`: everything a working mesh needs, checked from this node
//! with no internet, each check with a verdict and, when it is not ok, what to
//! do. The checks run in the agent, which holds what they look at: the store
//! connection, the dataplane's sockets (the peers are probed over the real
//! underlay and through the tunnels, see [`peers`]), the nftables tables and
//! TAPs it made, its counters.
//!
//! One module per family: [`store`], [`peers`], [`local`] (tables, TAPs, the
//! underlay's MTU), [`counters`] (socket buffers, drops).

pub mod counters;
pub mod local;
pub mod peers;
pub mod store;

use super::Agent;
use std::time::Duration;

/// The report's types are the API's (`POST /v1/doctor` answers a [`Report`]).
pub use crate::api_types::doctor::{Check, Report, Status};

/// How long the drop counters are watched for a rise.
pub const SAMPLE: Duration = Duration::from_secs(1);

impl Agent {
    /// Runs every check: the store's first (the peers come from its state, or
    /// the last one read), then the peers' probes, the local checks and the
    /// counters' watch side by side.
    pub async fn doctor(&self) -> Report {
        let (mut checks, st) = store::check(self).await;
        let (p, l, c) = tokio::join!(
            peers::check(self, &st),
            local::check(self, &st),
            counters::check(self)
        );
        checks.extend(p);
        checks.extend(l);
        checks.extend(c);
        Report::new(&self.node, checks)
    }
}

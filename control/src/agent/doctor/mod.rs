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
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Dotted, stable: `store.reachable`, `peer.n2.vxlan`, `tap.vxm-ingress`...
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do, for a warning or a failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::with_fix(Status::Warn, check.into(), detail.into(), fix.into())
    }

    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::with_fix(Status::Fail, check.into(), detail.into(), fix.into())
    }

    /// A warn or a fail: never without what to do about it.
    fn with_fix(status: Status, check: String, detail: String, fix: String) -> Self {
        Check {
            check,
            status,
            detail,
            fix: Some(fix),
        }
    }
}

/// What `POST /v1/doctor` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub node: String,
    pub checks: Vec<Check>,
    /// The worst status of all.
    pub status: Status,
}

impl Report {
    pub fn new(node: &str, checks: Vec<Check>) -> Self {
        let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        Report {
            node: node.into(),
            checks,
            status,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_takes_its_worst_check() {
        let r = Report::new("n1", vec![]);
        assert_eq!(r.status, Status::Ok);
        let r = Report::new(
            "n1",
            vec![
                Check::ok("a", "fine"),
                Check::fail("b", "broken", "mend it"),
                Check::warn("c", "odd", "look"),
            ],
        );
        assert_eq!(r.status, Status::Fail);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["checks"][1]["status"], "fail");
        assert_eq!(v["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(v["status"], "fail");
    }
}

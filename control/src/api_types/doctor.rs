//! `POST /v1/doctor` (`vxmesh doctor`): every check's verdict, from this node.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The node that ran the checks; null in the report the CLI makes itself
    /// when no agent answers (its one failed check says so).
    pub node: Option<String>,
    pub checks: Vec<Check>,
    /// The worst status of all.
    pub status: Status,
}

impl Report {
    pub fn new(node: &str, checks: Vec<Check>) -> Self {
        let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        Report {
            node: Some(node.into()),
            checks,
            status,
        }
    }

    /// How many checks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
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

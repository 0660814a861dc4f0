//! A flow record as `vxmesh flows`, its API and its files show it: the
//! dataplane's ids resolved to names (network, service, backend task), times
//! on the wall clock.

use crate::state::ClusterState;
use std::net::IpAddr;

/// Records and their filter are the API's (`GET /v1/flows`).
pub use crate::api_types::flows::{Both, Filter, FlowRecord};
use vxmesh_dataplane::flowlog::{FlowEvent, Kind, Verdict};

pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        p => p.to_string(),
    }
}

/// Names for the ids in records, from the cluster state.
pub struct Names<'a> {
    pub st: &'a ClusterState,
}

impl Names<'_> {
    fn network(&self, vni: u32) -> String {
        self.st
            .networks
            .values()
            .find(|n| n.vni == vni)
            .map_or_else(|| format!("vni:{vni}"), |n| n.name.clone())
    }

    fn service(&self, fwmark: u32) -> Option<String> {
        (fwmark != 0).then(|| {
            self.st
                .services
                .values()
                .find(|s| s.fwmark == fwmark)
                .map_or_else(|| format!("fwmark:{fwmark}"), |s| s.name.clone())
        })
    }

    fn backend(&self, network: &str, ip: IpAddr) -> Option<String> {
        self.st
            .endpoints_on(network)
            .find(|e| e.ips.contains(&ip))
            .map(|e| e.id.clone())
    }

    /// `e` as a record, stamped `unix_ms`.
    pub fn record(&self, e: &FlowEvent, unix_ms: u64) -> FlowRecord {
        let network = self.network(e.key.zone);
        let (event, verdict, reason, end) = match e.kind {
            Kind::Open => ("open", connection_verdict(e.verdict), None, None),
            Kind::End(why) => (
                "end",
                connection_verdict(e.verdict),
                None,
                Some(why.as_str().to_string()),
            ),
            Kind::Drop(r) => {
                let refused = matches!(
                    r,
                    vxmesh_dataplane::DropReason::PolicyReject
                        | vxmesh_dataplane::DropReason::NotPublished
                        | vxmesh_dataplane::DropReason::IngressOff
                );
                (
                    "drop",
                    if refused { "reject" } else { "drop" }.to_string(),
                    Some(r.as_str().to_string()),
                    None,
                )
            }
        };
        FlowRecord {
            time: rfc3339(unix_ms),
            time_unix_ms: unix_ms,
            event: event.into(),
            proto: proto_name(e.key.proto),
            src: e.key.src,
            sport: e.key.sport,
            dst: e.key.dst,
            dport: e.key.dport,
            service: self.service(e.service),
            backend: e.nat.and_then(|(ip, _)| self.backend(&network, ip)),
            nat: e
                .nat
                .map(|(ip, port)| std::net::SocketAddr::new(ip, port).to_string()),
            policy: (e.policy != 0).then(|| e.policy.to_string()),
            verdict,
            reason,
            end,
            duration_ms: None,
            packets: Both {
                client: e.packets[0],
                backend: e.packets[1],
            },
            bytes: Both {
                client: e.bytes[0],
                backend: e.bytes[1],
            },
            sample: e.sample,
            network,
        }
    }
}

fn connection_verdict(v: Verdict) -> String {
    match v {
        Verdict::AuditDrop | Verdict::AuditReject => v.as_str().into(),
        _ => "forwarded".into(),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339(unix_ms: u64) -> String {
    let (secs, ms) = (unix_ms / 1000, unix_ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // days to a civil date (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
    }

    #[test]
    fn filters_match_by_network_service_and_verdict() {
        let names = Names {
            st: &ClusterState::default(),
        };
        let mut r = names.record(&FlowEvent::default(), 0);
        r.network = "front".into();
        r.service = Some("web".into());
        r.verdict = "audit:drop".into();
        let f = |n: Option<&str>, s: Option<&str>, v: Option<&str>| Filter {
            network: n.map(Into::into),
            service: s.map(Into::into),
            verdict: v.map(Into::into),
        };
        assert!(f(None, None, None).matches(&r));
        assert!(f(Some("front"), Some("web"), Some("audit")).matches(&r));
        assert!(f(None, None, Some("audit:drop")).matches(&r));
        assert!(!f(Some("back"), None, None).matches(&r));
        assert!(!f(None, Some("api"), None).matches(&r));
        assert!(!f(None, None, Some("drop")).matches(&r));
    }
}

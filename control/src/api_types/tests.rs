//! The contract pinned: answers the agent wrote before these types existed
//! (captured from its socket, `testdata/`), read into the types and written
//! back, come out the same, value for value and (for what the API sends as
//! it is) byte for byte.

use super::conntrack::ConntrackEntry;
use super::doctor::Report;
use super::errors::ErrorBody;
use super::flows::{FlowRecord, FollowLine};
use super::lb::VirtualService;
use super::networks::{Network, NetworkInspect, NetworkListing};
use super::nodes::{Node, NodeListing};
use super::policies::Policy;
use super::services::{Endpoint, Service, ServiceInspect, ServiceListing};
use super::stats::Stats;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// `doc` read as `T` and written back: the same JSON value, and the same
/// bytes as the agent sends them (keys sorted, see `api::server::Sorted`).
fn round_trip<T: Serialize + DeserializeOwned>(doc: &str) -> T {
    let want: Value = serde_json::from_str(doc).expect("the document is JSON");
    let t: T = serde_json::from_str(doc)
        .unwrap_or_else(|e| panic!("{} does not read {doc}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        back,
        want,
        "{} wrote it back otherwise",
        std::any::type_name::<T>()
    );
    assert_eq!(serde_json::to_string(&back).unwrap(), doc.trim());
    t
}

#[test]
fn networks() {
    let ls: Vec<NetworkListing> = round_trip(include_str!("testdata/networks.json"));
    assert!(ls.len() >= 3 && ls.iter().any(|l| l.endpoints > 0));
    let one: NetworkInspect = round_trip(include_str!("testdata/network_inspect.json"));
    assert!(!one.endpoints.is_empty());
    round_trip::<Network>(include_str!("testdata/network.json"));
}

#[test]
fn endpoints() {
    let eps: Vec<Endpoint> = round_trip(include_str!("testdata/endpoints.json"));
    assert!(eps.iter().any(|e| e.service.is_some()) && eps.iter().any(|e| e.service.is_none()));
    round_trip::<Endpoint>(include_str!("testdata/endpoint.json"));
}

#[test]
fn nodes() {
    let ns: Vec<NodeListing> = round_trip(include_str!("testdata/nodes.json"));
    assert!(ns.iter().any(|n| n.heartbeat_age_ms.is_none()));
    round_trip::<Node>(include_str!("testdata/node.json"));
}

#[test]
fn services() {
    let ss: Vec<ServiceListing> = round_trip(include_str!("testdata/services.json"));
    // vips6 is absent where there is none, present on a dual-stack network
    assert!(ss.iter().any(|s| s.service.vips6.is_empty()));
    assert!(ss.iter().any(|s| !s.service.vips6.is_empty()));
    round_trip::<ServiceInspect>(include_str!("testdata/service_inspect.json"));
    round_trip::<Service>(include_str!("testdata/service.json"));
}

#[test]
fn policies() {
    let ps: Vec<Policy> = round_trip(include_str!("testdata/policies.json"));
    assert!(ps.iter().any(|p| p.from.is_none()) && ps.iter().any(|p| p.from.is_some()));
    round_trip::<Policy>(include_str!("testdata/policy.json"));
}

#[test]
fn lb() {
    let vs: Vec<VirtualService> = round_trip(include_str!("testdata/lb.json"));
    assert!(vs.iter().any(|v| v.published.is_empty()));
    assert!(vs.iter().any(|v| !v.published.is_empty()));
    round_trip::<Vec<VirtualService>>(include_str!("testdata/lb_vip.json"));
}

#[test]
fn conntrack() {
    let ct: Vec<ConntrackEntry> = round_trip(include_str!("testdata/conntrack.json"));
    assert!(!ct.is_empty());
}

#[test]
fn stats() {
    let s: Stats = round_trip(include_str!("testdata/stats.json"));
    assert!(!s.drops.is_empty() && !s.workers.is_empty());
}

#[test]
fn doctor() {
    let r: Report = round_trip(include_str!("testdata/doctor.json"));
    assert!(r.node.is_some());
    assert!(r.checks.iter().any(|c| c.fix.is_some()) && r.checks.iter().any(|c| c.fix.is_none()));
}

#[test]
fn errors() {
    round_trip::<ErrorBody>(include_str!("testdata/error_not_found.json"));
}

/// Flow records go out as they are (not through a `Value`): their bytes keep
/// the fields' order, as `--follow`'s lines always had it.
#[test]
fn flows() {
    let doc = include_str!("testdata/flows.json");
    let rs: Vec<FlowRecord> = serde_json::from_str(doc).unwrap();
    assert!(!rs.is_empty());
    assert_eq!(serde_json::to_string(&rs).unwrap(), doc.trim());
    let want: Value = serde_json::from_str(doc).unwrap();
    assert_eq!(serde_json::to_value(&rs).unwrap(), want);
    for line in include_str!("testdata/flows_follow.ndjson").lines() {
        let l: FollowLine = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), line);
    }
}

/// The bodies the CLI sent as `json!` objects before it had these types
/// read as the specs the server takes.
#[test]
fn requests() {
    use super::endpoints::EndpointSpec;
    use super::networks::NetworkSpec;
    use super::nodes::{ExternalNode, NodeUpdate};
    use super::policies::PolicySpec;
    use super::services::{ServiceSpec, ServiceUpdate};
    use super::trace::TraceRequest;
    let n: NetworkSpec = serde_json::from_str(
        r#"{"encrypted":true,"internal":false,"name":"sec","peer_vteps":["192.168.91.9"],"subnets":[],"vni":5000}"#,
    )
    .unwrap();
    assert_eq!(
        (n.name.as_str(), n.vni, n.encrypted),
        ("sec", Some(5000), true)
    );
    let e: EndpointSpec = serde_json::from_str(
        r#"{"ifname":"eth0","ip":null,"netns":"c1","network":"front","service":"web","veth":null}"#,
    )
    .unwrap();
    assert_eq!(e.ifname.as_deref(), Some("eth0"));
    assert_eq!(e.owner, None);
    let x: ExternalNode = serde_json::from_str(
        r#"{"advertise_addr":"192.168.91.50","name":"ext1","public_key":"k","tunnel_addr":"10.255.0.50","wg_port":51820}"#,
    )
    .unwrap();
    let node = x.node();
    assert!(!node.ingress && node.wg_port == Some(51820));
    let u: NodeUpdate = serde_json::from_str(r#"{"ingress":null}"#).unwrap();
    assert_eq!(u.ingress, None);
    let s: ServiceSpec = serde_json::from_str(
        r#"{"endpoint_mode":null,"health":"tcp:80","health_interval_ms":5000,"name":"web","networks":["front"],"publish":["8080:80"],"scheduler":"wrr"}"#,
    )
    .unwrap();
    assert_eq!(s.health_interval_ms, Some(5000));
    let su: ServiceUpdate =
        serde_json::from_str(r#"{"publish_add":["1:2"],"publish_rm":[]}"#).unwrap();
    assert_eq!(su.publish_add, ["1:2"]);
    let p: PolicySpec = serde_json::from_str(
        r#"{"action":"drop","audit":false,"from":"10.0.0.0/8","node":"n1","port":"8080"}"#,
    )
    .unwrap();
    assert_eq!(p.from.as_deref(), Some("10.0.0.0/8"));
    let t: TraceRequest =
        serde_json::from_str(r#"{"count":10000,"filter":"","network":"front","seconds":10.0}"#)
            .unwrap();
    assert_eq!((t.count, t.seconds), (10_000, 10.0));
    // what the CLI sends now reads the same
    for (typed, old) in [
        (
            serde_json::to_value(&n).unwrap(),
            r#"{"encrypted":true,"internal":false,"name":"sec","peer_vteps":["192.168.91.9"],"subnets":[],"vni":5000}"#,
        ),
        (
            serde_json::to_value(&t).unwrap(),
            r#"{"count":10000,"filter":"","network":"front","seconds":10.0}"#,
        ),
        (
            serde_json::to_value(&su).unwrap(),
            r#"{"publish_add":["1:2"],"publish_rm":[]}"#,
        ),
    ] {
        assert_eq!(typed, serde_json::from_str::<Value>(old).unwrap());
    }
}

//! Prometheus metrics on `--metrics-addr` (`GET /metrics`), rendered at each
//! scrape from the dataplane's counters and tables (prometheus-client).

use super::{Agent, VirtualService};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use vxmesh_dataplane::TrafficTotals;

type Labels = Vec<(String, String)>;

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The label an endpoint port gets when it is the node's ingress sandbox.
pub const SANDBOX_ENDPOINT: &str = "ingress-sandbox";
/// The label the node's egress TAP gets (with an empty `network`: it carries
/// every network's egress): rx is what the kernel sent back to containers, tx
/// what containers sent out.
pub const EGRESS_ENDPOINT: &str = "egress";

/// Packets and bytes in and out of one family of series (networks or ports):
/// four counters, `{prefix}_{rx,tx}_{packets,bytes}`.
fn traffic(
    reg: &mut Registry,
    prefix: &str,
    what: [&str; 2],
    rows: impl IntoIterator<Item = (Labels, TrafficTotals)>,
) {
    let fams: [Family<Labels, Counter<u64>>; 4] = Default::default();
    for (l, t) in rows {
        fams[0].get_or_create(&l).inc_by(t.rx_packets);
        fams[1].get_or_create(&l).inc_by(t.rx_bytes);
        fams[2].get_or_create(&l).inc_by(t.tx_packets);
        fams[3].get_or_create(&l).inc_by(t.tx_bytes);
    }
    let [rxp, rxb, txp, txb] = fams;
    let [rx, tx] = what;
    reg.register(format!("{prefix}_rx_packets"), format!("Frames {rx}"), rxp);
    reg.register(
        format!("{prefix}_rx_bytes"),
        format!("Bytes (Ethernet frames) {rx}"),
        rxb,
    );
    reg.register(format!("{prefix}_tx_packets"), format!("Frames {tx}"), txp);
    reg.register(
        format!("{prefix}_tx_bytes"),
        format!("Bytes (Ethernet frames) {tx}"),
        txb,
    );
}

/// Per network (by name and VNI) and per endpoint port: their traffic, labelled
/// from the state last applied.
fn traffic_by_network_and_port(reg: &mut Registry, a: &Agent) {
    let cluster = a.last_state();
    let names: HashMap<u32, &str> = cluster
        .networks
        .values()
        .map(|n| (n.vni, n.name.as_str()))
        .collect();
    let nets = a.worker.network_traffic().into_iter().map(|(vni, t)| {
        let name = names.get(&vni).copied().unwrap_or_default();
        (
            vec![
                ("network".into(), name.to_string()),
                ("vni".into(), vni.to_string()),
            ],
            t,
        )
    });
    traffic(
        reg,
        "network",
        [
            "of this network received from other nodes (VXLAN, decrypted for encrypted networks)",
            "of this network sent to other nodes (one per node a replicated frame goes to)",
        ],
        nets,
    );
    // a port is known by its network and MAC in the switch, and so is its endpoint
    let sw = a.worker.state();
    let by_mac: HashMap<(&str, vxmesh_dataplane::Mac), &str> = cluster
        .endpoints
        .values()
        .filter(|e| e.node == a.node)
        .filter_map(|e| {
            let mac = vxmesh_dataplane::parse_mac(&e.mac)?;
            Some(((e.network.as_str(), mac), e.id.as_str()))
        })
        .collect();
    let ports = a.worker.port_traffic().into_iter().filter_map(|(id, t)| {
        let (network, endpoint) = match (sw.ports.get(&id), &sw.ingress) {
            (Some(pv), _) => {
                let net = names.get(&pv.vni).copied()?;
                (net, *by_mac.get(&(net, pv.mac))?)
            }
            (None, Some(ing)) if ing.port == id => (
                names.get(&ing.vni).copied().unwrap_or("ingress"),
                SANDBOX_ENDPOINT,
            ),
            (None, _) if sw.egress.as_ref().is_some_and(|e| e.port == id) => ("", EGRESS_ENDPOINT),
            // being attached or removed: no labels to give it yet
            _ => return None,
        };
        Some((
            vec![
                ("network".into(), network.to_string()),
                ("endpoint".into(), endpoint.to_string()),
            ],
            t,
        ))
    });
    traffic(
        reg,
        "endpoint",
        [
            "the agent read from the endpoint's interface (sent by the container; a TSO super-frame counts once)",
            "the agent wrote to the endpoint's interface (received by the container)",
        ],
        ports,
    );
}

/// Per backend of each virtual service: its connections, its active health and
/// whether passive health has taken it out, labelled by the service's fwmark
/// and VIP so that a dashboard can count a service's backends and the unwell ones.
fn balancer(reg: &mut Registry, table: &[VirtualService]) {
    let conns = Family::<Labels, Gauge<i64>>::default();
    let healthy = Family::<Labels, Gauge<i64>>::default();
    let ejected = Family::<Labels, Gauge<i64>>::default();
    for vs in table {
        for b in &vs.backends {
            let base: Labels = vec![
                ("fwmark".into(), vs.fwmark.to_string()),
                ("vip".into(), vs.vip.to_string()),
                ("backend".into(), b.address.to_string()),
            ];
            for (state, n) in [("active", b.active), ("inactive", b.inactive)] {
                let mut l = base.clone();
                l.push(("state".into(), state.into()));
                conns.get_or_create(&l).set(i64::from(n));
            }
            healthy.get_or_create(&base).set(i64::from(b.healthy));
            ejected.get_or_create(&base).set(i64::from(b.ejected));
        }
    }
    reg.register(
        "lb_backend_connections",
        "Connections per backend, active (established) or inactive",
        conns,
    );
    reg.register(
        "lb_backend_healthy",
        "1 when the backend passes its health checks",
        healthy,
    );
    reg.register(
        "lb_backend_ejected",
        "1 while passive health keeps the backend out of scheduling (new connections to it failed)",
        ejected,
    );
}

/// The text exposition of everything the agent measures.
pub fn render(a: &Agent) -> String {
    let mut reg = Registry::with_prefix("vxmesh");
    let c = a.counters();
    counter(
        &mut reg,
        "port_rx_frames",
        "Frames read from endpoint ports",
        c.port_rx,
    );
    counter(
        &mut reg,
        "port_tx_frames",
        "Frames written to endpoint ports",
        c.port_tx,
    );
    counter(
        &mut reg,
        "underlay_rx_datagrams",
        "VXLAN datagrams received on the underlay",
        c.underlay_rx,
    );
    counter(
        &mut reg,
        "underlay_tx_datagrams",
        "VXLAN datagrams sent on the underlay",
        c.underlay_tx,
    );
    counter(
        &mut reg,
        "tunnel_rx_datagrams",
        "WireGuard datagrams received",
        c.tunnel_rx,
    );
    counter(
        &mut reg,
        "tunnel_tx_datagrams",
        "WireGuard datagrams sent (data and handshakes)",
        c.tunnel_tx,
    );
    counter(
        &mut reg,
        "flooded_frames",
        "Frames replicated as broadcast, multicast or unknown unicast",
        c.flooded,
    );
    counter(
        &mut reg,
        "neighbor_replies",
        "ARP replies and neighbour advertisements answered by the agent",
        c.neighbor_replies,
    );
    counter(
        &mut reg,
        "dns_answers",
        "DNS queries answered by the embedded DNS",
        c.dns_answers,
    );
    counter(
        &mut reg,
        "learned_macs",
        "MACs learned from static peer VTEPs",
        c.learned,
    );
    let drops = Family::<Labels, Counter<u64>>::default();
    for (reason, n) in c.drops_by_reason() {
        drops
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc_by(n);
    }
    reg.register("drops", "Frames and datagrams dropped, by reason", drops);
    let ct = a.worker.conntrack_stats();
    gauge(
        &mut reg,
        "conntrack_entries",
        "Connections tracked through service VIPs and published ports",
        ct.entries as i64,
    );
    gauge(
        &mut reg,
        "conntrack_max",
        "Connections the table holds at most (--conntrack-max); new ones evict old ones past it",
        ct.max as i64,
    );
    counter(
        &mut reg,
        "conntrack_setups",
        "Connections set up (tracked from their first packet); rate() of it is setups per second",
        ct.created,
    );
    counter(
        &mut reg,
        "conntrack_evicted",
        "Connections dropped from a full table to make room for new ones",
        ct.evicted,
    );
    counter(
        &mut reg,
        "conntrack_lock_waits",
        "Times a worker waited for the connection table's lock, held by another worker",
        ct.lock_waits,
    );
    counter(
        &mut reg,
        "tunnel_handshakes",
        "WireGuard handshakes completed with peers (new session keys)",
        c.tunnel_handshakes,
    );
    counter(
        &mut reg,
        "tunnel_rekeys",
        "WireGuard handshakes that replaced a peer's existing session (periodic rekey or key rotation)",
        c.tunnel_rekeys,
    );
    for (name, help, v) in [
        (
            "flow_log_lost",
            "Flow records lost: a worker's ring (or the connection table's buffer of ends) was full",
            c.flow_log_lost,
        ),
        (
            "flow_log_sampled",
            "Connection records left out while a worker's ring was above its watermark (one in 8 kept)",
            c.flow_log_sampled,
        ),
        (
            "flow_log_drops_limited",
            "Drop records over a worker's drop-record budget (the drops themselves are counted by reason)",
            c.flow_log_drops_limited,
        ),
        (
            "policy_audited",
            "New ingress connections an --audit policy would have dropped or rejected, let through",
            c.policy_audited,
        ),
    ] {
        counter(&mut reg, name, help, v);
    }
    traffic_by_network_and_port(&mut reg, a);
    balancer(&mut reg, &a.lb_table());
    gauge(
        &mut reg,
        "store_reachable",
        "1 when the agent's last store read succeeded",
        i64::from(a.store_reachable()),
    );
    gauge(
        &mut reg,
        "store_invalid_rows",
        "Stored rows the last read left out of the state as invalid (vxmesh stats lists them)",
        a.invalid_rows().len() as i64,
    );
    gauge(
        &mut reg,
        "endpoints_attached",
        "Endpoints of this node with an interface",
        a.attached_count() as i64,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RealServer;

    fn backend(address: &str, healthy: bool, ejected: bool) -> RealServer {
        RealServer {
            address: address.parse().unwrap(),
            forward: "Masq".into(),
            weight: 1,
            healthy,
            ejected,
            active: 2,
            inactive: 1,
        }
    }

    #[test]
    fn every_backend_has_its_health_ejection_and_connections() {
        let table = [VirtualService {
            fwmark: 257,
            vip: "10.0.0.2".parse().unwrap(),
            vni: 4097,
            scheduler: "rr".into(),
            published: vec![],
            backends: vec![
                backend("10.0.0.5", true, false),
                backend("10.0.0.6", true, true),
                backend("10.0.0.7", false, false),
            ],
        }];
        let mut reg = Registry::with_prefix("vxmesh");
        balancer(&mut reg, &table);
        let mut text = String::new();
        encode(&mut text, &reg).unwrap();
        let line = |name: &str, backend: &str, extra: &str| {
            format!("vxmesh_{name}{{fwmark=\"257\",vip=\"10.0.0.2\",backend=\"{backend}\"{extra}}}")
        };
        for (b, healthy, ejected) in [("10.0.0.5", 1, 0), ("10.0.0.6", 1, 1), ("10.0.0.7", 0, 0)] {
            for want in [
                format!("{} {healthy}", line("lb_backend_healthy", b, "")),
                format!("{} {ejected}", line("lb_backend_ejected", b, "")),
                format!(
                    "{} 2",
                    line("lb_backend_connections", b, ",state=\"active\"")
                ),
                format!(
                    "{} 1",
                    line("lb_backend_connections", b, ",state=\"inactive\"")
                ),
            ] {
                assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
            }
        }
        assert!(
            text.contains("# TYPE vxmesh_lb_backend_ejected gauge"),
            "{text}"
        );
    }
}

//! Prometheus metrics on `--metrics-addr` (`GET /metrics`), rendered at each
//! scrape from the dataplane's counters and tables (prometheus-client).

use super::Agent;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    let conns = a.connection_count();
    gauge(
        &mut reg,
        "conntrack_entries",
        "Connections tracked through service VIPs",
        conns as i64,
    );
    let backend_conns = Family::<Labels, Gauge<i64>>::default();
    let backend_healthy = Family::<Labels, Gauge<i64>>::default();
    for vs in a.lb_table() {
        for b in &vs.backends {
            let base: Labels = vec![
                ("fwmark".into(), vs.fwmark.to_string()),
                ("vip".into(), vs.vip.to_string()),
                ("backend".into(), b.address.to_string()),
            ];
            for (state, n) in [("active", b.active), ("inactive", b.inactive)] {
                let mut l = base.clone();
                l.push(("state".into(), state.into()));
                backend_conns.get_or_create(&l).set(i64::from(n));
            }
            backend_healthy
                .get_or_create(&base)
                .set(i64::from(b.healthy));
        }
    }
    reg.register(
        "lb_backend_connections",
        "Connections per backend, active (established) or inactive",
        backend_conns,
    );
    reg.register(
        "lb_backend_healthy",
        "1 when the backend passes its health checks",
        backend_healthy,
    );
    gauge(
        &mut reg,
        "store_reachable",
        "1 when the agent's last store read succeeded",
        i64::from(a.store_reachable()),
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

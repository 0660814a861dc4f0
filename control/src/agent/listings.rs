//! What the API and the metrics list of this node: its balancer's virtual
//! services and connections, the workers' counters, the rows left out of the
//! state. Reads only; nothing here changes the node.

use super::{Agent, RealServer, VirtualService};
use std::net::IpAddr;
use vxmesh_dataplane::Counters;

impl Agent {
    /// The virtual services this node balances, with their backends' connection
    /// counts, as `ipvsadm -Ln` shows them.
    pub fn lb_table(&self) -> Vec<VirtualService> {
        self.lb_rows(None)
    }

    /// [`Self::lb_table`], or only the rows of one VIP (or sandbox address):
    /// what a poller asks many times a second (the scale harness watching a
    /// change land), without building and sending every row.
    pub fn lb_rows(&self, only: Option<IpAddr>) -> Vec<VirtualService> {
        let st = self.worker.state();
        let conns = self.worker.connections();
        let ejected = self.worker.ejected();
        let row = |net: &vxmesh_dataplane::NetworkView,
                   mark: u32,
                   vip: IpAddr,
                   published: Vec<String>| {
            if only.is_some_and(|o| o != vip) {
                return None;
            }
            let svc = net.services.get(&mark)?;
            // a VIP's real servers are its tasks' addresses of its family
            let backends = svc
                .backends
                .iter()
                .filter_map(|b| Some((b, b.addr_for(&vip)?)))
                .map(|(b, address)| {
                    let mine = conns.iter().filter(|e| {
                        e.orig.zone == net.vni && e.service == mark && e.reply.src == address
                    });
                    let (mut active, mut inactive) = (0, 0);
                    for e in mine {
                        if e.state == vxmesh_dataplane::conntrack::State::Established {
                            active += 1;
                        } else {
                            inactive += 1;
                        }
                    }
                    RealServer {
                        address,
                        forward: "Masq".into(),
                        weight: b.weight,
                        healthy: b.healthy,
                        ejected: ejected.contains(&(net.vni, mark, address)),
                        active,
                        inactive,
                    }
                })
                .collect();
            Some(VirtualService {
                fwmark: mark,
                vip,
                vni: net.vni,
                scheduler: svc.scheduler.as_str().into(),
                published,
                backends,
            })
        };
        let mut out = Vec::new();
        for net in st.networks.values() {
            for (vip, mark) in net.vips.iter() {
                out.extend(row(net, *mark, vip, Vec::new()));
            }
        }
        // the routing mesh: one virtual service per publishing service, fed by
        // the ports this node answers
        if let Some(ing) = &st.ingress {
            if let Some(net) = st.networks.get(&ing.vni) {
                let mut marks: Vec<u32> = net.services.keys().copied().collect();
                marks.sort_unstable();
                for mark in marks {
                    let mut published: Vec<String> = ing
                        .published
                        .iter()
                        .filter(|(_, p)| p.fwmark == mark)
                        .map(|((proto, port), p)| {
                            let proto = if *proto == 17 { "udp" } else { "tcp" };
                            let host = if p.host_only { ",host" } else { "" };
                            format!("{port}/{proto}->{}{host}", p.target)
                        })
                        .collect();
                    published.sort();
                    out.extend(row(net, mark, ing.sandbox_ip.into(), published.clone()));
                    if let Some(ip6) = ing.sandbox_ip6 {
                        out.extend(row(net, mark, ip6.into(), published));
                    }
                }
            }
        }
        out
    }

    /// The stored rows left out of the state as invalid, at the last read.
    pub fn invalid_rows(&self) -> Vec<crate::state::validate::InvalidRow> {
        self.invalid_rows
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn attached_count(&self) -> usize {
        self.attached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The connections this node tracks through VIPs.
    pub fn conntrack_table(&self) -> Vec<crate::api_types::conntrack::ConntrackEntry> {
        self.worker
            .connections()
            .iter()
            .map(|e| crate::api_types::conntrack::ConntrackEntry {
                proto: match e.orig.proto {
                    6 => "tcp",
                    17 => "udp",
                    1 => "icmp",
                    _ => "other",
                }
                .into(),
                zone: e.orig.zone,
                src: format!("{}:{}", e.orig.src, e.orig.sport),
                dst: format!("{}:{}", e.orig.dst, e.orig.dport),
                backend: format!("{}:{}", e.reply.src, e.reply.sport),
                fwmark: e.service,
                state: format!("{:?}", e.state),
            })
            .collect()
    }

    /// Per worker: frames read from ports and from the underlay.
    pub fn worker_counters(&self) -> Vec<Counters> {
        self.worker.worker_counters()
    }

    pub fn counters(&self) -> Counters {
        self.worker.counters()
    }

    /// Connections tracked now, the table's maximum, and setups and evictions so far.
    pub fn conntrack_stats(&self) -> vxmesh_dataplane::io::dataplane::ConntrackStats {
        self.worker.conntrack_stats()
    }
}

//! What happens to tracked connections when the state changes under them: a
//! backend that went unhealthy or away, a service removed. Their entries go, and
//! both ends of each live TCP connection get a RST with the sequence number they
//! expect, so neither side hangs on a connection nobody carries any more (IPVS
//! leaves them to a silent 900 s timeout).

use super::*;
use crate::conntrack::Entry;
use crate::wire::tcp_rst::{self, End};
use rustc_hash::FxHashSet;

impl Switch {
    /// Brings per-worker derived state in line with a new control-plane state
    /// (learned MACs of removed peers go, schedulers are rebuilt) and removes the
    /// connections of backends that left. Returns the removed TCP connections
    /// whose ends should be reset ([`Switch::reset`]); the worker whose call
    /// removed them sends the resets.
    pub fn on_state(&mut self, st: &SwitchState) -> Vec<Entry> {
        self.prune_learned(st);
        self.schedulers.clear();
        self.flows.clear();
        let mut serving: FxHashSet<(u32, u32, IpAddr)> = FxHashSet::default();
        let mut known: FxHashSet<(u32, u32, IpAddr)> = FxHashSet::default();
        for (vni, net) in &st.networks {
            for (mark, svc) in &net.services {
                // named by their first address, so maglev's table is the
                // same on every node
                let names: Vec<Vec<u8>> = svc
                    .backends
                    .iter()
                    .map(|b| match b.addrs().next() {
                        Some(IpAddr::V4(a)) => a.octets().to_vec(),
                        Some(IpAddr::V6(a)) => a.octets().to_vec(),
                        None => Vec::new(),
                    })
                    .collect();
                let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
                let table = crate::lb::maglev::DEFAULT_SIZE;
                self.schedulers
                    .insert((*vni, *mark), Scheduler::new(svc.scheduler, &refs, table));
                known.extend(
                    svc.backends
                        .iter()
                        .flat_map(|b| b.addrs().map(|a| (*vni, *mark, a))),
                );
                serving.extend(
                    svc.backends
                        .iter()
                        .filter(|b| b.healthy)
                        .flat_map(|b| b.addrs().map(|a| (*vni, *mark, a))),
                );
            }
        }
        let mut ct = crate::conntrack::lock_counted(&self.conntrack);
        ct.passive.retain(|k| known.contains(k));
        let gone = ct.remove_where(|e| {
            // return paths (service 0) belong to the ingress node's entry
            e.service != 0 && !serving.contains(&(e.orig.zone, e.service, e.reply.src))
        });
        take_ends(&mut ct, &mut self.flow_log, &mut self.counters);
        drop(ct);
        gone.into_iter().filter(Conntrack::wants_reset).collect()
    }

    /// Sweeps the connection table for connections idle past their timeout
    /// (in slices: see [`crate::conntrack::expire_in_slices`]); their ends go
    /// to this worker's flow log. Returns the established TCP ones, whose
    /// ends should be reset.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Entry> {
        let mut gone = Vec::new();
        let Self {
            conntrack,
            flow_log,
            counters,
            ..
        } = self;
        crate::conntrack::expire_in_slices(
            conntrack,
            now_ms,
            |e| gone.push(*e),
            |ct| take_ends(ct, flow_log, counters),
        );
        gone
    }

    /// Writes a RST for one end of a connection that is gone into `buf` and
    /// says where it goes: to the client (`to_client`, from the address it
    /// connected to) or to the backend (from the client's address). `Drop` when
    /// that end cannot be reached from this node any more.
    pub fn reset<'s>(
        &mut self,
        st: &'s SwitchState,
        e: &Entry,
        to_client: bool,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        let Some(net) = st.networks.get(&e.orig.zone) else {
            return Action::Drop(DropReason::UnknownVni);
        };
        let ingress = st.ingress.as_ref().filter(|i| {
            i.vni == e.orig.zone
                && match e.orig.dst {
                    IpAddr::V4(a) => a == i.sandbox_ip,
                    IpAddr::V6(a) => Some(a) == i.sandbox_ip6,
                }
        });
        let our_mac = ingress.map_or(net.gateway_mac, |i| i.sandbox_mac);
        let client = End {
            mac: [0; 6],
            ip: e.orig.src,
            port: e.orig.sport,
        };
        let (src, dst, seq) = if to_client {
            let dst_mac = match ingress {
                Some(i) => i.host_mac,
                None => match net.neighbors.get(&e.orig.src) {
                    Some(m) => *m,
                    None => return Action::Drop(DropReason::NoRoute),
                },
            };
            let from = End {
                mac: our_mac,
                ip: e.orig.dst,
                port: e.orig.dport,
            };
            (
                from,
                End {
                    mac: dst_mac,
                    ..client
                },
                e.next_seq[1],
            )
        } else {
            let Some(mac) = net.neighbors.get(&e.reply.src).copied() else {
                return Action::Drop(DropReason::NoBackend);
            };
            let backend = End {
                mac,
                ip: e.reply.src,
                port: e.reply.sport,
            };
            (
                End {
                    mac: our_mac,
                    ..client
                },
                backend,
                e.next_seq[0],
            )
        };
        let mut frame = [0u8; tcp_rst::RST_LEN];
        let Some(n) = tcp_rst::write(&mut frame, src, dst, seq, None) else {
            return Action::Drop(DropReason::Malformed);
        };
        buf.load_frame(&frame[..n]);
        self.counters.resets_sent += 1;
        match (ingress, to_client) {
            (Some(i), true) => Action::Deliver(i.port),
            _ => self.send_to_mac(net, dst.mac, buf),
        }
    }
}

//! Routes about this node itself rather than the cluster's state in the
//! store: its dataplane's counters, balancer and connections, a trace of a
//! network's frames, and the doctor's checks run from here.

use super::answer::{Ag, ApiError, Res, Sorted};
use crate::api_types::conntrack::ConntrackEntry;
use crate::api_types::doctor::Report;
use crate::api_types::lb::{LbQuery, VirtualService};
use crate::api_types::stats::{ConntrackCounts, Frames, Stats};
use crate::api_types::trace::{TraceRequest, FRAMES_HEADER};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

pub(super) async fn lb_table(State(a): Ag, Query(q): Query<LbQuery>) -> Res<Vec<VirtualService>> {
    Ok(Sorted(a.lb_rows(q.vip)))
}

pub(super) async fn conntrack_table(State(a): Ag) -> Res<Vec<ConntrackEntry>> {
    Ok(Sorted(a.conntrack_table()))
}

/// A pcap file of what the switch saw on a network (`vxmesh trace`).
pub(super) async fn trace(State(a): Ag, Json(r): Json<TraceRequest>) -> Result<Response, ApiError> {
    let (file, n) = a.trace(&r.network, &r.filter, r.seconds, r.count).await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/vnd.tcpdump.pcap".to_string(),
            ),
            (
                axum::http::HeaderName::from_static(FRAMES_HEADER),
                n.to_string(),
            ),
        ],
        file,
    )
        .into_response())
}

/// `vxmesh doctor`: every check, run now (it probes the other nodes, so it
/// takes a few seconds).
pub(super) async fn doctor(State(a): Ag) -> Res<Report> {
    Ok(Sorted(a.doctor().await))
}

pub(super) async fn stats(State(a): Ag) -> Res<Stats> {
    let invalid = a.invalid_rows();
    let c = a.counters();
    let ct = a.conntrack_stats();
    Ok(Sorted(Stats {
        node: a.node.clone(),
        advertise_addr: a.advertise_addr,
        endpoint_mtu: a.mtus.plain,
        encrypted_endpoint_mtu: a.mtus.encrypted,
        store: a.store_name(),
        store_reachable: a.store_reachable(),
        follow: a.follow_stats.costs(),
        invalid_rows: invalid.len(),
        invalid,
        frames: frames(&c),
        neighbor_replies: c.neighbor_replies,
        flooded: c.flooded,
        learned: c.learned,
        dns_answers: c.dns_answers,
        probes_answered: c.probes_answered,
        probe_replies: c.probe_replies,
        drops: c
            .drops_by_reason()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        flow_logs: a.flows.is_some(),
        flow_log_lost: c.flow_log_lost,
        flow_log_sampled: c.flow_log_sampled,
        flow_log_drops_limited: c.flow_log_drops_limited,
        policy_audited: c.policy_audited,
        conntrack: ConntrackCounts {
            entries: ct.entries,
            max: ct.max,
            setups: ct.created,
            evicted: ct.evicted,
            lock_waits: ct.lock_waits,
        },
        workers: a.worker_counters().iter().map(frames).collect(),
    }))
}

fn frames(c: &vxmesh_dataplane::Counters) -> Frames {
    Frames {
        port_rx: c.port_rx,
        port_tx: c.port_tx,
        underlay_rx: c.underlay_rx,
        underlay_tx: c.underlay_tx,
        tunnel_rx: c.tunnel_rx,
        tunnel_tx: c.tunnel_tx,
    }
}

//! Tables for people, JSON (`--format json`) for scripts; every listing has
//! both, each from the API's types.

use super::Format;
use crate::api_types::conntrack::ConntrackEntry;
use crate::api_types::doctor::{Check, Report, Status};
use crate::api_types::lb::VirtualService;
use crate::api_types::networks::NetworkListing;
use crate::api_types::nodes::NodeListing;
use crate::api_types::policies::Policy;
use crate::api_types::services::{Endpoint, Service, ServiceListing};
use crate::api_types::stats::Stats;
use serde::Serialize;
use std::fmt::Display;

/// A value a table shows; `-` when there is none.
pub(super) fn or_dash<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A list as `a,b`; `-` when empty.
pub fn join<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    let parts: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `v` as indented JSON, its object keys sorted (as the agent's answers
/// have always been printed: scripts may compare them).
pub fn pretty(v: &impl Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(v)?)?
    );
    Ok(())
}

/// A created or removed object: its key fields on one line, or the object as JSON.
pub fn created(f: Format, v: &impl Serialize, line: String) -> anyhow::Result<()> {
    match f {
        Format::Json => pretty(v),
        Format::Table => {
            println!("{line}");
            Ok(())
        }
    }
}

/// A service's VIPs, IPv4 ones first, as the API lists them (by network).
pub fn vips(s: &Service) -> String {
    join(s.vips.values().chain(s.vips6.values()))
}

pub fn networks(f: Format, v: &[NetworkListing]) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(&v);
    }
    table(
        &[
            "NAME",
            "VNI",
            "SUBNETS",
            "GATEWAYS",
            "ENDPOINTS",
            "PEER VTEPS",
            "FLAGS",
        ],
        v.iter()
            .map(|l| {
                let n = &l.network;
                let mut flags = vec![];
                if n.encrypted {
                    flags.push("encrypted");
                }
                if n.internal {
                    flags.push("internal");
                }
                vec![
                    n.name.clone(),
                    n.vni.to_string(),
                    join(&n.subnets),
                    join(&n.gateways),
                    l.endpoints.to_string(),
                    join(&n.peer_vteps),
                    join(flags),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn endpoints(f: Format, v: &[Endpoint]) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(&v);
    }
    table(
        &[
            "ID", "NETWORK", "NODE", "IPS", "MAC", "NETNS", "IFNAME", "SERVICE",
        ],
        v.iter()
            .map(|e| {
                vec![
                    e.id.clone(),
                    e.network.clone(),
                    e.node.clone(),
                    join(&e.ips),
                    e.mac.clone(),
                    e.netns.clone(),
                    e.ifname.clone(),
                    or_dash(e.service.as_ref()),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn nodes(f: Format, v: &[NodeListing]) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(&v);
    }
    table(
        &[
            "NAME",
            "STATUS",
            "ADDRESS",
            "TUNNEL ADDR",
            "PUBLIC KEY",
            "KIND",
            "INGRESS",
            "HEARTBEAT",
        ],
        v.iter()
            .map(|l| {
                let n = &l.node;
                vec![
                    n.name.clone(),
                    l.status.as_str().into(),
                    n.advertise_addr.to_string(),
                    or_dash(n.tunnel_addr),
                    or_dash(n.public_key.as_ref()),
                    if n.external { "external" } else { "vxmesh" }.into(),
                    if n.ingress { "on" } else { "off" }.into(),
                    l.heartbeat_age_ms
                        .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
                        .unwrap_or_else(|| "never".into()),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn services(f: Format, v: &[ServiceListing]) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(&v);
    }
    table(
        &[
            "NAME",
            "NETWORKS",
            "VIPS",
            "MODE",
            "SCHEDULER",
            "FWMARK",
            "PORTS",
            "TASKS",
        ],
        v.iter()
            .map(|l| {
                let sv = &l.service;
                let ports: Vec<String> = sv
                    .ports
                    .iter()
                    .map(|p| {
                        let host = if p.mode == "host" { ",host" } else { "" };
                        format!("*:{}->{}/{}{host}", p.published, p.target, p.proto)
                    })
                    .collect();
                vec![
                    sv.name.clone(),
                    join(&sv.networks),
                    vips(sv),
                    sv.endpoint_mode.clone(),
                    sv.scheduler.clone(),
                    sv.fwmark.to_string(),
                    ports.join(" "),
                    l.tasks.to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// The virtual services, as `ipvsadm -Ln` prints them.
pub fn lb(f: Format, v: &[VirtualService]) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(&v);
    }
    println!("IP Virtual Server (vxmesh)");
    println!("Prot LocalAddress:Port Scheduler Flags");
    println!("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn");
    for vs in v {
        if vs.published.is_empty() {
            println!(
                "FWM  {} {} (VIP {}, VNI {})",
                vs.fwmark, vs.scheduler, vs.vip, vs.vni
            );
        } else {
            println!(
                "FWM  {} {} (ingress {}, VNI {})",
                vs.fwmark,
                vs.scheduler,
                join(&vs.published),
                vs.vni
            );
        }
        for b in &vs.backends {
            // past ipvsadm's columns: why a backend gets no new connections
            let mut why = String::new();
            if !b.healthy {
                why.push_str(" unhealthy");
            }
            if b.ejected {
                why.push_str(" ejected");
            }
            let line = format!(
                "  -> {:<28} {:<7} {:<6} {:<10} {:<9}{why}",
                format!("{}:0", b.address),
                b.forward,
                b.weight,
                b.active,
                b.inactive
            );
            println!("{}", line.trim_end());
        }
    }
    Ok(())
}

pub fn conntrack(f: Format, v: &[ConntrackEntry]) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(&v);
    }
    table(
        &[
            "PROTO", "ZONE", "SOURCE", "VIP", "BACKEND", "FWMARK", "STATE",
        ],
        v.iter()
            .map(|e| {
                vec![
                    e.proto.clone(),
                    e.zone.to_string(),
                    e.src.clone(),
                    e.dst.clone(),
                    e.backend.clone(),
                    e.fwmark.to_string(),
                    e.state.clone(),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub fn stats(f: Format, v: &Stats) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
    }
    let (fr, ct) = (&v.frames, &v.conntrack);
    let mut rows: Vec<Vec<String>> = [
        ("port_rx", fr.port_rx),
        ("port_tx", fr.port_tx),
        ("underlay_rx", fr.underlay_rx),
        ("underlay_tx", fr.underlay_tx),
        ("tunnel_rx", fr.tunnel_rx),
        ("tunnel_tx", fr.tunnel_tx),
        ("neighbor_replies", v.neighbor_replies),
        ("flooded", v.flooded),
        ("learned", v.learned),
        ("probes_answered", v.probes_answered),
        ("probe_replies", v.probe_replies),
        ("conntrack entries", ct.entries as u64),
        ("conntrack max", ct.max as u64),
        ("conntrack setups", ct.setups),
        ("conntrack evicted", ct.evicted),
        ("conntrack lock_waits", ct.lock_waits),
    ]
    .iter()
    .map(|(k, n)| vec![k.to_string(), n.to_string()])
    .collect();
    rows.extend(
        v.drops
            .iter()
            .map(|(k, n)| vec![format!("drop {k}"), n.to_string()]),
    );
    table(&["COUNTER", "VALUE"], rows);
    let reach = if v.store_reachable {
        "reachable"
    } else {
        "unreachable: forwarding on the last state"
    };
    println!("store {} {reach}", v.store);
    println!("invalid_rows {}", v.invalid.len());
    for r in &v.invalid {
        println!(
            "  {} {}: {} (left out of the state)",
            r.kind, r.key, r.reason
        );
    }
    Ok(())
}

pub fn policies(f: Format, v: &[Policy]) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(&v);
    }
    table(
        &["ID", "NODE", "PORT", "FROM", "ACTION", "MODE"],
        v.iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.node.clone(),
                    format!("{}/{}", p.port, p.proto),
                    p.from.map_or_else(|| "anywhere".into(), |n| n.to_string()),
                    p.action.clone(),
                    if p.audit { "audit" } else { "enforce" }.into(),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `vxmesh doctor`'s report: a line per check (status, check, detail) and,
/// under a warning or a failure, what to do; returns how many failed.
pub fn doctor(f: Format, v: &Report) -> anyhow::Result<usize> {
    let failed = v.count(Status::Fail);
    if f == Format::Json {
        pretty(v)?;
        return Ok(failed);
    }
    let width = v.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    for c in &v.checks {
        println!(
            "{:<4}  {:<width$}  {}",
            c.status.as_str(),
            c.check,
            c.detail
        );
        if let Some(fix) = &c.fix {
            println!("{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    println!(
        "{}: {} ok, {} warn, {failed} fail",
        or_dash(v.node.as_ref()),
        v.count(Status::Ok),
        v.count(Status::Warn)
    );
    Ok(failed)
}

/// The report when the agent itself cannot be asked: one failed check.
pub fn doctor_unreachable(error: &str) -> Report {
    Report {
        node: None,
        status: Status::Fail,
        checks: vec![Check::fail(
            "agent",
            error,
            "start the agent on this node (vxmesh agent ...; see its service's log), or point -H / VXMESH_HOST at its --api socket",
        )],
    }
}

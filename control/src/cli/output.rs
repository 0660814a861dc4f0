//! Tables for people, JSON (`--format json`) for scripts; every listing has both.

use super::Format;
use serde_json::Value;

pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(_) => join(v),
        v => v.to_string(),
    }
}

/// An array as `a,b`; `-` when empty.
pub fn join(v: &Value) -> String {
    let parts: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
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

pub fn pretty(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A created or removed object: its key fields on one line, or the object as JSON.
pub fn created(f: Format, v: &Value, fields: &[&Value]) -> anyhow::Result<()> {
    match f {
        Format::Json => pretty(v),
        Format::Table => {
            println!(
                "{}",
                fields.iter().map(|x| s(x)).collect::<Vec<_>>().join(" ")
            );
            Ok(())
        }
    }
}

fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array().into_iter().flatten().map(f).collect()
}

pub fn networks(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
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
        rows(v, |n| {
            let mut flags = vec![];
            if n["encrypted"] == Value::Bool(true) {
                flags.push("encrypted");
            }
            if n["internal"] == Value::Bool(true) {
                flags.push("internal");
            }
            vec![
                s(&n["name"]),
                s(&n["vni"]),
                join(&n["subnets"]),
                join(&n["gateways"]),
                s(&n["endpoints"]),
                join(&n["peer_vteps"]),
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join(",")
                },
            ]
        }),
    );
    Ok(())
}

pub fn endpoints(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
    }
    table(
        &[
            "ID", "NETWORK", "NODE", "IPS", "MAC", "NETNS", "IFNAME", "SERVICE",
        ],
        rows(v, |e| {
            [
                "id", "network", "node", "ips", "mac", "netns", "ifname", "service",
            ]
            .iter()
            .map(|k| s(&e[*k]))
            .collect()
        }),
    );
    Ok(())
}

pub fn nodes(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
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
        rows(v, |n| {
            vec![
                s(&n["name"]),
                s(&n["status"]),
                s(&n["advertise_addr"]),
                s(&n["tunnel_addr"]),
                s(&n["public_key"]),
                if n["external"] == Value::Bool(true) {
                    "external".into()
                } else {
                    "vxmesh".into()
                },
                if n["ingress"] == Value::Bool(true) {
                    "on".into()
                } else {
                    "off".into()
                },
                n["heartbeat_age_ms"]
                    .as_u64()
                    .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "never".into()),
            ]
        }),
    );
    Ok(())
}

pub fn services(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
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
        rows(v, |sv| {
            let vips = Value::Array(
                ["vips", "vips6"]
                    .iter()
                    .filter_map(|k| sv[*k].as_object())
                    .flat_map(|o| o.values().cloned())
                    .collect(),
            );
            vec![
                s(&sv["name"]),
                join(&sv["networks"]),
                join(&vips),
                s(&sv["endpoint_mode"]),
                s(&sv["scheduler"]),
                s(&sv["fwmark"]),
                sv["ports"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let host = if p["mode"] == "host" { ",host" } else { "" };
                                format!(
                                    "*:{}->{}/{}{host}",
                                    s(&p["published"]),
                                    s(&p["target"]),
                                    s(&p["proto"])
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
                s(&sv["tasks"]),
            ]
        }),
    );
    Ok(())
}

/// The virtual services, as `ipvsadm -Ln` prints them.
pub fn lb(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
    }
    println!("IP Virtual Server (vxmesh)");
    println!("Prot LocalAddress:Port Scheduler Flags");
    println!("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn");
    for vs in v.as_array().into_iter().flatten() {
        let published = join(&vs["published"]);
        if vs["published"].as_array().is_none_or(|a| a.is_empty()) {
            println!(
                "FWM  {} {} (VIP {}, VNI {})",
                s(&vs["fwmark"]),
                s(&vs["scheduler"]),
                s(&vs["vip"]),
                s(&vs["vni"])
            );
        } else {
            println!(
                "FWM  {} {} (ingress {published}, VNI {})",
                s(&vs["fwmark"]),
                s(&vs["scheduler"]),
                s(&vs["vni"])
            );
        }
        for b in vs["backends"].as_array().into_iter().flatten() {
            // past ipvsadm's columns: why a backend gets no new connections
            let mut why = String::new();
            if b["healthy"] == Value::Bool(false) {
                why.push_str(" unhealthy");
            }
            if b["ejected"] == Value::Bool(true) {
                why.push_str(" ejected");
            }
            let line = format!(
                "  -> {:<28} {:<7} {:<6} {:<10} {:<9}{why}",
                format!("{}:0", s(&b["address"])),
                s(&b["forward"]),
                s(&b["weight"]),
                s(&b["active"]),
                s(&b["inactive"])
            );
            println!("{}", line.trim_end());
        }
    }
    Ok(())
}

pub fn conntrack(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
    }
    table(
        &[
            "PROTO", "ZONE", "SOURCE", "VIP", "BACKEND", "FWMARK", "STATE",
        ],
        rows(v, |e| {
            ["proto", "zone", "src", "dst", "backend", "fwmark", "state"]
                .iter()
                .map(|k| s(&e[*k]))
                .collect()
        }),
    );
    Ok(())
}

pub fn stats(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
    }
    let mut rows: Vec<Vec<String>> = [
        "port_rx",
        "port_tx",
        "underlay_rx",
        "underlay_tx",
        "tunnel_rx",
        "tunnel_tx",
        "neighbor_replies",
        "flooded",
        "learned",
        "probes_answered",
        "probe_replies",
    ]
    .iter()
    .map(|k| vec![k.to_string(), s(&v[*k])])
    .collect();
    for k in ["entries", "max", "setups", "evicted", "lock_waits"] {
        rows.push(vec![format!("conntrack {k}"), s(&v["conntrack"][k])]);
    }
    if let Some(d) = v["drops"].as_object() {
        rows.extend(d.iter().map(|(k, n)| vec![format!("drop {k}"), s(n)]));
    }
    table(&["COUNTER", "VALUE"], rows);
    let reach = if v["store_reachable"] == Value::Bool(true) {
        "reachable"
    } else {
        "unreachable: forwarding on the last state"
    };
    println!("store {} {reach}", s(&v["store"]));
    let invalid = v["invalid"].as_array().map(Vec::len).unwrap_or(0);
    println!("invalid_rows {invalid}");
    for r in v["invalid"].as_array().into_iter().flatten() {
        println!(
            "  {} {}: {} (left out of the state)",
            s(&r["kind"]),
            s(&r["key"]),
            s(&r["reason"])
        );
    }
    Ok(())
}

pub fn policies(f: Format, v: &Value) -> anyhow::Result<()> {
    if f == Format::Json {
        return pretty(v);
    }
    table(
        &["ID", "NODE", "PORT", "FROM", "ACTION", "MODE"],
        rows(v, |p| {
            vec![
                s(&p["id"]),
                s(&p["node"]),
                format!("{}/{}", s(&p["port"]), s(&p["proto"])),
                if p["from"].is_null() {
                    "anywhere".into()
                } else {
                    s(&p["from"])
                },
                s(&p["action"]),
                if p["audit"].as_bool() == Some(true) {
                    "audit".into()
                } else {
                    "enforce".into()
                },
            ]
        }),
    );
    Ok(())
}

/// `vxmesh doctor`'s report: a line per check (status, check, detail) and,
/// under a warning or a failure, what to do; returns how many failed.
pub fn doctor(f: Format, v: &Value) -> anyhow::Result<usize> {
    let checks: Vec<&Value> = v["checks"].as_array().into_iter().flatten().collect();
    let count = |s: &str| checks.iter().filter(|c| c["status"] == s).count();
    let failed = count("fail");
    if f == Format::Json {
        pretty(v)?;
        return Ok(failed);
    }
    let width = checks
        .iter()
        .map(|c| s(&c["check"]).len())
        .max()
        .unwrap_or(0);
    for c in &checks {
        println!(
            "{:<4}  {:<width$}  {}",
            s(&c["status"]),
            s(&c["check"]),
            s(&c["detail"])
        );
        if let Some(fix) = c["fix"].as_str() {
            println!("{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    println!(
        "{}: {} ok, {} warn, {failed} fail",
        s(&v["node"]),
        count("ok"),
        count("warn")
    );
    Ok(failed)
}

/// The report when the agent itself cannot be asked: one failed check.
pub fn doctor_unreachable(error: &str) -> Value {
    serde_json::json!({
        "node": null,
        "status": "fail",
        "checks": [{
            "check": "agent",
            "status": "fail",
            "detail": error,
            "fix": "start the agent on this node (vxmesh agent ...; see its service's log), or point -H / VXMESH_HOST at its --api socket",
        }],
    })
}

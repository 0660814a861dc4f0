//! What is measured at each size: changes of every kind timed to the real
//! agents' dataplanes, and what they cost; an idle agent; the listings.

use crate::probe::{converge, percentiles, time_cli, Agent, ProcStat};
use crate::{cluster, Cluster, LIMIT, PUBLISHED};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one batch of changes cost, from before to after.
struct Costs {
    procs: Vec<ProcStat>,
    follow: Vec<Value>,
}

fn costs(c: &Cluster) -> Result<Costs> {
    Ok(Costs {
        procs: c.agents.iter().map(Agent::proc).collect::<Result<_>>()?,
        follow: c.agents.iter().map(Agent::follow).collect::<Result<_>>()?,
    })
}

/// Changes of every kind at the cluster's current size, each timed to every
/// real agent's dataplane.
pub fn changes(c: &mut Cluster) -> Result<Value> {
    let n = c.vips.len();
    let samples = c.args.samples;
    let tasks = c.args.tasks;
    let mut conv: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut writes: BTreeMap<&str, Vec<(f64, u64, u64)>> = BTreeMap::new();
    let before = costs(c)?;
    let mut count = 0usize;
    let agents = c.agents.clone();
    for k in 0..samples {
        // a service with its tasks, then gone again (the removal waited for, untimed)
        let idx = 1_000_000 + k;
        let w0 = c.store_process_wchar();
        let t0 = Instant::now();
        let (vip, _, cost) =
            cluster::create_service(&c.writer, idx, tasks, c.sim_nodes(), &mut c.next_id)?;
        let d = converge(&agents, t0, LIMIT, "service created", |a| {
            Ok(a.backends(vip)?.len() == tasks)
        })?;
        let w1 = c.store_process_wchar();
        conv.entry("service_created")
            .or_default()
            .push(d.as_secs_f64());
        writes
            .entry("service_created")
            .or_default()
            .push((cost.secs, cost.wchar, w1 - w0));
        cluster::remove_service(&c.writer, &cluster::service_name(idx))?;
        converge(&agents, Instant::now(), LIMIT, "service removed", |a| {
            Ok(a.listed_backends(vip)?.is_empty())
        })?;
        count += 2;

        // a task added to and removed from an existing service
        let svc = (k * 7919) % n;
        let vip = c.vips[svc];
        let id = cluster::task_id(c.next_id);
        c.next_id += 1;
        let node = cluster::sim_node(k % c.sim_nodes());
        let w0 = c.store_process_wchar();
        let t0 = Instant::now();
        let (ip, cost) =
            cluster::add_sim_task(&c.writer, &cluster::service_name(svc), &node, id.clone())?;
        let d = converge(&agents, t0, LIMIT, "task added", |a| {
            Ok(a.backends(vip)?.contains(&ip))
        })?;
        let w1 = c.store_process_wchar();
        conv.entry("task_added").or_default().push(d.as_secs_f64());
        writes
            .entry("task_added")
            .or_default()
            .push((cost.secs, cost.wchar, w1 - w0));
        let w0 = c.store_process_wchar();
        let t0 = Instant::now();
        let cost = cluster::remove_task(&c.writer, &id)?;
        let d = converge(&agents, t0, LIMIT, "task removed", |a| {
            Ok(!a.listed_backends(vip)?.contains(&ip))
        })?;
        let w1 = c.store_process_wchar();
        conv.entry("task_removed")
            .or_default()
            .push(d.as_secs_f64());
        writes
            .entry("task_removed")
            .or_default()
            .push((cost.secs, cost.wchar, w1 - w0));
        count += 2;

        // a policy on r1 for the published port, seen by real connections
        let r1 = [agents[0].clone()];
        let t0 = Instant::now();
        let (pid, _) = cluster::add_policy(&c.writer, &c.r1.name, PUBLISHED, "reject")?;
        let d = converge(&r1, t0, LIMIT, "policy added", |_| {
            Ok(!c.published_answers()?)
        })?;
        conv.entry("policy_added")
            .or_default()
            .push(d.as_secs_f64());
        let t0 = Instant::now();
        cluster::remove_policy(&c.writer, &pid)?;
        let d = converge(&r1, t0, LIMIT, "policy removed", |_| c.published_answers())?;
        conv.entry("policy_removed")
            .or_default()
            .push(d.as_secs_f64());
        count += 2;
    }
    let after = costs(c)?;
    // node down: heartbeats stop; the agents wait DOWN_AFTER (4 s) by design
    let downs = (samples / 5).max(2);
    for k in 0..downs {
        let node = cluster::sim_node(k % c.sim_nodes());
        let node2 = node.clone();
        let (found, _) = c.writer.run(move |s| {
            s.load().ok().and_then(|snap| {
                let st = snap.state;
                st.endpoints.values().find_map(|e| {
                    let svc = st.services.get(e.service.as_deref()?)?;
                    (e.node == node2 && e.network == cluster::NETWORK)
                        .then(|| (svc.vips.get(cluster::NETWORK).copied(), e.ips[0]))
                })
            })
        })?;
        let (Some(vip), ip) = found.context("no task on the node to take down")? else {
            bail!("a service without a VIP");
        };
        if let Ok(mut b) = c.writer.beating.lock() {
            b.remove(&node);
        }
        let t0 = Instant::now();
        let d = converge(&agents, t0, LIMIT, "node down", |a| {
            Ok(!a.backends(vip)?.contains(&ip))
        })
        .with_context(|| {
            format!(
                "{node} ({ip} of VIP {vip}); r1 sees nodes {}",
                agents[0].get("/v1/nodes").unwrap_or_default()
            )
        })?;
        conv.entry("node_down").or_default().push(d.as_secs_f64());
        if let Ok(mut b) = c.writer.beating.lock() {
            b.insert(node);
        }
        converge(&agents, Instant::now(), LIMIT, "node back", |a| {
            Ok(a.backends(vip)?.contains(&ip))
        })?;
    }
    let mut out = json!({});
    for (kind, v) in &conv {
        let (p50, p99) = percentiles(v);
        out["convergence_ms"][*kind] = json!({ "p50": p50 * 1e3, "p99": p99 * 1e3, "n": v.len() });
    }
    for (kind, v) in &writes {
        let m = |f: &dyn Fn(&(f64, u64, u64)) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
        out["store_write"][*kind] = json!({
            "commit_ms": m(&|w| w.0) * 1e3,
            "writer_bytes": m(&|w| w.1 as f64),
            "store_process_bytes": m(&|w| w.2 as f64),
        });
    }
    for (i, a) in c.agents.iter().enumerate() {
        let (b, e) = (&before.procs[i], &after.procs[i]);
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let (fb, fe) = (&before.follow[i], &after.follow[i]);
        let reconciles = (f(fe, "reconciles") - f(fb, "reconciles")).max(1.0);
        out["agents"][&a.name] = json!({
            "changes": count,
            "cpu_ms_per_change": (e.cpu_secs - b.cpu_secs) / count as f64 * 1e3,
            "reconciles": reconciles,
            "reconcile_ms": (f(fe, "reconcile_seconds") - f(fb, "reconcile_seconds")) / reconciles * 1e3,
            "load_ms": (f(fe, "load_seconds") - f(fb, "load_seconds"))
                / (f(fe, "loads") - f(fb, "loads")).max(1.0) * 1e3,
            "read_bytes_per_reconcile": (e.rchar - b.rchar) as f64 / reconciles,
            "objects": fe["objects"],
        });
    }
    Ok(out)
}

/// Memory and CPU of each agent over `secs` with nothing changing.
pub fn idle(c: &Cluster, secs: u64) -> Result<Value> {
    let b: Vec<ProcStat> = c.agents.iter().map(Agent::proc).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(secs));
    let mut out = json!({});
    for (i, a) in c.agents.iter().enumerate() {
        let e = a.proc()?;
        out[&a.name] = json!({
            "rss_mib": e.rss_kib as f64 / 1024.0,
            "cpu_percent": (e.cpu_secs - b[i].cpu_secs) / secs as f64 * 100.0,
        });
    }
    Ok(out)
}

pub fn listings(c: &Cluster) -> Result<Value> {
    let sock = c.t.socket(&c.r1);
    let mut out = json!({});
    for what in ["service", "lb", "endpoint"] {
        let (secs, bytes) = time_cli(&sock, &[what, "ls"], 3)?;
        out[format!("{what}_ls")] = json!({ "ms": secs * 1e3, "bytes": bytes });
    }
    Ok(out)
}

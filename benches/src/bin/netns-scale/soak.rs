//! `--soak DURATION`: churn at full size, and what it leaves behind.
//!
//! Each round adds a task to a service and removes the oldest churned task
//! (twenty in flight, so the cluster's size stays put), every fifth round
//! publishes or unpublishes a port on a service (its tasks join or leave the
//! ingress network), and every tenth a real task of the `real` service is
//! created on r2, answers a connection through the VIP from r1's client, and is
//! removed: then no agent may keep it as a backend or a conntrack entry to it.
//! Memory, balancer rows and backends, conntrack entries and the store are
//! sampled along the way; at the end each is compared with its value after
//! warm-up (the churned tasks drained first).

use crate::{cluster, probe, Cluster};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::{answer_server, in_netns};

/// After a real task is removed, how long its backends and conntrack entries
/// may take to go before they count as stale.
const GONE_WITHIN: Duration = Duration::from_secs(5);

fn sample(c: &Cluster, at: f64) -> Result<Value> {
    let mut agents = json!({});
    for a in &c.agents {
        let rows = a.get("/v1/lb")?;
        let rows = rows.as_array().cloned().unwrap_or_default();
        let backends: usize = rows
            .iter()
            .map(|r| r["backends"].as_array().map_or(0, Vec::len))
            .sum();
        let stats = a.get("/v1/stats")?;
        agents[&a.name] = json!({
            "rss_mib": a.proc()?.rss_kib as f64 / 1024.0,
            "lb_rows": rows.len(),
            "lb_backends": backends,
            "conntrack": stats["conntrack"]["entries"],
        });
    }
    Ok(json!({ "at_secs": at, "agents": agents, "store": c.store_bytes()? }))
}

/// Connects to the real service's VIP from r1's client until `want` answers
/// (round robin over the tasks); whether it did.
fn reach(c: &Cluster, want: &str) -> Result<bool> {
    let dst = SocketAddr::new(c.real_vip, 80);
    for _ in 0..20 {
        let got = in_netns(&c.client, move || -> Result<String> {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?;
        if matches!(got, Ok(ref s) if s.trim() == want) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(false)
}

/// Conntrack entries of `agent` whose backend is `ip`.
fn entries_to(a: &probe::Agent, ip: IpAddr) -> Result<usize> {
    let rows = a.get("/v1/conntrack")?;
    let prefix = format!("{ip}:");
    Ok(rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["backend"]
                .as_str()
                .is_some_and(|b| b.starts_with(&prefix))
        })
        .count())
}

pub fn run(c: &mut Cluster, duration: Duration) -> Result<Value> {
    let n = c.vips.len();
    let churn_ns = c.t.add_container("churn")?;
    let mut inflight: VecDeque<(String, usize)> = VecDeque::new();
    let mut published: Option<usize> = None;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let add = |c: &mut Cluster, inflight: &mut VecDeque<(String, usize)>, r: u64| -> Result<()> {
        let svc = r as usize % n;
        let id = cluster::task_id(c.next_id);
        c.next_id += 1;
        let node = cluster::sim_node((r >> 20) as usize % c.args.nodes.saturating_sub(2).max(1));
        cluster::add_sim_task(&c.writer, &cluster::service_name(svc), &node, id.clone())?;
        inflight.push_back((id, svc));
        Ok(())
    };
    std::thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    // the baseline: before any churn; at the end the churned tasks are drained
    let base = sample(c, 0.0)?;
    for _ in 0..20 {
        add(c, &mut inflight, rand())?;
    }
    let mut samples = vec![base.clone()];
    let every = (duration / 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
    let mut next_sample = t0 + every;
    let (mut rounds, mut real_rounds, mut stale_backends, mut stale_conntrack) =
        (0u64, 0u64, 0u64, 0u64);
    let mut unreached = 0u64;
    let mut gone_ms = Vec::new();
    while t0.elapsed() < duration {
        crate::check_stop()?;
        rounds += 1;
        add(c, &mut inflight, rand())?;
        if let Some((id, _)) = inflight.pop_front() {
            cluster::remove_task(&c.writer, &id)?;
        }
        if rounds % 5 == 0 {
            match published.take() {
                Some(svc) => {
                    cluster::update_ports(
                        &c.writer,
                        &cluster::service_name(svc),
                        None,
                        Some(20000),
                    )?;
                }
                None => {
                    let svc = rand() as usize % n;
                    cluster::update_ports(
                        &c.writer,
                        &cluster::service_name(svc),
                        Some("20000:80"),
                        None,
                    )?;
                    published = Some(svc);
                }
            }
        }
        if rounds % 10 == 0 {
            real_rounds += 1;
            let ep = c.t.cli_json(
                &c.r2,
                &[
                    "endpoint",
                    "create",
                    "--network",
                    cluster::NETWORK,
                    "--netns",
                    &churn_ns,
                    "--service",
                    "real",
                ],
            )?;
            let id = ep["id"].as_str().context("endpoint id")?.to_string();
            let ip: IpAddr = ep["ips"][0].as_str().context("endpoint ip")?.parse()?;
            let srv = answer_server(&churn_ns, "0.0.0.0:80".parse()?, false, |_| {
                "churn\n".into()
            })?;
            if !reach(c, "churn")? {
                unreached += 1;
            }
            drop(srv);
            let removed = Instant::now();
            c.t.cli_ok(&c.r2, &["endpoint", "rm", &id])?;
            let agents = c.agents.clone();
            let gone = probe::converge(&agents, removed, GONE_WITHIN, "real task gone", |a| {
                Ok(!a.listed_backends(c.real_vip)?.contains(&ip) && entries_to(a, ip)? == 0)
            });
            match gone {
                Ok(d) => gone_ms.push(d.as_secs_f64() * 1e3),
                Err(_) => {
                    for a in &agents {
                        if a.listed_backends(c.real_vip)?.contains(&ip) {
                            stale_backends += 1;
                        }
                        if entries_to(a, ip)? > 0 {
                            stale_conntrack += 1;
                        }
                    }
                }
            }
        }
        if Instant::now() >= next_sample {
            samples.push(sample(c, t0.elapsed().as_secs_f64())?);
            next_sample += every;
        }
    }
    if let Some(svc) = published.take() {
        cluster::update_ports(&c.writer, &cluster::service_name(svc), None, Some(20000))?;
    }
    while let Some((id, _)) = inflight.pop_front() {
        cluster::remove_task(&c.writer, &id)?;
    }
    std::thread::sleep(Duration::from_secs(3));
    let end = sample(c, t0.elapsed().as_secs_f64())?;
    samples.push(end.clone());
    let mut flat = json!({});
    for a in &c.agents {
        let (b, e) = (&base["agents"][&a.name], &end["agents"][&a.name]);
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        flat[&a.name] = json!({
            "rss_growth_mib": f(e, "rss_mib") - f(b, "rss_mib"),
            "lb_rows_same": b["lb_rows"] == e["lb_rows"],
            "lb_backends_same": b["lb_backends"] == e["lb_backends"],
            "conntrack_base": b["conntrack"], "conntrack_end": e["conntrack"],
        });
    }
    let (g50, g99) = probe::percentiles(&gone_ms);
    Ok(json!({
        "secs": t0.elapsed().as_secs_f64(),
        "rounds": rounds,
        "real_task_rounds": real_rounds,
        "real_task_unreached": unreached,
        "real_task_gone_ms": { "p50": g50, "p99": g99 },
        "stale_backends": stale_backends,
        "stale_conntrack": stale_conntrack,
        "store_objects_same": base["store"]["objects"] == end["store"]["objects"],
        "flat": flat,
        "samples": samples,
    }))
}

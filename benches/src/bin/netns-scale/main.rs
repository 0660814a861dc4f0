//! The scale harness (issue 21): how vxmesh's control plane behaves as a
//! cluster grows to 1,000 services of 10 tasks over 50 nodes, on SQLite and
//! on etcd, on this one machine.
//!
//! Two real agents (r1, r2) run in namespaces with real endpoints: a service
//! `real` publishing 8080 with one task on r2, a client container on r1. The
//! other nodes and every other service and task are simulated: written through
//! the state API the agents' API uses (see `cluster`), heartbeating as agents
//! do, so the real agents balance over them as over any task. The cluster grows
//! through `--steps` (10, 100, then `--services`); at each size it measures:
//!
//! - convergence: from a change committed to every real agent's dataplane
//!   showing it (its balancer table, read from the forwarding state; a policy by
//!   real connections through r1's published port), p50/p99 over `--samples`
//!   changes of each kind: service created (with its tasks), task added, task
//!   removed, policy added, node down (heartbeats stop; detection takes the
//!   agents' 4 s by design, so it is reported apart);
//! - per agent: RSS, CPU while nothing changes (10 s), CPU per change, state
//!   reads and reconciles per change with their time and the bytes read;
//! - the store: objects and bytes of state, on-disk size, bytes written per
//!   change (SQLite: by the writing thread; etcd: by the etcd process);
//! - `service ls`, `lb ls`, `endpoint ls` wall time through the CLI;
//! - the build rate: services (with their tasks) committed per second.
//!
//! `--soak DURATION` (e.g. 60s, 1h) then churns the full cluster: tasks come
//! and go, services' ports change, and a real task is added, used through its
//! VIP and removed, checking each time that no backend or conntrack entry of it
//! survives; memory, table sizes and the store are sampled to show they stay flat.
//!
//! Usage: netns-scale [--services N] [--tasks-per-service M] [--nodes K]
//!        [--store sqlite|etcd|both] [--steps 10,100,1000] [--samples S]
//!        [--soak DURATION] [--json FILE] [--svg FILE]

mod cluster;
mod measure;
mod probe;
mod soak;

use anyhow::{bail, Context, Result};
use cluster::Writer;
use probe::{converge, percentiles, Agent, ProcStat};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
/// SIGINT and SIGTERM only set a flag the polling loops check (here and in
/// `probe` and `soak`), so the topology is still torn down.
pub use vxmesh_benches::check_stop;
use vxmesh_benches::{catch_signals, BarChart, Series};
use vxmesh_netns_tests::*;

const USAGE: &str = "netns-scale [--services N] [--tasks-per-service M] [--nodes K] \
    [--store sqlite|etcd|both] [--steps 10,100,1000] [--samples S] [--soak DURATION] \
    [--json FILE] [--svg FILE]\n\
    the control plane at scale: two real agents, the rest simulated through the state API (run as root)";

/// How long one change may take before the run is called failed.
pub const LIMIT: Duration = Duration::from_secs(60);
pub const PUBLISHED: u16 = 8080;

#[derive(Debug, Clone)]
pub struct Args {
    services: usize,
    tasks: usize,
    nodes: usize,
    stores: Vec<StoreKind>,
    steps: Vec<usize>,
    samples: usize,
    soak: Option<Duration>,
    json: Option<String>,
    svg: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s}: not a duration (60s, 10m, 1h)"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{s}: not a duration (60s, 10m, 1h)"),
    }))
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        services: 1000,
        tasks: 10,
        nodes: 50,
        stores: vec![StoreKind::Sqlite, StoreKind::Etcd],
        steps: Vec::new(),
        samples: 20,
        soak: None,
        json: None,
        svg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        let num = |s: String| -> Result<usize> {
            s.parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{k} {s}: not a number from 1"))
        };
        match k.as_str() {
            "--services" => a.services = num(v()?)?,
            "--tasks-per-service" => a.tasks = num(v()?)?,
            "--nodes" => a.nodes = num(v()?)?,
            "--samples" => a.samples = num(v()?)?,
            "--store" => {
                a.stores = match v()?.as_str() {
                    "sqlite" => vec![StoreKind::Sqlite],
                    "etcd" => vec![StoreKind::Etcd],
                    "both" => vec![StoreKind::Sqlite, StoreKind::Etcd],
                    s => bail!("--store {s}: use sqlite, etcd or both"),
                }
            }
            "--steps" => {
                a.steps = v()?
                    .split(',')
                    .map(|s| num(s.to_string()))
                    .collect::<Result<_>>()?
            }
            "--soak" => a.soak = Some(parse_duration(&v()?)?),
            "--json" => a.json = Some(v()?),
            "--svg" => a.svg = Some(v()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {k} (try --help)"),
        }
    }
    if a.nodes < 3 {
        bail!("--nodes must be at least 3 (two real agents and a simulated node)");
    }
    if a.steps.is_empty() {
        a.steps = [10, 100, a.services]
            .into_iter()
            .filter(|s| *s <= a.services)
            .collect();
        a.steps.dedup();
    }
    a.steps.sort_unstable();
    a.services = *a.steps.last().unwrap_or(&a.services);
    Ok(a)
}

/// The real part of the cluster and the writer of the simulated part.
pub struct Cluster {
    /// First, so it stops (and its heartbeats with it) before the topology
    /// takes etcd down.
    pub writer: Writer,
    pub t: Topology,
    pub agents: Vec<Agent>,
    pub r1: Node,
    pub r2: Node,
    pub out: Node,
    pub client: String,
    pub real_vip: IpAddr,
    /// VIP of each simulated service, by index.
    pub vips: Vec<IpAddr>,
    pub next_id: u64,
    pub args: Args,
    _servers: Vec<AnswerServer>,
}

impl Cluster {
    fn build(kind: StoreKind, args: &Args) -> Result<Cluster> {
        let mut t = Topology::with_store("scale", kind)?;
        let r1 = t.add_node("r1")?;
        let r2 = t.add_node("r2")?;
        let ctl = t.add_outside_host("ctl")?;
        let out = t.add_outside_host("out")?;
        let mut agents = Vec::new();
        for n in [&r1, &r2] {
            t.start_agent(n, &["--workers", "1"])?;
            agents.push(Agent {
                name: n.name.clone(),
                socket: t.socket(n),
                pid: probe::agent_pid(&n.ns)?,
            });
        }
        t.cli_ok(
            &r1,
            &[
                "network",
                "create",
                cluster::NETWORK,
                "--subnet",
                cluster::SUBNET,
            ],
        )?;
        let real = t.cli_json(
            &r1,
            &[
                "service",
                "create",
                "real",
                "--network",
                cluster::NETWORK,
                "--publish",
                &format!("{PUBLISHED}:80"),
            ],
        )?;
        let real_vip: IpAddr = real["vips"][cluster::NETWORK]
            .as_str()
            .context("real service VIP")?
            .parse()?;
        let task = t.add_container("task")?;
        t.cli_ok(
            &r2,
            &[
                "endpoint",
                "create",
                "--network",
                cluster::NETWORK,
                "--netns",
                &task,
                "--service",
                "real",
            ],
        )?;
        let srv = answer_server(&task, "0.0.0.0:80".parse()?, false, |_| "real\n".into())?;
        let client = t.add_container("client")?;
        t.cli_ok(
            &r1,
            &[
                "endpoint",
                "create",
                "--network",
                cluster::NETWORK,
                "--netns",
                &client,
            ],
        )?;
        let writer = Writer::start(&ctl.ns, &t.store_url())?;
        cluster::add_sim_nodes(&writer, args.nodes - 2)?;
        Ok(Cluster {
            t,
            agents,
            r1,
            r2,
            out,
            client,
            writer,
            real_vip,
            vips: Vec::new(),
            next_id: 0,
            args: args.clone(),
            _servers: vec![srv],
        })
    }

    fn sim_nodes(&self) -> usize {
        self.args.nodes - 2
    }

    /// Grows the cluster to `target` services; services per second over the
    /// whole step and over its last tenth.
    fn grow(&mut self, target: usize) -> Result<Value> {
        let from = self.vips.len();
        let t0 = Instant::now();
        let mut tail_start = None;
        let tail_from = target - (target - from) / 10;
        let mut write_secs = Vec::new();
        while self.vips.len() < target {
            check_stop()?;
            let i = self.vips.len();
            if i == tail_from {
                tail_start = Some(Instant::now());
            }
            let (vip, _, cost) = cluster::create_service(
                &self.writer,
                i,
                self.args.tasks,
                self.sim_nodes(),
                &mut self.next_id,
            )?;
            write_secs.push(cost.secs);
            self.vips.push(vip);
        }
        let total = t0.elapsed().as_secs_f64();
        let last = self.vips[target - 1];
        let want = self.args.tasks;
        let conv = converge(&self.agents, t0, Duration::from_secs(600), "grow", |a| {
            Ok(a.backends(last)?.len() == want)
        })?;
        let tail = tail_start.map(|s| (target - tail_from) as f64 / s.elapsed().as_secs_f64());
        let (w50, w99) = percentiles(&write_secs);
        Ok(json!({
            "services_added": target - from,
            "secs": total,
            "services_per_sec": (target - from) as f64 / total.max(1e-9),
            "last_tenth_services_per_sec": tail,
            "commit_p50_ms": w50 * 1e3,
            "commit_p99_ms": w99 * 1e3,
            "agents_caught_up_secs": conv.as_secs_f64(),
        }))
    }

    fn store_bytes(&self) -> Result<Value> {
        let (objects, json_bytes) = cluster::stored(&self.writer)?;
        let disk = match self.t.store_kind() {
            StoreKind::Sqlite => {
                let size = |f: &str| std::fs::metadata(self.t.dir().join(f)).map_or(0, |m| m.len());
                (size("store.db") + size("store.db-wal")) as f64
            }
            _ => probe::etcd_metric(&self.etcd_ns(), "etcd_mvcc_db_total_size_in_bytes")?,
        };
        Ok(json!({ "objects": objects, "state_json_bytes": json_bytes, "on_disk_bytes": disk }))
    }

    fn etcd_ns(&self) -> String {
        format!("{}-etcd", self.t.prefix())
    }

    /// Bytes written so far by whatever persists the store beside the writer's
    /// own thread (etcd's process; nothing for SQLite, which the writer's
    /// thread writes itself).
    fn store_process_wchar(&self) -> u64 {
        if self.t.store_kind() == StoreKind::Sqlite {
            return 0;
        }
        pids_in(&self.etcd_ns())
            .ok()
            .and_then(|p| p.first().copied())
            .and_then(|pid| ProcStat::read(pid).ok())
            .map_or(0, |s| s.wchar)
    }

    /// Whether a new connection from the outside host to r1's published port is
    /// answered (true), refused (false); an error for anything else.
    fn published_answers(&self) -> Result<bool> {
        let dst = SocketAddr::new(IpAddr::V4(self.r1.addr), PUBLISHED);
        in_netns(&self.out.ns, move || {
            match TcpStream::connect_timeout(&dst, Duration::from_millis(300)) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(false),
                Err(e) => Err(anyhow::anyhow!("connect {dst}: {e}")),
            }
        })?
    }
}

fn run_store(kind: StoreKind, args: &Args) -> Result<Value> {
    let name = match kind {
        StoreKind::Sqlite => "sqlite",
        _ => "etcd",
    };
    eprintln!("netns-scale: {name}: building the real part");
    let mut c = Cluster::build(kind, args)?;
    let mut steps = Vec::new();
    for &size in &args.steps {
        eprintln!("netns-scale: {name}: growing to {size} services");
        let grow = c.grow(size)?;
        std::thread::sleep(Duration::from_secs(2));
        let idle = measure::idle(&c, 10)?;
        let listings = measure::listings(&c)?;
        let store = c.store_bytes()?;
        eprintln!("netns-scale: {name}: {size} services: changes");
        let changes = measure::changes(&mut c)?;
        let step = json!({
            "services": size,
            "tasks": size * args.tasks,
            "grow": grow,
            "idle": idle,
            "listings": listings,
            "store": store,
            "changes": changes,
        });
        eprintln!("{}", serde_json::to_string_pretty(&step)?);
        steps.push(step);
    }
    let soak = match args.soak {
        Some(d) => Some(soak::run(&mut c, d)?),
        None => None,
    };
    Ok(json!({ "store": name, "steps": steps, "soak": soak }))
}

fn chart(results: &[Value], args: &Args) -> BarChart {
    let mut series = Vec::new();
    for r in results {
        let store = r["store"].as_str().unwrap_or("?");
        for kind in ["service_created", "task_added"] {
            let values: Vec<f64> = r["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    s["changes"]["convergence_ms"][kind]["p99"]
                        .as_f64()
                        .unwrap_or(0.0)
                })
                .collect();
            series.push(Series {
                name: format!("{store}: {}", kind.replace('_', " ")),
                labels: values.iter().map(|v| format!("{v:.0}")).collect(),
                values,
                ranges: Vec::new(),
            });
        }
    }
    BarChart {
        title: format!(
            "convergence p99 (ms) to both real agents' dataplanes, {} tasks per service, {} nodes",
            args.tasks, args.nodes
        ),
        width: 760.0,
        groups: args.steps.iter().map(|s| format!("{s} services")).collect(),
        targets: args.steps.iter().map(|_| Some(1000.0)).collect(),
        series,
        reference: None,
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    catch_signals();
    let started = std::time::SystemTime::now();
    let mut results = Vec::new();
    for &kind in &args.stores {
        results.push(run_store(kind, &args)?);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let out = json!({
        "args": format!("{args:?}"),
        "started_unix": started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "loadavg_at_end": load.trim(),
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, chart(&results, &args).svg())?;
    }
    Ok(())
}

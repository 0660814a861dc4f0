//! The simulated part of the cluster: nodes and tasks that no agent runs,
//! written through the state API the agents' own API uses
//! (`vxmesh_control::state`, inside `store::transact`), never as raw rows, so
//! every check and allocation is the real one. A store handle lives on a thread
//! of its own in a namespace on the underlay (etcd is only reachable there),
//! and that thread also beats the simulated nodes' hearts, as their agents
//! would, so the real agents keep their tasks in the balancers.

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vxmesh_control::state::ingress::{self, PolicySpec};
use vxmesh_control::state::services::{self, ServiceSpec};
use vxmesh_control::state::{ipam, ops, EndpointSpec, Node};
use vxmesh_control::store::{self, Store, StoreOptions};

/// The network every service and task is on: a /16, sized for 1,000 services
/// of 10 tasks (11,000 addresses) and more.
pub const NETWORK: &str = "scale";
pub const SUBNET: &str = "10.128.0.0/16";

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// A store handle on a thread in `ns`, with the simulated nodes' heartbeats.
pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Simulated nodes that beat; one taken out is "down" to the agents.
    pub beating: Arc<Mutex<BTreeSet<String>>>,
}

/// What one write did to the store, seen from the writing thread: its bytes
/// written (`wchar`: SQLite's pages and WAL, or the request to etcd) and time.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteCost {
    pub secs: f64,
    pub wchar: u64,
}

impl Writer {
    pub fn start(ns: &str, url: &str) -> Result<Writer> {
        let file = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("cannot open netns {ns}"))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let url = url.to_string();
        let beating: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let beats = beating.clone();
        let thread = std::thread::Builder::new()
            .name("scale-writer".into())
            .spawn(move || {
                // SAFETY: setns on an fd we own, affecting only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ =
                        ready_tx.send(Err(anyhow!("setns: {}", std::io::Error::last_os_error())));
                    return;
                }
                let opts = StoreOptions {
                    insecure: true,
                    ..Default::default()
                };
                let s = match store::open_with(&url, &opts) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut next_beat = Instant::now();
                loop {
                    let wait = next_beat.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(job) => job(&*s),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    if Instant::now() >= next_beat {
                        let nodes: Vec<String> = beats
                            .lock()
                            .map(|b| b.iter().cloned().collect())
                            .unwrap_or_default();
                        let now = vxmesh_control::state::model::unix_now_ms();
                        for n in nodes {
                            if let Err(e) = s.heartbeat(&n, now) {
                                eprintln!("netns-scale: heartbeat of {n}: {e}");
                            }
                        }
                        next_beat = Instant::now() + Duration::from_secs(1);
                    }
                }
            })?;
        ready_rx
            .recv()
            .context("the writer thread died before opening the store")??;
        Ok(Writer {
            jobs: Some(tx),
            thread: Some(thread),
            beating,
        })
    }

    /// Runs `f` on the writer's thread with its store; returns its value and
    /// what it cost that thread.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> T + Send + 'static,
    ) -> Result<(T, WriteCost)> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |s| {
            let before = thread_wchar();
            let t0 = Instant::now();
            let v = f(s);
            let cost = WriteCost {
                secs: t0.elapsed().as_secs_f64(),
                wchar: thread_wchar().saturating_sub(before),
            };
            let _ = tx.send((v, cost));
        });
        self.jobs
            .as_ref()
            .context("writer stopped")?
            .send(job)
            .map_err(|_| anyhow!("the writer thread is gone"))?;
        rx.recv().map_err(|_| anyhow!("the writer thread died"))
    }

    /// A state operation in one transaction, its error as text.
    pub fn transact<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut vxmesh_control::state::ClusterState) -> Result<T, ops::StateError>
            + Send
            + 'static,
    ) -> Result<(T, WriteCost)> {
        let (r, cost) = self.run(move |s| store::transact(s, f).map_err(|e| e.to_string()))?;
        Ok((r.map_err(|e| anyhow!(e))?, cost))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes this thread passed to write(2) and friends so far.
fn thread_wchar() -> u64 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    std::fs::read_to_string(format!("/proc/self/task/{tid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn sim_node(i: usize) -> String {
    format!("sim{i:03}")
}

/// Registers `count` simulated nodes (at 198.18.x.y, benchmark space nothing
/// answers) and starts their heartbeats.
pub fn add_sim_nodes(w: &Writer, count: usize) -> Result<()> {
    w.transact(move |st| {
        for i in 0..count {
            let addr: IpAddr = std::net::Ipv4Addr::from(0xc612_0000u32 + 1 + i as u32).into();
            ops::upsert_node(st, Node::new(&sim_node(i), addr))?;
        }
        Ok(())
    })?;
    if let Ok(mut b) = w.beating.lock() {
        b.extend((0..count).map(sim_node));
    }
    Ok(())
}

/// A task id as the agent makes them (16 hex digits), from a counter.
pub fn task_id(n: u64) -> String {
    format!("{:016x}", 0x5ca1_e000_0000_0000u64 | n)
}

pub fn service_name(i: usize) -> String {
    format!("svc{i:05}")
}

/// The spec of service `i`: every tenth publishes a port from the pool, as a
/// cluster's front ends do, so the routing mesh grows with it.
fn service_spec(i: usize) -> ServiceSpec {
    ServiceSpec {
        name: service_name(i),
        networks: vec![NETWORK.into()],
        publish: if i % 10 == 9 {
            vec![":80".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

fn add_task(
    st: &mut vxmesh_control::state::ClusterState,
    svc: &str,
    node: &str,
    id: String,
) -> Result<IpAddr, ops::StateError> {
    let spec = EndpointSpec {
        network: NETWORK.into(),
        netns: format!("sim-{id}"),
        service: Some(svc.into()),
        ..Default::default()
    };
    let ep = ops::create_endpoint(st, &spec, node, id, ipam::random_mac)?;
    ingress::sync_tasks(st)?;
    Ok(ep.ips[0])
}

/// Creates service `i` and its tasks, spread over the simulated nodes, in one
/// transaction (as a scheduler placing a new service would); its VIP.
pub fn create_service(
    w: &Writer,
    i: usize,
    tasks: usize,
    nodes: usize,
    ids: &mut u64,
) -> Result<(IpAddr, Vec<IpAddr>, WriteCost)> {
    let first = *ids;
    *ids += tasks as u64;
    let ((vip, ips), cost) = w.transact(move |st| {
        let s = services::create_service(st, &service_spec(i))?;
        let mut ips = Vec::new();
        for t in 0..tasks {
            let node = sim_node((i * tasks + t) % nodes.max(1));
            ips.push(add_task(st, &s.name, &node, task_id(first + t as u64))?);
        }
        let vip =
            s.vips.get(NETWORK).copied().ok_or_else(|| {
                ops::StateError::Invalid(format!("service {} got no VIP", s.name))
            })?;
        Ok((vip, ips))
    })?;
    Ok((vip, ips, cost))
}

/// Removes service `name` and every task of it, in one transaction.
pub fn remove_service(w: &Writer, name: &str) -> Result<WriteCost> {
    let name = name.to_string();
    let ((), cost) = w.transact(move |st| {
        let ids: Vec<String> = st
            .endpoints
            .values()
            .filter(|e| e.service.as_deref() == Some(name.as_str()) && e.network == NETWORK)
            .map(|e| e.id.clone())
            .collect();
        for id in ids {
            ops::remove_endpoint(st, &id)?;
        }
        services::remove_service(st, &name)?;
        Ok(())
    })?;
    Ok(cost)
}

/// One more task of `svc` on `node`; its address.
pub fn add_sim_task(w: &Writer, svc: &str, node: &str, id: String) -> Result<(IpAddr, WriteCost)> {
    let (svc, node) = (svc.to_string(), node.to_string());
    w.transact(move |st| add_task(st, &svc, &node, id.clone()))
}

pub fn remove_task(w: &Writer, id: &str) -> Result<WriteCost> {
    let id = id.to_string();
    Ok(
        w.transact(move |st| ops::remove_endpoint(st, &id).map(|_| ()))?
            .1,
    )
}

/// A policy on `node`: its id.
pub fn add_policy(w: &Writer, node: &str, port: u16, action: &str) -> Result<(String, WriteCost)> {
    let spec = PolicySpec {
        node: node.into(),
        port: port.to_string(),
        action: action.into(),
        from: None,
        audit: false,
    };
    let (p, cost) = w.transact(move |st| ingress::add_policy(st, &spec))?;
    Ok((p.id, cost))
}

pub fn remove_policy(w: &Writer, id: &str) -> Result<WriteCost> {
    let id = id.to_string();
    Ok(
        w.transact(move |st| ingress::remove_policy(st, &id).map(|_| ()))?
            .1,
    )
}

/// Publishes one more port on `svc` (`--publish-add`), or takes it away: a
/// service update.
pub fn update_ports(
    w: &Writer,
    svc: &str,
    add: Option<&str>,
    rm: Option<u16>,
) -> Result<WriteCost> {
    let svc = svc.to_string();
    let add: Vec<String> = add.into_iter().map(String::from).collect();
    let rm: Vec<String> = rm.into_iter().map(|p| p.to_string()).collect();
    Ok(
        w.transact(move |st| services::update_ports(st, &svc, &add, &rm).map(|_| ()))?
            .1,
    )
}

/// The size of the stored state: objects and their JSON bytes.
pub fn stored(w: &Writer) -> Result<(usize, usize)> {
    let (r, _) = w.run(|s| {
        s.load().map(|snap| {
            let st = &snap.state;
            let bytes = serde_json::to_string(st).map(|j| j.len()).unwrap_or(0);
            let n = st.networks.len()
                + st.nodes.len()
                + st.endpoints.len()
                + st.services.len()
                + st.policies.len();
            (n, bytes)
        })
    })?;
    r.map_err(|e| anyhow!("{e}"))
}

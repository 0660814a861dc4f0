//! vxmesh's sides: agents on a task node and on each client node, a service
//! published on 8080 with its three tasks, and a second one with the bulk task.

use anyhow::{ensure, Result};
use std::net::SocketAddr;
use vxmesh_benches::{endpoint_ip, service_vip};
use vxmesh_netns_tests::*;

use crate::side::{iperf3_server, nginx, Procs, Side, PUBLISHED, TASKS};

/// A vxmesh setup a client node gives: its name, its agent's extra flags,
/// and the key and label its results go under.
pub struct ClientNode {
    pub name: &'static str,
    pub args: &'static [&'static str],
    pub key: &'static str,
    pub label: &'static str,
}

/// vxmesh: a task node n2 (agent flags `task_args`) with a service published
/// on 8080 and its three tasks, a second service with the bulk task, and one
/// side per client node: a client container there using the VIP (balanced on
/// that node) and the outside host using the published port at its address.
pub fn vxmesh_sides(
    t: &mut Topology,
    procs: &mut Procs,
    outside: &Node,
    workers: u16,
    task_args: &[&str],
    clients: &[ClientNode],
) -> Result<Vec<Side>> {
    let workers = workers.to_string();
    let n2 = t.add_node("n2")?;
    t.start_agent(
        &n2,
        &[&["--workers", workers.as_str()][..], task_args].concat(),
    )?;
    let mut nodes = Vec::new();
    for c in clients {
        let n = t.add_node(c.name)?;
        t.start_agent(&n, &[&["--workers", workers.as_str()][..], c.args].concat())?;
        nodes.push(n);
    }
    let net = "lb";
    t.cli_ok(&n2, &["network", "create", net, "--subnet", "10.71.0.0/24"])?;
    let publish = format!("{PUBLISHED}:80");
    let web = t.cli_json(
        &n2,
        &[
            "service",
            "create",
            "web",
            "--network",
            net,
            "--publish",
            &publish,
        ],
    )?;
    let bulk_svc = t.cli_json(&n2, &["service", "create", "bulk", "--network", net])?;
    let (vip, bulk_vip) = (service_vip(&web, net)?, service_vip(&bulk_svc, net)?);
    let tasks: Vec<String> = (1..=TASKS)
        .map(|i| t.add_container(&format!("vt{i}")))
        .collect::<Result<_>>()?;
    let bulk = t.add_container("vb")?;
    procs.sweep.extend(tasks.iter().cloned());
    procs.sweep.push(bulk.clone());
    let mut task_ips = Vec::new();
    for ns in &tasks {
        task_ips.push(endpoint_ip(t, &n2, net, ns, &["--service", "web"])?);
    }
    let bulk_ip = endpoint_ip(t, &n2, net, &bulk, &["--service", "bulk"])?;
    for (i, ns) in tasks.iter().enumerate() {
        let dir = t.dir().join(format!("nginx-v{}", i + 1));
        nginx(procs, ns, &dir, &format!("t{}", i + 1))?;
    }
    iperf3_server(procs, &bulk)?;
    let mut sides = Vec::new();
    for (c, n) in clients.iter().zip(nodes) {
        let client = t.add_container(&format!("vc-{}", c.name))?;
        procs.sweep.push(client.clone());
        endpoint_ip(t, &n, net, &client, &[])?;
        for ip in task_ips.iter().chain([&bulk_ip]) {
            ensure!(
                ping(&client, &ip.to_string(), 2, None)?,
                "vxmesh's overlay does not carry traffic from {} to {ip}",
                c.name
            );
        }
        sides.push(Side {
            key: c.key,
            label: c.label,
            client,
            outside: outside.ns.clone(),
            vip: SocketAddr::new(vip.into(), 80),
            published: SocketAddr::new(n.addr.into(), PUBLISHED),
            bulk_vip,
            bulk_ip,
            node1: n.ns,
        });
    }
    Ok(sides)
}

//! The load-balancer load harness (issue 11): vxmesh's service VIP and published
//! port beside the kernel doing the same, between the same two nodes in one run.
//!
//! Kernel: two node namespaces with the kernel's VXLAN + bridge (kernel to kernel,
//! offloads on, as `netns-throughput`), a client container on node 1 and three
//! nginx tasks on node 2; the VIP is nft DNAT in the client's namespace with
//! `numgen inc mod 3` over the tasks (kube-proxy's nftables mode), and the
//! published port is nft DNAT on node 1 (`fib daddr type local`, numgen over the
//! tasks, masqueraded as Docker's ingress does) reached from an outside host.
//! vxmesh: two agents, a service with the three tasks on node 2, its VIP used
//! from a client container on node 1 and its published port (8080:80) from the
//! outside host at node 1's address.
//!
//! Measured, with the two setups alternated test by test and run by run: wrk
//! (`-t1 -c50 --latency`) new connections/s (`Connection: close`) and
//! keep-alive requests/s with their p50/p99 latency, through the VIP and the
//! published port; one-stream iperf3 through a VIP (a second service, one task)
//! and over the plain overlay to the same task. Prints medians and vxmesh/kernel
//! ratios; the machine is noisy, so only ratios from one run mean anything.
//!
//! Each agent runs with `--workers` the machine's cores divided by the two
//! nodes (one on this machine): one forwarding thread per core, as on real
//! nodes that each have their own; `--workers N` overrides it.
//!
//! Usage: netns-lb [--runs N] [--secs S] [--workers N] [--json FILE] [--svg FILE]

mod http;
mod kernel;
mod measure;
mod report;
mod side;
mod vxmesh;

use anyhow::{ensure, Context, Result};
use http::{wait_balanced, wrk};
use kernel::kernel_side;
use measure::{conntrack_count, measure, Results, TESTS};
use side::{Procs, Side};
use std::collections::BTreeMap;
use vxmesh::{vxmesh_sides, ClientNode};
use vxmesh_benches::{catch_signals, check_stop, workers_per_node};
use vxmesh_netns_tests::*;

const USAGE: &str = "netns-lb [--runs N] [--secs S] [--workers N] [--json FILE] [--svg FILE] [--flow-logs-ab]\n\
    vxmesh's service VIP and published port against the kernel's nft DNAT + VXLAN (run as root;\n\
    needs wrk, nginx, iperf3, nft: scripts/bench-lb.sh installs them)\n\
    --flow-logs-ab: vxmesh with flow logs off against vxmesh with flow logs on instead (two client\n\
    nodes balancing to the same tasks, alternated as the two setups are)";

fn main() -> Result<()> {
    // --flow-logs-ab is this harness's own; the rest are every harness's
    let (ab, rest): (Vec<String>, Vec<String>) = std::env::args()
        .skip(1)
        .partition(|a| a == "--flow-logs-ab");
    let flow_logs_ab = !ab.is_empty();
    let a = vxmesh_benches::parse_args_from(rest, USAGE)?;
    ensure!(
        is_root(),
        "netns-lb makes network namespaces: run it as root (scripts/bench-lb.sh does)"
    );
    for tool in ["wrk", "nginx", "iperf3", "nft", "ip"] {
        ensure!(
            on_path(tool),
            "{tool} not found: scripts/bench-lb.sh installs what the harness needs"
        );
    }
    catch_signals();
    let mut t = Topology::new("lb")?;
    let mut procs = Procs {
        servers: Vec::new(),
        sweep: Vec::new(),
    };
    eprintln!(
        "netns-lb: namespaces {}-*, files in {}",
        t.prefix(),
        t.dir().display()
    );
    let outside = t.add_outside_host("out")?;
    procs.sweep.push(outside.ns.clone());
    // the two nodes share this machine's cores, as two real nodes would not
    let workers = a.workers.unwrap_or_else(|| workers_per_node(2));
    eprintln!("netns-lb: {workers} worker thread(s) per agent");
    let sides: Vec<Side> = if flow_logs_ab {
        // the task node's flow logs are off for both: what is measured is the
        // node that balances (and so records) the connections
        vxmesh_sides(
            &mut t,
            &mut procs,
            &outside,
            workers,
            &["--flow-logs", "off"],
            &[
                ClientNode {
                    name: "n1",
                    args: &["--flow-logs", "off"],
                    key: "off",
                    label: "vxmesh, flow logs off",
                },
                ClientNode {
                    name: "n3",
                    args: &["--flow-logs", "on"],
                    key: "on",
                    label: "vxmesh, flow logs on",
                },
            ],
        )?
    } else {
        let vx = vxmesh_sides(
            &mut t,
            &mut procs,
            &outside,
            workers,
            &[],
            &[ClientNode {
                name: "n1",
                args: &[],
                key: "vxmesh",
                label: "vxmesh",
            }],
        )?;
        check_stop()?;
        let k = kernel_side(&mut t, &mut procs, &outside)?;
        let mut sides = vec![k];
        sides.extend(vx);
        sides
    };
    for s in &sides {
        wait_balanced(&s.client, s.vip, &format!("{}'s VIP", s.label))?;
        wait_balanced(
            &s.outside,
            s.published,
            &format!("{}'s published port", s.label),
        )?;
    }
    // warm up every path once (neighbour tables, FDBs, the agents' caches)
    for s in &sides {
        for (addr, ns) in [(s.vip, &s.client), (s.published, &s.outside)] {
            for close in [true, false] {
                check_stop()?;
                wrk(ns, addr, close, 1)?;
            }
        }
    }

    let ct_max: u64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut ct_seen = 0u64;
    let mut res: Results = BTreeMap::new();
    for run in 0..a.runs {
        for (ti, (key, test)) in TESTS.iter().enumerate() {
            // alternate which side goes first, test by test and run by run
            let first = (run + ti) % 2;
            for i in 0..sides.len() {
                check_stop()?;
                let s = &sides[(first + i) % sides.len()];
                let line = measure(s, key, *test, a.secs, &mut res)?;
                eprintln!("run {} {:<26} {:<14} {line}", run + 1, s.label, key);
                if s.key == "kernel" {
                    for ns in [&s.client, &s.node1] {
                        ct_seen = ct_seen.max(conntrack_count(ns)?);
                    }
                }
            }
        }
    }
    if ct_max > 0 && ct_seen * 10 >= ct_max * 9 {
        eprintln!(
            "netns-lb: WARNING: the kernel's conntrack reached {ct_seen} of {ct_max} entries \
             (TIME_WAIT lasts 120 s); its new-connection numbers may include drops"
        );
    }
    let out = report::report(&report::Run {
        args: &a,
        workers,
        flow_logs_ab,
        sides: &sides,
        res: &res,
        ct_seen,
        ct_max,
    });
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("cannot write {p}"))?;
    }
    if let Some(p) = &a.svg {
        std::fs::write(p, report::svg(&out)).with_context(|| format!("cannot write {p}"))?;
    }
    Ok(())
}

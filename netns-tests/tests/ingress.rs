//! The routing mesh's ingress, as the seed article's user runs it: three nodes,
//! two services publishing two ports with one task each; every node's address
//! answers both ports, from an outside client and from the nodes themselves;
//! the task sees the client's real address; a drop policy on one node closes
//! that port there only and survives a new service; reject, `--ingress off`,
//! `mode=host` and `--publish-add/--publish-rm` change what answers, live.

mod common;

use common::*;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use vxmesh_netns_tests::*;

/// A task that answers each connection with its name and the address the
/// connection came from, then closes it.
fn who_server(ns: &str, port: u16, name: &str) -> anyhow::Result<AnswerServer> {
    let addr = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
    let name = name.to_string();
    answer_server(ns, addr, false, move |peer| format!("{name} {}", peer.ip()))
}

fn at(n: &Node, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(n.addr), port)
}

#[test]
fn published_ports_answer_on_every_node_and_policies_apply_per_node() -> anyhow::Result<()> {
    published_ports_answer_on_every_node_and_policies_apply_per_node_on(StoreKind::Sqlite)
}

#[test]
fn published_ports_answer_on_every_node_and_policies_apply_per_node_etcd() -> anyhow::Result<()> {
    published_ports_answer_on_every_node_and_policies_apply_per_node_on(StoreKind::Etcd)
}

fn published_ports_answer_on_every_node_and_policies_apply_per_node_on(
    store: StoreKind,
) -> anyhow::Result<()> {
    let mut t = Topology::with_store("ingress", store)?;
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| t.add_node(n))
        .collect::<anyhow::Result<_>>()?;
    let client = t.add_outside_host("client")?;
    for n in &nodes {
        t.start_agent(n, &[])?;
    }
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    t.cli_ok(
        n1,
        &["network", "create", "app", "--subnet", "10.46.0.0/24"],
    )?;
    t.cli_ok(
        n1,
        &[
            "service",
            "create",
            "web",
            "--network",
            "app",
            "--publish",
            "8080:80",
        ],
    )?;
    t.cli_ok(
        n1,
        &[
            "service",
            "create",
            "api",
            "--network",
            "app",
            "--publish",
            "8123:81",
        ],
    )?;
    let web = t.add_container("web1")?;
    endpoint(&t, n2, "app", &web, &["--service", "web"])?;
    let api = t.add_container("api1")?;
    endpoint(&t, n3, "app", &api, &["--service", "api"])?;
    let _w = who_server(&web, 80, "web")?;
    let _a = who_server(&api, 81, "api")?;
    let svcs = t.cli_ok(n1, &["service", "ls"])?;
    assert!(svcs.contains("*:8080->80/tcp"), "{svcs}");

    // every node answers both ports to the outside client, which the tasks see
    // by its own address; the same from each node itself, on 127.0.0.1 too
    for n in &nodes {
        let got = settles(&client.ns, at(n, 8080), |r| r.is_ok())?;
        assert_eq!(got, Ok(format!("web {}", client.addr)), "{}:8080", n.name);
        let got = ask(&client.ns, at(n, 8123))?;
        assert_eq!(got, Ok(format!("api {}", client.addr)), "{}:8123", n.name);
        let local = SocketAddr::from(([127, 0, 0, 1], 8080));
        let got = ask(&n.ns, local)?;
        assert_eq!(
            got,
            Ok(format!("web {}", n.addr)),
            "{} to 127.0.0.1",
            n.name
        );
        let got = ask(&n.ns, at(n, 8123))?;
        assert!(matches!(&got, Ok(s) if s.starts_with("api ")), "{got:?}");
    }
    assert!(
        ping(&client.ns, &n1.addr.to_string(), 1, None)?,
        "the node itself still answers"
    );

    // a drop policy on n1 closes 8123 there only
    let p = t.cli_json(
        n2,
        &[
            "policy", "add", "--node", "n1", "--port", "8123", "--action", "drop",
        ],
    )?;
    let policy_id = p["id"].as_str().unwrap().to_string();
    let got = settles(&client.ns, at(n1, 8123), |r| r.is_err())?;
    assert_eq!(got, Err(ErrorKind::TimedOut), "dropped on n1");
    assert!(
        ask(&client.ns, at(n2, 8123))?.is_ok(),
        "n2 still serves 8123"
    );
    assert!(
        ask(&client.ns, at(n1, 8080))?.is_ok(),
        "n1 still serves 8080"
    );
    assert!(dropped(&t, n1, "policy_drop")? > 0);
    // ... and stays through a new service being created and removed
    t.cli_ok(
        n3,
        &[
            "service",
            "create",
            "extra",
            "--network",
            "app",
            "--publish",
            "9000:90",
        ],
    )?;
    let extra = t.add_container("extra1")?;
    let extra_ep = endpoint(&t, n1, "app", &extra, &["--service", "extra"])?;
    let _x = who_server(&extra, 90, "extra")?;
    let got = settles(&client.ns, at(n3, 9000), |r| r.is_ok())?;
    assert_eq!(got, Ok(format!("extra {}", client.addr)));
    assert_eq!(ask(&client.ns, at(n1, 8123))?, Err(ErrorKind::TimedOut));
    t.cli_ok(n3, &["endpoint", "rm", &extra_ep.id])?;
    t.cli_ok(n3, &["service", "rm", "extra"])?;
    let ls = t.cli_json(n3, &["policy", "ls"])?;
    assert_eq!(ls.as_array().map(Vec::len), Some(1), "{ls}");
    assert_eq!(ask(&client.ns, at(n1, 8123))?, Err(ErrorKind::TimedOut));

    // reject answers at once; removing the policy opens the port again
    t.cli_ok(
        n1,
        &[
            "policy",
            "add",
            "--node",
            "n2",
            "--port",
            "8080",
            "--action",
            "reject",
            "--from",
            "192.168.0.0/16",
        ],
    )?;
    let got = settles(&client.ns, at(n2, 8080), |r| r.is_err())?;
    assert_eq!(got, Err(ErrorKind::ConnectionRefused), "rejected on n2");
    t.cli_ok(n1, &["policy", "rm", &policy_id])?;
    let got = settles(&client.ns, at(n1, 8123), |r| r.is_ok())?;
    assert_eq!(got, Ok(format!("api {}", client.addr)));

    // published ports change live
    t.cli_ok(
        n1,
        &[
            "service",
            "update",
            "web",
            "--publish-add",
            "8081:80",
            "--publish-rm",
            "8080",
        ],
    )?;
    let got = settles(&client.ns, at(n3, 8081), |r| r.is_ok())?;
    assert_eq!(got, Ok(format!("web {}", client.addr)));
    let got = settles(&client.ns, at(n3, 8080), |r| r.is_err())?;
    assert_eq!(got, Err(ErrorKind::ConnectionRefused), "8080 unpublished");

    // --ingress off: n3 stops answering, the others go on
    t.cli_ok(n1, &["node", "update", "n3", "--ingress", "off"])?;
    let got = settles(&client.ns, at(n3, 8081), |r| r.is_err())?;
    assert_eq!(got, Err(ErrorKind::ConnectionRefused));
    assert!(ask(&client.ns, at(n1, 8081))?.is_ok());
    let nodes_ls = t.cli_ok(n1, &["node", "ls"])?;
    assert!(nodes_ls.contains("off"), "{nodes_ls}");

    // mode=host: only the node with a task answers
    t.cli_ok(
        n1,
        &[
            "service",
            "update",
            "api",
            "--publish-add",
            "9100:81,mode=host",
        ],
    )?;
    let got = settles(&client.ns, at(n3, 9100), |r| r.is_ok())?;
    assert_eq!(got, Ok(format!("api {}", client.addr)), "n3 runs the task");
    assert_eq!(
        ask(&client.ns, at(n2, 9100))?,
        Err(ErrorKind::ConnectionRefused),
        "n2 has no api task"
    );

    // the agent owns its nftables table: it stays across a stop (so a restart
    // resets no connection through a published port) and goes with
    // --cleanup-on-exit (a node leaving for good)
    let listed = exec(&n1.ns, &["nft", "list", "table", "ip", "vxmesh"])?;
    assert!(listed.status.success());
    t.stop_agent(n1)?;
    let listed = exec(&n1.ns, &["nft", "list", "table", "ip", "vxmesh"])?;
    assert!(listed.status.success(), "the table went with a plain stop");
    t.start_agent(n1, &["--cleanup-on-exit"])?;
    t.stop_agent(n1)?;
    for family in ["ip", "ip6"] {
        let listed = exec(&n1.ns, &["nft", "list", "table", family, "vxmesh"])?;
        assert!(!listed.status.success(), "{family} table left behind");
    }
    Ok(())
}

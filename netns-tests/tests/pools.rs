//! Pools at the CLI (issue 21, point 3): a network's addresses (VIPs and
//! endpoints) and the published-port pool run out with an error that names the
//! pool and what to do, and the refused command leaves nothing behind: no
//! service, no endpoint, no interface in the container, no port taken.

mod common;

use vxmesh_netns_tests::*;

/// The CLI's stderr for a command that must fail, with its exit status checked.
fn refused(t: &Topology, node: &Node, args: &[&str]) -> anyhow::Result<String> {
    let out = t.cli(node, args)?;
    anyhow::ensure!(
        !out.status.success(),
        "`vxmesh {}` succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn count(t: &Topology, node: &Node, what: &str) -> anyhow::Result<usize> {
    let v = t.cli_json(node, &[what, "ls"])?;
    Ok(v.as_array().map_or(0, Vec::len))
}

#[test]
fn exhausted_pools_are_named_at_the_cli_and_leave_nothing_half_made() -> anyhow::Result<()> {
    let mut t = Topology::new("pools")?;
    let n1 = t.add_node("n1")?;
    t.start_agent(&n1, &[])?;
    let c = t.add_container("c1")?;
    t.cli_ok(
        &n1,
        &["network", "create", "small", "--subnet", "10.61.0.0/29"],
    )?;
    // .2-.6: five addresses for VIPs and endpoints
    for i in 0..4 {
        t.cli_ok(
            &n1,
            &["service", "create", &format!("s{i}"), "--network", "small"],
        )?;
    }
    common::endpoint(&t, &n1, "small", &c, &[])?;
    let services = count(&t, &n1, "service")?;
    let endpoints = count(&t, &n1, "endpoint")?;
    let err = refused(&t, &n1, &["service", "create", "s4", "--network", "small"])?;
    assert!(
        err.contains("pool exhausted") && err.contains("10.61.0.0/29") && err.contains("--subnet"),
        "{err}"
    );
    let c2 = t.add_container("c2")?;
    let err = refused(
        &t,
        &n1,
        &["endpoint", "create", "--network", "small", "--netns", &c2],
    )?;
    assert!(
        err.contains("network small's addresses 10.61.0.0/29"),
        "{err}"
    );
    assert_eq!(
        count(&t, &n1, "service")?,
        services,
        "no service without a VIP"
    );
    assert_eq!(
        count(&t, &n1, "endpoint")?,
        endpoints,
        "no endpoint without an address"
    );
    let links = exec_ok(&c2, &["ip", "-o", "link", "show"])?;
    assert!(!links.contains("eth0"), "no interface left in c2: {links}");

    // the published-port pool: all of 30000-32767 (tcp) to one service
    t.cli_ok(&n1, &["service", "rm", "s0"])?;
    let mut args: Vec<String> = ["service", "create", "wide", "--network", "small"]
        .map(String::from)
        .to_vec();
    for i in 0..(32767 - 30000 + 1) {
        args.push("--publish".into());
        args.push(format!(":{}", 1 + i % 1000));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let wide = t.cli_json(&n1, &argv)?;
    assert_eq!(wide["ports"].as_array().map(Vec::len), Some(2768));
    let before = t.cli_json(&n1, &["service", "inspect", "s1"])?;
    let err = refused(
        &t,
        &n1,
        &[
            "service",
            "update",
            "s1",
            "--publish-add",
            ":80/udp",
            "--publish-add",
            ":81",
        ],
    )?;
    assert!(
        err.contains("published-port pool 30000-32767 (tcp)") && err.contains("--publish-rm"),
        "{err}"
    );
    assert_eq!(
        t.cli_json(&n1, &["service", "inspect", "s1"])?,
        before,
        "the udp port asked for beside it was not taken either"
    );
    // freeing one port makes room again
    t.cli_ok(&n1, &["service", "update", "wide", "--publish-rm", "30000"])?;
    let s1 = t.cli_json(&n1, &["service", "update", "s1", "--publish-add", ":81"])?;
    assert_eq!(s1["ports"][0]["published"], 30000);
    Ok(())
}

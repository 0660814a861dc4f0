//! Liveness across clock skew (issue 18, point 8): agents whose wall clocks are
//! 5 s apart (heartbeats written 5 s in the future by one, 5 s in the past by
//! another, with the test-only `--test-heartbeat-skew-ms`) keep seeing each other
//! up; an agent that stops is still seen down. And the agents' API sockets are
//! mode 0660 of the `--socket-group` asked for.

mod common;

use common::*;
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

/// `name`'s status in `from`'s `node ls`.
fn status(t: &Topology, from: &Node, name: &str) -> anyhow::Result<String> {
    let nodes = t.cli_json(from, &["node", "ls"])?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .and_then(|n| n["status"].as_str())
        .unwrap_or_default()
        .to_string())
}

#[test]
fn skewed_clocks_keep_nodes_up_and_a_stopped_agent_is_down() -> anyhow::Result<()> {
    let mut t = Topology::new("skew")?;
    let n1 = t.add_node("n1")?;
    let ahead = t.add_node("ahead")?;
    let behind = t.add_node("behind")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(
        &ahead,
        &[
            "--test-heartbeat-skew-ms",
            "5000",
            "--socket-group",
            "daemon",
        ],
    )?;
    // the API sockets (issue 18, point 9): 0660, of the agent's group or the
    // one asked for, so only root and that group control the node
    for (node, gid) in [(&n1, 0), (&ahead, 1)] {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let sock = t.socket(node);
        let m = std::fs::metadata(sock.trim_start_matches("unix:"))?;
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o7777, 0o660, "{sock}");
        assert_eq!(m.gid(), gid, "{sock}");
    }
    t.start_agent(&behind, &["--test-heartbeat-skew-ms", "-5000"])?;
    let nodes = [&n1, &ahead, &behind];
    for from in nodes {
        for of in nodes {
            assert!(
                eventually(Duration::from_secs(5), || Ok(
                    status(&t, from, &of.name)? == "up"
                ))?,
                "{} never saw {} up",
                from.name,
                of.name
            );
        }
    }
    // well past the 4 s window, every node still sees every other up
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        for from in nodes {
            for of in nodes {
                assert_eq!(
                    status(&t, from, &of.name)?,
                    "up",
                    "{} sees {} down with clocks 5 s apart",
                    from.name,
                    of.name
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // a node whose heartbeat stops changing is down, whatever its clock said
    t.stop_agent(&ahead)?;
    for from in [&n1, &behind] {
        assert!(
            eventually(Duration::from_secs(8), || Ok(
                status(&t, from, "ahead")? == "down"
            ))?,
            "{} still sees a stopped agent up",
            from.name
        );
    }
    Ok(())
}

//! Logs (issue 6, point 7): `RUST_LOG` filters what an agent logs by level and
//! by target, and `--log-json` prints one JSON object per line.

mod common;

use common::*;
use std::time::Duration;
use vxmesh_netns_tests::*;

/// The agent's log lines, without the harness's own notes (none today) and blanks.
fn lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn rust_log_filters_and_log_json_prints_json_lines() -> anyhow::Result<()> {
    let mut t = Topology::new("logging")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    // warnings everywhere, but info from the API server: "network created" is
    // logged, "agent started" (vxmesh_control::agent, info) is not
    std::env::set_var("RUST_LOG", "warn,vxmesh_control::api=info");
    t.start_agent(&n1, &["--log-json"])?;
    std::env::set_var("RUST_LOG", "info");
    t.start_agent(&n2, &[])?;
    std::env::remove_var("RUST_LOG");
    t.cli_ok(
        &n1,
        &["network", "create", "lg", "--subnet", "10.49.0.0/24"],
    )?;

    let logged = eventually(Duration::from_secs(5), || {
        Ok(t.agent_log(&n1).contains("network created"))
    })?;
    let log1 = t.agent_log(&n1);
    assert!(logged, "the API's info event is missing:\n{log1}");
    let mut events = Vec::new();
    for l in lines(&log1) {
        let v: serde_json::Value = serde_json::from_str(l)
            .map_err(|e| anyhow::anyhow!("not one JSON object per line ({e}): {l:?}"))?;
        assert!(v.is_object(), "not an object: {l}");
        for k in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(k).is_some(), "no {k} in {l}");
        }
        events.push(v);
    }
    let created = events
        .iter()
        .find(|v| v["fields"]["message"] == "network created")
        .expect("network created event");
    assert_eq!(created["level"], "INFO");
    assert_eq!(created["target"], "vxmesh_control::api::server");
    assert_eq!(created["fields"]["network"], "lg", "fields kept: {created}");
    // the filter: nothing below warn from any other target
    for v in &events {
        let target = v["target"].as_str().unwrap_or_default();
        let level = v["level"].as_str().unwrap_or_default();
        assert!(
            target.starts_with("vxmesh_control::api") || matches!(level, "WARN" | "ERROR"),
            "RUST_LOG let through {v}"
        );
    }
    assert!(
        !log1.contains("agent started"),
        "an info event of vxmesh_control::agent passed warn:\n{log1}"
    );

    // without --log-json: text lines, no colour codes in a file, and at info the
    // agent's start is there
    let log2 = t.agent_log(&n2);
    assert!(log2.contains("agent started"), "{log2}");
    assert!(
        lines(&log2)
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
        "text mode printed JSON:\n{log2}"
    );
    assert!(
        !log2.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log2}"
    );
    Ok(())
}

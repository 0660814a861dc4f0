//! `vxmesh trace`: the frames a node's switch sees on a network, written to a
//! pcap file that tcpdump reads, while real traffic crosses the overlay.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;
use vxmesh_netns_tests::*;

#[test]
fn a_trace_writes_what_the_switch_sees_to_a_pcap_file() -> anyhow::Result<()> {
    let mut t = Topology::new("trace")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "red", "--subnet", "10.41.0.0/24"],
    )?;
    let c1 = t.add_container("c1")?;
    let c2 = t.add_container("c2")?;
    let e1 = endpoint(&t, &n1, "red", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "red", &c2, &[])?;
    // neighbours resolved before the trace, so it holds only what the filter
    // keeps; n1 may take a moment to hear of e2, made through n2
    assert!(eventually(Duration::from_secs(5), || ping(
        &c1, &e2.ip, 1, None
    ))?);

    let file = t.dir().join("red.pcap");
    let trace = Command::new(vxmesh_bin())
        .args(["-H", &t.socket(&n1), "trace", "--network", "red"])
        .args(["--filter", "icmp", "--duration", "4", "-w"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(800));
    assert!(ping(&c1, &e2.ip, 3, None)?);
    let out = trace.wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("frames written to"), "{said}");

    // tcpdump reads it: the requests as n1's switch took them from c1's port,
    // the replies as they came in over the underlay, and nothing but ICMP
    let read = Command::new("tcpdump").arg("-nr").arg(&file).output()?;
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let text = String::from_utf8_lossy(&read.stdout);
    let count = |what: &str| text.lines().filter(|l| l.contains(what)).count();
    let requests = count(&format!("{} > {}: ICMP echo request", e1.ip, e2.ip));
    let replies = count(&format!("{} > {}: ICMP echo reply", e2.ip, e1.ip));
    assert_eq!((requests, replies), (3, 3), "{text}");
    assert_eq!(text.lines().count(), 6, "only ICMP was kept: {text}");

    // bad input is refused with the reason, and writes nothing
    let bad = t.dir().join("bad.pcap");
    let bad_s = bad.to_string_lossy().to_string();
    for (args, why) in [
        (vec!["--network", "nope"], "nope"),
        (
            vec!["--network", "red", "--filter", "ether host x"],
            "filter",
        ),
        (vec!["--network", "red", "--duration", "0"], "seconds"),
    ] {
        let mut full = vec!["trace"];
        full.extend(args);
        full.extend(["-w", &bad_s]);
        let out = t.cli(&n1, &full)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{full:?}: {err}"
        );
    }
    assert!(!bad.exists());
    Ok(())
}

//! The CNI plugin driven exactly as a container runtime drives it: network
//! configuration on stdin, `CNI_*` variables, JSON results or error objects on
//! stdout, against agents on two nodes.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use vxmesh_netns_tests::*;

/// Runs `vxmesh-cni` and returns (exit code, stdout as JSON or Null).
fn cni(cmd: &str, config: &Value, container: &str, netns: &str) -> anyhow::Result<(i32, Value)> {
    let bin = vxmesh_bin().with_file_name("vxmesh-cni");
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    // a plugin that has already answered may have closed stdin
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes());
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    };
    Ok((out.status.code().unwrap_or(-1), v))
}

#[test]
fn cni_add_check_del_gc_version_status() -> anyhow::Result<()> {
    let mut t = Topology::new("cni")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "cninet", "--subnet", "10.39.0.0/24"],
    )?;
    let (c1, c2) = (t.add_container("c1")?, t.add_container("c2")?);
    let (s1, s2) = (t.socket(&n1), t.socket(&n2));
    let conf = |node: &Node| {
        json!({
            "cniVersion": "1.0.0", "name": "vx", "type": "vxmesh-cni",
            "network": "cninet", "agentSocket": if node.name == "n1" { &s1 } else { &s2 },
        })
    };
    let (p1, p2) = (format!("/run/netns/{c1}"), format!("/run/netns/{c2}"));

    // ADD on each node: results shaped as the spec says
    let (code, r1) = cni("ADD", &conf(&n1), "ctr-1", &p1)?;
    assert_eq!(code, 0, "{r1}");
    let (code, r2) = cni("ADD", &conf(&n2), "ctr-2", &p2)?;
    assert_eq!(code, 0, "{r2}");
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["interfaces"][0]["name"], "eth0");
    assert_eq!(r1["interfaces"][0]["sandbox"], p1);
    assert_eq!(r1["ips"][0]["gateway"], "10.39.0.1");
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0");
    let ip2 = r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(r2["ips"][0]["address"].as_str().unwrap().ends_with("/24"));
    // the containers talk across nodes
    assert!(ping(&c1, &ip2, 3, None)?);
    // ADD again (a runtime retry) gives the same answer, not a second interface
    let (code, again) = cni("ADD", &conf(&n1), "ctr-1", &p1)?;
    assert_eq!(code, 0);
    assert_eq!(again["ips"], r1["ips"]);

    assert_eq!(cni("CHECK", &conf(&n1), "ctr-1", &p1)?.0, 0);
    let (code, err) = cni("CHECK", &conf(&n1), "ctr-unknown", &p1)?;
    assert_eq!((code, err["code"].as_u64()), (1, Some(3)), "{err}");

    let (code, v) = cni("VERSION", &json!({"cniVersion": "1.0.0"}), "", "")?;
    assert_eq!(code, 0);
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "1.0.0"));

    // DEL, twice: idempotent; the interface is gone
    assert_eq!(cni("DEL", &conf(&n1), "ctr-1", &p1)?.0, 0);
    assert_eq!(cni("DEL", &conf(&n1), "ctr-1", &p1)?.0, 0);
    assert!(exec(&c1, &["ip", "link", "show", "eth0"])?.status.code() != Some(0));

    // GC: ctr-2 is not among the valid attachments any more
    let mut gc = conf(&n2);
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "ctr-9", "ifname": "eth0" }]);
    assert_eq!(cni("GC", &gc, "", "")?.0, 0);
    let eps = t.cli_json(&n1, &["endpoint", "ls"])?;
    assert_eq!(eps.as_array().unwrap().len(), 0, "GC left {eps}");

    // errors are CNI error objects with the spec's codes
    let mut bad = conf(&n1);
    bad["network"] = json!("nosuch");
    let (code, err) = cni("ADD", &bad, "ctr-3", &p1)?;
    assert_eq!((code, err["code"].as_u64()), (1, Some(5)), "{err}");
    assert!(err["details"]
        .as_str()
        .unwrap()
        .contains("no network named nosuch"));
    let mut old = conf(&n1);
    old["cniVersion"] = json!("0.1.0");
    assert_eq!(cni("ADD", &old, "ctr-3", &p1)?.1["code"], 1);
    t.stop_agent(&n1)?;
    let (code, err) = cni("STATUS", &conf(&n1), "", "")?;
    assert_eq!((code, err["code"].as_u64()), (1, Some(50)), "{err}");
    Ok(())
}

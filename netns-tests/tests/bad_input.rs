//! Garbage on the underlay and from containers is dropped and counted while traffic
//! goes on; bad CLI input gets a clear error and leaves nothing half-made.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use vxmesh_netns_tests::*;

#[test]
fn garbage_is_dropped_and_counted_while_traffic_flows() -> anyhow::Result<()> {
    let mut t = Topology::new("garbage")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let outsider = t.add_outside_host("x")?;
    t.start_agent(&n1, &[])?;
    t.start_agent(&n2, &[])?;
    let net = t.cli_json(&n1, &["network", "create", "g", "--subnet", "10.34.0.0/24"])?;
    let vni = net["vni"].as_u64().unwrap() as u32;
    let c1 = t.add_container("c1")?;
    let c2 = t.add_container("c2")?;
    let e1 = endpoint(&t, &n1, "g", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "g", &c2, &[])?;
    assert!(ping(&c1, &e2.ip, 3, None)?);
    let srv = tcp_echo_server(&c2, SocketAddr::new(e2.ip.parse()?, 7000))?;

    // underlay garbage at n1:4789, from a member (n2) and from a non-member
    let vx = |v: u32, flags: u8, inner: &[u8]| {
        let b = v.to_be_bytes();
        let mut d = vec![flags, 0, 0, 0, b[1], b[2], b[3], 0];
        d.extend_from_slice(inner);
        d
    };
    let inner = udp_frame(e2.mac, e1.mac, octets(&e2.ip), octets(&e1.ip), 9, b"x");
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x08, 0, 0],
        vx(vni, 0x00, &inner),        // no I flag
        vx(vni + 1000, 0x08, &inner), // unknown VNI
        vx(vni, 0x08, &[1, 2, 3]),    // truncated inner frame
    ];
    let mut x: u32 = 12345;
    for _ in 0..200 {
        let len = (x % 300) as usize;
        junk.push(
            (0..len)
                .map(|i| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8 ^ i as u8
                })
                .collect(),
        );
    }
    let n1_vtep: SocketAddr = SocketAddr::new(n1.addr.into(), 4789);
    udp_send_raw(&n2.ns, n1_vtep, &junk)?;
    // a well-formed datagram for the VNI, from a node that is not a member
    udp_send_raw(&outsider.ns, n1_vtep, &[vx(vni, 0x08, &inner)])?;

    // container garbage from c1's eth0
    let mut spoof_ip = udp_frame(e1.mac, e2.mac, [10, 34, 0, 99], octets(&e2.ip), 9, b"x");
    let spoof_mac = udp_frame(
        [2, 1, 2, 3, 4, 5],
        e2.mac,
        octets(&e1.ip),
        octets(&e2.ip),
        9,
        b"x",
    );
    let mut vlan = udp_frame(e1.mac, e2.mac, octets(&e1.ip), octets(&e2.ip), 9, b"x");
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let truncated_ip = {
        let mut f = udp_frame(e1.mac, e2.mac, octets(&e1.ip), octets(&e2.ip), 9, b"x");
        f.truncate(20);
        f
    };
    spoof_ip.truncate(spoof_ip.len());
    send_raw_frames(&c1, "eth0", &[spoof_ip, spoof_mac, vlan, truncated_ip])?;

    let expect = [
        "malformed",
        "bad_vxlan_header",
        "unknown_vni",
        "not_member",
        "spoofed_source_ip",
        "spoofed_source_mac",
        "unsupported_ether_type",
    ];
    let counted = eventually(Duration::from_secs(3), || {
        for r in expect {
            if dropped(&t, &n1, r)? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    let stats = t.cli_json(&n1, &["stats"])?;
    assert!(counted, "not every drop reason counted: {}", stats["drops"]);

    // and traffic goes on
    assert!(ping(&c1, &e2.ip, 3, None)?);
    let payload = vec![7u8; 100_000];
    assert!(tcp_roundtrip(&c1, srv.local_addr(), &payload, Duration::from_secs(10))? == payload);
    // the table view names the reasons too
    assert!(t.cli_ok(&n1, &["stats"])?.contains("drop not_member"));
    Ok(())
}

#[test]
fn bad_cli_input_gets_clear_errors_and_no_half_made_state() -> anyhow::Result<()> {
    let mut t = Topology::new("badcli")?;
    let n1 = t.add_node("n1")?;
    t.start_agent(&n1, &[])?;
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "a",
            "--subnet",
            "10.35.0.0/24",
            "--vni",
            "900",
        ],
    )?;
    let c = t.add_container("c")?;
    let err = |args: &[&str]| -> anyhow::Result<String> {
        let o = t.cli(&n1, args)?;
        assert!(!o.status.success(), "{args:?} succeeded");
        Ok(String::from_utf8_lossy(&o.stderr).into_owned())
    };
    assert!(
        err(&["network", "create", "b", "--subnet", "10.35.0.128/25"])?
            .contains("overlaps network a")
    );
    assert!(err(&["network", "create", "b", "--vni", "900"])?
        .contains("VNI 900 is already used by network a"));
    assert!(err(&["network", "create", "b", "--vni", "abc"])?.contains("invalid value"));
    assert!(
        err(&["network", "create", "b", "--subnet", "10.36.0.0/33"])?.contains("invalid value")
    );
    assert!(err(&["network", "create", "a"])?.contains("already exists"));
    assert!(err(&["network", "create", "b", "--bogus"])?.contains("unexpected argument"));
    let missing = format!("{}-nope", t.prefix());
    assert!(
        err(&["endpoint", "create", "--network", "a", "--netns", &missing])?.contains("not found")
    );
    assert!(
        err(&["endpoint", "create", "--network", "zz", "--netns", "x"])?
            .contains("no network named zz")
    );
    assert!(err(&[
        "endpoint",
        "create",
        "--network",
        "a",
        "--netns",
        &c,
        "--ip",
        "10.99.0.5"
    ])?
    .contains("outside network a"));
    assert!(err(&[
        "endpoint",
        "create",
        "--network",
        "a",
        "--netns",
        &c,
        "--veth",
        "nosuchveth"
    ])?
    .contains("nosuchveth"));
    assert!(err(&["network", "inspect", "zz"])?.contains("no network named zz"));
    assert!(err(&["endpoint", "rm", "ffff"])?.contains("no endpoint"));
    // the agent socket that is not there
    let o = std::process::Command::new(vxmesh_bin())
        .args(["-H", "unix:/nonexistent.sock", "network", "ls"])
        .output()?;
    assert!(String::from_utf8_lossy(&o.stderr).contains("is `vxmesh agent` running"));
    // nothing was left half-made
    let nets = t.cli_json(&n1, &["network", "ls"])?;
    assert_eq!(
        nets.as_array().unwrap().len(),
        2,
        "the user's network and the built-in ingress: {nets}"
    );
    assert_eq!(
        t.cli_json(&n1, &["endpoint", "ls"])?
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        exec_ok(&c, &["ip", "-o", "link"])?.lines().count(),
        1,
        "only lo in the container"
    );
    // and a valid endpoint still works after all that
    let e = endpoint(&t, &n1, "a", &c, &[])?;
    assert_eq!(e.ip, "10.35.0.2");
    Ok(())
}

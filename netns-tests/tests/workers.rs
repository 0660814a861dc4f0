//! One worker per core: a plain network's TAP has a queue per worker and flows
//! spread over them; UDP segmentation offload (USO) super-frames from a container
//! cross as the datagrams they stand for.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use vxmesh_netns_tests::*;

#[test]
fn flows_spread_over_workers_and_uso_datagrams_cross() -> anyhow::Result<()> {
    let mut t = Topology::new("workers")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    t.start_agent(&n1, &["--workers", "2"])?;
    t.start_agent(&n2, &["--workers", "2"])?;
    t.cli_ok(&n1, &["network", "create", "w", "--subnet", "10.38.0.0/24"])?;
    let c1 = t.add_container("c1")?;
    let c2 = t.add_container("c2")?;
    let _e1 = endpoint(&t, &n1, "w", &c1, &[])?;
    let e2 = endpoint(&t, &n2, "w", &c2, &[])?;
    let queues = exec_ok(&c1, &["ls", "/sys/class/net/eth0/queues"])?;
    assert!(
        queues.contains("tx-1") && queues.contains("rx-1"),
        "eth0 has one queue per worker: {queues}"
    );
    assert!(ping(&c1, &e2.ip, 3, None)?);

    // 16 TCP connections: the kernel hashes them over both TAP queues
    let srv = tcp_echo_server(&c2, SocketAddr::new(e2.ip.parse()?, 7300))?;
    let payload = vec![0x42u8; 200_000];
    for _ in 0..16 {
        assert!(
            tcp_roundtrip(&c1, srv.local_addr(), &payload, Duration::from_secs(10))? == payload
        );
    }
    let stats = t.cli_json(&n1, &["stats"])?;
    let workers = stats["workers"].as_array().cloned().unwrap_or_default();
    assert_eq!(workers.len(), 2, "{stats}");
    for (i, w) in workers.iter().enumerate() {
        assert!(
            w["port_rx"].as_u64().unwrap_or(0) > 0,
            "worker {i} read no frame from the TAP: {stats}"
        );
    }

    // a UDP GSO send (one 3,000-byte super-datagram cut at 1,200) from c1
    let dst = SocketAddr::new(e2.ip.parse()?, 7400);
    let sink = in_netns(&c2, move || {
        let s = UdpSocket::bind(dst).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s
    })?;
    let data: Vec<u8> = (0..3000u32).map(|i| (i / 1200) as u8 + 1).collect();
    let sent = data.clone();
    in_netns(&c1, move || -> anyhow::Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        vxmesh_dataplane::io::gso::send(&s, dst, &sent, 1200)?;
        Ok(())
    })??;
    let mut got = Vec::new();
    let mut buf = [0u8; 2000];
    for _ in 0..3 {
        let (n, _) = sink.recv_from(&mut buf)?;
        got.push(buf[..n].to_vec());
    }
    assert_eq!(
        got.iter().map(|d| d.len()).collect::<Vec<_>>(),
        vec![1200, 1200, 600]
    );
    assert_eq!(got.concat(), data);
    Ok(())
}

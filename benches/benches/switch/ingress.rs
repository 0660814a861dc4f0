//! The routing mesh's ingress: a published port's path from outside to a task.

use super::*;

pub(super) const IVNI: u32 = 4095;
pub(super) const HOST: Mac = [2, 0, 0, 0, 0xff, 1];
pub(super) const SBOX: Mac = [2, 0, 0, 0, 0xff, 2];
pub(super) const IGW: Mac = [2, 0x56, 0x58, 0, 0x0f, 0xff];
pub(super) const TASK: Mac = [2, 0, 0, 0, 0xaa, 1];
pub(super) const SANDBOX_PORT: PortId = PortId(0);
pub(super) const TASK_PORT: PortId = PortId(5);
pub(super) const OUTSIDE: [u8; 4] = [198, 51, 100, 7];
pub(super) const SBOX_IP: [u8; 4] = [169, 254, 250, 2];
pub(super) const TASK_IP: [u8; 4] = [10, 255, 0, 10];

/// A node with ingress: port 8080 published (fwmark 0x200) to a task on this
/// node listening on 80.
pub(super) fn with_ingress() -> SwitchState {
    use vxmesh_dataplane::switch::{IngressView, PublishedView};
    let mut net = NetworkView {
        vni: IVNI,
        gateway_mac: IGW,
        gateways: vec![ip("10.255.0.1")],
        local_ports: vec![TASK_PORT],
        ..Default::default()
    };
    net.macs.insert(TASK, Location::Local(TASK_PORT));
    net.neighbors.insert(IpAddr::from(TASK_IP), TASK);
    net.neighbors.insert(ip("10.255.0.1"), IGW);
    net.services.insert(
        0x200,
        ServiceView {
            scheduler: vxmesh_dataplane::lb::scheduler::Kind::Rr,
            backends: vec![BackendView {
                v4: Some(Ipv4Addr::from(TASK_IP)),
                v6: None,
                weight: 1,
                healthy: true,
                local: true,
            }],
        },
    );
    let mut st = SwitchState::default();
    st.networks.insert(IVNI, net);
    st.ports.insert(
        TASK_PORT,
        PortView {
            vni: IVNI,
            mac: TASK,
            ips: vec![IpAddr::from(TASK_IP)],
        },
    );
    let mut ing = IngressView {
        port: SANDBOX_PORT,
        vni: IVNI,
        host_mac: HOST,
        sandbox_ip: Ipv4Addr::from(SBOX_IP),
        sandbox_ip6: None,
        sandbox_mac: SBOX,
        sandbox_macs: [SBOX].into_iter().collect(),
        enabled: true,
        published: Default::default(),
        policies: Vec::new(),
        rate_limit: None,
    };
    ing.published.insert(
        (6, 8080),
        PublishedView {
            fwmark: 0x200,
            target: 80,
            host_only: false,
        },
    );
    st.ingress = Some(ing);
    st
}

/// The ingress path on an established connection from an outside client: its
/// segment from the sandbox to the task (policy passed, DNAT to the task, the
/// client's address kept), and the task's answer back into the sandbox.
pub(super) fn ingress_path(g: &mut BenchmarkGroup<'_, WallTime>) {
    let st = with_ingress();
    let mut sw = Switch::new(4096);
    sw.on_state(&st);
    let in_seg = |flags, len| tcp(HOST, SBOX, (OUTSIDE, 40_000), (SBOX_IP, 8080), flags, len);
    let out_seg = |flags, len| tcp(TASK, IGW, (TASK_IP, 80), (OUTSIDE, 40_000), flags, len);
    let mut buf = PacketBuf::new();
    for (port, f, to) in [
        (SANDBOX_PORT, in_seg(Flags::Syn, 0), TASK_PORT),
        (TASK_PORT, out_seg(Flags::SynAck, 0), SANDBOX_PORT),
        (SANDBOX_PORT, in_seg(Flags::Ack, 0), TASK_PORT),
    ] {
        buf.load_frame(&f);
        assert_eq!(sw.from_port(&st, port, &mut buf, NOW), Action::Deliver(to));
    }
    let inbound = in_seg(Flags::Ack, LB_PAYLOAD);
    buf.load_frame(&inbound);
    assert_eq!(
        sw.from_port(&st, SANDBOX_PORT, &mut buf, NOW),
        Action::Deliver(TASK_PORT)
    );
    assert_eq!(ipv4_src_dst(buf.data()), (OUTSIDE, TASK_IP), "client kept");
    assert_eq!(&buf.data()[0..6], &TASK);
    assert!(checksums_ok(buf.data()), "ingress_tracked: checksums");
    time_frame(g, "ingress_tracked", &mut sw, &st, SANDBOX_PORT, &inbound);

    let answer = out_seg(Flags::Ack, LB_PAYLOAD);
    buf.load_frame(&answer);
    assert_eq!(
        sw.from_port(&st, TASK_PORT, &mut buf, NOW),
        Action::Deliver(SANDBOX_PORT)
    );
    assert_eq!(ipv4_src_dst(buf.data()), (SBOX_IP, OUTSIDE));
    assert_eq!(&buf.data()[0..12], &[HOST, SBOX].concat()[..]);
    assert!(checksums_ok(buf.data()), "ingress_reply: checksums");
    time_frame(g, "ingress_reply", &mut sw, &st, TASK_PORT, &answer);
    let ct = sw.conntrack();
    let ct = ct.lock().expect("conntrack");
    assert_eq!(ct.len(), 1, "ingress: one connection");
}

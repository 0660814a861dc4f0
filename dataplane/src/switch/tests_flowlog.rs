//! Flow records from the core: a connection's set-up and end (FIN, RST, idle)
//! with its translation and what it carried, drops with their policy, and
//! `--audit` policies weighed but not applied.

use super::tests::{buf, tcp_segment, with_vip, A, ACK, B, FIN, GW, RST, SYN};
use super::tests_ingress as ingress;
use super::*;
use crate::flowlog::{EndReason, FlowLogConfig, FlowReader};

const CLIENT: [u8; 4] = [10, 0, 0, 10];
const VIP: [u8; 4] = [10, 0, 0, 100];
const BACKEND: [u8; 4] = [10, 0, 0, 11];

/// A switch writing flow records, and the reader of them.
fn logged(st: &SwitchState) -> (Switch, FlowReader) {
    let mut sw = Switch::new(16);
    sw.conntrack().lock().unwrap().set_flow_log(true);
    let (log, reader) = FlowLog::new(FlowLogConfig::default());
    sw.set_flow_log(Some(log));
    sw.on_state(st);
    (sw, reader)
}

fn drain(r: &mut FlowReader) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    r.drain_into(&mut out, usize::MAX);
    out
}

/// The client's segment to the VIP (port 1), and the backend's answer (port 2).
fn client(sw: &mut Switch, st: &SwitchState, sport: u16, flags: u8, payload: &[u8], t: u64) {
    let f = tcp_segment((A, GW), (CLIENT, sport), (VIP, 80), 1, flags, payload);
    // round robin: the local backend first, then the remote one
    let a = sw.from_port(st, PortId(1), &mut buf(&f), t);
    assert!(
        matches!(a, Action::Deliver(PortId(2)) | Action::Encap { .. }),
        "{a:?}"
    );
}

fn backend(sw: &mut Switch, st: &SwitchState, sport: u16, flags: u8, payload: &[u8], t: u64) {
    let f = tcp_segment((B, A), (BACKEND, 80), (CLIENT, sport), 1, flags, payload);
    let a = sw.from_port(st, PortId(2), &mut buf(&f), t);
    assert_eq!(a, Action::Deliver(PortId(1)));
}

#[test]
fn a_connection_is_recorded_when_set_up_and_when_it_ends_with_its_counts() {
    let st = with_vip();
    let (mut sw, mut r) = logged(&st);
    client(&mut sw, &st, 5000, SYN, b"", 1);
    backend(&mut sw, &st, 5000, SYN | ACK, b"", 2);
    client(&mut sw, &st, 5000, ACK, b"hello", 3);
    // established: these go through the worker's cache, still counted
    backend(&mut sw, &st, 5000, ACK, b"world!", 4);
    client(&mut sw, &st, 5000, ACK, b"more", 5);
    backend(&mut sw, &st, 5000, ACK, b"", 6);
    client(&mut sw, &st, 5000, FIN | ACK, b"", 7);
    backend(&mut sw, &st, 5000, FIN | ACK, b"", 8);
    let ev = drain(&mut r);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let key = Key {
        zone: super::tests::VNI,
        proto: 6,
        src: IpAddr::from(CLIENT),
        dst: IpAddr::from(VIP),
        sport: 5000,
        dport: 80,
    };
    assert_eq!(ev[0].kind, Kind::Open);
    assert_eq!((ev[0].key, ev[0].at_ms), (key, 1));
    assert_eq!(ev[0].nat, Some((IpAddr::from(BACKEND), 80)));
    assert_eq!((ev[0].service, ev[0].verdict), (0x100, Verdict::None));
    assert_eq!(ev[1].kind, Kind::End(EndReason::Fin));
    assert_eq!((ev[1].key, ev[1].at_ms), (key, 8));
    assert_eq!(ev[1].nat, Some((IpAddr::from(BACKEND), 80)));
    assert_eq!(ev[1].packets, [4, 4], "both FINs counted");
    // 40 bytes of headers a segment
    assert_eq!(ev[1].bytes, [4 * 40 + 5 + 4, 4 * 40 + 6]);
    // the entry expiring later is not a second end
    sw.expire(10_000_000);
    assert!(drain(&mut r).is_empty());
}

#[test]
fn a_reset_and_an_idle_connection_end_with_their_reason() {
    let st = with_vip();
    let (mut sw, mut r) = logged(&st);
    client(&mut sw, &st, 6000, SYN, b"", 1);
    backend(&mut sw, &st, 6000, RST | ACK, b"", 2);
    client(&mut sw, &st, 6001, SYN, b"", 3);
    let ev = drain(&mut r);
    let kinds: Vec<_> = ev.iter().map(|e| (e.kind, e.key.sport)).collect();
    assert_eq!(
        kinds,
        [
            (Kind::Open, 6000),
            (Kind::End(EndReason::Rst), 6000),
            (Kind::Open, 6001)
        ]
    );
    assert_eq!(ev[1].packets, [1, 1]);
    // unanswered for longer than a SYN's timeout: swept, an idle end
    let gone = sw.expire(3 + crate::conntrack::timeout_ms(crate::conntrack::State::SynSent, 6) + 1);
    assert!(gone.is_empty(), "not established: nobody to reset");
    let ev = drain(&mut r);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].kind, ev[0].key.sport),
        (Kind::End(EndReason::Idle), 6001)
    );
    assert_eq!(ev[0].packets, [1, 0]);
}

#[test]
fn with_flow_logs_off_nothing_is_counted_or_recorded() {
    let st = with_vip();
    let mut sw = Switch::new(16);
    sw.on_state(&st);
    client(&mut sw, &st, 5000, SYN, b"", 1);
    backend(&mut sw, &st, 5000, SYN | ACK, b"", 2);
    let ct = sw.conntrack();
    let ct = ct.lock().unwrap();
    let (id, _) = ct
        .lookup(&Key {
            zone: super::tests::VNI,
            proto: 6,
            src: IpAddr::from(CLIENT),
            dst: IpAddr::from(VIP),
            sport: 5000,
            dport: 80,
        })
        .unwrap();
    assert_eq!(ct.touches()[id as usize].counts(), ([0, 0], [0, 0]));
}

fn rule(port: u16, action: PolicyAction, id: u32, audit: bool) -> PolicyRule {
    PolicyRule {
        proto: 6,
        port,
        from: None,
        action,
        id,
        audit,
    }
}

#[test]
fn ingress_drops_carry_their_policy_and_audit_policies_only_log() {
    let mut st = ingress::node_a();
    let (mut sw, mut r) = logged(&st);
    let syn = |sport, port| {
        ingress::buf(&ingress::tcp(
            ingress::HOST,
            ingress::SBOX,
            ingress::CLIENT,
            ingress::SBOX_IP,
            sport,
            port,
            true,
        ))
    };
    st.ingress.as_mut().unwrap().policies = vec![
        rule(8080, PolicyAction::Drop, 7, true),
        rule(9090, PolicyAction::Reject, 8, false),
    ];
    // audited: let through, recorded as what it would have been
    let a = sw.from_port(&st, ingress::SANDBOX_PORT, &mut syn(40000, 8080), 1);
    assert_eq!(a, Action::Deliver(ingress::TASK_PORT));
    assert_eq!(sw.counters.policy_audited, 1);
    assert_eq!(sw.counters.dropped(DropReason::PolicyDrop), 0);
    // enforced: refused with a RST, recorded as a drop by policy 8
    let a = sw.from_port(&st, ingress::SANDBOX_PORT, &mut syn(40001, 9090), 2);
    assert_eq!(a, Action::Reply(ingress::SANDBOX_PORT));
    // the same policy as 8080's, enforced: dropped
    st.ingress.as_mut().unwrap().policies[0].audit = false;
    let a = sw.from_port(&st, ingress::SANDBOX_PORT, &mut syn(40002, 8080), 3);
    assert_eq!(a, Action::Drop(DropReason::PolicyDrop));
    // a port nobody publishes: a drop without a policy
    let a = sw.from_port(&st, ingress::SANDBOX_PORT, &mut syn(40003, 7777), 4);
    assert_eq!(a, Action::Reply(ingress::SANDBOX_PORT));
    let ev = drain(&mut r);
    let got: Vec<_> = ev
        .iter()
        .map(|e| (e.kind, e.key.sport, e.policy, e.verdict))
        .collect();
    assert_eq!(
        got,
        [
            (Kind::Open, 40000, 7, Verdict::AuditDrop),
            (
                Kind::Drop(DropReason::PolicyReject),
                40001,
                8,
                Verdict::Reject
            ),
            (Kind::Drop(DropReason::PolicyDrop), 40002, 7, Verdict::Drop),
            (
                Kind::Drop(DropReason::NotPublished),
                40003,
                0,
                Verdict::None
            ),
        ]
    );
    assert_eq!(ev[0].nat.map(|n| n.1), Some(80), "8080 -> the task's 80");
    assert_eq!(ev[1].key.dst, IpAddr::from(ingress::SBOX_IP));
    assert_eq!(ev[1].packets, [1, 0]);
}

/// A TSO super-frame is switched once but counts as the segments it leaves as,
/// each with its own 40 bytes of headers.
#[test]
fn a_super_frame_counts_as_its_segments() {
    let st = with_vip();
    let (mut sw, mut r) = logged(&st);
    client(&mut sw, &st, 7000, SYN, b"", 1);
    backend(&mut sw, &st, 7000, SYN | ACK, b"", 2);
    // 3 full segments of 1000 bytes and one of 500, in one super-frame
    let f = tcp_segment((A, GW), (CLIENT, 7000), (VIP, 80), 1, ACK, &[9; 3500]);
    let mut b = buf(&f);
    b.set_segmented(Some(crate::buf::Segmented {
        hdr_len: 14 + 20 + 20,
        mss: 1000,
    }));
    let a = sw.from_port(&st, PortId(1), &mut b, 3);
    assert!(
        matches!(a, Action::Deliver(PortId(2)) | Action::Encap { .. }),
        "{a:?}"
    );
    client(&mut sw, &st, 7000, FIN | ACK, b"", 4);
    backend(&mut sw, &st, 7000, FIN | ACK, b"", 5);
    let ev = drain(&mut r);
    let end = ev
        .iter()
        .find(|e| e.kind == Kind::End(EndReason::Fin))
        .expect("an end");
    assert_eq!(end.packets[0], 1 + 4 + 1, "SYN, four segments, FIN");
    assert_eq!(end.bytes[0], 40 + (4 * 40 + 3500) + 40);
}

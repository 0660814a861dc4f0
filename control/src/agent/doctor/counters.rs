//! The underlay sockets' buffers as the kernel granted them, and the drop
//! counters that say the node cannot keep up: the agent's own
//! (`socket_overflow`, `tx_failed`) and the kernel's UDP errors
//! (`/proc/net/snmp`, `/proc/net/snmp6`), read twice [`super::SAMPLE`] apart.

use super::Check;
use crate::agent::Agent;
use vxmesh_dataplane::io::underlay::SOCKET_BUFFER;
use vxmesh_dataplane::DropReason;

pub async fn check(a: &Agent) -> Vec<Check> {
    let mut out = vec![buffers(a)];
    let (c0, k0) = (a.counters(), kernel_udp());
    tokio::time::sleep(super::SAMPLE).await;
    let (c1, k1) = (a.counters(), kernel_udp());
    out.push(drops(&c0, &c1, &k0, &k1));
    out
}

fn buffers(a: &Agent) -> Check {
    let short: Vec<String> = a
        .worker
        .socket_buffers()
        .iter()
        // the kernel reports twice what it granted (its bookkeeping share)
        .filter(|b| b.rcvbuf < SOCKET_BUFFER || b.sndbuf < SOCKET_BUFFER)
        .map(|b| {
            format!(
                "{} socket of worker {}: {} KiB to receive, {} KiB to send",
                b.socket,
                b.worker,
                b.rcvbuf / 2048,
                b.sndbuf / 2048
            )
        })
        .collect();
    let want = SOCKET_BUFFER / 1024;
    if short.is_empty() {
        Check::ok(
            "sockets.buffers",
            format!("every VXLAN and WireGuard socket got the {want} KiB buffers it asked for"),
        )
    } else {
        Check::warn(
            "sockets.buffers",
            format!("{want} KiB asked for, less granted: {}", short.join("; ")),
            format!("run the agent as root or with CAP_NET_ADMIN (it then sets the size past the sysctl limits), or raise net.core.rmem_max and net.core.wmem_max to {SOCKET_BUFFER}, and restart it"),
        )
    }
}

/// The kernel's UDP counters that mean datagrams were lost at a socket:
/// (receive buffer full, send buffer full), IPv4 and IPv6 summed.
fn kernel_udp() -> (u64, u64) {
    let v4 = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/snmp6").unwrap_or_default();
    (
        snmp(&v4, "Udp:", "RcvbufErrors") + snmp6(&v6, "Udp6RcvbufErrors"),
        snmp(&v4, "Udp:", "SndbufErrors") + snmp6(&v6, "Udp6SndbufErrors"),
    )
}

/// A counter of `/proc/net/snmp`: a header line and a value line per protocol.
fn snmp(text: &str, proto: &str, name: &str) -> u64 {
    let mut lines = text.lines().filter(|l| l.starts_with(proto));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(h, _)| *h == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A counter of `/proc/net/snmp6`: one `name value` per line.
fn snmp6(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn drops(
    c0: &vxmesh_dataplane::Counters,
    c1: &vxmesh_dataplane::Counters,
    k0: &(u64, u64),
    k1: &(u64, u64),
) -> Check {
    let rose = |r: DropReason| c1.dropped(r).saturating_sub(c0.dropped(r));
    let (overflow, tx) = (rose(DropReason::SocketOverflow), rose(DropReason::TxFailed));
    let (rcvbuf, sndbuf) = (k1.0.saturating_sub(k0.0), k1.1.saturating_sub(k0.1));
    let secs = super::SAMPLE.as_secs_f64();
    let others: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| !matches!(r, DropReason::SocketOverflow | DropReason::TxFailed))
        .filter(|r| rose(**r) > 0)
        .map(|r| format!("{} +{}", r.as_str(), rose(*r)))
        .collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(
            " (other drops, each with its reason in `vxmesh stats`: {})",
            others.join(", ")
        )
    };
    if overflow + rcvbuf > 0 {
        return Check::warn(
            "drops",
            format!("in {secs:.0} s: socket_overflow +{overflow}, the kernel's UDP receive-buffer errors +{rcvbuf}: datagrams are lost before the agent reads them{others}"),
            "the workers fall behind: give the agent more CPU (--workers, one per core), look for what else loads the node's cores, and see sockets.buffers",
        );
    }
    if tx + sndbuf > 0 {
        return Check::warn(
            "drops",
            format!("in {secs:.0} s: tx_failed +{tx}, the kernel's UDP send-buffer errors +{sndbuf}: sends are refused{others}"),
            "see the agent's log and `ip -s link` for the device that refuses writes (a full queue, an interface gone or down)",
        );
    }
    Check::ok(
        "drops",
        format!("no socket overflow, failed send or UDP buffer error in {secs:.0} s{others}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_are_read_by_name() {
        let snmp_text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 0 3 12 7 2\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 99\n";
        assert_eq!(snmp(snmp_text, "Udp:", "RcvbufErrors"), 7);
        assert_eq!(snmp(snmp_text, "Udp:", "SndbufErrors"), 2);
        assert_eq!(snmp(snmp_text, "Udp:", "Nope"), 0);
        let v6 = "Udp6InDatagrams                 \t5\nUdp6RcvbufErrors                \t4\n";
        assert_eq!(snmp6(v6, "Udp6RcvbufErrors"), 4);
        assert_eq!(snmp6("", "Udp6RcvbufErrors"), 0);
    }

    #[test]
    fn rising_overflow_warns_and_other_drops_are_only_listed() {
        let c0 = vxmesh_dataplane::Counters::default();
        let mut c1 = c0.clone();
        c1.drop_n(DropReason::NotMember, 3);
        let ok = drops(&c0, &c1, &(5, 0), &(5, 0));
        assert_eq!(ok.status, super::super::Status::Ok);
        assert!(ok.detail.contains("not_member +3"), "{}", ok.detail);
        c1.drop_n(DropReason::SocketOverflow, 2);
        let w = drops(&c0, &c1, &(5, 0), &(5, 0));
        assert_eq!(w.status, super::super::Status::Warn);
        assert!(w.detail.contains("socket_overflow +2"), "{}", w.detail);
        let w = drops(&c0, &c0, &(5, 0), &(9, 0));
        assert!(
            w.detail.contains("receive-buffer errors +4"),
            "{}",
            w.detail
        );
        let w = drops(&c0, &c0, &(5, 0), &(5, 1));
        assert!(w.detail.contains("send-buffer errors +1"), "{}", w.detail);
    }
}

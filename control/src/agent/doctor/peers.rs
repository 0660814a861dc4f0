//! Every other node, probed over the real underlay (see
//! `vxmesh_dataplane::wire::probe`): a probe leaves from this node to the
//! peer's VXLAN port, and its answer comes back to this node's VXLAN port, so
//! one answer proves both directions on udp/4789. Then the path MTU (a probe
//! as large as the overlay's largest packet, with DF; a binary search for
//! what does pass when it is lost), the clock offset (from the answer's wall
//! clock and the round trip), and, for nodes this one shares an encrypted
//! network with, the same through the WireGuard tunnel.

use super::Check;
use crate::agent::{Agent, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6, WG_PORT};
use crate::state::{ClusterState, Node};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use vxmesh_dataplane::io::probe::{ProbeEvent, ProbeSend};
use vxmesh_dataplane::wire::probe::MIN_LEN;
use vxmesh_dataplane::VXLAN_PORT;

/// The small probe that tests reachability.
const SMALL: usize = 64;
/// How long one probe waits for its answer.
const WAIT: Duration = Duration::from_millis(700);
/// Tries of the reachability probes (the first through a tunnel may wait for
/// its handshake).
const TRIES: usize = 3;
/// A clock this far off another node's is worth a warning: nothing in vxmesh
/// depends on it, but logs stop lining up.
const SKEW_WARN_MS: i64 = 1_000;
/// This far off, TLS certificates (etcds://) start failing to verify.
const SKEW_FAIL_MS: i64 = 300_000;

/// What one probe came to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Answered {
        rtt: Duration,
        /// The peer's clock minus this node's, in ms.
        offset_ms: i64,
    },
    Lost,
    /// It could not leave this node.
    SendFailed(String),
}

/// Sends one probe and waits for what becomes of it.
async fn ask(a: &Agent, to: IpAddr, secure: bool, len: usize, wait: Duration) -> Outcome {
    let id = rand::random::<u64>();
    let sent = Instant::now();
    let sent_wall = crate::state::model::unix_now_ms() as i64 + a.heartbeat_skew_ms;
    a.worker.probe(ProbeSend {
        to,
        secure,
        id,
        len,
    });
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        for e in a.worker.take_probe_events(|i| i == id) {
            match e {
                ProbeEvent::Answer { answer, at }
                    if answer.from == to && answer.secure == secure =>
                {
                    let rtt = at.saturating_duration_since(sent);
                    let mid = sent_wall + (rtt.as_millis() / 2) as i64;
                    return Outcome::Answered {
                        rtt,
                        offset_ms: answer.wall_ms as i64 - mid,
                    };
                }
                ProbeEvent::SendFailed { error, .. } => return Outcome::SendFailed(error),
                ProbeEvent::Answer { .. } => {}
            }
        }
        if sent.elapsed() >= wait {
            return Outcome::Lost;
        }
    }
}

/// Up to `tries` probes, until one is answered or cannot be sent; the
/// answered one with the shortest round trip of those sent.
async fn ask_tries(a: &Agent, to: IpAddr, secure: bool, len: usize, tries: usize) -> Outcome {
    let mut last = Outcome::Lost;
    for _ in 0..tries {
        last = ask(a, to, secure, len, WAIT).await;
        if !matches!(last, Outcome::Lost) {
            break;
        }
    }
    last
}

/// Bytes below the VXLAN datagram on the underlay: the outer IP and UDP headers.
fn ip_udp(addr: IpAddr) -> usize {
    if addr.is_ipv4() {
        28
    } else {
        48
    }
}

pub async fn check(a: &Agent, st: &ClusterState) -> Vec<Check> {
    let tunnels = crate::agent::switch_state::tunnels(st, &a.node, Vec::new(), None);
    let peers = st.nodes.values().filter(|n| n.name != a.node);
    let runs = peers.map(|n| {
        let tunnel = n
            .tunnel_addr
            .filter(|t| tunnels.peers.iter().any(|p| p.vtep == *t));
        peer(a, n, tunnel)
    });
    let mut out: Vec<Check> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    out.extend(static_vteps(st));
    out
}

/// `--peer-vtep`s that are no node of the store: they run no vxmesh and
/// cannot answer.
fn static_vteps(st: &ClusterState) -> Vec<Check> {
    let known = |ip: &IpAddr| {
        st.nodes
            .values()
            .any(|n| n.advertise_addr == *ip || n.tunnel_addr.map(IpAddr::V4) == Some(*ip))
    };
    let mut out = Vec::new();
    for net in st.networks.values() {
        for v in net.peer_vteps.iter().filter(|v| !known(v)) {
            out.push(Check::warn(
                format!("vtep.{v}"),
                format!("static VTEP of network {} is not a vxmesh node: probe skipped", net.name),
                format!("check it from its own side (e.g. `ip -d link show` of its VXLAN device, and that it reaches this node's udp/{VXLAN_PORT})"),
            ));
        }
    }
    out
}

/// One node's checks: VXLAN both ways, path MTU, clock, and WireGuard when a
/// tunnel to it is configured.
async fn peer(a: &Agent, n: &Node, tunnel: Option<std::net::Ipv4Addr>) -> Vec<Check> {
    let name = &n.name;
    if n.external {
        return vec![Check::warn(
            format!("peer.{name}"),
            format!("{name} is an external WireGuard peer (runs no vxmesh): probe skipped"),
            "check it from its own side (`wg show` there: a recent handshake with this node)",
        )];
    }
    let addr = n.advertise_addr;
    if addr.is_ipv6() != a.advertise_addr.is_ipv6() {
        return vec![Check::fail(
            format!("peer.{name}.vxlan"),
            format!("{name}'s address {addr} is of another family than this node's underlay ({})", a.advertise_addr),
            "give every node an address of one family (--advertise-addr): VXLAN does not cross between IPv4 and IPv6",
        )];
    }
    let mut out = Vec::new();
    let plain = ask_tries(a, addr, false, SMALL, TRIES).await;
    match &plain {
        Outcome::Answered { rtt, offset_ms } => {
            out.push(Check::ok(
                format!("peer.{name}.vxlan"),
                format!(
                    "{name} ({addr}) answers on udp/{VXLAN_PORT} both ways, round trip {:.1} ms",
                    rtt.as_secs_f64() * 1000.0
                ),
            ));
            out.push(clock(name, *offset_ms, *rtt));
            out.push(mtu(a, name, addr, *rtt).await);
        }
        Outcome::Lost => out.push(Check::fail(
            format!("peer.{name}.vxlan"),
            format!(
                "no answer from {name} ({addr}) on udp/{VXLAN_PORT}: {TRIES} probes lost (a firewall drops VXLAN one way or both, or {name}'s agent is not running)"
            ),
            format!(
                "allow udp/{VXLAN_PORT} between this node and {addr}, both ways, on both nodes and on the way (`nft list ruleset`, `iptables -S`); check that {name}'s agent runs (`vxmesh node ls`). One answer proves both directions: `vxmesh doctor` on {name} tells the same"
            ),
        )),
        Outcome::SendFailed(e) => out.push(Check::fail(
            format!("peer.{name}.vxlan"),
            format!("a probe to {name} ({addr}) cannot leave this node: {e}"),
            format!("check this node's route to {addr} (`ip route get {addr}`)"),
        )),
    }
    if let Some(t) = tunnel {
        out.extend(
            wireguard(
                a,
                n,
                IpAddr::V4(t),
                matches!(plain, Outcome::Answered { .. }),
            )
            .await,
        );
    }
    out
}

fn clock(name: &str, offset_ms: i64, rtt: Duration) -> Check {
    let check = format!("peer.{name}.clock");
    let margin = rtt.as_millis() / 2 + 1;
    let detail =
        format!("{name}'s clock is {offset_ms:+} ms from this node's (within {margin} ms)");
    let fix = "run time synchronisation (chrony, systemd-timesyncd, ntpd) on every node; vxmesh itself does not depend on the clocks agreeing (liveness is judged on each agent's own clock), but logs stop lining up, and TLS to the store fails once they are minutes apart";
    match offset_ms.unsigned_abs() as i64 {
        d if d >= SKEW_FAIL_MS => Check::fail(check, detail, fix),
        d if d >= SKEW_WARN_MS => Check::warn(check, detail, fix),
        _ => Check::ok(check, detail),
    }
}

/// Whether a probe as large as the overlay's largest packet crosses to the
/// peer and back with DF; if not, the largest that does, and the fix.
async fn mtu(a: &Agent, name: &str, addr: IpAddr, rtt: Duration) -> Check {
    let check = format!("peer.{name}.mtu");
    let overhead = if addr.is_ipv4() {
        VXLAN_OVERHEAD_V4
    } else {
        VXLAN_OVERHEAD_V6
    } as usize;
    let ip = ip_udp(addr);
    // the underlay packet of an endpoint's largest (plain network) packet
    let need = a.mtus.plain as usize + overhead;
    let full = need - ip;
    if matches!(
        ask_tries(a, addr, false, full, 2).await,
        Outcome::Answered { .. }
    ) {
        return Check::ok(
            check,
            format!(
                "{need}-byte packets (an endpoint's largest, {} bytes, in VXLAN) cross to {name} and back unfragmented",
                a.mtus.plain
            ),
        );
    }
    // what does pass: `lo` was answered, `hi` was not
    let wait = (rtt * 4).max(Duration::from_millis(300));
    let (mut lo, mut hi) = (SMALL.max(MIN_LEN), full);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        match ask(a, addr, false, mid, wait).await {
            Outcome::Answered { .. } => lo = mid,
            _ => hi = mid,
        }
    }
    let path = lo + ip;
    let fits = path.saturating_sub(overhead);
    Check::fail(
        check,
        format!(
            "path MTU to {name} is {path}; the overlay MTU {} needs {need}: larger packets between the two nodes' endpoints are lost",
            a.mtus.plain
        ),
        format!(
            "raise the MTU of every link between this node and {name} to {need}, or lower the overlay MTU to {fits}: set the underlay interface's MTU to {path} on every node (vxmesh derives endpoint MTUs from it) and restart the agents"
        ),
    )
}

/// The same through the WireGuard tunnel to `t` (the node's tunnel address).
async fn wireguard(a: &Agent, n: &Node, t: IpAddr, plain_ok: bool) -> Vec<Check> {
    let name = &n.name;
    let port = n.wg_port.unwrap_or(WG_PORT);
    let check = format!("peer.{name}.wireguard");
    let ep = format!("udp/{port} at {}", n.advertise_addr);
    match ask_tries(a, t, true, SMALL, TRIES).await {
        Outcome::Answered { rtt, .. } => {
            let mut out = vec![Check::ok(
                check,
                format!(
                    "{name} answers through WireGuard ({ep}), round trip {:.1} ms",
                    rtt.as_secs_f64() * 1000.0
                ),
            )];
            // an encrypted network's largest packet, as VXLAN inside the tunnel
            let full = a.mtus.encrypted as usize + 14 + 8;
            if !matches!(ask_tries(a, t, true, full, 2).await, Outcome::Answered { .. }) {
                out.push(Check::fail(
                    format!("peer.{name}.wireguard-mtu"),
                    format!(
                        "an encrypted network's largest packet ({} bytes) does not cross the tunnel to {name}, small ones do",
                        a.mtus.encrypted
                    ),
                    format!("see peer.{name}.mtu: the path between the nodes is narrower than their interfaces"),
                ));
            }
            out
        }
        Outcome::Lost => vec![Check::fail(
            check,
            format!(
                "no answer from {name} through WireGuard ({ep}): {TRIES} probes lost{}",
                if plain_ok {
                    " while plain VXLAN to it works"
                } else {
                    ""
                }
            ),
            format!(
                "allow {ep} (and this node's WireGuard port) both ways, on both nodes and on the way; check both nodes' keys are current (`vxmesh node ls`)"
            ),
        )],
        Outcome::SendFailed(e) => vec![Check::fail(
            check,
            format!("a probe to {name} through WireGuard cannot leave this node: {e}"),
            "check that both nodes have keys and tunnel addresses (`vxmesh node ls`) and the agent's log",
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_verdicts_follow_the_offset() {
        let r = Duration::from_millis(2);
        assert_eq!(clock("n2", 30, r).status, super::super::Status::Ok);
        let w = clock("n2", -5_000, r);
        assert_eq!(w.status, super::super::Status::Warn);
        assert!(w.detail.contains("-5000 ms"), "{}", w.detail);
        assert_eq!(clock("n2", 400_000, r).status, super::super::Status::Fail);
    }
}

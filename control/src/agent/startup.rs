//! Making an agent: the checks of `--advertise-addr`, the dataplane and its
//! sandbox and egress TAPs, this node's key and its row in the store.

use super::endpoints::LocalPorts;
use super::{
    egress, ingress, iproute, keys, node_guard, switch_state, Agent, AgentConfig,
    VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6, WIREGUARD_OVERHEAD,
};
use super::{flows, liveness};
use crate::state::{ops, Node, StateError};
use crate::store::{self, Store};
use anyhow::Context;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use vxmesh_dataplane::io::dataplane::Dataplane;
use vxmesh_dataplane::io::underlay;
use vxmesh_dataplane::VXLAN_PORT;

/// Send sockets, i.e. distinct outer source ports flows are spread over.
const SOURCE_PORTS: usize = 8;

impl Agent {
    pub async fn start(cfg: &AgentConfig) -> anyhow::Result<Arc<Agent>> {
        check_advertise_addr(cfg.advertise_addr)?;
        let store: Arc<dyn Store> = {
            let (url, opts) = (cfg.store.clone(), cfg.store_options.clone());
            Arc::from(tokio::task::spawn_blocking(move || store::open_with(&url, &opts)).await??)
        };
        wait_address_usable(cfg.advertise_addr).await?;
        let underlay_mtu = iproute::mtu_of_address(cfg.advertise_addr)
            .await?
            .with_context(|| {
                format!(
                    "--advertise-addr {} is not an address of this node's interfaces (ip addr): pass one that is",
                    cfg.advertise_addr
                )
            })?;
        let overhead = if cfg.advertise_addr.is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        };
        let keyring = keys::KeyRing::load_or_create(&cfg.data_dir)?;
        let preshared = match &cfg.preshared_key_file {
            Some(p) => Some(keys::read_preshared(p)?),
            None => None,
        };
        // WireGuard crosses the underlay in its family too (IPv6-only socket
        // over IPv6, like the VXLAN ones); what it carries stays IPv4 between
        // tunnel addresses either way
        let wg = underlay::bind_udp(underlay::any_of(cfg.advertise_addr, cfg.wg_port), false)
            .with_context(|| {
                format!(
                    "cannot bind the WireGuard socket (udp/{}): pass another --wg-port",
                    cfg.wg_port
                )
            })?;
        let workers = cfg.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let worker = Dataplane::start(workers, cfg.advertise_addr, VXLAN_PORT, SOURCE_PORTS, Some(wg), cfg.limits)
            .with_context(|| {
                format!("cannot bind the VXLAN underlay sockets (udp/{VXLAN_PORT}, {}): is another VXLAN endpoint using the port?", cfg.advertise_addr)
            })?;
        tracing::info!(workers, source_ports = ?worker.source_ports(), "dataplane started on udp/{VXLAN_PORT}");
        let switch_guard =
            inject_test_fault(&worker, std::env::var("VXMESH_TEST_FAULT").ok().as_deref())?;
        if cfg.heartbeat_skew_ms != 0 {
            // a node with a wrong clock answers the doctor's probes with it too
            worker.set_test_clock_skew(cfg.heartbeat_skew_ms);
        }
        let public = ops::encode_key(&keyring.public());
        let sandbox = match ingress::create_sandbox(workers).await {
            Ok((sb, fds)) => match worker.add_port(sb.port, fds, true) {
                Ok(()) => Some(sb),
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand the ingress sandbox to the workers; published ports will not answer here");
                    None
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "no ingress sandbox; published ports will not answer on this node");
                None
            }
        };
        let mtus = switch_state::Mtus {
            plain: underlay_mtu.saturating_sub(overhead),
            encrypted: underlay_mtu.saturating_sub(overhead + WIREGUARD_OVERHEAD),
        };
        let egress = match egress::create_tap(workers, mtus.plain).await {
            Ok((t, fds)) => match worker.add_port(t.port, fds, true) {
                Ok(()) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand the egress TAP to the workers; containers will not reach beyond the overlays");
                    None
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "no egress TAP; containers will not reach beyond the overlays");
                None
            }
        };
        let agent = Arc::new(Agent {
            node: cfg.node.clone(),
            advertise_addr: cfg.advertise_addr,
            mtus,
            underlay_mtu,
            store,
            worker,
            ports: tokio::sync::Mutex::new(LocalPorts {
                next: 1,
                ..Default::default()
            }),
            keys: Arc::new(std::sync::Mutex::new(keyring)),
            preshared,
            rotation_interval: cfg.key_rotation_interval,
            last_rotation: std::sync::Mutex::new(std::time::Instant::now()),
            rotation_retry: std::sync::Mutex::new(None),
            rotated_epoch: std::sync::atomic::AtomicU64::new(0),
            last_state: std::sync::Mutex::new(Arc::default()),
            tunnel_peers: std::sync::Mutex::new(Vec::new()),
            foreign_vteps: std::sync::Mutex::new(Vec::new()),
            store_ok: std::sync::atomic::AtomicBool::new(true),
            follow_stats: Default::default(),
            invalid_rows: std::sync::Mutex::new(Vec::new()),
            down: std::sync::Mutex::new(Default::default()),
            dns_upstream: upstream_resolvers(),
            judge: std::sync::Mutex::new(liveness::Judge::new(std::time::Instant::now())),
            heartbeat_skew_ms: cfg.heartbeat_skew_ms,
            attached: std::sync::atomic::AtomicUsize::new(0),
            sandbox,
            nft_table: tokio::sync::Mutex::new(String::new()),
            egress,
            services: node_guard::NodeServices {
                switch_guard,
                ..node_guard::NodeServices::new(cfg.wg_port, &cfg.store, cfg.metrics_addr)
            },
            egress_applied: tokio::sync::Mutex::default(),
            ingress_limit: cfg
                .ingress_rate_limit
                .map(|l| Arc::new(vxmesh_dataplane::lb::limit::SourceLimiter::new(l))),
            health_probes_max: cfg.health_probes_max.max(1),
            data_dir: cfg.data_dir.clone(),
            flows: cfg
                .limits
                .flow_log
                .map(|_| Arc::new(flows::Flows::new(cfg.limits.conntrack))),
        });
        let mut me = Node::new(&cfg.node, cfg.advertise_addr);
        me.last_seen = crate::state::model::unix_now();
        me.public_key = Some(public);
        me.wg_port = Some(cfg.wg_port);
        agent
            .transact(move |st| {
                let mut n = me.clone();
                if let Some(old) = st.nodes.get(&n.name) {
                    if old.external {
                        return Err(StateError::Conflict(format!(
                            "node {} is declared as an external WireGuard peer: remove it (vxmesh node rm {}) or pick another --node",
                            n.name, n.name
                        )));
                    }
                    n.labels = old.labels.clone();
                    n.ingress = old.ingress;
                    n.tunnel_addr = old.tunnel_addr;
                    n.key_epoch = old.key_epoch;
                    n.rotate_requested = old.rotate_requested;
                }
                ops::upsert_node(st, n)
            })
            .await
            .context("cannot register this node in the store")?;
        tracing::info!(node = %cfg.node, addr = %cfg.advertise_addr, mtu = agent.mtus.plain, encrypted_mtu = agent.mtus.encrypted, store = %agent.store.describe(), "agent started");
        Ok(agent)
    }
}

/// The nameservers of the agent's namespace, of either family (`ip netns exec` shows a node
/// namespace its own `/etc/netns/NAME/resolv.conf` here).
fn upstream_resolvers() -> Vec<std::net::SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        // a scoped link-local address (fe80::1%eth0) names an interface the
        // workers' socket is not on: left out
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv4() || iproute::host_has_ipv6())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect()
}

/// Refuses advertise addresses no peer could send VXLAN to: unspecified,
/// multicast, IPv4-mapped IPv6 (say the IPv4 address itself), and IPv6
/// link-local ones (meaningless without an interface, which the store does
/// not record). Loopback stays allowed: a one-node trial needs no peer.
fn check_advertise_addr(addr: IpAddr) -> anyhow::Result<()> {
    let why = match addr {
        a if a.is_unspecified() => Some("the unspecified address"),
        a if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (advertise the IPv4 address itself)")
        }
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some(
            "an IPv6 link-local address (peers would need to know its interface): advertise a global or unique-local (fd00::/8) one",
        ),
        _ => None,
    };
    match why {
        Some(why) => anyhow::bail!("--advertise-addr {addr} is {why}"),
        None => Ok(()),
    }
}

/// How long start-up waits for a tentative IPv6 `--advertise-addr` to pass
/// duplicate address detection (the kernel's default takes about a second).
const DAD_WAIT: Duration = Duration::from_secs(5);

/// Waits while the advertised address is still tentative (an IPv6 address just
/// added, or whose link just came up, cannot be bound yet: binding the send
/// sockets would fail with a puzzling "cannot assign requested address");
/// refuses one that failed duplicate address detection.
async fn wait_address_usable(addr: IpAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DAD_WAIT;
    loop {
        match iproute::address_state(addr).await? {
            Some(iproute::AddressState::DadFailed) => anyhow::bail!(
                "--advertise-addr {addr} failed duplicate address detection (another host on the link has it): give this node another address"
            ),
            Some(iproute::AddressState::Tentative) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Some(iproute::AddressState::Tentative) => anyhow::bail!(
                "--advertise-addr {addr} is still tentative (IPv6 duplicate address detection) after {DAD_WAIT:?}: is its link up?"
            ),
            // Ready, or absent (the MTU look-up that follows says so)
            _ => return Ok(()),
        }
    }
}

/// Test-only fault injection, from the agent's environment once at start
/// (nothing a container or the API can set). `VXMESH_TEST_FAULT=worker-panic-after=MS`
/// makes the last dataplane worker panic MS milliseconds after the dataplane
/// starts, so that tests see the agent notice a dead worker and exit;
/// `VXMESH_TEST_FAULT=no-switch-guard` leaves the node services' guard out of
/// the switch (the egress table keeps its own), so that tests see the kernel's
/// layer hold alone. Any other value is refused, so a mistyped fault does not
/// pass unnoticed. Returns whether the switch keeps its guard.
fn inject_test_fault(dp: &Dataplane, fault: Option<&str>) -> anyhow::Result<bool> {
    let Some(fault) = fault.filter(|f| !f.is_empty()) else {
        return Ok(true);
    };
    match parse_test_fault(fault)? {
        TestFault::WorkerPanicAfter(ms) => {
            let index = dp.workers() - 1;
            tracing::warn!(
                worker = index,
                after_ms = ms,
                "VXMESH_TEST_FAULT: this worker will panic (a test fault)"
            );
            dp.inject_worker_panic(index, Duration::from_millis(ms));
            Ok(true)
        }
        TestFault::NoSwitchGuard => {
            tracing::warn!(
                "VXMESH_TEST_FAULT: the switch does not guard the node's services (a test fault)"
            );
            Ok(false)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TestFault {
    WorkerPanicAfter(u64),
    NoSwitchGuard,
}

/// A `VXMESH_TEST_FAULT` value (see [`inject_test_fault`]).
fn parse_test_fault(fault: &str) -> anyhow::Result<TestFault> {
    if fault == "no-switch-guard" {
        return Ok(TestFault::NoSwitchGuard);
    }
    fault
        .strip_prefix("worker-panic-after=")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(TestFault::WorkerPanicAfter)
        .with_context(|| {
            format!(
                "VXMESH_TEST_FAULT={fault}: the test faults are worker-panic-after=MS and no-switch-guard"
            )
        })
}

#[cfg(test)]
mod startup_tests {
    use super::{check_advertise_addr, parse_test_fault, TestFault};

    #[test]
    fn only_the_one_test_fault_is_taken() {
        assert_eq!(
            parse_test_fault("worker-panic-after=1500").unwrap(),
            TestFault::WorkerPanicAfter(1500)
        );
        assert_eq!(
            parse_test_fault("no-switch-guard").unwrap(),
            TestFault::NoSwitchGuard
        );
        for bad in [
            "worker-panic-after=",
            "worker-panic-after=-1",
            "worker-panic",
            "x=1",
        ] {
            let e = parse_test_fault(bad).unwrap_err().to_string();
            assert!(e.contains("worker-panic-after=MS"), "{bad}: {e}");
        }
    }

    /// Global and unique-local addresses of either family are fine; nothing a
    /// peer could not send to is.
    #[test]
    fn advertise_addresses_peers_cannot_reach_are_refused() {
        for ok in ["192.0.2.1", "2001:db8::1", "fd00:77::5", "127.0.0.1", "::1"] {
            assert!(check_advertise_addr(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("ff02::1", "multicast"),
            ("::ffff:192.0.2.1", "IPv4-mapped"),
            ("fe80::1", "link-local"),
        ] {
            let e = check_advertise_addr(bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}

//! Round trips with the kernel, in throwaway namespaces this test makes (a
//! thread that unshares its network namespace and waits; the namespace goes
//! when the thread ends, which its guard's drop makes happen even when an
//! assertion fails). Needs root (CAP_SYS_ADMIN); without it they say so and
//! pass.

use super::*;
use std::net::IpAddr;
use std::sync::mpsc;

/// A network namespace that lives as long as this guard.
struct TestNs {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestNs {
    fn new() -> Option<TestNs> {
        let (path_tx, path_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = path_tx.send(Err(e));
                return;
            }
            let tid = nix::unistd::gettid();
            let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
            let _ = path_tx.send(Ok(PathBuf::from(path)));
            let _ = stop_rx.recv();
        });
        match path_rx.recv().expect("the namespace's thread answers") {
            Ok(path) => Some(TestNs {
                path,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                eprintln!("skipped: cannot make a network namespace ({e}); run as root");
                None
            }
        }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads `/proc/sys/net/KEY` inside `ns`.
async fn sysctl_in(ns: &Path, key: &str) -> String {
    let path = format!("/proc/sys/net/{key}");
    netns::run_in(ns, move || {
        std::fs::read_to_string(&path).map_err(|source| NetlinkError::Sysctl { path, source })
    })
    .await
    .unwrap()
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_addresses_routes_and_offloads_round_trip_in_a_namespace() {
    let (Some(ns), Some(other)) = (TestNs::new(), TestNs::new()) else {
        return;
    };
    let nl = Netlink::in_netns(&ns.path).await.unwrap();
    assert!(nl.link("vxt0").await.unwrap().is_none());

    // a veth pair: kinds and peers as the kernel has them
    nl.add_veth("vxt0", "vxt1").await.unwrap();
    let (a, b) = (
        nl.require("vxt0").await.unwrap(),
        nl.require("vxt1").await.unwrap(),
    );
    assert_eq!(a.kind, Some(rtnetlink::packet_route::link::InfoKind::Veth));
    assert!(!a.is_tun());
    assert_eq!(a.link_index, Some(b.index));
    assert_eq!(nl.link_by_index(b.index).await.unwrap().as_ref(), Some(&b));
    assert!(nl.links().await.unwrap().iter().any(|l| l.name == "lo"));
    assert!(nl.add_veth("vxt0", "vxt2").await.unwrap_err().exists());

    // MAC, MTU, up, in one change; then down and renamed
    let change = LinkChange::new().mac("02:42:0a:00:00:07").mtu(1400).up();
    nl.set_link("vxt0", change).await.unwrap();
    let a = nl.require("vxt0").await.unwrap();
    assert_eq!(a.mac, Some([2, 0x42, 10, 0, 0, 7]));
    assert_eq!((a.mtu, a.up), (Some(1400), true));
    let bad = nl.set_link("vxt0", LinkChange::new().mac("nope")).await;
    assert!(matches!(bad, Err(NetlinkError::BadMac(_))), "{bad:?}");
    nl.set_link("vxt1", LinkChange::new().down().rename("vxt1r"))
        .await
        .unwrap();
    assert!(nl.link("vxt1").await.unwrap().is_none());
    nl.set_link("vxt1r", LinkChange::new().up()).await.unwrap();
    assert!(nl.require("vxt1r").await.unwrap().up);

    // addresses: twice is `exists`; IPv6 without DAD is ready at once
    let v4: IpAddr = "10.99.0.1".parse().unwrap();
    let v6: IpAddr = "fd99::1".parse().unwrap();
    nl.add_address("vxt0", v4, 24, false).await.unwrap();
    assert!(nl
        .add_address("vxt0", v4, 24, false)
        .await
        .unwrap_err()
        .exists());
    nl.add_address("vxt0", v6, 64, true).await.unwrap();
    let addrs = nl.addresses().await.unwrap();
    let find = |ip| addrs.iter().find(|x| x.addr == ip).cloned();
    assert_eq!(
        find(v4),
        Some(Address {
            index: a.index,
            addr: v4,
            prefix_len: 24,
            state: AddressState::Ready
        })
    );
    assert_eq!(
        find(v6).map(|x| (x.prefix_len, x.state)),
        Some((64, AddressState::Ready))
    );
    nl.del_address("vxt0", v4).await.unwrap();
    assert!(nl.del_address("vxt0", v4).await.unwrap_err().not_found());
    nl.add_address("vxt0", v4, 24, false).await.unwrap();

    // IPv6 off on a device: a typed refusal, and the namespace's own sysctl
    // turns it back on (the agent's namespace is not touched)
    nl.set_sysctl("ipv6/conf/vxt1r/disable_ipv6", "1")
        .await
        .unwrap();
    assert_eq!(
        sysctl_in(&ns.path, "ipv6/conf/vxt1r/disable_ipv6").await,
        "1"
    );
    let e = nl
        .add_address("vxt1r", "fd99::2".parse().unwrap(), 64, true)
        .await
        .unwrap_err();
    assert!(e.ipv6_disabled(), "{e}");
    nl.enable_ipv6("vxt1r").await.unwrap();
    assert_eq!(
        sysctl_in(&ns.path, "ipv6/conf/vxt1r/disable_ipv6").await,
        "0"
    );
    nl.add_address("vxt1r", "fd99::2".parse().unwrap(), 64, true)
        .await
        .unwrap();
    assert!(nl.enable_ipv6("../../all").await.is_err(), "not a name");

    // routes: with a next hop and an MTU, twice is `exists`; a table's
    // default replaced; a rule by source
    let r = Route {
        dst: "10.98.0.0/24".parse().unwrap(),
        via: Some("10.99.0.2".parse().unwrap()),
        dev: "vxt0".into(),
        table: None,
        mtu: Some(1300),
    };
    nl.add_route(&r).await.unwrap();
    assert!(nl.add_route(&r).await.unwrap_err().exists());
    let mut d = Route::default_via("10.99.0.2".parse().unwrap(), "vxt0");
    d.table = Some(4789);
    nl.replace_route(&d).await.unwrap();
    nl.replace_route(&d).await.unwrap();
    nl.add_rule(v4, 4789, 4789).await.unwrap();
    assert!(nl.add_rule(v4, 4789, 4789).await.unwrap_err().exists());
    nl.add_rule(v6, 4789, 4789).await.unwrap();
    nl.del_route(&r).await.unwrap();
    assert!(nl.del_route(&r).await.unwrap_err().not_found());

    // offloads off, as `ethtool -K vxt0 tx off tso off gso off`
    let dev = "vxt0".to_string();
    let before = netns::run_in(&ns.path, move || {
        Ok(ethtool::get(&dev, ethtool::ETHTOOL_GTSO).unwrap())
    })
    .await
    .unwrap();
    assert!(before, "a veth offers TSO");
    nl.offloads_off("vxt0").await.unwrap();
    let dev = "vxt0".to_string();
    let after = netns::run_in(&ns.path, move || {
        Ok([
            ethtool::ETHTOOL_GTXCSUM,
            ethtool::ETHTOOL_GTSO,
            ethtool::ETHTOOL_GGSO,
        ]
        .map(|c| ethtool::get(&dev, c).unwrap()))
    })
    .await
    .unwrap();
    assert_eq!(after, [false, false, false]);

    // moved into another namespace, under the same name
    nl.set_link("vxt0", LinkChange::new().netns(&other.path))
        .await
        .unwrap();
    assert!(nl.link("vxt0").await.unwrap().is_none());
    let there = Netlink::in_netns(&other.path).await.unwrap();
    let moved = there.require("vxt0").await.unwrap();
    assert_eq!(moved.mac, Some([2, 0x42, 10, 0, 0, 7]));

    // deleted (its peer goes with it)
    there.delete_link("vxt0").await.unwrap();
    assert!(there.link("vxt0").await.unwrap().is_none());
    assert!(nl.link("vxt1r").await.unwrap().is_none());
    assert!(there.delete_link("vxt0").await.unwrap_err().not_found());
}

#[tokio::test]
async fn a_missing_namespace_is_a_typed_error() {
    let e = Netlink::in_netns(Path::new("/run/netns/vxmesh-no-such-ns-here"))
        .await
        .err()
        .expect("no such namespace");
    assert!(matches!(e, NetlinkError::Netns { .. }), "{e}");
}

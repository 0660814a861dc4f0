//! One suite for every store: each property is a function over a way to open the
//! store (twice, as two agents would), run against SQLite and against a real etcd
//! (Debian's `etcd-server`, started here on loopback).

use super::*;
use crate::state::{ops, EndpointSpec, NetworkSpec, Node};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

type Opener = Arc<dyn Fn() -> Box<dyn Store> + Send + Sync>;

fn node(name: &str, addr: &str) -> Node {
    Node::new(name, addr.parse().unwrap())
}

fn commits_all_or_nothing_and_bumps_revision(open: Opener) {
    let s = open();
    assert_eq!(s.load().unwrap().revision, 0);
    let spec = NetworkSpec {
        name: "a".into(),
        ..Default::default()
    };
    let n = transact(&*s, |st| ops::create_network(st, &spec)).unwrap();
    assert_eq!(s.load().unwrap().revision, 1);
    assert_eq!(s.load().unwrap().state.networks["a"], n);
    // a failing operation leaves no trace
    let r = s.update(&mut |st| {
        st.networks.clear();
        Err(StateError::Invalid("no".into()))
    });
    assert!(matches!(r, Err(UpdateError::State(_))));
    let snap = s.load().unwrap();
    assert_eq!(snap.revision, 1);
    assert_eq!(snap.state.networks.len(), 1);
    // a no-op does not move the revision
    s.update(&mut |_| Ok(())).unwrap();
    assert_eq!(s.load().unwrap().revision, 1);
    // another opener sees the same state; a removal is a change
    let other = open();
    assert_eq!(other.load().unwrap().state.networks["a"], n);
    transact(&*other, |st| {
        st.networks.remove("a");
        Ok(())
    })
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.revision, 2);
    assert!(snap.state.networks.is_empty());
}

fn concurrent_writers_never_hand_out_one_address_twice(open: Opener) {
    let a = open();
    transact(&*a, |st| {
        ops::upsert_node(st, node("n1", "192.0.2.1"))?;
        ops::upsert_node(st, node("n2", "192.0.2.2"))?;
        ops::create_network(
            st,
            &NetworkSpec {
                name: "a".into(),
                ..Default::default()
            },
        )
    })
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let open = open.clone();
            std::thread::spawn(move || {
                let s = open();
                for i in 0..10 {
                    let spec = EndpointSpec {
                        network: "a".into(),
                        netns: format!("ns{t}-{i}"),
                        ..Default::default()
                    };
                    transact(&*s, |st| {
                        ops::create_endpoint(
                            st,
                            &spec,
                            if t % 2 == 0 { "n1" } else { "n2" },
                            format!("{t}-{i}"),
                            crate::state::ipam::random_mac,
                        )
                    })
                    .unwrap();
                }
                // and networks: no VNI twice
                let spec = NetworkSpec {
                    name: format!("net{t}"),
                    ..Default::default()
                };
                transact(&*s, |st| ops::create_network(st, &spec)).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let snap = a.load().unwrap();
    let st = snap.state;
    let mut ips: Vec<_> = st.endpoints.values().flat_map(|e| e.ips.clone()).collect();
    assert_eq!(ips.len(), 40);
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 40, "an address was handed out twice");
    let mut vnis: Vec<_> = st.networks.values().map(|n| n.vni).collect();
    vnis.sort();
    vnis.dedup();
    assert_eq!(vnis.len(), st.networks.len(), "a VNI was handed out twice");
    // every commit moved the revision by exactly one
    assert_eq!(snap.revision, 1 + 40 + 4);
}

fn wait_change_sees_another_writer(open: Opener) {
    let a = open();
    let b = open();
    let rev = a.load().unwrap().revision;
    assert_eq!(a.wait_change(rev, Duration::from_millis(300)).unwrap(), rev);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        transact(&*b, |st| ops::upsert_node(st, node("n9", "192.0.2.9"))).unwrap();
    });
    let started = Instant::now();
    let new = a.wait_change(rev, Duration::from_secs(10)).unwrap();
    assert!(new > rev);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the change was not noticed before the timeout"
    );
    assert!(a.load().unwrap().state.nodes.contains_key("n9"));
    t.join().unwrap();
}

fn heartbeats_are_kept_per_node(open: Opener) {
    let a = open();
    let b = open();
    let before = crate::state::model::unix_now_ms();
    a.heartbeat("n1", before).unwrap();
    b.heartbeat("n2", before).unwrap();
    // a value is kept as written, however far from any clock (skewed nodes)
    b.heartbeat("n2", before - 5_000).unwrap();
    let beats = a.heartbeats().unwrap();
    assert_eq!(beats.len(), 2, "{beats:?}");
    assert_eq!(beats["n1"], before, "{beats:?}");
    assert_eq!(beats["n2"], before - 5_000, "{beats:?}");
    // heartbeats are not state changes
    assert_eq!(a.load().unwrap().revision, 0);
}

/// Writes one stored row behind the agents' backs (`None`: bytes that are not
/// UTF-8, where the store can hold them) and moves the revision, as a hand edit
/// of the store would.
type Raw = Box<dyn Fn(&str, &str, Option<&str>)>;

/// Rows that do not parse, or that the write path would refuse, are left out
/// of what every reader loads and listed with why; one stays out whichever
/// reader reads; writes go on, and a create under a left-out row's name
/// replaces it.
fn invalid_rows_are_left_out(open: Opener, raw: Raw) {
    let s = open();
    let (a, ep) = transact(&*s, |st| {
        ops::upsert_node(st, node("n1", "192.0.2.1"))?;
        let a = ops::create_network(
            st,
            &NetworkSpec {
                name: "a".into(),
                subnets: vec!["10.20.0.0/24".parse().unwrap()],
                ..Default::default()
            },
        )?;
        let ep = ops::create_endpoint(
            st,
            &EndpointSpec {
                network: "a".into(),
                netns: "c1".into(),
                ..Default::default()
            },
            "n1",
            "00000000000000e1".into(),
            crate::state::ipam::random_mac,
        )?;
        Ok((a, ep))
    })
    .unwrap();
    let valid = s.load().unwrap();
    assert!(valid.invalid.is_empty(), "{:?}", valid.invalid);
    // a second network with a's VNI, written later: it would merge the two
    let mut dup = a.clone();
    dup.name = "dup".into();
    dup.subnets = vec!["10.21.0.0/24".parse().unwrap()];
    dup.gateways = vec!["10.21.0.1".parse().unwrap()];
    dup.created = a.created + 1;
    raw(
        "network",
        "dup",
        Some(&serde_json::to_string(&dup).unwrap()),
    );
    raw("network", "garbage", Some("{not json"));
    let mut orphan = ep.clone();
    orphan.id = "00000000000000e2".into();
    orphan.network = "missing".into();
    raw(
        "endpoint",
        &orphan.id,
        Some(&serde_json::to_string(&orphan).unwrap()),
    );
    let mut bad_node = node("n0", "0.0.0.0");
    bad_node.tunnel_addr = Some("100.64.9.9".parse().unwrap());
    raw(
        "node",
        "n0",
        Some(&serde_json::to_string(&bad_node).unwrap()),
    );
    raw("network", "bytes", None);
    let want = [
        ("endpoint", "00000000000000e2"),
        ("network", "bytes"),
        ("network", "dup"),
        ("network", "garbage"),
        ("node", "n0"),
    ];
    let snap = s.load().unwrap();
    let got: Vec<(&str, &str)> = snap
        .invalid
        .iter()
        .map(|r| (r.kind.as_str(), r.key.as_str()))
        .collect();
    assert_eq!(got, want, "{:#?}", snap.invalid);
    let reason = |k: &str| &snap.invalid.iter().find(|r| r.key == k).unwrap().reason;
    assert!(
        reason("dup").contains("already network a's"),
        "{}",
        reason("dup")
    );
    assert!(
        reason("garbage").contains("does not parse"),
        "{}",
        reason("garbage")
    );
    assert!(reason("00000000000000e2").contains("network missing"));
    // the valid rows are all there, unchanged; another reader agrees
    assert_eq!(snap.state, valid.state);
    assert!(snap.revision > valid.revision);
    let other = open().load().unwrap();
    assert_eq!(other.invalid, snap.invalid);
    assert_eq!(other.state, snap.state);
    // writes go on (the bad rows neither block nor get dropped by them)
    let b = transact(&*s, |st| {
        ops::create_network(
            st,
            &NetworkSpec {
                name: "b".into(),
                ..Default::default()
            },
        )
    })
    .unwrap();
    assert_ne!(b.vni, a.vni);
    let snap = s.load().unwrap();
    assert!(snap.state.networks.contains_key("b"));
    assert_eq!(snap.invalid.len(), want.len());
    // creating "dup" through the write path replaces the bad row
    transact(&*s, |st| {
        ops::create_network(
            st,
            &NetworkSpec {
                name: "dup".into(),
                ..Default::default()
            },
        )
    })
    .unwrap();
    let snap = s.load().unwrap();
    assert_ne!(snap.state.networks["dup"].vni, a.vni);
    assert!(!snap.invalid.iter().any(|r| r.key == "dup"));
}

#[test]
fn sqlite_store_leaves_invalid_rows_out() {
    let (dir, o) = sqlite();
    let path = dir.path().join("s.db");
    o(); // makes the tables
    let raw: Raw = Box::new(move |kind, key, value| {
        let c = rusqlite::Connection::open(&path).unwrap();
        let sql = "INSERT OR REPLACE INTO objects (kind, key, value) VALUES (?1, ?2, ?3)";
        match value {
            Some(v) => c.execute(sql, rusqlite::params![kind, key, v]),
            None => c.execute(sql, rusqlite::params![kind, key, &[0xffu8, 0xfe, b'{'][..]]),
        }
        .unwrap();
        c.execute("UPDATE meta SET v = v + 1 WHERE k = 'revision'", [])
            .unwrap();
    });
    invalid_rows_are_left_out(o, raw);
}

#[test]
fn etcd_store_leaves_invalid_rows_out() {
    let (server, o) = etcd();
    let url = format!("http://127.0.0.1:{}", server.client_port);
    let raw: Raw = Box::new(move |kind, key, value| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([url.as_str()], None)
                .await
                .unwrap();
            let value: Vec<u8> = match value {
                Some(v) => v.as_bytes().to_vec(),
                None => vec![0xff, 0xfe, b'{'],
            };
            c.put(format!("/vxmesh/state/{kind}/{key}"), value, None)
                .await
                .unwrap();
            let rev = c.get("/vxmesh/state/revision", None).await.unwrap();
            let n: u64 = rev
                .kvs()
                .first()
                .map(|kv| kv.value_str().unwrap().parse().unwrap())
                .unwrap_or(0);
            c.put("/vxmesh/state/revision", (n + 1).to_string(), None)
                .await
                .unwrap();
        });
    });
    invalid_rows_are_left_out(o, raw);
}

fn sqlite() -> (tempfile::TempDir, Opener) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    (dir, Arc::new(move || open(&url).unwrap()))
}

/// A single-member etcd on loopback ports of its own, removed on drop.
struct EtcdServer {
    child: Child,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdServer {
    fn start() -> EtcdServer {
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let child = Self::spawn(dir.path(), client_port, peer_port);
        let s = EtcdServer {
            child,
            client_port,
            peer_port,
            dir,
        };
        s.wait_ready();
        s
    }

    fn spawn(dir: &std::path::Path, client_port: u16, peer_port: u16) -> Child {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start etcd: install Debian's etcd-server (scripts/install-deps.sh)")
    }

    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    fn wait_ready(&self) {
        let s = open(&self.url()).unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while s.load().is_err() {
            assert!(Instant::now() < end, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), self.client_port, self.peer_port);
        self.wait_ready();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn etcd() -> (EtcdServer, Opener) {
    let server = EtcdServer::start();
    let url = server.url();
    (server, Arc::new(move || open(&url).unwrap()))
}

macro_rules! for_every_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[test] fn $name() { let (_d, o) = super::sqlite(); super::$name(o) })*
        }
        mod etcd_store {
            $(#[test] fn $name() { let (_s, o) = super::etcd(); super::$name(o) })*
        }
    };
}

for_every_store!(
    commits_all_or_nothing_and_bumps_revision,
    concurrent_writers_never_hand_out_one_address_twice,
    wait_change_sees_another_writer,
    heartbeats_are_kept_per_node,
);

#[test]
fn unreachable_and_bad_urls_are_clear_errors() {
    let e = open("sqlite:/proc/vxmesh/nope.db").err().unwrap();
    assert!(e.to_string().contains("unreachable"), "{e}");
    for bad in [
        "mysql://x",
        "etcd://",
        "etcd://host",
        "etcd://host:0",
        "etcd://h:1,",
    ] {
        let e = open(bad).err().unwrap();
        assert!(e.to_string().contains("etcd://HOST:PORT"), "{bad}: {e}");
    }
    // nothing listens there: every call says unreachable, promptly
    let s = open(&format!("etcd://127.0.0.1:{}", free_port())).unwrap();
    let started = Instant::now();
    let e = s.load().err().unwrap();
    assert!(e.to_string().contains("is unreachable"), "{e}");
    let e = transact(&*s, |st| ops::upsert_node(st, node("n1", "192.0.2.1")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("is unreachable"), "{e}");
    assert!(s.wait_change(0, Duration::from_millis(500)).is_err());
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// The watch survives etcd going away: while it is down, waiting says so; after
/// it returns, a change made through another client is seen.
#[test]
fn etcd_watch_resumes_after_an_outage() {
    let (mut server, open) = etcd();
    let a = open();
    transact(&*a, |st| ops::upsert_node(st, node("n1", "192.0.2.1"))).unwrap();
    assert_eq!(a.wait_change(0, Duration::from_secs(5)).unwrap(), 1);
    server.stop();
    let end = Instant::now() + Duration::from_secs(10);
    while a.wait_change(1, Duration::from_millis(200)).is_ok() {
        assert!(Instant::now() < end, "an outage went unnoticed");
    }
    assert!(a.load().is_err());
    server.restart();
    let b = open();
    transact(&*b, |st| ops::upsert_node(st, node("n2", "192.0.2.2"))).unwrap();
    let rev = a.wait_change(1, Duration::from_secs(10)).unwrap();
    assert_eq!(rev, 2);
    assert!(a.load().unwrap().state.nodes.contains_key("n2"));
    // a lease lost with the outage is replaced on the next beat
    a.heartbeat("n1", 1).unwrap();
    assert!(b.heartbeats().unwrap().contains_key("n1"));
}

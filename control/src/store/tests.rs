//! One suite for every store: each property is a function over a way to open the
//! store (twice, as two agents would), run against SQLite and against a real etcd
//! (Debian's `etcd-server`, started here on loopback), plaintext and with TLS and
//! client-certificate authentication (certificates made here with rcgen).

use super::*;
use crate::state::{ops, EndpointSpec, NetworkSpec, Node};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
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

/// A pool that runs out refuses the change that needed it, names the pool, and
/// leaves the store as it was (revision included): no service without its VIP,
/// no endpoint without its address, no service with half its ports.
fn exhausted_pools_refuse_whole_changes(open: Opener) {
    use crate::state::services::{self, ServiceSpec};
    let s = open();
    transact(&*s, |st| {
        ops::upsert_node(st, node("n1", "192.0.2.1"))?;
        ops::create_network(
            st,
            &NetworkSpec {
                name: "small".into(),
                subnets: vec!["10.9.0.0/29".parse().unwrap()],
                ..Default::default()
            },
        )
    })
    .unwrap();
    let svc = |name: &str, publish: &[String]| ServiceSpec {
        name: name.into(),
        networks: vec!["small".into()],
        publish: publish.to_vec(),
        ..Default::default()
    };
    // a /29 has five addresses for VIPs and endpoints (.2-.6)
    for i in 0..5 {
        transact(&*s, |st| {
            services::create_service(st, &svc(&format!("s{i}"), &[]))
        })
        .unwrap();
    }
    let before = s.load().unwrap();
    let e = transact(&*s, |st| services::create_service(st, &svc("s5", &[]))).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("pool exhausted") && msg.contains("10.9.0.0/29") && msg.contains("--subnet"),
        "{msg}"
    );
    let spec = EndpointSpec {
        network: "small".into(),
        netns: "c".into(),
        ..Default::default()
    };
    let e = transact(&*s, |st| {
        ops::create_endpoint(st, &spec, "n1", "e1".into(), crate::state::ipam::random_mac)
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("network small's addresses 10.9.0.0/29"),
        "{e}"
    );
    let after = s.load().unwrap();
    assert_eq!(
        after.revision, before.revision,
        "a refused change commits nothing"
    );
    assert_eq!(after.state, before.state);

    // the published-port pool: every port of 30000-32767 taken, then one more
    let pool = services::AUTO_PORTS.len();
    let all: Vec<String> = (0..pool).map(|i| format!(":{}", 1 + i)).collect();
    transact(&*s, |st| {
        services::remove_service(st, "s0")?;
        services::create_service(st, &svc("wide", &all))
    })
    .unwrap();
    let before = s.load().unwrap();
    let two = [":80/udp".to_string(), ":81".to_string()];
    let e = transact(&*s, |st| {
        services::remove_service(st, "s1")?;
        services::create_service(st, &svc("late", &two))
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("published-port pool 30000-32767 (tcp)"),
        "{e}"
    );
    let e = transact(&*s, |st| {
        services::update_ports(st, "s2", &[":82".into()], &[])
    })
    .unwrap_err();
    assert!(e.to_string().contains("--publish-rm"), "{e}");
    let after = s.load().unwrap();
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.state, before.state, "s1 stays; no udp port was taken");
    // udp has a pool of its own
    transact(&*s, |st| {
        services::update_ports(st, "s2", &[":82/udp".into()], &[])
    })
    .unwrap();
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

/// A CA of the test's own, which signs etcd's and the clients' certificates.
struct Ca {
    /// The CA certificate, PEM.
    cert: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        Ca {
            cert: path,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `cn` naming `sans` (addresses or names), for a server
    /// and a client both (as etcd's own guide makes them); its and its key's
    /// paths.
    fn issue(&self, dir: &Path, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{cn}.pem")),
            dir.join(format!("{cn}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// What a TLS etcd was started with, and a client certificate its CA signed.
struct Tls {
    /// The CA certificate, PEM.
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl Tls {
    /// The settings of an agent holding a certificate etcd trusts.
    fn client_options(&self) -> StoreOptions {
        StoreOptions {
            ca: Some(self.ca.clone()),
            cert: Some(self.client.0.clone()),
            key: Some(self.client.1.clone()),
            ..Default::default()
        }
    }
}

/// A single-member etcd on loopback ports of its own, removed on drop.
struct EtcdServer {
    child: Child,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// Set: etcd serves clients over TLS only, to certificates its CA signed.
    tls: Option<Tls>,
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
        Self::start_with(tempfile::tempdir().unwrap(), None)
    }

    /// An etcd that speaks TLS only and requires a client certificate its CA
    /// signed (`--client-cert-auth`), as docs/operations.md sets one up.
    fn start_tls() -> EtcdServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "etcd");
        let tls = Tls {
            server: ca.issue(dir.path(), "etcd-server", &["127.0.0.1", "localhost"]),
            client: ca.issue(dir.path(), "node-a", &[]),
            ca: ca.cert,
        };
        Self::start_with(dir, Some(tls))
    }

    fn start_with(dir: tempfile::TempDir, tls: Option<Tls>) -> EtcdServer {
        let (client_port, peer_port) = (free_port(), free_port());
        let child = Self::spawn(dir.path(), client_port, peer_port, tls.as_ref());
        let s = EtcdServer {
            child,
            client_port,
            peer_port,
            dir,
            tls,
        };
        s.wait_ready();
        s
    }

    fn spawn(dir: &Path, client_port: u16, peer_port: u16, tls: Option<&Tls>) -> Child {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")]);
        if let Some(t) = tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--cert-file")
                .arg(&t.server.0)
                .arg("--key-file")
                .arg(&t.server.1);
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start etcd: install Debian's etcd-server (scripts/install-deps.sh)")
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The settings of a client etcd accepts.
    fn options(&self) -> StoreOptions {
        self.tls
            .as_ref()
            .map(Tls::client_options)
            .unwrap_or_default()
    }

    fn wait_ready(&self) {
        self.wait_ready_with(&self.options());
    }

    /// Waits until a client with `opts` reads it (a client with a user logs in
    /// when opened, so that too is retried).
    fn wait_ready_with(&self, opts: &StoreOptions) {
        let end = Instant::now() + Duration::from_secs(20);
        while open_with(&self.url(), opts).and_then(|s| s.load()).is_err() {
            assert!(Instant::now() < end, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        let opts = self.options();
        self.restart_with(&opts);
    }

    /// Restarts it and waits until a client with `opts` reads it.
    fn restart_with(&mut self, opts: &StoreOptions) {
        self.child = Self::spawn(
            self.dir.path(),
            self.client_port,
            self.peer_port,
            self.tls.as_ref(),
        );
        self.wait_ready_with(opts);
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn opener(server: &EtcdServer) -> Opener {
    let (url, opts) = (server.url(), server.options());
    Arc::new(move || open_with(&url, &opts).unwrap())
}

fn etcd() -> (EtcdServer, Opener) {
    let server = EtcdServer::start();
    let o = opener(&server);
    (server, o)
}

fn etcd_tls() -> (EtcdServer, Opener) {
    let server = EtcdServer::start_tls();
    let o = opener(&server);
    (server, o)
}

macro_rules! for_every_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[test] fn $name() { let (_d, o) = super::sqlite(); super::$name(o) })*
        }
        mod etcd_store {
            $(#[test] fn $name() { let (_s, o) = super::etcd(); super::$name(o) })*
        }
        mod etcd_tls_store {
            $(#[test] fn $name() { let (_s, o) = super::etcd_tls(); super::$name(o) })*
        }
    };
}

for_every_store!(
    commits_all_or_nothing_and_bumps_revision,
    concurrent_writers_never_hand_out_one_address_twice,
    exhausted_pools_refuse_whole_changes,
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

/// Attacks on a TLS etcd from the network: a client with no certificate, one with
/// a certificate from another CA, and a plaintext one are refused and write
/// nothing; an agent does not talk to an etcd whose certificate its CA did not
/// sign (a man in the middle), even holding a good client certificate.
#[test]
fn tls_etcd_refuses_clients_without_a_certificate_it_trusts() {
    let server = EtcdServer::start_tls();
    let tls = server.tls.as_ref().unwrap();
    // the trusted agent gets through, so a refusal below is the certificate's doing
    let good = open_with(&server.url(), &server.options()).unwrap();
    transact(&*good, |st| ops::upsert_node(st, node("n1", "192.0.2.1"))).unwrap();
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = Ca::new(rogue_dir.path(), "rogue");
    let intruder = rogue.issue(rogue_dir.path(), "intruder", &[]);
    // what each attempt's error must point at
    let attempts = [
        (
            "no client certificate",
            "--store-cert",
            StoreOptions {
                ca: Some(tls.ca.clone()),
                ..Default::default()
            },
        ),
        (
            "a client certificate from another CA",
            "--store-cert",
            StoreOptions {
                ca: Some(tls.ca.clone()),
                cert: Some(intruder.0.clone()),
                key: Some(intruder.1.clone()),
                ..Default::default()
            },
        ),
        (
            "an etcd certificate this agent's CA did not sign",
            "--store-ca",
            StoreOptions {
                ca: Some(rogue.cert.clone()),
                ..tls.client_options()
            },
        ),
    ];
    for (what, hint, opts) in attempts {
        let s = open_with(&server.url(), &opts).unwrap();
        let e = s
            .load()
            .err()
            .unwrap_or_else(|| panic!("{what}: etcd was read"));
        let msg = e.to_string();
        assert!(
            msg.contains("is unreachable") && msg.contains("TLS failed") && msg.contains(hint),
            "{what}: {msg}"
        );
        eprintln!("{what}: {msg}");
        let r = transact(&*s, |st| ops::upsert_node(st, node("evil", "192.0.2.66")));
        assert!(r.is_err(), "{what}: a write went through");
        assert!(
            s.heartbeat("evil", 1).is_err(),
            "{what}: a heartbeat went through"
        );
    }
    // plaintext to the TLS port gets nothing either
    let plain = open(&format!("etcd://127.0.0.1:{}", server.client_port)).unwrap();
    assert!(plain.load().is_err());
    let snap = good.load().unwrap();
    assert_eq!(snap.revision, 1);
    assert!(!snap.state.nodes.contains_key("evil"));
    assert!(!good.heartbeats().unwrap().contains_key("evil"));
}

/// The watch over TLS survives an outage as the plaintext one does.
#[test]
fn tls_etcd_watch_resumes_after_an_outage() {
    let (mut server, open) = etcd_tls();
    let a = open();
    transact(&*a, |st| ops::upsert_node(st, node("n1", "192.0.2.1"))).unwrap();
    server.stop();
    let end = Instant::now() + Duration::from_secs(10);
    while a.wait_change(1, Duration::from_millis(200)).is_ok() {
        assert!(Instant::now() < end, "an outage went unnoticed");
    }
    server.restart();
    let b = open();
    transact(&*b, |st| ops::upsert_node(st, node("n2", "192.0.2.2"))).unwrap();
    assert_eq!(a.wait_change(1, Duration::from_secs(10)).unwrap(), 2);
}

#[test]
fn plaintext_etcd_beyond_loopback_is_refused_unless_insecure() {
    for url in [
        "etcd://192.0.2.1:2379",
        "etcd://127.0.0.1:2379,192.0.2.2:2379",
        "etcd://etcd.example:2379",
        "etcd://[2001:db8::1]:2379",
    ] {
        let e = open(url).err().unwrap();
        assert!(matches!(e, StoreError::Insecure(_)), "{url}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("etcds://") && msg.contains("--store-insecure"),
            "{url}: {msg}"
        );
        // the operator's word that the network is trusted
        let insecure = StoreOptions {
            insecure: true,
            ..Default::default()
        };
        open_with(url, &insecure).unwrap();
    }
    for url in [
        "etcd://127.0.0.1:2379",
        "etcd://127.0.0.2:2379,localhost:2379",
        "etcd://[::1]:2379",
        "etcd://[::ffff:127.0.0.1]:2379",
    ] {
        open(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

/// Settings that do not fit the URL, or files that are not there, are clear
/// errors at start rather than TLS failures later.
#[test]
fn store_settings_that_do_not_fit_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "t");
    let (cert, key) = ca.issue(dir.path(), "n", &[]);
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let with = |f: &dyn Fn(&mut StoreOptions)| {
        let mut o = StoreOptions {
            ca: Some(ca.cert.clone()),
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            ..Default::default()
        };
        f(&mut o);
        o
    };
    let tls = "etcds://192.0.2.1:2379";
    open_with(tls, &with(&|_| {})).unwrap();
    let cases: Vec<(&str, StoreOptions, &str)> = vec![
        (tls, with(&|o| o.ca = None), "needs --store-ca"),
        (tls, with(&|o| o.key = None), "go together"),
        (
            tls,
            with(&|o| o.ca = Some(dir.path().join("missing.pem"))),
            "cannot read --store-ca",
        ),
        (tls, with(&|o| o.cert = Some(junk.clone())), "is not PEM"),
        (
            tls,
            with(&|o| o.user = Some("vxmesh".into())),
            "needs a password",
        ),
        (
            "etcd://127.0.0.1:2379",
            with(&|_| {}),
            "write the store as etcds://",
        ),
        ("sqlite:/tmp/x.db", with(&|_| {}), "SQLite is a local file"),
    ];
    for (url, opts, want) in cases {
        let e = open_with(url, &opts).err().unwrap();
        assert!(
            matches!(e, StoreError::Config { .. }) && e.to_string().contains(want),
            "{url} {opts:?}: {e}"
        );
    }
    // the password never shows
    let o = with(&|o| o.password = Some("hunter2".into()));
    assert!(!format!("{o:?}").contains("hunter2"));
}

/// etcd with `auth enable`: the agent logs in with --store-user and its
/// password; a wrong password or none is refused, clearly, and writes nothing.
#[test]
fn etcd_users_log_in_and_others_are_refused() {
    let mut server = EtcdServer::start();
    let url = server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use etcd_client::Permission;
        let endpoint = format!("http://127.0.0.1:{}", server.client_port);
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        c.user_add("root", "root-pw", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("vxmesh").await.unwrap();
        c.role_grant_permission("vxmesh", Permission::read_write("/vxmesh/").with_prefix())
            .await
            .unwrap();
        c.user_add("agent", "s3cret", None).await.unwrap();
        c.user_grant_role("agent", "vxmesh").await.unwrap();
        c.auth_enable().await.unwrap();
    });
    let user = |password: &str| StoreOptions {
        user: Some("agent".into()),
        password: Some(password.into()),
        ..Default::default()
    };
    let a = open_with(&url, &user("s3cret")).unwrap();
    let b = open_with(&url, &user("s3cret")).unwrap();
    transact(&*a, |st| ops::upsert_node(st, node("n1", "192.0.2.1"))).unwrap();
    assert_eq!(b.wait_change(0, Duration::from_secs(5)).unwrap(), 1);
    a.heartbeat("n1", 1).unwrap();
    assert!(b.heartbeats().unwrap().contains_key("n1"));
    let e = open_with(&url, &user("guess")).err().unwrap();
    assert!(
        matches!(e, StoreError::Denied { .. }) && e.to_string().contains("--store-user"),
        "{e}"
    );
    eprintln!("wrong password: {e}");
    let anonymous = open(&url).unwrap();
    let e = anonymous.load().err().unwrap();
    assert!(
        matches!(e, StoreError::Denied { .. }) && e.to_string().contains("--store-user"),
        "{e}"
    );
    eprintln!("no user: {e}");
    assert!(transact(&*anonymous, |st| ops::upsert_node(
        st,
        node("evil", "192.0.2.66")
    ))
    .is_err());
    assert!(!a.load().unwrap().state.nodes.contains_key("evil"));
    // a restarted etcd forgets its tokens: the agents log in again by themselves
    server.stop();
    server.restart_with(&user("s3cret"));
    transact(&*b, |st| ops::upsert_node(st, node("n2", "192.0.2.2"))).unwrap();
    assert_eq!(a.wait_change(1, Duration::from_secs(10)).unwrap(), 2);
    // the beat on the lease stream the outage broke fails; the next one takes a new lease
    let _ = a.heartbeat("n1", 2);
    a.heartbeat("n1", 1).unwrap();
}

/// The operations guide's openssl recipe (its `run: admin` block, with etcd on
/// loopback instead of 192.168.77.1) makes certificates that etcd and the agent
/// accept: the docs test only runs it and `openssl verify`, against its own etcd.
#[test]
fn the_operations_guides_openssl_certificates_work() {
    let guide = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let guide = std::fs::read_to_string(guide).unwrap();
    let section = &guide[guide.find("## Securing the etcd store").unwrap()..];
    let block = section
        .split_once("<!-- run: admin -->\n```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(body, _)| body)
        .expect("the guide makes its certificates in a `run: admin` sh block");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .args(["-e", "-c", &block.replace("192.168.77.1", "127.0.0.1")])
        .current_dir(dir.path())
        .output()
        .expect("cannot run sh");
    assert!(
        out.status.success(),
        "the recipe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = |name: &str| dir.path().join(name);
    let tls = Tls {
        ca: p("ca.pem"),
        server: (p("etcd1.pem"), p("etcd1-key.pem")),
        client: (p("node1.pem"), p("node1-key.pem")),
    };
    let server = EtcdServer::start_with(dir, Some(tls));
    let o = opener(&server);
    let s = o();
    transact(&*s, |st| ops::upsert_node(st, node("node1", "192.0.2.1"))).unwrap();
    assert!(o().load().unwrap().state.nodes.contains_key("node1"));
}

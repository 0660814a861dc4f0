//! The topology's store when it is etcd: a host of its own on the underlay, a
//! single-member etcd there (plaintext, or TLS with client certificates from a
//! CA the topology makes), and the `--store` flags each agent gets.

use std::fs::{self, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::agents::terminate;
use super::{tail, Node, Topology, START_FAILURE_LOG_LINES};
use crate::command;
use crate::netns;

/// Which store a topology's agents share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// One SQLite file in the test directory (the embedded default).
    Sqlite,
    /// A single-member etcd (Debian's `etcd-server`) on a host of its own on the
    /// underlay, so a test can stop and restart it like a real outage. Plaintext,
    /// so agents get `--store-insecure` (unless a test passes it itself).
    Etcd,
    /// The same etcd speaking TLS only and requiring client certificates
    /// (`--client-cert-auth`), from a CA the topology makes; each agent gets
    /// `--store-ca` and a certificate of its own (unless a test passes
    /// `--store-ca` itself).
    EtcdTls,
}

/// The etcd a topology started: its host on the underlay and, while it runs,
/// its process.
pub(super) struct Etcd {
    host: Node,
    child: Option<Child>,
    tls: Option<EtcdPki>,
}

/// The certificates of a TLS etcd ([`StoreKind::EtcdTls`]), in the test directory.
struct EtcdPki {
    ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    server: (PathBuf, PathBuf),
}

/// etcd's plaintext metrics and health listener on its host's loopback: how the
/// harness sees a TLS etcd is up without a client certificate of its own.
const ETCD_HEALTH_PORT: u16 = 2381;

impl EtcdPki {
    fn new(dir: &Path, server_addr: Ipv4Addr) -> Result<EtcdPki> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vxmesh test etcd CA");
        let ca = dir.join("ca.pem");
        fs::write(&ca, params.self_signed(&key)?.pem())?;
        let mut pki = EtcdPki {
            ca,
            issuer: rcgen::Issuer::new(params, key),
            server: (PathBuf::new(), PathBuf::new()),
        };
        pki.server = pki.issue(dir, "etcd", &[server_addr.to_string()])?;
        Ok(pki)
    }

    /// A certificate for `cn` (and `sans`), good for a server and a client both;
    /// its path and its key's.
    fn issue(&self, dir: &Path, cn: &str, sans: &[String]) -> Result<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(sans.to_vec())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            dir.join(format!("{cn}.pem")),
            dir.join(format!("{cn}-key.pem")),
        );
        fs::write(&c, cert.pem())?;
        fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}

const ETCD_PORT: u16 = 2379;
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Topology {
    /// A topology whose agents share `store`; for etcd, the etcd host is made and
    /// etcd started (and ready) before this returns.
    pub fn with_store(test_name: &str, store: StoreKind) -> Result<Topology> {
        let mut topo = Self::bare(test_name)?;
        if store != StoreKind::Sqlite {
            let host = topo.attach_to_underlay("etcd")?;
            let tls = match store {
                StoreKind::EtcdTls => Some(EtcdPki::new(&topo.dir.join("pki"), host.addr)?),
                _ => None,
            };
            topo.etcd = Some(Etcd {
                host,
                child: None,
                tls,
            });
            topo.start_etcd()?;
        }
        Ok(topo)
    }

    /// What the agents are given as `--store`.
    pub fn store_url(&self) -> String {
        match &self.etcd {
            Some(e) if e.tls.is_some() => format!("etcds://{}:{ETCD_PORT}", e.host.addr),
            Some(e) => format!("etcd://{}:{ETCD_PORT}", e.host.addr),
            None => format!("sqlite:{}", self.dir.join("store.db").display()),
        }
    }

    /// The CA that signed a TLS etcd's certificate and the agents' ([`StoreKind::EtcdTls`]).
    pub fn etcd_ca(&self) -> Option<PathBuf> {
        self.etcd
            .as_ref()
            .and_then(|e| e.tls.as_ref())
            .map(|t| t.ca.clone())
    }

    /// The `--store-*` flags an agent on `node` gets unless `extra_args` has its
    /// own: `--store-insecure` for plaintext etcd (the underlay is the test's
    /// own), the CA and a certificate of the node's own for TLS etcd.
    pub(super) fn store_flags(&self, node: &Node, extra_args: &[&str]) -> Result<Vec<String>> {
        let Some(etcd) = &self.etcd else {
            return Ok(Vec::new());
        };
        let given = |f: &str| extra_args.contains(&f);
        match &etcd.tls {
            None if given("--store-insecure") => Ok(Vec::new()),
            None => Ok(vec!["--store-insecure".into()]),
            Some(_) if given("--store-ca") => Ok(Vec::new()),
            Some(pki) => {
                let (cert, key) = pki.issue(&self.dir.join("pki"), &node.name, &[])?;
                Ok(vec![
                    "--store-ca".into(),
                    pki.ca.display().to_string(),
                    "--store-cert".into(),
                    cert.display().to_string(),
                    "--store-key".into(),
                    key.display().to_string(),
                ])
            }
        }
    }

    /// The etcd host's underlay address (a test cuts a node off from it with a route).
    pub fn etcd_addr(&self) -> Option<Ipv4Addr> {
        self.etcd.as_ref().map(|e| e.host.addr)
    }

    pub fn store_kind(&self) -> StoreKind {
        match &self.etcd {
            Some(e) if e.tls.is_some() => StoreKind::EtcdTls,
            Some(_) => StoreKind::Etcd,
            None => StoreKind::Sqlite,
        }
    }

    /// Starts (or restarts, on the same data) the topology's etcd and waits until
    /// it answers its health endpoint.
    pub fn start_etcd(&mut self) -> Result<()> {
        let dir = self.dir.join("etcd");
        let log_path = self.dir.join("etcd.log");
        let etcd = self
            .etcd
            .as_mut()
            .context("this topology has no etcd (use Topology::with_store)")?;
        ensure!(etcd.child.is_none(), "etcd is already running");
        let scheme = if etcd.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:{ETCD_PORT}", etcd.host.addr);
        // The peer port only ever talks to itself: keep it on the host's loopback.
        let peer = "http://127.0.0.1:2380";
        let health = format!("http://127.0.0.1:{ETCD_HEALTH_PORT}");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &etcd.host.ns, "etcd"])
            .args(["--name", "vxmesh-test", "--data-dir"])
            .arg(&dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("vxmesh-test={peer}")])
            .args(["--listen-metrics-urls", &health]);
        if let Some(pki) = &etcd.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--cert-file")
                .arg(&pki.server.0)
                .arg("--key-file")
                .arg(&pki.server.1);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let desc = command::describe(&cmd);
        let child = cmd.spawn().with_context(|| {
            format!("failed to spawn `{desc}` (is Debian's etcd-server installed?)")
        })?;
        etcd.child = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ETCD_HEALTH_PORT));
        let ns = etcd.host.ns.clone();
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            let healthy = netns::in_netns(&ns, move || etcd_healthy(addr)).unwrap_or(false);
            if healthy {
                return Ok(());
            }
            if let Some(Some(status)) = self
                .etcd
                .as_mut()
                .and_then(|e| e.child.as_mut())
                .map(|c| c.try_wait().ok().flatten())
            {
                self.etcd.as_mut().map(|e| e.child.take());
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "etcd exited ({status}) before answering\ncommand: {desc}\n{}",
                    tail(&log, START_FAILURE_LOG_LINES, "etcd.log")
                );
            }
            if Instant::now() >= deadline {
                let _ = self.stop_etcd();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "etcd not healthy after {ETCD_READY_TIMEOUT:?}\ncommand: {desc}\n{}",
                    tail(&log, START_FAILURE_LOG_LINES, "etcd.log")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the topology's etcd (SIGTERM, then SIGKILL); its data stays for
    /// [`Topology::start_etcd`].
    pub fn stop_etcd(&mut self) -> Result<()> {
        let etcd = self
            .etcd
            .as_mut()
            .context("this topology has no etcd (use Topology::with_store)")?;
        match etcd.child.take() {
            Some(mut c) => terminate(std::slice::from_mut(&mut c)),
            None => Ok(()),
        }
    }
}

/// etcd's `/health` says `"health":"true"` once it has a leader and serves.
fn etcd_healthy(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if c.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

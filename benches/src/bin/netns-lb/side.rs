//! What a side of the comparison is, and the servers (nginx tasks, the bulk
//! task's iperf3) both sides run on their tasks.

use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use vxmesh_benches::Bg;
use vxmesh_netns_tests::kill_all_in;

/// Container MTU of both overlays (VXLAN's 50 bytes under the underlay's 1500).
pub const MTU: u32 = 1450;
/// nginx tasks behind each side's VIP and published port.
pub const TASKS: usize = 3;
pub const PUBLISHED: u16 = 8080;

/// Servers started in namespaces, and the namespaces to sweep for anything they
/// left (nginx's workers, a wrk cut short). Declared after the `Topology`, so it
/// is dropped first, while the namespaces still exist.
pub struct Procs {
    pub servers: Vec<Bg>,
    pub sweep: Vec<String>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        // SIGTERM each (nginx's master then stops its worker), reaped
        self.servers.clear();
        for ns in &self.sweep {
            match kill_all_in(ns) {
                Ok(0) => {}
                Ok(n) => eprintln!("netns-lb: killed {n} leftover process(es) in {ns}"),
                Err(e) => eprintln!("netns-lb: sweeping {ns}: {e:#}"),
            }
        }
    }
}

/// One side of the comparison: where its client, tasks and addresses are.
pub struct Side {
    pub key: &'static str,
    pub label: &'static str,
    /// The client container, on node 1.
    pub client: String,
    /// The outside host that uses the published port.
    pub outside: String,
    pub vip: SocketAddr,
    pub published: SocketAddr,
    /// The bulk task: behind a VIP of its own, and by its own address.
    pub bulk_vip: Ipv4Addr,
    pub bulk_ip: Ipv4Addr,
    /// Node 1's namespace, where the kernel keeps the published port's conntrack.
    pub node1: String,
}

/// An nginx for one task: one worker, no access log, `return 200 "NAME\n"` on
/// port 80 (every address); its files in `dir`.
pub fn nginx(procs: &mut Procs, ns: &str, dir: &Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let d = dir.display();
    // temp paths of the modules this nginx has, so it never writes under /var/lib
    let built = std::process::Command::new("nginx")
        .arg("-V")
        .output()
        .context("nginx not found (apt-get install nginx-light, or scripts/bench-lb.sh)")?;
    let flags = String::from_utf8_lossy(&built.stderr).into_owned();
    let mut temps = format!("    client_body_temp_path {d}/body;\n");
    for m in ["proxy", "fastcgi", "uwsgi", "scgi"] {
        if !flags.contains(&format!("--without-http_{m}_module")) {
            temps += &format!("    {m}_temp_path {d}/{m};\n");
        }
    }
    let conf = format!(
        "worker_processes 1;\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n\
         {temps}\
         \x20   access_log off;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   server {{\n\
         \x20       listen 80 backlog=4096;\n\
         \x20       location / {{\n\
         \x20           return 200 \"{name}\\n\";\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let prefix = format!("{d}/");
    let conf_s = conf_path.display().to_string();
    let err_s = format!("{d}/error.log");
    let mut bg = Bg::spawn(
        ns,
        &["nginx", "-p", &prefix, "-c", &conf_s, "-e", &err_s],
        Some(&dir.join("stderr.log")),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    bg.check_running().with_context(|| {
        format!(
            "nginx in {ns}: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        )
    })?;
    procs.servers.push(bg);
    Ok(())
}

pub fn iperf3_server(procs: &mut Procs, ns: &str) -> Result<()> {
    let mut bg = Bg::spawn(ns, &["iperf3", "-s"], None)?;
    std::thread::sleep(Duration::from_millis(200));
    bg.check_running()
        .context("iperf3 -s (apt-get install iperf3)")?;
    procs.servers.push(bg);
    Ok(())
}

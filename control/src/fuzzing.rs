//! Entry points of the control plane's fuzz targets (`fuzz/`), written once
//! here so that the targets and the corpus replay test
//! (`tests/fuzz_corpus.rs`) run the same code. Not part of the crate's API.

#![forbid(unsafe_code)]

use crate::agent::switch_state::{self, Mtus};
use crate::state::{ops, services, ClusterState, NetworkSpec, Node};
use serde_json::Value;
use std::sync::OnceLock;

/// The agent's own node in [`api_requests`].
pub const NODE: &str = "node1";

/// A cluster as the API would find it: two nodes, the ingress network, a plain
/// and an encrypted network, a service with a published port and a task, a
/// policy.
pub fn cluster() -> ClusterState {
    let mut st = ClusterState::default();
    let ok = |r: Result<Value, String>| r.expect("the fuzz targets' cluster");
    for (name, addr) in [(NODE, "192.0.2.1"), ("node2", "192.0.2.2")] {
        let mut n = Node::new(name, addr.parse().expect("address"));
        n.public_key = Some(ops::encode_key(&[name.len() as u8; 32]));
        ops::upsert_node(&mut st, n).expect("node");
    }
    crate::state::ingress::ensure_network(&mut st).expect("ingress");
    for (name, subnet, encrypted) in [
        ("red", "10.31.0.0/24", false),
        ("secret", "10.32.0.0/24", true),
    ] {
        let spec = NetworkSpec {
            name: name.into(),
            subnets: vec![subnet.parse().expect("subnet")],
            encrypted,
            ..Default::default()
        };
        ops::create_network(&mut st, &spec).expect("network");
    }
    let svc = services::ServiceSpec {
        name: "api".into(),
        networks: vec!["red".into()],
        publish: vec!["8080:80".into()],
        ..Default::default()
    };
    services::create_service(&mut st, &svc).expect("service");
    let apply = |st: &mut ClusterState, m, p: &[&str], b: &str| {
        ok(crate::api::server::apply(st, NODE, m, p, b.as_bytes()))
    };
    apply(
        &mut st,
        "POST",
        &["endpoints"],
        r#"{"network":"red","netns":"task1","service":"api"}"#,
    );
    apply(
        &mut st,
        "POST",
        &["policies"],
        r#"{"node":"node1","port":"8080/tcp","action":"drop","from":"10.0.0.0/8"}"#,
    );
    st
}

/// The routes [`api_requests`] picks from, by a line's first byte (`'0'` is the
/// first): method, path after `/v1/`, and whether the rest of the line is the
/// `{name}` (else it is the JSON body).
pub const ROUTES: [(&str, &[&str], bool); 16] = [
    ("POST", &["networks"], false),
    ("POST", &["endpoints"], false),
    ("POST", &["nodes"], false),
    ("POST", &["services"], false),
    ("POST", &["services", "api", "update"], false),
    ("POST", &["nodes", "node2", "update"], false),
    ("POST", &["policies"], false),
    ("POST", &["trace"], false),
    ("DELETE", &["networks"], true),
    ("DELETE", &["endpoints"], true),
    ("DELETE", &["services"], true),
    ("DELETE", &["policies"], true),
    ("DELETE", &["nodes"], true),
    ("POST", &["nodes", "", "rotate-key"], true),
    ("POST", &["nodes", NODE, "update"], false),
    ("POST", &["services", "", "update"], true),
];

fn base() -> &'static ClusterState {
    static S: OnceLock<ClusterState> = OnceLock::new();
    S.get_or_init(cluster)
}

/// Target `api_json`: requests to the API, one a line (a route byte, then the
/// body or name), applied in turn to [`cluster`] as the server applies them.
/// After each: what succeeded serialized, the state survives the stores' JSON
/// round trip unchanged, and this node's dataplane state builds from it.
pub fn api_requests(data: &[u8]) {
    let mut st = base().clone();
    for line in data.split(|b| *b == b'\n').take(16) {
        let Some((&r, rest)) = line.split_first() else {
            continue;
        };
        let (method, path, named) = ROUTES[usize::from(r.wrapping_sub(b'0')) % ROUTES.len()];
        let name = String::from_utf8_lossy(rest);
        let mut p: Vec<&str> = path.to_vec();
        if named {
            match p.iter_mut().find(|s| s.is_empty()) {
                Some(s) => *s = &name,
                None => p.push(&name),
            }
        }
        let body: &[u8] = if named { b"{}" } else { rest };
        if crate::api::server::apply(&mut st, NODE, method, &p, body).is_err() {
            continue;
        }
        let json = serde_json::to_string(&st).expect("the state serializes");
        let back: ClusterState = serde_json::from_str(&json).expect("the state deserializes");
        assert_eq!(back, st, "the state changed through JSON");
        let local = rustc_hash::FxHashMap::default();
        let mtus = Mtus {
            plain: 1450,
            encrypted: 1370,
        };
        let _ = switch_state::build(&st, NODE, &local, mtus, &Default::default());
    }
}

/// Target `cni_config`: a network configuration on stdin, decoded as
/// `vxmesh-cni` decodes it and run for every command, the agent unreachable
/// (its socket is pointed at a path that does not exist, whatever the
/// configuration says: the fuzzer must not talk to a real agent).
pub fn cni_config(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for command in ["VERSION", "ADD", "DEL", "CHECK", "GC", "STATUS", "BOGUS"] {
        let mut config = match crate::cni::decode_config(command, &input) {
            Ok(c) => c,
            Err(e) => {
                let _ = e.to_json("1.0.0").to_string();
                continue;
            }
        };
        assert!(config.is_object(), "a configuration that is not an object");
        if let Some(s) = config["agentSocket"].as_str() {
            let _ = crate::api::client::Client::new(s);
        }
        config["agentSocket"] = Value::from("/nonexistent/vxmesh-fuzz/agent.sock");
        let inv = crate::cni::Invocation {
            command: command.into(),
            container_id: Some("c0ffee".into()),
            netns: Some("/var/run/netns/fuzz".into()),
            ifname: Some("eth0".into()),
            config,
        };
        let version = inv.version();
        match rt.block_on(crate::cni::run(&inv)) {
            Ok(Some(v)) => assert!(v.is_object()),
            Ok(None) => {}
            Err(e) => {
                let _ = e.to_json(&version).to_string();
            }
        }
    }
}

/// Valid inputs for each target, by name (what the committed corpus started
/// from; `tests/fuzz_corpus.rs` writes them out with `--ignored`).
pub fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    let s = |n: &'static str, v: &str| (n, v.as_bytes().to_vec());
    match target {
        "api_json" => vec![
            s("network", r#"0{"name":"blue","subnets":["10.40.0.0/24","fd40::/64"],"vni":4200,"peer_vteps":["192.0.2.9"]}"#),
            s("endpoint", r#"1{"network":"red","netns":"web","ifname":"eth1","ip":"10.31.0.77","owner":"cni:c:eth1"}"#),
            s("external_node", r#"2{"name":"gw1","advertise_addr":"192.0.2.20","public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","tunnel_addr":"100.64.255.1","wg_port":51820}"#),
            s("service", r#"3{"name":"web","networks":["red"],"publish":["8443:443/tcp",":53/udp","5432:5432,mode=host"],"scheduler":"maglev","health":"http:80/healthz","health_interval_ms":500}"#),
            s("service_update", r#"4{"publish_add":["9000:90/udp"],"publish_rm":["8080"]}"#),
            s("node_update", "5{\"ingress\":false}\n>{}"),
            s("policy", r#"6{"node":"node2","port":"8080/tcp","action":"reject","from":"192.0.2.0/24"}"#),
            s("trace", r#"7{"network":"red","filter":"host 10.31.0.2","seconds":1.5,"count":10}"#),
            s("removals", "8secret\n9ep0\n:api\n;nothing\n<node2\n=node1"),
            s("sequence", "0{\"name\":\"blue\",\"subnets\":[\"10.40.0.0/24\"]}\n3{\"name\":\"db\",\"networks\":[\"blue\",\"red\"],\"endpoint_mode\":\"dnsrr\"}\n1{\"network\":\"blue\",\"netns\":\"a\",\"service\":\"db\"}\n8blue"),
        ],
        "cni_config" => vec![
            s("add", r#"{"cniVersion":"1.0.0","name":"vx","type":"vxmesh-cni","network":"red","agentSocket":"unix:/run/vxmesh/vxmesh.sock","service":"api"}"#),
            s("gc", r#"{"cniVersion":"1.1.0","name":"vx","type":"vxmesh-cni","network":"red","cni.dev/valid-attachments":[{"containerID":"c0ffee","ifname":"eth0"}]}"#),
            s("old_version", r#"{"cniVersion":"0.3.1","name":"vx","type":"vxmesh-cni","network":"red"}"#),
            s("unsupported", r#"{"cniVersion":"9.9.9","network":"red"}"#),
            s("empty", ""),
        ],
        _ => Vec::new(),
    }
}

/// A target: it takes any bytes.
pub type Target = fn(&[u8]);

/// The targets of this module, by name.
pub const TARGETS: [(&str, Target); 2] = [("api_json", api_requests), ("cni_config", cni_config)];

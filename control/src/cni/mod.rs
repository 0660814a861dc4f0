//! The CNI plugin (`vxmesh-cni`, CNI spec 1.0/1.1): a container runtime calls it
//! with the network configuration on stdin and `CNI_*` variables; it asks the local
//! agent, over the agent's API socket, to attach or detach the container.
//!
//! Attachments are endpoints whose `owner` is `cni:CONTAINER_ID:IFNAME`, so DEL,
//! CHECK and GC find them again; DEL of something already gone succeeds.

#![forbid(unsafe_code)]

use crate::api::client::Client;
use hyper::Method;
use serde_json::{json, Value};

/// The versions whose result format this plugin writes.
pub const SUPPORTED: [&str; 5] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.3.0"];

/// A CNI error: the spec's well-known codes, a message and details.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

pub const E_INCOMPATIBLE_VERSION: u32 = 1;
pub const E_CONTAINER_UNKNOWN: u32 = 3;
pub const E_INVALID_ENV: u32 = 4;
pub const E_IO: u32 = 5;
pub const E_DECODE: u32 = 6;
pub const E_INVALID_CONFIG: u32 = 7;
pub const E_TRY_AGAIN: u32 = 11;
pub const E_NOT_AVAILABLE: u32 = 50;

/// What the runtime passed.
pub struct Invocation {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub config: Value,
}

impl Invocation {
    pub fn version(&self) -> String {
        self.config["cniVersion"]
            .as_str()
            .unwrap_or("1.0.0")
            .to_string()
    }

    fn env(&self, v: &Option<String>, name: &str) -> Result<String, CniError> {
        v.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
            CniError::new(
                E_INVALID_ENV,
                format!("{name} is not set"),
                format!("{} needs {name}", self.command),
            )
        })
    }

    fn owner(&self) -> Result<String, CniError> {
        Ok(format!(
            "cni:{}:{}",
            self.env(&self.container_id, "CNI_CONTAINERID")?,
            self.env(&self.ifname, "CNI_IFNAME")?
        ))
    }

    fn client(&self) -> Result<Client, CniError> {
        let sock = self.config["agentSocket"]
            .as_str()
            .unwrap_or(crate::api::client::DEFAULT_SOCKET);
        Client::new(sock)
            .map_err(|e| CniError::new(E_INVALID_CONFIG, "bad agentSocket", e.to_string()))
    }

    fn network(&self) -> Result<String, CniError> {
        self.config["network"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
            .ok_or_else(|| {
                CniError::new(
                    E_INVALID_CONFIG,
                    "the network configuration has no \"network\"",
                    "name the vxmesh network to attach to",
                )
            })
    }
}

/// An agent call; an unreachable agent is "try again later" (11), the agent's own
/// refusals are I/O failures (5) carrying its message.
async fn call(c: &Client, m: Method, path: &str, body: Option<Value>) -> Result<Value, CniError> {
    c.call(m, path, body).await.map_err(|e| {
        let text = format!("{e:#}");
        if text.contains("cannot reach the vxmesh agent") {
            CniError::new(E_TRY_AGAIN, "the vxmesh agent is not reachable", text)
        } else {
            CniError::new(E_IO, "the vxmesh agent refused", text)
        }
    })
}

async fn owned(c: &Client, owner: &str) -> Result<Option<Value>, CniError> {
    let eps = call(c, Method::GET, "/v1/endpoints", None).await?;
    Ok(eps
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["owner"] == owner)
        .cloned())
}

/// The spec's result for an endpoint: interface, addresses with prefix and
/// gateway, default routes.
async fn result_of(c: &Client, version: &str, ep: &Value) -> Result<Value, CniError> {
    let net = call(
        c,
        Method::GET,
        &format!("/v1/networks/{}", ep["network"].as_str().unwrap_or("")),
        None,
    )
    .await?;
    let subnets: Vec<ipnet::IpNet> =
        serde_json::from_value(net["subnets"].clone()).unwrap_or_default();
    let gateways: Vec<std::net::IpAddr> =
        serde_json::from_value(net["gateways"].clone()).unwrap_or_default();
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for ip in ep["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse::<std::net::IpAddr>().ok())
    {
        let Some(s) = subnets.iter().find(|s| s.contains(&ip)) else {
            continue;
        };
        let gw = gateways.iter().find(|g| s.contains(*g));
        let mut entry = json!({ "address": format!("{ip}/{}", s.prefix_len()), "interface": 0 });
        if let Some(g) = gw {
            entry["gateway"] = json!(g);
            routes.push(json!({ "dst": if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }, "gw": g }));
        }
        if version.starts_with("0.3") {
            entry["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
        }
        ips.push(entry);
    }
    Ok(json!({
        "cniVersion": version,
        "interfaces": [{ "name": ep["ifname"], "mac": ep["mac"], "sandbox": ep["netns"] }],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }))
}

/// Runs one CNI command; `Ok(Some(json))` is printed on stdout.
pub async fn run(inv: &Invocation) -> Result<Option<Value>, CniError> {
    let version = inv.version();
    if inv.command != "VERSION" && !SUPPORTED.contains(&version.as_str()) {
        return Err(CniError::new(
            E_INCOMPATIBLE_VERSION,
            format!("cniVersion {version} is not supported"),
            format!("supported: {}", SUPPORTED.join(", ")),
        ));
    }
    match inv.command.as_str() {
        "VERSION" => Ok(Some(
            json!({ "cniVersion": version, "supportedVersions": SUPPORTED }),
        )),
        "ADD" => {
            let owner = inv.owner()?;
            let netns = inv.env(&inv.netns, "CNI_NETNS")?;
            let ifname = inv.env(&inv.ifname, "CNI_IFNAME")?;
            let network = inv.network()?;
            let c = inv.client()?;
            let ep = match owned(&c, &owner).await? {
                Some(ep) => ep, // ADD retried by the runtime: same answer
                None => {
                    let body = json!({
                        "network": network, "netns": netns, "ifname": ifname,
                        "owner": owner, "service": inv.config["service"],
                    });
                    call(&c, Method::POST, "/v1/endpoints", Some(body)).await?
                }
            };
            Ok(Some(result_of(&c, &version, &ep).await?))
        }
        "DEL" => {
            let owner = inv.owner()?;
            let c = inv.client()?;
            if let Some(ep) = owned(&c, &owner).await? {
                let id = ep["id"].as_str().unwrap_or_default();
                call(&c, Method::DELETE, &format!("/v1/endpoints/{id}"), None).await?;
            }
            Ok(None)
        }
        "CHECK" => {
            let owner = inv.owner()?;
            let c = inv.client()?;
            let ep = owned(&c, &owner).await?.ok_or_else(|| {
                CniError::new(E_CONTAINER_UNKNOWN, "no such attachment", owner.clone())
            })?;
            let netns = inv.env(&inv.netns, "CNI_NETNS")?;
            let path = crate::agent::attach::netns_path(&netns);
            let ifname = ep["ifname"].as_str().unwrap_or("eth0");
            let present = match crate::netlink::Netlink::in_netns(&path).await {
                Ok(nl) => matches!(nl.link(ifname).await, Ok(Some(_))),
                Err(_) => false,
            };
            if !present {
                return Err(CniError::new(
                    E_CONTAINER_UNKNOWN,
                    format!("{ifname} is missing in {netns}"),
                    owner,
                ));
            }
            Ok(None)
        }
        "GC" => {
            let valid: Vec<String> = inv.config["cni.dev/valid-attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    format!(
                        "cni:{}:{}",
                        a["containerID"].as_str().unwrap_or(""),
                        a["ifname"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let network = inv.network()?;
            let c = inv.client()?;
            let eps = call(&c, Method::GET, "/v1/endpoints", None).await?;
            for ep in eps.as_array().into_iter().flatten() {
                let owner = ep["owner"].as_str().unwrap_or("");
                if owner.starts_with("cni:")
                    && ep["network"] == network.as_str()
                    && !valid.iter().any(|v| v == owner)
                {
                    let id = ep["id"].as_str().unwrap_or_default();
                    call(&c, Method::DELETE, &format!("/v1/endpoints/{id}"), None).await?;
                }
            }
            Ok(None)
        }
        "STATUS" => {
            let c = inv.client()?;
            call(&c, Method::GET, "/v1/nodes", None)
                .await
                .map_err(|e| {
                    CniError::new(
                        E_NOT_AVAILABLE,
                        "the vxmesh agent is not reachable",
                        e.details,
                    )
                })?;
            Ok(None)
        }
        other => Err(CniError::new(
            E_INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "use ADD, DEL, CHECK, VERSION, GC or STATUS",
        )),
    }
}

/// Decodes the network configuration a runtime passed on stdin for `command`
/// (VERSION may get none).
pub fn decode_config(command: &str, input: &str) -> Result<Value, CniError> {
    if input.trim().is_empty() && command == "VERSION" {
        return Ok(json!({ "cniVersion": "1.0.0" }));
    }
    let decode = |details: String| {
        CniError::new(E_DECODE, "cannot decode the network configuration", details)
    };
    let v: Value = serde_json::from_str(input).map_err(|e| decode(e.to_string()))?;
    if !v.is_object() {
        return Err(decode(
            "the network configuration is not a JSON object".into(),
        ));
    }
    Ok(v)
}

/// Reads the environment and stdin, runs, prints, and returns the exit code.
pub fn main() -> i32 {
    let var = |k: &str| std::env::var(k).ok();
    let mut input = String::new();
    let command = var("CNI_COMMAND").unwrap_or_default();
    // every command gets the configuration on stdin (VERSION just `cniVersion`)
    {
        use std::io::Read;
        let _ = std::io::stdin().read_to_string(&mut input);
    }
    let config = match decode_config(&command, &input) {
        Ok(v) => v,
        Err(err) => {
            println!("{}", err.to_json("1.0.0"));
            return 1;
        }
    };
    let inv = Invocation {
        command,
        container_id: var("CNI_CONTAINERID"),
        netns: var("CNI_NETNS"),
        ifname: var("CNI_IFNAME"),
        config,
    };
    let version = inv.version();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!(
                "{}",
                CniError::new(E_IO, "cannot start", e.to_string()).to_json(&version)
            );
            return 1;
        }
    };
    match rt.block_on(run(&inv)) {
        Ok(Some(v)) => {
            println!("{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            println!("{}", e.to_json(&version));
            1
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any stdin decodes to an object or to a decode error (never a
        /// configuration that is not an object, whose fields would all read
        /// as missing and send DEL or STATUS to the default socket).
        #[test]
        fn any_input_decodes_to_an_object_or_an_error(
            input in "\\PC{0,40}|\\[.*\\]|[0-9]+|\"[a-z]*\"|null",
            cmd in proptest::sample::select(vec!["ADD", "DEL", "VERSION", "GC"]),
        ) {
            match decode_config(cmd, &input) {
                Ok(v) => prop_assert!(v.is_object()),
                Err(e) => prop_assert_eq!(e.code, E_DECODE),
            }
        }
    }

    #[test]
    fn a_configuration_that_is_not_an_object_is_refused() {
        for input in ["[]", "5", "\"red\"", "null", "[{\"network\":\"red\"}]"] {
            assert_eq!(decode_config("DEL", input).unwrap_err().code, E_DECODE);
        }
        assert!(decode_config("VERSION", " ").unwrap().is_object());
    }
}

//! What the agent made on this node, still there and as it made it: its
//! nftables tables (each chain with the rules it wrote), its TAPs (the ingress
//! sandbox, egress, each endpoint's interface), and the underlay interface's
//! MTU it derived the endpoints' MTUs from.

use super::Check;
use crate::agent::{attach, egress, ingress, iproute, Agent};
use crate::firewall::nft;
use crate::netlink::Netlink;
use crate::state::{ClusterState, Endpoint};
use std::collections::BTreeMap;

/// A restart rebuilds what the agent owns: tables, TAPs, interfaces.
const RESTART: &str = "restart the agent (it makes its tables, TAPs and endpoint interfaces again at start; connections through published ports survive it)";

pub async fn check(a: &Agent, _st: &ClusterState) -> Vec<Check> {
    let mut out = vec![underlay_mtu(a).await];
    let ingress_applied = a.nft_table.lock().await.clone();
    let egress_applied = a.egress_applied.lock().await.0.clone();
    for (applied, what) in [(ingress_applied, "ingress"), (egress_applied, "egress")] {
        if !applied.is_empty() {
            out.extend(tables(&applied).await);
        } else if (what == "ingress" && a.sandbox.is_some())
            || (what == "egress" && a.egress.is_some())
        {
            out.push(Check::warn(
                format!("nft.{what}"),
                format!("the agent has not written its {what} table yet"),
                "wait for the agent to read the store (see store.reachable), or see its log",
            ));
        }
    }
    for (dev, made) in [
        (ingress::DEVICE, a.sandbox.is_some()),
        (egress::DEVICE, a.egress.is_some()),
    ] {
        out.push(own_tap(dev, made).await);
    }
    let (eps, failed): (Vec<Endpoint>, Vec<Endpoint>) = {
        let p = a.ports.lock().await;
        (
            p.by_endpoint.values().map(|l| l.ep.clone()).collect(),
            p.failed.values().cloned().collect(),
        )
    };
    let mut fine = 0;
    for ep in &eps {
        match endpoint_interface(ep).await {
            Ok(()) => fine += 1,
            Err(why) => out.push(Check::fail(
                format!("tap.endpoint.{}", ep.id),
                format!(
                    "endpoint {} (network {}, {}): {why}",
                    ep.id, ep.network, ep.netns
                ),
                RESTART,
            )),
        }
    }
    for ep in &failed {
        out.push(Check::fail(
            format!("tap.endpoint.{}", ep.id),
            format!(
                "endpoint {} (network {}) of this node has no interface: making it failed (the agent's log says why)",
                ep.id, ep.network
            ),
            format!("mend what the log names (its namespace {} must exist), then remove and create the endpoint again, or restart the agent", ep.netns),
        ));
    }
    if fine > 0 || (eps.is_empty() && failed.is_empty()) {
        out.push(Check::ok(
            "tap.endpoints",
            format!("{fine} endpoint interface(s) of this node in place"),
        ));
    }
    out
}

async fn underlay_mtu(a: &Agent) -> Check {
    let check = "underlay.mtu";
    match iproute::mtu_of_address(a.advertise_addr).await {
        Ok(Some(m)) if m == a.underlay_mtu => Check::ok(
            check,
            format!(
                "the interface of {} has MTU {m}: endpoints get {} (plain), {} (encrypted)",
                a.advertise_addr, a.mtus.plain, a.mtus.encrypted
            ),
        ),
        Ok(Some(m)) => Check::fail(
            check,
            format!(
                "the interface of {} has MTU {m} now, {} when the agent started: endpoints still send packets of up to {} bytes",
                a.advertise_addr, a.underlay_mtu, a.mtus.plain
            ),
            format!("set it back to {}, or restart the agent so that endpoints get MTUs that fit", a.underlay_mtu),
        ),
        Ok(None) => Check::fail(
            check,
            format!("{} is no longer an address of this node", a.advertise_addr),
            "put the address back on its interface (ip addr), or restart the agent with the node's address as --advertise-addr",
        ),
        Err(e) => Check::warn(check, format!("cannot read the interfaces: {e}"), "see the agent's log; it needs CAP_NET_ADMIN"),
    }
}

/// Chains (and rules in each) of the tables in an nftables script as the
/// agent writes them, by (family, table).
fn expected(script: &str) -> BTreeMap<(String, String), BTreeMap<String, usize>> {
    let mut out: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
    let (mut table, mut chain): (Option<(String, String)>, Option<String>) = (None, None);
    for line in script.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, "{"] => {
                let t = (family.to_string(), name.to_string());
                out.entry(t.clone()).or_default();
                table = Some(t);
            }
            ["chain", name, "{"] => {
                if let Some(t) = &table {
                    out.entry(t.clone())
                        .or_default()
                        .insert(name.to_string(), 0);
                }
                chain = Some(name.to_string());
            }
            // a chain's end, or else its table's
            ["}"] => match chain.take() {
                Some(_) => {}
                None => table = None,
            },
            [first, ..] if *first != "type" => {
                if let (Some(t), Some(c)) = (&table, &chain) {
                    *out.entry(t.clone())
                        .or_default()
                        .entry(c.clone())
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }
    out
}

/// Chains and their rule counts of a table as `nft -j list table` shows it
/// (nothing for what is not such a listing).
#[cfg(test)]
fn listed(json: &str) -> BTreeMap<String, usize> {
    nft::rule_counts(&serde_json::from_str(json).unwrap_or_default())
}

/// Each table the agent last wrote: there, with its chains and rules.
async fn tables(applied: &str) -> Vec<Check> {
    let mut out = Vec::new();
    for ((family, table), want) in expected(applied) {
        let check = format!("nft.{family}.{table}");
        let have = match nft::list_table(&family, &table).await {
            Ok(Some(chains)) => chains,
            missing => {
                let why = match missing {
                    Err(e) => format!(" ({e})"),
                    _ => String::new(),
                };
                out.push(Check::fail(
                    check,
                    format!("table {family} {table} is missing{why}"),
                    format!("{RESTART}; if something removes it (a firewall service that flushes the whole ruleset), make it leave vxmesh's tables alone"),
                ));
                continue;
            }
        };
        let wrong: Vec<String> = want
            .iter()
            .filter(|(c, n)| have.get(*c) != Some(n))
            .map(|(c, n)| match have.get(c) {
                Some(h) => format!("chain {c} has {h} rule(s), {n} written"),
                None => format!("chain {c} is missing"),
            })
            .collect();
        if wrong.is_empty() {
            let rules: usize = want.values().sum();
            out.push(Check::ok(
                check,
                format!(
                    "table {family} {table} in place: {} chain(s), {rules} rule(s)",
                    want.len()
                ),
            ));
        } else {
            out.push(Check::fail(
                check,
                format!("table {family} {table} was changed: {}", wrong.join("; ")),
                format!("{RESTART}; and find what edits it"),
            ));
        }
    }
    out
}

/// One of the agent's own TAPs in its namespace: there and up.
async fn own_tap(dev: &str, made: bool) -> Check {
    let check = format!("tap.{dev}");
    if !made {
        return Check::fail(
            check,
            format!("the agent could not make {dev} at start (its log says why)"),
            format!("mend what the log names, then {RESTART}"),
        );
    }
    let link = match Netlink::here() {
        Ok(nl) => nl.link(dev).await,
        Err(e) => Err(e),
    };
    match link {
        Ok(Some(l)) => {
            if l.up {
                Check::ok(check, format!("{dev} is there and up"))
            } else {
                Check::fail(
                    check,
                    format!("{dev} is down"),
                    format!("ip link set {dev} up"),
                )
            }
        }
        Ok(None) => Check::fail(check, format!("{dev} is missing"), RESTART),
        Err(e) => Check::fail(check, format!("{dev} cannot be read: {e}"), RESTART),
    }
}

/// An endpoint's interface: its TAP in its namespace (found by MAC, as the
/// agent finds it), or the host end of its veth.
async fn endpoint_interface(ep: &Endpoint) -> Result<(), String> {
    if let Some(v) = &ep.veth {
        let nl = Netlink::here().map_err(|e| e.to_string())?;
        return match nl.link(v).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(format!("its veth {v} is missing")),
        };
    }
    let path = attach::netns_path(&ep.netns);
    if !path.exists() {
        return Err(format!("its namespace {} is gone", path.display()));
    }
    let nl = Netlink::in_netns(&path).await.map_err(|e| e.to_string())?;
    let found = attach::endpoint_taps(&nl, ep)
        .await
        .map_err(|e| e.to_string())?;
    if !found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "its TAP ({} with MAC {}) is missing",
            ep.ifname, ep.mac
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tables_and_listed_ones_compare_by_chain_and_rules() {
        let script = "table ip vxmesh {\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    tcp dport 8080 dnat to 169.254.250.2\n  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n  }\n}\ntable ip6 vxmesh {\n  chain output {\n    type nat hook output priority -100; policy accept;\n  }\n}\n";
        let e = expected(script);
        let v4 = &e[&("ip".to_string(), "vxmesh".to_string())];
        assert_eq!(v4["prerouting"], 1);
        assert_eq!(v4["postrouting"], 0);
        assert_eq!(e[&("ip6".to_string(), "vxmesh".to_string())]["output"], 0);
        let json = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"ip","name":"vxmesh"}},
            {"chain":{"family":"ip","table":"vxmesh","name":"prerouting"}},
            {"chain":{"family":"ip","table":"vxmesh","name":"postrouting"}},
            {"rule":{"family":"ip","table":"vxmesh","chain":"prerouting","expr":[]}}]}"#;
        assert_eq!(&listed(json), v4);
        assert!(listed("not json").is_empty());
        // the agent's own tables parse as they are rendered
        let st = ClusterState::default();
        let eg = egress::render_table(&st, &Default::default());
        let t = expected(&eg);
        let chains = &t[&("inet".to_string(), egress::TABLE.to_string())];
        assert_eq!(
            chains.keys().collect::<Vec<_>>(),
            ["forward", "input", "postrouting"]
        );
        assert!(chains["forward"] >= 3, "{eg}");
    }
}

//! Services: virtual IPs, fwmarks, published ports, and their checks. Like every
//! operation on the state, each applies whole or not at all.

use super::error::StateError;
use super::ipam;
use super::model::{unix_now, ClusterState, PublishedPort, Service};
use super::names::valid_name;
use std::collections::BTreeSet;

/// Where ports published without a number come from (Docker's default range).
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// First fwmark handed out (below are left to the host's own rules).
pub const FIRST_FWMARK: u32 = 0x100;
/// Last fwmark handed out: the pool is every mark from [`FIRST_FWMARK`] up, one
/// per service.
pub const LAST_FWMARK: u32 = u32::MAX;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub networks: Vec<String>,
    /// `PUB:TARGET[/tcp|/udp][,mode=host]`, `:TARGET` for a port from 30000-32767.
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub endpoint_mode: Option<String>,
    #[serde(default)]
    pub scheduler: Option<String>,
    #[serde(default)]
    pub health: Option<String>,
    #[serde(default)]
    pub health_interval_ms: Option<u64>,
}

/// A `--publish` value, before a port is given to `:TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    pub proto: String,
    pub published: Option<u16>,
    pub target: u16,
    pub mode: String,
}

pub fn parse_publish(s: &str) -> Result<PublishSpec, StateError> {
    let bad = || {
        StateError::Invalid(format!(
            "--publish {s:?}: use PUBLISHED:TARGET[/tcp|/udp][,mode=ingress|host], e.g. 8080:80 or :80/udp"
        ))
    };
    let (main, mode) = match s.split_once(',') {
        Some((m, opt)) => match opt.strip_prefix("mode=") {
            Some(v @ ("ingress" | "host")) => (m, v.to_string()),
            _ => return Err(bad()),
        },
        None => (s, "ingress".to_string()),
    };
    let (ports, proto) = match main.split_once('/') {
        Some((p, proto @ ("tcp" | "udp"))) => (p, proto.to_string()),
        Some(_) => return Err(bad()),
        None => (main, "tcp".to_string()),
    };
    let (p, t) = ports.split_once(':').ok_or_else(bad)?;
    let target: u16 = t.parse().ok().filter(|v| *v > 0).ok_or_else(bad)?;
    let published = if p.is_empty() {
        None
    } else {
        Some(p.parse().ok().filter(|v: &u16| *v > 0).ok_or_else(bad)?)
    };
    Ok(PublishSpec {
        proto,
        published,
        target,
        mode,
    })
}

fn used_ports(st: &ClusterState, except: Option<&str>) -> BTreeSet<(String, u16)> {
    st.services
        .values()
        .filter(|s| Some(s.name.as_str()) != except)
        .flat_map(|s| s.ports.iter().map(|p| (p.proto.clone(), p.published)))
        .collect()
}

/// Gives each spec its published port, checking clashes with other services and
/// within the list.
fn assign_ports(
    st: &ClusterState,
    service: &str,
    specs: &[PublishSpec],
    keep: &[PublishedPort],
) -> Result<Vec<PublishedPort>, StateError> {
    let mut used = used_ports(st, Some(service));
    for k in keep {
        used.insert((k.proto.clone(), k.published));
    }
    let mut out = Vec::new();
    for p in specs {
        let published = match p.published {
            Some(n) => {
                if let Some(other) = st.services.values().find(|s| {
                    s.name != service
                        && s.ports
                            .iter()
                            .any(|q| q.proto == p.proto && q.published == n)
                }) {
                    return Err(StateError::Conflict(format!(
                        "port {n}/{} is already published by service {}: pick another",
                        p.proto, other.name
                    )));
                }
                if used.contains(&(p.proto.clone(), n)) {
                    return Err(StateError::Conflict(format!(
                        "port {n}/{} is published twice",
                        p.proto
                    )));
                }
                n
            }
            None => AUTO_PORTS
                .clone()
                .find(|n| !used.contains(&(p.proto.clone(), *n)))
                .ok_or_else(|| {
                    ipam::exhausted(
                        &format!(
                            "the published-port pool {}-{} ({})",
                            AUTO_PORTS.start(),
                            AUTO_PORTS.end(),
                            p.proto
                        ),
                        AUTO_PORTS.len() as u64,
                        "give the port a number outside it (--publish PUBLISHED:TARGET) \
                         or free one (vxmesh service update NAME --publish-rm PORT)",
                    )
                })?,
        };
        used.insert((p.proto.clone(), published));
        out.push(PublishedPort {
            proto: p.proto.clone(),
            published,
            target: p.target,
            mode: p.mode.clone(),
        });
    }
    Ok(out)
}

pub fn create_service(st: &mut ClusterState, spec: &ServiceSpec) -> Result<Service, StateError> {
    valid_name("service", &spec.name)?;
    if st.services.contains_key(&spec.name) {
        return Err(StateError::Conflict(format!(
            "service {} already exists: pick another name or change it with vxmesh service update",
            spec.name
        )));
    }
    if spec.networks.is_empty() {
        return Err(StateError::Invalid("a service needs --network".into()));
    }
    let mode = spec.endpoint_mode.clone().unwrap_or_else(|| "vip".into());
    if mode != "vip" && mode != "dnsrr" {
        return Err(StateError::Invalid(format!(
            "--endpoint-mode {mode}: use vip or dnsrr"
        )));
    }
    let scheduler = spec.scheduler.clone().unwrap_or_else(|| "rr".into());
    if !["rr", "wrr", "lc", "sh", "maglev"].contains(&scheduler.as_str()) {
        return Err(StateError::Invalid(format!(
            "--scheduler {scheduler}: use rr, wrr, lc, sh or maglev"
        )));
    }
    if let Some(h) = &spec.health {
        parse_health(h)?;
    }
    let mut vips = std::collections::BTreeMap::new();
    let mut vips6 = std::collections::BTreeMap::new();
    for n in &spec.networks {
        if n == super::ingress::NETWORK {
            return Err(StateError::Invalid(format!(
                "network {n} is the routing mesh's own: put the service on your networks and --publish its ports"
            )));
        }
        let net = st.networks.get(n).ok_or_else(|| {
            StateError::NotFound(format!(
                "no network named {n}: create it first (vxmesh network create {n})"
            ))
        })?;
        if mode == "vip" {
            // one VIP of each family the network has, IPv4 first
            let used = ipam::used_addresses(st, n);
            let mut subnets: Vec<&ipnet::IpNet> = net.subnets.iter().collect();
            subnets.sort_by_key(|s| s.addr().is_ipv6());
            for (i, subnet) in subnets.into_iter().enumerate() {
                let vip = ipam::allocate_ip(subnet, &used).ok_or_else(|| {
                    ipam::exhausted(
                        &format!("network {n}'s addresses {subnet} (for this service's VIP)"),
                        ipam::assignable_count(subnet),
                        "remove endpoints or services on it, put the service on a network \
                         with a larger --subnet, or use --endpoint-mode dnsrr (no VIP)",
                    )
                })?;
                if i == 0 {
                    vips.insert(n.clone(), vip);
                } else {
                    vips6.insert(n.clone(), vip);
                }
            }
        }
    }
    let specs: Vec<PublishSpec> = spec
        .publish
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<_, _>>()?;
    let ports = assign_ports(st, &spec.name, &specs, &[])?;
    let fwmarks: BTreeSet<u32> = st.services.values().map(|s| s.fwmark).collect();
    let fwmark = (FIRST_FWMARK..=LAST_FWMARK)
        .find(|m| !fwmarks.contains(m))
        .ok_or_else(|| {
            ipam::exhausted(
                &format!("the fwmark pool {FIRST_FWMARK:#x}-{LAST_FWMARK:#x}"),
                u64::from(LAST_FWMARK - FIRST_FWMARK) + 1,
                "remove services (vxmesh service rm NAME)",
            )
        })?;
    let svc = Service {
        name: spec.name.clone(),
        networks: spec.networks.clone(),
        vips,
        vips6,
        ports,
        endpoint_mode: mode,
        scheduler,
        health: spec.health.clone(),
        health_interval_ms: spec.health_interval_ms,
        fwmark,
        created: unix_now(),
    };
    st.services.insert(svc.name.clone(), svc.clone());
    Ok(svc)
}

/// Adds and removes published ports, as `docker service update --publish-add/-rm`.
pub fn update_ports(
    st: &mut ClusterState,
    name: &str,
    add: &[String],
    rm: &[String],
) -> Result<Service, StateError> {
    let svc = st.services.get(name).cloned().ok_or_else(|| {
        StateError::NotFound(format!(
            "no service named {name} (vxmesh service ls lists them)"
        ))
    })?;
    let mut keep = svc.ports.clone();
    for r in rm {
        let (num, proto) = match r.split_once('/') {
            Some((n, p)) => (n, p),
            None => (r.as_str(), "tcp"),
        };
        let n: u16 = num.parse().map_err(|_| {
            StateError::Invalid(format!(
                "--publish-rm {r:?}: give the published port, e.g. 8080 or 53/udp"
            ))
        })?;
        let before = keep.len();
        keep.retain(|p| !(p.published == n && p.proto == proto));
        if keep.len() == before {
            return Err(StateError::NotFound(format!(
                "service {name} does not publish {n}/{proto}"
            )));
        }
    }
    let specs: Vec<PublishSpec> = add
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<_, _>>()?;
    let added = assign_ports(st, name, &specs, &keep)?;
    keep.extend(added);
    let s = st
        .services
        .get_mut(name)
        .ok_or_else(|| StateError::NotFound(name.into()))?;
    s.ports = keep;
    let s = s.clone();
    super::ingress::sync_tasks(st)?;
    Ok(s)
}

pub fn remove_service(st: &mut ClusterState, name: &str) -> Result<Service, StateError> {
    if !st.services.contains_key(name) {
        return Err(StateError::NotFound(format!(
            "no service named {name} (vxmesh service ls lists them)"
        )));
    }
    let tasks: Vec<&str> = st
        .endpoints
        .values()
        .filter(|e| e.service.as_deref() == Some(name))
        .map(|e| e.id.as_str())
        .collect();
    if !tasks.is_empty() {
        return Err(StateError::Conflict(format!(
            "service {name} still has {} task(s) ({}): remove them first (vxmesh endpoint rm ID)",
            tasks.len(),
            tasks.join(", ")
        )));
    }
    st.services
        .remove(name)
        .ok_or_else(|| StateError::NotFound(name.into()))
}

/// `tcp:PORT` or `http:PORT/PATH`.
pub fn parse_health(s: &str) -> Result<(String, u16, String), StateError> {
    let bad = || StateError::Invalid(format!("--health {s:?}: use tcp:PORT or http:PORT/PATH"));
    let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
    // port 0 is no port: its check could never pass
    let port = |p: &str| p.parse().ok().filter(|p: &u16| *p > 0).ok_or_else(bad);
    match kind {
        "tcp" => Ok(("tcp".into(), port(rest)?, String::new())),
        "http" => {
            let (p, path) = rest.split_once('/').unwrap_or((rest, ""));
            Ok(("http".into(), port(p)?, format!("/{path}")))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ops, NetworkSpec};
    use std::net::IpAddr;

    fn state() -> ClusterState {
        let mut st = ClusterState::default();
        ops::create_network(
            &mut st,
            &NetworkSpec {
                name: "a".into(),
                subnets: vec!["10.9.0.0/24".parse().unwrap()],
                ..Default::default()
            },
        )
        .unwrap();
        st
    }

    fn spec(name: &str, publish: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            networks: vec!["a".into()],
            publish: publish.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn publish_specs_parse() {
        assert_eq!(
            parse_publish("8080:80").unwrap(),
            PublishSpec {
                proto: "tcp".into(),
                published: Some(8080),
                target: 80,
                mode: "ingress".into()
            }
        );
        assert_eq!(parse_publish(":53/udp").unwrap().published, None);
        assert_eq!(parse_publish("9000:90/tcp,mode=host").unwrap().mode, "host");
        for bad in ["80", "x:80", "8080:0", "1:2/sctp", "1:2,mode=x"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vips_marks_and_ports_are_distinct() {
        let mut st = state();
        let a = create_service(&mut st, &spec("web", &["8080:80", ":443"])).unwrap();
        let b = create_service(&mut st, &spec("api", &[":80", ":53/udp"])).unwrap();
        assert_ne!(a.vips["a"], b.vips["a"]);
        assert_ne!(a.fwmark, b.fwmark);
        assert_eq!(a.ports[1].published, 30000);
        assert_eq!(b.ports[0].published, 30001);
        assert_eq!(b.ports[1].published, 30000, "udp has its own port space");
        let e = create_service(&mut st, &spec("x", &["8080:81"])).unwrap_err();
        assert!(
            e.to_string().contains("already published by service web"),
            "{e}"
        );
        assert_eq!(st.services.len(), 2);
        // endpoints never get a VIP's address
        let es = ops::EndpointSpec {
            network: "a".into(),
            netns: "n".into(),
            ..Default::default()
        };
        st.nodes.insert(
            "n1".into(),
            crate::state::Node::new("n1", "192.0.2.1".parse().unwrap()),
        );
        let ep = ops::create_endpoint(&mut st, &es, "n1", "e1".into(), ipam::random_mac).unwrap();
        assert!(!ep.ips.contains(&a.vips["a"]) && !ep.ips.contains(&b.vips["a"]));
    }

    #[test]
    fn ports_change_live_and_services_with_tasks_stay() {
        let mut st = state();
        create_service(&mut st, &spec("web", &["8080:80"])).unwrap();
        let s = update_ports(&mut st, "web", &["9090:90/udp".into()], &["8080".into()]).unwrap();
        assert_eq!(s.ports.len(), 1);
        assert_eq!(
            (s.ports[0].published, s.ports[0].proto.as_str()),
            (9090, "udp")
        );
        assert!(update_ports(&mut st, "web", &[], &["1234".into()]).is_err());
        st.nodes.insert(
            "n1".into(),
            crate::state::Node::new("n1", "192.0.2.1".parse().unwrap()),
        );
        let es = ops::EndpointSpec {
            network: "a".into(),
            netns: "n".into(),
            service: Some("web".into()),
            ..Default::default()
        };
        ops::create_endpoint(&mut st, &es, "n1", "t1".into(), ipam::random_mac).unwrap();
        assert!(remove_service(&mut st, "web")
            .unwrap_err()
            .to_string()
            .contains("t1"));
    }

    #[test]
    fn pools_are_sized_to_the_network_and_name_themselves_when_empty() {
        let mut st = ClusterState::default();
        ops::create_network(
            &mut st,
            &NetworkSpec {
                name: "big".into(),
                subnets: vec!["10.128.0.0/16".parse().unwrap()],
                ..Default::default()
            },
        )
        .unwrap();
        // far past any /24: VIPs come from the network's own subnet
        for i in 0..300 {
            let mut s = spec(&format!("s{i}"), &[]);
            s.networks = vec!["big".into()];
            create_service(&mut st, &s).unwrap();
        }
        assert_eq!(
            st.services["s299"].vips["big"],
            "10.128.1.45".parse::<IpAddr>().unwrap()
        );
        assert_eq!(ipam::assignable_count(&"10.9.0.0/29".parse().unwrap()), 5);
        assert_eq!(
            ipam::assignable_count(&"fd00::/64".parse().unwrap()),
            u64::MAX - 1
        );
        // fwmarks: one per service, never reused while it lives
        let marks: BTreeSet<u32> = st.services.values().map(|s| s.fwmark).collect();
        assert_eq!(marks.len(), 300);
        let e = ipam::exhausted("the X pool", 7, "do Y");
        assert_eq!(
            e.to_string(),
            "pool exhausted: the X pool (7 in all) has none left: do Y"
        );
    }

    #[test]
    fn bad_modes_schedulers_and_health_are_refused() {
        let mut st = state();
        let mut s = spec("w", &[]);
        s.scheduler = Some("fastest".into());
        assert!(create_service(&mut st, &s).is_err());
        let mut s = spec("w", &[]);
        s.health = Some("icmp:1".into());
        assert!(create_service(&mut st, &s).is_err());
        let mut s = spec("w", &[]);
        s.endpoint_mode = Some("dnsrr".into());
        assert!(
            create_service(&mut st, &s).unwrap().vips.is_empty(),
            "dnsrr: names only, no VIP"
        );
        let e = create_service(&mut st, &spec("p", &["8080:80/sctp"])).unwrap_err();
        assert!(e.to_string().contains("--publish"), "{e}");
        assert_eq!(
            parse_health("http:8080/healthz").unwrap(),
            ("http".into(), 8080, "/healthz".into())
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `--publish` and `--health` values: any text parses or is refused
        /// with a message; what is written in the documented form reads back.
        #[test]
        fn publish_and_health_specs_parse_back(
            junk in "\\PC{0,24}",
            published in proptest::option::of(1u16..),
            target in 1u16..,
            udp in any::<bool>(),
            host in any::<bool>(),
            path in "[a-z/]{0,10}",
        ) {
            let _ = parse_publish(&junk);
            if let Ok((_, port, _)) = parse_health(&junk) {
                prop_assert!(port > 0, "{junk:?} checks port 0");
            }
            let proto = if udp { "udp" } else { "tcp" };
            let mode = if host { "host" } else { "ingress" };
            let p = published.map(|p| p.to_string()).unwrap_or_default();
            let s = format!("{p}:{target}/{proto},mode={mode}");
            prop_assert_eq!(
                parse_publish(&s).unwrap(),
                PublishSpec { proto: proto.into(), published, target, mode: mode.into() }
            );
            let h = parse_health(&format!("http:{target}/{path}")).unwrap();
            prop_assert_eq!(h, ("http".to_string(), target, format!("/{path}")));
        }
    }

    #[test]
    fn health_on_port_zero_is_refused() {
        assert!(parse_health("tcp:0").is_err());
        assert!(parse_health("http:0/healthz").is_err());
    }
}

use super::*;
use crate::state::ingress::{self, PolicySpec};
use crate::state::services::{self, ServiceSpec};
use crate::state::{ipam, ops, EndpointSpec, NetworkSpec};

/// A cluster as the operations build it: two nodes (one external),
/// plain, encrypted and dual-stack networks, services with VIPs and
/// published ports (so ingress tasks), endpoints and a policy.
fn cluster() -> ClusterState {
    let mut st = ClusterState::default();
    for (i, n) in ["n1", "n2"].iter().enumerate() {
        let mut node = Node::new(n, format!("192.0.2.{}", i + 1).parse().unwrap());
        node.public_key = Some(ops::encode_key(&[i as u8 + 1; 32]));
        ops::upsert_node(&mut st, node).unwrap();
    }
    let mut ext = Node::new("ext", "198.51.100.9".parse().unwrap());
    ext.public_key = Some(ops::encode_key(&[9; 32]));
    ext.tunnel_addr = Some("100.64.9.9".parse().unwrap());
    ops::add_external_node(&mut st, ext).unwrap();
    let net = |name: &str, subnets: &[&str], encrypted| NetworkSpec {
        name: name.into(),
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        encrypted,
        ..Default::default()
    };
    ops::create_network(&mut st, &net("a", &[], false)).unwrap();
    ops::create_network(&mut st, &net("sec", &["10.44.0.0/24"], true)).unwrap();
    ops::create_network(&mut st, &net("d", &["10.50.0.0/24", "fd00:50::/64"], false)).unwrap();
    services::create_service(
        &mut st,
        &ServiceSpec {
            name: "web".into(),
            networks: vec!["a".into(), "d".into()],
            publish: vec!["8080:80".into()],
            health: Some("tcp:80".into()),
            ..Default::default()
        },
    )
    .unwrap();
    services::create_service(
        &mut st,
        &ServiceSpec {
            name: "dns".into(),
            networks: vec!["sec".into()],
            endpoint_mode: Some("dnsrr".into()),
            ..Default::default()
        },
    )
    .unwrap();
    for (i, (net, node, svc)) in [
        ("a", "n1", Some("web")),
        ("d", "n2", Some("web")),
        ("sec", "n1", Some("dns")),
        ("sec", "n2", None),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = EndpointSpec {
            network: net.into(),
            netns: format!("c{i}"),
            service: svc.map(Into::into),
            ..Default::default()
        };
        ops::create_endpoint(&mut st, &spec, node, format!("{i:016x}"), ipam::random_mac).unwrap();
        ingress::sync_tasks(&mut st).unwrap();
    }
    ingress::add_policy(
        &mut st,
        &PolicySpec {
            node: "n1".into(),
            port: "8080".into(),
            action: "drop".into(),
            from: Some("203.0.113.0/24".into()),
            audit: false,
        },
    )
    .unwrap();
    st
}

/// Nothing the write path builds is taken for invalid.
#[test]
fn what_the_operations_write_is_valid() {
    let mut st = cluster();
    assert!(st.endpoints.values().any(|e| ingress::task_of(e).is_some()));
    let before = st.clone();
    assert_eq!(sanitize(&mut st), vec![]);
    assert_eq!(st, before);
}

fn keys<T>(m: &BTreeMap<String, T>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// Two networks with one VNI, or overlapping subnets: the older stays, the
/// other (and its endpoints) goes, whichever order the rows come in.
#[test]
fn of_two_clashing_networks_the_older_wins() {
    let mut st = cluster();
    let a = st.networks["a"].clone();
    let mut dup = a.clone();
    dup.name = "b".into();
    dup.subnets = vec!["10.99.0.0/24".parse().unwrap()];
    dup.gateways = vec!["10.99.0.1".parse().unwrap()];
    // written later than a, but with a name that sorts first
    dup.created = a.created + 1;
    let mut dup0 = dup.clone();
    dup0.name = "0b".into();
    let mut overlap = dup.clone();
    overlap.name = "c".into();
    overlap.vni = 4242;
    overlap.subnets = vec!["10.44.0.128/25".parse().unwrap()];
    overlap.gateways = vec!["10.44.0.129".parse().unwrap()];
    st.networks.insert("0b".into(), dup0);
    st.networks.insert("c".into(), overlap);
    let mut ep = st
        .endpoints
        .values()
        .find(|e| e.network == "a")
        .unwrap()
        .clone();
    ep.id = "00000000000000ee".into();
    ep.network = "0b".into();
    ep.ips = vec!["10.99.0.5".parse().unwrap()];
    st.endpoints.insert(ep.id.clone(), ep);
    let bad = sanitize(&mut st);
    let what: Vec<(&str, &str)> = bad
        .iter()
        .map(|r| (r.kind.as_str(), r.key.as_str()))
        .collect();
    assert_eq!(
        what,
        [
            ("network", "0b"),
            ("network", "c"),
            ("endpoint", "00000000000000ee")
        ],
        "{bad:#?}"
    );
    assert!(bad[0].reason.contains("network a's"), "{bad:?}");
    assert!(bad[1].reason.contains("overlaps network sec"), "{bad:?}");
    assert_eq!(st.networks["a"], a);
    assert_eq!(keys(&st.networks), ["a", "d", "ingress", "sec"]);
}

/// Each kind of row the write path refuses is left out, with a reason, and
/// nothing else is.
#[test]
fn rows_the_write_path_refuses_are_left_out() {
    let base = cluster();
    type Spoil = Box<dyn Fn(&mut ClusterState) -> (&'static str, String)>;
    let ep_on = |net: &'static str| {
        move |st: &ClusterState| {
            st.endpoints
                .values()
                .find(|e| e.network == net && e.owner.is_none())
                .unwrap()
                .clone()
        }
    };
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "VNI out of range",
            Box::new(|st: &mut ClusterState| {
                st.networks.get_mut("sec").unwrap().vni = MAX_VNI + 1;
                ("network", "sec".into())
            }),
        ),
        (
            "VNI zero",
            Box::new(|st: &mut ClusterState| {
                st.networks.get_mut("d").unwrap().vni = 0;
                ("network", "d".into())
            }),
        ),
        (
            "name unlike key",
            Box::new(|st: &mut ClusterState| {
                st.networks.get_mut("d").unwrap().name = "e".into();
                ("network", "d".into())
            }),
        ),
        (
            "bad network name",
            Box::new(|st: &mut ClusterState| {
                let mut n = st.networks["d"].clone();
                n.name = "../x".into();
                n.vni = 999;
                n.subnets = vec!["10.98.0.0/24".parse().unwrap()];
                n.gateways = vec!["10.98.0.1".parse().unwrap()];
                st.networks.insert(n.name.clone(), n);
                ("network", "../x".into())
            }),
        ),
        (
            "subnet with host bits",
            Box::new(|st: &mut ClusterState| {
                let n = st.networks.get_mut("sec").unwrap();
                n.subnets = vec!["10.44.0.1/24".parse().unwrap()];
                ("network", "sec".into())
            }),
        ),
        (
            "node address unspecified",
            Box::new(|st: &mut ClusterState| {
                st.nodes.get_mut("n2").unwrap().advertise_addr = "0.0.0.0".parse().unwrap();
                ("node", "n2".into())
            }),
        ),
        (
            "node address taken",
            Box::new(|st: &mut ClusterState| {
                st.nodes.get_mut("n2").unwrap().advertise_addr = "192.0.2.1".parse().unwrap();
                ("node", "n2".into())
            }),
        ),
        (
            "tunnel address taken",
            Box::new(|st: &mut ClusterState| {
                let t = st.nodes["n1"].tunnel_addr;
                st.nodes.get_mut("n2").unwrap().tunnel_addr = t;
                ("node", "n2".into())
            }),
        ),
        (
            "bad public key",
            Box::new(|st: &mut ClusterState| {
                st.nodes.get_mut("n2").unwrap().public_key = Some("nope".into());
                ("node", "n2".into())
            }),
        ),
        (
            "endpoint id",
            Box::new(move |st: &mut ClusterState| {
                let mut e = ep_on("sec")(st);
                st.endpoints.remove(&e.id);
                e.id = "x/../../y".into();
                st.endpoints.insert(e.id.clone(), e);
                ("endpoint", "x/../../y".into())
            }),
        ),
        (
            "endpoint on a missing network",
            Box::new(move |st: &mut ClusterState| {
                let mut e = ep_on("sec")(st);
                e.network = "gone".into();
                let id = e.id.clone();
                st.endpoints.insert(id.clone(), e);
                ("endpoint", id)
            }),
        ),
        (
            "endpoint on a missing node",
            Box::new(move |st: &mut ClusterState| {
                let mut e = ep_on("sec")(st);
                e.node = "gone".into();
                let id = e.id.clone();
                st.endpoints.insert(id.clone(), e);
                ("endpoint", id)
            }),
        ),
        (
            "endpoint address outside",
            Box::new(move |st: &mut ClusterState| {
                let mut e = ep_on("sec")(st);
                e.ips = vec!["10.45.0.9".parse().unwrap()];
                let id = e.id.clone();
                st.endpoints.insert(id.clone(), e);
                ("endpoint", id)
            }),
        ),
        (
            "endpoint address twice",
            Box::new(move |st: &mut ClusterState| {
                let first = ep_on("sec")(st);
                let mut e = first.clone();
                e.id = "ffffffffffffffff".into();
                e.netns = "other".into();
                e.mac = "02:00:00:00:00:99".into();
                e.created = first.created + 1;
                st.endpoints.insert(e.id.clone(), e);
                ("endpoint", "ffffffffffffffff".into())
            }),
        ),
        (
            "endpoint multicast MAC",
            Box::new(move |st: &mut ClusterState| {
                let mut e = ep_on("sec")(st);
                e.mac = "01:00:5e:00:00:01".into();
                let id = e.id.clone();
                st.endpoints.insert(id.clone(), e);
                ("endpoint", id)
            }),
        ),
        (
            "endpoint ifname",
            Box::new(move |st: &mut ClusterState| {
                let mut e = ep_on("sec")(st);
                e.ifname = "a-name-far-too-long".into();
                let id = e.id.clone();
                st.endpoints.insert(id.clone(), e);
                ("endpoint", id)
            }),
        ),
        (
            "service fwmark twice",
            Box::new(|st: &mut ClusterState| {
                let (m, c) = (st.services["dns"].fwmark, st.services["dns"].created);
                let s = st.services.get_mut("web").unwrap();
                s.fwmark = m;
                s.created = c + 1;
                ("service", "web".into())
            }),
        ),
        (
            "service scheduler",
            Box::new(|st: &mut ClusterState| {
                st.services.get_mut("dns").unwrap().scheduler = "fastest".into();
                ("service", "dns".into())
            }),
        ),
        (
            "policy action",
            Box::new(|st: &mut ClusterState| {
                st.policies.values_mut().next().unwrap().action = "maybe".into();
                ("policy", "1".into())
            }),
        ),
    ];
    for (what, spoil) in cases {
        let mut st = base.clone();
        let (kind, key) = spoil(&mut st);
        let bad = sanitize(&mut st);
        assert!(
            bad.first().is_some_and(|r| r.kind == kind && r.key == key),
            "{what}: {bad:#?}"
        );
        // dependants of a node or network left out go with it; nothing else
        for r in &bad[1..] {
            assert!(
                kind == "network" || kind == "node" || kind == "service",
                "{what}: more than the row left out: {bad:#?}"
            );
            assert!(
                r.reason.contains("left out") || r.kind == "service",
                "{what}: {r:?}"
            );
        }
        let again = sanitize(&mut st.clone());
        assert!(again.is_empty(), "{what}: what is left is valid: {again:?}");
    }
}

/// Every row of `st`, as the stores hold them.
fn rows(st: &ClusterState) -> Vec<(&'static str, String, serde_json::Value)> {
    fn of<T: serde::Serialize>(
        kind: &'static str,
        m: &BTreeMap<String, T>,
    ) -> Vec<(&'static str, String, serde_json::Value)> {
        m.iter()
            .map(|(k, v)| (kind, k.clone(), serde_json::to_value(v).unwrap()))
            .collect()
    }
    [
        of("network", &st.networks),
        of("node", &st.nodes),
        of("service", &st.services),
        of("endpoint", &st.endpoints),
        of("policy", &st.policies),
    ]
    .concat()
}

proptest::proptest! {
    /// Rows copied under new keys and with fields overwritten by values
    /// taken from other rows (the clashes a hand edit makes) or by junk:
    /// reading never panics, what is kept is valid and free of clashes,
    /// and the outcome does not depend on the order rows are read in.
    #[test]
    fn whatever_the_rows_what_is_kept_is_valid(
        edits in proptest::collection::vec(
            (0usize..64, 0usize..64, 0usize..16, proptest::bool::ANY), 0..12)
    ) {
        let mut rows = rows(&cluster());
        let junk = [
            serde_json::json!(0), serde_json::json!(16_777_216), serde_json::json!("x"),
            serde_json::json!(["10.44.0.0/25"]), serde_json::json!(null),
            serde_json::json!("0.0.0.0"), serde_json::json!([]), serde_json::json!(777),
            serde_json::json!("10.44.0.77"),
        ];
        for (a, b, f, copy) in edits {
            let (a, b) = (a % rows.len(), b % rows.len());
            if copy {
                let mut r = rows[a].clone();
                // a key of its own: a store holds one row per key
                r.1 = format!("{}-copy{}", r.1, rows.len());
                // named as its key, so only its clashes can leave it out
                let field = if matches!(r.0, "endpoint" | "policy") { "id" } else { "name" };
                r.2[field] = r.1.clone().into();
                if r.0 == "network" && f % 2 == 1 {
                    // a VNI of its own: it clashes by its subnets alone
                    r.2["vni"] = (1000 + rows.len()).into();
                }
                rows.push(r);
                continue;
            }
            let Some(field) = rows[b].2.as_object()
                .and_then(|o| o.keys().nth(f % o.len().max(1)).cloned()) else { continue };
            let value = if rows[a].0 == rows[b].0 && f % 3 != 0 {
                rows[a].2.get(&field).cloned().unwrap_or(serde_json::Value::Null)
            } else {
                junk[f % junk.len()].clone()
            };
            rows[b].2[&field] = value;
        }
        let text: Vec<(&str, String, String)> = rows
            .iter()
            .map(|(k, key, v)| (*k, key.clone(), v.to_string()))
            .collect();
        let read = |it: &mut dyn Iterator<Item = &(&'static str, String, String)>| {
            crate::store::Snapshot::from_rows(
                1,
                it.map(|(k, key, v)| (*k, key.clone(), v.as_str())).collect::<Vec<_>>(),
            )
        };
        let snap = read(&mut text.iter());
        let mut st = snap.state.clone();
        proptest::prop_assert!(sanitize(&mut st).is_empty());
        let vnis: BTreeSet<u32> = st.networks.values().map(|n| n.vni).collect();
        proptest::prop_assert_eq!(vnis.len(), st.networks.len());
        let subnets: Vec<IpNet> = st.networks.values().flat_map(|n| n.subnets.clone()).collect();
        for (i, x) in subnets.iter().enumerate() {
            for y in &subnets[i + 1..] {
                proptest::prop_assert!(!ipam::overlaps(x, y), "{} and {}", x, y);
            }
        }
        for e in st.endpoints.values() {
            proptest::prop_assert!(st.networks.contains_key(&e.network));
            proptest::prop_assert!(st.nodes.contains_key(&e.node));
        }
        let kept = rows.len() - snap.invalid.len();
        let total = st.networks.len() + st.nodes.len() + st.services.len()
            + st.endpoints.len() + st.policies.len();
        proptest::prop_assert_eq!(kept, total, "every row is kept or listed");
        let reversed = read(&mut text.iter().rev());
        proptest::prop_assert_eq!(&reversed.state, &snap.state);
        proptest::prop_assert_eq!(&reversed.invalid, &snap.invalid);
    }
}

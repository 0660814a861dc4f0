//! The etcd store over TLS (issue 18, point 2), attacked from the underlay: a
//! machine there with no client certificate, or with one from a CA of its own,
//! cannot join the cluster through etcd nor write to it, while the nodes whose
//! certificates etcd's CA signed work (overlay::two_nodes_two_networks_etcd_tls
//! sends traffic across them).

use anyhow::{ensure, Result};
use vxmesh_netns_tests::*;

/// A CA of the intruder's own and a client certificate it signed (paths).
fn rogue_certificate(dir: &std::path::Path) -> Result<(String, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intruder");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let (c, k) = (dir.join("rogue.pem"), dir.join("rogue-key.pem"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c.display().to_string(), k.display().to_string()))
}

#[test]
fn an_underlay_host_without_a_trusted_certificate_cannot_join() -> Result<()> {
    let mut t = Topology::with_store("storetls", StoreKind::EtcdTls)?;
    let n1 = t.add_node("n1")?;
    t.start_agent(&n1, &[])?;
    t.cli_ok(
        &n1,
        &["network", "create", "red", "--subnet", "10.41.0.0/24"],
    )?;
    let intruder = t.add_node("intruder")?;
    let ca = t
        .etcd_ca()
        .expect("a TLS etcd has a CA")
        .display()
        .to_string();
    let (rogue_cert, rogue_key) = rogue_certificate(t.dir())?;
    let attempts: [(&str, Vec<&str>); 2] = [
        ("no client certificate", vec!["--store-ca", &ca]),
        (
            "a certificate from another CA",
            vec![
                "--store-ca",
                &ca,
                "--store-cert",
                &rogue_cert,
                "--store-key",
                &rogue_key,
            ],
        ),
    ];
    for (what, flags) in attempts {
        let e = t
            .start_agent(&intruder, &flags)
            .err()
            .map(|e| format!("{e:#}"));
        let e = e.unwrap_or_else(|| panic!("{what}: the intruder's agent started"));
        ensure!(
            e.contains("TLS failed") && e.contains("--store-cert"),
            "{what}: {e}"
        );
    }
    // nothing of the intruder's reached the store, and n1 still works through it
    let nodes = t.cli_ok(&n1, &["node", "ls"])?;
    ensure!(!nodes.contains("intruder"), "{nodes}");
    t.cli_ok(
        &n1,
        &["network", "create", "blue", "--subnet", "10.42.0.0/24"],
    )?;
    Ok(())
}

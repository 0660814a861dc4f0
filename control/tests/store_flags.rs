//! The agent's `--store*` flags as an operator meets them: a plaintext etcd on
//! another machine is refused at start, before anything is set up, with what to
//! do instead; a user without a password is refused likewise.

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let api = format!("unix:{}", dir.path().join("api.sock").display());
    let out = Command::new(env!("CARGO_BIN_EXE_vxmesh"))
        .args(["agent", "--node", "n1", "--advertise-addr", "127.0.0.1"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--api", &api])
        .args(args)
        .env_remove("VXMESH_STORE_PASSWORD")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn plaintext_etcd_on_another_machine_is_refused_at_start() {
    let (ok, printed) = agent(&["--store", "etcd://192.0.2.1:2379"]);
    assert!(!ok, "{printed}");
    for want in [
        "plaintext etcd",
        "etcds://",
        "--store-ca",
        "--store-insecure",
    ] {
        assert!(printed.contains(want), "no {want:?} in:\n{printed}");
    }
}

#[test]
fn a_store_user_without_a_password_is_refused_at_start() {
    let (ok, printed) = agent(&[
        "--store",
        "etcds://192.0.2.1:2379",
        "--store-user",
        "vxmesh",
    ]);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("--store-password-file") && printed.contains("VXMESH_STORE_PASSWORD"),
        "{printed}"
    );
}

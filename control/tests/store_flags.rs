//! The agent's `--store*` flags as an operator meets them: a plaintext etcd on
//! another machine is refused at start, before anything is set up, with what to
//! do instead; a user without a password is refused likewise.

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String) {
    agent_env(args, None)
}

fn agent_env(args: &[&str], password: Option<&str>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let api = format!("unix:{}", dir.path().join("api.sock").display());
    let out = Command::new(env!("CARGO_BIN_EXE_vxmesh"))
        .args(["agent", "--node", "n1", "--advertise-addr", "127.0.0.1"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--api", &api])
        .args(args)
        .env_remove("VXMESH_STORE_PASSWORD")
        .envs(password.map(|p| ("VXMESH_STORE_PASSWORD", p)))
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

/// The password comes from a file or the environment: with either, the agent
/// gets past the password and stops at the next missing setting instead.
#[test]
fn a_store_password_comes_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd-password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let base = [
        "--store",
        "etcds://192.0.2.1:2379",
        "--store-user",
        "vxmesh",
    ];
    let with_file = [
        &base[..],
        &["--store-password-file", file.to_str().unwrap()],
    ]
    .concat();
    for (how, (ok, printed)) in [
        ("file", agent(&with_file)),
        ("environment", agent_env(&base, Some("s3cret"))),
    ] {
        assert!(!ok, "{how}: {printed}");
        assert!(
            !printed.contains("needs a password") && printed.contains("needs --store-ca"),
            "{how}: {printed}"
        );
    }
    let missing = dir.path().join("missing");
    let (ok, printed) = agent(
        &[
            &base[..],
            &["--store-password-file", missing.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(
        !ok && printed.contains("cannot read --store-password-file"),
        "{printed}"
    );
}

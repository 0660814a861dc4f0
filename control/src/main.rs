//! `vxmesh`: the agent and its CLI in one binary.

#![forbid(unsafe_code)]

fn main() {
    if let Err(e) = vxmesh_control::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

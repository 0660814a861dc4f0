//! `vxmesh-cni`: the CNI plugin (see `vxmesh_control::cni`).

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(vxmesh_control::cni::main());
}

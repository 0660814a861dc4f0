//! `vxmesh-cni`: the CNI plugin (see `vxmesh_control::cni`).

fn main() {
    std::process::exit(vxmesh_control::cni::main());
}

//! Test harness for vxmesh: builds throwaway topologies of Linux network
//! namespaces on this one machine and runs real vxmesh agents inside them, so
//! integration tests exercise the actual kernel datapath instead of mocks.
//!
//! Everything here needs root (namespaces, veths, raw sockets) and iproute2
//! plus `ping` on the host.

mod command;
mod docker;
mod kernel_vxlan;
mod lock;
mod netns;
mod preflight;
mod topology;
mod traffic;
mod wireguard_go;

pub use command::stop_children;
pub use docker::{
    container_health, container_ip, container_pid, docker, docker_available, docker_output,
    docker_unavailable_reason, ensure_test_image, exec_in, exec_in_ok, inspect,
    skip_without_docker, wait_healthy, DockerGuard, DockerLock, DOCKER_LOCK_PATH, TEST_IMAGE,
    TEST_LABEL,
};
pub use kernel_vxlan::{attach_to_bridge, kernel_vxlan_setup, KernelVxlanNode};
pub use netns::{exec, exec_ok, exec_timeout, in_netns, kill_all_in, pids_in};
pub use preflight::{is_root, on_path};
pub use topology::{vxmesh_bin, Node, StoreKind, Topology};
pub use traffic::{
    answer_server, ping, send_raw_frames, tcp_echo_server, tcp_roundtrip, udp_echo_server,
    udp_roundtrip, udp_send_raw, AnswerServer, EchoServer,
};
pub use wireguard_go::{wg_keypair, WgPeer, WgVxlanHost, WireguardGo};

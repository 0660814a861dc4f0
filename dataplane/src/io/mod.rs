//! Drivers: thin code that moves buffers between devices, sockets and the core.

pub mod dataplane;
pub mod gso;
pub mod limits;
pub mod packet_socket;
pub mod probe;
pub mod tap;
pub mod underlay;
pub mod worker;

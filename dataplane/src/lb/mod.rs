//! The load balancer's pieces that decide, without I/O: schedulers that pick a
//! backend for a new flow. (Virtual services keyed by fwmark, conntrack and NAT
//! build on them.)

#![forbid(unsafe_code)]

pub mod limit;
pub mod maglev;
pub mod nat;
pub mod passive;
pub mod scheduler;
